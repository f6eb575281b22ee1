"""Validated, idempotent, atomic writes into the store.

A source hands over polars frames in the table's contract (``schema.TABLES``),
optionally with a ``_row`` column holding the 1-based file line of each row so
errors can point at it. :func:`conform` refuses bad rows, naming file, line,
column and symbol; :func:`upsert` writes one batch in one transaction, touching
only rows that are new or changed, so a second run of the same ingest writes
nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import polars as pl

from kronos.data.errors import InputError, Problem
from kronos.data.schema import TABLES, TableSpec
from kronos.data.store import Store

ROW = "_row"


@dataclass(frozen=True)
class UpsertResult:
    """What one batch did to its table."""

    table: str
    rows_in: int
    inserted: int
    updated: int

    @property
    def unchanged(self) -> int:
        """Rows that were already stored with the same values."""
        return self.rows_in - self.inserted - self.updated


def _problem(frame: pl.DataFrame, i: int, origin: str, column: str | None, msg: str) -> Problem:
    row = frame[ROW][i] if ROW in frame.columns else i + 1
    symbol = frame["symbol"][i] if "symbol" in frame.columns else None
    return Problem(msg, file=origin, row=row, column=column, symbol=symbol)


def conform(
    frame: pl.DataFrame, table: str, *, origin: str, max_problems: int = 50
) -> pl.DataFrame:
    """Return ``frame`` cast to ``table``'s contract, or raise :class:`InputError`.

    Checks: every column present, values castable, required columns non-null,
    floats finite, prices strictly positive, and no duplicate keys.
    """
    spec = TABLES[table]
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise InputError([Problem(f"missing columns {missing}", file=origin)])
    problems: list[Problem] = []
    if ROW not in frame.columns:
        frame = frame.with_row_index(ROW, offset=1)
    cast = []
    for col, dtype in spec.schema.items():
        src = frame[col]
        try:
            out = src.cast(dtype, strict=False)
        except pl.exceptions.InvalidOperationError as exc:
            raise InputError(
                [Problem(f"cannot convert {src.dtype} to {dtype}: {exc}", file=origin, column=col)]
            ) from exc
        bad = out.is_null() & src.is_not_null()
        for i in bad.arg_true().head(max_problems).to_list():
            problems.append(_problem(frame, i, origin, col, f"cannot read {src[i]!r} as {dtype}"))
        cast.append(out)
    out = pl.DataFrame(cast).with_columns(frame[ROW])
    problems += _value_problems(out, spec, origin, max_problems)
    problems.sort(key=lambda p: p.row or 0)
    if problems:
        raise InputError(problems)
    return out.drop(ROW)


def _value_problems(frame: pl.DataFrame, spec: TableSpec, origin: str, limit: int) -> list[Problem]:
    problems: list[Problem] = []

    def flag(mask: pl.Series, col: str | None, message: Callable[[int], str]) -> None:
        for i in mask.arg_true().head(limit).to_list():
            problems.append(_problem(frame, i, origin, col, message(i)))

    for col in spec.required:
        flag(frame[col].is_null(), col, lambda _i: "missing value")
    for col, dtype in spec.schema.items():
        if dtype.is_float():
            flag(frame[col].is_nan() | frame[col].is_infinite(), col, lambda _i: "not a number")
    for col in spec.positive:
        s = frame[col]
        flag(s <= 0, col, lambda i, s=s: f"non-positive price {s[i]}")
    dup = frame.select(spec.key).is_duplicated()
    if dup.any():
        keys = ", ".join(spec.key)
        flag(dup, None, lambda i: f"duplicate key ({keys}) = {frame.select(spec.key).row(i)}")
    return problems


def check_known_symbols(
    store: Store, frame: pl.DataFrame, *, origin: str, known: set[str] | None = None
) -> None:
    """Refuse reference rows for symbols the store has neither bars nor a profile for."""
    known = store.known_symbols() if known is None else known
    unknown = sorted(set(frame["symbol"].unique().to_list()) - known)
    if unknown:
        raise InputError(
            [
                Problem("unknown symbol: ingest its bars or profile first", file=origin, symbol=s)
                for s in unknown
            ]
        )


def upsert(
    store: Store, table: str, frame: pl.DataFrame, *, source: str, origin: str
) -> UpsertResult:
    """Write one batch atomically; rows equal to what is stored are left alone.

    ``frame`` must already satisfy the contract (see :func:`conform`).
    """
    spec = TABLES[table]
    frame = frame.select(spec.columns)
    con = store.con
    on = " AND ".join(f's."{k}" = t."{k}"' for k in spec.key)
    differs = " OR ".join(
        f'CAST(s."{c}" AS VARCHAR) IS DISTINCT FROM CAST(t."{c}" AS VARCHAR)'
        if spec.schema[c] == pl.String()
        else f's."{c}" IS DISTINCT FROM t."{c}"'
        for c in spec.columns
        if c not in spec.key
    )
    cols = ", ".join(f'"{c}"' for c in spec.columns)
    # registered outside the transaction: unregistering inside an aborted one
    # would raise and hide the error that aborted it
    con.register("_staged", frame.to_arrow())
    try:
        with store.transaction():
            first = spec.key[0]
            overlap = con.execute(
                f'SELECT count(*) FROM "{table}" WHERE "{first}" IN '
                f'(SELECT DISTINCT "{first}" FROM _staged)'
            ).fetchall()[0][0]
            updated = 0
            if overlap:
                # Changed rows are rare: stage them, delete the old versions, re-insert.
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE _changed AS SELECT s.* "
                    f'FROM _staged s JOIN "{table}" t ON {on} WHERE {differs or "false"}'
                )
                updated = con.execute("SELECT count(*) FROM _changed").fetchall()[0][0]
                if updated:
                    key_match = " AND ".join(f't."{k}" = s."{k}"' for k in spec.key)
                    con.execute(f'DELETE FROM "{table}" t USING _changed s WHERE {key_match}')
                    con.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM _changed')
                con.execute("DROP TABLE _changed")
                new_rows = f'WHERE NOT EXISTS (SELECT 1 FROM "{table}" t WHERE {on})'
            else:  # none of these keys can exist yet: a plain append
                new_rows = ""
            inserted = con.execute(
                f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM _staged s {new_rows}'
            ).fetchall()[0][0]
            con.execute(
                "INSERT INTO ingest_log VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                [uuid.uuid4().hex, source, table, origin, frame.height, inserted, updated],
            )
    finally:
        con.unregister("_staged")
    return UpsertResult(table, frame.height, inserted, updated)


def ingest(
    store: Store,
    table: str,
    batches: Iterable[pl.DataFrame],
    *,
    source: str,
    origin: str,
    on_batch: Callable[[UpsertResult], None] | None = None,
) -> UpsertResult:
    """Conform and upsert each batch in turn; each batch commits on its own.

    Returns the totals. A bad batch raises before anything of it is written;
    batches committed before it stay.
    """
    rows = ins = upd = 0
    # reference batches never add symbols, so the known set is read once
    known = store.known_symbols() if TABLES[table].reference else None
    for raw in batches:
        frame = conform(raw, table, origin=origin)
        if known is not None:
            check_known_symbols(store, frame, origin=origin, known=known)
        result = upsert(store, table, frame, source=source, origin=origin)
        rows, ins, upd = rows + result.rows_in, ins + result.inserted, upd + result.updated
        if on_batch:
            on_batch(result)
    return UpsertResult(table, rows, ins, upd)
