"""kronos.forecast_quality: PIT, coverage by tercile, Kupiec and Christoffersen."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats

from kronos import forecast_quality as fq

Z95 = stats.norm.ppf(0.95)
# 200,000 PIT values in 10 bins: the sd of a bin share is sqrt(0.1 * 0.9 / n) = 0.00067,
# so 0.004 is 6 sd
FLAT_TOL = 0.004


def test_repair_crossing_sorts_and_counts_only_crossed_finite_rows() -> None:
    lo, mid, hi, n = fq.repair_crossing(
        [0.0, 2.0, np.nan, -1.0], [1.0, 0.0, 5.0, 1.0], [2.0, 1.0, 0.0, 0.5]
    )
    assert n == 2
    np.testing.assert_array_equal(lo, [0.0, 0.0, np.nan, -1.0])
    np.testing.assert_array_equal(mid, [1.0, 1.0, 5.0, 0.5])
    np.testing.assert_array_equal(hi, [2.0, 2.0, 0.0, 1.0])


def test_repair_frame_sorts_crossed_rows_only() -> None:
    frame = pl.DataFrame(
        {
            "symbol": list("abcde"),
            "p05": [0.0, 2.0, np.nan, None, 3.0],
            "p50": [1.0, 0.0, 5.0, 1.0, 1.0],
            "p95": [2.0, 1.0, 0.0, 0.0, 2.0],
        }
    )
    fixed, n = fq.repair_frame(frame)
    assert n == 2
    assert fixed.columns == frame.columns
    assert fixed.row(1) == ("b", 0.0, 1.0, 2.0) and fixed.row(4) == ("e", 1.0, 2.0, 3.0)
    assert fixed.slice(2, 2).equals(frame.slice(2, 2))  # NaN/null rows untouched
    again, m = fq.repair_frame(fixed)
    assert m == 0 and again is fixed


def test_pit_edges_are_exact_and_nan_where_unscored() -> None:
    q = np.array([[-1.0, 0.2, 3.0]] * 5)  # skewed: the halves differ
    y = np.array([-1.0, 0.2, 3.0, np.nan, 1e9])
    u = fq.pit(q[:, 0], q[:, 1], q[:, 2], y)
    np.testing.assert_allclose(u[:3], [0.05, 0.5, 0.95], atol=1e-12)
    assert np.isnan(u[3])
    assert u[4] == pytest.approx(1.0)
    # zero lower half-width: all lower mass on p50
    assert fq.pit(0.0, 0.0, 1.0, -0.1) == 0.0
    assert fq.pit(0.0, 0.0, 1.0, 0.0) == 0.5


@pytest.mark.parametrize("skew", [1.0, 2.5])
def test_pit_of_draws_from_the_forecast_is_flat(skew: float) -> None:
    """y drawn from the (split) normal whose quantiles are the forecast: flat PIT."""
    rng = np.random.default_rng(7)
    n = 200_000
    mu = rng.normal(0.0, 0.01, n)
    s_lo = np.exp(rng.normal(-4.5, 0.4, n))
    s_hi = s_lo * skew
    # split normal: below mu with prob 0.5 (halves of a normal with sd s_lo / s_hi)
    half = np.abs(rng.standard_normal(n))
    y = np.where(rng.random(n) < 0.5, mu - half * s_lo, mu + half * s_hi)
    y[::100] = np.nan
    u = fq.pit(mu - Z95 * s_lo, mu, mu + Z95 * s_hi, y)
    assert np.isnan(u[::100]).all()
    hist = fq.pit_histogram(u, bins=10)
    assert hist.columns == ["bin_lo", "bin_hi", "share", "expected"]
    assert hist["share"].sum() == pytest.approx(1.0)
    assert (hist["share"] - hist["expected"]).abs().max() < FLAT_TOL


def test_pit_shows_too_narrow_intervals_in_the_outer_bins() -> None:
    rng = np.random.default_rng(1)
    y = rng.standard_normal(50_000)
    hist = fq.pit_histogram(fq.pit(-0.6 * Z95, 0.0, 0.6 * Z95, y), bins=10)
    share = hist["share"].to_numpy()
    assert share[0] > 0.15 and share[-1] > 0.15 and share[4] < 0.1


def test_pit_histogram_of_nothing_is_nan() -> None:
    hist = fq.pit_histogram([np.nan], bins=4)
    assert hist.height == 4 and hist["share"].is_nan().all()


def test_coverage_by_tercile_splits_on_vol() -> None:
    vol = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan])
    y = np.array([0.0, 5.0, 0.0, 0.0, 5.0, 5.0, 0.0])
    out = fq.coverage_by_tercile(-1.0, 1.0, y, vol)
    assert out.columns == ["tercile", "vol_lo", "vol_hi", "n", "coverage"]
    assert out["tercile"].to_list() == ["low", "mid", "high"]
    assert out["n"].to_list() == [2, 2, 2]
    assert out["vol_lo"].to_list() == [1.0, 3.0, 5.0]
    assert out["coverage"].to_list() == [0.5, 1.0, 0.0]


def test_kupiec_against_hand_computation_and_vartests() -> None:
    hits = np.array([1.0] * 7 + [0.0] * 93 + [np.nan] * 3)
    out = fq.kupiec(hits, 0.05)
    # LR = -2 [93 ln 0.95 + 7 ln 0.05 - 93 ln 0.93 - 7 ln 0.07]
    hand = -2 * (
        93 * math.log(0.95) + 7 * math.log(0.05) - 93 * math.log(0.93) - 7 * math.log(0.07)
    )
    assert out["n"] == 100 and out["x"] == 7 and out["rate"] == 0.07
    assert out["lr"] == pytest.approx(hand, rel=1e-12)
    assert out["pvalue"] == pytest.approx(stats.chi2.sf(hand, 1), rel=1e-12)
    vartests = pytest.importorskip("vartests", reason="vartests (dev extra) is not installed")
    ref = vartests.kupiec_test(hits[:100].astype(int), risk_conf_level=0.95)
    assert out["lr"] == pytest.approx(ref["statistic"], rel=1e-10)
    assert out["pvalue"] == pytest.approx(ref["p-value"], rel=1e-10)
    assert fq.kupiec(np.zeros(50), 0.05)["lr"] == pytest.approx(-2 * 50 * math.log(0.95))
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        fq.kupiec([0.0, 2.0], 0.05)


def test_christoffersen_against_hand_computation() -> None:
    # clustered hits; the NaN breaks the series, the second column is a separate series
    a = [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, np.nan, 1, 1, 0]
    b = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    out = fq.christoffersen(np.array([a, b], dtype=float).T, 0.05)
    # counted by hand: a: 00 x5, 01 x1, 11 x3, 10 x2; b: 00 x11, 01 x1, 10 x1
    n00, n01, n10, n11 = 16, 2, 3, 3
    assert (out["n00"], out["n01"], out["n10"], out["n11"]) == (n00, n01, n10, n11)
    pi, pi0, pi1 = 5 / 24, 2 / 18, 3 / 6
    restricted = 19 * math.log(1 - pi) + 5 * math.log(pi)
    free = (
        n00 * math.log(1 - pi0)
        + n01 * math.log(pi0)
        + n10 * math.log(1 - pi1)
        + n11 * math.log(pi1)
    )
    lr_ind = -2 * (restricted - free)
    assert out["lr_ind"] == pytest.approx(lr_ind, rel=1e-12)
    assert out["pvalue_ind"] == pytest.approx(stats.chi2.sf(lr_ind, 1), rel=1e-12)
    # 6 hits in 27 scored cells
    lr_uc = -2 * (
        21 * math.log(0.95) + 6 * math.log(0.05) - 21 * math.log(21 / 27) - 6 * math.log(6 / 27)
    )
    assert out["lr_cc"] == pytest.approx(lr_uc + lr_ind, rel=1e-12)
    assert out["pvalue_cc"] == pytest.approx(stats.chi2.sf(lr_uc + lr_ind, 2), rel=1e-12)


def test_christoffersen_rejects_clustered_hits_only() -> None:
    rng = np.random.default_rng(3)
    hits = (rng.random((250, 20)) < 0.05).astype(float)
    out = fq.christoffersen(hits, 0.05)
    assert out["pvalue_ind"] > 0.01 and out["pvalue_cc"] > 0.01
    # a Markov chain: a hit follows a hit with probability 0.5 (0.05 after a miss)
    draws = rng.random((250, 20))
    for t in range(1, 250):
        hits[t] = draws[t] < np.where(hits[t - 1] == 1, 0.5, 0.05)
    out = fq.christoffersen(hits, 0.05)
    assert out["pvalue_ind"] < 1e-6


def test_breakdown_and_conditional_summary() -> None:
    rng = np.random.default_rng(5)
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(60)]
    rows = [
        (s, d, h, float(rng.standard_normal()))
        for s in ("AAA", "BBB")
        for d in days
        for h in (1, 2)
    ]
    scored = pl.DataFrame(
        rows, schema=["symbol", "asof", "step", "y_true"], orient="row"
    ).with_columns(p05=pl.lit(-Z95), p50=pl.lit(0.0), p95=pl.lit(Z95), vol=pl.col("y_true").abs())
    per = fq.breakdown(-Z95, Z95, scored["y_true"].to_numpy(), scored["step"].to_numpy())
    assert per["key"].to_list() == [1, 2] and per["n"].to_list() == [120, 120]
    np.testing.assert_allclose(per["coverage"] + per["below"] + per["above"], 1.0)
    out = fq.conditional_summary(scored)
    assert set(out) == {
        "n",
        "pit_histogram",
        "coverage_by_tercile",
        "per_step",
        "var_tests",
        "per_symbol",
    }
    assert out["n"] == 240
    # vol = |y|: the high tercile holds every miss
    terciles = {t["tercile"]: t for t in out["coverage_by_tercile"]}
    assert terciles["low"]["coverage"] == 1.0
    assert set(out["per_step"]) == {"1", "2"}
    assert out["per_step"]["1"]["n"] == 120
    assert out["var_tests"]["p05"]["rate"] == out["per_step"]["1"]["p05_rate"]
    assert [r["symbol"] for r in out["per_symbol"]] == ["AAA", "BBB"]
    with pytest.raises(ValueError, match="empty"):
        fq.conditional_summary(scored.clear())


def test_grid_refuses_duplicates() -> None:
    frame = pl.DataFrame({"symbol": ["A", "A"], "asof": [date(2024, 1, 1)] * 2, "x": [1.0, 2.0]})
    with pytest.raises(ValueError, match="A at 2024-01-01 repeats"):
        fq.grid(frame, "x")
