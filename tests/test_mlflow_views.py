"""What MLflow shows: notebook HTML, experiment tags and locations, curves, variant names."""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from fakes.notebooks import write_notebook
from mlflow.tracking import MlflowClient

from kronos.config import Settings, TrackingSettings, load_settings
from kronos.runner import run_notebook
from kronos.runner.backtest_record import log_curves, variant_run_name
from kronos.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    experiment_id,
    mlflow_run,
    tracking_client,
)

SECRET = "sk-views-987654321"


def test_a_run_logs_its_notebook_as_self_contained_html_without_secrets(
    tmp_path, monkeypatch, mlflow_settings
):
    repo = tmp_path / "repo"
    write_notebook(
        repo / "notebooks" / "show.ipynb",
        "mlflow_run_id = None\n",
        "import os\nprint('answer', 6 * 7, os.environ.get('APCA_API_SECRET_KEY'))",
    )
    monkeypatch.chdir(repo)
    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    out = run_notebook(
        Path("notebooks/show.ipynb"), {}, experiment="kronos-test-views", settings=load_settings()
    )
    assert out.status == "FINISHED", out.error
    client = MlflowClient(mlflow_settings.tracking_uri())
    names = sorted(a.path for a in client.list_artifacts(out.run_id, "notebook"))
    html_name = out.output.with_suffix(".html").name
    assert names == [f"notebook/{html_name}", f"notebook/{out.output.name}"]
    html = Path(client.download_artifacts(out.run_id, f"notebook/{html_name}", str(tmp_path)))
    text = html.read_text()
    assert "answer 42 ***" in text and SECRET not in text
    assert "cdnjs.cloudflare.com" not in text and "require.min.js" not in text


def test_new_experiments_have_a_note_the_training_kind_and_artifacts_beside_the_store(
    tmp_path, monkeypatch
):
    store = tmp_path / "elsewhere"
    store.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracking = TrackingSettings(mlflow_tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    with mlflow_run("kronos-backtest", "r", settings=Settings(tracking=tracking)) as rec:
        (cwd / "a.txt").write_text("x")
        rec.log_artifact(cwd / "a.txt")
        run_id = rec.run_id
    client = tracking_client(tracking)
    exp = client.get_experiment(experiment_id(client, "kronos-backtest", tracking))
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert "Walk-forward backtests" in exp.tags[NOTE_TAG]
    assert exp.artifact_location == (store / "artifacts" / "kronos-backtest").as_uri()
    uri = client.get_run(run_id).info.artifact_uri
    assert uri.startswith(store.as_uri() + "/artifacts/"), uri
    assert (store / "artifacts" / "kronos-backtest" / run_id / "artifacts" / "a.txt").is_file()
    assert not (cwd / "mlruns").exists()


def test_equity_and_drawdown_are_step_metrics_one_per_session(run_settings):
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(1200)]
    nav = [100.0 + (i % 50) - (i // 400) * 10 for i in range(1200)]
    result = SimpleNamespace(equity=pl.DataFrame({"ts": days, "nav": nav}))
    with mlflow_run("kronos-test-views", "curves", settings=run_settings) as rec:
        assert log_curves(rec, result) == 1200  # type: ignore[arg-type]
        run_id = rec.run_id
    client = tracking_client(run_settings.tracking)
    equity = client.get_metric_history(run_id, "equity")
    drawdown = sorted(client.get_metric_history(run_id, "drawdown"), key=lambda m: m.step)
    assert len(equity) == len(drawdown) == 1200
    assert {m.step for m in equity} == set(range(1200))
    assert drawdown[0].timestamp == 1704067200000  # 2024-01-01 00:00 UTC, ms
    # reference: hand computation; step 60 has nav 110 after a peak of 149 (tolerance 1e-12)
    assert drawdown[60].value == pytest.approx(110 / 149 - 1, abs=1e-12)
    assert max(m.value for m in drawdown) == 0.0


def test_variant_run_names_are_short_and_keep_the_varied_part():
    base = "sp500_ewma_weekly_with_a_rather_long_descriptive_name"
    names = [variant_run_name(base, {"execution.commission_bps": v}) for v in (1, 2, 10)]
    assert len(set(names)) == 3
    assert all(
        len(n) <= 40 and n.endswith(f"[commission_bps={v}]")
        for n, v in zip(names, (1, 2, 10), strict=True)
    )
    assert variant_run_name("short", {"a.b": 1, "c": "x"}) == "short [b=1,c=x]"


def test_a_run_opened_after_its_work_is_backdated_to_when_the_work_began(run_settings):
    began = time.time() - 42.0  # the work took 42 s before the run was opened
    with mlflow_run(
        "kronos-test-views", "backdated", settings=run_settings, start_time=began
    ) as rec:
        run_id = rec.run_id
    info = tracking_client(run_settings.tracking).get_run(run_id).info
    assert info.start_time == int(began * 1000)
    # reference: the 42 s of work plus the few ms the run itself was open (tolerance 5 s)
    assert 42_000 <= info.end_time - info.start_time < 47_000
