"""The notebook runner: parameters, secrets, run specs, schedules, and five real executions.

Executing a notebook starts a kernel (a few seconds), so the executions happen
once, in the module fixture ``executed``; the tests below read what they left.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import nbformat
import pytest
import yaml
from fakes.notebooks import write_notebook
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from kronos.cli import app
from kronos.config import load_settings
from kronos.runner import (
    Parameter,
    RunnerError,
    checked_parameters,
    coerce,
    compare_runs,
    load_run_spec,
    metric_direction,
    notebook_parameters,
    redact_notebook,
    run_notebook,
    schedule_lines,
    spec_parameters,
    validate_cron,
)

SECRET = "sk-test-123456789"
EXPERIMENT = "kronos-test-runner"
REPO = Path(__file__).resolve().parents[1]

OK_PARAMETERS = """\
mlflow_run_id = None
n = 3  # how many
scale: float = 1.0
items = [
    "a",  # first
    "b",
]
db = ""
"""
OK_BODY = """\
import os
from kronos.config import load_settings
from kronos.tracking import attach_run
rec = attach_run(mlflow_run_id, load_settings().tracking)
rec.log_metrics({"x": n * scale, "sharpe": n / 10, "val_crps": 1 / n})
print("secret:", os.environ.get("APCA_API_SECRET_KEY"), "items:", items)
"""


def declared(path: Path) -> dict[str, Parameter]:
    return notebook_parameters(path)


# ------------------------------------------------------------------ parameters


def test_parameters_are_read_with_types_defaults_and_help(tmp_path):
    nb = write_notebook(
        tmp_path / "p.ipynb",
        "mlflow_run_id = None\n"
        "n = 3  # steps\n"
        "rate: float = 1e-3\n"
        "symbols = [\n    'AAPL',\n    'MSFT',\n]  # e.g. key=value in help\n"
        "asof: str | None = None\n"
        "when = str(2020)\n"
        "flag = False  # type: bool\n",
        "print(n)",
    )
    got = notebook_parameters(nb)
    assert list(got) == ["mlflow_run_id", "n", "rate", "symbols", "asof", "when", "flag"]
    assert (got["n"].type, got["n"].default, got["n"].help) == ("int", 3, "steps")
    assert (got["rate"].type, got["rate"].default) == ("float", 0.001)
    # papermill's own inspection skips a line with two "=" (here in the help comment)
    assert got["symbols"].default == ["AAPL", "MSFT"] and got["symbols"].type == "list"
    assert got["symbols"].help == "e.g. key=value in help"
    assert got["asof"].type == "str | None" and got["asof"].default is None
    assert (got["when"].type, got["when"].default) == ("any", "str(2020)")  # not a literal
    assert got["flag"].type == "bool"
    assert got["mlflow_run_id"].type == "None"


def test_a_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = write_notebook(tmp_path / "plain.ipynb", None, "x = 1")
    with pytest.raises(RunnerError, match=r"plain\.ipynb: no cell tagged 'parameters'"):
        notebook_parameters(nb)
    with pytest.raises(RunnerError, match="no such notebook"):
        notebook_parameters(tmp_path / "missing.ipynb")
    no_run_id = write_notebook(tmp_path / "norun.ipynb", "n = 1")
    with pytest.raises(RunnerError, match="must declare mlflow_run_id = None"):
        checked_parameters(no_run_id, {})


def test_cli_strings_are_coerced_to_the_declared_types(tmp_path):
    nb = write_notebook(
        tmp_path / "t.ipynb",
        "mlflow_run_id = None\nn = 3\nrate = 0.5\nflag = False\nitems = []\nopts = {}\n"
        "name = 'x'\nanything = None\nasof: str | None = None\n",
    )
    params = declared(nb)
    got = coerce(
        {
            "n": "12",
            "rate": "2",
            "flag": "yes",
            "items": "[a, 2]",
            "opts": "{depth: 2}",
            "name": "007",
            "anything": "[1, 2.5]",
            "asof": "null",
        },
        params,
        env={},
    )
    assert got == {
        "n": 12,
        "rate": 2.0,
        "flag": True,
        "items": ["a", 2],
        "opts": {"depth": 2},
        "name": "007",  # a str default keeps the text as is
        "anything": [1, 2.5],
        "asof": None,
    }
    assert type(got["rate"]) is float
    for text, value in [("true", True), ("0", False), ("No", False), ("1", True)]:
        assert coerce({"flag": text}, params, env={}) == {"flag": value}
    # values from a YAML run spec arrive typed
    typed = coerce(
        {"n": 4, "rate": 1, "flag": False, "name": date(2021, 1, 4), "anything": date(2021, 1, 4)},
        params,
        env={},
    )
    assert typed == {
        "n": 4,
        "rate": 1.0,
        "flag": False,
        "name": "2021-01-04",
        "anything": "2021-01-04",
    }


def test_unknown_and_bad_parameters_are_all_reported(tmp_path):
    nb = write_notebook(
        tmp_path / "t.ipynb", "mlflow_run_id = None\nmax_steps = 300\nflag = False\nitems = []\n"
    )
    with pytest.raises(RunnerError) as info:
        coerce(
            {
                "max_step": "3",
                "flag": "maybe",
                "items": "a",
                "mlflow_run_id": "abc",
            },
            declared(nb),
            env={},
        )
    problems = info.value.problems
    assert problems[0] == "unknown parameter 'max_step' (did you mean 'max_steps'?)"
    assert problems[1] == (
        "parameter 'flag': cannot use 'maybe' (expected bool; the default is False)"
    )
    assert problems[2].startswith("parameter 'items': cannot use 'a' (expected list in YAML")
    assert "'mlflow_run_id' is set by the runner" in problems[3]
    with pytest.raises(RunnerError, match=r"'max_steps': cannot use '3\.5' \(expected int"):
        coerce({"max_steps": "3.5"}, declared(nb), env={})
    with pytest.raises(RunnerError, match=r"t\.ipynb: unknown parameter 'nope'"):
        checked_parameters(nb, {"nope": "1"})


def test_secret_parameters_are_refused_without_echoing_them(tmp_path, monkeypatch):
    nb = write_notebook(tmp_path / "t.ipynb", "mlflow_run_id = None\nnote = ''\napi_key = ''\n")
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    with pytest.raises(RunnerError) as info:
        checked_parameters(nb, {"note": f"Bearer {SECRET}", "api_key": "x"})
    message = str(info.value)
    assert "'note': its value holds the secret in $APCA_API_SECRET_KEY" in message
    assert "'api_key' looks like a secret" in message
    assert SECRET not in message
    # short values of secret-looking variables are not treated as secrets
    monkeypatch.setenv("SOME_TOKEN", "1")
    assert checked_parameters(nb, {"note": "1"})[1] == {"note": "1"}


def test_redaction_covers_sources_and_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(f"key = '{SECRET}'")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"got {SECRET}\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": f"'{SECRET}'"}),
    ]
    nb.cells.append(cell)
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert redact_notebook(path, env={"MY_SECRET": SECRET})
    text = path.read_text()
    assert SECRET not in text and text.count("***") == 3
    assert not redact_notebook(path, env={"MY_SECRET": SECRET})  # nothing left


# ------------------------------------------------------------------ specs and schedules


@pytest.mark.parametrize(
    "expr",
    [
        "0 22 * * 3",
        "30 22 * * 1-5",
        "*/15 14-21 * * 1-5",
        "0 0 1,15 jan-jun sun",
        "5 4 * * 7",
        "0 9-17/2 * * MON-FRI",
        "@daily",
    ],
)
def test_valid_cron_expressions(expr):
    assert validate_cron(expr) == (expr.lower() if expr.startswith("@") else expr)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("0 22 * *", "has 4 fields; expected 5"),
        ("0 24 * * *", "hour '24': out of range 0-23"),
        ("60 * * * *", "minute '60': out of range 0-59"),
        ("0 0 0 * *", "day of month '0': out of range 1-31"),
        ("0 0 * 13 *", "month '13': out of range 1-12"),
        ("0 0 * * 8", "day of week '8': out of range 0-7"),
        ("0 0 * * 5-1", "range runs backwards"),
        ("*/0 * * * *", "step '0' is not a positive number"),
        ("0 0 * * fry", "expected *, a number, a name or a range"),
        ("@dayly", "did you mean '@daily'?"),
    ],
)
def test_invalid_cron_expressions(expr, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        validate_cron(expr)


def test_run_spec_loading_did_you_mean_and_cron_validation(tmp_path):
    good = tmp_path / "retrain.yaml"
    good.write_text(
        "name: retrain\nnotebook: notebooks/10_retrain.ipynb\n"
        "parameters: {max_steps: 5}\ncron: '0  22 * * 3'\n"
    )
    spec = load_run_spec(good)
    assert spec.experiment == "kronos-retrain"  # from the workflow table
    assert spec.cron == "0 22 * * 3" and spec.timeout is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: Bad Name\nnotebook: /abs/x.ipynb\nparamters: {}\ncron: '0 25 * * *'\ntimeout: 0\n"
    )
    with pytest.raises(RunnerError) as info:
        load_run_spec(bad)
    text = str(info.value)
    assert "unknown key 'paramters' (did you mean 'parameters'?)" in text
    assert "cron: cron '0 25 * * *': hour '25': out of range 0-23" in text
    assert "notebook: expected a .ipynb path relative to the repository" in text
    assert "name: String should match pattern" in text and "timeout:" in text
    assert all(line.startswith(f"{bad}: ") for line in text.splitlines())
    with pytest.raises(RunnerError, match="no such run spec"):
        load_run_spec(tmp_path / "none.yaml")


def test_example_specs_load_and_match_their_notebooks():
    paths = sorted((REPO / "experiments").glob("*.yaml"))
    names = {p.stem for p in paths}
    assert {
        "weekly_retrain",
        "nightly_calibration",
        "walkforward_ewma",
        "paper_trading",
        "data_refresh",
    } <= names
    specs = {p.stem: load_run_spec(p) for p in paths}
    assert specs["weekly_retrain"].cron == "0 22 * * 3"  # Wednesday night
    assert specs["paper_trading"].experiment == "kronos-paper"
    for spec in specs.values():
        if (REPO / spec.notebook).is_file():  # the notebooks are written separately
            spec_parameters(spec, REPO)


def test_schedule_lines_name_each_spec_and_escape_percent(tmp_path):
    specs = tmp_path / "experiments"
    specs.mkdir()
    (specs / "a.yaml").write_text(
        "name: a\ndescription: nightly thing\nnotebook: notebooks/a.ipynb\ncron: '30 22 * * 1-5'\n"
    )
    (specs / "b.yaml").write_text("name: b\nnotebook: notebooks/b.ipynb\n")  # no cron
    lines = schedule_lines(sorted(specs.glob("*.yaml")), tmp_path, "/venv/bin/kronos")
    assert lines == [
        "# a (experiments/a.yaml): nightly thing",
        f"30 22 * * 1-5 cd {tmp_path} && /venv/bin/kronos run experiments/a.yaml"
        " >> experiments/runs/cron.log 2>&1",
    ]
    odd = tmp_path / "100%"
    odd.mkdir()
    (odd / "c.yaml").write_text("name: c\nnotebook: n/c.ipynb\ncron: '@hourly'\n")
    assert "100\\%" in schedule_lines([odd / "c.yaml"], odd, "kronos")[1]


def test_schedule_command_checks_specs_against_notebooks(tmp_path, monkeypatch, mlflow_settings):
    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    write_notebook(
        tmp_path / "notebooks" / "10_retrain.ipynb", "mlflow_run_id = None\nmodel = 'x'\n"
    )
    Path("experiments").mkdir()
    Path("experiments/r.yaml").write_text(
        "name: r\nnotebook: notebooks/10_retrain.ipynb\nparameters: {model: nbeats}\n"
        "cron: '0 22 * * 3'\n"
    )
    got = CliRunner().invoke(app, ["schedule", "--bin", "kronos", "--json"])
    assert got.exit_code == 0, got.output
    [entry] = json.loads(got.stdout)
    assert entry["line"].startswith("0 22 * * 3 cd ") and entry["name"] == "r"
    client = MlflowClient(mlflow_settings.tracking_uri())
    assert client.get_experiment_by_name("kronos-paper") is not None  # created up front
    Path("experiments/r.yaml").write_text(
        "name: r\nnotebook: notebooks/10_retrain.ipynb\nparameters: {modle: nbeats}\n"
    )
    bad = CliRunner().invoke(app, ["schedule"])
    assert bad.exit_code == 2
    assert "unknown parameter 'modle' (did you mean 'model'?)" in bad.stderr


# ------------------------------------------------------------------ executions


@pytest.fixture(scope="module")
def executed(tmp_path_factory, mlflow_settings):
    """Five executions in a scratch repository: two good, a raising cell, a timeout, a crash."""
    from kronos.data.store import Store

    repo = tmp_path_factory.mktemp("repo")
    write_notebook(repo / "notebooks" / "ok.ipynb", OK_PARAMETERS, OK_BODY)
    write_notebook(
        repo / "notebooks" / "fail.ipynb",
        "mlflow_run_id = None\n",
        "print('before')",
        "raise ValueError('boom')",
        "print('never')",
    )
    write_notebook(
        repo / "notebooks" / "slow.ipynb", "mlflow_run_id = None\n", "import time\ntime.sleep(60)"
    )
    write_notebook(
        repo / "notebooks" / "crash.ipynb", "mlflow_run_id = None\n", "import os\nos._exit(1)"
    )
    (repo / "experiments").mkdir()
    (repo / "experiments" / "ok_spec.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "ok-spec",
                "notebook": "notebooks/ok.ipynb",
                "experiment": EXPERIMENT,
                "parameters": {"n": 2, "scale": 1},
                "description": "the spec run",
            }
        )
    )
    db = repo / "tiny.duckdb"
    with Store.open(db) as store:
        store.con.execute(
            "INSERT INTO bars (symbol, ts, adj_close, source) VALUES "
            "('A', '2020-01-02', 1.0, 't'), ('B', '2020-01-03', 2.0, 't')"
        )

    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        mp.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))  # the kernels log here
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("APCA_API_SECRET_KEY", SECRET)
        common = {"experiment": EXPERIMENT, "settings": load_settings()}
        results["ok"] = run_notebook(
            Path("notebooks/ok.ipynb"), {"n": "4", "items": "[c, d]", "db": str(db)}, **common
        )
        runner = CliRunner()
        results["spec_cli"] = runner.invoke(
            app, ["run", "experiments/ok_spec.yaml", "-p", "n=5", "--json"]
        )
        results["fail_cli"] = runner.invoke(app, ["run", "fail", "--experiment", EXPERIMENT])
        results["slow"] = run_notebook(Path("notebooks/slow.ipynb"), {}, timeout=2, **common)
        results["crash"] = run_notebook(Path("notebooks/crash.ipynb"), {}, **common)
    return repo, results


def client_for(settings) -> MlflowClient:
    return MlflowClient(settings.tracking_uri())


def test_a_run_logs_params_tags_metrics_and_the_notebook_in_one_run(executed, mlflow_settings):
    repo, results = executed
    ok = results["ok"]
    assert ok.status == "FINISHED" and ok.error is None, ok.error
    assert re.fullmatch(r"experiments/runs/ok/\d{8}T\d{6}Z\.ipynb", ok.output.as_posix())
    saved = nbformat.read(repo / ok.output, as_version=4)
    injected = [c for c in saved.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert f'mlflow_run_id = "{ok.run_id}"' in injected[0].source
    client = client_for(mlflow_settings)
    run = client.get_run(ok.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["x"] == 4.0  # logged by the notebook into the runner's run
    notebook_params = {k: v for k, v in run.data.params.items() if not k.startswith("settings.")}
    assert notebook_params == {
        "n": "4",
        "scale": "1.0",
        "items": "['c', 'd']",
        "db": str(repo / "tiny.duckdb"),
    }
    # the resolved settings the kernel inherits, and their hash
    assert run.data.params["settings.tracking.mlruns_dir"] == str(mlflow_settings.mlruns_dir)
    assert len(run.data.tags["settings_hash"]) == 16
    tags = run.data.tags
    assert tags["notebook"] == "notebooks/ok.ipynb" and len(tags["spec_hash"]) == 16
    assert tags["git_commit"] and tags["git_dirty"] in ("true", "false")
    assert tags["data_range"] == "2020-01-02..2020-01-03" and tags["data_symbols"] == "2"
    artifacts = [a.path for a in client.list_artifacts(ok.run_id, "notebook")]
    # the executed notebook, and the same rendered as HTML for the MLflow UI
    assert artifacts == [
        f"notebook/{ok.output.with_suffix('.html').name}",
        f"notebook/{ok.output.name}",
    ]


def test_a_secret_printed_by_a_cell_is_redacted_in_notebook_and_artifact(
    executed, mlflow_settings, tmp_path
):
    repo, results = executed
    ok = results["ok"]
    text = (repo / ok.output).read_text()
    assert SECRET not in text
    assert "secret: ***" in text and "items: ['c', 'd']" in text
    client = client_for(mlflow_settings)
    assert client.get_run(ok.run_id).data.tags["secrets_redacted"] == "true"
    local = client.download_artifacts(ok.run_id, f"notebook/{ok.output.name}", str(tmp_path))
    assert SECRET not in Path(local).read_text()


def test_cli_runs_a_spec_with_overrides(executed, mlflow_settings):
    _, results = executed
    got = results["spec_cli"]
    assert got.exit_code == 0, got.output
    data = json.loads(got.stdout)
    assert data["status"] == "FINISHED" and data["experiment"] == EXPERIMENT
    assert data["output"].startswith("experiments/runs/ok-spec/")
    run = client_for(mlflow_settings).get_run(data["mlflow_run_id"])
    assert run.info.run_name == "ok-spec"
    assert run.data.params["n"] == "5" and run.data.params["scale"] == "1.0"  # -p beats the spec
    assert run.data.metrics["x"] == 5.0
    assert run.data.tags["run_spec"] == "experiments/ok_spec.yaml"
    assert run.data.tags["settings_hash"] == data["settings_hash"]
    assert run.data.tags["mlflow.note.content"] == "the spec run"


def test_a_raising_cell_fails_the_run_and_keeps_the_partial_notebook(executed, mlflow_settings):
    repo, results = executed
    got = results["fail_cli"]
    assert got.exit_code == 1, got.output
    assert "failed: ValueError: boom (cell In [" in got.stderr
    partial = re.search(r"the partial notebook is (\S+)", got.stderr).group(1)
    nb = nbformat.read(repo / partial, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [o.get("text") for o in code[2].outputs] == ["before\n"]
    assert code[3].outputs[0].ename == "ValueError"
    assert code[4].execution_count is None  # never ran
    run_id = re.search(r"MLflow run +([0-9a-f]{32})", got.stdout).group(1)
    client = client_for(mlflow_settings)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("ValueError: boom")
    assert [a.path for a in client.list_artifacts(run_id, "notebook")] == [
        f"notebook/{Path(partial).with_suffix('.html').name}",
        f"notebook/{Path(partial).name}",
    ]


def test_a_cell_timeout_or_dead_kernel_fails_the_run(executed, mlflow_settings):
    repo, results = executed
    client = client_for(mlflow_settings)
    for key, message in [
        ("slow", "CellTimeoutError: a cell ran past the timeout of 2 s"),
        ("crash", "DeadKernelError: the kernel died"),
    ]:
        outcome = results[key]
        assert outcome.status == "FAILED" and outcome.error.startswith(message), outcome.error
        assert client.get_run(outcome.run_id).info.status == "FAILED"
        nb = nbformat.read(repo / outcome.output, as_version=4)
        stopped = nb.cells[-1]
        assert stopped.metadata.papermill.status == "failed"
        assert any(o.get("ename") == "RunnerError" for o in stopped.outputs)
        assert client.list_artifacts(outcome.run_id, "notebook")
    assert results["slow"].seconds < 30


def test_runs_list_and_compare(executed, mlflow_settings, monkeypatch):
    _, results = executed
    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    got = runner.invoke(app, ["runs", "list", "--experiment", EXPERIMENT, "--json"])
    assert got.exit_code == 0, got.output
    rows = json.loads(got.stdout)
    assert [r["name"] for r in rows][:5] == ["crash", "slow", "fail", "ok-spec", "ok"]
    assert {r["experiment"] for r in rows} == {EXPERIMENT}
    table = runner.invoke(app, ["runs", "list", "--max", "3"])
    assert table.exit_code == 0 and "crash" in table.stdout
    typo = runner.invoke(app, ["runs", "list", "--experiment", "kronos-test-runer"])
    assert typo.exit_code == 2 and "did you mean 'kronos-test-runner'?" in typo.stderr

    ok = results["ok"].run_id
    spec = json.loads(results["spec_cli"].stdout)["mlflow_run_id"]
    got = runner.invoke(app, ["runs", "compare", ok[:10], spec, "--json"])
    assert got.exit_code == 0, got.output
    data = json.loads(got.stdout)
    assert [r["run_id"] for r in data["runs"]] == [ok, spec]
    assert data["params"]["n"] == {ok: "4", spec: "5"}
    assert "scale" not in data["params"]  # equal in both runs
    assert data["metrics"]["sharpe"] == {ok: 0.4, spec: 0.5}
    assert data["best"] == {"sharpe": [spec], "val_crps": [spec]}  # higher; lower is better
    shown = runner.invoke(app, ["runs", "compare", ok, spec])
    assert shown.exit_code == 0 and "0.5 *" in shown.stdout
    missing = runner.invoke(app, ["runs", "compare", ok, "fffffff"])
    assert missing.exit_code == 2 and "no run with id or prefix 'fffffff'" in missing.stderr


def test_bad_cli_input_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_notebook(
        tmp_path / "notebooks" / "10_retrain.ipynb", "mlflow_run_id = None\nmax_steps = 3\n"
    )
    runner = CliRunner()
    typo = runner.invoke(app, ["run", "10_retrian"])
    assert typo.exit_code == 2 and "did you mean '10_retrain'?" in typo.stderr
    param = runner.invoke(app, ["run", "10_retrain", "-p", "max_step=4"])
    assert param.exit_code == 2
    assert "unknown parameter 'max_step' (did you mean 'max_steps'?)" in param.stderr
    form = runner.invoke(app, ["run", "10_retrain", "-p", "max_steps"])
    assert form.exit_code == 2 and "expected key=value" in form.stderr
    write_notebook(tmp_path / "plain.ipynb", None, "x = 1")
    plain = runner.invoke(app, ["run", "plain.ipynb"])
    assert plain.exit_code == 2 and "no cell tagged 'parameters'" in plain.stderr


def test_metric_directions():
    assert metric_direction("sharpe") == ("higher", None)
    assert metric_direction("val_crps") == ("lower", None)
    assert metric_direction("test/mae") == ("lower", None)
    assert metric_direction("max_drawdown") == ("magnitude", None)
    assert metric_direction("coverage") == ("target", 0.9)
    assert metric_direction("turnover") is None


def test_compare_marks_nearest_coverage_and_smallest_drawdown():
    from mlflow.entities import Metric, Run, RunData, RunInfo

    def run(run_id: str, **metrics: float) -> Run:
        info = RunInfo(run_id, "0", "u", "FINISHED", 0, 1, "active", run_name=run_id)
        data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        return Run(info, data)

    got = compare_runs(
        [
            run("a", coverage=0.95, max_drawdown=-0.30, turnover=1.0),
            run("b", coverage=0.88, max_drawdown=-0.10, turnover=2.0),
        ]
    )
    assert got.best == {"coverage": ["b"], "max_drawdown": ["b"]}  # turnover: no direction
