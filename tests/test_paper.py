"""The simulated broker, reconciliation and the paper loop (crash safety included)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from kronos.config import (
    CalibrationSettings,
    DataSettings,
    DecisionSettings,
    PolicySettings,
    RiskSettings,
    StrategySettings,
    load_settings,
    settings_hash,
)
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.execution.brokers.base import (
    AmbiguousOutcome,
    Broker,
    DuplicateOrder,
    OrderRejected,
    OrderRequest,
)
from kronos.execution.brokers.sim import SimBroker
from kronos.execution.fills import FillRules
from kronos.execution.paper import PaperConfig, PaperLoop
from kronos.execution.reconcile import positions_from_fills
from kronos.risk import Breaker, session_close, trip

SESSIONS = [date(2024, 3, 4) + timedelta(days=d) for d in (0, 1, 2, 3, 4, 7, 8)]


def _bars() -> pl.DataFrame:
    """Three symbols, seven sessions of OHLCV; AAA's open rises 1 per session."""
    rows = []
    for k, day in enumerate(SESSIONS):
        for sym, base in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 20.0)):
            o = base + k
            rows.append(
                {"symbol": sym, "ts": day, "open": o, "high": o + 2, "low": o - 2,
                 "close": o + 0.5, "adj_close": o + 0.5, "volume": 1_000.0, "source": "test"}
            )  # fmt: skip
    return pl.DataFrame(rows)


@pytest.fixture
def ohlc(store: Store) -> Store:
    ingest(store, "bars", [_bars()], source="test", origin="test bars")
    return store


def _broker(store: Store, **rules) -> SimBroker:
    sim = SimBroker(store, "acct", FillRules(**rules), data_settings=DataSettings())
    assert sim.start(SESSIONS[0], 10_000.0)
    return sim


def test_sim_clock_moves_in_phases(ohlc: Store):
    sim = _broker(ohlc)
    c = sim.clock()
    assert not c.is_open and c.now == session_close(SESSIONS[0], DataSettings())
    sim.advance()
    c2 = sim.clock()
    assert c2.is_open and c2.now.date() == SESSIONS[1] and c2.now > c.now
    assert c.next_open == c2.now
    sim.advance()
    assert not sim.clock().is_open and sim.session == SESSIONS[1]


def test_sim_fills_at_the_next_open_with_costs(ohlc: Store):
    sim = _broker(ohlc, commission_bps=10, slippage_bps=20)
    placed = sim.submit(OrderRequest("c1", "AAA", "buy", 10))
    assert placed.status == "new" and placed.filled_qty == 0
    sim.advance()  # open of session 1: nothing fills before its open phase ends
    assert sim.order("c1").status == "new"
    fills = sim.advance()
    # reference: open of session 1 is 101; slippage 20 bps up; fee 10 bps of value
    price = 101 * (1 + 0.002)
    assert len(fills) == 1 and fills[0].price == pytest.approx(price, rel=1e-15)
    assert fills[0].commission == pytest.approx(10 * price * 0.001, rel=1e-15)
    assert sim.order("c1").status == "filled" and sim.order("c1").filled_qty == 10
    acct = sim.account()
    assert acct.cash == pytest.approx(10_000 - 10 * price * 1.001, rel=1e-15)
    [pos] = sim.positions()
    assert (pos.symbol, pos.qty, pos.avg_price) == ("AAA", 10, pytest.approx(price))
    assert pos.market_value == pytest.approx(10 * 101.5)  # marked at the close
    assert sim.fills_since(fills[0].filled_at) == fills


def test_sim_refuses_what_alpaca_refuses(ohlc: Store):
    sim = _broker(ohlc)
    sim.submit(OrderRequest("c1", "AAA", "buy", 10))
    with pytest.raises(DuplicateOrder):
        sim.submit(OrderRequest("c1", "AAA", "buy", 10))
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        sim.submit(OrderRequest("c2", "AAA", "buy", 1_000))
    with pytest.raises(OrderRejected, match="insufficient qty"):
        sim.submit(OrderRequest("c3", "BBB", "sell", 1))
    with pytest.raises(OrderRejected, match="unknown symbol"):
        sim.submit(OrderRequest("c4", "ZZZ", "buy", 1))
    with pytest.raises(OrderRejected, match="whole shares"):
        sim.submit(OrderRequest("c5", "AAA", "buy", 1.5))
    assert [o.client_order_id for o in sim.open_orders()] == ["c1"]


