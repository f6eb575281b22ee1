"""The online calibrator: bounds, guards, backoff, shrinkage, repair, persistence."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kronos.calibration import OnlineCalibrator, apply_params, replay
from kronos.config import CalibrationSettings
from kronos.errors import InputError
from kronos.models.base import forecast_frame
from kronos.models.evaluation import score, with_realized

S = CalibrationSettings()

finite = st.floats(-0.5, 0.5, allow_nan=False)
width = st.floats(1e-4, 0.2, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    nights=st.lists(
        st.tuples(finite, width, width, st.one_of(finite, st.just(np.nan))), min_size=1, max_size=60
    )
)
def test_clamps_and_bounds_hold_for_any_input(nights):
    cal = OnlineCalibrator(["A", "B"], {"A": "X", "B": "X"}, S)
    for p50, lo_w, hi_w, y in nights:
        p = np.array([p50, -p50])
        cal.update(p - lo_w, p, p + hi_w, np.array([y, -y if np.isfinite(y) else y]))
        assert np.all(np.abs(cal.bias_) <= S.calibration_bias_clamp + 1e-15)
        assert np.all(
            (cal.scale_ >= S.calibration_scale_min - 1e-12)
            & (cal.scale_ <= S.calibration_scale_max + 1e-12)
        )
    lo, mid, hi = cal.apply_arrays(np.array([-0.02, -0.02]), np.zeros(2), np.array([0.03, 0.03]))
    assert np.all(lo <= mid) and np.all(mid <= hi)  # application never crosses quantiles


def test_application_formula():
    cal = OnlineCalibrator(["A"], {"A": "X"}, S)
    cal.n_[:] = 100
    cal.bias_[0], cal.scale_[0] = 0.001, 1.5
    lo, mid, hi = cal.apply_arrays(np.array([-0.02]), np.array([0.0]), np.array([0.01]))
    # p50' = 0 + 0.001; p05' = p50' - 0.02 * 1.5; p95' = p50' + 0.01 * 1.5 (hand arithmetic)
    assert (lo[0], mid[0], hi[0]) == pytest.approx((-0.029, 0.001, 0.016), abs=1e-15)


def test_one_update_matches_hand_computation():
    cal = OnlineCalibrator(["A"], {"A": "X"}, S)
    cal.update(np.array([-0.02]), np.array([0.0]), np.array([0.02]), np.array([0.01]))
    # bias: 0.98 * 0 + 0.02 * 0.01 = 2e-4; inside the interval: log s -= 0.05 * 0.10
    assert cal.bias_[0] == pytest.approx(2e-4, rel=1e-12)
    assert cal.scale_[0] == pytest.approx(np.exp(-0.005), rel=1e-12)
    assert cal.n_.tolist() == [1, 1, 1]  # symbol, sector X, global


def test_guards_skip_big_returns_and_big_residuals():
    cal = OnlineCalibrator(["A", "B", "C"], {}, S)
    p05, p50, p95 = np.full(3, -0.02), np.zeros(3), np.full(3, 0.02)
    # sigma = 0.04 / 3.29 = 0.01216; 4 sigma = 0.0486
    report = cal.update(p05, p50, p95, np.array([0.11, 0.06, 0.01]))
    assert (report.used, report.skipped_return, report.skipped_residual) == (1, 1, 1)
    assert cal.n_[:3].tolist() == [0, 0, 1]
    # the guarded nights leave bias and residual variance alone ...
    assert cal.bias_[:2].tolist() == [0.0, 0.0]
    assert np.isnan(cal.resid_var_[:2]).all() and cal.resid_var_[2] > 0
    # ... but they are misses, and the scale counts them: log s += 0.05 * 0.90
    assert cal.scale_[:3] == pytest.approx(
        [np.exp(0.045), np.exp(0.045), np.exp(-0.005)], rel=1e-12
    )
    # the global state: mean miss 2/3, mean residual of the one accepted night
    assert cal.scale_[-1] == pytest.approx(np.exp(0.05 * (2 / 3 - 0.10)), rel=1e-12)
    assert cal.bias_[-1] == pytest.approx(0.02 * 0.01, rel=1e-12)


def test_new_symbols_borrow_sector_then_global():
    syms = ["A", "B", "C", "D"]
    cal = OnlineCalibrator(syms, {"A": "Tech", "B": "Tech", "C": "Tech", "D": "Energy"}, S)
    n = len(syms)
    cal.bias_[:n] = [0.001, 0.002, 0.003, 0.004]
    cal.n_[:n] = [25, 5, 5, 5]
    tech, energy, glob = (
        n + cal.sector_names.index("Tech"),
        n + cal.sector_names.index("Energy"),
        -1,
    )
    cal.bias_[[tech, energy, glob]] = [-0.001, -0.002, -0.003]
    cal.n_[[tech, energy, glob]] = [30, 10, 40]
    bias, _ = cal.effective()
    # A has 25 own nights; B, C borrow Tech (30 nights); D's Energy has 10 -> global
    assert bias.tolist() == [0.001, -0.001, -0.001, -0.003]


def _simulated(n_days: int = 700, sigma: float = 0.01, seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    days, d = [], date(2018, 1, 1)
    while len(days) < n_days:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return pl.concat(
        pl.DataFrame({"symbol": s, "ts": days, "y": rng.normal(0, sigma, n_days)})
        for s in ("A", "B", "C", "D")
    )


def _constant_forecasts(panel: pl.DataFrame, half_width: float, shift: float = 0.0):
    origins = sorted(panel["ts"].unique().to_list())[:-1]
    q = np.tile(np.array([shift - half_width, shift, shift + half_width]), (4, 5, 1))
    return pl.concat(forecast_frame(["A", "B", "C", "D"], o, q, "m", "v") for o in origins)


@pytest.mark.parametrize(
    ("half_width", "shift"), [(0.6 * 1.645 * 0.01, 0.0), (1.645 * 0.01, 0.003)]
)
def test_replay_repairs_coverage_without_look_ahead(half_width, shift):
    """Reference: N(0, 1%) returns; a correct 90% interval is +/-1.645%."""
    panel = _simulated()
    raw = _constant_forecasts(panel, half_width, shift)
    params = replay(raw, panel, OnlineCalibrator(["A", "B", "C", "D"], {}, S))
    calibrated = apply_params(raw, params)
    late = pl.col("asof") >= panel["ts"].unique().sort()[300]
    before = score(with_realized(raw.filter(late), panel))
    after = score(with_realized(calibrated.filter(late), panel))
    assert abs(after["coverage"] - 0.90) < abs(before["coverage"] - 0.90)
    assert 0.86 <= after["coverage"] <= 0.94
    assert after["crps"] < before["crps"]
    # no look-ahead: the calibration in force at an origin ignores every later return
    cut = panel["ts"].unique().sort()[200]
    changed = panel.with_columns(
        y=pl.when(pl.col("ts") > cut).then(pl.col("y") * 5).otherwise(pl.col("y"))
    )
    again = replay(raw, changed, OnlineCalibrator(["A", "B", "C", "D"], {}, S))
    up_to = pl.col("asof") <= cut
    assert again.filter(up_to).equals(params.filter(up_to))


def test_json_round_trip(tmp_path: Path):
    cal = OnlineCalibrator(["A", "B"], {"A": "Tech", "B": None}, S)
    rng = np.random.default_rng(0)
    for _ in range(30):
        cal.update(np.full(2, -0.02), np.zeros(2), np.full(2, 0.02), rng.normal(0, 0.015, 2))
    doc = json.loads(json.dumps(cal.to_json("m", date(2020, 1, 2))))
    back, model, day = OnlineCalibrator.from_json(doc, S)
    assert (model, day) == ("m", date(2020, 1, 2))
    for attr in ("bias_", "scale_", "n_"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(cal, attr))
    with pytest.raises(InputError, match="lacks 'states'"):
        OnlineCalibrator.from_json({"model": "m", "asof": "2020-01-02", "sectors": {}}, S)
