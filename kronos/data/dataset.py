"""The store as a Hive-partitioned Parquet dataset that many machines can read.

``kronos data export DIR`` writes every table of a store under ``DIR`` (big
tables one folder per year, ``bars/year=2021/part-0.parquet``; small tables one
file) with ``manifest.json``: the schema version, each table's columns, rows and
files (with their SHA-256), the content hash over all files, the newest
``available_at`` and the bars' date range. The dataset is written to a hidden
sibling folder and renamed into place, so ``DIR`` never holds half of one.

:func:`open_dataset` serves a dataset to the point-in-time readers: an in-memory
DuckDB with the store's views and macros (replayed from the migrations) and one
view per table over its Parquet files, so every reader runs the same SQL on it
as on the DuckDB file. A dataset is read only: :meth:`Store.open
<kronos.data.store.Store.open>` refuses to open one for writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from kronos.data.errors import KronosDataError, SchemaVersionError
from kronos.data.store import Store, latest_version, migrations

MANIFEST = "manifest.json"
FORMAT = "kronos-dataset"
FORMAT_VERSION = 1
# tables that grow with history, one folder per year of this column
PARTITION_COLUMN = {
    "bars": "ts",
    "forecasts": "asof",
    "social_features": "ts",
    "fmp_news": "published_at",
    "regime_features": "ts",
}
_HASH_CHUNK = 1 << 20


class DatasetError(KronosDataError):
    """A dataset folder or its manifest that cannot be used, or a write to a dataset."""


def is_dataset(path: Path | str) -> bool:
    """Whether ``path`` is a folder holding a ``manifest.json``."""
    path = Path(path)
    return path.is_dir() and (path / MANIFEST).is_file()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(tables: dict[str, Any]) -> str:
    """SHA-256 over every file's path and hash, in path order (the manifest's ``content_hash``)."""
    lines = sorted(f"{f['path']} {f['sha256']}" for t in tables.values() for f in t["files"])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return {name: dtype for name, dtype in rows}


def _copy(con: duckdb.DuckDBPyConnection, select: str, root: Path, rel: str) -> dict[str, Any]:
    """Write ``select`` to ``root/rel`` as one Parquet file; its manifest entry."""
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY ({select}) TO {_sql_text(str(target))} (FORMAT parquet)")
    rows = con.execute(f"SELECT count(*) FROM read_parquet({_sql_text(str(target))})").fetchone()
    return {
        "path": rel,
        "rows": rows[0] if rows else 0,
        "bytes": target.stat().st_size,
        "sha256": file_sha256(target),
    }


def _export_table(con: duckdb.DuckDBPyConnection, table: str, root: Path) -> dict[str, Any]:
    columns = _columns(con, table)
    rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    # ORDER BY ALL: the same store gives the same bytes, so the same content hash
    base = f'SELECT * FROM "{table}"'
    part = PARTITION_COLUMN.get(table)
    files = []
    if part in columns and rows:
        years = [
            r[0]
            for r in con.execute(
                f'SELECT DISTINCT year("{part}") FROM "{table}" ORDER BY 1'
            ).fetchall()
        ]
        for y in years:
            where = f'year("{part}") IS NULL' if y is None else f'year("{part}") = {int(y)}'
            key = "__HIVE_DEFAULT_PARTITION__" if y is None else str(y)
            files.append(
                _copy(
                    con,
                    f"{base} WHERE {where} ORDER BY ALL",
                    root,
                    f"{table}/year={key}/part-0.parquet",
                )
            )
    else:
        part = None
        files.append(_copy(con, f"{base} ORDER BY ALL", root, f"{table}/part-0.parquet"))
    entry: dict[str, Any] = {
        "rows": rows,
        "columns": columns,
        "partition_by": f"year({part})" if part else None,
        "files": files,
    }
    if "available_at" in columns:
        newest = con.execute(f'SELECT max(available_at) FROM "{table}"').fetchone()[0]
        entry["newest_available_at"] = newest.isoformat() if newest else None
    return entry


def export_dataset(store: Store, target: Path | str, *, replace: bool = False) -> dict[str, Any]:
    """Write every table of ``store`` as a Parquet dataset at ``target``; the manifest.

    Written to a hidden sibling folder, then renamed into place. An existing
    ``target`` is refused unless ``replace``, which renames the old one aside and
    deletes it once the new one is in place.
    """
    target = Path(target)
    if target.exists() and not replace and (not target.is_dir() or any(target.iterdir())):
        raise DatasetError(f"{target} exists; export to a new folder or pass --replace")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        with store.transaction() as con:  # one consistent snapshot of every table
            tables = {t: _export_table(con, t, work) for t in store.tables()}
            data_range = None
            if "bars" in tables:
                first, last = con.execute("SELECT min(ts), max(ts) FROM bars").fetchone()
                data_range = {
                    "first": str(first) if first else None,
                    "last": str(last) if last else None,
                }
        known = [t["newest_available_at"] for t in tables.values() if t.get("newest_available_at")]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "schema_version": store.version,
            "exported_at": datetime.now(UTC).isoformat(),
            "exported_from": str(store.path),
            "newest_available_at": max(known, key=datetime.fromisoformat) if known else None,
            "data_range": data_range,
            "content_hash": content_hash(tables),
            "tables": tables,
        }
        with (work / MANIFEST).open("w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        _swap_in(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _swap_in(work: Path, target: Path) -> None:
    """Rename ``work`` to ``target``, moving an existing ``target`` aside first."""
    if not target.exists():
        work.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        work.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: Path | str, *, verify_files: bool = False) -> dict[str, Any]:
    """The manifest of the dataset at ``path``, checked; a :class:`DatasetError` naming the file.

    Checks the format, the schema version (must be this kronos's), the content
    hash over the listed files, and that every file exists with its recorded
    size; ``verify_files`` also re-hashes every file (what ingest does).
    """
    root = Path(path)
    file = root / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{file} not found: {root} is not a kronos dataset") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{file}: cannot read it as JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{file}: not a kronos dataset manifest (format is not {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{file}: format version {manifest.get('format_version')!r}, this kronos reads "
            f"{FORMAT_VERSION}"
        )
    version, supported = manifest.get("schema_version"), latest_version()
    if version != supported:
        raise SchemaVersionError(
            f"{file}: schema version {version!r}, this kronos reads {supported}; export the "
            "dataset again from a store at that version"
        )
    tables = manifest.get("tables")
    try:
        expected = content_hash(tables)
    except (AttributeError, KeyError, TypeError):
        raise DatasetError(f"{file}: tables lack their files' paths and hashes") from None
    if manifest.get("content_hash") != expected:
        raise DatasetError(
            f"{file}: content_hash {manifest.get('content_hash')!r} does not match its files' "
            f"hashes ({expected}): the manifest was altered"
        )
    for entry in (f for t in tables.values() for f in t["files"]):
        data = root / entry["path"]
        if not data.is_file():
            raise DatasetError(f"{data}: listed in {file} but missing")
        if data.stat().st_size != entry.get("bytes"):
            raise DatasetError(
                f"{data}: {data.stat().st_size} bytes, {file} says {entry.get('bytes')}"
            )
        if verify_files and file_sha256(data) != entry["sha256"]:
            raise DatasetError(f"{data}: SHA-256 differs from {file}: the file was altered")
    return manifest


def open_dataset(path: Path | str) -> tuple[duckdb.DuckDBPyConnection, dict[str, Any]]:
    """An in-memory DuckDB serving the dataset at ``path`` as the store's tables; its manifest.

    The migrations are replayed into memory (for the views and macros), then each
    table is replaced by a view over its Parquet files (``hive_partitioning``),
    each column cast to its type in the store.
    """
    root = Path(path).resolve()
    manifest = read_manifest(root)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        for m in migrations():
            con.execute(m.sql)
        for table, entry in manifest["tables"].items():
            files = ", ".join(_sql_text(str(root / f["path"])) for f in entry["files"])
            cols = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in entry["columns"].items())
            con.execute(f'DROP TABLE IF EXISTS "{table}"')
            con.execute(
                f'CREATE VIEW "{table}" AS SELECT {cols} '
                f"FROM read_parquet([{files}], hive_partitioning = true)"
            )
    except BaseException:
        con.close()
        raise
    return con, manifest
