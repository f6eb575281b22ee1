"""Fail-safe controller and circuit breakers: rules, persistence, trading effects, CLI.

Crafted frames use calm forecasts p50 = 0, p05/p95 = -/+1.645 sigma (sigma = 1%),
so a realized log return y has z = y / 0.01 exactly.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kronos.cli.breakers import app
from kronos.config import DataSettings, RiskSettings, load_settings
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.risk import (
    SCOPES,
    Breaker,
    BreakerError,
    FailSafeController,
    active_breakers,
    all_breakers,
    blocked_symbols,
    clear,
    cooldown,
    panic_exit_orders,
    session_close,
    trip,
)

SIGMA = 0.01
HALF = 1.645 * SIGMA
DATA = DataSettings(market_tz="America/New_York", market_close="16:00")
RISK = RiskSettings()
CRASH = date(2020, 3, 16)  # a Monday
SYMBOLS = [f"S{i:02d}" for i in range(12)]
SECTOR_OF = {s: ("Tech", "Energy", "Health")[i // 4] for i, s in enumerate(SYMBOLS)}


def sessions(last: date, n: int) -> list[date]:
    """The ``n`` weekdays ending at ``last``."""
    out, day = [], last
    while len(out) < n:
        if day.weekday() < 5:
            out.append(day)
        day -= timedelta(days=1)
    return out[::-1]


def calm_forecasts(symbols: list[str], origins: list[date]) -> pl.DataFrame:
    rows = [(s, o, -HALF, 0.0, HALF) for s in symbols for o in origins]
    return pl.DataFrame(rows, schema=["symbol", "asof", "p05", "p50", "p95"], orient="row")


def calm_returns(symbols: list[str], days: list[date], seed: int = 0) -> pl.DataFrame:
    """|y| < 0.8 sigma: always inside the interval, never a breach."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-0.8 * SIGMA, 0.8 * SIGMA, len(symbols) * len(days))
    rows = [(s, d) for s in symbols for d in days]
    return pl.DataFrame(
        {"symbol": [r[0] for r in rows], "ts": [r[1] for r in rows], "y": y},
        schema={"symbol": pl.String(), "ts": pl.Date(), "y": pl.Float64()},
    )


def sector_frame(mapping: dict[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"symbol": list(mapping), "sector": list(mapping.values())},
        schema={"symbol": pl.String(), "sector": pl.String()},
    )


@pytest.fixture(scope="module")
def crash() -> dict:
    """12 calm symbols for 30 sessions, then every one falls 8% on CRASH."""
    days = sessions(CRASH, 31)
    realized = calm_returns(SYMBOLS, days).with_columns(
        y=pl.when(pl.col("ts") == CRASH).then(math.log(0.92)).otherwise(pl.col("y"))
    )
    return {
        "days": days,
        "forecasts": calm_forecasts(SYMBOLS, days),
        "realized": realized,
        "sectors": sector_frame(SECTOR_OF),
    }


def controller(**overrides) -> FailSafeController:
    return FailSafeController(RiskSettings(**overrides), DATA)


# --- the rules ---------------------------------------------------------------------------------


def test_crash_day_trips_global_and_every_sector_with_the_numbers(crash: dict):
    found = controller().evaluate(
        CRASH, crash["forecasts"], crash["realized"], crash["sectors"], None
    )
    by_scope = {s: [b for b in found if b.scope == s] for s in SCOPES}
    assert [b.key for b in by_scope["global"]] == ["*"]
    assert sorted(b.key for b in by_scope["sector"]) == ["Energy", "Health", "Tech"]
    assert sorted(b.key for b in by_scope["symbol"]) == SYMBOLS
    z = math.log(0.92) / SIGMA  # -8.34
    glob = by_scope["global"][0]
    assert "12/12 symbols (100%)" in glob.reason and "2020-03-16" in glob.reason
    assert glob.details["breaching"] == 12 and glob.details["symbols"] == SYMBOLS
    assert "4/4 symbols" in by_scope["sector"][0].reason
    assert all(
        f"residual z={z:+.1f} beyond 4.0 on 2020-03-16" == b.reason for b in by_scope["symbol"]
    )
    assert by_scope["symbol"][0].details["z"] == pytest.approx(z, rel=1e-9)
    # tripped at the close of the crash day (16:00 New York = 20:00 UTC in March DST)
    assert glob.tripped_at == datetime(2020, 3, 16, 20, tzinfo=UTC)
    assert glob.expires_at == glob.tripped_at + timedelta(hours=72)


