"""The notebooks: stored without outputs, and runnable end to end through the runner.

The execution tests run the six workflow notebooks in order, each as one MLflow
run created by :func:`kronos.runner.run_notebook`, on a temporary store, model
directory and MLflow store: ingest, retrain (a 5-step N-BEATS), calibrate,
paper-trading loop cycles, a short walk-forward backtest, the comparison of
backtest runs. Each later notebook reads what the earlier ones wrote.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WORKFLOW = (
    "00_data",
    "10_retrain",
    "20_walkforward",
    "30_paper_trading",
    "40_calibrate",
    "50_compare_runs",
    "60_custom_model",
)

# execution order (each reads what the ones before it wrote), small parameters, and
# the metrics each notebook must log into its run
RUNS = [
    ("00_data", {"source": "bundled"}, {"rows_bars", "qa_failures"}),
    (
        "10_retrain",
        {"model": "nbeats", "max_steps": 5},
        {"valid_crps", "baseline_crps", "promoted", "train_loss", "valid_loss"},
    ),
    (
        "40_calibrate",
        {"model": "nbeats"},
        {"raw_coverage", "calibrated_coverage", "nights_processed"},
    ),
    (
        "30_paper_trading",
        {"model": "nbeats", "cycles": 4},
        {"cycles", "final_nav", "fills_total", "orders_submitted_total", "nav"},
    ),
    (
        "20_walkforward",
        {"spec": "backtests/sp500_ewma_weekly.yaml", "overrides": ["dates.start=2022-01-03"]},
        {"sharpe", "total_return", "max_drawdown", "benchmark_sharpe"},
    ),
    ("50_compare_runs", {"max_runs": 5}, {"runs_compared", "equity_curves"}),
    ("60_custom_model", {}, {"runs_compared", "custom_crps_ratio_garch"}),
]


# ------------------------------------------------------------------ stored form


def test_the_workflow_notebooks_exist():
    assert set(WORKFLOW) <= {p.stem for p in NOTEBOOKS}


def _assigned_names(source: str) -> list[str]:
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            names.append(node.targets[0].id)
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs_and_with_one_parameters_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    kernelspec = nb.metadata.get("kernelspec", {})
    assert kernelspec.get("name") == "python3" and kernelspec.get("language") == "python"
    assert kernelspec.get("display_name")
    assert nb.metadata.get("language_info", {}).get("name") == "python"  # papermill needs both
    assert "papermill" not in nb.metadata, "an executed notebook was saved: store the source"

    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    assert tagged[0].cell_type == "code"
    assert re.search(r"^mlflow_run_id = None\b", tagged[0].source, re.MULTILINE)
    # papermill reads every parameter (it skips a line whose help comment holds '=')
    declared = set(papermill.inspect_notebook(str(path)))
    assert declared == set(_assigned_names(tagged[0].source))

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"cell {i} has outputs: clear them before committing"
        assert cell.execution_count is None, f"cell {i} has an execution count"
        assert "papermill" not in cell.metadata, f"cell {i} carries papermill metadata"


# ------------------------------------------------------------------ execution


@pytest.fixture(scope="module")
def executed(tmp_path_factory, mlflow_settings):
    """Run the notebooks in order through the runner; stop at the first failure."""
    from kronos.config import load_settings
    from kronos.runner import run_notebook

    work = tmp_path_factory.mktemp("notebooks")
    outcomes = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the runner executes notebooks in the current directory
        # the kernels inherit this environment: they log into the session's MLflow store
        mp.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("KRONOS_DB", str(work / "kronos.duckdb"))
        mp.setenv("MODEL_DIR", str(work / "models"))
        mp.delenv("CALIBRATION_FILE", raising=False)
        mp.setenv("CALIBRATION_ENABLED", "true")
        # a 5-step N-BEATS never beats EWMA; promote it anyway, so that the calibration
        # and paper-trading notebooks load the retrained artifact instead of fitting one
        mp.setenv("KRONOS_PROMOTION_TOLERANCE", "100")
        if "OMP_WAIT_POLICY" not in os.environ:
            mp.setenv("OMP_WAIT_POLICY", "PASSIVE")  # torch threads spin on 2 cores otherwise
        for stem, params, _ in RUNS:
            if stem in ("20_walkforward", "60_custom_model"):
                params = {**params, "out_dir": str(work / "backtests")}
            if stem == "60_custom_model":
                params = {**params, "workdir": str(work / "research")}
            outcome = run_notebook(
                Path("notebooks") / f"{stem}.ipynb",
                params,
                out_root=work / "runs",
                settings=load_settings(),
            )
            outcomes[stem] = outcome
            if outcome.status != "FINISHED":
                break  # the later notebooks need what this one writes
    return work, outcomes


def _outcome(executed, stem: str):
    _, outcomes = executed
    failed = [f"{s}: {o.error}" for s, o in outcomes.items() if o.status != "FINISHED"]
    assert stem in outcomes, f"{stem} did not run; an earlier notebook failed: {failed}"
    outcome = outcomes[stem]
    assert outcome.status == "FINISHED", f"{stem} failed: {outcome.error} (see {outcome.output})"
    return outcome


def _text(outcome) -> str:
    """Every stream and text/plain output of the executed notebook."""
    nb = nbformat.read(outcome.output, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize(("stem", "params", "metrics"), RUNS, ids=[r[0] for r in RUNS])
def test_notebook_runs_and_logs_into_its_run(executed, mlflow_settings, stem, params, metrics):
    outcome = _outcome(executed, stem)
    run = MlflowClient(mlflow_settings.tracking_uri()).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    missing = metrics - set(run.data.metrics)
    assert not missing, f"{stem} did not log {sorted(missing)}"
    assert outcome.output.is_file()


@pytest.mark.slow
def test_data_notebook_ingests_and_passes_qa(executed, mlflow_settings):
    run = MlflowClient(mlflow_settings.tracking_uri()).get_run(_outcome(executed, "00_data").run_id)
    assert run.data.metrics["rows_bars"] > 150_000
    assert run.data.metrics["qa_failures"] == 0


@pytest.mark.slow
def test_retrain_promotes_and_the_next_notebooks_load_the_artifact(executed, mlflow_settings):
    client = MlflowClient(mlflow_settings.tracking_uri())
    run = client.get_run(_outcome(executed, "10_retrain").run_id)
    assert run.data.tags["promoted"] == "True"
    assert run.data.params["model.name"] == "nbeats"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "artifact")]
    assert "loaded nbeats from" in _text(_outcome(executed, "40_calibrate"))
    assert "loaded nbeats from" in _text(_outcome(executed, "30_paper_trading"))


@pytest.mark.slow
def test_calibration_and_paper_trading_results(executed, mlflow_settings):
    client = MlflowClient(mlflow_settings.tracking_uri())
    cal = client.get_run(_outcome(executed, "40_calibrate").run_id).data.metrics
    assert cal["nights_processed"] > 0
    assert 0 <= cal["raw_coverage"] <= 1 and 0 <= cal["calibrated_coverage"] <= 1
    paper = _outcome(executed, "30_paper_trading")
    metrics = client.get_run(paper.run_id).data.metrics
    # the bundled prices carry no volume: the decision turns the liquidity filter off
    # (and says so), so the strategist recommends names instead of excluding them all
    assert "the liquidity filter is off" in _text(paper)
    assert metrics["cycles"] == 4
    assert metrics["final_nav"] > 0
    assert metrics["differences_total"] == 0
    # the per-cycle metrics land in the same run, one step per cycle
    history = client.get_metric_history(paper.run_id, "nav")
    assert len(history) == 4


@pytest.mark.slow
def test_backtest_report_is_written_and_compared(executed, mlflow_settings):
    work, _ = executed
    client = MlflowClient(mlflow_settings.tracking_uri())
    backtest = _outcome(executed, "20_walkforward")
    assert backtest.experiment == "kronos-backtest"
    reports = list((work / "backtests").glob("*/*/report.html"))
    assert len(reports) == 1
    logged = {a.path for a in client.list_artifacts(backtest.run_id, "report")}
    assert "report/equity.parquet" in logged
    compare = client.get_run(_outcome(executed, "50_compare_runs").run_id).data.metrics
    assert compare["runs_compared"] >= 1 and compare["equity_curves"] >= 1


def test_notebooks_work_from_the_project_root_under_jupyterlab(tmp_path, monkeypatch):
    """JupyterLab starts kernels in notebooks/: chdir_project moves to the root."""
    from kronos.config import chdir_project

    (tmp_path / "pyproject.toml").write_text("[project]\nname='kronos'\n")
    (tmp_path / "kronos").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert chdir_project() == tmp_path.resolve()
    assert Path.cwd() == tmp_path.resolve()
    monkeypatch.chdir("/")
    assert chdir_project() == Path("/")  # no project above: stays put
    for path in NOTEBOOKS:
        assert "chdir_project()" in path.read_text(), path.name


def test_the_notebook_kernel_is_this_environment():
    """`make lab` and papermill start the `python3` kernel with the project's interpreter."""
    import sys

    from jupyter_client.manager import KernelManager

    cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve()
    for path in NOTEBOOKS:
        assert nbformat.read(path, as_version=4).metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_custom_model_notebook_ranks_and_backtests_the_researchers_parts(executed, mlflow_settings):
    client = MlflowClient(mlflow_settings.tracking_uri())
    outcome = _outcome(executed, "60_custom_model")
    assert outcome.experiment == "kronos-research"
    run = client.get_run(outcome.run_id)
    assert run.data.metrics["runs_compared"] == 3
    text = _text(outcome)
    assert "VolBlend passed the contract check" in text
    assert "vol_blend" in text and "garch" in text  # the leaderboard rows
    backtests = {k[4:]: v for k, v in run.data.tags.items() if k.startswith("run_")}
    assert set(backtests) == {"chain", "chain_low_vol", "equal_weight"}
    runs = {k: client.get_run(v) for k, v in backtests.items()}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["equal_weight"].data.tags["strategy"] == "weights"
    assert runs["equal_weight"].data.tags["forecaster"] == "none"
    factor = runs["chain_low_vol"].data.params["decision.strategy.factors.low_vol.fn"]
    assert factor == "my_research:low_vol"
    # the factor changed the decisions: the chain's orders differ with it
    hashes = {k: r.data.tags["order_hash"] for k, r in runs.items()}
    assert len(set(hashes.values())) == 3
    assert [a.path for a in client.list_artifacts(outcome.run_id, "research")] == [
        "research/my_research.py"
    ]
