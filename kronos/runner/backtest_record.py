"""A backtest's MLflow run: the spec, its hash, the data range, statistics, artifacts."""

from __future__ import annotations

import math
from pathlib import Path

from kronos.backtest.result import BacktestResult
from kronos.backtest.spec import BacktestSpec
from kronos.models.base import flatten_params
from kronos.tracking import MlflowRecorder

EXPERIMENT = "kronos-backtest"


def _finite(values: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and math.isfinite(v)
    }


def log_backtest(
    recorder: MlflowRecorder,
    spec: BacktestSpec,
    result: BacktestResult,
    report_dir: Path,
    tags: dict[str, str] | None = None,
) -> None:
    """Log ``result`` of ``spec`` into ``recorder``'s run, with ``report_dir`` as artifacts."""
    recorder.log_params(flatten_params(spec.model_dump(mode="json")))
    recorder.set_tags(
        {
            "backtest_spec_hash": result.spec_hash,
            "order_hash": result.order_hash,
            "data_start": str(result.start),
            "data_end": str(result.end),
            # a plain strategy uses no forecaster
            "forecaster": "none" if spec.strategy.plain else spec.forecaster.name,
            "strategy": spec.strategy.kind,
            "strategy_source": spec.strategy.fn or spec.strategy.file or "",
            "price_basis": result.notes[0] if result.notes else "",
            "notes": " | ".join(result.notes)[:5000],
            **(tags or {}),
        }
    )
    metrics = {
        **_finite(result.stats),
        **_finite(result.parity, "parity_"),
        **_finite(result.timings, "seconds_"),
        "orders": float(result.orders.height),
        "fills": float(result.fills.height),
        "breaker_trips": float(result.breakers.height),
    }
    recorder.log_metrics(metrics)
    for row in result.fold_metrics.iter_rows(named=True):
        stage = row["stage"]
        recorder.log_metrics(
            _finite({k: row[k] for k in ("mae", "coverage", "crps")}, f"fold_{stage}_"),
            step=row["fold"],
        )
    recorder.log_dict(spec.model_dump(mode="json"), "spec.json")
    recorder.log_artifacts(report_dir, "report")