def test_the_calm_day_before_trips_nothing(crash: dict):
    before = crash["days"][-2]
    found = controller().evaluate(
        before, crash["forecasts"], crash["realized"], crash["sectors"], None
    )
    assert found == []


def test_evaluation_is_idempotent(crash: dict):
    args = (CRASH, crash["forecasts"], crash["realized"], crash["sectors"], None)
    first, second = controller().evaluate(*args), controller().evaluate(*args)
    assert [b.breaker_id for b in first] == [b.breaker_id for b in second]
    assert len({b.breaker_id for b in first}) == len(first)


def test_a_third_of_a_sector_falling_trips_neither_that_sector_nor_global(crash: dict):
    # only S00 and S04 fall: 2/12 = 17% < 30% global, 1/4 = 25% < 50% in each sector
    realized = crash["realized"].with_columns(
        y=pl.when((pl.col("ts") == CRASH) & ~pl.col("symbol").is_in(["S00", "S04"]))
        .then(0.0)
        .otherwise(pl.col("y"))
    )
    found = controller().evaluate(CRASH, crash["forecasts"], realized, crash["sectors"], None)
    assert sorted((b.scope, b.key) for b in found) == [("symbol", "S00"), ("symbol", "S04")]


def test_a_sector_below_the_minimum_size_does_not_trip(crash: dict):
    # Tech falls; with a minimum sector size of 5 its 4 members cannot trip it
    realized = crash["realized"].with_columns(
        y=pl.when((pl.col("ts") == CRASH) & ~pl.col("symbol").is_in(SYMBOLS[:4]))
        .then(0.0)
        .otherwise(pl.col("y"))
    )
    args = (CRASH, crash["forecasts"], realized, crash["sectors"], None)
    assert {b.key for b in controller().evaluate(*args) if b.scope == "sector"} == {"Tech"}
    found = controller(failsafe_min_sector_size=5).evaluate(*args)
    assert not [b for b in found if b.scope == "sector"]
    assert [b.key for b in found if b.scope == "global"] == ["*"]  # 4/12 = 33% >= 30%


def test_shares_exactly_at_the_thresholds_trip(crash: dict):
    ten = SYMBOLS[:10]  # Tech S00-S03, Energy S04-S07, Health S08-S09 (too small)
    forecasts = crash["forecasts"].filter(pl.col("symbol").is_in(ten))

    def falling(names: list[str]) -> list[tuple[str, str]]:
        realized = crash["realized"].filter(pl.col("symbol").is_in(ten))
        realized = realized.with_columns(
            y=pl.when((pl.col("ts") == CRASH) & ~pl.col("symbol").is_in(names))
            .then(0.0)
            .otherwise(pl.col("y"))
        )
        found = controller().evaluate(CRASH, forecasts, realized, crash["sectors"], None)
        return sorted((b.scope, b.key) for b in found if b.scope != "symbol")

    # 3/10 = 30% >= 30% global; Tech 2/4 = 50% >= 50%; Energy 1/4
    assert falling(["S00", "S01", "S05"]) == [("global", "*"), ("sector", "Tech")]
    assert falling(["S00", "S01"]) == [("sector", "Tech")]  # 2/10 = 20%
    assert falling(["S00", "S05"]) == []  # 2/10, 1/4 and 1/4


def news_frame(counts: dict[tuple[str, date], int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": [k[0] for k in counts],
            "day": [k[1] for k in counts],
            "n_news": list(counts.values()),
        },
        schema={"symbol": pl.String(), "day": pl.Date(), "n_news": pl.Int64()},
    )


def test_a_news_burst_trips_a_headline_breaker_for_that_symbol_only(crash: dict):
    before = crash["days"][-2]
    counts = {
        (s, before - timedelta(days=d)): 1 for s in SYMBOLS[:3] for d in range(1, 21)
    }  # ~1 a day
    counts |= {("S00", before): 30, ("S01", before): 2, ("S02", before): 1}
    found = controller().evaluate(
        before, crash["forecasts"], crash["realized"], crash["sectors"], news_frame(counts)
    )
    assert [(b.scope, b.key) for b in found] == [("headline", "S00")]
    assert "30 headlines on 2020-03-13 vs 1.0/day over the previous 20 days" in found[0].reason
    assert found[0].expires_at - found[0].tripped_at == timedelta(hours=24)
    blocked = blocked_symbols(found, crash["sectors"])
    assert list(blocked) == ["S00"]


