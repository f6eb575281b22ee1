"""``kronos paper chaos``: the paper loop against a faulty Alpaca, killed and restarted.

The measurement the issue asks for. A local Alpaca server
(:mod:`kronos.testing.fake_alpaca`) replays stored sessions as a market whose
clock moves one phase each time the loop asks for it, and injects faults at
random: 429 with Retry-After, 5xx, a 504 after the order was accepted,
timeouts (after the request took effect), rejections and partial fills; a
resubmitted ``client_order_id`` is refused as Alpaca refuses it. The real
``kronos paper run --broker alpaca`` runs against it in a child process that
is sent SIGKILL at random moments and started again, until both the fault
and the kill targets are met. A last run without faults reconciles.

Then it counts, from the broker's side and the loop's records:

- **duplicates**: broker orders beyond the first for one (decision, symbol,
  intent), plus broker orders sharing a ``client_order_id`` (target 0);
- **orphans**: broker orders the loop has no record of (target 0);
- **position mismatches**: symbols whose broker position differs from the
  loop's positions snapshot or from what its recorded fills add up to
  (target 0);
- orders placed, fills, cycles completed and interrupted.

The run works on a copy of the store, so the user's database is untouched.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO

import polars as pl

from kronos.data.store import Store
from kronos.errors import InputError, KronosError
from kronos.execution.reconcile import positions_from_fills, run_prefix

__all__ = ["ChaosConfig", "ChaosResult", "market_frame", "result_dict", "run_chaos"]

KEY_ID, SECRET = "CHAOSKEYID", "chaos-secret-never-logged"
FAULT_MIX = {"429": 0.25, "500": 0.15, "503": 0.15, "504_after_accept": 0.2, "timeout": 0.1,
             "reject": 0.15}  # fmt: skip


@dataclass(frozen=True)
class ChaosConfig:
    """How hard to shake the loop."""

    db: Path
    symbols: tuple[str, ...]
    start: date
    sessions: int = 400  # sessions the fake market replays (the run stops when they run out)
    cash: float = 100_000.0
    min_faults: int = 500
    min_kills: int = 20
    fault_rate: float = 0.12  # probability a trading request is faulted
    partial_rate: float = 0.2  # probability an execution is partial
    kill_after: tuple[float, float] = (4.0, 9.0)  # seconds a child lives before SIGKILL
    model: str = "ewma"
    account: str = "chaos"
    seed: int = 0
    workdir: Path | None = None


@dataclass(frozen=True)
class ChaosResult:
    """What the chaos run measured."""

    faults_injected: int
    faults_by_kind: dict[str, int]
    kills: int
    restarts: int
    cycles_completed: int
    cycles_interrupted: int
    orders_placed: int
    orders_refused: int
    duplicate_submits_refused: int
    duplicates: int
    orphans: int
    position_mismatches: int
    fills: int
    partial_fills: int
    sessions_traded: int
    seconds: float


def market_frame(
    store: Store, symbols: tuple[str, ...], start: date, sessions: int
) -> tuple[pl.DataFrame, date]:
    """Adjusted bars of ``sessions`` sessions from ``start`` for a fake market; the last day."""
    days = store.con.execute(
        "SELECT DISTINCT ts FROM bars WHERE ts >= ? AND symbol IN (SELECT unnest(?)) "
        "ORDER BY 1 LIMIT ?",
        [start, list(symbols), sessions],
    ).fetchall()
    if not days:
        raise InputError(f"no bars on or after {start} for the chaos universe")
    end = days[-1][0]
    frame = store.con.sql(
        "SELECT symbol, ts, open, high, low, close, adj_close, volume FROM bars "
        "WHERE ts BETWEEN ? AND ? AND symbol IN (SELECT unnest(?))",
        params=[start, end, list(symbols)],
    ).pl()
    # adjusted prices, as the decision sees them
    factor = pl.when(pl.col("close").is_not_null()).then(pl.col("adj_close") / pl.col("close"))
    return (
        frame.with_columns(
            *((pl.col(c) * factor.otherwise(1.0)).alias(c) for c in ("open", "high", "low")),
            close=pl.coalesce("adj_close", "close"),
        ).drop("adj_close"),
        end,
    )


def _child_env(url: str, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "APCA_PAPER_API_KEY_ID": KEY_ID,
        "APCA_PAPER_API_SECRET_KEY": SECRET,
        "KRONOS_ALPACA_MODE": "paper",
        "KRONOS_ALPACA_TRADING_URL": url,
        "KRONOS_ALPACA_TIMEOUT_S": "0.5",
        # the bundled prices carry no volume; EWMA's median is 0: gates off
        "POLICY_MIN_ABS_DEV": "0",
        "POLICY_MIN_SIGMA_Z": "0",
        "POLICY_MIN_TRADE_INTERVAL_SECS": "0",
        "PLANNER_COOLDOWN_MINS": "0",
        "STRAT_RECO_TOPK": "8",
        "MODEL_DIR": str(workdir / "models"),
        "PYTHONUNBUFFERED": "1",
    }


def _child(
    config: ChaosConfig, db: Path, env: dict[str, str], cycles: int, log: BinaryIO
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kronos", "paper", "run", "--broker", "alpaca", "--interval",
           "0", "--cycles", str(cycles), "--account", config.account, "--model", config.model,
           "--db", str(db), "--no-mlflow"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _count(store: Store, config: ChaosConfig, market) -> dict[str, int]:
    """Duplicates, orphans and mismatches between the loop's records and the fake broker."""
    ours = dict(
        store.con.execute(
            "SELECT client_order_id, json_array(run_id, symbol, intent)::VARCHAR FROM orders "
            "WHERE run_id LIKE ?",
            [run_prefix(config.account) + "%"],
        ).fetchall()
    )
    broker_orders = market.orders()
    by_id = Counter(o.client_order_id for o in broker_orders)
    by_key = Counter(ours[o.client_order_id] for o in broker_orders if o.client_order_id in ours)
    duplicates = sum(n - 1 for n in by_id.values() if n > 1) + sum(
        n - 1 for n in by_key.values() if n > 1
    )
    orphans = sum(1 for o in broker_orders if o.client_order_id not in ours)
    theirs = {p.symbol: p.qty for p in market.positions() if p.qty}
    snapshot = dict(
        store.con.execute(
            "SELECT symbol, qty FROM positions WHERE account = ? AND symbol <> '' AND \"asof\" = "
            '(SELECT max("asof") FROM positions WHERE account = ?)',
            [config.account, config.account],
        ).fetchall()
    )
    from_fills = positions_from_fills(store, config.account)
    bad = {
        s
        for s in set(theirs) | set(snapshot) | set(from_fills)
        if not (theirs.get(s, 0.0) == snapshot.get(s, 0.0) == from_fills.get(s, 0.0))
    }
    cycles = dict(
        store.con.execute(
            "SELECT status, count(*) FROM paper_cycles WHERE account = ? GROUP BY 1",
            [config.account],
        ).fetchall()
    )
    sessions = store.con.execute(
        'SELECT count(DISTINCT "asof") FROM paper_cycles WHERE account = ? AND decided',
        [config.account],
    ).fetchall()[0][0]
    return {
        "duplicates": duplicates,
        "orphans": orphans,
        "position_mismatches": len(bad),
        "cycles_completed": cycles.get("done", 0),
        "cycles_interrupted": cycles.get("interrupted", 0) + cycles.get("running", 0),
        "sessions_traded": sessions,
    }


