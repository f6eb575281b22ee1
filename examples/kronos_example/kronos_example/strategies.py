"""Plain strategies for a backtest spec (entry-point group kronos.strategies).

Each is ``fn(store, asof, symbols) -> frame[symbol, value]``, called at the
close of ``asof``; it reads the store only through :mod:`kronos.data.readers`
with ``asof``, so it sees the bars known at that close and nothing later.

- :func:`equal_weight` (``kind: weights``): equal weights over the 10 names
  with the best 60-session momentum among those with a price at ``asof``.
- :func:`sma_cross` (``kind: signals``): +1 on the session a name's close
  crosses above its 50-session mean, -1 when it crosses below, 0 otherwise.

Used as ``strategy: {kind: weights, fn: kronos_example.strategies:equal_weight}``
with this folder on ``PYTHONPATH``, or ``fn: equal_weight`` once the package is
installed (its ``pyproject.toml`` registers both names).
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.store import Store

TOP = 10  # names held by equal_weight
MOMENTUM_SESSIONS = 60
SMA_SESSIONS = 50
# calendar days read back: enough sessions for the longest window plus holidays
LOOKBACK_DAYS = 130


def _closes(store: Store, asof: date, symbols: list[str]) -> pl.DataFrame:
    """``symbol, ts, close`` (adjusted when the store has it) known at the close of ``asof``."""
    bars = readers.prices(
        store, asof, symbols, start=asof - timedelta(days=LOOKBACK_DAYS), settings=DataSettings()
    )
    price = "adj_close" if "adj_close" in bars.columns else "close"
    return (
        bars.select("symbol", "ts", pl.coalesce(price, "close").alias("close"))
        .drop_nulls("close")
        .sort("symbol", "ts")
    )


def equal_weight(store: Store, asof: date, symbols: list[str]) -> pl.DataFrame:
    """1/10 on each of the 10 names with the best 60-session return that traded at ``asof``.

    A name needs a bar dated ``asof`` and 61 closes; with fewer than 10 such
    names each gets 1/10 anyway (the rest stays in cash).
    """
    closes = _closes(store, asof, symbols)
    momentum = (
        closes.group_by("symbol")
        .agg(
            last_ts=pl.col("ts").last(),
            n=pl.len(),
            momentum=pl.col("close").last() / pl.col("close").get(-MOMENTUM_SESSIONS - 1) - 1,
        )
        .filter((pl.col("last_ts") == asof) & (pl.col("n") > MOMENTUM_SESSIONS))
        .sort("momentum", "symbol", descending=[True, False])
        .head(TOP)
    )
    return momentum.select("symbol", value=pl.lit(1.0 / TOP))


def sma_cross(store: Store, asof: date, symbols: list[str]) -> pl.DataFrame:
    """+1 when the close crosses above its 50-session mean at ``asof``, -1 below, else 0."""
    closes = _closes(store, asof, symbols)
    sma = pl.col("close").rolling_mean(SMA_SESSIONS).over("symbol")
    above = (pl.col("close") > sma).cast(pl.Int8)
    last = (
        closes.with_columns(above=above)
        .with_columns(before=pl.col("above").shift(1).over("symbol"))
        .group_by("symbol")
        .agg(pl.col("ts").last(), pl.col("above").last(), pl.col("before").last())
        .filter((pl.col("ts") == asof) & pl.col("before").is_not_null())
    )
    return last.select(
        "symbol",
        value=(pl.col("above") - pl.col("before")).cast(pl.Float64),
    ).sort("symbol")
