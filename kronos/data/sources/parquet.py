"""Ingest a Parquet dataset (``kronos data export``) into a DuckDB store.

Every file is checked against the manifest (schema version, content hash, each
file's SHA-256) before anything is written; then each file of each ingestible
table (``schema.TABLES``) goes through the same validate and upsert path as any
source, one transaction per file, so a second ingest of the same dataset
changes nothing. Bars and profiles go first: reference rows must name known
symbols. Tables outside ``schema.TABLES`` (the store's own bookkeeping and the
paper-trading records) have no validated ingest path and are left out, each
reported through ``on_note`` when it has rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from kronos.data.dataset import read_manifest
from kronos.data.ingest import IngestRules, UpsertResult, ingest
from kronos.data.schema import TABLES
from kronos.data.store import Store

FIRST = ("bars", "dim_company_profile")
BOOKKEEPING = ("kronos_schema", "ingest_log")


def ingest_order(tables: list[str]) -> list[str]:
    """The ingestible ``tables`` with bars and profiles first, the rest in contract order."""
    rest = [t for t in TABLES if t not in FIRST]
    return [t for t in (*FIRST, *rest) if t in tables]


def load_dataset(
    store: Store,
    path: Path | str,
    on_batch: Callable[[UpsertResult], None] | None = None,
    *,
    rules: IngestRules | None = None,
    on_note: Callable[[str], None] | None = None,
) -> dict[str, UpsertResult]:
    """Ingest the dataset at ``path`` into ``store``; the totals per table.

    Raises :class:`~kronos.data.dataset.DatasetError` (naming the manifest or the
    file) before writing anything when the manifest, a hash or the schema version
    is wrong.
    """
    root = Path(path)
    manifest = read_manifest(root, verify_files=True)
    tables = manifest["tables"]
    for name, entry in tables.items():
        if name not in TABLES and name not in BOOKKEEPING and entry["rows"] and on_note:
            on_note(f"{name}: {entry['rows']} rows not ingested (no validated ingest path)")
    results: dict[str, UpsertResult] = {}
    for table in ingest_order(list(tables)):
        columns = TABLES[table].columns
        total = UpsertResult(table, 0, 0, 0)
        for entry in tables[table]["files"]:
            file = root / entry["path"]
            frame = pl.read_parquet(file, columns=columns, hive_partitioning=False)
            r = ingest(
                store,
                table,
                [frame],
                source="parquet",
                origin=str(file),
                on_batch=on_batch,
                rules=rules,
                on_note=on_note,
            )
            total = UpsertResult(
                table,
                total.rows_in + r.rows_in,
                total.inserted + r.inserted,
                total.updated + r.updated,
            )
        results[table] = total
    return results
