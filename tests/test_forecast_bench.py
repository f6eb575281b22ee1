"""The leaderboard and model benchmarks on small panels (baselines only: fast)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from kronos.bench.forecast import run_forecast_bench
from kronos.bench.models import run_models_bench


def _panel(n_symbols: int = 3, n_days: int = 900) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    days, d = [], date(2016, 1, 4)
    while len(days) < n_days:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return pl.concat(
        pl.DataFrame({"symbol": f"S{i}", "ts": days, "y": rng.standard_t(4, n_days) * 0.01})
        for i in range(n_symbols)
    )


def test_leaderboard_scores_every_model_on_the_same_origins():
    panel = _panel()
    result = run_forecast_bench(panel, ["historical", "ewma", "garch"], holdout_days=120)
    hold = result["holdout"]
    assert hold["train_end"] < hold["first_origin"] or hold["train_end"] == hold["first_origin"]
    rows = {r["model"]: r for r in result["models"]}
    assert rows["garch"]["crps_ratio_garch"] == pytest.approx(1.0)
    n = {r["n"] for r in rows.values()}
    assert len(n) == 1  # identical scored rows for every model
    # 3 symbols x (origins - k) x step k realized: every origin but the last 5 has 5 steps
    assert n.pop() == 3 * sum(min(5, hold["origins"] - 1 - i) for i in range(hold["origins"]))
    assert rows["historical"]["crps_exact"] is None
    # exact CRPS of a Student-t/normal forecast is below the 3-level quantile approximation's
    # scale but of the same order (reference: both estimate the same integral)
    for m in ("ewma", "garch"):
        assert 0.3 < rows[m]["crps_exact"] / rows[m]["crps"] < 1.5
    assert all(0.5 < r["coverage"] < 1.0 for r in rows.values())


def test_models_bench_reports_latency_for_every_symbol():
    result = run_models_bench(("ewma", "historical"), n_symbols=30, years=1.5, repeats=2)
    assert result["universe"]["symbols"] == 30
    for row in result["models"]:
        assert row["predict_seconds"] > 0 and len(row["predict_seconds_all"]) == 2
        assert row["train_windows_per_s"] is None  # baselines do not train on windows
