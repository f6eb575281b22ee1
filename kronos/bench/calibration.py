"""``kronos bench calibration``: raw vs calibrated coverage and CRPS on the holdout.

Models are fitted on data up to a warm-up year before the leaderboard's
holdout year; the calibrator learns night by night through the warm-up and
holdout (each night only from returns already realized) and is scored on the
holdout. Besides the forecasters, three deliberately distorted EWMA forecasts
test the repair: intervals 40% too narrow, 40% too wide, and a median biased
by +0.5%.

Starting calibration (:mod:`kronos.models.start_calibration`): as at
promotion, each model's bias and interval scale are fitted by split conformal
on the gate's validation windows (the year before the warm-up, the model
fitted on the rows before it), and the nightly calibrator starts from them and
clamps relative to them (``start`` in each row; ``starting=False`` starts from
bias 0 and scale 1 as before).

Fixed vs dynamic lambda (whitepaper 10): the S4D regime encoder
(:mod:`kronos.models.regime`) is fitted on the market features of the same
panel up to the same cutoff as the forecasters; its ``p_turbulent`` of each
night drives the calibrator's lambda (and, in a second variant, also its
scale gain) through the warm-up and holdout. Every forecaster is calibrated both
ways in the same run, from the same raw forecasts; the fixed figures are
those of the calibrator alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta

import polars as pl

from kronos.bench.calibration_quality import conditional_block
from kronos.bench.forecast import GRAPH, NEURAL, build
from kronos.calibration import OnlineCalibrator, apply_params, dynamic_lambda, replay
from kronos.config import CalibrationSettings
from kronos.features.regime import market_features
from kronos.forecast_quality import repair_frame
from kronos.models.evaluation import score, with_realized
from kronos.models.regime import RegimeEncoder
from kronos.models.registry import ForecasterRef
from kronos.models.split import train_valid_split
from kronos.models.start_calibration import StartCalibration, fit_start
from kronos.models.training import validation_forecasts

MODELS = ("historical", "ewma", "garch", "nbeats", "tft", *GRAPH)
TARGET_LOW, TARGET_HIGH = 0.88, 0.92
# "dynamic_lambda": the settings' default (lambda only); "dynamic_lambda_gain": the
# coverage controller's gain follows lambda_t / lambda as well
DYNAMIC_VARIANTS: dict[str, dict[str, bool]] = {
    "dynamic_lambda": {"calibration_dynamic_lambda": True, "calibration_dynamic_gain": False},
    "dynamic_lambda_gain": {"calibration_dynamic_lambda": True, "calibration_dynamic_gain": True},
}


def distortions(ewma: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """EWMA forecasts broken on purpose: narrow, wide, biased."""

    def widen(frame: pl.DataFrame, k: float) -> pl.DataFrame:
        return frame.with_columns(
            p05=pl.col("p50") - (pl.col("p50") - pl.col("p05")) * k,
            p95=pl.col("p50") + (pl.col("p95") - pl.col("p50")) * k,
        )

    return {
        "ewma_narrow40": widen(ewma, 0.6),
        "ewma_wide40": widen(ewma, 1.4),
        "ewma_bias50bp": ewma.with_columns(pl.col(c) + 0.005 for c in ("p05", "p50", "p95")),
    }


def run_calibration_bench(
    panel: pl.DataFrame,
    sectors: Mapping[str, str | None],
    models: Sequence[ForecasterRef] = MODELS,
    holdout_days: int = 365,
    warmup_days: int = 365,
    nbeats_max_steps: int | None = 1000,
    *,
    settings: CalibrationSettings,
    on_step: Callable[[str], None] | None = None,
    dynamic: bool = True,
    regime_encoder: RegimeEncoder | None = None,
    graph_max_steps: int | None = None,
    starting: bool = True,
) -> dict:
    """Score every forecaster raw and calibrated on the holdout; a JSON-ready dict.

    With ``dynamic``, each is also calibrated with the dynamic-lambda variants
    (``regime_encoder``: an unfitted encoder, default :class:`RegimeEncoder`).
    With ``starting``, each calibrator starts from the model's starting
    calibration, fitted as at promotion on the validation windows before the
    warm-up (distorted EWMAs: EWMA's validation forecasts distorted alike);
    without, from bias 0 and scale 1.
    """
    step = on_step or (lambda _s: None)
    end = panel["ts"].max()
    holdout_start = end - timedelta(days=holdout_days)
    history = panel.filter(pl.col("ts") <= holdout_start - timedelta(days=warmup_days))
    train, valid = train_valid_split(history)
    symbols = sorted(panel["symbol"].unique().to_list())
    origins = sorted(panel.filter(pl.col("ts") >= history["ts"].max())["ts"].unique().to_list())
    candidates: dict[str, pl.DataFrame] = {}
    crossed: dict[str, int] = {}  # quantile rows sorted because they crossed
    validation: dict[str, pl.DataFrame] = {}  # the gate's validation forecasts, for the start
    for name in models:
        model = build(name, nbeats_max_steps, sectors=sectors, graph_max_steps=graph_max_steps)
        step(f"fit and forecast {model.name}")
        if name in NEURAL:
            model.fit(train, valid)
        else:
            model.fit(history)
        candidates[model.name], crossed[model.name] = repair_frame(
            model.predict_origins(panel, origins, symbols)
        )
        if starting:  # as the gate scores it: fitted on the training rows, run on validation
            gated = model
            if name not in NEURAL:
                gated = build(
                    name, nbeats_max_steps, sectors=sectors, graph_max_steps=graph_max_steps
                )
                gated.fit(train, valid)
            validation[model.name] = repair_frame(
                validation_forecasts(gated, history, train, valid)
            )[0]
    if "ewma" in candidates:
        candidates.update(distortions(candidates["ewma"]))
        if "ewma" in validation:
            validation.update(distortions(validation["ewma"]))
    starts = {name: fit_start(frame) for name, frame in validation.items()}
    regime, regime_info = None, None
    if dynamic:
        step("fit regime encoder")
        regime, regime_info = _regime(
            panel, history["ts"].max(), holdout_start, settings, regime_encoder
        )
    rows = []
    in_holdout = pl.col("asof") >= holdout_start
    for name, raw in candidates.items():
        step(f"calibrate {name}")
        start = starts.get(name)
        params = replay(raw, panel, OnlineCalibrator(symbols, sectors, settings, start))
        factors = None if start is None else start.step_factors
        calibrated = apply_params(raw, params, factors)
        before = score(with_realized(raw.filter(in_holdout), panel))
        after = score(with_realized(calibrated.filter(in_holdout), panel))
        last = params.filter(pl.col("asof") == origins[-1])
        variants = {}
        for variant, update in DYNAMIC_VARIANTS.items() if dynamic else ():
            dyn_settings = settings.model_copy(update=update)
            calibrator = OnlineCalibrator(symbols, sectors, dyn_settings, start)
            dyn_params = replay(raw, panel, calibrator, regime)
            dyn_calibrated = apply_params(raw, dyn_params, factors)
            dyn = score(with_realized(dyn_calibrated.filter(in_holdout), panel))
            variants[variant] = {
                "coverage": dyn["coverage"],
                "crps": dyn["crps"],
                "mae": dyn["mae"],
                "crps_change": dyn["crps"] / before["crps"] - 1,
                "crps_vs_fixed": dyn["crps"] / after["crps"] - 1,
                "coverage_target_met": TARGET_LOW <= dyn["coverage"] <= TARGET_HIGH,
                "final_mean_scale": float(
                    dyn_params.filter(pl.col("asof") == origins[-1])["scale"].mean()
                ),
            }
        rows.append(
            {
                "model": name,
                "raw_coverage": before["coverage"],
                "calibrated_coverage": after["coverage"],
                "raw_crps": before["crps"],
                "calibrated_crps": after["crps"],
                "crps_change": after["crps"] / before["crps"] - 1,
                "raw_mae": before["mae"],
                "calibrated_mae": after["mae"],
                "coverage_target_applies": 0.70 <= before["coverage"] <= 0.99,
                "coverage_target_met": TARGET_LOW <= after["coverage"] <= TARGET_HIGH,
                "final_mean_bias": float(last["bias"].mean()),
                "final_mean_scale": float(last["scale"].mean()),
                "start": _start_block(start, raw, panel, in_holdout),
                **({"dynamic": variants} if dynamic else {}),
                "conditional": conditional_block(
                    raw, calibrated, panel, holdout_start, crossed.get(name, 0)
                ),
            }
        )
    return {
        "holdout_start": str(holdout_start),
        "warmup_start": str(history["ts"].max()),
        "end": str(end),
        "origins": len(origins),
        "settings": settings.model_dump(mode="json"),
        "models": rows,
        **({"regime": regime_info} if dynamic else {}),
    }


def _start_block(
    start: StartCalibration | None, raw: pl.DataFrame, panel: pl.DataFrame, in_holdout: pl.Expr
) -> dict | None:
    """The starting calibration and the holdout coverage it alone gives (no nightly updates)."""
    if start is None:
        return None
    fixed = raw.select("asof", "symbol").unique().with_columns(bias=start.bias, scale=start.scale)
    fixed_calibrated = apply_params(raw, fixed, start.step_factors)
    alone = score(with_realized(fixed_calibrated.filter(in_holdout), panel))
    return {**start.as_dict(), "holdout_coverage_start_only": alone["coverage"]}


def _regime(
    panel: pl.DataFrame,
    cutoff: date,
    holdout_start: date,
    settings: CalibrationSettings,
    encoder: RegimeEncoder | None,
) -> tuple[pl.DataFrame, dict]:
    """Fit the regime encoder up to ``cutoff``; its ``p_turbulent`` per session, and a summary."""
    features = market_features(panel)
    encoder = (encoder or RegimeEncoder()).fit(features, cutoff)
    probs = encoder.predict_proba(features)
    dyn = settings.model_copy(update={"calibration_dynamic_lambda": True})

    def summary(frame: pl.DataFrame) -> dict[str, float]:
        p = frame["p_turbulent"].to_numpy()
        return {
            "mean_p_turbulent": float(p.mean()),
            "share_p_turbulent_over_half": float((p >= 0.5).mean()),
            "mean_lambda": float(sum(dynamic_lambda(x, dyn) for x in p) / len(p)),
        }

    after = probs.filter(pl.col("ts") > cutoff)
    info = {
        "version": encoder.version,
        "trained_until": str(encoder.trained_until_),
        "fit_seconds": encoder.fit_info_["fit_seconds"],
        "epochs": encoder.fit_info_["epochs"],
        "lambda_turbulent": settings.calibration_lambda_turbulent,
        "validation": encoder.metrics_,
        "warmup": summary(after.filter(pl.col("ts") < holdout_start)),
        "holdout": summary(after.filter(pl.col("ts") >= holdout_start)),
    }
    return probs.select("ts", "p_turbulent"), info