def test_a_small_burst_below_the_minimum_count_does_not_trip(crash: dict):
    before = crash["days"][-2]
    news = news_frame({("S00", before): 4})  # no baseline at all: 4 >= 5 x 0, but 4 < 5
    found = controller().evaluate(
        before, crash["forecasts"], crash["realized"], crash["sectors"], news
    )
    assert found == []
    news = news_frame({("S00", before): 5})
    found = controller().evaluate(
        before, crash["forecasts"], crash["realized"], crash["sectors"], news
    )
    assert [(b.scope, b.key) for b in found] == [("headline", "S00")]


def test_a_spike_must_beat_the_multiple_of_its_own_baseline(crash: dict):
    before = crash["days"][-2]
    counts = {("S00", before - timedelta(days=d)): 3 for d in range(1, 21)}  # 3 a day
    counts[("S00", before)] = 14  # < 5 x 3
    found = controller().evaluate(
        before, crash["forecasts"], crash["realized"], crash["sectors"], news_frame(counts)
    )
    assert found == []
    counts[("S00", before)] = 15
    found = controller().evaluate(
        before, crash["forecasts"], crash["realized"], crash["sectors"], news_frame(counts)
    )
    assert [b.key for b in found] == ["S00"]


def drift_case(n_outside: int) -> tuple[date, pl.DataFrame, pl.DataFrame]:
    """One symbol over 25 sessions; ``n_outside`` of the last 20 (not the last) miss at z=2.5."""
    days = sessions(CRASH, 26)
    y = [0.002] * 26
    for i in range(n_outside):
        y[-2 - 2 * i] = 0.025 * (-1) ** i  # z = +/-2.5: outside p05..p95, no residual breach
    realized = pl.DataFrame({"symbol": ["AAA"] * 26, "ts": days, "y": y})
    return days[-1], calm_forecasts(["AAA"], days), realized


def test_coverage_drift_trips_a_symbol_breaker():
    asof, forecasts, realized = drift_case(8)  # 12/20 = 60% inside < 70%
    found = controller().evaluate(asof, forecasts, realized, sector_frame({"AAA": "Tech"}), None)
    assert [(b.scope, b.key) for b in found] == [("symbol", "AAA")]
    assert found[0].reason == (
        "coverage drift: 12/20 sessions inside p05-p95 (60%) below 70% on 2020-03-16"
    )
    assert found[0].details["coverage"] == pytest.approx(0.6)


def test_coverage_at_the_floor_does_not_trip_and_a_short_window_is_not_judged():
    asof, forecasts, realized = drift_case(6)  # 14/20 = 70%: not below
    assert controller().evaluate(asof, forecasts, realized, sector_frame({}), None) == []
    asof, forecasts, realized = drift_case(8)
    short = realized.filter(pl.col("ts") >= realized["ts"].sort()[-19])  # 18 scored sessions
    assert controller().evaluate(asof, forecasts, short, sector_frame({}), None) == []


