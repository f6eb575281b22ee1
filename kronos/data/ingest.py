"""Validated, idempotent, atomic writes into the store.

A source hands over polars frames in the table's contract (``schema.TABLES``),
optionally with a ``_row`` column holding the 1-based file line of each row so
errors can point at it. :func:`conform` refuses bad rows, naming file, line,
column and symbol; :func:`upsert` writes one batch in one transaction, touching
only rows that are new or changed, so a second run of the same ingest writes
nothing.

Rows that come from a source (files, FMP, Alpaca, the bundled and synthetic
data) also pass :class:`IngestRules`: symbols normalised and matched against a
pattern, bars on sessions of the exchange calendar with consistent OHLC and
prices under a sanity bound, and nothing known after the ingest time: no
reference row whose ``available_at`` is later, no bar whose session closes later.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from kronos.calendar import Calendar, CalendarError, get_calendar
from kronos.config import DataSettings
from kronos.data.errors import InputError, Problem
from kronos.data.schema import TABLES, TableSpec
from kronos.data.store import Store

ROW = "_row"
PRICES = ("open", "high", "low", "close", "adj_close")


@dataclass(frozen=True)
class IngestRules:
    """What rows from a source must satisfy beyond the table contract.

    Build one per command with :meth:`from_settings` (the calendar takes a
    fraction of a second to load); ``now`` is the ingest time (time-zone aware,
    kept in UTC): no reference row may have become known after it, and no bar's
    session may close after it (a bar is known only at its session's close).
    """

    calendar: Calendar
    max_price: float = 1e6
    symbol_pattern: str = r"^[A-Z][A-Z0-9.\-]{0,14}$"
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError(f"IngestRules.now must be time-zone aware, got {self.now}")
        object.__setattr__(self, "now", self.now.astimezone(UTC))

    @classmethod
    def from_settings(
        cls,
        settings: DataSettings,
        calendar: str | None = None,
        now: datetime | None = None,
    ) -> IngestRules:
        """Rules from data settings; ``calendar`` overrides ``settings.calendar``.

        ``now`` (the ingest time) defaults to the current time.
        """
        return cls(
            calendar=get_calendar(calendar or settings.calendar),
            max_price=settings.max_price,
            symbol_pattern=settings.symbol_pattern,
            now=now or datetime.now(UTC),
        )

    @property
    def last_session(self) -> date | None:
        """The latest session closed at the ingest time (:func:`last_closed_session`)."""
        return last_closed_session(self.calendar, self.now)


def last_closed_session(calendar: Calendar, now: datetime) -> date | None:
    """The latest session of ``calendar`` whose close is at or before ``now``.

    None when ``now`` lies before the calendar's first close. Bars of later
    sessions are not known yet at ``now``.
    """
    day = min(now.astimezone(UTC).date() + timedelta(days=1), calendar.last)
    try:
        if not calendar.is_session(day):
            day = calendar.previous_session(day)
        while calendar.session_close(day) > now:
            day = calendar.previous_session(day)
    except CalendarError:  # before the calendar's first session (or its first close)
        return None
    return day


def normalize_symbols(
    frame: pl.DataFrame, on_note: Callable[[str], None] | None = None
) -> pl.DataFrame:
    """Strip and upper-case the ``symbol`` column, reporting each symbol that changed."""
    if "symbol" not in frame.columns or frame["symbol"].dtype != pl.String:
        return frame
    raw = frame["symbol"].unique(maintain_order=True).drop_nulls()
    clean = raw.str.strip_chars().str.to_uppercase()
    changed = dict(zip(raw.filter(raw != clean), clean.filter(raw != clean), strict=True))
    if not changed:  # the common case: nothing to rewrite in a large batch
        return frame
    if on_note is not None:
        for old, new in changed.items():
            on_note(f"symbol {old!r} stored as {new!r}")
    return frame.with_columns(symbol=pl.col("symbol").replace(changed))


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
    frame: pl.DataFrame,
    table: str,
    *,
    origin: str,
    max_problems: int = 50,
    rules: IngestRules | None = None,
) -> pl.DataFrame:
    """Return ``frame`` cast to ``table``'s contract, or raise :class:`InputError`.

    Checks: every column present, values castable, required columns non-null,
    floats finite, prices strictly positive, and no duplicate keys; with
    ``rules``, also those of :class:`IngestRules`.
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
    if rules is not None:
        problems += _rule_problems(out, spec, origin, rules, max_problems)
    problems.sort(key=lambda p: p.row or 0)
    if problems:
        raise InputError(problems)
    return out.drop(ROW)


def _flagger(
    frame: pl.DataFrame, origin: str, limit: int, problems: list[Problem]
) -> Callable[[pl.Series, str | None, Callable[[int], str]], None]:
    """``flag(mask, column, message)``: a problem for each of the first ``limit`` rows of mask.

    Null in the mask (a comparison with a missing value) is not a problem.
    """

    def flag(mask: pl.Series, col: str | None, message: Callable[[int], str]) -> None:
        for i in mask.fill_null(False).arg_true().head(limit).to_list():
            problems.append(_problem(frame, i, origin, col, message(i)))

    return flag


def _value_problems(frame: pl.DataFrame, spec: TableSpec, origin: str, limit: int) -> list[Problem]:
    problems: list[Problem] = []
    flag = _flagger(frame, origin, limit, problems)

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
        values = frame.select(spec.key)
        flag(
            dup,
            None,
            lambda i: f"duplicate key ({keys}) = ({', '.join(map(str, values.row(i)))})",
        )
    return problems


def _rule_problems(
    frame: pl.DataFrame, spec: TableSpec, origin: str, rules: IngestRules, limit: int
) -> list[Problem]:
    problems: list[Problem] = []
    flag = _flagger(frame, origin, limit, problems)

    if "symbol" in spec.schema:
        sym = frame["symbol"]
        pattern = rules.symbol_pattern
        names = sym.unique().drop_nulls()
        flag(
            sym.is_in(names.filter(~names.str.contains(pattern)).implode()),
            "symbol",
            lambda i: f"symbol {sym[i]!r} does not match {pattern} (KRONOS_SYMBOL_PATTERN)",
        )
    if "available_at" in spec.schema:
        known = frame["available_at"]
        now = rules.now
        flag(
            known > now,
            "available_at",
            lambda i: (
                f"available_at {known[i]:%Y-%m-%d %H:%M} UTC lies after the ingest time "
                f"{now:%Y-%m-%d %H:%M} UTC: a row cannot be known before it happens"
            ),
        )
    if spec.name == "bars":
        problems += _bar_problems(frame, origin, rules, limit)
    return problems


def _bar_problems(
    frame: pl.DataFrame, origin: str, rules: IngestRules, limit: int
) -> list[Problem]:
    """OHLC consistency, the price bound and sessions of the calendar."""
    problems: list[Problem] = []
    flag = _flagger(frame, origin, limit, problems)

    bound = rules.max_price
    for col in PRICES:
        s = frame[col]
        flag(
            s > bound,
            col,
            lambda i, s=s: f"price {s[i]:g} above the sanity bound {bound:g} (KRONOS_MAX_PRICE)",
        )
    o, h, lo, c = (frame[k] for k in ("open", "high", "low", "close"))
    flag(h < lo, "high", lambda i: f"high {h[i]:g} below low {lo[i]:g}")
    for name, s in (("open", o), ("close", c)):
        flag(
            (s < lo) | (s > h),
            name,
            lambda i, name=name, s=s: f"{name} {s[i]:g} outside low..high {lo[i]:g}..{h[i]:g}",
        )
    problems += session_problems(frame, origin, rules.calendar, limit)
    problems += future_bar_problems(frame, origin, rules, limit)
    return problems


def future_bar_problems(
    frame: pl.DataFrame, origin: str, rules: IngestRules, limit: int = 50
) -> list[Problem]:
    """Bars whose session closes after the ingest time ``rules.now``.

    Only sessions are checked here; a day that is no session is reported by
    :func:`session_problems`.
    """
    calendar, now = rules.calendar, rules.now
    days = frame["ts"].to_numpy().astype("datetime64[D]")
    last = last_closed_session(calendar, now)
    late = ~np.isnat(days)
    if last is not None:
        late &= days > np.datetime64(last, "D")
    late &= calendar.in_range(days)
    if late.any():
        late[late] = calendar.sessions_mask(days[late])
    problems = []
    for i in np.flatnonzero(late)[:limit].tolist():
        day = days[i].astype(date)
        close = calendar.session_close(day)
        problems.append(
            _problem(
                frame,
                i,
                origin,
                "ts",
                f"{day} closes at {close:%Y-%m-%d %H:%M} UTC, after the ingest time "
                f"{now:%Y-%m-%d %H:%M} UTC: a bar is known only at its session's close",
            )
        )
    return problems


def session_problems(
    frame: pl.DataFrame, origin: str, calendar: Calendar, limit: int = 50
) -> list[Problem]:
    """Bars whose ``ts`` is no session of ``calendar``, naming the nearest session."""
    days = frame["ts"].to_numpy().astype("datetime64[D]")
    known = ~np.isnat(days)
    span = calendar.sessions_array(date.min, date.max)
    first, last = span[0], span[-1]
    outside = known & ((days < first) | (days > last))
    inside = known & ~outside
    off = np.zeros(len(days), dtype=bool)
    if inside.any():
        off[inside] = ~calendar.sessions_mask(days[inside])
    problems = [
        _problem(
            frame,
            i,
            origin,
            "ts",
            f"{days[i]} is outside the {calendar.name} calendar's range {first}..{last}",
        )
        for i in np.flatnonzero(outside)[:limit].tolist()
    ]
    for i in np.flatnonzero(off)[:limit].tolist():
        day = days[i].astype(date)
        problems.append(_problem(frame, i, origin, "ts", off_session_message(day, calendar)))
    return problems


def off_session_message(day: date, calendar: Calendar) -> str:
    """Why ``day`` is no session, and the session nearest to it."""
    why = calendar.closed_reason(day)
    after = calendar.next_session(day)
    try:
        before = calendar.previous_session(day)
    except CalendarError:
        before = None
    near = after if before is None or (after - day) <= (day - before) else before
    return f"{day} is not a {calendar.name} session ({why}); the nearest session is {near}"


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
    rules: IngestRules | None = None,
    on_note: Callable[[str], None] | None = None,
) -> UpsertResult:
    """Conform and upsert each batch in turn; each batch commits on its own.

    With ``rules`` (every source loader passes them), symbols are normalised
    first (each change reported through ``on_note``) and the rules are checked.
    Returns the totals. A bad batch raises before anything of it is written;
    batches committed before it stay.
    """
    rows = ins = upd = 0
    # reference batches never add symbols, so the known set is read once
    known = store.known_symbols() if TABLES[table].reference else None
    for raw in batches:
        if rules is not None:
            raw = normalize_symbols(raw, on_note)
        frame = conform(raw, table, origin=origin, rules=rules)
        if known is not None:
            check_known_symbols(store, frame, origin=origin, known=known)
        result = upsert(store, table, frame, source=source, origin=origin)
        rows, ins, upd = rows + result.rows_in, ins + result.inserted, upd + result.updated
        if on_batch:
            on_batch(result)
    return UpsertResult(table, rows, ins, upd)