def test_sim_limits_partials_expiry_and_cancel(ohlc: Store):
    sim = _broker(ohlc, volume_share=0.005)  # at most 5 shares per order per session
    sim.submit(OrderRequest("lim-far", "AAA", "buy", 3, "limit", limit_price=90.0))
    sim.submit(OrderRequest("lim-touch", "BBB", "buy", 3, "limit", limit_price=50.0))
    sim.submit(OrderRequest("big", "CCC", "buy", 8))
    sim.submit(OrderRequest("gone", "CCC", "buy", 1))
    sim.cancel("gone")
    sim.advance(), sim.advance()
    far, touch, big = sim.order("lim-far"), sim.order("lim-touch"), sim.order("big")
    assert far.status == "expired" and far.filled_qty == 0 and "limit not reached" in far.reason
    # BBB opens at 51 > 50, but its low (49) touched the limit: filled at the limit
    assert touch.status == "filled" and touch.filled_avg_price == 50.0
    assert big.status == "expired" and big.filled_qty == 5 and "partial" in big.reason
    assert sim.order("gone").status == "canceled"


def test_sim_state_survives_a_new_process(ohlc: Store):
    sim = _broker(ohlc)
    sim.submit(OrderRequest("c1", "AAA", "buy", 10))
    sim.advance(), sim.advance()
    again = SimBroker(ohlc, "acct", FillRules(), data_settings=DataSettings())
    assert not again.start(SESSIONS[0], 1.0)  # continues, does not reset
    assert again.account() == sim.account()
    assert again.positions() == sim.positions()
    assert again.clock() == sim.clock()
    other = SimBroker(ohlc, "other", FillRules(), data_settings=DataSettings())
    other.start(SESSIONS[0], 5.0)
    assert other.positions() == [] and other.account().cash == 5.0


# -- the loop --------------------------------------------------------------

SETTINGS = DecisionSettings(
    policy=PolicySettings(policy_min_abs_dev=0, policy_min_sigma_z=0),
    strategy=StrategySettings(strat_reco_topk=5),
)
START = date(2022, 6, 1)


@pytest.fixture
def bundled(bundled_db: Path, tmp_path: Path):
    path = tmp_path / "paper.duckdb"
    shutil.copy(bundled_db, path)
    with Store.open(path) as s:
        yield s


def _equities(store: Store) -> tuple[str, ...]:
    rows = store.con.execute(
        "SELECT DISTINCT symbol FROM bars WHERE source = 'skfolio.sp500' ORDER BY 1"
    ).fetchall()
    return tuple(r[0] for r in rows)


@dataclass
class ListRecorder:
    """Keeps what the loop logs (the real one is kronos.tracking.MlflowRecorder)."""

    logged: list

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def _loop(store: Store, broker: Broker, account: str = "acct", **kw) -> PaperLoop:
    config = PaperConfig(
        account=account,
        model="ewma",
        symbols=_equities(store),
        settings=kw.pop("settings", SETTINGS),
        calibration=CalibrationSettings(),
    )
    return PaperLoop(store, broker, config, **kw)


def _check_book(store: Store, sim: SimBroker, account: str = "acct") -> None:
    """Every broker order is one of ours, once; recorded fills add up to the broker's book."""
    ours = {
        r[0]
        for r in store.con.execute(
            "SELECT client_order_id FROM orders WHERE run_id LIKE ?", [f"paper-{account}-%"]
        ).fetchall()
    }
    theirs = store.con.execute(
        "SELECT client_order_id, count(*) FROM sim_broker_orders WHERE account = ? GROUP BY 1",
        [sim.account_id],
    ).fetchall()
    assert all(n == 1 for _, n in theirs)
    assert {c for c, _ in theirs} <= ours
    fills = store.con.execute(
        "SELECT count(*), count(DISTINCT fill_id) FROM sim_broker_fills WHERE account = ?",
        [sim.account_id],
    ).fetchall()[0]
    recorded = store.con.execute(
        "SELECT count(*) FROM fills f JOIN orders o USING (client_order_id) WHERE o.run_id LIKE ?",
        [f"paper-{account}-%"],
    ).fetchall()[0][0]
    assert fills[0] == fills[1] == recorded
    book = {p.symbol: p.qty for p in sim.positions()}
    assert positions_from_fills(store, account) == book