def test_no_look_ahead_data_after_asof_changes_nothing(crash: dict):
    before = crash["days"][-2]
    news = news_frame({("S00", before): 30, ("S01", CRASH): 50})
    args = (crash["forecasts"], crash["realized"], crash["sectors"], news)
    base = controller().evaluate(before, *args)
    assert [b.key for b in base] == ["S00"]
    rng = np.random.default_rng(1)
    later = pl.col("ts") > before
    realized = crash["realized"].with_columns(
        y=pl.when(later).then(pl.lit(rng.normal(0, 0.5, crash["realized"].height))).otherwise("y")
    )
    forecasts = crash["forecasts"].with_columns(
        p50=pl.when(pl.col("asof") >= before).then(0.3).otherwise("p50")
    )
    future_news = news_frame({("S00", before): 30, ("S02", CRASH): 99, ("S00", CRASH): 7})
    assert controller().evaluate(before, forecasts, realized, crash["sectors"], future_news) == base
    truncated = controller().evaluate(
        before,
        crash["forecasts"].filter(pl.col("asof") < before),
        crash["realized"].filter(pl.col("ts") <= before),
        crash["sectors"],
        news.filter(pl.col("day") <= before),
    )
    assert truncated == base


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_look_ahead_for_random_frames(data):
    risk, forecasts, realized, sectors, news = data.draw(random_case())
    days = sorted(set(realized["ts"].to_list()))
    asof = data.draw(st.sampled_from(days))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    ctl = FailSafeController(risk, DATA)
    base = ctl.evaluate(asof, forecasts, realized, sectors, news)
    # after asof: returns and intervals far apart (misses), a flood of headlines
    wild = realized.with_columns(
        y=pl.when(pl.col("ts") > asof)
        .then(pl.lit(rng.normal(0, 0.5, realized.height)))
        .otherwise("y")
    )
    later = pl.col("asof") >= asof
    shifted = forecasts.with_columns(
        [pl.when(later).then(pl.col(c) + 0.5).otherwise(c).alias(c) for c in ("p05", "p50", "p95")]
    )
    flood = pl.concat(
        [news, news_frame({(s, asof + timedelta(days=d)): 99 for s in SYMBOLS for d in (1, 2)})]
    )
    assert ctl.evaluate(asof, shifted, wild, sectors, flood) == base


def test_duplicate_forecast_versions_are_refused(crash: dict):
    doubled = pl.concat([crash["forecasts"], crash["forecasts"]])
    with pytest.raises(ValueError, match="duplicate rows"):
        controller().evaluate(CRASH, doubled, crash["realized"], crash["sectors"], None)


def test_degenerate_intervals_are_not_scored(crash: dict):
    flat = crash["forecasts"].with_columns(p05=pl.lit(0.0), p95=pl.lit(0.0))
    assert controller().evaluate(CRASH, flat, crash["realized"], crash["sectors"], None) == []
    scores = controller().scores(CRASH, crash["forecasts"], crash["realized"])
    assert scores.height == 12 * 30 and scores["sigma"].min() == pytest.approx(SIGMA)


# --- invariants ---------------------------------------------------------------------------------


@st.composite
def random_case(draw):
    n_sym = draw(st.integers(2, 9))
    n_days = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    symbols = [f"R{i}" for i in range(n_sym)]
    days = sessions(CRASH, n_days)
    realized = calm_returns(symbols, days, seed).with_columns(
        y=pl.lit(rng.normal(0, draw(st.sampled_from([0.005, 0.02, 0.06])), n_sym * n_days))
    )
    realized = realized.filter(pl.lit(rng.uniform(size=n_sym * n_days) > 0.15))
    sig = rng.uniform(0.002, 0.03, n_sym * n_days)
    mid = rng.normal(0, 0.003, n_sym * n_days)
    forecasts = calm_forecasts(symbols, days).with_columns(
        p05=pl.lit(mid - 1.645 * sig), p50=pl.lit(mid), p95=pl.lit(mid + 1.645 * sig)
    )
    forecasts = forecasts.filter(pl.lit(rng.uniform(size=forecasts.height) > 0.15))
    sectors = sector_frame({s: draw(st.sampled_from(["A", "B", None])) for s in symbols})
    news = news_frame(
        {
            (s, CRASH - timedelta(days=d)): int(rng.poisson(2))
            for s in symbols
            for d in range(0, 25)
            if rng.uniform() < 0.5
        }
    )
    risk = RiskSettings(
        failsafe_resid_z=draw(st.sampled_from([1.0, 2.0, 4.0])),
        failsafe_global_breach_frac=draw(st.sampled_from([0.1, 0.3, 0.6, 1.0])),
        failsafe_sector_breach_frac=draw(st.sampled_from([0.2, 0.5, 1.0])),
        failsafe_min_sector_size=draw(st.integers(1, 3)),
        failsafe_coverage_window=draw(st.integers(2, 6)),
        failsafe_symbol_cooldown_hours=draw(st.floats(0.5, 100)),
        failsafe_sector_cooldown_hours=draw(st.floats(0.5, 100)),
        failsafe_global_cooldown_hours=draw(st.floats(0.5, 100)),
        headline_cooldown_hours=draw(st.floats(0.5, 100)),
        headline_min_count=draw(st.integers(1, 6)),
    )
    return risk, forecasts, realized, sectors, news


