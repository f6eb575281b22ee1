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
import urllib.request
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


def test_the_tour_names_every_notebook_and_each_notebook_points_to_it():
    tour = (REPO / "notebooks" / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"]({path.name})" in tour, f"notebooks/README.md does not link {path.name}"
        first = nbformat.read(path, as_version=4).cells[0]
        assert first.cell_type == "markdown" and "](README.md)" in first.source, path.name


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


# ------------------------------------------------------------------ what a researcher sees

WARNING_IN_STDERR = re.compile(r"warn", re.IGNORECASE)
EXTERNAL_URL = re.compile(r"https?://", re.IGNORECASE)


def _outputs(outcome):
    """(cell index, output) of every output of the executed notebook."""
    nb = nbformat.read(outcome.output, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            yield i, out


@pytest.mark.slow
@pytest.mark.parametrize("stem", [r[0] for r in RUNS])
def test_executed_notebook_output_is_clean(executed, stem):
    """No warnings on stderr, no Bokeh, no raw polars reprs, nothing fetched from the web."""
    outcome = _outcome(executed, stem)
    problems = []
    for i, out in _outputs(outcome):
        text = out.get("text", "")
        data = out.get("data", {})
        stderr = out.get("output_type") == "stream" and out.get("name") == "stderr"
        if stderr and WARNING_IN_STDERR.search(text):
            problems.append(f"cell {i}: a warning on stderr: {text[:200]!r}")
        everything = text + "".join(str(v) for v in data.values())
        if "BokehJS" in everything or "bokeh" in everything.lower():
            problems.append(f"cell {i}: Bokeh output: {everything[:200]!r}")
        plain = text + str(data.get("text/plain", ""))
        if "shape: (" in plain:
            problems.append(f"cell {i}: a raw polars frame: {plain[:200]!r}")
        html = str(data.get("text/html", ""))
        if found := EXTERNAL_URL.search(html):
            problems.append(f"cell {i}: an external link in HTML: {html[found.start() :][:120]!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_data_notebook_shows_a_qa_summary_not_a_grid(executed):
    outcome = _outcome(executed, "00_data")
    text = _text(outcome)
    assert "Data quality: one check per (symbol, rule)" in text
    assert "FAIL(" not in text and "  ok  " not in text  # no per-(symbol, rule) grid
    last = [out for _, out in _outputs(outcome)][-1]
    assert last.get("output_type") == "stream" and len(last["text"].splitlines()) == 1
    assert "bars of" in last["text"] and "QA passed" in last["text"]


@pytest.mark.slow
@pytest.mark.parametrize(("stem", "count"), [("20_walkforward", 1), ("60_custom_model", 3)])
def test_reports_are_shown_as_links_relative_to_the_notebook(executed, stem, count):
    work, _ = executed
    outcome = _outcome(executed, stem)
    hrefs = []
    for _, out in _outputs(outcome):
        html = str(out.get("data", {}).get("text/html", ""))
        hrefs += re.findall(r'<a href="([^"]+report\.html)"', html)
    assert len(hrefs) == count, hrefs
    for href in hrefs:
        assert not href.startswith(("/", "http")), href
        # as the Lab resolves it from the executed copy (and a browser from the HTML beside it)
        target = (Path(outcome.output).parent / href).resolve()
        assert target.is_file() and target.is_relative_to(work.resolve()), href


# ------------------------------------------------------------------ display helpers


def test_table_formats_numbers_and_renders_offline():
    import polars as pl

    from kronos.runner.display import table

    frame = pl.DataFrame(
        {
            "model": ["vol_blend", "<b>garch</b>"],
            "CRPS": [0.00987234, 1234567.8],
            "n": [150000, 3],
            "coverage": [0.9123, None],
            "total_return": [3.7118, -0.05],
        }
    )
    shown = table(frame, "Leaderboard", percent=["coverage", "total_return"])
    assert shown.rows == (
        ("vol_blend", "0.009872", "150,000", "91.23%", "371.18%"),
        ("<b>garch</b>", "1,234,568", "3", "\u2014", "-5.00%"),
    )
    assert shown.right == {"CRPS", "n", "coverage", "total_return"}
    html = shown._repr_html_()
    assert "<caption>Leaderboard</caption>" in html
    assert ">371.18%<" in html and '"371.18%"' not in html  # no quoted strings
    assert "&lt;b&gt;garch&lt;/b&gt;" in html  # cell text is escaped, never markup
    assert "str" not in html and "f64" not in html  # no dtype row
    assert not EXTERNAL_URL.search(html)  # no web font, script or CDN
    text = repr(shown)
    assert "shape: (" not in text and text.splitlines()[0] == "Leaderboard"
    assert "371.18%" in text and '"' not in text
    long = table({"x": list(range(100))}, max_rows=10)
    assert len(long.rows) == 10 and long.note == "first 10 of 100 rows"
    with pytest.raises(KeyError, match="no column"):
        table(frame, percent=["coverag"])


def test_qa_summary_counts_checks_and_lists_failures_only():
    from kronos.data.quality import QAReport, RuleResult, SymbolQA
    from kronos.runner.display import qa_summary

    ok, warn = RuleResult(True), RuleResult(True, count=2)
    bad = RuleResult(False, count=3, first="row 7 (2020-01-02)", detail="close <= 0")
    report = QAReport(
        "store",
        [
            SymbolQA("AAPL", 10, "2020-01-01", "2020-02-01", {"a": ok, "b": warn}),
            SymbolQA("MSFT", 5, "2020-01-01", "2020-02-01", {"a": ok, "b": bad}),
        ],
        {},
    )
    summary, failed = qa_summary(report)
    assert summary.columns == (
        "symbols",
        "rows",
        "checks",
        "passed",
        "failed",
        "warnings",
        "verdict",
    )
    assert summary.rows == (("2", "15", "4", "3", "1", "1", "FAILED"),)
    assert failed is not None and failed.rows == (
        ("MSFT", "b", "3", "row 7 (2020-01-02)", "close <= 0"),
    )
    clean = QAReport("store", [SymbolQA("AAPL", 10, None, None, {"a": ok})], {})
    assert qa_summary(clean)[1] is None


def test_file_link_is_relative_to_the_notebook(tmp_path, monkeypatch):
    from kronos.runner.display import file_link

    report = tmp_path / "data" / "backtests" / "a b" / "report.html"
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    link = file_link(report, "Report", project_root=tmp_path)
    assert link.href == "../data/backtests/a%20b/report.html"  # from notebooks/
    assert link.label == "data/backtests/a b/report.html"
    assert '<a href="../data/backtests/a%20b/report.html"' in link._repr_html_()
    assert repr(link) == f"Report: {report}"
    # JupyterLab names the notebook of the kernel: an executed copy one level deeper
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "experiments/runs/x/n.ipynb"))
    assert (
        file_link(report, project_root=tmp_path).href == "../../../data/backtests/a%20b/report.html"
    )


# ------------------------------------------------------------------ GOOG without Bokeh


def test_bundled_goog_is_read_without_importing_backtesting_and_is_unchanged():
    """The CSV read gives the frame backtesting.test.GOOG gave, with no Bokeh notebook hook."""
    import subprocess
    import sys

    import polars as pl
    from backtesting.test import GOOG  # the old path, here in the test process only
    from polars.testing import assert_frame_equal

    from kronos.data.schema import TABLES
    from kronos.data.sources.bundled import _goog

    old = (
        pl.from_pandas(GOOG.rename_axis("ts").reset_index())
        .rename(str.lower)
        .with_columns(
            pl.col("ts").cast(pl.Date),
            pl.col("volume").cast(pl.Float64),
            adj_close=pl.col("close"),
            symbol=pl.lit("GOOG"),
            source=pl.lit("backtesting.goog"),
        )
    )
    columns = TABLES["bars"].columns
    assert_frame_equal(_goog().select(columns), old.select(columns), check_exact=True)

    # in a kernel (JPY_PARENT_PID set) importing backtesting sets Bokeh's notebook output
    probe = (
        "import sys; from kronos.data.sources.bundled import _goog; frame = _goog(); "
        "print(frame.height, sorted(m for m in sys.modules if m.split('.')[0] in "
        "('backtesting', 'bokeh')))"
    )
    env = {**os.environ, "JPY_PARENT_PID": str(os.getpid())}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(GOOG.shape[0]), "[]"]
    assert "Bokeh" not in done.stderr


