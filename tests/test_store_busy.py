"""A busy store waits, then says so (issue 14, point 6).

A real second process holds the DuckDB file for writing; writers and readers in
this process or in a ``kronos`` subprocess wait ``KRONOS_LOCK_WAIT_S``, then fail
with StoreBusy naming the holder's PID and command line, or succeed when the
holder lets go within the wait.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from kronos.cli import main
from kronos.data.errors import KronosDataError, SchemaVersionError
from kronos.data.store import (
    FIRST_DELAY_S,
    MAX_DELAY_S,
    Store,
    latest_version,
    lock_holder,
    wait_for_lock,
)
from kronos.errors import StoreBusy

MARKER = "kronos-test-lock-holder"  # in the holder's command line, so the message can show it
LOCK_MESSAGE = (
    'IO Error: Could not set lock on file "/x/k.duckdb": Conflicting lock is held in '
    "/usr/bin/python3 (PID {pid}). See also https://duckdb.org/docs/current/connect/concurrency"
)


class Holder:
    """A process holding ``path`` open for writing until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        code = (
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('held', flush=True);"
            f" sys.stdin.read(); c.close()  # {MARKER}"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.communicate("", timeout=30)

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release)
        timer.start()
        return timer


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "k.duckdb"
    Store.open(path).close()
    return path


# ---------------------------------------------------------------- the retry loop


def test_backoff_doubles_with_jitter_up_to_a_second_and_stops_at_the_wait():
    now, sleeps = [0.0], []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    def connect():
        raise duckdb.IOException(LOCK_MESSAGE.format(pid=999_999_999))

    with pytest.raises(StoreBusy) as caught:
        wait_for_lock(connect, Path("/x/k.duckdb"), 10.0, sleep=sleep, clock=lambda: now[0])
    assert now[0] == pytest.approx(10.0)  # the last sleep ends exactly at the deadline
    ceilings = [min(FIRST_DELAY_S * 2**i, MAX_DELAY_S) for i in range(len(sleeps))]
    assert all(c / 2 <= s <= c for s, c in zip(sleeps[:-1], ceilings, strict=False))
    assert max(sleeps) <= MAX_DELAY_S and len(sleeps) > 10
    assert caught.value.waited_s == pytest.approx(10.0)
    assert "PID 999999999 (its command line is not readable)" in str(caught.value)
    copy = pickle.loads(pickle.dumps(caught.value))  # a Ray task's error crosses processes
    assert str(copy) == str(caught.value) and copy.holder == caught.value.holder


def test_a_zero_wait_tries_once():
    calls = []

    def connect():
        calls.append(1)
        raise duckdb.IOException(LOCK_MESSAGE.format(pid=1))

    with pytest.raises(StoreBusy):
        wait_for_lock(connect, Path("k.duckdb"), 0.0, sleep=pytest.fail)
    assert len(calls) == 1


def test_other_io_errors_fail_at_once_as_data_errors_not_schema_errors(tmp_path: Path):
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"not a database" * 100)
    started = time.monotonic()
    with pytest.raises(KronosDataError, match=r"cannot open .*bad\.duckdb.*not a valid") as caught:
        Store.open(bad, lock_wait_s=10)
    assert time.monotonic() - started < 2
    assert not isinstance(caught.value, (SchemaVersionError, StoreBusy))


def test_the_holder_is_named_by_pid_and_command_line():
    me = lock_holder(LOCK_MESSAGE.format(pid=os.getpid()))
    first_arg = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    assert me.startswith(f"PID {os.getpid()} ({first_arg}")  # pytest, or an xdist worker
    assert lock_holder("IO Error: Could not set lock on file, no pid here") is None


# ---------------------------------------------------------------- a real second process


@pytest.mark.parametrize("read_only", [False, True])
def test_an_open_waits_then_names_the_holder(db: Path, read_only: bool):
    holder = Holder(db)
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy) as caught:
            Store.open(db, read_only=read_only, lock_wait_s=1.0)
        waited = time.monotonic() - started
    finally:
        holder.release()
    assert 1.0 <= waited < 3.0
    message = str(caught.value)
    assert f"PID {holder.proc.pid} (" in message and MARKER in message
    assert str(db) in message and "KRONOS_LOCK_WAIT_S" in message


def test_an_open_succeeds_when_the_holder_lets_go_within_the_wait(db: Path):
    holder = Holder(db)
    timer = holder.release_after(1.0)
    started = time.monotonic()
    with Store.open(db, lock_wait_s=10) as store:
        waited = time.monotonic() - started
        store.con.execute("INSERT INTO policy_knobs VALUES (now(), 'k', 'v', NULL, NULL)")
    timer.join()
    assert 0.9 <= waited < 5.0  # waited for the holder, not for the whole 10 s
    with Store.open(db, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM policy_knobs").fetchall() == [(1,)]


def test_a_snapshot_holds_the_file_only_while_copying(db: Path):
    snapshot = Store.snapshot(db, lock_wait_s=0)
    holder = Holder(db)  # a writer gets the file while the copy stays readable
    try:
        assert snapshot.version == latest_version()
        assert snapshot.con.execute("SELECT count(*) FROM bars").fetchall() == [(0,)]
        with pytest.raises(StoreBusy):
            Store.snapshot(db, lock_wait_s=0.2)
    finally:
        holder.release()
        snapshot.close()


# ---------------------------------------------------------------- the kronos command


def _kronos(args: list[str], wait_s: float, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "KRONOS_LOCK_WAIT_S": str(wait_s), "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kronos", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


INGEST = ["data", "ingest", "--source", "synthetic", "--n-symbols", "2", "--years", "0.2"]
INGEST += ["--no-reference", "--db"]


def test_kronos_ingest_waits_then_exits_2_naming_the_holder_without_traceback(db: Path):
    holder = Holder(db)
    try:
        started = time.monotonic()
        proc = _kronos([*INGEST, str(db)], 2, db.parent)
        _, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        holder.release()
    assert proc.returncode == 2, stderr
    assert elapsed >= 2.0
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ") and "busy" in stderr
    assert f"PID {holder.proc.pid} (" in stderr and MARKER in stderr
    with Store.open(db, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM bars").fetchall() == [(0,)]


def test_kronos_ingest_succeeds_when_the_holder_lets_go_within_the_wait(db: Path):
    holder = Holder(db)
    proc = _kronos([*INGEST, str(db)], 20, db.parent)
    timer = holder.release_after(1.0)
    _, stderr = proc.communicate(timeout=60)
    timer.join()
    assert proc.returncode == 0, stderr
    with Store.open(db, read_only=True) as store:
        assert store.con.execute("SELECT count(DISTINCT symbol) FROM bars").fetchall() == [(2,)]


def test_kronos_backtest_on_a_busy_store_prints_one_line_not_a_traceback(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    spec = Path(__file__).parents[1] / "backtests" / "sp500_ewma_weekly.yaml"
    monkeypatch.setenv("KRONOS_LOCK_WAIT_S", "0.5")
    monkeypatch.setattr(sys, "argv", ["kronos", "backtest", str(spec), "--db", str(db)])
    holder = Holder(db)
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        holder.release()
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    assert stderr.startswith("error: the store") and f"PID {holder.proc.pid}" in stderr
