"""One price basis: corporate actions read from the bars, applied alike in both paths.

The store ``raw_db`` (tests/conftest.py) holds raw and adjusted closes with a
2:1 split of SYN0001 at session 241, $0.75 dividends of SYN0002 at sessions
200, 263 and 326, and SYN0003's bars stopping after session 300. Accounts are
checked against hand arithmetic (tolerance 1e-9 relative: float rounding of a
few additions).
"""

from __future__ import annotations

import math
import shutil
from datetime import date

import numpy as np
import polars as pl
import pytest
from conftest import RAW_DIVIDENDS, RAW_ENDED, RAW_SPLIT

from kronos.backtest.engine import _Run, apply_actions, close_ended, execute
from kronos.backtest.market import load_market
from kronos.backtest.monitor import Quantiles
from kronos.backtest.replay import ReplaySource
from kronos.config import CalibrationSettings, DataSettings, DecisionSettings
from kronos.data.prices import actions_from_bars, price_basis
from kronos.data.store import Store
from kronos.execution.brokers.base import OrderRequest
from kronos.execution.brokers.sim import SimBroker
from kronos.execution.fills import Book, FillRules

DATA = DataSettings()


def _bars(path) -> tuple[pl.DataFrame, list[date]]:
    with Store.open(path, read_only=True) as s:
        bars = s.con.sql("SELECT * FROM bars ORDER BY symbol, ts").pl()
    return bars, sorted(bars["ts"].unique().to_list())


def _raw_close(bars: pl.DataFrame, symbol: str, day: date, column: str = "close") -> float:
    return bars.filter((pl.col("symbol") == symbol) & (pl.col("ts") == day))[column][0]


def test_actions_are_read_back_from_raw_and_adjusted_closes(raw_db):
    bars, sessions = _bars(raw_db)
    actions = actions_from_bars(bars)
    sym, at, ratio = RAW_SPLIT
    dsym, days, cash = RAW_DIVIDENDS
    splits = actions.filter(pl.col("split_ratio") != 1.0)
    assert splits.select("symbol", "ts", "split_ratio").rows() == [(sym, sessions[at], ratio)]
    dividends = actions.filter(pl.col("dividend") != 0.0)
    assert dividends["symbol"].to_list() == [dsym] * len(days)
    assert dividends["ts"].to_list() == [sessions[d] for d in days]
    assert np.allclose(dividends["dividend"].to_numpy(), cash, rtol=1e-9, atol=0)


def test_the_basis_is_raw_only_where_every_symbol_has_raw_closes(raw_db, bundled_db):
    with Store.open(raw_db, read_only=True) as s:
        assert price_basis(s, ["SYN0001", "SYN0002"], date(2030, 1, 1), DATA).raw
    with Store.open(bundled_db, read_only=True) as s:
        basis = price_basis(s, ["AAPL", "GOOG"], date(2030, 1, 1), DATA)
    assert basis.name == "adjusted" and "AAPL" in basis.reason and "GOOG" not in basis.reason


