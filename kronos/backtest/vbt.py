"""vectorbt at the boundary: replay the harness's fills, check parity, compute statistics.

The only module that hands frames to vectorbt (as wide pandas frames). vectorbt
reads process-wide ``vectorbt.settings``; every option that changes a result is
passed explicitly here so those settings cannot leak in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import polars as pl
import vectorbt

from kronos.backtest.market import wide
from kronos.backtest.result import STAT_NAMES
from kronos.execution.fills import FillRules

__all__ = ["buy_and_hold_stats", "parity", "portfolio_stats", "replay"]

YEAR_SESSIONS = 252
_YEAR_FREQ = f"{YEAR_SESSIONS} days"  # with freq="1D": one row is one session


def _sessions(close: pl.DataFrame) -> pl.Series:
    return close["ts"].unique().sort()


def _index(sessions: pl.Series) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(sessions.to_list()), name="ts")


def _cells(fills: pl.DataFrame) -> pl.DataFrame:
    """One order per (ts, symbol): vectorbt takes one order per cell."""
    cells = fills.group_by("ts", "symbol", maintain_order=True).agg(
        pl.col("qty").sum(),
        pl.col("ref_price").first(),
        pl.col("ref_price").n_unique().alias("_prices"),
        (pl.col("qty") > 0).n_unique().alias("_sides"),
    )
    bad = cells.filter((pl.col("_prices") > 1) | (pl.col("_sides") > 1))
    if bad.height:
        # a netted buy and sell would pay fees on the net only
        raise ValueError(
            "fills mix sides or prices for one symbol in one session, which vectorbt "
            f"cannot replay: {bad.select('ts', 'symbol').head(5).to_dicts()}"
        )
    return cells.drop("_prices", "_sides")


def replay(
    fills: pl.DataFrame, close: pl.DataFrame, init_cash: float, rules: FillRules
) -> vectorbt.Portfolio:
    """Simulate the harness's ``fills`` (``ts, symbol, qty, ref_price``) in vectorbt.

    ``close`` (``ts, symbol, close``) spans every session of the backtest; it is
    forward-filled for marking, and a symbol's sessions before its first close
    are marked at 0 (nothing can be held there without a mark). Only traded
    symbols become columns. vectorbt applies ``rules``' slippage and commission
    to ``ref_price`` itself. Options set, and why:

    - ``size_type="amount"``: signed shares, NaN (no order) elsewhere;
      ``direction="both"``: a sell is never capped at the position held, so
      vectorbt does what the harness did (``"longonly"`` would silently clip);
    - ``size_granularity=NaN``, ``min_size=0``, ``max_size=inf``, ``fixed_fees=0``,
      ``lock_cash=False``: no rounding, floor, cap or margin the harness lacks;
    - ``allow_partial=False`` and ``raise_reject=True``: a buy the shared cash
      cannot pay for raises instead of being shrunk to a fractional size;
    - ``cash_sharing=True, group_by=True, call_seq="auto"``: one account; within
      a session sells run before buys (sorted by order value at ``price``), as a
      broker that nets the day's cash would, so no buy waits on a later sell;
    - ``val_price=inf`` (the order price), ``update_value=False``: valuation only
      orders the calls; ``freq="1D"``: one row per session.
    """
    if fills.height and not set(fills["ts"].unique().to_list()) <= set(close["ts"].to_list()):
        raise ValueError("fills on sessions that close does not cover")
    sessions = _sessions(close)
    symbols = sorted(set(fills["symbol"].to_list())) or sorted(set(close["symbol"].to_list()))[:1]
    cells = _cells(fills)
    index = _index(sessions)

    def frame(a: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(a, index=index, columns=pd.Index(symbols, name="symbol"))

    marks = frame(wide(close, "close", sessions.to_list(), symbols)).ffill().fillna(0.0)
    return vectorbt.Portfolio.from_orders(
        close=marks,
        size=frame(wide(cells, "qty", sessions.to_list(), symbols)),
        size_type="amount",
        direction="both",
        price=frame(wide(cells, "ref_price", sessions.to_list(), symbols)),
        fees=rules.commission,
        fixed_fees=0.0,
        slippage=rules.slippage,
        min_size=0.0,
        max_size=np.inf,
        size_granularity=np.nan,
        reject_prob=0.0,
        lock_cash=False,
        allow_partial=False,
        raise_reject=True,
        val_price=np.inf,
        init_cash=float(init_cash),
        cash_sharing=True,
        group_by=True,
        call_seq="auto",
        ffill_val_price=True,
        update_value=False,
        freq="1D",
    )


def _max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    """``max |a - ref| / max(|ref|, 1)``; a NaN on one side only counts as infinite."""
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.size == 0:
        return 0.0
    both_nan = np.isnan(a) & np.isnan(ref)
    diff = np.abs(a - ref) / np.maximum(np.abs(ref), 1.0)
    diff = np.where(both_nan, 0.0, np.where(np.isnan(diff), np.inf, diff))
    return float(diff.max())


def parity(
    harness_equity: pl.DataFrame, harness_positions: pl.DataFrame, pf: vectorbt.Portfolio
) -> dict[str, float]:
    """Largest relative gaps between the harness and vectorbt over every session.

    ``nav`` vs ``pf.value()``, ``cash`` vs ``pf.cash()`` (as a share of the NAV),
    ``positions`` (shares) vs ``pf.assets()``, each ``|harness - vectorbt| /
    max(|vectorbt|, 1)``: relative
    for values above 1 (dollars, shares), absolute below, so a flat book
    compares on an absolute scale. Positions absent from
    ``harness_positions`` count as 0; so do vectorbt columns for untraded symbols.
    """
    index = pf.wrapper.index
    equity = harness_equity.sort("ts")
    if [pd.Timestamp(d) for d in equity["ts"].to_list()] != list(index):
        raise ValueError("harness_equity must hold exactly the replayed sessions")
    sessions = equity["ts"]
    assets = pf.assets()
    symbols = sorted(set(assets.columns) | set(harness_positions["symbol"].to_list()))
    vbt_qty = assets.reindex(columns=symbols, fill_value=0.0).to_numpy(dtype=np.float64)
    qty = np.nan_to_num(wide(harness_positions, "qty", sessions.to_list(), symbols), nan=0.0)
    return {
        "nav": _max_rel(equity["nav"].to_numpy(), pf.value().to_numpy()),
        # cash can sit at a few dollars after a buy: its gap is measured against
        # the NAV, or float rounding of millions traded would read as a mismatch
        "cash": float(
            np.max(
                np.abs(equity["cash"].to_numpy() - pf.cash().to_numpy())
                / np.maximum(np.abs(pf.value().to_numpy()), 1.0)
            )
        )
        if equity.height
        else 0.0,
        "positions": _max_rel(qty, vbt_qty),
    }


def _hit_rate(pf: vectorbt.Portfolio) -> float:
    # Exit trades: each sell against the average cost of the shares it sells.
    # A rebalanced book rarely goes flat, so round trips from flat to flat
    # (positions) would be too few to mean anything.
    records = pf.trades.values
    closed = records[records["status"] == 1]
    return float(np.mean(closed["pnl"] > 0)) if len(closed) else float("nan")


def portfolio_stats(
    pf: vectorbt.Portfolio | None, equity: pl.DataFrame, fills: pl.DataFrame, init_cash: float
) -> dict[str, float]:
    """:data:`STAT_NAMES` of a run: vectorbt's return statistics at 252 sessions a year.

    ``turnover`` is traded notional (``|qty| * price`` of ``fills``) / mean NAV /
    years; ``exposure`` the mean of ``invested / nav`` (``invested`` or
    ``nav - cash`` of ``equity``); ``hit_rate`` the share of closed positions
    (flat to flat) with a positive PnL after fees. Without ``pf`` (a book that
    took corporate actions or delistings, which a replay of the fills does not
    know) the return statistics come from the engine's NAV and ``hit_rate`` is NaN.
    """
    if pf is not None:
        acc = pf.get_returns_acc(year_freq=_YEAR_FREQ)
        total = float(pf.total_return())
    else:
        index = pd.DatetimeIndex([pd.Timestamp(d) for d in equity["ts"].to_list()])
        nav_pd = pd.Series(equity["nav"].to_numpy(), index=index)
        rets = nav_pd / nav_pd.shift(1, fill_value=init_cash) - 1  # vectorbt's convention
        acc = rets.vbt.returns(freq="1D", year_freq=_YEAR_FREQ)
        total = float(nav_pd.iloc[-1] / init_cash - 1) if len(nav_pd) else float("nan")
    nav = equity["nav"].cast(pl.Float64)
    invested = equity["invested"] if "invested" in equity.columns else nav - equity["cash"]
    years = equity.height / YEAR_SESSIONS
    notional = float((fills["qty"].abs() * fills["price"]).sum()) if fills.height else 0.0
    mean_nav = float(nav.mean()) if equity.height else float("nan")
    stats = {
        "total_return": total,
        "cagr": float(acc.annualized()),
        "volatility": float(acc.annualized_volatility()),
        "sharpe": float(acc.sharpe_ratio()),
        "sortino": float(acc.sortino_ratio()),
        "max_drawdown": float(acc.max_drawdown()),
        "turnover": notional / mean_nav / years if years > 0 else float("nan"),
        "exposure": float((invested / nav).mean()) if equity.height else float("nan"),
        "hit_rate": _hit_rate(pf) if pf is not None else float("nan"),
    }
    return {name: stats[name] for name in STAT_NAMES}


def buy_and_hold_stats(
    close: pl.DataFrame, init_cash: float, symbols: Sequence[str]
) -> tuple[pl.DataFrame, dict[str, float]]:
    """Equal-weight buy-and-hold of ``symbols``: NAV (``ts, benchmark``) and :data:`STAT_NAMES`.

    Each symbol gets ``init_cash / len(symbols)`` and buys the whole shares it
    affords at the first session's close, without fees; nothing is rebalanced. A
    symbol without a close on the first session stays in cash.
    """
    if not symbols:
        raise ValueError("no benchmark symbols")
    sessions = _sessions(close)
    budget = float(init_cash) / len(symbols)
    first = (
        close.filter((pl.col("ts") == sessions[0]) & pl.col("symbol").is_in(list(symbols)))
        .with_columns(pl.col("close").cast(pl.Float64).fill_nan(None))
        .filter(pl.col("close") > 0)
        .sort("symbol")
    )
    fills = first.select(
        "ts",
        "symbol",
        (budget / pl.col("close")).floor().alias("qty"),
        pl.col("close").alias("ref_price"),
        pl.col("close").alias("price"),
        pl.lit(0.0).alias("fee"),
    ).filter(pl.col("qty") > 0)
    marks = close.filter(pl.col("symbol").is_in(list(symbols)))
    pf = replay(fills, marks, init_cash, FillRules(at="close"))
    nav = pf.value().to_numpy()
    cash = pf.cash().to_numpy()
    equity = pl.DataFrame({"ts": sessions, "nav": nav, "cash": cash})
    stats = portfolio_stats(pf, equity, fills, init_cash)
    return equity.select("ts", pl.col("nav").alias("benchmark")), stats
