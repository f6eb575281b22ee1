"""Tearsheet statistics: quantstats against kronos' vectorbt figures, FIFO round trips by hand."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from kronos.backtest import tearsheet as ts
from kronos.backtest import vbt
from kronos.backtest.analysis import EWMA_WARMUP, ewma_volatility, forecast_quality
from kronos.backtest.monitor import Quantiles
from kronos.backtest.result import (
    EQUITY_SCHEMA,
    EVENTS_SCHEMA,
    FILLS_SCHEMA,
    PIT_SCHEMA,
    SCALE_SCHEMA,
    TERCILE_SCHEMA,
    empty,
)

# quantstats and vectorbt compute the same formulas here: they agree to rounding
STAT_RTOL = 1e-9
INIT = 1_000_000.0


def _days(n: int, start: date = date(2021, 1, 4)) -> list[date]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def _equity(nav: np.ndarray, bench: np.ndarray, start: date = date(2021, 1, 4)) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": _days(len(nav), start),
            "nav": nav,
            "cash": nav * 0.1,
            "invested": nav * 0.9,
            "benchmark": bench,
        },
        schema=EQUITY_SCHEMA,
    )


@pytest.fixture(scope="module")
def equity() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    n = 600
    nav = INIT * np.cumprod(1 + rng.normal(0.0004, 0.011, n))
    bench = INIT * np.concatenate([[1.0], np.cumprod(1 + rng.normal(0.0003, 0.012, n - 1))])
    return _equity(nav, bench)


def test_quantstats_agrees_with_vectorbt(equity: pl.DataFrame) -> None:
    ours = vbt.portfolio_stats(None, equity, empty(FILLS_SCHEMA), INIT)
    qs = ts.summary(ts.daily_returns(equity))
    for name in ("total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown"):
        assert qs[name] == pytest.approx(ours[name], rel=STAT_RTOL), name


def test_conventions_pinned(equity: pl.DataFrame) -> None:
    """Sharpe of daily returns at sqrt(252), ddof 1, rf 0; IR annualised by us; CAGR on 252."""
    rets = ts.daily_returns(equity)
    r, b = rets["strategy"].to_numpy(), rets["benchmark"].to_numpy()
    s = ts.summary(rets)
    assert r[0] == pytest.approx(equity["nav"][0] / INIT - 1, rel=1e-12)  # first vs initial cash
    assert s["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252), rel=1e-12)
    assert s["sharpe"] != pytest.approx(r.mean() / r.std(ddof=0) * math.sqrt(252), rel=1e-4)
    active = r - b
    ir = active.mean() / active.std(ddof=1) * math.sqrt(252)
    assert s["information_ratio"] == pytest.approx(ir, rel=1e-9)
    cagr_252 = np.prod(1 + r) ** (252 / len(r)) - 1
    days = (equity["ts"][-1] - equity["ts"][0]).days
    cagr_calendar = np.prod(1 + r) ** (365.25 / days) - 1
    assert s["cagr"] == pytest.approx(cagr_252, rel=1e-12)
    assert abs(s["cagr"] - cagr_calendar) > 1e-4  # a calendar-day CAGR is another figure
    beta = np.cov(r, b)[0, 1] / np.var(b, ddof=1)
    assert s["beta"] == pytest.approx(beta, rel=1e-9)
    assert s["alpha"] == pytest.approx((r.mean() - beta * b.mean()) * 252, rel=1e-9)
    assert s["calmar"] == pytest.approx(s["cagr"] / abs(s["max_drawdown"]), rel=1e-12)
    tail = r[r <= np.quantile(r, 0.05)]
    assert s["cvar_95_hist"] == pytest.approx(tail.mean(), rel=1e-9)
    assert s["cvar_95"] < s["var_95"] < 0  # normal CVaR beyond the normal VaR


def test_max_drawdown_counts_from_initial_cash_in_quantstats() -> None:
    """vectorbt's max drawdown starts at the first NAV, quantstats' at the initial cash."""
    nav = np.array([95.0, 90.0, 92.0, 96.0, 97.0, 99.0])
    eq = _equity(nav, np.full(6, 100.0))
    ours = vbt.portfolio_stats(None, eq, empty(FILLS_SCHEMA), 100.0)
    qs = ts.summary(ts.daily_returns(eq))
    assert ours["max_drawdown"] == pytest.approx(90 / 95 - 1, rel=1e-9)
    assert qs["max_drawdown"] == pytest.approx(90 / 100 - 1, rel=1e-9)


def test_worst_drawdowns_by_hand() -> None:
    nav = np.array([110.0, 99.0, 121.0, 100.0, 90.0, 95.0])  # initial cash 100
    eq = _equity(nav, np.full(6, 100.0))
    days = eq["ts"].to_list()
    dd = ts.worst_drawdowns(ts.daily_returns(eq))
    assert dd.schema == pl.Schema(ts.DRAWDOWNS_SCHEMA)
    first, second = dd.row(0, named=True), dd.row(1, named=True)
    assert (first["start"], first["trough"], first["recovery"]) == (days[3], days[4], None)
    assert first["depth"] == pytest.approx(90 / 121 - 1, rel=1e-12)
    assert first["sessions"] == 2  # not recovered: to the last session
    assert (second["start"], second["trough"], second["recovery"]) == (days[1], days[1], days[2])
    assert second["depth"] == pytest.approx(-0.1, rel=1e-12)
    assert second["sessions"] == 1


def test_worst_drawdowns_are_quantstats_deepest(equity: pl.DataFrame) -> None:
    """Handing drawdown_details only the deepest periods changes none of them."""
    import quantstats as qs

    rets = ts.daily_returns(equity)
    full = qs.stats.drawdown_details(qs.stats.to_drawdown_series(rets["strategy"]))
    full = full.sort_values("max drawdown").head(ts.TOP_DRAWDOWNS)
    ours = ts.worst_drawdowns(rets)
    assert ours.height == ts.TOP_DRAWDOWNS
    assert [d.isoformat() for d in ours["start"]] == list(full["start"])
    assert [d.isoformat() for d in ours["trough"]] == list(full["valley"])
    np.testing.assert_allclose(ours["depth"] * 100, full["max drawdown"], rtol=1e-12)


def _fills(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"ts": d, "asof": d, "symbol": s, "side": side, "qty": q, "price": p,
             "ref_price": p, "fee": f, "client_order_id": f"o{i}"}
            for i, (d, s, side, q, p, f) in enumerate(rows)
        ],
        schema=FILLS_SCHEMA,
    )  # fmt: skip


def test_round_trips_fifo_by_hand() -> None:
    d = _days(10)
    fills = _fills(
        [
            (d[0], "AAA", "buy", 10.0, 100.0, 1.0),
            (d[0], "CCC", "buy", 10.0, 100.0, 0.0),
            (d[1], "BBB", "sell", 5.0, 50.0, 0.0),  # a short
            (d[1], "DDD", "buy", 4.0, 25.0, 0.0),
            (d[2], "AAA", "buy", 10.0, 110.0, 1.0),
            (d[3], "BBB", "buy", 5.0, 40.0, 0.0),
            (d[4], "CCC", "sell", 20.0, 55.0, 0.0),  # after a 2:1 split
            (d[5], "AAA", "sell", 15.0, 120.0, 1.5),
            (d[7], "AAA", "sell", 5.0, 90.0, 0.5),
            (d[8], "EEE", "buy", 3.0, 10.0, 0.0),  # still open
        ]
    )
    events = pl.DataFrame(
        [
            {"ts": d[2], "symbol": "CCC", "event": "split", "qty_before": 10.0,
             "qty_after": 20.0, "cash": 0.0, "detail": None},
            {"ts": d[6], "symbol": "DDD", "event": "delisted", "qty_before": 4.0,
             "qty_after": 0.0, "cash": 120.0, "detail": "last bar"},
        ],
        schema=EVENTS_SCHEMA,
    )  # fmt: skip
    trades, still_open = ts.round_trips(fills, d, events)
    assert still_open == 1
    got = {(r["symbol"], r["entry_ts"], r["exit_ts"]): r for r in trades.iter_rows(named=True)}
    # AAA: lots 10 @ 100 and 10 @ 110 (fee 0.1 a share each); sells 15 @ 120, 5 @ 90
    a1, a2, a3 = got["AAA", d[0], d[5]], got["AAA", d[2], d[5]], got["AAA", d[2], d[7]]
    assert (a1["qty"], a1["pnl"], a1["sessions"]) == (10.0, pytest.approx(198.0), 5)
    assert a1["ret"] == pytest.approx(198.0 / 1000.0)
    assert (a2["qty"], a2["pnl"], a2["sessions"]) == (5.0, pytest.approx(49.0), 3)
    assert (a3["qty"], a3["pnl"], a3["sessions"]) == (5.0, pytest.approx(-101.0), 5)
    b = got["BBB", d[1], d[3]]
    assert (b["side"], b["pnl"], b["ret"]) == ("short", pytest.approx(50.0), pytest.approx(0.2))
    c = got["CCC", d[0], d[4]]
    assert (c["qty"], c["entry_price"], c["pnl"]) == (20.0, 50.0, pytest.approx(100.0))
    x = got["DDD", d[1], d[6]]
    assert (x["exit"], x["exit_price"], x["pnl"]) == ("delisted", 30.0, pytest.approx(20.0))
    stats = ts.trade_stats(trades)
    assert stats["trades"] == 6
    assert stats["win_rate"] == pytest.approx(5 / 6)
    assert stats["profit_factor"] == pytest.approx((198 + 49 + 50 + 100 + 20) / 101)


def test_per_year_and_turnover() -> None:
    nav = INIT * np.cumprod(np.full(400, 1.001))
    eq = _equity(nav, np.full(400, INIT), start=date(2021, 6, 1))
    days = eq["ts"].to_list()
    fills = _fills(
        [(days[10], "AAA", "buy", 100.0, 50.0, 1.0), (days[300], "AAA", "sell", 100.0, 60.0, 1.0)]
    )
    trades, _ = ts.round_trips(fills, days)
    py = ts.per_year(eq, fills, trades)
    assert py.schema == pl.Schema(ts.PER_YEAR_SCHEMA)
    assert py["year"].to_list() == [2021, 2022]
    n2021 = sum(d.year == 2021 for d in days)
    assert py["return"][0] == pytest.approx(1.001**n2021 - 1, rel=1e-9)  # first vs initial cash
    assert py["excess"][0] == pytest.approx(py["return"][0])  # flat benchmark
    assert py["trades"].to_list() == [0, 1]
    mean_nav_2021 = float(eq.filter(pl.col("ts").dt.year() == 2021)["nav"].mean())
    assert py["turnover"][0] == pytest.approx(5000.0 / mean_nav_2021, rel=1e-12)
    assert py["max_drawdown"][0] == 0.0
    monthly = ts.turnover_by_month(eq, fills)
    month = pl.col("ts").dt.truncate("1mo")

    def mean_nav(day: date) -> float:
        return float(eq.filter(month == pl.lit(day).dt.truncate("1mo"))["nav"].mean())

    expect = 5000.0 / mean_nav(days[10]) + 6000.0 / mean_nav(days[300])
    assert monthly["turnover"].sum() == pytest.approx(expect, rel=1e-12)
    assert (monthly["turnover"] > 0).sum() == 2


def test_monthly_returns_blank_outside_the_backtest() -> None:
    nav = INIT * np.cumprod(np.full(60, 1.002))
    eq = _equity(nav, np.full(60, INIT), start=date(2022, 2, 14))
    m = ts.monthly_returns(ts.daily_returns(eq))
    row = m.row(0, named=True)
    assert row["year"] == 2022 and row["Jan"] is None and row["Jun"] is None
    n_feb = sum(d.month == 2 for d in eq["ts"].to_list())
    assert row["Feb"] == pytest.approx(1.002**n_feb - 1, rel=1e-9)
    assert row["year_return"] == pytest.approx(1.002**60 - 1, rel=1e-9)


def test_rolling_window_and_excess(equity: pl.DataFrame) -> None:
    rets = ts.daily_returns(equity)
    roll = ts.rolling(rets)
    assert roll.height == equity.height - ts.ROLLING_WINDOW + 1
    last = rets["strategy"].to_numpy()[-ts.ROLLING_WINDOW :]
    vol = last.std(ddof=1) * math.sqrt(252)
    assert roll["volatility"][-1] == pytest.approx(vol, rel=1e-9)
    ex = ts.excess_curve(rets)
    expect = (equity["nav"][-1] / INIT) / (equity["benchmark"][-1] / INIT) - 1
    assert ex["excess"][-1] == pytest.approx(expect, rel=1e-9)


def test_ewma_volatility_and_forecast_quality() -> None:
    n, k = 80, 3
    rng = np.random.default_rng(5)
    y = rng.normal(0, 0.01, (n, k))
    y[:, 2] = 0.02  # constant |return|: the EWMA volatility is exactly 0.02
    vol = ewma_volatility(y)
    assert np.isnan(vol[EWMA_WARMUP - 2]).all() and np.isfinite(vol[EWMA_WARMUP - 1]).all()
    np.testing.assert_allclose(vol[EWMA_WARMUP:, 2], 0.02, rtol=1e-12)
    # the forecast made at t for y[t + 1]: a N(0, 0.01) band, calibrated twice as wide
    half = 1.645 * 0.01
    raw = Quantiles(np.full((n, k), -half), np.zeros((n, k)), np.full((n, k), half))
    wide = Quantiles(raw.p05 * 2, raw.p50, raw.p95 * 2)
    scale = np.full((n, k), 2.0)
    sessions = _days(n)
    hist, terc, sc = forecast_quality(sessions, raw, wide, y, 10, scale)
    assert hist.schema == pl.Schema(PIT_SCHEMA) and terc.schema == pl.Schema(TERCILE_SCHEMA)
    assert sc.schema == pl.Schema(SCALE_SCHEMA)
    for stage in ("raw", "calibrated"):
        assert hist.filter(pl.col("stage") == stage)["share"].sum() == pytest.approx(1.0)
    scored = (n - 1 - 10) * k - (EWMA_WARMUP - 1 - 10) * k  # origins 10..n-2 with a volatility
    assert terc.filter(pl.col("stage") == "raw")["n"].sum() == scored
    assert sc.height == n - 10 and (sc["median"] == 2.0).all()
    _, _, none = forecast_quality(sessions, raw, wide, y, 10, None)
    assert none.is_empty()