def run_chaos(config: ChaosConfig, say: Callable[[str], None] | None = None) -> ChaosResult:
    """Run the loop under faults and kills until both targets are met (module rules)."""
    from kronos.testing.fake_alpaca import FakeAlpacaServer, FakeMarket, FaultConfig, Faults

    say = say or (lambda _m: None)
    rng = random.Random(config.seed)
    began = time.perf_counter()
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="kronos-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "chaos.duckdb"
    shutil.copy(config.db, db)
    with Store.open(db) as store:
        frame, end = market_frame(store, config.symbols, config.start, config.sessions)
    market = FakeMarket.from_bars(frame, start=config.start, end=end, cash=config.cash)
    total = sum(FAULT_MIX.values())
    rates = {k: config.fault_rate * v / total for k, v in FAULT_MIX.items()}
    faults = FaultConfig(
        rates={**rates, "partial": config.partial_rate}, seed=config.seed, timeout_s=1.0
    )
    server = FakeAlpacaServer(None, KEY_ID, SECRET, market=market, faults=faults,
                              advance_on_clock=True)  # fmt: skip
    kills = restarts = 0
    log_path = workdir / "loop.log"
    with server, log_path.open("ab") as log:
        env = _child_env(server.url, workdir)
        while not market.finished:
            injected = server.stats.faults_injected
            if injected >= config.min_faults and kills >= config.min_kills:
                break
            proc = _child(config, db, env, 100_000, log)
            restarts += 1
            if kills < config.min_kills:
                time.sleep(rng.uniform(*config.kill_after))
            else:  # kills done: let it run until the faults are
                while proc.poll() is None and server.stats.faults_injected < config.min_faults:
                    time.sleep(0.5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            say(
                f"run {restarts}: {kills} kill(s), {server.stats.faults_injected} fault(s), "
                f"session {market.session}"
            )
        shaken = server.stats
        server.faults = Faults(None)  # a last, quiet run reconciles
        final = _child(config, db, env, 2, log)
        if final.wait() != 0:
            raise KronosError(f"the final reconciling run failed; see {log_path}")
        with Store.open(db) as store:
            counts = _count(store, config, market)
    return ChaosResult(
        faults_injected=shaken.faults_injected,
        faults_by_kind=dict(shaken.faults),
        kills=kills,
        restarts=restarts + 1,
        orders_placed=server.stats.orders_accepted,
        orders_refused=server.stats.orders_refused,
        duplicate_submits_refused=server.stats.duplicates_refused,
        fills=server.stats.fills,
        partial_fills=server.stats.partial_fills,
        seconds=time.perf_counter() - began,
        **counts,
    )


def result_dict(result: ChaosResult) -> dict:
    """The result as a JSON-ready dict."""
    return asdict(result)
