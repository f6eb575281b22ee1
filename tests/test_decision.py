"""The one decision step on a small synthetic store."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from kronos.bench.decision import _forecasts, run_decision_bench
from kronos.config import DataSettings, DecisionSettings, RiskSettings
from kronos.data import loaders
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.decision.allocator import Account
from kronos.decision.snapshot import StoreSource
from kronos.decision.step import decide
from kronos.risk import Breaker, session_close, trip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("decision") / "k.duckdb"
    with Store.open(path) as s:
        loaders.load_synthetic(s, n_symbols=60, years=2, seed=4)
        asof = s.con.execute("SELECT max(ts) FROM bars").fetchall()[0][0]
        symbols = [
            r[0] for r in s.con.execute("SELECT DISTINCT symbol FROM bars ORDER BY 1").fetchall()
        ]
        ingest(
            s,
            "forecasts",
            [_forecasts(symbols, asof, np.random.default_rng(1))],
            source="t",
            origin="t",
        )
    return path, asof, symbols


def _run(store, asof, book, model="bench", settings=None):
    settings = settings or DecisionSettings()
    source = StoreSource(store, model, settings)
    account = Account(nav=5e6, cash=4e6)
    return decide(source, asof, book, account, settings, now=session_close(asof, DataSettings()))


def _decide(path, asof, **kw):
    with Store.open(path) as s:
        book = pl.DataFrame({"symbol": ["SYN0001", "SYN0002"], "qty": [100.0, 50.0]})
        return _run(s, asof, book, **kw)


def test_decision_is_complete_and_deterministic(world):
    path, asof, _ = world
    first, again = _decide(path, asof), _decide(path, asof)
    assert first.recos.height > 0 and first.orders.height > 0
    assert first.orders["client_order_id"].to_list() == again.orders["client_order_id"].to_list()
    assert first.snapshot.calibrated  # the bench forecasts are stored as calibrated
    assert set(first.excluded["stage"].unique()) <= {"strategist", "allocator", "planner"}
    buys = set(first.orders.filter(pl.col("side") == "buy")["symbol"])
    assert buys <= set(first.recos["symbol"])  # POLICY_REQUIRE_RECO
    cash_after = first.plan.cash_after
    assert cash_after >= 0.05 * 5e6 - 1e-6  # PT_CASH_FLOOR_PCT


def test_a_tripped_breaker_gets_no_buys(world, tmp_path):
    path, asof, _ = world
    baseline = _decide(path, asof)
    bought = baseline.orders.filter(pl.col("side") == "buy")["symbol"].to_list()
    assert bought, "the scenario must buy something"
    victim = bought[0]
    copy = tmp_path / "k.duckdb"
    copy.write_bytes(path.read_bytes())
    with Store.open(copy) as s:
        trip(
            s,
            [
                Breaker.new(
                    "symbol",
                    victim,
                    "test breach",
                    session_close(asof, DataSettings()) - timedelta(hours=1),
                    RiskSettings(),
                )
            ],
        )
    blocked = _decide(copy, asof)
    assert victim not in blocked.orders.filter(pl.col("side") == "buy")["symbol"].to_list()
    assert victim in blocked.blocked


def test_no_forecasts_means_no_buys_and_says_why(world):
    path, asof, _ = world
    with Store.open(path) as s:
        book = pl.DataFrame({"symbol": ["SYN0001"], "qty": [100.0]})
        d = _run(s, asof, book, model="missing")
    assert d.orders.filter(pl.col("side") == "buy").is_empty()
    reasons = d.excluded.filter(pl.col("stage") == "planner")["reason"].to_list()
    assert any("no step-1 forecast" in r for r in reasons)


def test_decision_bench_reports_both_figures():
    result = run_decision_bench(n_symbols=40, years=1.5, repeats=3)
    assert result["symbols"] == 40
    assert 0 < result["in_memory_seconds"] < result["with_store_seconds"]
    assert len(result["in_memory_all"]) == 3


def test_recording_a_retried_decision_stores_each_order_once(world, tmp_path):
    from kronos.decision.step import record

    path, asof, _ = world
    copy = tmp_path / "k.duckdb"
    copy.write_bytes(path.read_bytes())
    decision = _decide(copy, asof)
    with Store.open(copy) as s:
        first = record(
            s, decision, session_close(asof, DataSettings()), data_settings=DataSettings()
        )
        second = record(
            s,
            _decide_open(s, asof),
            session_close(asof, DataSettings()),
            data_settings=DataSettings(),
        )
        counts = s.con.execute(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM strategist_recos), "
            "(SELECT count(*) FROM policy_knobs)"
        ).fetchall()[0]
    assert first == decision.orders.height > 0 and second == 0
    assert counts == (decision.orders.height, decision.recos.height, 5)  # knobs


def _decide_open(store, asof):
    book = pl.DataFrame({"symbol": ["SYN0001", "SYN0002"], "qty": [100.0, 50.0]})
    return _run(store, asof, book)


def test_a_fresher_raw_forecast_beats_an_older_calibrated_one(world, tmp_path):
    from kronos.config import DecisionSettings
    from kronos.decision.snapshot import read_snapshot

    path, asof, symbols = world
    copy = tmp_path / "k.duckdb"
    copy.write_bytes(path.read_bytes())
    newer = asof + timedelta(days=1)
    while newer.weekday() >= 5:
        newer += timedelta(days=1)
    raw = _forecasts(symbols, newer, np.random.default_rng(9)).with_columns(
        calibrated=pl.lit(False)
    )
    with Store.open(copy) as s:
        ingest(s, "forecasts", [raw], source="t", origin="t")
        later = read_snapshot(
            s, newer, "bench", DecisionSettings(), session_close(newer, DataSettings())
        )
        same_day = read_snapshot(
            s, asof, "bench", DecisionSettings(), session_close(asof, DataSettings())
        )
    # the raw forecast from the newer session wins over the calibrated one from the day before
    assert not later.calibrated
    first = raw.filter(pl.col("step") == 1).sort("symbol")
    assert later.forecasts.sort("symbol")["p50"].to_list() == first["p50"].to_list()
    # at the calibrated forecast's own session it is still the one used
    assert same_day.calibrated


def test_the_regime_encoders_reading_feeds_the_regime_switch(world, tmp_path):
    """A stored p_turbulent at or above STRAT_TURBULENT_OFF (0.5) forces risk-off; a
    reading of a later session, or from a model trained later, is not seen."""
    from datetime import date

    from kronos.config import DecisionSettings, StrategySettings
    from kronos.features.regime import regime_rows, write_regime

    path, asof, _ = world
    loose = DecisionSettings(strategy=StrategySettings(strat_breadth_on=0.0))
    baseline = _decide(path, asof, settings=loose)
    assert baseline.snapshot.regime is None and baseline.knobs.p_turbulent is None
    assert baseline.knobs.risk_regime == "on"  # breadth alone, as set
    copy = tmp_path / "k.duckdb"
    copy.write_bytes(path.read_bytes())

    def probs(day: date, p: float) -> pl.DataFrame:
        return pl.DataFrame({"ts": [day], "p_calm": [0.0], "p_normal": [1 - p], "p_turbulent": [p]})

    yesterday = asof - timedelta(days=1)
    with Store.open(copy) as s:
        write_regime(s, regime_rows(probs(yesterday, 0.3), "regime", "v1", date(2000, 1, 3)))
        # a later session, and a model trained after asof: neither is known at asof
        write_regime(
            s, regime_rows(probs(asof + timedelta(days=1), 0.99), "regime", "v1", date(2000, 1, 3))
        )
        write_regime(s, regime_rows(probs(asof, 0.99), "regime", "v2", asof + timedelta(days=1)))
    calm = _decide(copy, asof, settings=loose)
    assert calm.snapshot.regime.ts == yesterday and calm.knobs.p_turbulent == 0.3
    assert calm.knobs.risk_regime == "on" and "p_turbulent 0.300" in calm.knobs.reason
    with Store.open(copy) as s:
        # a newer version trained on the same data: the newest computed wins
        write_regime(s, regime_rows(probs(asof, 0.7), "regime", "v3", date(2000, 1, 3)))
    rough = _decide(copy, asof, settings=loose)
    assert rough.knobs.p_turbulent == 0.7 and rough.knobs.risk_regime == "off"
    assert rough.knobs.threshold_bps == loose.strategy.strat_threshold_bps_off
    off_at = DecisionSettings(
        strategy=StrategySettings(strat_breadth_on=0.0, strat_turbulent_off=0.8)
    )
    assert _decide(copy, asof, settings=off_at).knobs.risk_regime == "on"


def test_filters_the_data_cannot_feed_are_switched_off_and_said():
    from kronos.decision.step import data_switches
    from kronos.features.strategist import INPUT_SCHEMA

    settings = DecisionSettings()
    empty = pl.DataFrame({"symbol": ["A", "B"]}).with_columns(
        pl.lit(None).cast(t).alias(c) for c, t in INPUT_SCHEMA.items() if c != "symbol"
    )
    off, notes = data_switches(empty, settings)
    assert off.strategy.strat_min_market_cap == 0 and off.strategy.strat_min_dollar_vol == 0
    assert notes == (
        "no market cap in the data: the market-cap filter is off",
        "no dollar volume in the data: the liquidity filter is off",
    )
    fed = empty.with_columns(market_cap=pl.Series([1e11, None]))
    kept, notes = data_switches(fed, settings)
    assert kept.strategy.strat_min_market_cap == settings.strategy.strat_min_market_cap
    assert notes == ("no dollar volume in the data: the liquidity filter is off",)


def test_panic_exit_is_a_step_of_the_decision(world, tmp_path):
    """With ENABLE_PANIC_EXIT and a global breaker, the plan sells every holding at market."""
    path, asof, _ = world
    copy = tmp_path / "k.duckdb"
    copy.write_bytes(path.read_bytes())
    risk = RiskSettings(enable_panic_exit=True)
    settings = DecisionSettings(risk=risk)
    with Store.open(copy) as s:
        trip(
            s,
            [
                Breaker.new(
                    "global", "*", "coverage collapse", session_close(asof, DataSettings()), risk
                )
            ],
        )
        book = pl.DataFrame({"symbol": ["SYN0001", "SYN0002"], "qty": [100.0, 50.0]})
        d = _run(s, asof, book, settings=settings)
        calm = _run(s, asof, book)  # panic exit off by default: breakers only block buys
    orders = d.orders.select("symbol", "side", "qty", "order_type", "intent").rows()
    assert orders == [
        ("SYN0001", "sell", 100.0, "market", "panic"),
        ("SYN0002", "sell", 50.0, "market", "panic"),
    ]
    assert d.notes[-1] == "panic exit: coverage collapse: selling 2 holding(s)"
    assert "panic" not in calm.orders["intent"].to_list()
    assert calm.orders.filter(pl.col("side") == "buy").is_empty()
