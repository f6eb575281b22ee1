"""One fold's forecasts: fit on its training window, forecast every session of its test window.

A plain function of plain inputs, so the local and the Ray executor run the
same code and give the same numbers. Each origin sees only returns up to
itself (the forecasters' ``predict_origins`` contract), and the model sees
only returns up to the fold's ``train_end``, ``purge`` sessions before the
test window opens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from kronos.backtest.splits import Fold
from kronos.errors import ConfigError, InputError, LookAhead
from kronos.forecast_quality import repair_frame
from kronos.models.base import Forecaster
from kronos.models.registry import ForecasterRef, build
from kronos.models.split import train_valid_split

NEURAL = ("nbeats", "nbeats_default", "tft")
STEP1_SCHEMA = {
    "symbol": pl.String,
    "asof": pl.Date,
    "p05": pl.Float64,
    "p50": pl.Float64,
    "p95": pl.Float64,
}


@dataclass(frozen=True)
class FoldForecasts:
    """Step-1 forecasts from every session of a fold's test window."""

    fold: Fold
    forecasts: pl.DataFrame  # STEP1_SCHEMA
    version: str
    fit_seconds: float
    predict_seconds: float
    crossed: int = 0  # step-1 rows the model emitted with crossed quantiles (sorted here)


def build_forecaster(name: ForecasterRef, params: Mapping[str, Any], seed: int) -> Forecaster:
    """Forecaster ``name`` from the spec's ``params`` (``TrainingConfig`` fields go to training).

    ``name``: a built-in name, import path, entry point or class.
    """
    return build(name, **{"seed": seed, **params})  # a seed in params wins


def ready_dates(panel: pl.DataFrame, input_size: int) -> dict[str, date]:
    """The first session each symbol has ``input_size`` returns up to (inclusive)."""
    ranked = panel.sort("symbol", "ts").with_columns(k=pl.int_range(1, pl.len() + 1).over("symbol"))
    rows = ranked.filter(pl.col("k") == input_size).select("symbol", "ts")
    return dict(zip(rows["symbol"].to_list(), rows["ts"].to_list(), strict=True))


def artifact_cutoff(directory: Path) -> date:
    """The last session a saved model saw (training or validation), from its METRICS.json."""
    path = Path(directory) / "METRICS.json"
    if not path.exists():
        raise InputError(f"{directory} has no METRICS.json: cannot tell what data it saw")
    seen = json.loads(path.read_text()).get("data_range", {})
    last = seen.get("valid_end") or seen.get("train_end")
    if not last:
        raise InputError(f"{path} records no data_range: cannot tell what data it saw")
    return date.fromisoformat(last)


def load_for_fold(name: ForecasterRef, directory: Path, fold: Fold) -> Forecaster:
    """A saved model for ``fold``, refused when it saw data after the fold's training cutoff."""
    seen = artifact_cutoff(directory)
    if seen > fold.train_end:
        raise LookAhead(
            f"look-ahead: the artifact {directory} saw data up to {seen}, after fold "
            f"{fold.index}'s training cutoff {fold.train_end} (test from {fold.test_start}); "
            "start the backtest later or refit per fold"
        )
    from kronos.models.artifacts import load_artifact
    from kronos.models.registry import forecaster_class

    # a custom model's artifact names its class itself (SOURCE.json)
    return load_artifact(Path(directory), forecaster_class(name))[0]


def fold_forecasts(
    name: ForecasterRef,
    params: Mapping[str, Any],
    seed: int,
    panel: pl.DataFrame,
    fold: Fold,
    origins: list[date],
    artifact: str | None = None,
) -> FoldForecasts:
    """Fit on ``[train_start, train_end]`` (or load ``artifact``); forecast from ``origins``."""
    t0 = time.perf_counter()
    if artifact is not None and artifact.startswith("models:/"):
        # the driver downloads a registry version once; a fold (maybe on a Ray node) never asks
        raise ConfigError(
            f"forecaster.artifact {artifact} was not resolved before the folds: resolve it "
            "with kronos.mlflow_registry.resolve_spec_artifact (kronos backtest does)"
        )
    if artifact is not None:
        model = load_for_fold(name, Path(artifact), fold)
    else:
        model = build_forecaster(name, params, seed)
        history = panel.filter(pl.col("ts").is_between(fold.train_start, fold.train_end))
        if name in NEURAL:
            train, valid = train_valid_split(history)
            model.fit(train, valid)
        else:
            model.fit(history)
    fit_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ready = ready_dates(panel, model.input_size)
    # origins grouped by the set of symbols with enough history (it only grows)
    parts, group, names = [], [], None
    for o in origins:
        now = sorted(s for s, d in ready.items() if d <= o)
        if now != names and group:
            parts.append(model.predict_origins(panel, group, names))
            group = []
        names = now
        if names:
            group.append(o)
    if group:
        parts.append(model.predict_origins(panel, group, names))
    frames = [p.filter(pl.col("step") == 1).select(list(STEP1_SCHEMA)) for p in parts]
    forecasts = pl.concat(frames) if frames else pl.DataFrame(schema=STEP1_SCHEMA)
    forecasts, crossed = repair_frame(forecasts.cast(STEP1_SCHEMA))
    return FoldForecasts(fold, forecasts, model.version, fit_s, time.perf_counter() - t0, crossed)
