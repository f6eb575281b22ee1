"""Conditional calibration for ``kronos bench calibration`` (issue 19, point 3).

For each forecaster, raw and calibrated, on the holdout: coverage by tercile
of the realized EWMA volatility at the origin (lambda of the whitepaper's
RiskMetrics baseline, :class:`~kronos.models.baselines.EwmaNormal`), Kupiec and
Christoffersen tests on the p05 and p95 exceedances, the PIT histogram, per
step and per symbol coverage (:func:`kronos.forecast_quality.conditional_summary`),
and the rows whose quantiles crossed (repaired by sorting before calibration).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from kronos.forecast_quality import conditional_summary, repair_frame
from kronos.models.baselines import EwmaNormal, ewma_variance
from kronos.models.evaluation import with_realized

VOL_LAMBDA = EwmaNormal().lam
"""0.94: the RiskMetrics decay of the EWMA baseline."""


def origin_volatility(
    panel: pl.DataFrame, lam: float = VOL_LAMBDA, seed_length: int = EwmaNormal.seed_length
) -> pl.DataFrame:
    """``symbol, asof, vol``: the EWMA volatility after each session's return (NaN in the seed)."""
    parts = []
    for frame in panel.sort("symbol", "ts").partition_by("symbol", maintain_order=True):
        y = frame["y"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        parts.append(
            pl.DataFrame(
                {
                    "symbol": frame["symbol"],
                    "asof": frame["ts"],
                    "vol": np.sqrt(ewma_variance(y, lam, seed_length)),
                }
            )
        )
    return pl.concat(parts)


def conditional_block(
    raw: pl.DataFrame,
    calibrated: pl.DataFrame,
    panel: pl.DataFrame,
    holdout_start: date,
    crossed: int,
) -> dict:
    """The ``conditional`` entry of one model's row: raw and calibrated summaries on the holdout.

    ``crossed`` counts the rows of the raw forecasts (all origins) that were
    repaired; ``crossed_calibrated`` those of the calibrated holdout forecasts
    (the calibrator keeps the order, so it should be 0).
    """
    vol = origin_volatility(panel)
    out: dict = {"crossed_rows": crossed, "rows": raw.height, "vol_lambda": VOL_LAMBDA}
    for label, frame in (("raw", raw), ("calibrated", calibrated)):
        held = frame.filter(pl.col("asof") >= holdout_start)
        if label == "calibrated":
            held, out["crossed_calibrated"] = repair_frame(held)
        scored = with_realized(held, panel).join(vol, on=["symbol", "asof"], how="left")
        out[label] = conditional_summary(scored)
    return out


def headline(row: dict) -> dict[str, float]:
    """Tercile coverages and VaR-test p-values of one model's row, flat, for metrics and tables."""
    flat: dict[str, float] = {}
    for label in ("raw", "calibrated"):
        block = row["conditional"][label]
        for t in block["coverage_by_tercile"]:
            flat[f"{label}_cov_{t['tercile']}"] = t["coverage"]
        for q, tests in block["var_tests"].items():
            flat[f"{label}_{q}_kupiec_p"] = tests["pvalue"]
            flat[f"{label}_{q}_cc_p"] = tests["pvalue_cc"]
    flat["crossed_rows"] = float(row["conditional"]["crossed_rows"])
    return flat
