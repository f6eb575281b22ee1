"""What a forecast request asks for, checked against the store before any model runs.

Symbols are cleaned and bounded; ``asof`` is resolved to the origin (the
store's last session at or before it); unknown, bar-less or stale symbols
are refused with the status and the names (:class:`~kronos.serve_store.ServiceError`).
"""

from __future__ import annotations

import difflib
from datetime import date

from kronos.calendar import Calendar
from kronos.config import DataSettings
from kronos.data.store import Store
from kronos.serve_store import ServiceError, StoreFacts

__all__ = ["check_request", "clean_symbols", "resolve_request"]


def clean_symbols(symbols: list[str], max_symbols: int) -> list[str]:
    """Symbols split on commas, stripped, upper-cased as ingest stores them, de-duplicated.

    422 if none or too many.
    """
    names = [p.strip().upper() for s in symbols for p in s.split(",") if p.strip()]
    names = list(dict.fromkeys(names))
    if not names:
        raise ServiceError(422, "no symbols given: pass at least one, e.g. symbols=AAPL,KO")
    if len(names) > max_symbols:
        raise ServiceError(422, f"too many symbols: {len(names)}, at most {max_symbols} a request")
    return names


def check_request(
    store: Store, names: list[str], asof: date | None, data: DataSettings, calendar: Calendar
) -> date:
    """The request's ``asof`` (the last bar when None), or a 4xx naming the problem.

    Unknown symbols are 404; asof outside the bars, a symbol without bars up to
    asof or with more than ``qa_max_gap_days`` sessions of ``calendar`` missing
    between its last bar and the origin is 422.
    """
    return resolve_request(store, names, asof, data, calendar)[0]


def resolve_request(
    store: Store,
    names: list[str],
    asof: date | None,
    data: DataSettings,
    calendar: Calendar,
    facts: StoreFacts | None = None,
) -> tuple[date, date]:
    """:func:`check_request`'s ``asof`` and the origin: the store's last session at or before it.

    ``facts``: the store's, when already read (they are per copy of the store).
    """
    facts = facts or StoreFacts.read(store)
    known = facts.symbols
    unknown = [s for s in names if s not in known]
    if unknown:
        hints = [
            f"{s} (did you mean {m[0]}?)"
            if (m := difflib.get_close_matches(s.upper(), known, n=1))
            else s
            for s in unknown
        ]
        detail = f"unknown symbols, no bars in the store: {', '.join(hints)}"
        raise ServiceError(404, detail, unknown)
    first, last = facts.first, facts.last
    if last is None:
        raise ServiceError(422, "no bars in the store")
    asof = asof or last
    if asof > last:
        raise ServiceError(422, f"asof {asof} is after the last bar in the store ({last})")
    if asof < first:
        raise ServiceError(422, f"asof {asof} is before the first bar in the store ({first})")
    origin, last_bar = facts.bars_at(store, asof)
    missing = [s for s in names if s not in last_bar]
    if missing:
        raise ServiceError(422, f"no bars up to asof {asof} for: {', '.join(missing)}", missing)
    gap = data.qa_max_gap_days
    stale = [s for s in names if calendar.sessions_between(last_bar[s], origin) > gap]
    if stale:
        detail = ", ".join(f"{s} (last bar {last_bar[s]})" for s in stale)
        raise ServiceError(
            422,
            f"more than {gap} {calendar.name} sessions without bars before {origin}: {detail}",
            stale,
        )
    return asof, origin