def breach_share(risk: RiskSettings, forecasts: pl.DataFrame, realized: pl.DataFrame):
    """Independent count: (breaching, scored) on CRASH, pairing by the previous session."""
    fc = {
        (r[0], r[1]): r[2:] for r in forecasts.select("symbol", "asof", "p05", "p50", "p95").rows()
    }
    k = n = 0
    for (sym,), g in realized.group_by("symbol"):
        ts = sorted(g["ts"].to_list())
        if ts[-1] != CRASH or len(ts) < 2 or (sym, ts[-2]) not in fc:
            continue
        p05, p50, p95 = fc[(sym, ts[-2])]
        y = g.filter(pl.col("ts") == CRASH)["y"][0]
        n += 1
        k += abs(y - p50) / ((p95 - p05) / (2 * 1.645)) > risk.failsafe_resid_z
    return k, n


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case())
def test_breakers_are_well_formed_and_global_follows_the_breach_share(case):
    risk, forecasts, realized, sectors, news = case
    found = FailSafeController(risk, DATA).evaluate(CRASH, forecasts, realized, sectors, news)
    close = session_close(CRASH, DATA)
    for b in found:
        assert b.scope in SCOPES
        assert b.tripped_at == close
        assert b.expires_at > b.tripped_at
        assert b.expires_at - b.tripped_at == cooldown(b.scope, risk)
        assert b.cleared_at is None
        assert (b.key == "*") == (b.scope == "global")
    assert len({b.breaker_id for b in found}) == len(found)
    k, n = breach_share(risk, forecasts, realized)
    tripped = any(b.scope == "global" for b in found)
    if n == 0 or k / n < risk.failsafe_global_breach_frac:
        assert not tripped
    else:
        assert tripped == (n >= risk.failsafe_min_sector_size)
    assert len([b for b in found if b.scope == "symbol" and b.reason.startswith("residual")]) == k


# --- persistence ----------------------------------------------------------------------------------


def test_breakers_survive_a_restart_expire_and_clear(tmp_path: Path, crash: dict):
    found = controller().evaluate(
        CRASH, crash["forecasts"], crash["realized"], crash["sectors"], None
    )
    path = tmp_path / "k.duckdb"
    with Store.open(path) as store:
        assert trip(store, found) == 16
        assert trip(store, found) == 0  # same ids: stored once
        assert trip(store, found[:3]) == 0
    close = session_close(CRASH, DATA)
    with Store.open(path) as store:
        assert store.row_counts()["circuit_breakers"] == 16
        assert active_breakers(store, close + timedelta(hours=1)) == found
        assert active_breakers(store, close - timedelta(seconds=1)) == []
        # symbol breakers last 24 h, sectors 48 h, global 72 h
        at30 = {b.scope for b in active_breakers(store, close + timedelta(hours=30))}
        assert at30 == {"sector", "global"}
        assert {b.scope for b in active_breakers(store, close + timedelta(hours=48))} == {"global"}
        assert active_breakers(store, close + timedelta(hours=72)) == []

        at = close + timedelta(hours=2)
        glob = next(b for b in found if b.scope == "global")
        assert clear(store, glob.short_id, at=at) == 1
        assert clear(store, glob.breaker_id, at=at) == 0  # already cleared
        assert clear(store, scope="sector", key="Tech", at=at) == 1
        assert clear(store, scope="symbol", at=at) == 12
        assert [b.key for b in active_breakers(store, at)] == ["Energy", "Health"]
        # point in time: before the clearing they were active
        assert len(active_breakers(store, at - timedelta(minutes=1))) == 16
        with pytest.raises(BreakerError, match="no circuit breaker with id 'nope'"):
            clear(store, "nope", at=at)
        with pytest.raises(BreakerError, match="give a breaker id"):
            clear(store, at=at)
    with Store.open(path, read_only=True) as store:
        stored = {b.breaker_id: b for b in all_breakers(store)}
        assert len(stored) == 16
        assert stored[glob.breaker_id].cleared_at == at
        assert stored[glob.breaker_id].details == glob.details