def test_loop_trades_records_and_reconciles(bundled: Store):
    sim = SimBroker(bundled, "acct", FillRules(), _equities(bundled), data_settings=DataSettings())
    sim.start(START, 100_000.0)
    logged: list = []
    reports = _loop(bundled, sim, recorder=ListRecorder(logged)).run(
        cycles=8, wait=lambda _c: sim.advance()
    )
    assert [r.market_open for r in reports] == [False, True] * 4
    assert [r.decided for r in reports] == [True, False] * 4  # once per session
    assert sum(r.submitted for r in reports) > 5 and sum(r.fills for r in reports) > 5
    assert all(r.differences == 0 for r in reports)
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert logged[-1][1]["nav"] == pytest.approx(sim.account().nav)
    _check_book(bundled, sim)
    # fills carry the allocator's metadata
    meta = bundled.con.execute(
        "SELECT count(*) FROM fills WHERE target_weight IS NULL OR turnover_est IS NULL"
    ).fetchall()[0][0]
    assert meta == 0
    statuses = dict(
        bundled.con.execute("SELECT status, count(*) FROM orders GROUP BY 1").fetchall()
    )
    assert set(statuses) <= {"filled", "expired", "new", "rejected"}


class CrashAfterSubmit:
    """The simulated broker, but the process 'dies' right after the n-th accepted submit."""

    def __init__(self, sim: SimBroker, n: int) -> None:
        self.sim, self.n, self.name = sim, n, sim.name

    def __getattr__(self, attr):
        return getattr(self.sim, attr)

    def submit(self, order):
        placed = self.sim.submit(order)
        self.n -= 1
        if self.n == 0:
            raise SystemExit("killed between submit and record")
        return placed


class AmbiguousSubmit(CrashAfterSubmit):
    """Every submit answers 'outcome unknown'; ``sends`` says whether it took effect."""

    def __init__(self, sim: SimBroker, sends: bool) -> None:
        super().__init__(sim, 0)
        self.sends, self.calls = sends, 0

    def submit(self, order):
        self.calls += 1
        if self.sends:
            self.sim.submit(order)
        raise AmbiguousOutcome("504 Gateway Timeout")


def test_crash_between_submit_and_record_never_duplicates(bundled: Store):
    sim = SimBroker(bundled, "acct", FillRules(), _equities(bundled), data_settings=DataSettings())
    sim.start(START, 100_000.0)
    loop = _loop(bundled, sim)
    loop.run(cycles=1)  # decides (market closed)
    sim.advance()
    with pytest.raises(SystemExit):
        _loop(bundled, CrashAfterSubmit(sim, 2)).cycle()
    assert bundled.con.execute("SELECT status FROM paper_cycles WHERE cycle = 2").fetchall() == [
        ("running",)
    ]
    # the first send was recorded; the second reached the broker but not the store:
    # the restarted loop finds it by id (a difference it records) and sends only the rest
    report = _loop(bundled, sim).cycle()
    assert bundled.con.execute("SELECT status FROM paper_cycles WHERE cycle = 2").fetchall() == [
        ("interrupted",)
    ]
    assert report.differences == 1
    adopted = bundled.con.execute("SELECT action FROM paper_reconciliations").fetchall()
    assert adopted == [("adopted the broker's order",)]
    planned = bundled.con.execute("SELECT count(*) FROM orders").fetchall()[0][0]
    assert len(sim.open_orders()) == planned
    _check_book(bundled, sim)


