"""One training run: split, fit, validate against a baseline, save, gate, promote.

Used by ``kronos train`` and the retrain notebook. Everything is logged to the
recorder passed in (an MLflow run, or nothing); this module never imports
mlflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kronos.models.artifacts import GateDecision, gate, promote, record_decision, write_artifact
from kronos.models.base import Forecaster, NullRecorder, Recorder, flatten_params
from kronos.models.evaluation import score, with_realized
from kronos.models.registry import build
from kronos.models.split import train_valid_split
from kronos.models.start_calibration import fit_start


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run produced and decided."""

    name: str
    version: str
    run_dir: Path
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    decision: GateDecision
    fit_seconds: float
    data_range: dict[str, str]


def validation_forecasts(
    forecaster: Forecaster, panel: pl.DataFrame, train: pl.DataFrame, valid: pl.DataFrame
) -> pl.DataFrame:
    """Rolling-origin forecasts over each symbol's validation rows, joined to outcomes.

    Origins run from the symbol's last training day through its validation
    days; each sees only data up to itself.
    """
    first_origin = train.group_by("symbol").agg(pl.col("ts").max().alias("first_origin"))
    origins = sorted(
        set(valid["ts"].unique().to_list()) | set(first_origin["first_origin"].to_list())
    )
    symbols = sorted(valid["symbol"].unique().to_list())
    forecasts = forecaster.predict_origins(panel, origins, symbols)
    scored = with_realized(forecasts, panel).join(first_origin, on="symbol")
    return scored.filter(pl.col("asof") >= pl.col("first_origin")).drop("first_origin")


def train_and_gate(
    forecaster: Forecaster,
    panel: pl.DataFrame,
    *,
    model_dir: Path,
    baseline: str = "ewma",
    tolerance: float = 0.0,
    recorder: Recorder | None = None,
    valid_days: int = 365,
    valid_frac: float = 0.2,
    on_stage: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Fit, validate against the baseline on the same windows, save, gate, promote.

    ``latest`` moves only when the run passes the gate and its artifact is
    complete.
    """
    recorder = recorder or NullRecorder()
    stage = on_stage or (lambda _s: None)
    train, valid = train_valid_split(panel, valid_days, valid_frac)
    data_range = {
        "train_start": str(train["ts"].min()),
        "train_end": str(train["ts"].max()),
        "valid_start": str(valid["ts"].min()),
        "valid_end": str(valid["ts"].max()),
        "symbols": str(panel["symbol"].n_unique()),
    }
    recorder.log_params(
        {
            **flatten_params(forecaster.get_config(), "model."),
            **flatten_params(data_range, "data."),
            "split.valid_days": valid_days,
            "split.valid_frac": valid_frac,
            "gate.baseline": baseline,
            "gate.tolerance": tolerance,
        }
    )
    stage(f"fit {forecaster.name}")
    t0 = time.perf_counter()
    forecaster.fit(train, valid, recorder)
    fit_seconds = time.perf_counter() - t0
    stage("validate")
    scored = validation_forecasts(forecaster, panel, train, valid)
    metrics = score(scored)
    # fitted on the windows the gate scores, and written with the artifact, so a
    # promoted model never exists without its starting calibration
    start = fit_start(scored)
    stage(f"validate {baseline} baseline")
    reference = build(baseline).fit(train, valid)
    baseline_metrics = score(validation_forecasts(reference, panel, train, valid))
    decision = gate(
        metrics["crps"], baseline_metrics["crps"], baseline=baseline, tolerance=tolerance
    )
    recorder.log_metrics(
        {
            **{f"valid_{k}": v for k, v in metrics.items()},
            **{f"baseline_{k}": v for k, v in baseline_metrics.items()},
            "fit_seconds": fit_seconds,
            "promoted": float(decision.promoted),
        }
    )
    stage("save artifact")
    run_dir = write_artifact(
        forecaster,
        model_dir,
        {
            "validation": metrics,
            f"baseline_{baseline}": baseline_metrics,
            "fit_seconds": fit_seconds,
            "data_range": data_range,
        },
        start=start,
    )
    record_decision(run_dir, decision)
    if decision.promoted:
        promote(run_dir)
    return TrainOutcome(
        forecaster.name,
        forecaster.version,
        run_dir,
        metrics,
        baseline_metrics,
        decision,
        fit_seconds,
        data_range,
    )
