"""A factor of one's own: short-term reversal, point in time.

A factor is a function ``fn(store, asof, symbols) -> polars frame[symbol, value]``
that reads only what was known at ``asof``: read through
:mod:`kronos.data.readers`, which take ``asof``. Add it to the strategist's blend
with ``STRAT_FACTORS='{"reversal": {"fn": "reversal_5d", "weight": 0.1}}'`` or,
in a backtest spec, ``decision.strategy.factors.reversal: {fn: reversal_5d,
weight: 0.1}`` (the entry-point name, or the import path
``kronos_example.factors:reversal_5d``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.store import Store

SESSIONS = 5


def reversal_5d(store: Store, asof: readers.Asof, symbols: Sequence[str]) -> pl.DataFrame:
    """Minus the log return of the last 5 sessions completed at ``asof``.

    Names with fewer than 5 returns in the last 3 weeks get no row (the
    strategist counts them as missing: z-score 0). Bars are read with the
    default market rules (:class:`~kronos.config.DataSettings`).
    """
    settings = DataSettings()
    last = readers.PointInTime.at(asof, settings).bar_date
    rets = readers.returns(
        store, asof, list(symbols), start=last - timedelta(days=21), settings=settings
    )
    return (
        rets.sort("symbol", "ts")
        .group_by("symbol")
        .agg(pl.col("log_ret").tail(SESSIONS).sum().alias("value"), pl.len().alias("n"))
        .filter(pl.col("n") >= SESSIONS)
        .select("symbol", -pl.col("value").alias("value"))
        .sort("symbol")
    )
