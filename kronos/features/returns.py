"""The forecasters' input: a panel of daily log returns, read point in time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import polars as pl

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.store import Store
from kronos.errors import InputError


def returns_panel(
    store: Store,
    asof: date,
    symbols: Sequence[str] | None = None,
    start: date | None = None,
    source: str | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Daily log returns ``symbol, ts, y`` known at ``asof``, optionally of one source only."""
    if source is not None and symbols is None:
        rows = store.con.execute(
            "SELECT DISTINCT symbol FROM bars WHERE source = ? ORDER BY 1", [source]
        ).fetchall()
        symbols = [r[0] for r in rows]
        if not symbols:
            raise InputError(f"no bars with source {source!r} in {store.path}")
    frame = readers.returns(store, asof=asof, symbols=symbols, start=start, settings=settings)
    return frame.select("symbol", "ts", pl.col("log_ret").alias("y")).sort("symbol", "ts")
