"""Failures are failures: stopped and killed runs are recorded, secrets never leak by the stream.

Issue 14, points 4 (run level), 5 and 7: ``kronos run`` stopped by SIGTERM or
SIGHUP ends KILLED with its partial notebook logged; after ``kill -9`` the
next ``kronos runs list`` marks the run FAILED; a secret printed one
character at a time is redacted from the saved and logged notebook; a paper
run against an unreachable broker exits 1 with its run FAILED.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from fakes.notebooks import write_notebook
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from kronos.cli import app
from kronos.runner import redact_outputs, run_notebook
from kronos.runner.execute import SECRET_NAMES_TAG
from kronos.tracking import (
    HOST_TAG,
    ORPHANED,
    PID_START_TAG,
    PID_TAG,
    close_orphaned_runs,
    experiment_id,
    mlflow_run,
    process_alive,
    process_tags,
)

SECRET = "sk-test-stream-987654321"
EXPERIMENT = "kronos-test-failures"
PARAMETERS = "mlflow_run_id = None\nsleep_s = 0.0\n"
PRINT_KEY = """\
import os, time
from IPython.display import HTML, JSON, display
key = os.environ["APCA_API_SECRET_KEY"]
print("key: ", end="", flush=True)
for ch in key:
    print(ch, end="", flush=True)
    time.sleep(0.02)
print(flush=True)
display(HTML(f"<b>{key}</b>"), JSON({"key": key}))
"""
SLEEP = "import time\ntime.sleep(sleep_s)\nprint('woke')"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlflow_settings) -> Path:
    """A scratch repository with the notebook; the test experiment exists up front."""
    root = tmp_path_factory.mktemp("failures")
    write_notebook(root / "notebooks" / "keyed.ipynb", PARAMETERS, PRINT_KEY, SLEEP)
    client = MlflowClient(mlflow_settings.tracking_uri())
    experiment_id(client, EXPERIMENT, mlflow_settings)
    return root


@pytest.fixture
def env(mlflow_settings, monkeypatch) -> dict[str, str]:
    """The environment of a ``kronos`` command logging to the session's MLflow store."""
    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    return dict(os.environ)


def client_for(settings) -> MlflowClient:
    return MlflowClient(settings.tracking_uri())


def joined_streams(nb: nbformat.NotebookNode) -> list[str]:
    """Each code cell's stream outputs joined per stream name: what a reader sees."""
    texts = []
    for cell in nb.cells:
        for name in ("stdout", "stderr"):
            texts.append(
                "".join(
                    o.text for o in cell.get("outputs", []) if o.get("name") == name and "text" in o
                )
            )
    return texts


