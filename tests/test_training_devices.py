"""Training placement (devices, strategy, nodes) and ``kronos tune``, as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kronos.models.base import TrainingConfig
from kronos.models.lightning import launched_rank, trainer_options

# A tiny N-BEATS on two symbols: a few optimisation steps, a 4-year validation.
TINY = ["--symbols", "AAPL,AMD", "--asof", "2009-12-31"]
# Lines that say a second training process or its process group could not start.
NO_PROCESS_GROUP = ("DistNetworkError", "init_process_group", "Address already in use")


def kronos(args: list[str], cwd: Path, mlruns: Path, timeout: int = 120):
    """``python -m kronos ARGS`` with a private store, model dir and MLflow store."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK")}
    env |= {
        "KRONOS_DB": str(cwd / "k.duckdb"),
        "KRONOS_MLRUNS_DIR": str(mlruns),
        "MODEL_DIR": str(cwd / "models"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "kronos", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def workdir(bundled_db: Path, tmp_path: Path) -> Path:
    shutil.copy(bundled_db, tmp_path / "k.duckdb")
    return tmp_path


def test_default_placement_is_one_device_and_stays_out_of_the_config():
    """Defaults are Lightning's single-device run; placement never enters a model's config."""
    from kronos.models.nbeats import lightweight_nbeats

    options = trainer_options(TrainingConfig())
    assert (options["devices"], options["strategy"], options["num_nodes"]) == (1, "auto", 1)
    two = TrainingConfig(devices=2, strategy="ddp", num_nodes=2)
    assert {k: trainer_options(two)[k] for k in ("devices", "strategy", "num_nodes")} == {
        "devices": 2,
        "strategy": "ddp",
        "num_nodes": 2,
    }
    assert not {"devices", "strategy", "num_nodes"} & set(TrainingConfig().model_dump())
    # the artifact's config (and so its version and config hash) ignores placement
    one = lightweight_nbeats()
    placed = one.training.model_copy(update={"devices": 2, "strategy": "ddp", "num_nodes": 2})
    assert lightweight_nbeats(training=placed).get_config() == one.get_config()
    assert TrainingConfig(devices="auto").devices == "auto"
    with pytest.raises(ValueError, match="devices"):
        TrainingConfig(devices=0)


def test_launched_rank_reads_the_launchers_variables(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launched_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 0 after Lightning launched its workers
    assert launched_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_rank() == 1
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # rank 0 of the second machine is a worker too
    assert launched_rank() == 1


def test_two_cpu_processes_train_a_valid_artifact(workdir: Path, mlflow_settings, tmp_path: Path):
    """``--devices 2 --strategy ddp`` on CPU: Lightning starts a second ``kronos`` (gloo).

    Rank 0 alone validates, saves, gates and records: one MLflow run, one artifact
    that loads and predicts on one device.
    """
    experiment = f"ddp-{tmp_path.name}"
    args = ["train", "nbeats", *TINY, "--max-steps", "6", "--accelerator", "cpu"]
    args += ["--devices", "2", "--strategy", "ddp", "--experiment", experiment, "--json"]
    proc = kronos(args, workdir, mlflow_settings.mlruns_dir)
    if proc.returncode and any(s in proc.stderr for s in NO_PROCESS_GROUP):
        pytest.skip(f"two training processes cannot start here: {proc.stderr.strip()[-800:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert isinstance(result["promoted"], bool) and result["reason"].startswith("validation CRPS")
    run_dir = Path(result["run_dir"])
    assert (run_dir / "state.pt").exists()
    assert [p.name for p in (workdir / "models" / "kronos-nbeats").iterdir()].count(
        "latest"
    ) == int(result["promoted"])
    config = json.loads((run_dir / "config.json").read_text())
    assert "devices" not in config["training"] and config["fit"]["max_steps"] == 6

    from datetime import date

    import polars as pl

    from kronos.config import DataSettings
    from kronos.data.store import Store
    from kronos.features.returns import returns_panel
    from kronos.models.artifacts import load_artifact

    model, _ = load_artifact(run_dir)
    with Store.open(workdir / "k.duckdb", read_only=True) as store:
        panel = returns_panel(store, date(2009, 12, 31), ["AAPL", "AMD"], settings=DataSettings())
    forecast = model.predict(panel, date(2009, 12, 31))
    assert forecast.height == 2 * 5 and forecast["version"].unique().to_list() == [
        result["version"]
    ]
    assert forecast.select((pl.col("p05") <= pl.col("p50")) & (pl.col("p50") <= pl.col("p95")))[
        "p05"
    ].all()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_settings.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [result["mlflow_run_id"]]  # the worker records nothing
    assert runs[0].info.status == "FINISHED"


def test_tune_records_trials_as_child_runs_and_gates_the_best(
    workdir: Path, mlflow_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two trials of a tiny N-BEATS search: parent + 2 child runs, the best refitted and gated.

    In process (``kronos tune`` starts no process of its own with the local executor).
    """
    from typer.testing import CliRunner

    from kronos.cli import app

    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment = f"tune-{tmp_path.name}"
    args = ["tune", "nbeats", "--trials", "2", *TINY, "--set", "max_steps=6"]
    args += ["--set", "accelerator=cpu", "--experiment", experiment, "--json"]
    args += ["--db", str(workdir / "k.duckdb"), "--model-dir", str(workdir / "models")]
    # ddp's launcher would re-run the whole search in every worker: refused before any trial
    refused = CliRunner().invoke(app, [*args, "--set", "devices=2"])
    assert refused.exit_code == 2 and "ddp_spawn" in refused.output
    proc = CliRunner().invoke(app, args)
    assert proc.exit_code == 0, proc.output[-3000:]
    result = json.loads(proc.stdout)
    assert [t["number"] for t in result["trials"]] == [0, 1]
    best = min(result["trials"], key=lambda t: t["crps"])
    assert result["best"]["number"] == best["number"]
    # the refit is the best trial's fit again (same seed, same rows): same score, to 1e-9
    assert result["validation"]["crps"] == pytest.approx(best["crps"], rel=1e-9)
    assert result["reason"].startswith("validation CRPS")
    assert Path(result["run_dir"], "state.pt").exists()
    assert (Path(result["run_dir"]).parent / "latest").exists() == result["promoted"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_settings.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = result["mlflow_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 3 and len(children) == 2
    assert sorted(float(r.data.metrics["valid_crps"]) for r in children) == pytest.approx(
        sorted(t["crps"] for t in result["trials"]), rel=1e-12
    )
    top = client.get_run(parent)
    assert top.data.tags["promoted"] == str(result["promoted"])
    assert top.data.metrics["best_valid_crps"] == pytest.approx(best["crps"], rel=1e-12)
    assert all(r.info.status == "FINISHED" for r in runs)
