"""Diebold-Mariano with a Newey-West variance, and the Model Confidence Set (pure functions)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from statsmodels.regression.linear_model import OLS

from kronos.bench.significance import (
    diebold_mariano,
    hac_lag,
    hac_variance_of_mean,
    model_confidence_set,
    per_origin_loss,
    significance,
)
from kronos.metrics import crps_quantiles
from kronos.models.base import QUANTILES


def _overlapping_losses(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Per-origin losses that share 4 of 5 draws with their neighbour (5-step overlap)."""
    draws = rng.chisquare(3, n + 4)
    return np.convolve(draws, np.ones(5) / 5, mode="valid") + shift


def test_hac_lag_is_at_least_horizon_minus_one_then_newey_west():
    assert hac_lag(250) == 4  # floor(4 * 2.5 ** (2/9)) = 4 = horizon - 1
    assert hac_lag(750) == 6  # floor(4 * 7.5 ** (2/9)) = floor(6.26)
    assert hac_lag(30, horizon=10) == 9
    with pytest.raises(ValueError, match="n=0"):
        hac_lag(0)


def test_dm_matches_statsmodels_hac():
    d = _overlapping_losses(np.random.default_rng(3), 250) - _overlapping_losses(
        np.random.default_rng(4), 250
    )
    lag = 4
    ols = OLS(d, np.ones(len(d))).fit(cov_type="HAC", cov_kwds={"maxlags": lag})
    # reference 1: statsmodels 0.15 HAC (Bartlett, no small-sample correction), rtol 1e-12
    assert hac_variance_of_mean(d, lag) == pytest.approx(ols.bse[0] ** 2, rel=1e-12)
    assert hac_variance_of_mean(d, 0) == pytest.approx(d.var() / len(d), rel=1e-12)
    with pytest.raises(ValueError, match="HAC lag must lie in"):
        hac_variance_of_mean(d[:3], 4)
    test = diebold_mariano(d, np.zeros_like(d), lag=lag)
    assert test.stat == pytest.approx(ols.tvalues[0], rel=1e-12)
    assert test.pvalue == pytest.approx(ols.pvalues[0], rel=1e-10)  # both N(0, 1), two-sided
    assert (test.lag, test.n) == (lag, 250)
    assert diebold_mariano(d, np.zeros_like(d)).lag == hac_lag(250)
    assert diebold_mariano(d[:3], np.zeros(3)).lag == 2  # capped at n - 1


def test_dm_keeps_its_size_on_equal_losses_and_rejects_a_shift():
    rejections, pvalues = 0, []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        p = diebold_mariano(_overlapping_losses(rng, 250), _overlapping_losses(rng, 250)).pvalue
        pvalues.append(p)
        rejections += p < 0.05
    # equal in distribution: about 5% of p-values below 0.05 (binomial sd 1.5% at 200 draws;
    # the Bartlett kernel under-weights the MA(4) autocovariances a little, so allow up to 12%)
    assert 0.01 <= rejections / 200 <= 0.12
    assert np.median(pvalues) > 0.3
    rng = np.random.default_rng(7)
    a, b = _overlapping_losses(rng, 250), _overlapping_losses(rng, 250, shift=1.0)
    shifted = diebold_mariano(a, b)
    assert shifted.pvalue < 1e-6 and shifted.stat < 0 and shifted.mean_diff < 0


def test_dm_on_identical_series_is_no_evidence():
    a = _overlapping_losses(np.random.default_rng(1), 50)
    assert diebold_mariano(a, a) == pytest.approx(diebold_mariano(a, a.copy()))
    assert (diebold_mariano(a, a).stat, diebold_mariano(a, a).pvalue) == (0.0, 1.0)
    with pytest.raises(ValueError, match="aligned"):
        diebold_mariano(a, a[:-1])


def test_mcs_keeps_the_best_model_and_drops_a_clearly_worse_one():
    rng = np.random.default_rng(11)
    best = _overlapping_losses(rng, 250)
    losses = {
        "best": best,
        "close": best + rng.normal(0.0, 0.05, 250),  # the same expected loss, noisier
        "worse": best + 0.5 + rng.normal(0.0, 0.05, 250),
    }
    got = model_confidence_set(losses)
    assert got["best"][0] and got["close"][0]
    assert got["worse"] == (False, pytest.approx(0.0, abs=0.01))
    assert max(p for _, p in got.values()) == 1.0  # the last survivor
    assert model_confidence_set(losses) == got  # fixed seed: reproducible
    assert model_confidence_set({"only": best}) == {"only": (True, 1.0)}


def test_significance_names_every_key_and_skips_self_comparisons():
    rng = np.random.default_rng(2)
    losses = {m: _overlapping_losses(rng, 120) for m in ("ewma", "garch", "nbeats")}
    out = significance(losses)
    assert out["ewma"]["dm_pvalue_vs_ewma"] is None and out["garch"]["dm_stat_vs_garch"] is None
    assert out["ewma"]["dm_stat_vs_garch"] == pytest.approx(-out["garch"]["dm_stat_vs_ewma"])
    for row in out.values():
        assert set(row) == {
            "dm_stat_vs_ewma",
            "dm_pvalue_vs_ewma",
            "dm_stat_vs_garch",
            "dm_pvalue_vs_garch",
            "in_mcs",
            "mcs_pvalue",
        }
    no_garch = significance({"ewma": losses["ewma"], "nbeats": losses["nbeats"]})
    assert no_garch["nbeats"]["dm_pvalue_vs_garch"] is None
    assert 0 <= no_garch["nbeats"]["dm_pvalue_vs_ewma"] <= 1


def test_per_origin_loss_is_the_quantile_crps_of_each_origins_rows():
    rng = np.random.default_rng(5)
    days = [date(2022, 1, 3) + timedelta(days=i) for i in range(4)]
    n = 4 * 6  # 4 origins x (3 symbols x 2 steps)
    mid = rng.normal(0, 0.01, n)
    scored = pl.DataFrame(
        {
            "asof": [d for d in days for _ in range(6)],
            "y_true": rng.normal(0, 0.02, n),
            "p05": mid - 0.02,
            "p50": mid,
            "p95": mid + 0.03,
        }
    ).sample(fraction=1.0, shuffle=True, seed=1)
    got = per_origin_loss(scored)
    assert got["asof"].to_list() == days
    for day, loss in got.iter_rows():
        rows = scored.filter(pl.col("asof") == day)
        q = rows.select("p05", "p50", "p95").to_numpy()
        # reference: kronos.metrics.crps_quantiles on the origin's rows, rtol 1e-12
        assert loss == pytest.approx(crps_quantiles(rows["y_true"], q, QUANTILES), rel=1e-12)
