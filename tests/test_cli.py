"""The ``kronos`` command end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kronos.data.store import Store


def kronos(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "KRONOS_DB": str(cwd / "k.duckdb")}
    proc = subprocess.run(
        [sys.executable, "-m", "kronos", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("cli")
    kronos("data", "ingest", "--source", "bundled", cwd=cwd)
    return cwd


def test_info_shows_the_bundled_universe(workdir: Path):
    info = json.loads(kronos("data", "info", "--json", cwd=workdir).stdout)
    by_source = {r["source"]: r for r in info["bars_by_source"]}
    assert by_source["skfolio.sp500"]["n_symbols"] == 20
    assert (by_source["skfolio.sp500"]["first"], by_source["skfolio.sp500"]["last"]) == (
        "1990-01-02",
        "2022-12-28",
    )
    assert by_source["backtesting.goog"]["symbols"] == "GOOG"
    assert by_source["skfolio.sp500_index"]["symbols"] == "SP500"
    assert by_source["skfolio.factors"]["symbols"] == "MTUM, QUAL, SIZE, USMV, VLUE"
    assert info["rows"]["bars"] == 188_041
    text = kronos("data", "info", cwd=workdir).stdout
    assert "skfolio.sp500" in text and "188,041" in text


def test_second_ingest_leaves_counts_unchanged(workdir: Path):
    before = json.loads(kronos("data", "info", "--json", cwd=workdir).stdout)["rows"]
    again = json.loads(kronos("data", "ingest", "-s", "bundled", "--json", cwd=workdir).stdout)
    after = json.loads(kronos("data", "info", "--json", cwd=workdir).stdout)["rows"]
    assert again["bars"]["inserted"] == again["bars"]["updated"] == 0
    assert again["bars"]["unchanged"] == 188_041
    assert {k: v for k, v in after.items() if k != "ingest_log"} == {
        k: v for k, v in before.items() if k != "ingest_log"
    }


def test_validate_passes_on_bundled_and_writes_a_report(workdir: Path):
    proc = kronos("data", "validate", "--report", "qa.json", cwd=workdir)
    assert "passed" in proc.stdout
    report = json.loads((workdir / "qa.json").read_text())
    assert report["passed"] and len(report["reports"][0]["symbols"]) == 27


def test_validate_fails_on_a_bad_csv_naming_row_and_column(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Symbol,Close\n2020-01-02,AAA,10\n2020-01-03,AAA,11\n2020-01-06,AAA,-2\n")
    proc = kronos(
        "data",
        "validate",
        "--file",
        str(bad),
        "--json",
        "--report",
        "r.json",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    payload = json.loads(proc.stdout)
    rule = payload["reports"][0]["symbols"][0]["rules"]["positive_prices"]
    assert not rule["passed"] and rule["first"] == f"{bad}:4, column 'close': -2.0"
    text = kronos("data", "validate", "--file", str(bad), cwd=tmp_path, check=False).stdout
    assert f"{bad}:4, column 'close': -2.0" in text


def test_ingest_of_bad_file_exits_2_and_writes_nothing(workdir: Path, tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Close\n2020-01-02,10\n2020-01-03,oops\n")
    before = json.loads(kronos("data", "info", "--json", cwd=workdir).stdout)["rows"]
    proc = kronos(
        "data", "ingest", "-s", "csv", str(bad), "--symbol", "ZZZ", cwd=workdir, check=False
    )
    assert proc.returncode == 2
    assert f"{bad}:3, column 'close', symbol ZZZ: cannot read 'oops'" in proc.stderr
    assert json.loads(kronos("data", "info", "--json", cwd=workdir).stdout)["rows"] == before


def test_help_is_available_for_every_command(tmp_path: Path):
    for cmd in (["data", "ingest"], ["data", "validate"], ["data", "info"], ["bench", "ingest"]):
        assert "--help" in kronos(*cmd, "--help", cwd=tmp_path).stdout


def test_kill_9_mid_ingest_leaves_whole_batches_and_an_openable_db(tmp_path: Path):
    """SIGKILL after two committed batches: every batch is all there or absent."""
    env = {**os.environ, "KRONOS_DB": str(tmp_path / "k.duckdb")}
    ingest = ["data", "ingest", "-s", "synthetic", "--n-symbols", "400", "--years", "10"]
    ingest += ["--batch-symbols", "20", "--no-reference"]
    args = [sys.executable, "-m", "kronos", *ingest]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    committed = 0
    deadline = time.monotonic() + 120
    while committed < 2 and time.monotonic() < deadline:
        line = proc.stderr.readline()
        committed += line.startswith("committed bars")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert committed >= 2, "the ingest never committed two batches"
    with Store.open(tmp_path / "k.duckdb") as s:
        per_symbol = s.con.execute("SELECT count(*) FROM bars GROUP BY symbol").fetchall()
        n_symbols = len(per_symbol)
        logged = s.con.execute(
            "SELECT count(*), sum(rows_in) FROM ingest_log WHERE target_table = 'bars'"
        ).fetchall()[0]
        total = s.con.execute("SELECT count(*) FROM bars").fetchall()[0][0]
    assert {n for (n,) in per_symbol} == {2520}  # every stored symbol is complete
    assert n_symbols % 20 == 0 and 40 <= n_symbols < 400  # whole batches only, killed midway
    assert logged == (n_symbols // 20, total)
    kronos(*ingest, cwd=tmp_path)  # resuming completes the universe
    with Store.open(tmp_path / "k.duckdb") as s:
        assert s.con.execute("SELECT count(*) FROM bars").fetchall()[0][0] == 400 * 2520


def test_train_nbeats_writes_an_artifact_and_an_mlflow_run(bundled_db: Path, tmp_path: Path):
    """A five-step run: too short to beat EWMA, so it must be saved but not promoted."""
    import shutil

    db = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, db)
    env_extra = ["--db", str(db), "--model-dir", str(tmp_path / "models"), "--json"]
    proc = kronos(
        "train",
        "nbeats",
        "--max-steps",
        "5",
        "--symbols",
        "AAPL,MSFT,KO",
        "--asof",
        "2005-12-30",
        *env_extra,
        cwd=tmp_path,
    )
    result = json.loads(proc.stdout)
    run_dir = Path(result["run_dir"])
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "CALIBRATION_START.json",
        "METRICS.json",
        "VERSION",
        "config.json",
        "scaler.pkl",
        "state.pt",
    ]
    assert result["data_range"]["valid_end"] == "2005-12-30"
    metrics = json.loads((run_dir / "METRICS.json").read_text())
    assert metrics["promotion"]["promoted"] == result["promoted"]
    assert (run_dir.parent / "latest").exists() == result["promoted"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.input_size"] == "90"
    assert {"valid_crps", "baseline_crps", "fit_seconds"} <= set(run.data.metrics)
    assert run.data.tags["promoted"] == str(result["promoted"])


def test_calibrate_is_idempotent_and_forecast_applies_it(bundled_db: Path, tmp_path: Path):
    import shutil

    shutil.copy(bundled_db, tmp_path / "k.duckdb")
    args = ["calibrate", "--model", "ewma", "--asof", "2020-03-04", "--since", "2020-03-02"]
    args += ["--model-dir", str(tmp_path / "models"), "--no-mlflow", "--json"]
    first = json.loads(kronos(*args, cwd=tmp_path).stdout)
    assert [n["night"] for n in first["nights"]] == ["2020-03-02", "2020-03-03", "2020-03-04"]
    assert json.loads(kronos(*args, cwd=tmp_path).stdout)["nights"] == []
    proc = kronos(
        "forecast",
        "ewma",
        "--asof",
        "2020-03-04",
        "--symbols",
        "AAPL,KO",
        "--model-dir",
        str(tmp_path / "models"),
        "--json",
        cwd=tmp_path,
    )
    assert "calibrated with the state of 2020-03-04" in proc.stderr
    rows = json.loads(proc.stdout)["forecasts"]
    assert {r["calibrated"] for r in rows} == {True} and len(rows) == 10
