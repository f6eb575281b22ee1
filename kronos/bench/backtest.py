"""``kronos bench backtest``: the walk-forward engine's speed, in one run.

1. **bundled**: the 20 bundled S&P 500 stocks, 1990-2022 (trading from 1993,
   after a 750-session first training window), weekly rebalancing, the EWMA
   baseline refitted yearly: everything included (ingest into a fresh store,
   folds, calibrator, fail-safe, every decision, vectorbt replay and
   statistics); target under 60 s.
2. **synthetic**: 3,000 synthetic symbols x 10 years with their reference data,
   weekly rebalancing, EWMA refitted yearly; target under 10 minutes (the
   synthetic store's generation and ingest are timed apart).
3. **overhead**: for each run, the harness's own simulation (fills, book,
   marks) against vectorbt's simulation of the same orders
   (``Portfolio.from_orders``, compiled beforehand), as a ratio.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import polars as pl

from kronos.backtest import vbt
from kronos.backtest.run import run_backtest
from kronos.backtest.spec import BacktestSpec, parse_spec
from kronos.data import loaders
from kronos.data.store import Store
from kronos.execution.fills import FillRules

TARGET_BUNDLED_S = 60.0
TARGET_SYNTHETIC_S = 600.0

BUNDLED = {
    "name": "bench_bundled_ewma_weekly",
    "universe": {"source": "skfolio.sp500"},
    "dates": {"start": "1993-01-04", "end": "2022-12-28"},
    "forecaster": {"name": "ewma"},
    "splits": {"train": "expanding", "train_sessions": 750, "retrain": "yearly"},
    "rebalance": {"every": "weekly", "weekday": 2},
    "decision": {
        "strategy": {
            "strat_min_market_cap": 0,
            "strat_min_dollar_vol": 0,
            "strat_forecast_in_score": True,
            "strat_reco_topk": 5,
        },
        "policy": {"policy_min_abs_dev": 0, "policy_min_sigma_z": 0},
    },
}


def _synthetic(start: date, end: date) -> dict:
    return {
        "name": "bench_synthetic_ewma_weekly",
        "universe": {"source": "synthetic"},
        "dates": {"start": str(start), "end": str(end)},
        "forecaster": {"name": "ewma"},
        # the first year holds 252 XNYS sessions, 247 of them before the purge gap
        "splits": {"train": "expanding", "train_sessions": 240, "retrain": "yearly"},
        "rebalance": {"every": "weekly", "weekday": 2},
        "decision": {
            "strategy": {"strat_reco_topk": 50},
            "policy": {"policy_min_abs_dev": 0, "policy_min_sigma_z": 0},
        },
    }


def _warm_vectorbt() -> None:
    """Compile vectorbt's simulation once, so no run's replay time includes numba."""
    fills = pl.DataFrame(
        {"ts": [date(2020, 1, 2)], "symbol": ["X"], "qty": [1.0], "ref_price": [10.0]}
    )
    close = pl.DataFrame({"ts": [date(2020, 1, 2)], "symbol": ["X"], "close": [10.0]})
    vbt.replay(fills, close, 100.0, FillRules(at="close", commission_bps=1, slippage_bps=1))


def _timed_run(spec: BacktestSpec, store: Store, say: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    result = run_backtest(spec, store, progress=say)
    total = time.perf_counter() - t0
    sim_s = result.timings["trading_simulate"]
    vbt_s = result.timings["vectorbt_replay"]
    return {
        "seconds": total,
        "sessions": result.equity.height,
        "decisions": int(result.factor_contrib["ts"].n_unique()),
        "orders": result.orders.height,
        "fills": result.fills.height,
        "timings": result.timings,
        "harness_simulate_seconds": sim_s,
        "vectorbt_simulate_seconds": vbt_s,
        "overhead_ratio": sim_s / vbt_s if vbt_s > 0 else None,
        "parity": max(result.parity.values()),
        "order_hash": result.order_hash,
        "total_return": result.stats["total_return"],
        "benchmark_total_return": result.stats["benchmark_total_return"],
    }


def run_backtest_bench(
    n_symbols: int = 3000,
    years: float = 10.0,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Both runs and the overhead ratios, as one JSON-ready dict."""
    say = on_step or (lambda _m: None)
    _warm_vectorbt()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="kronos-bench-bt-") as tmp:
        t0 = time.perf_counter()
        with Store.open(Path(tmp) / "bundled.duckdb") as store:
            loaders.load_bundled(store)
            ingest_s = time.perf_counter() - t0
            say("bundled: ingested")
            run = _timed_run(parse_spec(BUNDLED, "bench bundled"), store, say)
        run["ingest_seconds"] = ingest_s
        run["seconds_all_included"] = ingest_s + run["seconds"]
        run["target_seconds"] = TARGET_BUNDLED_S
        run["target_met"] = run["seconds_all_included"] < TARGET_BUNDLED_S
        out["bundled"] = run

        t0 = time.perf_counter()
        with Store.open(Path(tmp) / "synthetic.duckdb") as store:
            loaders.load_synthetic(store, n_symbols=n_symbols, years=years, seed=3)
            first, last = store.con.execute("SELECT min(ts), max(ts) FROM bars").fetchall()[0]
            build_s = time.perf_counter() - t0
            say(f"synthetic: {n_symbols} symbols x {years} years built")
            start = date(first.year + 1, 1, 2)
            run = _timed_run(parse_spec(_synthetic(start, last), "bench synthetic"), store, say)
        run["symbols"] = n_symbols
        run["years"] = years
        run["store_build_seconds"] = build_s
        run["target_seconds"] = TARGET_SYNTHETIC_S
        run["target_met"] = run["seconds"] < TARGET_SYNTHETIC_S
        out["synthetic"] = run
    return out