# --- effects on trading --------------------------------------------------------------------------


def make(scope: str, key: str, reason: str) -> Breaker:
    return Breaker.new(scope, key, reason, datetime(2020, 3, 16, 20, tzinfo=UTC), RISK)


def test_blocked_symbols_covers_every_scope():
    sectors = sector_frame({"A": "Tech", "B": "Tech", "C": "Energy", "D": None})
    assert blocked_symbols([], sectors) == {}
    assert blocked_symbols([make("symbol", "C", "z")], sectors) == {"C": "z"}
    assert blocked_symbols([make("headline", "D", "news")], sectors) == {"D": "news"}
    assert blocked_symbols([make("sector", "Tech", "tech")], sectors) == {"A": "tech", "B": "tech"}
    everything = blocked_symbols([make("global", "*", "crash"), make("symbol", "C", "z")], sectors)
    assert everything == {"A": "crash", "B": "crash", "C": "crash; z", "D": "crash"}
    # a symbol breaker for a name outside the sector table still blocks it
    assert blocked_symbols([make("symbol", "ZZZ", "z")], sectors) == {"ZZZ": "z"}


def test_panic_exit_flattens_only_when_enabled_and_global_is_active():
    positions = pl.DataFrame({"symbol": ["A", "B", "C"], "qty": [10, -5, 0]})
    glob, sym = make("global", "*", "crash"), make("symbol", "A", "z")
    on, off = RiskSettings(enable_panic_exit=True), RiskSettings(enable_panic_exit=False)
    assert panic_exit_orders([glob], positions, off).is_empty()
    assert panic_exit_orders([sym], positions, on).is_empty()
    empty = panic_exit_orders([], positions, on)
    assert empty.is_empty() and empty.schema == pl.Schema(
        {"symbol": pl.String(), "qty_delta": pl.Float64(), "reason": pl.String()}
    )
    orders = panic_exit_orders([sym, glob], positions, on)
    assert orders.select("symbol", "qty_delta").rows() == [("A", -10.0), ("B", 5.0)]
    assert orders["reason"].to_list() == ["panic exit: crash"] * 2


def test_panic_exit_reads_its_switch_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("ENABLE_PANIC_EXIT", "true")
    risk = load_settings(env_file=tmp_path / "none.env").risk
    assert risk.enable_panic_exit and not RiskSettings().enable_panic_exit
    positions = pl.DataFrame({"symbol": ["A"], "qty": [3.0]})
    assert panic_exit_orders([make("global", "*", "x")], positions, risk).height == 1


# --- CLI -----------------------------------------------------------------------------------------


