"""Tearsheet statistics of a :class:`BacktestResult`: quantstats at the boundary, trades from fills.

Conventions (quantstats 0.0.86 as called here; ``result.stats`` comes from vectorbt):

- daily returns ``r_t = nav_t / nav_{t-1} - 1``, the first against the initial cash,
  which is ``benchmark[0]`` (the buy-and-hold benchmark buys at the first close
  without fees): the same series vectorbt builds from the portfolio value;
- 252 sessions a year (:data:`YEAR_SESSIONS`, vectorbt's ``year_freq`` here too);
  a risk-free rate of 0; sample standard deviations (``ddof=1``);
- CAGR geometric: ``prod(1 + r) ** (252 / n) - 1`` over the ``n`` sessions;
- Sharpe ``mean / std * sqrt(252)`` of daily returns (not of monthly returns);
- max drawdown: quantstats counts from the initial cash as the first peak; vectorbt
  from the first session's NAV. They differ only when the NAV falls below the
  initial cash before it makes a new high (see ``tests/test_tearsheet.py``);
- information ratio: quantstats returns ``mean / std`` of the daily active
  returns, not annualised; :func:`summary` reports it times ``sqrt(252)``;
- alpha: quantstats' CAPM intercept ``mean(r) - beta * mean(b)`` times 252 (arithmetic);
- VaR and CVaR at 95 %, one day: variance-covariance (normal) as quantstats'
  ``value_at_risk`` and ``cvar(method="parametric")``, and the historical CVaR
  (mean of the returns at or below the empirical 5 % quantile);
- profit factor: quantstats' is per session (sum of gains / sum of losses of the
  daily returns); the trade profit factor is over FIFO round trips (:func:`round_trips`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd
import polars as pl
import quantstats as qs

YEAR_SESSIONS = 252
ROLLING_WINDOW = 126  # sessions, about six months
VAR_CONFIDENCE = 0.95
TOP_DRAWDOWNS = 5
_EPS = 1e-9
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

TRADES_SCHEMA = {
    "symbol": pl.String,
    "side": pl.String,  # long | short
    "entry_ts": pl.Date,
    "exit_ts": pl.Date,
    "qty": pl.Float64,  # shares of the round trip (positive)
    "entry_price": pl.Float64,
    "exit_price": pl.Float64,
    "pnl": pl.Float64,  # after the fees of both legs, pro rata to the shares
    "ret": pl.Float64,  # pnl / (qty * entry_price)
    "sessions": pl.Int64,  # holding period in sessions of the backtest
    "exit": pl.String,  # fill | delisted
}
DRAWDOWNS_SCHEMA = {
    "start": pl.Date,  # first session below the peak
    "trough": pl.Date,
    "recovery": pl.Date,  # first session back at the peak; null while not recovered
    "depth": pl.Float64,  # negative fraction
    "sessions": pl.Int64,  # start to recovery (or to the last session)
    "days": pl.Int64,  # calendar days, the same span
}
PER_YEAR_SCHEMA = {
    "year": pl.Int32,
    "return": pl.Float64,
    "benchmark": pl.Float64,
    "excess": pl.Float64,
    "sharpe": pl.Float64,
    "max_drawdown": pl.Float64,
    "trades": pl.Int64,  # round trips closed in the year
    "turnover": pl.Float64,  # traded notional / mean NAV of the year (not annualised)
}


def daily_returns(equity: pl.DataFrame) -> pd.DataFrame:
    """``strategy`` and ``benchmark`` daily returns (DatetimeIndex), the first vs initial cash."""
    eq = equity.sort("ts")
    index = pd.DatetimeIndex(pd.to_datetime(eq["ts"].to_list()), name="ts")
    if eq.is_empty():
        return pd.DataFrame({"strategy": [], "benchmark": []}, index=index, dtype=float)
    nav, bench = eq["nav"].to_numpy(), eq["benchmark"].to_numpy()
    init = bench[0]  # the benchmark holds the initial cash at the first close, without fees
    with np.errstate(divide="ignore", invalid="ignore"):
        strat = nav / np.concatenate([[init], nav[:-1]]) - 1.0
        bret = bench / np.concatenate([[init], bench[:-1]]) - 1.0
    return pd.DataFrame({"strategy": strat, "benchmark": bret}, index=index)


def _f(value: object) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def summary(rets: pd.DataFrame) -> dict[str, float]:
    """Headline figures by quantstats (see the module docstring for each convention)."""
    r, b = rets["strategy"].dropna(), rets["benchmark"].dropna()
    if len(r) < 2:
        return {}
    greeks = qs.stats.greeks(r, b, periods=YEAR_SESSIONS)
    tail = r[r <= r.quantile(1 - VAR_CONFIDENCE)]
    return {
        "total_return": _f(qs.stats.comp(r)),
        "cagr": _f(qs.stats.cagr(r, periods=YEAR_SESSIONS)),
        "volatility": _f(qs.stats.volatility(r, periods=YEAR_SESSIONS)),
        "sharpe": _f(qs.stats.sharpe(r, periods=YEAR_SESSIONS)),
        "sortino": _f(qs.stats.sortino(r, periods=YEAR_SESSIONS)),
        "max_drawdown": _f(qs.stats.max_drawdown(r)),
        "calmar": _f(qs.stats.calmar(r, periods=YEAR_SESSIONS)),
        "alpha": _f(greeks["alpha"]),
        "beta": _f(greeks["beta"]),
        "information_ratio": _f(qs.stats.information_ratio(r, b)) * math.sqrt(YEAR_SESSIONS),
        "var_95": _f(qs.stats.value_at_risk(r, confidence=VAR_CONFIDENCE)),
        "cvar_95": _f(qs.stats.cvar(r, confidence=VAR_CONFIDENCE, method="parametric")),
        "cvar_95_hist": _f(tail.mean()) if len(tail) else math.nan,
        "profit_factor_daily": _f(qs.stats.profit_factor(r)),
        "win_days": _f(qs.stats.win_rate(r)),
        "best_day": _f(r.max()),
        "worst_day": _f(r.min()),
    }


def monthly_returns(rets: pd.DataFrame) -> pl.DataFrame:
    """``year, Jan..Dec, year_return`` compounded; null for months outside the backtest."""
    r = rets["strategy"].dropna()
    cols = {"year": pl.Int32, **{m: pl.Float64 for m in MONTHS}, "year_return": pl.Float64}
    if r.empty:
        return pl.DataFrame(schema=cols)
    table = qs.stats.monthly_returns(r, eoy=True, compounded=True)
    first, last = (r.index[0].year, r.index[0].month), (r.index[-1].year, r.index[-1].month)
    rows = []
    for year, row in table.iterrows():
        y = int(year)
        cells = {
            m: (float(row[m.upper()]) if first <= (y, k + 1) <= last else None)
            for k, m in enumerate(MONTHS)
        }
        rows.append({"year": y, **cells, "year_return": float(row["EOY"])})
    return pl.DataFrame(rows, schema=cols)


def rolling(rets: pd.DataFrame, window: int = ROLLING_WINDOW) -> pl.DataFrame:
    """``ts, sharpe, volatility, beta`` over the last ``window`` sessions (annualised at 252)."""
    r, b = rets["strategy"], rets["benchmark"]
    schema = {"ts": pl.Date, "sharpe": pl.Float64, "volatility": pl.Float64, "beta": pl.Float64}
    if len(r) < window:
        return pl.DataFrame(schema=schema)
    out = pl.DataFrame(
        {
            "ts": list(r.index.date),
            "sharpe": qs.stats.rolling_sharpe(
                r, rolling_period=window, periods_per_year=YEAR_SESSIONS
            ).to_numpy(),
            "volatility": qs.stats.rolling_volatility(
                r, rolling_period=window, periods_per_year=YEAR_SESSIONS
            ).to_numpy(),
            "beta": qs.stats.rolling_greeks(r, b, periods=window)["beta"].to_numpy(),
        },
        schema=schema,
    )
    return out.with_columns(pl.col("sharpe", "volatility", "beta").fill_nan(None)).drop_nulls(
        "volatility"
    )


def worst_drawdowns(rets: pd.DataFrame, top: int = TOP_DRAWDOWNS) -> pl.DataFrame:
    """The ``top`` deepest drawdowns (quantstats' ``drawdown_details``) with recovery dates."""
    r = rets["strategy"].dropna()
    if r.empty:
        return pl.DataFrame(schema=DRAWDOWNS_SCHEMA)
    dd = qs.stats.to_drawdown_series(r)
    # drawdown_details walks every period (hundreds in a long run): hand it only the
    # ``top`` deepest, the others zeroed (periods are separated by zeros, so unchanged)
    under = dd < 0
    period = (under & ~under.shift(1, fill_value=False)).cumsum().where(under, 0)
    deepest = dd[under].groupby(period[under]).min().nsmallest(top).index
    details = qs.stats.drawdown_details(dd.where(period.isin(deepest), 0.0))
    if details.empty:
        return pl.DataFrame(schema=DRAWDOWNS_SCHEMA)
    details = details.sort_values("max drawdown").head(top)
    days = list(r.index.date)
    rows = []
    for row in details.itertuples(index=False):
        start, trough, end = (date.fromisoformat(str(v)[:10]) for v in (row[0], row[1], row[2]))
        i_end = bisect_left(days, end)
        recovered = i_end + 1 < len(days) and dd.iloc[i_end + 1] == 0
        recovery = days[i_end + 1] if recovered else None
        stop = recovery or days[-1]
        rows.append(
            {
                "start": start,
                "trough": trough,
                "recovery": recovery,
                "depth": float(row[4]) / 100.0,
                "sessions": bisect_left(days, stop) - bisect_left(days, start),
                "days": (stop - start).days,
            }
        )
    return pl.DataFrame(rows, schema=DRAWDOWNS_SCHEMA)


def _holding(sessions: Sequence[date], entry: date, exit_: date) -> int:
    return bisect_left(sessions, exit_) - bisect_left(sessions, entry)


def round_trips(
    fills: pl.DataFrame, sessions: Sequence[date], events: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, int]:
    """FIFO round trips per symbol from ``fills`` (:data:`TRADES_SCHEMA`), and the lots left open.

    A fill against open lots closes the oldest first; what is left opens a lot on
    its side. Fees are charged pro rata to the shares of each leg. ``events``
    (splits, delistings) rescale or close the lots; dividends are cash outside
    the trades.
    """
    lots: dict[str, deque[list]] = {}  # [entry_ts, signed qty, price, fee per share]
    rows: list[dict] = []

    def close(sym: str, lot: list, take: float, price: float, fee_ps: float, day, how: str):
        side = 1.0 if lot[1] > 0 else -1.0
        pnl = side * (price - lot[2]) * take - take * (lot[3] + fee_ps)
        cost = take * lot[2]
        rows.append(
            {
                "symbol": sym,
                "side": "long" if side > 0 else "short",
                "entry_ts": lot[0],
                "exit_ts": day,
                "qty": take,
                "entry_price": lot[2],
                "exit_price": price,
                "pnl": pnl,
                "ret": pnl / cost if cost else math.nan,
                "sessions": _holding(sessions, lot[0], day),
                "exit": how,
            }
        )

    steps: list[tuple] = []  # (day, 0 = event before 1 = fill, order, row)
    if events is not None:
        for k, ev in enumerate(events.iter_rows(named=True)):
            if ev["event"] in ("split", "delisted"):
                steps.append((ev["ts"], 0, k, ev))
    for k, fill in enumerate(fills.iter_rows(named=True)):
        steps.append((fill["ts"], 1, k, fill))
    for day, kind, _, row in sorted(steps, key=lambda s: s[:3]):
        book = lots.setdefault(row["symbol"], deque())
        if kind == 0 and row["event"] == "split" and row["qty_before"]:
            ratio = row["qty_after"] / row["qty_before"]
            for lot in book:
                lot[1], lot[2], lot[3] = lot[1] * ratio, lot[2] / ratio, lot[3] / ratio
        elif kind == 0 and row["event"] == "delisted" and row["qty_before"]:
            price = row["cash"] / row["qty_before"]
            while book:
                lot = book.popleft()
                close(row["symbol"], lot, abs(lot[1]), price, 0.0, day, "delisted")
        elif kind == 1 and row["qty"] > 0:
            remaining = row["qty"] if row["side"] == "buy" else -row["qty"]
            fee_ps = (row["fee"] or 0.0) / row["qty"]
            while abs(remaining) > _EPS and book and (book[0][1] > 0) != (remaining > 0):
                lot = book[0]
                take = min(abs(remaining), abs(lot[1]))
                close(row["symbol"], lot, take, row["price"], fee_ps, day, "fill")
                step = take if lot[1] > 0 else -take
                lot[1] -= step
                remaining += step
                if abs(lot[1]) <= _EPS:
                    book.popleft()
            if abs(remaining) > _EPS:
                book.append([day, remaining, row["price"], fee_ps])
    still_open = sum(len(b) for b in lots.values())
    return pl.DataFrame(rows, schema=TRADES_SCHEMA).sort("exit_ts", "symbol"), still_open


def trade_stats(trades: pl.DataFrame) -> dict[str, float]:
    """``trades, win_rate, profit_factor, avg_return, median_sessions`` of closed round trips."""
    if trades.is_empty():
        return {"trades": 0.0}
    pnl = trades["pnl"]
    gains, losses = float(pnl.filter(pnl > 0).sum()), float(-pnl.filter(pnl < 0).sum())
    return {
        "trades": float(trades.height),
        "win_rate": float((pnl > 0).mean()),
        "profit_factor": gains / losses if losses > 0 else math.inf if gains > 0 else math.nan,
        "avg_return": float(trades["ret"].mean()),
        "median_sessions": float(trades["sessions"].median()),
        "total_pnl": float(pnl.sum()),
    }


def _notional(fills: pl.DataFrame, by: pl.Expr, name: str) -> pl.DataFrame:
    return fills.group_by(by.alias(name)).agg(
        (pl.col("qty").abs() * pl.col("price")).sum().alias("notional")
    )


def per_year(equity: pl.DataFrame, fills: pl.DataFrame, trades: pl.DataFrame) -> pl.DataFrame:
    """Trading results per calendar year (:data:`PER_YEAR_SCHEMA`), from the daily returns."""
    rets = daily_returns(equity)
    if rets.empty:
        return pl.DataFrame(schema=PER_YEAR_SCHEMA)
    eq = equity.sort("ts").with_columns(pl.col("ts").dt.year().cast(pl.Int32).alias("year"))
    mean_nav = dict(eq.group_by("year").agg(pl.col("nav").mean()).iter_rows())
    traded = dict(_notional(fills, pl.col("ts").dt.year().cast(pl.Int32), "year").iter_rows())
    closed = trades.group_by(pl.col("exit_ts").dt.year().cast(pl.Int32).alias("y")).len()
    n_closed = dict(closed.iter_rows())
    rows = []
    for year, grp in rets.groupby(rets.index.year):
        r, b = grp["strategy"].dropna(), grp["benchmark"].dropna()
        ret, bret = float((1 + r).prod() - 1), float((1 + b).prod() - 1)
        wealth = np.concatenate([[1.0], np.cumprod(1 + r.to_numpy())])
        rows.append(
            {
                "year": int(year),
                "return": ret,
                "benchmark": bret,
                "excess": ret - bret,
                "sharpe": _f(qs.stats.sharpe(r, periods=YEAR_SESSIONS)) if len(r) > 1 else None,
                "max_drawdown": float((wealth / np.maximum.accumulate(wealth)).min() - 1),
                "trades": int(n_closed.get(int(year), 0)),
                "turnover": traded.get(int(year), 0.0) / mean_nav[int(year)],
            }
        )
    return pl.DataFrame(rows, schema=PER_YEAR_SCHEMA).with_columns(pl.col("sharpe").fill_nan(None))


def turnover_by_month(equity: pl.DataFrame, fills: pl.DataFrame) -> pl.DataFrame:
    """``month`` (first day), ``turnover``: traded notional / mean NAV of the month."""
    schema = {"month": pl.Date, "turnover": pl.Float64}
    if equity.is_empty():
        return pl.DataFrame(schema=schema)
    month = pl.col("ts").dt.truncate("1mo")
    navs = equity.group_by(month.alias("month")).agg(pl.col("nav").mean())
    traded = _notional(fills, month, "month") if fills.height else None
    out = navs if traded is None else navs.join(traded, on="month", how="left")
    notional = pl.col("notional").fill_null(0.0) if traded is not None else pl.lit(0.0)
    return out.select("month", (notional / pl.col("nav")).alias("turnover")).sort("month")


def excess_curve(rets: pd.DataFrame) -> pl.DataFrame:
    """``ts, excess``: growth of the strategy over the benchmark's, minus 1 (0 = level)."""
    if rets.empty:
        return pl.DataFrame(schema={"ts": pl.Date, "excess": pl.Float64})
    grow = (1 + rets.fillna(0.0)).cumprod()
    return pl.DataFrame(
        {
            "ts": list(rets.index.date),
            "excess": (grow["strategy"] / grow["benchmark"] - 1).to_numpy(),
        },
        schema={"ts": pl.Date, "excess": pl.Float64},
    )
