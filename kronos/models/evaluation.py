"""Scoring forecasts against what happened, with rolling origins.

A forecast's step ``h`` from origin ``asof`` is scored against the ``h``-th
return after ``asof`` in the symbol's own series (by position, so exchange
holidays never misalign a target).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import polars as pl

from kronos.metrics import coverage, crps_quantiles, mae, pinball_losses
from kronos.models.base import HORIZON, QUANTILE_COLUMNS, QUANTILES


def realized(panel: pl.DataFrame, horizon: int = HORIZON) -> pl.DataFrame:
    """``symbol, asof, step, y_true``: the return ``step`` rows after each ``asof``."""
    ordered = panel.sort("symbol", "ts")
    return pl.concat(
        ordered.select(
            "symbol",
            pl.col("ts").alias("asof"),
            pl.lit(h, pl.Int32).alias("step"),
            pl.col("y").shift(-h).over("symbol").alias("y_true"),
        ).drop_nulls("y_true")
        for h in range(1, horizon + 1)
    )


def with_realized(forecasts: pl.DataFrame, panel: pl.DataFrame) -> pl.DataFrame:
    """Forecasts joined to their realized returns; unrealized steps are dropped."""
    horizon = int(forecasts["step"].max())
    return forecasts.join(realized(panel, horizon), on=["symbol", "asof", "step"], how="inner")


def score(scored: pl.DataFrame) -> dict[str, float]:
    """MAE of p50, p05-p95 coverage, quantile CRPS and per-level pinball losses."""
    y = scored["y_true"].to_numpy()
    q = scored.select(QUANTILE_COLUMNS).to_numpy()
    pin = pinball_losses(y, q, QUANTILES)
    return {
        "mae": mae(y, q[:, 1]),
        "coverage": coverage(y, q[:, 0], q[:, 2]),
        "crps": crps_quantiles(y, q, QUANTILES),
        **{f"pinball_{c}": float(v) for c, v in zip(QUANTILE_COLUMNS, pin, strict=True)},
        "n": float(len(y)),
    }


def origins_between(panel: pl.DataFrame, start: date, end: date) -> list[date]:
    """Trading days of the panel in ``[start, end]``, each a forecast origin."""
    days = panel.filter(pl.col("ts").is_between(start, end))["ts"].unique().sort()
    return days.to_list()


def every_kth(origins: Sequence[date], k: int) -> list[date]:
    """Thin a list of origins (validation uses a subset to bound cost)."""
    return list(np.asarray(origins, dtype=object)[::k]) if k > 1 else list(origins)