@pytest.mark.parametrize("sends", [True, False])
def test_ambiguous_submit_is_looked_up_not_resent(bundled: Store, sends: bool):
    sim = SimBroker(bundled, "acct", FillRules(), _equities(bundled), data_settings=DataSettings())
    sim.start(START, 100_000.0)
    _loop(bundled, sim).cycle()
    sim.advance()
    flaky = AmbiguousSubmit(sim, sends)
    report = _loop(bundled, flaky).cycle()
    planned = bundled.con.execute("SELECT count(*) FROM orders").fetchall()[0][0]
    assert flaky.calls == planned  # one try each
    if sends:  # found by id: counted as submitted, never sent again
        assert report.submitted == planned and len(sim.open_orders()) == planned
    else:  # not at the broker: still planned, sent by the next cycle
        assert report.submitted == 0 and "outcome unknown" in report.message
        report = _loop(bundled, sim).cycle()
        assert report.submitted == planned
    assert len(sim.open_orders()) == planned
    _check_book(bundled, sim)


def test_planned_orders_of_a_past_session_go_stale(bundled: Store):
    sim = SimBroker(bundled, "acct", FillRules(), _equities(bundled), data_settings=DataSettings())
    sim.start(START, 100_000.0)
    _loop(bundled, sim).cycle()  # decided, not sent (closed)
    sim.advance(), sim.advance()  # the whole next session passes without a cycle
    _loop(bundled, sim).cycle()
    stale = bundled.con.execute(
        "SELECT count(*) FROM orders WHERE status = 'stale' AND \"asof\"::DATE = ?", [START]
    ).fetchall()[0][0]
    assert stale > 0 and sim.open_orders() == []


def test_panic_exit_sells_the_book(bundled: Store):
    sim = SimBroker(bundled, "acct", FillRules(), _equities(bundled), data_settings=DataSettings())
    sim.start(START, 100_000.0)
    _loop(bundled, sim).run(cycles=4, wait=lambda _c: sim.advance())
    sim.advance()
    held = {p.symbol for p in sim.positions()}
    assert held
    now = sim.clock().now
    trip(bundled, [Breaker.new("global", "*", "test: 40% of names breached",
                               now - timedelta(hours=1), RiskSettings())])  # fmt: skip
    panic = DecisionSettings(
        policy=SETTINGS.policy, strategy=SETTINGS.strategy,
        risk=RiskSettings(enable_panic_exit=True),
    )  # fmt: skip
    _loop(bundled, sim, settings=panic).run(cycles=2, wait=lambda _c: sim.advance())
    orders = bundled.con.execute(
        "SELECT symbol, side FROM orders WHERE intent = 'panic'"
    ).fetchall()
    assert {s for s, _ in orders} == held and {side for _, side in orders} == {"sell"}
    sim.advance()
    assert sim.positions() == []


def test_kill_9_and_restart_keep_one_book(bundled: Store, tmp_path: Path):
    """``kronos paper run`` killed with SIGKILL at random moments, restarted each time."""
    path = Path(bundled.path)
    bundled.close()
    env = {
        **os.environ,
        "POLICY_MIN_ABS_DEV": "0",
        "POLICY_MIN_SIGMA_Z": "0",
        "STRAT_RECO_TOPK": "5",
        "MODEL_DIR": str(tmp_path / "models"),
    }
    cmd = [sys.executable, "-m", "kronos", "paper", "run", "--db", str(path), "--account", "k9",
           "--model", "ewma", "--start", str(START), "--cash", "100000", "--no-mlflow"]  # fmt: skip
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([*cmd, "--cycles", "40"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(rng.uniform(4.0, 7.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run([*cmd, "--cycles", "6"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 2
    with Store.open(path) as store:
        sim = SimBroker(store, "k9", FillRules(), _equities(store), data_settings=DataSettings())
        _check_book(store, sim, "k9")
        cycles = store.con.execute(
            "SELECT count(*) FROM paper_cycles WHERE account = 'k9' AND status = 'done'"
        ).fetchall()[0][0]
        assert cycles >= 6
        hashes = store.con.execute(
            "SELECT DISTINCT settings_hash FROM paper_cycles WHERE account = 'k9'"
        ).fetchall()
    # each cycle stores the hash of the settings it ran with (STRAT_RECO_TOPK=5 and all)
    assert hashes == [(settings_hash(load_settings(environ=env)),)]