def build_store(path: Path, crash: dict, *, calibrated_wide: bool = False) -> None:
    """Bars, profiles, forecasts (step 1, uncalibrated) and a news burst for the crash case."""
    realized = crash["realized"]
    bars = (
        realized.sort("symbol", "ts")
        .with_columns(adj_close=100 * pl.col("y").cum_sum().over("symbol").exp())
        .with_columns(
            open=pl.col("adj_close"),
            high=pl.col("adj_close"),
            low=pl.col("adj_close"),
            close=pl.col("adj_close"),
            volume=pl.lit(1e6),
            source=pl.lit("test"),
        )
        .drop("y")
    )
    known = datetime(2019, 1, 1, tzinfo=UTC)
    profiles = pl.DataFrame(
        {
            "symbol": SYMBOLS,
            "available_at": [known] * 12,
            "name": SYMBOLS,
            "asset_type": ["stock"] * 12,
            "sector": [SECTOR_OF[s] for s in SYMBOLS],
            "industry": [None] * 12,
            "exchange": ["NYSE"] * 12,
            "currency": ["USD"] * 12,
            "market_cap": [1e10] * 12,
            "source": ["test"] * 12,
        }
    )

    def forecasts(calibrated: bool, half: float) -> pl.DataFrame:
        return crash["forecasts"].with_columns(
            step=pl.lit(1),
            target_ts=pl.col("asof") + timedelta(days=1),
            p05=pl.lit(-half),
            p95=pl.lit(half),
            model=pl.lit("ewma"),
            version=pl.lit("v1"),
            calibrated=pl.lit(calibrated),
        )

    before = crash["days"][-2]
    stamp = datetime(2020, 3, 13, 15, tzinfo=UTC)
    news = pl.DataFrame(
        {
            "news_id": [f"n{i}" for i in range(30)],
            "symbol": ["S03"] * 30,
            "published_at": [stamp] * 30,
            "available_at": [stamp] * 30,
            "title": ["big news"] * 30,
            "site": [None] * 30,
            "url": [None] * 30,
            "text": [None] * 30,
            "source": ["test"] * 30,
        }
    )
    assert stamp.date() == before
    with Store.open(path) as store:
        ingest(store, "bars", [bars], source="test", origin="test")
        ingest(store, "dim_company_profile", [profiles], source="test", origin="test")
        ingest(store, "forecasts", [forecasts(False, HALF)], source="test", origin="test")
        if calibrated_wide:
            ingest(store, "forecasts", [forecasts(True, 1.0)], source="test", origin="test")
        ingest(store, "fmp_news", [news], source="test", origin="test")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_check_list_clear(tmp_path: Path, crash: dict):
    db = str(tmp_path / "k.duckdb")
    build_store(tmp_path / "k.duckdb", crash)
    before = crash["days"][-2]

    res = invoke("check", "--asof", str(before), "--model", "ewma", "--db", db, "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert [(b["scope"], b["key"]) for b in payload["breakers"]] == [("headline", "S03")]
    assert payload["calibrated"] is False and payload["new"] == 1

    res = invoke("check", "--asof", str(CRASH), "--db", db, "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    scopes = [b["scope"] for b in payload["breakers"]]
    assert scopes.count("global") == 1 and scopes.count("sector") == 3
    assert scopes.count("symbol") == 12 and payload["new"] == 16
    glob = next(b for b in payload["breakers"] if b["scope"] == "global")
    assert "12/12 symbols" in glob["reason"]
    again = json.loads(invoke("check", "--asof", str(CRASH), "--db", db, "--json").stdout)
    assert again["new"] == 0  # idempotent

    at = "2020-03-17T12:00:00"
    listed = json.loads(invoke("list", "--at", at, "--db", db, "--json").stdout)
    assert len(listed["breakers"]) == 16  # the headline breaker expired at 2020-03-14 20:00
    assert len(json.loads(invoke("list", "--all", "--db", db, "--json").stdout)["breakers"]) == 17
    table = invoke("list", "--at", at, "--db", db).stdout
    assert "global" in table and glob["breaker_id"][:8] in table and "Energy" in table

    res = invoke("clear", "deadbeef", "--db", db)
    assert res.exit_code == 2
    assert "no circuit breaker with id 'deadbeef'" in res.output
    res = invoke("clear", "--scope", "global", "--db", db)  # now: long expired, nothing to clear
    assert res.exit_code == 0 and "cleared 0 breakers" in res.stdout
    assert invoke("clear", "--db", db).exit_code == 2


def test_cli_clear_an_active_breaker_now(tmp_path: Path):
    path = tmp_path / "k.duckdb"
    now = datetime.now(UTC)
    b = Breaker.new("symbol", "AAA", "manual test", now - timedelta(hours=1), RISK)
    with Store.open(path) as store:
        trip(store, [b])
    listed = json.loads(invoke("list", "--db", str(path), "--json").stdout)
    assert [x["breaker_id"] for x in listed["breakers"]] == [b.breaker_id]
    res = invoke("clear", b.short_id, "--db", str(path))
    assert res.exit_code == 0 and "cleared 1 breaker" in res.stdout
    assert json.loads(invoke("list", "--db", str(path), "--json").stdout)["breakers"] == []


def test_cli_check_prefers_calibrated_forecasts(tmp_path: Path, crash: dict):
    db = str(tmp_path / "k.duckdb")
    build_store(tmp_path / "k.duckdb", crash, calibrated_wide=True)
    res = invoke("check", "--asof", str(CRASH), "--model", "ewma", "--db", db, "--json")
    payload = json.loads(res.stdout)
    # the calibrated intervals are +/-100%: an 8% fall is no breach
    assert payload["calibrated"] is True and payload["breakers"] == []
    res = invoke("check", "--asof", str(CRASH), "--model", "nbeats", "--db", db)
    assert res.exit_code == 2 and "no stored step-1 forecasts of model nbeats" in res.output