def assert_no_trace(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` holds no trace of the secret, in any output or joined stream."""
    text = path.read_text()
    assert SECRET not in text
    nb = nbformat.read(path, as_version=4)
    assert all(SECRET not in t for t in joined_streams(nb))
    return nb


# ------------------------------------------------------------------ redaction on the stream


def test_a_secret_split_over_stream_outputs_is_masked_where_it_starts():
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "key: sk-te"},
        {"output_type": "stream", "name": "stderr", "text": "warning\n"},
        {"output_type": "stream", "name": "stdout", "text": ["st-str", "eam-987654321 ok\n"]},
        {"output_type": "display_data", "data": {"text/html": ["<b>", SECRET, "</b>"]}},
        {"output_type": "execute_result", "data": {"application/json": {"k": [SECRET]}}},
    ]
    got = redact_outputs(outputs, [SECRET])
    assert [o.get("text") for o in got[:3]] == ["key: ***", "warning\n", " ok\n"]
    assert got[3]["data"]["text/html"] == "<b>***</b>"
    assert got[4]["data"]["application/json"] == {"k": ["***"]}
    assert outputs[0]["text"] == "key: sk-te"  # the input is not changed


def test_a_key_printed_one_character_at_a_time_leaves_no_trace(
    repo, env, mlflow_settings, run_settings, monkeypatch, tmp_path
):
    monkeypatch.chdir(repo)
    outcome = run_notebook(
        Path("notebooks/keyed.ipynb"), {}, experiment=EXPERIMENT, settings=run_settings
    )
    assert outcome.status == "FINISHED", outcome.error
    nb = assert_no_trace(repo / outcome.output)
    printed = nb.cells[2].outputs  # after the injected parameters cell
    streams = [o for o in printed if o.output_type == "stream"]
    assert len(streams) > len(SECRET) // 2  # really printed in pieces, not one output
    assert "".join(o.text for o in streams) == "key: ***\n"
    rich = [o for o in printed if o.output_type == "display_data"]
    assert [o.data["text/html"] for o in rich[:1]] == ["<b>***</b>"]
    assert rich[1].data["application/json"] == {"key": "***"}
    client = client_for(mlflow_settings)
    assert client.get_run(outcome.run_id).data.tags["secrets_redacted"] == "true"
    local = client.download_artifacts(
        outcome.run_id, f"notebook/{outcome.output.name}", str(tmp_path)
    )
    assert_no_trace(Path(local))


# ------------------------------------------------------------------ stopped and killed runs


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (the notebook's kernel)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def start_run(repo: Path, env: dict[str, str], settings) -> tuple[subprocess.Popen, Run]:
    """``kronos run`` of the sleeping notebook; returns once its sleep cell is running."""
    cmd = [sys.executable, "-m", "kronos", "run", "notebooks/keyed.ipynb", "-p", "sleep_s=120",
           "--experiment", EXPERIMENT]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    client = client_for(settings)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        found = client.search_runs([exp], filter_string=f"tags.`{PID_TAG}` = '{proc.pid}'")
        path = found[0].data.tags.get("kronos.notebook_path") if found else None
        if path and Path(path).is_file():
            try:
                nb = nbformat.read(path, as_version=4)
            except Exception:  # being written
                nb = None
            if nb is not None and nb.cells[-1].metadata.get("papermill", {}).get("status") == (
                "running"
            ):
                assert found[0].info.status == "RUNNING"
                return proc, found[0]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the run did not reach its sleep cell: {proc.communicate()}")


def notebook_artifact(client: MlflowClient, run: Run, into: Path) -> Path:
    """The logged .ipynb (its HTML rendering lies beside it, same stem)."""
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "notebook")]
    [path] = [p for p in logged if p.endswith(".ipynb")]
    assert path.removesuffix(".ipynb") + ".html" in logged
    return Path(client.download_artifacts(run.info.run_id, path, str(into)))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_kills_the_run_and_logs_the_partial_notebook(
    repo, env, mlflow_settings, tmp_path, signum
):
    proc, run = start_run(repo, env, mlflow_settings)
    kernels = children(proc.pid)
    assert kernels
    sent = time.monotonic()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert time.monotonic() - sent < 30
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in stderr and "Traceback" not in stderr
    client = client_for(mlflow_settings)
    done = client.get_run(run.info.run_id)
    assert done.info.status == "KILLED"
    assert done.data.tags["error"] == f"stopped by {name}"
    assert done.data.tags[HOST_TAG] and done.data.tags[PID_TAG] == str(proc.pid)
    nb = assert_no_trace(notebook_artifact(client, done, tmp_path))
    stopped = nb.cells[-1]
    assert any(o.get("evalue") == f"stopped by {name}" for o in stopped.outputs)
    assert "woke" not in "".join(joined_streams(nb))  # the sleep never finished
    deadline = time.monotonic() + 10  # the kernel was shut down with the run
    while any(process_alive(k) for k in kernels) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(k) for k in kernels)


def test_kill_9_leaves_a_run_the_next_command_marks_failed(
    repo, env, mlflow_settings, tmp_path, monkeypatch
):
    proc, run = start_run(repo, env, mlflow_settings)
    kernels = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    for pid in kernels:  # an orphaned kernel would sleep on: end it for the test's sake
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    client = client_for(mlflow_settings)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nobody closed it

    got = CliRunner().invoke(app, ["runs", "list", "--experiment", EXPERIMENT, "--json"])
    assert got.exit_code == 0, got.output
    assert f"run {run.info.run_id[:8]}" in got.stderr and ORPHANED in got.stderr
    row = next(r for r in json.loads(got.stdout) if r["run_id"] == run.info.run_id)
    assert row["status"] == "FAILED"
    done = client.get_run(run.info.run_id)
    assert done.info.status == "FAILED" and done.data.tags["error"] == ORPHANED
    nb = assert_no_trace(notebook_artifact(client, done, tmp_path))  # the partial notebook
    assert "key: ***" in "".join(joined_streams(nb))
    assert nb.cells[-1].metadata.papermill.status == "failed"
    again = CliRunner().invoke(app, ["runs", "list", "--experiment", EXPERIMENT])
    assert again.exit_code == 0 and ORPHANED not in again.stderr  # closed once


def test_an_orphan_closed_without_its_secrets_is_not_logged(
    repo, env, mlflow_settings, monkeypatch
):
    """Where the key is not set, the partial notebook cannot be redacted: it stays local."""
    proc, run = start_run(repo, env, mlflow_settings)
    kernels = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    for pid in kernels:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    client = client_for(mlflow_settings)
    names = client.get_run(run.info.run_id).data.tags[SECRET_NAMES_TAG].split(",")
    assert "APCA_API_SECRET_KEY" in names  # names only, never values
    assert SECRET not in ",".join(names)
    monkeypatch.delenv("APCA_API_SECRET_KEY")
    got = CliRunner().invoke(app, ["runs", "list", "--experiment", EXPERIMENT])
    assert got.exit_code == 0, got.output
    done = client.get_run(run.info.run_id)
    assert done.info.status == "FAILED" and done.data.tags["error"] == ORPHANED
    assert "APCA_API_SECRET_KEY not set" in done.data.tags["notebook_not_logged"]
    assert client.list_artifacts(run.info.run_id, "notebook") == []


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_only_runs_of_this_host_whose_process_ended_are_closed(mlflow_settings, sleeper):
    client = client_for(mlflow_settings)
    exp = experiment_id(client, "kronos-test-orphans", mlflow_settings)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    mine = process_tags()
    live = {**mine, PID_TAG: str(sleeper.pid), PID_START_TAG: process_tags_of(sleeper.pid)}
    cases = {
        "ended": {**mine, PID_TAG: str(ended.pid)},
        "pid reused": {**live, PID_START_TAG: "1"},
        "alive": live,
        "this process": mine,
        "other host": {**mine, HOST_TAG: "elsewhere", PID_TAG: str(ended.pid)},
        "untagged": {},
    }
    ids = {
        k: client.create_run(exp, run_name=k, tags=tags).info.run_id for k, tags in cases.items()
    }
    seen = []
    closed = close_orphaned_runs(client, seen.append)
    assert {r.info.run_id for r in closed} == {ids["ended"], ids["pid reused"]}
    assert sorted(r.info.run_name for r in seen) == ["ended", "pid reused"]
    status = {k: client.get_run(i).info.status for k, i in ids.items()}
    assert status == {
        "ended": "FAILED",
        "pid reused": "FAILED",
        "alive": "RUNNING",
        "this process": "RUNNING",
        "other host": "RUNNING",  # its process cannot be checked from here
        "untagged": "RUNNING",
    }
    for run_id in ids.values():
        client.set_terminated(run_id, status="FINISHED")


def process_tags_of(pid: int) -> str:
    from kronos.tracking import _started

    return _started(pid) or ""


def test_an_interrupt_in_an_mlflow_run_marks_it_killed(mlflow_settings, run_settings):
    from kronos.interrupts import RunInterrupted

    with (
        pytest.raises(RunInterrupted),
        mlflow_run("kronos-test-orphans", "stopped", settings=run_settings) as rec,
    ):
        raise RunInterrupted(signal.SIGTERM)
    run = client_for(mlflow_settings).get_run(rec.run_id)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "stopped by SIGTERM"
    assert run.data.tags[PID_TAG] == str(os.getpid())


ANY_COMMAND = """
import sys, time
from kronos.cli import app, main
from kronos.config import DecisionSettings, CalibrationSettings, load_settings
from kronos.tracking import mlflow_run

@app.command("sleepy")
def sleepy() -> None:
    with mlflow_run("kronos-test-orphans", "sleepy", settings=load_settings()) as rec:
        print(rec.run_id, flush=True)
        time.sleep(60)

sys.argv = ["kronos", "sleepy"]
main()
"""


def test_any_command_stopped_by_sigterm_ends_its_run_killed(mlflow_settings, env):
    """``kronos`` wraps every command (backtest, train, ...), not only ``kronos run``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ANY_COMMAND],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert "Traceback" not in proc.stderr.read()
    run = client_for(mlflow_settings).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "stopped by SIGTERM"


# ------------------------------------------------------------------ paper run, broker gone


@pytest.fixture
def paper_db(bundled_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "paper.duckdb"
    shutil.copy(bundled_db, path)
    return path


def test_paper_run_against_a_stopped_broker_exits_1_and_fails_its_run(
    paper_db, env, mlflow_settings, monkeypatch, tmp_path
):
    from kronos.testing.fake_alpaca import FakeAlpacaServer

    server = FakeAlpacaServer(None, "PKTESTKEYID", SECRET).start()
    url = server.url
    server.stop()  # the local fake Alpaca, turned off: nothing listens there now
    monkeypatch.chdir(tmp_path)  # no .env of the repository
    monkeypatch.setenv("APCA_PAPER_API_KEY_ID", "PKTESTKEYID")
    monkeypatch.setenv("APCA_PAPER_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("KRONOS_ALPACA_TRADING_URL", url)
    monkeypatch.setenv("KRONOS_ALPACA_TIMEOUT_S", "0.5")
    args = ["paper", "run", "--broker", "alpaca", "--cycles", "1", "--interval", "0",
            "--model", "ewma", "--db", str(paper_db), "--json"]  # fmt: skip
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 1, got.output
    host = url.removeprefix("http://")
    assert "paper run failed: 0 of 1 cycle(s) completed; the last failed (cycle 1): " in got.stderr
    assert f"(broker {host} unreachable: check KRONOS_ALPACA_TRADING_URL" in got.stderr
    assert "Traceback" not in got.output and SECRET not in got.output
    summary = json.loads(got.stdout)
    assert summary["status"] == "FAILED" and summary["cycles"] == 0
    assert summary["cycles_failed"] == 1
    run = client_for(mlflow_settings).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.metrics == {"cycles_completed": 0.0, "cycles_failed": 1.0}
    assert host in run.data.tags["error"]


def test_paper_loop_fails_only_when_its_last_cycle_failed(paper_db):
    """A broker outage the next cycle recovers from is counted; one at the end fails the run."""
    from datetime import date

    from kronos.config import CalibrationSettings, DecisionSettings
    from kronos.data.store import Store
    from kronos.execution.brokers.alpaca import AlpacaBroker, AlpacaTradingSettings
    from kronos.execution.paper import PaperConfig, PaperLoop
    from kronos.testing.chaos import market_frame
    from kronos.testing.fake_alpaca import FakeAlpacaServer, FakeMarket

    with Store.open(paper_db) as store:
        symbols = tuple(
            r[0]
            for r in store.con.execute(
                "SELECT DISTINCT symbol FROM bars WHERE source = 'skfolio.sp500' ORDER BY 1"
            ).fetchall()
        )
        frame, end = market_frame(store, symbols, date(2022, 3, 1), 10)
        market = FakeMarket.from_bars(frame, start=date(2022, 3, 1), end=end, cash=100_000.0)
        with FakeAlpacaServer(None, "PKTESTKEYID", SECRET, market=market) as server:
            settings = AlpacaTradingSettings(
                APCA_PAPER_API_KEY_ID="PKTESTKEYID",
                APCA_PAPER_API_SECRET_KEY=SECRET,
                KRONOS_ALPACA_TRADING_URL=server.url,
                KRONOS_ALPACA_TIMEOUT_S=0.3,
            )
            broker = AlpacaBroker(settings, backoff_s=0.01, sleep=lambda _s: None)
            config = PaperConfig(
                account="outage",
                model="ewma",
                symbols=symbols,
                forecast=False,
                calibration=CalibrationSettings(),
                settings=DecisionSettings(),
            )

            def outage(_clock) -> None:  # the clock fails on every try of the next cycle
                server.inject("500", method="GET", path="/v2/clock", times=4)

            loop = PaperLoop(store, broker, config)
            recovered = loop.run(cycles=3, wait=lambda c: outage(c) if c else None)
            assert [f.cycle for f in loop.failures] == [2] and len(recovered) == 2
            assert loop.failures[0].unavailable
            assert loop.outcome(recovered) is None  # cycle 3 worked again
            ended = loop.run(cycles=2, wait=outage)
            assert len(ended) == 1 and [f.cycle for f in loop.failures] == [5]
            assert loop.outcome(ended) == (
                "1 of 2 cycle(s) completed; the last failed (cycle 5): "
                "GET /v2/clock: HTTP 500 after 4 attempts"
            )
        journal = store.con.execute(
            "SELECT cycle, status FROM paper_cycles WHERE account = 'outage' ORDER BY 1"
        ).fetchall()
    assert [s for _, s in journal] == ["done", "failed", "done", "done", "failed"]
