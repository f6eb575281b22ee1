"""The DuckDB market store: open, migrate, transactions.

Schema changes are numbered SQL files in ``kronos/data/migrations``. Opening a
database applies the ones it lacks, each in its own transaction, and records
them in ``kronos_schema``; a database from a newer kronos is refused.

DuckDB lets one process write a file, or any number of processes read it, never
both. An open that meets another process's lock retries with backoff for
``lock_wait_s`` (``KRONOS_LOCK_WAIT_S``, read at the edges), then raises
:class:`~kronos.errors.StoreBusy` naming the holder's PID and command line.

A folder with a ``manifest.json`` (``kronos data export``) opens read only as a
store served by views over its Parquet files (:mod:`kronos.data.dataset`).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import duckdb

from kronos.data.errors import KronosDataError, SchemaVersionError
from kronos.errors import StoreBusy

T = TypeVar("T")

DEFAULT_LOCK_WAIT_S = 30.0  # DataSettings.lock_wait_s's default
FIRST_DELAY_S, MAX_DELAY_S = 0.05, 1.0
_LOCK_CONFLICT = "could not set lock on file"
_HOLDER_PID = re.compile(r"\(PID (\d+)\)")


class StoreNotFound(KronosDataError):
    """A read-only open of a store file that does not exist."""


@dataclass(frozen=True)
class Migration:
    """One numbered schema change."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """All migrations shipped with this kronos, in order."""
    found = []
    for entry in resources.files("kronos.data").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration numbers are not 1..n: {[m.version for m in found]}")
    return found


def latest_version() -> int:
    """The schema version this kronos writes."""
    return migrations()[-1].version


def is_lock_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB refusing a file another process has locked."""
    return isinstance(exc, duckdb.IOException) and _LOCK_CONFLICT in str(exc).lower()


def command_line(pid: int) -> str | None:
    """The command line of process ``pid`` from ``/proc``; None if gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not args:
        return None
    line = " ".join(args)
    return line if len(line) <= 300 else line[:297] + "..."


def lock_holder(message: str) -> str | None:
    """``PID n (command line)`` of the holder named in a DuckDB lock-conflict message."""
    match = _HOLDER_PID.search(message)
    if not match:
        return None
    pid = int(match[1])
    cmd = command_line(pid)
    return f"PID {pid} ({cmd})" if cmd else f"PID {pid} (its command line is not readable)"


def wait_for_lock(
    connect: Callable[[], T],
    path: Path,
    lock_wait_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``connect()``, retried with jittered backoff while another process holds ``path``.

    Backoff starts at 50 ms and doubles up to 1 s. When ``lock_wait_s`` is spent,
    :class:`StoreBusy` names the holder; any other DuckDB error fails at once as a
    :class:`KronosDataError`.
    """
    start = clock()
    delay = FIRST_DELAY_S
    while True:
        try:
            return connect()
        except duckdb.Error as exc:
            if not is_lock_conflict(exc):
                raise KronosDataError(f"cannot open {path}: {_duckdb_message(exc)}") from exc
            left = start + lock_wait_s - clock()
            if left <= 0:
                raise StoreBusy(str(path), clock() - start, lock_holder(str(exc))) from exc
        sleep(min(left, delay * random.uniform(0.5, 1.0)))
        delay = min(2 * delay, MAX_DELAY_S)


def _duckdb_message(exc: BaseException) -> str:
    """A DuckDB error without its class prefix ("IO Error: ...")."""
    return re.sub(r"^[\w ]+Error: ", "", str(exc).strip(), count=1)


