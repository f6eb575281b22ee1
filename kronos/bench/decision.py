"""``kronos bench decision``: the decision step for a 3,000-symbol universe.

Two figures, each the median of repeated runs:

1. **in memory**: scoring, recommendations, allocation and planning
   (:func:`kronos.decision.decide_from`) on a snapshot already in memory;
   target under 50 ms;
2. **with store reads**: the whole step (:func:`kronos.decision.decide`),
   including every point-in-time read from a synthetic store that holds
   prices, profiles, fundamentals, estimates, ratings, news, social data and
   stored forecasts; no model inference; target under 500 ms.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from kronos.calendar import Calendar, get_calendar
from kronos.config import DecisionSettings
from kronos.data import loaders
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.decision.allocator import Account
from kronos.decision.snapshot import StoreSource, read_snapshot
from kronos.decision.step import decide, decide_from, run_id_for
from kronos.risk import session_close

TARGET_MEMORY_S = 0.050
TARGET_STORE_S = 0.500


def _book(symbols: list[str], rng: np.random.Generator, n_held: int) -> pl.DataFrame:
    held = rng.choice(len(symbols), size=min(n_held, len(symbols)), replace=False)
    return pl.DataFrame(
        {
            "symbol": [symbols[i] for i in held],
            "qty": rng.integers(10, 500, len(held)).astype(float),
        }
    )


def _forecasts(
    symbols: list[str], asof, rng: np.random.Generator, calendar: Calendar | None = None
) -> pl.DataFrame:
    calendar = calendar or get_calendar()
    n = len(symbols)
    p50 = rng.normal(0, 0.004, n)
    half = rng.uniform(0.015, 0.04, n)
    rows = []
    for step, target in enumerate(calendar.next_sessions(asof, 5), start=1):
        rows.append(
            pl.DataFrame(
                {
                    "symbol": symbols,
                    "asof": asof,
                    "step": step,
                    "target_ts": target,
                    "p05": p50 - half,
                    "p50": p50,
                    "p95": p50 + half,
                    "model": "bench",
                    "version": "v",
                    "calibrated": True,
                }
            )
        )
    return pl.concat(rows).with_columns(pl.col("step").cast(pl.Int32))


def run_decision_bench(
    n_symbols: int = 3000,
    years: float = 2.0,
    repeats: int = 20,
    seed: int = 5,
    on_step: Callable[[str], None] | None = None,
    calendar: Calendar | None = None,
) -> dict:
    """Build the store, then time the decision in memory and with reads.

    Forecast targets are sessions of ``calendar`` (XNYS when None, as the synthetic bars).
    """
    step = on_step or (lambda _s: None)
    rng = np.random.default_rng(seed)
    calendar = calendar or get_calendar()
    settings = DecisionSettings()
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "k.duckdb") as store:
        step(f"build a synthetic store of {n_symbols} symbols")
        t0 = time.perf_counter()
        loaders.load_synthetic(store, n_symbols=n_symbols, years=years, seed=seed)
        asof = store.con.execute("SELECT max(ts) FROM bars").fetchall()[0][0]
        symbols = [
            r[0]
            for r in store.con.execute("SELECT DISTINCT symbol FROM bars ORDER BY 1").fetchall()
        ]
        ingest(
            store,
            "forecasts",
            [_forecasts(symbols, asof, rng, calendar)],
            source="bench",
            origin="bench",
        )
        build_s = time.perf_counter() - t0
        now = session_close(asof, settings.data)
        positions = _book(symbols, rng, 150)
        account = Account(nav=1e8, cash=2e7)

        step("decide with store reads")
        store_times = []
        for _ in range(max(3, repeats // 4)):
            t0 = time.perf_counter()
            source = StoreSource(store, "bench", settings)
            decision = decide(source, asof, positions, account, settings, now=now)
            store_times.append(time.perf_counter() - t0)
        snapshot = read_snapshot(store, asof, "bench", settings, now)

    step("decide in memory")
    memory_times = []
    run_id = run_id_for(asof)
    for _ in range(repeats):
        t0 = time.perf_counter()
        decide_from(snapshot, positions, account, settings, run_id, now)
        memory_times.append(time.perf_counter() - t0)
    memory, with_store = statistics.median(memory_times), statistics.median(store_times)
    return {
        "symbols": len(symbols),
        "asof": str(asof),
        "build_seconds": build_s,
        "orders": decision.orders.height,
        "recommendations": decision.recos.height,
        "excluded": decision.excluded.height,
        "in_memory_seconds": memory,
        "with_store_seconds": with_store,
        "in_memory_all": memory_times,
        "with_store_all": store_times,
        "target_in_memory_seconds": TARGET_MEMORY_S,
        "target_with_store_seconds": TARGET_STORE_S,
        "in_memory_target_met": memory < TARGET_MEMORY_S,
        "with_store_target_met": with_store < TARGET_STORE_S,
    }
