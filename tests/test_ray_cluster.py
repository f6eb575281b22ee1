"""Backtests and sweeps on a real Ray cluster (``ray start --head``) through ``ray://``.

The head runs with token authentication, in its own folder, so a relative
path that reached a worker would resolve there and miss the store. Checks:
a backtest (folds as tasks) and a two-variant sweep (a task per fold, a task
per trading loop) give the local executor's order hashes, exactly; the sweep
runs from a folder other than the project root with a relative ``--db``;
``--resume`` skips the recorded variant and says so; a worker that cannot
see the store names its host and the path; a non-kronos error comes back with
the remote traceback; a relative path never leaves the driver; a missing
token is one clear line. The cluster is always stopped (the session it
leads, then any process left that names its temp folder).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kronos.backtest.run import run_backtest
from kronos.backtest.spec import expand_sweep, parse_spec
from kronos.data import loaders
from kronos.data.store import Store
from kronos.errors import ConfigError, InputError, KronosError

RAW = {  # tests/test_backtest.py's settings on four months (two folds), no hole in the bars
    "name": "synthetic_ewma",
    "universe": {"source": "synthetic"},
    "dates": {"start": "2002-01-02", "end": "2002-04-30"},
    "forecaster": {"name": "ewma"},
    "splits": {"train_sessions": 250, "retrain": "quarterly"},
    "rebalance": {"every": "weekly", "weekday": 2},
    "costs": {"commission_bps": 2.0, "slippage_bps": 5.0, "volume_share": 0.05},
    "decision": {
        "strategy": {"strat_reco_topk": 6, "strat_min_market_cap": 0, "strat_min_dollar_vol": 0},
        "policy": {"policy_min_abs_dev": 0, "policy_min_sigma_z": 0},
    },
}
SWEEP = "costs.commission_bps=2,20"
START_WAIT_S = 60


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc: subprocess.Popen, temp_dir: Path) -> None:
    """Stop our head: the session it leads (workers have process groups of their own),
    then whatever still names its temp folder.

    Never ``ray stop``: it ends every Ray process on the machine, a parallel
    test worker's local Ray included.
    """
    import psutil

    mine = str(temp_dir)
    for _ in range(2):
        for p in psutil.process_iter(["cmdline"]):
            try:
                ours = os.getsid(p.pid) == proc.pid
                if ours or any(mine in arg for arg in p.info["cmdline"] or ()):
                    p.kill()
            except (psutil.Error, OSError):
                pass
        try:
            proc.wait(10)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A one-node Ray cluster on 127.0.0.1 with token auth, starting.

    ``(ray://address, token, wait)``: call ``wait()`` before using it (the
    head boots while the store and the local references are built).
    """
    pytest.importorskip("ray.util.client", reason="ray[client] is not installed")
    base = tmp_path_factory.mktemp("ray")
    head_dir = base / "head"  # the head's (and so its workers') working directory
    head_dir.mkdir()
    temp_dir = Path("/tmp") / f"kr-ray-{secrets.token_hex(4)}"  # short: socket paths
    gcs, client, dash, agent, nm, om, metrics, env_agent = _free_ports(8)
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--ray-client-server-port", str(client), "--num-cpus", "2",
        "--include-dashboard", "false", "--dashboard-port", str(dash),
        "--dashboard-agent-listen-port", str(agent), "--node-manager-port", str(nm),
        "--object-manager-port", str(om), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(env_agent), "--temp-dir", str(temp_dir),
    ]  # fmt: skip
    log = (base / "head.log").open("w")
    proc = subprocess.Popen(
        cmd, cwd=head_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield f"ray://127.0.0.1:{client}", token, lambda: _wait(proc, client, base / "head.log")
    finally:
        _stop(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait(proc: subprocess.Popen, port: int, log: Path) -> None:
    """Until the head's client server answers on ``port``; skip if the head cannot start."""
    deadline = time.monotonic() + START_WAIT_S
    while True:
        if proc.poll() is not None:
            tail = log.read_text().strip().splitlines()[-3:]
            pytest.skip(f"ray start --head exited {proc.returncode}: {' | '.join(tail)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            # the client server listens before the node is up; ray start says when it is
            if "Ray runtime started" in log.read_text():
                return
            raise OSError("starting")
        except OSError:
            if time.monotonic() > deadline:
                pytest.skip(f"ray start --head: no client server on {port} in {START_WAIT_S} s")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder (not the project root) holding the store ``k.duckdb`` and the spec."""
    folder = tmp_path_factory.mktemp("sweep")
    with Store.open(folder / "k.duckdb") as s:
        loaders.load_synthetic(s, n_symbols=16, years=3.5, seed=11)
    (folder / "spec.yaml").write_text(yaml.safe_dump(RAW))
    return folder


@pytest.fixture(scope="module")
def local_hashes(cluster, workdir) -> dict[str, str]:
    """The local executor's order hashes: the spec alone, then the sweep's variants."""
    hashes = {}
    with Store.open(workdir / "k.duckdb", read_only=True) as store:
        hashes["single"] = run_backtest(parse_spec(RAW), store).order_hash
        for _, spec in expand_sweep(parse_spec(RAW), [SWEEP]):
            hashes[spec.name] = run_backtest(spec, store).order_hash
    return hashes


@pytest.fixture(scope="module")
def on_cluster(cluster, local_hashes):
    """This process as a driver of ``cluster`` (its token in the environment), for the module."""
    ray = pytest.importorskip("ray")
    from kronos.backtest.executor import connect

    address, token, wait = cluster
    wait()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", token)
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        ray.shutdown()  # a local Ray another test left running
        try:
            connect(address)  # once: the CLI runs below find it connected
            yield address
        finally:
            ray.shutdown()


def _cli(*args: str) -> list[dict] | dict:
    from typer.testing import CliRunner

    from kronos.cli import app

    got = CliRunner().invoke(app, ["backtest", *args, "--json", "--no-mlflow"])
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)


def test_cluster_gives_local_results_from_another_folder_and_resumes(
    workdir, local_hashes, on_cluster, monkeypatch
):
    local = dict(local_hashes)
    single = local.pop("single")
    # the driver in another folder than the project root, with a relative --db
    monkeypatch.chdir(workdir)
    ray_opts = ["--db", "k.duckdb", "--out", "out", "--executor", "ray", "--ray-address"]

    one = _cli("spec.yaml", *ray_opts, on_cluster)  # folds as tasks
    assert one["order_hash"] == single  # order ids carry the name: not a variant's hash

    rows = _cli("spec.yaml", "--sweep", SWEEP, *ray_opts, on_cluster)
    assert {r["name"]: r["order_hash"] for r in rows} == local
    assert not any(r["skipped"] for r in rows)
    records = workdir / "out" / "synthetic_ewma" / "sweep"
    assert sorted(p.stem for p in records.glob("*.json")) == sorted(r["spec_hash"] for r in rows)

    # an interruption lost the second variant's record: --resume runs only that one
    (records / f"{rows[1]['spec_hash']}.json").unlink()
    again = _cli("spec.yaml", "--sweep", SWEEP, "--resume", *ray_opts, on_cluster)
    assert [r["skipped"] for r in again] == [True, False]
    assert again[0]["report"] == rows[0]["report"]  # the recorded run, not a new one
    assert again[1]["report"] != rows[1]["report"]
    assert [r["order_hash"] for r in again] == [r["order_hash"] for r in rows]


def test_worker_errors_reach_the_driver(workdir, on_cluster):
    from kronos.backtest.executor import RemoteTaskError, map_calls
    from kronos.backtest.run import run_on_db

    spec = parse_spec(RAW)
    missing = workdir / "nowhere" / "k.duckdb"
    with pytest.raises(
        InputError, match=rf"no kronos database at {re.escape(str(missing))} on host \S+"
    ):
        map_calls(run_on_db, [(spec, missing)], "ray", on_cluster)
    with pytest.raises(
        ConfigError, match=r"relative path k\.duckdb given to the Ray task run_on_db"
    ):
        map_calls(run_on_db, [(spec, Path("k.duckdb"))], "ray", on_cluster)
    # not a kronos error: its type and the remote traceback's last lines come back
    with pytest.raises(RemoteTaskError, match=r"(?s)ray::loads\(\).*JSONDecodeError.*Expecting"):
        map_calls(json.loads, [("not json",)], "ray", on_cluster)


def test_token_mode_without_a_token_is_one_clear_line(tmp_path, monkeypatch):
    from kronos.backtest.executor import check_address, check_auth

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "auth_token"))
    with pytest.raises(KronosError) as caught:
        check_auth("ray://127.0.0.1:1")
    message = str(caught.value)
    assert "\n" not in message
    assert f"RAY_AUTH_TOKEN is unset and {tmp_path / 'auth_token'} is missing" in message
    assert "RAY_AUTH_TOKEN_PATH" in message
    for bad in ("http://head:10001", "head", "ray://head"):
        with pytest.raises(ConfigError, match="give ray://HOST:PORT"):
            check_address(bad)
