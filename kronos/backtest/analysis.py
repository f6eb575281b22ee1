"""Forecast quality over a backtest: per-fold metrics and rolling coverage."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from kronos.backtest.monitor import Quantiles, inside
from kronos.backtest.result import (
    COVERAGE_SCHEMA,
    FOLD_METRICS_SCHEMA,
    PIT_SCHEMA,
    SCALE_SCHEMA,
    TERCILE_SCHEMA,
)
from kronos.backtest.splits import Fold
from kronos.metrics import coverage, crps_quantiles, mae
from kronos.models.base import QUANTILES


def _metrics(q: Quantiles, y: np.ndarray, lo: int, hi: int) -> dict[str, float]:
    """Step-1 forecasts from sessions ``lo..hi-1`` against the next session's return."""
    p = np.stack([q.p05[lo:hi], q.p50[lo:hi], q.p95[lo:hi]], axis=-1)
    real = y[lo + 1 : hi + 1]
    p = p[: len(real)]
    ok = np.isfinite(real) & np.isfinite(p).all(axis=-1)
    yy, pp = real[ok], p[ok]
    if not len(yy):
        return {"n": 0, "mae": np.nan, "coverage": np.nan, "crps": np.nan}
    return {
        "n": len(yy),
        "mae": mae(yy, pp[:, 1]),
        "coverage": coverage(yy, pp[:, 0], pp[:, 2]),
        "crps": crps_quantiles(yy, pp, QUANTILES),
    }


def fold_metrics(
    folds: list[Fold], sessions: list[date], raw: Quantiles, calibrated: Quantiles, y: np.ndarray
) -> pl.DataFrame:
    """MAE, coverage and CRPS of each fold's step-1 forecasts, raw and calibrated."""
    index = {d: i for i, d in enumerate(sessions)}
    rows = []
    for f in folds:
        lo, hi = index[f.test_start], index[f.test_end] + 1
        for stage, q in (("raw", raw), ("calibrated", calibrated)):
            rows.append(
                {
                    "fold": f.index,
                    "train_start": f.train_start,
                    "train_end": f.train_end,
                    "test_start": f.test_start,
                    "test_end": f.test_end,
                    "stage": stage,
                    **_metrics(q, y, lo, hi),
                }
            )
    return pl.DataFrame(rows, schema=FOLD_METRICS_SCHEMA)


def rolling_coverage(
    sessions: list[date],
    raw: Quantiles,
    calibrated: Quantiles,
    y: np.ndarray,
    first: int,
    window: int = 60,
) -> pl.DataFrame:
    """Share of realized returns inside p05..p95 over the last ``window`` sessions, all symbols."""

    def roll(q: Quantiles) -> np.ndarray:
        hit = inside(q, y)[first:]
        hits = np.nansum(hit, axis=1)
        n = np.isfinite(hit).sum(axis=1)
        c_hits = np.concatenate([[0.0], np.cumsum(hits)])
        c_n = np.concatenate([[0.0], np.cumsum(n)])
        k = np.arange(1, len(hits) + 1)
        lo = np.maximum(k - window, 0)
        got = c_n[k] - c_n[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(got > 0, (c_hits[k] - c_hits[lo]) / got, np.nan)

    return pl.DataFrame(
        {"ts": sessions[first:], "raw": roll(raw), "calibrated": roll(calibrated)},
        schema=COVERAGE_SCHEMA,
    ).with_columns(pl.col("raw", "calibrated").fill_nan(None))


EWMA_LAMBDA = 0.94  # RiskMetrics daily decay
EWMA_WARMUP = 20  # returns seen before a symbol's volatility counts


def ewma_volatility(y: np.ndarray, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """``[session, symbol]`` EWMA volatility of the returns up to and including each session.

    NaN until a symbol has :data:`EWMA_WARMUP` finite returns; a missing return
    leaves the estimate where it was.
    """
    var = np.full(y.shape[1], np.nan)
    seen = np.zeros(y.shape[1], dtype=int)
    out = np.full(y.shape, np.nan)
    for t in range(y.shape[0]):
        ok = np.isfinite(y[t])
        sq = np.where(ok, y[t] ** 2, np.nan)
        fresh = ok & ~np.isfinite(var)
        var[fresh] = sq[fresh]
        upd = ok & ~fresh
        var[upd] = lam * var[upd] + (1.0 - lam) * sq[upd]
        seen += ok
        out[t] = np.where(seen >= EWMA_WARMUP, np.sqrt(var), np.nan)
    return out


def forecast_quality(
    sessions: list[date],
    raw: Quantiles,
    calibrated: Quantiles,
    y: np.ndarray,
    first: int,
    scale: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """PIT histograms, coverage by volatility tercile (both per stage) and the calibrator scale.

    The step-1 forecast made at session ``t`` (from ``first`` on) is scored against
    ``y[t + 1]``; the tercile is of the EWMA volatility at ``t``, the origin.
    ``scale`` is the calibrator's band scale in force per ``[session, symbol]``
    (:func:`kronos.backtest.monitor.calibrate`); without it the scale frame is empty.
    """
    from kronos.forecast_quality import coverage_by_tercile, pit, pit_histogram

    target = np.full(y.shape, np.nan)
    target[:-1] = y[1:]
    target[:first] = np.nan
    vol = ewma_volatility(y)
    hists, terciles = [], []
    for stage, q in (("raw", raw), ("calibrated", calibrated)):
        u = pit(q.p05, q.p50, q.p95, target)
        hists.append(pit_histogram(u).select(pl.lit(stage).alias("stage"), pl.all()))
        terciles.append(
            coverage_by_tercile(q.p05, q.p95, target, vol).select(
                pl.lit(stage).alias("stage"), pl.all()
            )
        )
    pit_hist = pl.concat(hists).cast(PIT_SCHEMA)  # type: ignore[arg-type]
    terc = pl.concat(terciles).cast(TERCILE_SCHEMA)  # type: ignore[arg-type]
    if scale is None:
        return pit_hist, terc, pl.DataFrame(schema=SCALE_SCHEMA)
    part = scale[first:]
    keep = np.isfinite(part).any(axis=1)
    with np.errstate(invalid="ignore"):
        pct = np.nanpercentile(part[keep], [10, 50, 90], axis=1) if keep.any() else np.empty((3, 0))
    frame = pl.DataFrame(
        {
            "ts": [d for d, k in zip(sessions[first:], keep, strict=True) if k],
            "median": pct[1],
            "p10": pct[0],
            "p90": pct[2],
        },
        schema=SCALE_SCHEMA,
    )
    return pit_hist, terc, frame
