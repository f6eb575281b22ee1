from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from kronos.metrics import (
    coverage,
    crps_from_quantile_function,
    crps_from_quantile_function_each,
    crps_normal,
    crps_normal_each,
    crps_quantiles,
    crps_student_t,
    crps_student_t_each,
    mae,
    pinball_loss,
    pinball_losses,
)

Y = np.array([1.0, 2.0, 5.0])


def test_pinball_loss_by_hand():
    # u = y - q = [-1, 0, 3]
    # tau 0.9: max(0.9u, -0.1u) = [0.1, 0, 2.7] -> mean 2.8 / 3
    # tau 0.1: max(0.1u, -0.9u) = [0.9, 0, 0.3] -> mean 1.2 / 3 = 0.4
    q = [2.0, 2.0, 2.0]
    assert pinball_loss(Y, q, 0.9) == pytest.approx(2.8 / 3, rel=1e-12)
    assert pinball_loss(Y, q, 0.1) == pytest.approx(0.4, rel=1e-12)


def test_pinball_losses_and_crps_quantiles_by_hand():
    # columns for taus (0.1, 0.5, 0.9):
    #   tau 0.1, q = 2:       0.4 (above)
    #   tau 0.5, q = [0,2,4]: u = [1, 0, 1] -> 0.5 * [1, 0, 1] -> mean 1/3
    #   tau 0.9, q = 2:       2.8 / 3 (above)
    # crps_quantiles = 2 * mean(0.4, 1/3, 2.8/3) = 2 * (5/3) / 3 = 10/9
    q = np.array([[2.0, 0.0, 2.0], [2.0, 2.0, 2.0], [2.0, 4.0, 2.0]])
    taus = (0.1, 0.5, 0.9)
    np.testing.assert_allclose(pinball_losses(Y, q, taus), [0.4, 1 / 3, 2.8 / 3], rtol=1e-12)
    assert crps_quantiles(Y, q, taus) == pytest.approx(10 / 9, rel=1e-12)


def test_mae_and_coverage_by_hand():
    # |[1, 2, 5] - [0, 2, 4]| = [1, 0, 1] -> 2/3
    assert mae(Y, [0.0, 2.0, 4.0]) == pytest.approx(2 / 3, rel=1e-12)
    # 1 in [0, 1] yes (edge), 2 in [2, 3] yes (edge), 5 in [5.5, 6] no, -1 in [-2, 0] yes -> 3/4
    y = [1.0, 2.0, 5.0, -1.0]
    assert coverage(y, [0.0, 2.0, 5.5, -2.0], [1.0, 3.0, 6.0, 0.0]) == pytest.approx(
        0.75, rel=1e-12
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        pinball_losses(Y, np.zeros((3, 2)), (0.1, 0.5, 0.9))
    with pytest.raises(ValueError, match="tau"):
        pinball_loss(Y, Y, 1.0)


def test_crps_normal_known_value():
    # CRPS(N(0,1), 0) = 2 phi(0) - 1/sqrt(pi) = (sqrt(2) - 1) / sqrt(pi) = 0.2336949...
    expected = (math.sqrt(2) - 1) / math.sqrt(math.pi)
    assert expected == pytest.approx(0.2336949, abs=1e-7)
    assert crps_normal(0.0, 0.0, 1.0) == pytest.approx(expected, rel=1e-12)


CASES_NORMAL = [(0.0, 0.0, 1.0), (0.03, -0.01, 0.02), (-2.5, 1.0, 0.7), (10.0, 0.0, 3.0)]


@pytest.mark.parametrize(("y", "mu", "sigma"), CASES_NORMAL)
def test_crps_normal_matches_numerical_integral(y, mu, sigma):
    # reference: 2 * int_0^1 pinball_tau(y, mu + sigma Phi^-1(tau)) dtau, midpoint sum; rtol 1e-4
    numeric = crps_from_quantile_function([y], lambda t: mu + sigma * stats.norm.ppf(t))
    assert crps_normal(y, mu, sigma) == pytest.approx(numeric, rel=1e-4)


def test_crps_vectorised_each():
    # the vectorised forms agree with the scalar calls case by case (rtol 1e-12), and the
    # numerical integral accepts per-observation parameters (rtol 1e-4)
    y, mu, sigma = (np.array(c) for c in zip(*CASES_NORMAL, strict=True))
    each = crps_normal_each(y, mu, sigma)
    scalar = [crps_normal(*c) for c in CASES_NORMAL]
    np.testing.assert_allclose(each, scalar, rtol=1e-12)
    numeric = crps_from_quantile_function_each(y, lambda t: mu + sigma * stats.norm.ppf(t))
    np.testing.assert_allclose(each, numeric, rtol=1e-4)


CASES_T = [
    (0.0, 0.0, 1.0, 3.0),
    (0.02, 0.001, 0.01, 4.5),
    (-3.0, 0.5, 1.2, 2.2),
    (5.0, 0.0, 1.0, 30.0),
    (0.4, 0.0, 2.0, 1.5),
]


@pytest.mark.parametrize(("y", "mu", "scale", "nu"), CASES_T)
def test_crps_student_t_matches_numerical_integral(y, mu, scale, nu):
    # reference: midpoint integral of 2 * pinball over mu + scale * t_nu^-1(tau); rtol 1e-4
    numeric = crps_from_quantile_function([y], lambda t: mu + scale * stats.t.ppf(t, nu))
    assert crps_student_t(y, mu, scale, nu) == pytest.approx(numeric, rel=1e-4)


def test_crps_student_t_tends_to_normal():
    # t_nu -> N(0, 1) as nu -> inf; the gap is O(1/nu), so nu = 1e7 agrees to rtol 1e-5
    y = np.array([-2.0, 0.0, 0.3, 4.0])
    np.testing.assert_allclose(
        crps_student_t_each(y, 0.1, 0.5, 1e7), crps_normal_each(y, 0.1, 0.5), rtol=1e-5
    )
    # and at nu = 5 the two differ by more than 1% (the limit is not reached trivially)
    assert abs(crps_student_t(0.0, 0.0, 1.0, 5.0) / crps_normal(0.0, 0.0, 1.0) - 1) > 0.01


def test_crps_student_t_refuses_nu_at_most_one():
    with pytest.raises(ValueError, match="nu > 1"):
        crps_student_t(0.0, 0.0, 1.0, 1.0)


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, 5, elements=finite),
    arrays(np.float64, 5, elements=finite),
    st.floats(0.01, 0.99),
)
def test_pinball_nonnegative(y, q, tau):
    assert pinball_loss(y, q, tau) >= 0.0


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, 6, elements=finite),
    arrays(np.float64, 6, elements=finite),
    arrays(np.float64, 6, elements=finite),
)
def test_coverage_in_unit_interval(y, a, b):
    c = coverage(y, np.minimum(a, b), np.maximum(a, b))
    assert 0.0 <= c <= 1.0


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (4, 3), elements=finite), arrays(np.float64, 4, elements=finite))
def test_crps_quantiles_nonnegative_and_zero_at_truth(q, y):
    taus = (0.05, 0.5, 0.95)
    assert crps_quantiles(y, q, taus) >= 0.0
    assert crps_quantiles(y, np.repeat(y[:, None], 3, axis=1), taus) == 0.0
