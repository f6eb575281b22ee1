"""``kronos bench models``: training throughput and predict latency at 500 symbols.

A synthetic universe (500 symbols, 3 years) is split as ``kronos train``
splits. Each model is fitted with a fixed step budget and then predicts steps
1..5 for all 500 symbols from the last day: the latency is the median of
repeated calls after one warm-up. Training throughput counts the training
windows the optimiser consumed per second of ``fit`` (validation included),
for the neural models; the baselines' fits are not window-based.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import polars as pl

from kronos.data.sources.synthetic import synthetic_bars
from kronos.models import registry
from kronos.models.base import Forecaster
from kronos.models.split import train_valid_split

TARGET_PREDICT_SECONDS = 1.0


def synthetic_panel(n_symbols: int, years: float, seed: int) -> pl.DataFrame:
    """Daily log returns of a synthetic universe, as the forecasters take them."""
    bars = synthetic_bars(n_symbols, years, seed)
    return (
        bars.sort("symbol", "ts")
        .select("symbol", "ts", pl.col("adj_close").log().diff().over("symbol").alias("y"))
        .drop_nulls("y")
    )


def _windows_seen(model: Forecaster) -> int | None:
    info = getattr(model, "fit_info_", None)
    if info:  # N-BEATS: optimisation steps x windows per step
        return int(info["stopped_step"]) * int(info["windows_batch_size"])
    trainer = getattr(model, "trainer_", None)
    training = getattr(model, "training_", None)
    if trainer is not None and training is not None:  # TFT: steps x batch size
        return int(trainer.global_step) * int(training.batch_size)
    return None


def build(name: registry.ForecasterRef, steps: int, n_symbols: int) -> Forecaster:
    """The benchmark's configuration: whitepaper architectures, a fixed step budget."""
    if name == "nbeats":
        return registry.build(name, max_steps=steps)
    if name == "tft":  # one epoch at most; early stopping as the TFT's default training
        return registry.build(name, max_epochs=1, max_steps=steps, max_symbols=n_symbols)
    return registry.build(name)


def run_models_bench(
    models: tuple[registry.ForecasterRef, ...] = ("nbeats", "tft", "ewma", "historical", "garch"),
    n_symbols: int = 500,
    years: float = 3.0,
    steps: int = 100,
    repeats: int = 5,
    seed: int = 11,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Measure every model; a JSON-ready dict."""
    step = on_step or (lambda _s: None)
    step("generate synthetic universe")
    panel = synthetic_panel(n_symbols, years, seed)
    train, valid = train_valid_split(panel)
    asof = panel["ts"].max()
    symbols = sorted(panel["symbol"].unique().to_list())
    rows = []
    for name in models:
        model = build(name, steps, n_symbols)
        step(f"fit {model.name}")
        t0 = time.perf_counter()
        model.fit(train, valid)
        fit_s = time.perf_counter() - t0
        windows = _windows_seen(model)
        step(f"predict {model.name}")
        model.predict(panel, asof, symbols)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            frame = model.predict(panel, asof, symbols)
            times.append(time.perf_counter() - t0)
        assert frame.height == len(symbols) * model.horizon
        latency = statistics.median(times)
        rows.append(
            {
                "model": model.name,
                "fit_seconds": fit_s,
                "train_windows": windows,
                "train_windows_per_s": windows / fit_s if windows else None,
                "predict_seconds": latency,
                "predict_seconds_all": times,
                "target_met": latency < TARGET_PREDICT_SECONDS,
            }
        )
    return {
        "universe": {
            "symbols": len(symbols),
            "days": int(panel["ts"].n_unique()),
            "years": years,
            "seed": seed,
            "steps": steps,
        },
        "target_predict_seconds": TARGET_PREDICT_SECONDS,
        "models": rows,
    }
