"""Promoted models through MLflow's model registry, against a real ``mlflow server``.

One server per module (SQLite backend, artifacts served by the server), on a
free port of 127.0.0.1, always stopped. ``kronos train`` promotes and registers
an EWMA model (``kronos-ewma`` version 1, alias ``champion``); ``kronos
forecast``, the service and a backtest spec load it by ``models:/`` URI; the
commands run from a directory outside the checkout, print one JSON document on
stdout, tag the checkout's commit and create no ``mlruns/`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient

from kronos.calibration import load_calibrator
from kronos.config import CalibrationSettings, DataSettings, Settings, TrackingSettings
from kronos.data import readers
from kronos.data.store import Store
from kronos.errors import ConfigError, InputError, LookAhead
from kronos.features.returns import returns_panel
from kronos.mlflow_registry import (
    CHAMPION,
    load_registered,
    parse_model_uri,
    publish_artifact,
    resolve_spec_artifact,
)
from kronos.models.artifacts import load_artifact

REPO = Path(__file__).resolve().parents[1]
ASOF = "2006-03-01"  # forecast origin, after the model's data (valid_end 2005-12-30)
SYMBOLS = "AAPL,MSFT,KO"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` on 127.0.0.1 (its process group is always terminated)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            cwd=root,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job runner
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the server forks uvicorn and a job runner: stop them all
        )
    except OSError as exc:
        pytest.skip(f"cannot start mlflow server: {exc}")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (root / "server.log").read_text()[-2000:]
                pytest.skip(f"mlflow server did not answer /health on {url}: {text}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory, bundled_db: Path, server: str):
    """The module's commands run in a directory outside the checkout, with its own stores."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(bundled_db, cwd / "k.duckdb")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("MLFLOW_TRACKING_URI", server)
        mp.setenv("KRONOS_DB", str(cwd / "k.duckdb"))
        mp.setenv("MODEL_DIR", str(cwd / "models"))
        mp.setenv("KRONOS_MLRUNS_DIR", "mlruns")  # relative: made in cwd if anything made it
        yield cwd


def kronos(*args: str) -> dict:
    """Run ``kronos ARGS --json`` in this process; the one JSON document it printed on stdout."""
    from typer.testing import CliRunner

    from kronos.cli import app

    got = CliRunner().invoke(app, [*args, "--json"])
    assert got.exit_code == 0, f"exit {got.exit_code}\n{got.stdout}\n{got.stderr}\n{got.exception}"
    return json.loads(got.stdout)  # fails on anything else (MLflow's run links) on stdout


@pytest.fixture(scope="module")
def trained(elsewhere: Path) -> dict:
    """``kronos train forecaster ewma``: EWMA equals its own baseline, so it is promoted."""
    return kronos("train", "forecaster", "ewma", "--symbols", SYMBOLS, "--asof", "2005-12-30")


def head_commit() -> str:
    """HEAD of the checkout these tests (and the package) come from; ``unknown`` outside git."""
    got = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return got.stdout.strip() if got.returncode == 0 else "unknown"


def test_train_registers_the_promoted_model_and_moves_champion(trained, elsewhere, server):
    cwd = elsewhere
    assert trained["promoted"] is True
    assert trained["registered"] == {
        "name": "kronos-ewma",
        "version": "1",
        "alias": CHAMPION,
        "uri": "models:/kronos-ewma/1",
        "run_id": trained["mlflow_run_id"],
    }
    client = MlflowClient(tracking_uri=server)
    version = client.get_model_version_by_alias("kronos-ewma", CHAMPION)
    assert (version.version, version.run_id) == ("1", trained["mlflow_run_id"])
    assert version.source.endswith(f"{trained['mlflow_run_id']}/artifacts/artifact")
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.tags["registered_version"] == "1"
    assert run.data.tags["git_commit"] == head_commit()  # the package's checkout, not the cwd
    assert Path(trained["run_dir"]).is_relative_to(cwd / "models")
    assert (Path(trained["run_dir"]).parent / "latest").resolve() == Path(trained["run_dir"])
    assert not (cwd / "mlruns").exists()


