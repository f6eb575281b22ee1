"""``kronos bench ingest``: bars ingest throughput against raw DuckDB, same run.

Steps, each on a fresh temporary database and the same synthetic rows:

1. ``duckdb raw copy`` (reference): ``CREATE TABLE AS`` from Arrow, no key, no
   checks: the ceiling of what DuckDB itself does;
2. ``kronos ingest``: validation (:func:`conform`) and keyed upsert, one
   transaction per 250-symbol batch, as ``kronos data ingest`` runs it;
3. ``kronos re-ingest``: the same rows again, which must write nothing.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

from kronos.data.ingest import ingest
from kronos.data.sources.synthetic import iter_synthetic_bars
from kronos.data.store import Store

TARGET_ROWS_PER_S = 1_000_000
YEARS = 20.0
DAYS = round(YEARS * 252)


def run_ingest_bench(rows: int = 10_000_000, on_step: Callable[[str], None] | None = None) -> dict:
    """Measure and return the figures that ``kronos bench ingest`` prints."""
    step = on_step or (lambda _s: None)
    n_symbols = max(1, math.ceil(rows / DAYS))
    step("generate synthetic bars")
    t0 = time.perf_counter()
    batches = list(iter_synthetic_bars(n_symbols, YEARS, seed=7, batch_symbols=250))
    gen_s = time.perf_counter() - t0
    n = sum(b.height for b in batches)
    steps = []
    with tempfile.TemporaryDirectory() as tmp:
        step("duckdb raw copy")
        con = duckdb.connect(str(Path(tmp) / "raw.duckdb"))
        arrow = pl.concat(batches).to_arrow()
        t0 = time.perf_counter()
        con.register("staged", arrow)
        con.execute("CREATE TABLE bars AS SELECT * FROM staged")
        con.execute("CHECKPOINT")
        raw_s = time.perf_counter() - t0
        con.close()
        del arrow
        steps.append(("duckdb raw copy", raw_s, "reference: no key, no validation"))

        with Store.open(Path(tmp) / "kronos.duckdb") as store:
            for name in ("kronos ingest", "kronos re-ingest"):
                step(name)
                t0 = time.perf_counter()
                result = ingest(store, "bars", batches, source="synthetic", origin="bench")
                store.con.execute("CHECKPOINT")
                secs = time.perf_counter() - t0
                note = f"inserted {result.inserted:,}, updated {result.updated:,}"
                steps.append((name, secs, note))
                if name == "kronos re-ingest" and (result.inserted or result.updated):
                    raise RuntimeError(f"re-ingest was not idempotent: {note}")
    table = [
        {"step": s, "seconds": secs, "rows_per_s": n / secs, "note": note}
        for s, secs, note in steps
    ]
    kronos_rate = table[1]["rows_per_s"]
    return {
        "rows": n,
        "symbols": n_symbols,
        "generate_seconds": gen_s,
        "steps": table,
        "ingest_vs_raw": kronos_rate / table[0]["rows_per_s"],
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "target_met": kronos_rate >= TARGET_ROWS_PER_S,
    }
