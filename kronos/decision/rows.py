"""Storing the decision's daily rows: stamped at the session close, replaced per day."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import polars as pl

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.store import Store
from kronos.risk import session_close


def stamp(asof: readers.Asof, data_settings: DataSettings) -> datetime:
    """The instant rows for ``asof`` carry: market close of a date, or the aware instant."""
    if isinstance(asof, datetime):
        if asof.tzinfo is None:
            raise ValueError(f"asof {asof} is a naive datetime; give a time zone or a date")
        return asof.astimezone(UTC)
    return session_close(asof, data_settings)


def replace_rows(
    store: Store,
    table: str,
    rows: pl.DataFrame,
    schema: Mapping[str, pl.DataType],
    asof: readers.Asof | None,
    data_settings: DataSettings,
) -> int:
    """Replace every row of ``table`` stamped with an instant of ``rows`` (and ``asof``)."""
    missing = [c for c in schema if c not in rows.columns]
    if missing:
        raise ValueError(f"{table} rows lack columns {missing}")
    rows = rows.select(pl.col(c).cast(t) for c, t in schema.items())
    stamps = set(rows["asof"].unique().to_list())
    if asof is not None:
        stamps.add(stamp(asof, data_settings))
    if not stamps:
        return 0
    cols = ", ".join(f'"{c}"' for c in schema)
    # Registered outside the transaction: unregistering inside an aborted one would fail
    # and hide the original error.
    store.con.register("_strategy_rows", rows.to_arrow())
    try:
        with store.transaction() as con:
            con.execute(
                f'DELETE FROM {table} WHERE "asof" IN (SELECT unnest(?::TIMESTAMPTZ[]))',
                [sorted(stamps)],
            )
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _strategy_rows")
    finally:
        store.con.unregister("_strategy_rows")
    return rows.height
