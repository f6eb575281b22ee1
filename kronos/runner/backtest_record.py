"""A backtest's MLflow run: the spec, its hash, the data range, statistics, artifacts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time
from pathlib import Path

from mlflow.entities import Metric

from kronos.backtest.result import BacktestResult
from kronos.backtest.spec import BacktestSpec
from kronos.models.base import flatten_params
from kronos.tracking import MAX_BATCH, MlflowRecorder

EXPERIMENT = "kronos-backtest"


def _finite(values: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and math.isfinite(v)
    }


def variant_run_name(name: str, assignment: dict[str, object], width: int = 40) -> str:
    """A sweep variant's short run name, ``<name> [leaf=value,...]``, about ``width`` characters.

    The spec name is cut first, so the part that tells variants apart stays in view.
    """
    varied = ",".join(f"{str(k).rsplit('.', 1)[-1]}={v}" for k, v in assignment.items())
    room = max(8, width - len(varied) - 3)
    head = name if len(name) <= room else name[: room - 1] + "…"
    return f"{head} [{varied}]"


def log_curves(recorder: MlflowRecorder, result: BacktestResult) -> int:
    """Log NAV as ``equity`` and the fall from its running peak as ``drawdown`` step metrics.

    Step = session index, timestamp = the session date (midnight UTC, ms), so
    MLflow's charts plot the curves. Sent in batches of ``MAX_BATCH``. Returns
    the number of sessions logged.
    """
    equity = result.equity
    if equity.is_empty():
        return 0
    items: list[Metric] = []
    peak = -math.inf
    for step, (ts, nav) in enumerate(zip(equity["ts"], equity["nav"], strict=True)):
        if nav is None or not math.isfinite(nav):
            continue
        peak = max(peak, nav)
        stamp = int(datetime.combine(ts, time(), UTC).timestamp() * 1000)
        items.append(Metric("equity", float(nav), stamp, step))
        items.append(Metric("drawdown", nav / peak - 1.0 if peak > 0 else 0.0, stamp, step))
    for i in range(0, len(items), MAX_BATCH):
        recorder.client.log_batch(recorder.run_id, metrics=items[i : i + MAX_BATCH])
    return len(items) // 2


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
        "crossed_rows": float(result.crossed_rows),
    }
    recorder.log_metrics(metrics)
    for row in result.fold_metrics.iter_rows(named=True):
        stage = row["stage"]
        recorder.log_metrics(
            _finite({k: row[k] for k in ("mae", "coverage", "crps")}, f"fold_{stage}_"),
            step=row["fold"],
        )
    log_curves(recorder, result)
    recorder.log_dict(spec.model_dump(mode="json"), "spec.json")
    recorder.log_artifacts(report_dir, "report")