def test_backtest_book_takes_the_split_the_dividends_and_the_delisting(raw_db):
    """Engine steps 1-3 over sessions 190..330, against hand arithmetic."""
    bars, sessions = _bars(raw_db)
    sym, at, _ = RAW_SPLIT
    dsym, days, cash = RAW_DIVIDENDS
    ended, last = RAW_ENDED
    settings = DecisionSettings()
    with Store.open(raw_db, read_only=True) as store:
        symbols = ["SYN0001", "SYN0002", "SYN0003", "SYN0004"]
        market = load_market(store, symbols, sessions[-1], settings.data)
        nan = np.full(market.close.shape, np.nan)
        source = ReplaySource(store, market, Quantiles(nan, nan, nan), [], settings)
    assert market.basis.raw
    book = Book(cash=10_000.0, positions={sym: 100.0, dsym: 40.0, ended: 10.0})
    run = _Run(book=book, source=source)
    # an order decided at 249's close, pending over the split: shares and limit follow it
    run.pending = pl.DataFrame(
        {
            "asof": [sessions[at - 1]],
            "symbol": [sym],
            "side": ["buy"],
            "client_order_id": ["c1"],
            "qty": [7.0],
            "limit_price": [1e6],
        }
    )
    rules = FillRules(at="next_open")
    for i in range(190, 331):
        apply_actions(run=run, market=market, i=i)
        gone = close_ended(run=run, market=market, i=i)
        if i == at:
            assert run.pending["qty"].to_list() == [14.0]
            assert run.pending["limit_price"].to_list() == [5e5]
            execute(run=run, market=market, i=i, orders=run.pending, rules=rules,
                    settings=settings, ended=gone)  # fmt: skip
            run.pending = None
        if i == last + 3:  # an order for the stopped name is refused
            order = pl.DataFrame(
                {"asof": [sessions[i]], "symbol": [ended], "side": ["buy"],
                 "client_order_id": ["c2"], "qty": [5.0], "limit_price": [None]},
                schema_overrides={"limit_price": pl.Float64},
            )  # fmt: skip
            execute(run=run, market=market, i=i, orders=order, rules=rules,
                    settings=settings, ended=gone)  # fmt: skip
    bought = 14 * _raw_close(bars, sym, sessions[at], "open")
    last_close = _raw_close(bars, ended, sessions[last])
    expected_cash = 10_000.0 + 40 * cash * len(days) + 10 * last_close - bought
    assert book.positions == {sym: 214.0, dsym: 40.0}
    assert math.isclose(book.cash, expected_cash, rel_tol=1e-9)
    events = pl.DataFrame(
        run.events, schema=["ts", "symbol", "event", "before", "after", "cash", "detail"],
        orient="row",
    )  # fmt: skip
    assert events["event"].to_list() == ["dividend", "split", "dividend", "delisted", "dividend"]
    closed = events.filter(pl.col("event") == "delisted").row(0)
    assert closed[0] == sessions[last + 1] and closed[6] == f"last bar {sessions[last]}"
    refused = [o for o in run.orders if o[5] == "c2"]
    assert refused and refused[0][-2] == "no longer trading" and refused[0][-3] == 0.0
    # the record keeps the decided order and says what the split made of it
    c1 = next(o for o in run.orders if o[5] == "c1")
    assert c1[3] == 7.0 and c1[4] == 1e6 and c1[-3] == 14.0 and c1[-1] == 14.0
    assert c1[-2] == f"split 2:1 on {sessions[at]}: 14 shares at limit 500000"


def test_simulated_broker_takes_the_split_and_the_dividends(raw_db, tmp_path):
    """The paper path's broker: the same account arithmetic as the engine's book."""
    path = tmp_path / "k.duckdb"
    shutil.copy(raw_db, path)
    bars, sessions = _bars(path)
    sym = RAW_SPLIT[0]
    dsym, days, cash = RAW_DIVIDENDS
    with Store.open(path) as store:
        broker = SimBroker(store, rules=FillRules(at="next_open"), symbols=[sym, dsym],
                           data_settings=DATA)  # fmt: skip
        assert broker.basis.raw
        broker.start(sessions[195], 50_000.0)
        for s, q in ((sym, 100), (dsym, 40)):
            broker.submit(OrderRequest(client_order_id=f"b-{s}", symbol=s, side="buy", qty=q))
        # a resting limit order over the split: its shares double and its limit halves
        low = _raw_close(bars, sym, sessions[196], "low") / 3
        broker.submit(
            OrderRequest(client_order_id="lim", symbol=sym, side="buy", qty=5,
                         order_type="limit", limit_price=low, time_in_force="gtc")
        )  # fmt: skip
        fills = []
        while broker.session < sessions[330] or broker.clock().is_open:
            fills += broker.advance()
        positions = {p.symbol: (p.qty, p.avg_price) for p in broker.positions()}
        state = broker.account()
        limit = broker.order("lim")
    cost = sum(f.qty * f.price for f in fills if f.client_order_id.startswith("b-"))
    assert {f.client_order_id for f in fills} == {f"b-{sym}", f"b-{dsym}"}
    open_196 = _raw_close(bars, sym, sessions[196], "open")
    assert positions[sym][0] == 200.0
    assert math.isclose(positions[sym][1], open_196 / 2, rel_tol=1e-12)
    assert math.isclose(state.cash, 50_000.0 - cost + 40 * cash * len(days), rel_tol=1e-9)
    assert limit.qty == 10 and math.isclose(limit.limit_price, low / 2, rel_tol=1e-12)


def test_a_volume_cap_on_bars_without_volume_is_refused(bundled_db):
    cap = 0.1
    from kronos.backtest.run import fill_rules
    from kronos.backtest.spec import load_spec
    from kronos.errors import ConfigError

    spec = load_spec("backtests/sp500_ewma_weekly.yaml")
    spec = spec.model_copy(update={"costs": spec.costs.model_copy(update={"volume_share": cap})})
    with Store.open(bundled_db, read_only=True) as store:
        market = load_market(store, ["AAPL", "AMD"], date(2010, 1, 4), DATA)
    with pytest.raises(ConfigError, match="no volume"):
        fill_rules(spec, market)