# ------------------------------------------------------------------ make lab


def _lab_command(port: int, token: str) -> list[str]:
    """The `jupyter lab` command line of `make -n lab PORT=... TOKEN=...`."""
    import shlex
    import subprocess

    done = subprocess.run(
        ["make", "-n", "lab", f"PORT={port}", f"TOKEN={token}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.replace("\\\n", " ").splitlines()
    found = [ln for ln in lines if "jupyter lab" in ln]
    assert len(found) == 1, done.stdout
    return shlex.split(found[0])


def test_make_lab_passes_root_dir_port_and_token():
    cmd = _lab_command(9999, "x")
    assert f"--ServerApp.root_dir={REPO}" in cmd
    assert "--port=9999" in cmd and "--ServerApp.port_retries=0" in cmd
    assert "--IdentityProvider.token=x" in cmd
    assert "--LabApp.default_url=/lab/tree/notebooks" in cmd
    assert "--ip=127.0.0.1" in cmd


def test_make_lab_serves_the_project_root(tmp_path):
    """A real `jupyter lab` from the Makefile's command: data/ and the notebooks answer."""
    import socket
    import subprocess
    import time
    import urllib.error

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "kronos-test"
    cmd = _lab_command(port, token)
    cmd[0] = str(REPO / cmd[0]) if not Path(cmd[0]).is_absolute() else cmd[0]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = tmp_path / "lab.log"
    base = f"http://127.0.0.1:{port}"

    def get(path: str, *, auth: bool = True) -> tuple[int, str, str]:
        request = urllib.request.Request(base + path)
        if auth:
            request.add_header("Authorization", f"token {token}")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.read().decode(), ""
        except urllib.error.HTTPError as exc:
            return exc.code, "", exc.headers.get("Location", "")

    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*cmd, "--no-browser"], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    pytest.skip(f"jupyter lab did not start: {log.read_text()[-1500:]}")
                try:
                    if get("/api/status")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.skip(f"jupyter lab not answering after 90 s: {log.read_text()[-1500:]}")
                time.sleep(0.5)
            status, body, _ = get("/api/contents/data")
            assert status == 200 and '"type": "directory"' in body  # one level above notebooks/
            assert get("/api/contents/experiments/runs")[0] == 200
            status, body, _ = get("/api/contents/notebooks/README.md?content=0")
            assert status == 200
            status, _, location = get("/")
            assert status == 302 and location.startswith("/lab/tree/notebooks"), location
            assert get("/api/contents/data", auth=False)[0] == 403  # the token is required
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand a redirect back as an HTTPError, so that its Location can be read."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None
