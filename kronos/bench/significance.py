"""Is a leaderboard difference real? Diebold-Mariano tests and the Model Confidence Set.

The unit of observation is the forecast origin, not the (symbol, step) row:
the 20 stocks of one day share the market's shock, so counting them as
independent observations would overstate the evidence. Each model's loss at an
origin is its quantile CRPS averaged over every symbol and step scored there
(:func:`per_origin_loss`); the tests then run on those per-origin series.

- :func:`diebold_mariano`: the mean per-origin loss difference over its
  Newey-West (Bartlett kernel) HAC standard error, lag :func:`hac_lag`
  (:func:`hac_variance_of_mean`, checked against statsmodels); the
  p-value is two-sided from the standard normal. The Harvey-Leybourne-Newbold
  small-sample correction is not applied: it is derived for the truncated
  (rectangular) variance estimator, not the Bartlett one, and at 250 origins
  and 5 steps it would scale the statistic by 0.98 only.
- :func:`model_confidence_set`: Hansen, Lunde and Nason's MCS via
  :class:`arch.bootstrap.MCS` (the T_R statistic, a stationary bootstrap with a
  fixed seed, so the result is reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from kronos.models.base import HORIZON, QUANTILE_COLUMNS, QUANTILES

MCS_SIZE = 0.10
"""Test size of the Model Confidence Set: the set holds the best model with 90% confidence."""
MCS_REPS = 1000
MCS_SEED = 19
"""Seed of the MCS bootstrap, fixed so that ``--json`` is reproducible."""


def per_origin_loss(scored: pl.DataFrame) -> pl.DataFrame:
    """``asof, loss``: the quantile CRPS averaged over every symbol and step of each origin.

    ``scored`` holds forecasts joined to their realized returns
    (:func:`kronos.models.evaluation.with_realized`); a row's quantile CRPS is
    twice its mean pinball loss over the three levels, as
    :func:`kronos.metrics.crps_quantiles`. Sorted by ``asof``.
    """
    u = [pl.col("y_true") - pl.col(c) for c in QUANTILE_COLUMNS]
    pinball = [pl.max_horizontal(t * e, (t - 1.0) * e) for t, e in zip(QUANTILES, u, strict=True)]
    row_crps = 2.0 * pl.sum_horizontal(pinball) / len(QUANTILES)
    return (
        scored.select("asof", row_crps.alias("loss"))
        .group_by("asof")
        .agg(pl.col("loss").mean())
        .sort("asof")
    )


def hac_lag(n: int, horizon: int = HORIZON) -> int:
    """Newey-West lag: ``max(horizon - 1, floor(4 (n / 100) ** (2 / 9)))``.

    An origin's loss covers the returns of the next ``horizon`` sessions, so
    losses ``horizon - 1`` origins apart still share a realized return: the
    HAC variance needs at least that many lags. The second term is Newey and
    West's (1994) rule of thumb, which takes over on long series.
    """
    if n < 1:
        raise ValueError(f"need at least one observation for a HAC lag, got n={n}")
    return max(horizon - 1, math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)))


@dataclass(frozen=True)
class DMResult:
    """One Diebold-Mariano test of ``loss_a - loss_b`` (negative ``stat``: ``a`` is better)."""

    stat: float
    pvalue: float
    mean_diff: float
    lag: int
    n: int


def hac_variance_of_mean(d: ArrayLike, lag: int) -> float:
    """Newey-West variance of the mean of ``d``: Bartlett kernel, ``lag`` lags, centred.

    ``(gamma_0 + 2 sum_{j=1..lag} (1 - j / (lag + 1)) gamma_j) / n`` with
    ``gamma_j = sum_t e_t e_{t-j} / n``: no degrees-of-freedom correction, so it
    equals statsmodels' ``OLS(d, ones).fit(cov_type='HAC', cov_kwds={'maxlags': lag})``
    squared standard error (tested to 1e-12). Written out rather than taken from
    arch's kernel estimators, whose numba compilation costs seconds per process.
    """
    e = np.asarray(d, dtype=np.float64)
    e = e - e.mean()
    n = len(e)
    if not 0 <= lag < n:
        raise ValueError(f"HAC lag must lie in [0, {n - 1}] for {n} observations, got {lag}")
    long_run = e @ e / n
    for j in range(1, lag + 1):
        long_run += 2.0 * (1.0 - j / (lag + 1.0)) * (e[j:] @ e[:-j]) / n
    return float(long_run / n)


def diebold_mariano(
    loss_a: ArrayLike, loss_b: ArrayLike, lag: int | None = None, horizon: int = HORIZON
) -> DMResult:
    """Diebold-Mariano test of equal expected loss on two aligned per-origin loss series.

    ``lag`` defaults to :func:`hac_lag` (at most ``n - 1``). Two-sided p-value from N(0, 1), no
    Harvey-Leybourne-Newbold correction. Identical series give ``stat`` 0 and
    ``pvalue`` 1.
    """
    a, b = np.asarray(loss_a, dtype=np.float64), np.asarray(loss_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"loss series must be 1-d and aligned, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"Diebold-Mariano needs at least 2 origins, got {len(a)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("loss series hold NaN or infinite values")
    d = a - b
    lag = min(hac_lag(len(d), horizon), len(d) - 1) if lag is None else lag
    mean = float(d.mean())
    var = hac_variance_of_mean(d, lag) if np.any(d != d[0]) else 0.0
    if var <= 0.0:  # a constant difference: no variance to test against
        stat = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return DMResult(stat, 1.0 if mean == 0.0 else 0.0, mean, lag, len(d))
    stat = mean / math.sqrt(var)
    return DMResult(stat, math.erfc(abs(stat) / math.sqrt(2.0)), mean, lag, len(d))


def model_confidence_set(
    losses: Mapping[str, ArrayLike],
    size: float = MCS_SIZE,
    *,
    reps: int = MCS_REPS,
    block_size: int | None = None,
    horizon: int = HORIZON,
    seed: int = MCS_SEED,
) -> dict[str, tuple[bool, float]]:
    """``{model: (in_mcs, mcs_pvalue)}`` of Hansen-Lunde-Nason's MCS at ``1 - size``.

    ``losses``: each model's per-origin loss series, all aligned. The bootstrap
    is arch's stationary bootstrap with mean block length ``block_size``,
    by default ``max(horizon, floor(sqrt(T)))`` (arch's own default, at least
    the horizon the losses overlap by); the statistic is T_R (``method="R"``).
    A single model is its own set (p-value 1).
    """
    from arch.bootstrap import MCS

    names = list(losses)
    if not names:
        return {}
    matrix = np.column_stack([np.asarray(losses[n], dtype=np.float64) for n in names])
    if len(names) == 1:
        return {names[0]: (True, 1.0)}
    t = matrix.shape[0]
    if t < 2:
        raise ValueError(f"the Model Confidence Set needs at least 2 origins, got {t}")
    block = max(horizon, math.isqrt(t)) if block_size is None else block_size
    mcs = MCS(matrix, size=size, reps=reps, block_size=block, method="R", seed=seed)
    mcs.compute()
    pvalues = mcs.pvalues["Pvalue"]
    return {n: (bool(pvalues.loc[i] > size), float(pvalues.loc[i])) for i, n in enumerate(names)}


def significance(
    losses: Mapping[str, ArrayLike],
    baselines: tuple[str, ...] = ("ewma", "garch"),
    horizon: int = HORIZON,
) -> dict[str, dict[str, float | bool | None]]:
    """Per model: DM statistic and p-value against each baseline, MCS membership and p-value.

    Keys ``dm_stat_vs_<b>``, ``dm_pvalue_vs_<b>`` (None against itself or a
    baseline not among ``losses``), ``in_mcs``, ``mcs_pvalue``.
    """
    mcs = model_confidence_set(losses, horizon=horizon)
    out: dict[str, dict[str, float | bool | None]] = {}
    for name, loss in losses.items():
        row: dict[str, float | bool | None] = {}
        for b in baselines:
            test = (
                diebold_mariano(loss, losses[b], horizon=horizon)
                if b in losses and b != name
                else None
            )
            row[f"dm_stat_vs_{b}"] = None if test is None else test.stat
            row[f"dm_pvalue_vs_{b}"] = None if test is None else test.pvalue
        row["in_mcs"], row["mcs_pvalue"] = mcs[name]
        out[name] = row
    return out