class Store:
    """An open DuckDB store at the current schema version.

    Use :meth:`open`; close it (or use it as a context manager) when done, since
    DuckDB lets one process hold a database file for writing.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, path: Path, *, dataset: dict | None = None
    ) -> None:
        self.con = con
        self.path = path
        self.dataset = dataset  # the manifest when this is a Parquet dataset (read only)

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        read_only: bool = False,
        target_version: int | None = None,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    ) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        Waits up to ``lock_wait_s`` for another process to let go of the file
        (:func:`wait_for_lock`). ``target_version`` stops migrating at that version
        (for tests of upgrades).
        """
        path = Path(path)
        if read_only and not path.exists():
            raise StoreNotFound(f"no kronos database at {path}; run 'kronos data ingest' first")
        if path.is_dir():
            return cls._open_dataset(path, read_only=read_only)
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        con = wait_for_lock(
            lambda: duckdb.connect(str(path), read_only=read_only), path, lock_wait_s
        )
        con.execute("SET TimeZone = 'UTC'")
        store = cls(con, path)
        try:
            store._migrate(read_only=read_only, target=target_version or latest_version())
        except BaseException:
            con.close()
            raise
        return store

    @classmethod
    def _open_dataset(cls, path: Path, *, read_only: bool) -> Store:
        """A Parquet dataset folder (``kronos data export``) as a read-only store."""
        from kronos.data.dataset import MANIFEST, DatasetError, open_dataset

        if not (path / MANIFEST).is_file():
            raise StoreNotFound(
                f"{path} is a folder without {MANIFEST}: not a kronos dataset "
                "(make one with 'kronos data export DIR')"
            )
        if not read_only:
            raise DatasetError(
                f"{path} is a Parquet dataset, read only: this command writes, so give it a "
                f"DuckDB file (make one with 'kronos data ingest --source parquet {path}')"
            )
        con, manifest = open_dataset(path)
        return cls(con, path, dataset=manifest)

    @classmethod
    def snapshot(cls, path: Path | str, *, lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> Store:
        """An in-memory copy of the store at ``path``, holding the file only while copying.

        For long-lived readers (the forecast service): writers are locked out for
        the copy (tens of milliseconds for the bundled data), not for the reader's
        lifetime. The copy is writable but nothing written to it reaches the file.
        """
        path = Path(path)
        if not path.exists():
            raise StoreNotFound(f"no kronos database at {path}; run 'kronos data ingest' first")
        if path.is_dir():  # a dataset's files never change: its views are the snapshot
            return cls._open_dataset(path, read_only=True)
        con = duckdb.connect(":memory:")
        try:
            wait_for_lock(
                lambda: con.execute("ATTACH ? AS kronos_file (READ_ONLY)", [str(path)]),
                path,
                lock_wait_s,
            )
            try:
                con.execute("COPY FROM DATABASE kronos_file TO memory")
            finally:
                con.execute("DETACH kronos_file")
            con.execute("SET TimeZone = 'UTC'")
            store = cls(con, path)
            if store.version != latest_version():
                raise SchemaVersionError(
                    f"{path} has schema version {store.version}, this kronos reads "
                    f"{latest_version()}; open it once without read-only to migrate it"
                )
        except BaseException:
            con.close()
            raise
        return store

    @property
    def version(self) -> int:
        """The schema version of the open database (0 for an empty file)."""
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'kronos_schema'"
        ).fetchall()[0][0]
        if not exists:
            return 0
        return self.con.execute("SELECT coalesce(max(version), 0) FROM kronos_schema").fetchall()[
            0
        ][0]

    def _migrate(self, *, read_only: bool, target: int) -> None:
        current, supported = self.version, latest_version()
        if current > supported:
            raise SchemaVersionError(
                f"{self.path} has schema version {current}, newer than this kronos supports "
                f"({supported}); upgrade kronos to open it"
            )
        pending = [m for m in migrations() if current < m.version <= target]
        if not pending:
            return
        if read_only:
            raise SchemaVersionError(
                f"{self.path} has schema version {current} and needs migrating to {supported}; "
                "open it once without read-only"
            )
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS kronos_schema ("
            "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for m in pending:
            with self.transaction():
                self.con.execute(m.sql)
                self.con.execute(
                    "INSERT INTO kronos_schema VALUES (?, ?, now())", [m.version, m.name]
                )

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Run a block atomically: commit on success, roll back on any error."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def tables(self) -> list[str]:
        """Base tables of the kronos schema (a dataset's tables), sorted."""
        if self.dataset is not None:
            return sorted(self.dataset["tables"])
        rows = self.con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema = 'main' ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    def row_counts(self) -> dict[str, int]:
        """Rows per base table."""
        return {
            t: self.con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0]
            for t in self.tables()
        }

    def known_symbols(self) -> set[str]:
        """Symbols with bars or a company profile."""
        rows = self.con.execute(
            "SELECT DISTINCT symbol FROM bars UNION SELECT DISTINCT symbol FROM dim_company_profile"
        ).fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        """Close the connection (checkpointing the write-ahead log)."""
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