def test_paper_loop_reconciles_across_the_split(raw_db, tmp_path):
    """The loop's fills, scaled by the split, add up to the broker's split position."""
    from kronos.config import PolicySettings, StrategySettings
    from kronos.execution.paper import PaperConfig, PaperLoop
    from kronos.execution.reconcile import positions_from_fills

    path = tmp_path / "k.duckdb"
    shutil.copy(raw_db, path)
    _, sessions = _bars(path)
    sym, at, _ = RAW_SPLIT
    settings = DecisionSettings(
        policy=PolicySettings(policy_min_abs_dev=0, policy_min_sigma_z=0),
        strategy=StrategySettings(strat_reco_topk=1, strat_min_market_cap=0),
    )
    with Store.open(path) as store:
        names = ("SYN0001", "SYN0002", "SYN0004", "SYN0005", "SYN0006")  # SYN0001 leads at 238
        sim = SimBroker(store, "acct", FillRules(), symbols=names, data_settings=DATA)
        sim.start(sessions[at - 4], 100_000.0)
        config = PaperConfig(
            account="acct",
            model="ewma",
            symbols=names,
            settings=settings,
            settings_hash="h1",
            calibration=CalibrationSettings(),
        )
        loop = PaperLoop(store, sim, config)
        reports = loop.run(cycles=16, wait=lambda _c: sim.advance())
        held = {p.symbol: p.qty for p in sim.positions()}
        ours = positions_from_fills(store, "acct", loop._splits(sim.clock().now), DATA.market_tz)
        unsplit = positions_from_fills(store, "acct")
        diffs = store.con.execute(
            "SELECT count(*) FROM paper_reconciliations WHERE kind = 'position'"
        ).fetchall()[0][0]
        now = sim.session
        hashes = store.con.execute("SELECT DISTINCT settings_hash FROM paper_cycles").fetchall()
    assert hashes == [("h1",)]  # each cycle stores the hash of the settings it ran with
    assert now > sessions[at] and held.get(sym, 0) > 0
    assert ours == held and diffs == 0
    # bought before the split: unscaled, the fills would read as a missing position
    assert unsplit[sym] != held[sym] and any(r.fills for r in reports)


def test_simulated_broker_refuses_orders_for_a_name_whose_bars_ended(raw_db, tmp_path):
    from kronos.execution.brokers.base import OrderRejected

    path = tmp_path / "k.duckdb"
    shutil.copy(raw_db, path)
    _, sessions = _bars(path)
    ended, last = RAW_ENDED
    with Store.open(path) as store:
        broker = SimBroker(store, symbols=[ended, "SYN0004"], data_settings=DATA)
        broker.start(sessions[last + 2], 10_000.0)
        with pytest.raises(OrderRejected, match=f"{ended} no longer trading"):
            broker.submit(OrderRequest(client_order_id="x", symbol=ended, side="buy", qty=1))
        assert (
            broker.submit(
                OrderRequest(client_order_id="y", symbol="SYN0004", side="buy", qty=1)
            ).status
            == "new"
        )


def test_a_held_name_whose_bars_stopped_keeps_its_value_and_gets_no_buys(raw_db):
    from kronos.decision.allocator import Account
    from kronos.decision.snapshot import StoreSource
    from kronos.decision.step import decide
    from kronos.risk import session_close

    bars, sessions = _bars(raw_db)
    ended, last = RAW_ENDED
    settings = DecisionSettings()
    day = sessions[last + 20]
    with Store.open(raw_db, read_only=True) as store:
        source = StoreSource(store, "none", settings)
        book = pl.DataFrame({"symbol": [ended], "qty": [10.0]})
        d = decide(source, day, book, Account(nav=1e5, cash=9e4), settings,
                   now=session_close(day, DATA))  # fmt: skip
    price = d.snapshot.prices.filter(pl.col("symbol") == ended).row(0)
    assert price[1:] == (_raw_close(bars, ended, sessions[last]), sessions[last])
    assert d.blocked[ended] == f"no longer trading: no bar since {sessions[last]}"
    assert d.orders.filter((pl.col("symbol") == ended) & (pl.col("side") == "buy")).is_empty()
