from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kronos.config import settings_hash
from kronos.tracking import git_state, mlflow_run


def test_run_records_params_metrics_tags_and_artifacts(
    mlflow_settings, run_settings, tmp_path: Path
):
    (tmp_path / "a.txt").write_text("x")
    with mlflow_run("kronos-test", "r", {"model": "m"}, settings=run_settings) as rec:
        rec.log_params({"lr": 0.001, "nested.k": "v"})
        rec.log_metrics({"loss": 1.5}, step=1)
        rec.log_metrics({"loss": 1.25}, step=2)
        rec.log_artifacts(tmp_path, "files")
    client = MlflowClient(mlflow_settings.tracking_uri())
    run = client.get_run(rec.run_id)
    assert run.info.status == "FINISHED"
    ours = {k: v for k, v in run.data.params.items() if not k.startswith("settings.")}
    assert ours == {"lr": "0.001", "nested.k": "v"}
    # every run records the resolved settings and their hash; secrets by name only
    assert run.data.tags["settings_hash"] == settings_hash(run_settings)
    assert run.data.params["settings.strategy.strat_reco_topk"] == "20"
    assert run.data.params["settings.tracking.mlruns_dir"] == str(mlflow_settings.mlruns_dir)
    history = client.get_metric_history(rec.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 1.25)]
    assert (
        run.data.tags["model"] == "m" and run.data.tags["git_commit"] == git_state()["git_commit"]
    )
    assert [f.path for f in client.list_artifacts(rec.run_id, "files")] == ["files/a.txt"]


def test_failed_block_marks_the_run_failed(mlflow_settings, run_settings):
    with (
        pytest.raises(RuntimeError),
        mlflow_run("kronos-test", "bad", settings=run_settings) as rec,
    ):
        raise RuntimeError("boom")
    assert MlflowClient(mlflow_settings.tracking_uri()).get_run(rec.run_id).info.status == "FAILED"