def test_forecast_service_and_run_from_the_registry(trained, elsewhere, server, tmp_path):
    cwd = elsewhere
    got = kronos(
        "forecast",
        "models:/kronos-ewma@champion",
        "--symbols",
        SYMBOLS,
        "--asof",
        ASOF,
        "--no-write",
    )
    assert got["source"] == "artifact"
    assert "kronos-ewma version 1" in got["message"]
    # the downloaded copy predicts what the local artifact predicts, to the bit
    with Store.open(cwd / "k.duckdb", read_only=True) as store:
        panel = returns_panel(
            store, date.fromisoformat(ASOF), SYMBOLS.split(","), settings=DataSettings()
        )
    local, _ = load_artifact(Path(trained["run_dir"]))
    raw = local.predict(panel, panel["ts"].max(), SYMBOLS.split(","))
    # with no nightly state yet, the artifact's starting calibration is what applies
    with Store.open(cwd / "k.duckdb", read_only=True) as store:
        names = sorted(SYMBOLS.split(","))
        profiles = readers.profiles(store, panel["ts"].max(), names, settings=DataSettings())
        sectors = dict(zip(profiles["symbol"], profiles["sector"], strict=True))
        calibrator, _night = load_calibrator(
            store, "ewma", panel["ts"].max(), names, sectors, CalibrationSettings(),
            Path(trained["run_dir"]),
        )  # fmt: skip
    assert calibrator.start is not None
    expected = calibrator.apply(raw)
    rows = {(r["symbol"], r["step"]): r for r in got["forecasts"]}
    assert len(rows) == expected.height == 15
    for r in expected.iter_rows(named=True):
        assert (rows[r["symbol"], r["step"]]["p05"], rows[r["symbol"], r["step"]]["p95"]) == (
            r["p05"],
            r["p95"],
        )

    from fastapi.testclient import TestClient

    from kronos.serve import ServiceConfig, create_app

    config = ServiceConfig(
        db=cwd / "k.duckdb",
        model="models:/kronos-ewma/1",
        model_dir=cwd / "models",
        tracking_uri=server,
    )
    service = TestClient(create_app(config, CalibrationSettings(), DataSettings()))
    about = service.get("/version").json()
    assert about["model_version"] == expected["version"][0]
    assert Path(about["artifact"]).parent == cwd / "models" / "registry" / "kronos-ewma"
    served = service.get("/forecast", params={"symbols": "KO", "asof": ASOF}).json()
    assert [(f["p05"], f["p95"]) for f in served["forecasts"]] == [
        (rows["KO", s]["p05"], rows["KO", s]["p95"]) for s in range(1, 6)
    ]

    # a notebook run (kronos run): its own MLflow client ends the run
    notebook = cwd / "tiny.ipynb"
    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        }
    )
    nb.cells = [
        nbformat.v4.new_code_cell("mlflow_run_id = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    nbformat.write(nb, notebook)
    ran = kronos("run", str(notebook), "--out", str(tmp_path / "runs"))
    assert ran["status"] == "FINISHED"
    record = MlflowClient(tracking_uri=server).get_run(ran["mlflow_run_id"])
    assert record.data.tags["git_commit"] == head_commit()
    assert not (cwd / "mlruns").exists()


def test_only_a_promoted_candidate_is_registered(trained, server, tmp_path):
    from kronos.tracking import mlflow_run

    settings = Settings(tracking=TrackingSettings(mlflow_tracking_uri=server))
    run_dir = Path(trained["run_dir"])
    with mlflow_run("kronos-test-registry", "failed-gate", settings=settings) as rec:
        kept = publish_artifact(rec, model="ewma", run_dir=run_dir, version="x", promoted=False)
    with mlflow_run("kronos-test-registry", "passed-gate", settings=settings) as rec:
        made = publish_artifact(rec, model="ewma", run_dir=run_dir, version="x", promoted=True)
    client = MlflowClient(tracking_uri=server)
    assert kept is None
    assert made is not None and made.version == "2"
    assert sorted(v.version for v in client.search_model_versions("name = 'kronos-ewma'")) == [
        "1",
        "2",
    ]
    assert client.get_model_version_by_alias("kronos-ewma", CHAMPION).run_id == rec.run_id
    # a fixed version stays loadable after the alias moved on; an unknown alias names the registry
    loaded = load_registered("models:/kronos-ewma/1", tracking_uri=server, model_dir=tmp_path)
    assert loaded.directory.name.startswith("1-") and "version 1" in loaded.message
    with pytest.raises(InputError, match=f"registry at {server} has no kronos-ewma alias 'nope'"):
        load_registered("models:/kronos-ewma@nope", tracking_uri=server, model_dir=tmp_path)


def test_a_backtest_spec_loads_the_registered_version_with_the_look_ahead_check(
    trained, server, tmp_path
):
    from kronos.backtest.forecasts import fold_forecasts, load_for_fold
    from kronos.backtest.spec import SpecError, parse_spec
    from kronos.backtest.splits import Fold

    raw = {"name": "registry", "forecaster": {"name": "ewma"}}
    spec = parse_spec(raw, overrides=["forecaster.artifact=models:/kronos-ewma/1"])
    with pytest.raises(ConfigError, match="was not resolved before the folds"):
        fold_forecasts("ewma", {}, 0, None, None, [], spec.forecaster.artifact)
    with pytest.raises(SpecError, match="expected models:/<name>@<alias>"):
        parse_spec(raw, overrides=["forecaster.artifact=models:/kronos-ewma/latest/x"])
    with pytest.raises(ConfigError, match="not a model URI"):
        parse_model_uri("models:/kronos-ewma")

    resolved = resolve_spec_artifact(spec, tracking_uri=server, model_dir=tmp_path)
    directory = Path(resolved.forecaster.artifact)
    assert directory.parent == tmp_path / "registry" / "kronos-ewma"
    assert spec.forecaster.artifact == "models:/kronos-ewma/1"  # the original is unchanged
    before = Fold(0, date(2000, 1, 3), date(2005, 12, 29), date(2006, 1, 9), date(2006, 12, 29), 5)
    after = Fold(0, date(2000, 1, 3), date(2005, 12, 30), date(2006, 1, 9), date(2006, 12, 29), 5)
    with pytest.raises(LookAhead, match="saw data up to 2005-12-30"):
        load_for_fold("ewma", directory, before)
    assert load_for_fold("ewma", directory, after).version == trained["version"]
