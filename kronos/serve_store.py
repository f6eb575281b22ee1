"""The store as the forecast service reads it: an in-memory copy per file change, and its facts.

Split from :mod:`kronos.serve`: :class:`StoreCache` re-reads the DuckDB file only
when it changed (each copy numbered, so answers can be cached per copy), and
:class:`StoreFacts` holds what every request is checked against.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from kronos.data.errors import KronosDataError
from kronos.data.store import Store
from kronos.errors import KronosError, StoreBusy

log = logging.getLogger("kronos.serve")

MAX_ASOFS = 1024  # origins remembered per copy of the store (StoreFacts.bars_at)


class ServiceError(KronosError):
    """A request the service refuses, with its HTTP status (and Retry-After for a 503)."""

    def __init__(
        self,
        status: int,
        detail: str,
        symbols: list[str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.symbols = status, detail, symbols
        self.retry_after = retry_after

    def __reduce__(self) -> tuple:
        return type(self), (self.status, self.detail, self.symbols, self.retry_after)


class StoreCache:
    """The store as requests read it: an in-memory copy, re-read when the file changes.

    Each request stats the file (and its write-ahead log); when they changed, one
    request re-reads it with :meth:`Store.snapshot`, holding the file only while
    copying, and the others keep the previous copy meanwhile. A writer holding the
    file leaves the previous copy in service. Before any copy exists a busy store
    is 503; so is a store that cannot be read, and neither message names a path.
    Each copy read gets the next ``generation`` (1, 2, ...): what a copy answers
    may be cached under it.
    """

    def __init__(self, path: Path, first_read_wait_s: float, retry_after_s: int) -> None:
        self.path = path
        self.first_read_wait_s = first_read_wait_s
        self.retry_after_s = retry_after_s
        self.read_at: datetime | None = None
        # (copy, file stamp it was read at, generation), replaced in one assignment
        self._state: tuple[Store | None, tuple | None, int] = (None, None, 0)
        self._reading = threading.Lock()

    @property
    def generation(self) -> int:
        """How many copies were read (0: none yet)."""
        return self._state[2]

    def _file_stamp(self) -> tuple:
        stamp = []
        for file in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                st = file.stat()
            except OSError:
                stamp.append(None)
            else:
                stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    @contextmanager
    def reader(self) -> Iterator[Store]:
        """A store on the current copy for one request (its own DuckDB cursor)."""
        with self.copy() as (store, _generation):
            yield store

    @contextmanager
    def copy(self) -> Iterator[tuple[Store, int]]:
        """As :meth:`reader`, with the generation of the copy it reads."""
        store, generation = self.current_copy()  # keeps the copy alive until the request ends
        cursor = store.con.cursor()
        try:
            yield Store(cursor, store.path), generation
        finally:
            cursor.close()

    def unchanged(self) -> int | None:
        """The generation of the copy in service if the file has not changed since; never reads."""
        store, stamp, generation = self._state
        if store is None or stamp != self._file_stamp():
            return None
        return generation

    def current(self) -> Store:
        """The copy of the file as it is now, or the previous one while a writer holds it."""
        return self.current_copy()[0]

    def current_copy(self) -> tuple[Store, int]:
        """:meth:`current` and its generation."""
        stamp = self._file_stamp()
        store, read_stamp, generation = self._state
        if store is not None and stamp == read_stamp:
            return store, generation
        if not self._reading.acquire(blocking=store is None):
            return store, generation  # another request is re-reading: serve the previous copy
        try:
            store, read_stamp, generation = self._state
            if store is not None and read_stamp == stamp:
                return store, generation  # re-read by the request we waited for
            wait = self.first_read_wait_s if store is None else 0.0
            try:
                fresh = Store.snapshot(self.path, lock_wait_s=wait)
            except (StoreBusy, KronosDataError, duckdb.Error) as exc:
                busy = isinstance(exc, StoreBusy)
                if busy and store is not None:
                    return store, generation
                log.log(logging.WARNING if busy else logging.ERROR, "store %s: %s",
                        "busy" if busy else "unavailable", exc)  # fmt: skip
                why = (
                    "the store is busy: another process is writing it; retry shortly"
                    if busy
                    else "the store is unavailable (the service log says why); retry later"
                )
                raise ServiceError(503, why, retry_after=self.retry_after_s) from exc
            self.read_at = datetime.now(UTC)
            self._state = (fresh, stamp, generation + 1)
            return fresh, generation + 1
        finally:
            self._reading.release()


@dataclass(frozen=True)
class StoreFacts:
    """What every request is checked against: the symbols with bars and the span of the bars."""

    symbols: frozenset[str]
    first: date | None
    last: date | None
    # asof -> (origin, each symbol's last bar at or before asof), filled as asked
    _at: dict[date, tuple[date, dict[str, date]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def read(cls, store: Store) -> StoreFacts:
        """The facts of ``store`` now."""
        known = {r[0] for r in store.con.execute("SELECT DISTINCT symbol FROM bars").fetchall()}
        first, last = store.con.execute("SELECT min(ts), max(ts) FROM bars").fetchall()[0]
        return cls(frozenset(known), first, last)

    def bars_at(self, store: Store, asof: date) -> tuple[date, dict[str, date]]:
        """The last session at or before ``asof`` (the origin) and each symbol's last bar then.

        Read from ``store`` (the copy these facts are of) once per ``asof``.
        """
        found = self._at.get(asof)
        if found is None:
            rows = store.con.execute(
                "SELECT symbol, max(ts) FROM bars WHERE ts <= ? GROUP BY symbol", [asof]
            ).fetchall()
            last_bar = dict(rows)
            found = (max(last_bar.values()), last_bar)
            if len(self._at) >= MAX_ASOFS:  # bounded: start afresh
                self._at.clear()
            self._at[asof] = found
        return found
