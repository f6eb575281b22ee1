"""The DuckDB market store: open, migrate, transactions.

Schema changes are numbered SQL files in ``kronos/data/migrations``. Opening a
database applies the ones it lacks, each in its own transaction, and records
them in ``kronos_schema``; a database from a newer kronos is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType

import duckdb

from kronos.data.errors import SchemaVersionError


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


class Store:
    """An open DuckDB store at the current schema version.

    Use :meth:`open`; close it (or use it as a context manager) when done, since
    DuckDB lets one process hold a database file for writing.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.con = con
        self.path = path

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        read_only: bool = False,
        target_version: int | None = None,
    ) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        ``target_version`` stops migrating at that version (for tests of upgrades).
        """
        path = Path(path)
        if read_only and not path.exists():
            raise FileNotFoundError(f"no kronos database at {path}; run 'kronos data ingest' first")
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            raise SchemaVersionError(f"cannot open {path}: {exc}") from exc
        con.execute("SET TimeZone = 'UTC'")
        store = cls(con, path)
        try:
            store._migrate(read_only=read_only, target=target_version or latest_version())
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
        """Base tables of the kronos schema, sorted."""
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
