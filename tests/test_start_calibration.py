"""Starting calibration: the conformal fit, the relative clamp, old artifacts, and promotion."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kronos.calibration import OnlineCalibrator, load_calibrator, replay
from kronos.config import CalibrationSettings
from kronos.errors import InputError
from kronos.models.base import forecast_frame
from kronos.models.start_calibration import (
    START_FILE,
    StartCalibration,
    conformity_scores,
    fit_start,
    read_start,
    write_start,
)

S = CalibrationSettings()
SYMBOLS = ["A", "B", "C", "D"]
SECTORS = {"A": "X", "B": "X", "C": "Y", "D": None}
Z90 = 1.6448536269514722  # the standard normal's 95% quantile


def _weekdays(n: int, first: date = date(2020, 1, 1)) -> list[date]:
    days, d = [], first
    while len(days) < n:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


def _wide_forecasts(n: int, widen: float, seed: int = 0) -> pl.DataFrame:
    """N(0, sigma_i) outcomes with sigma varying per row; a band ``widen`` x the true 90% one."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.005, 0.03, n)
    y = rng.normal(0.0, sigma)
    half = widen * Z90 * sigma
    return pl.DataFrame({"p05": -half, "p50": np.zeros(n), "p95": half, "y_true": y})


def test_conformal_scale_of_a_band_40pct_too_wide_is_one_over_1_4():
    """Reference 1/1.4 = 0.714; tolerance 0.02 (about 4 standard errors at n = 20000)."""
    scored = _wide_forecasts(20_000, 1.4)
    start = fit_start(scored)
    assert start is not None and start.n == 20_000
    assert start.scale == pytest.approx(1 / 1.4, abs=0.02)
    assert abs(start.bias) < 0.0005  # true median residual 0; its SE here is about 1e-4
    assert start.coverage_before > 0.97  # a 1.4x band covers P(|z| < 2.30) = 98.9%
    # the k-th smallest score, k = ceil((n + 1) 0.9): at least 90% covered on validation
    assert start.rank == math.ceil(20_001 * 0.9)
    assert 0.90 <= start.coverage_after <= 0.90 + 2 / 20_000


def test_conformal_quantile_is_the_finite_sample_one():
    """Ten rows with scores 0.1..1.0: k = ceil(11 x 0.9) = 10, the largest score."""
    e = np.arange(1, 11) / 10
    scored = pl.DataFrame({"p05": -np.ones(10), "p50": np.zeros(10), "p95": np.ones(10)})
    scored = scored.with_columns(y_true=pl.Series(e * np.where(np.arange(10) % 2, 1, -1)))
    scores = conformity_scores(*(scored[c].to_numpy() for c in ("p05", "p50", "p95", "y_true")), 0)
    assert np.allclose(np.sort(scores), e)
    start = fit_start(scored, min_rows=10)
    assert start is not None and start.rank == 10
    assert start.scale == pytest.approx(1.0 - start.bias, abs=0.051)  # bias: median of +/-e
    assert fit_start(scored, min_rows=11) is None  # too few rows: no start


def test_clamp_is_relative_to_the_start():
    """Started at s0 = 0.7 the scale can reach 0.8 x 0.7 = 0.56 and no lower; bias b0 +/- 0.3%."""
    start = StartCalibration(bias=0.001, scale=0.7, n=1000)
    cal = OnlineCalibrator(["A"], {"A": "X"}, S, start)
    assert cal.effective()[1][0] == 0.7 and cal.effective()[0][0] == 0.001
    band = (np.array([-0.05]), np.array([0.0]), np.array([0.05]))
    low = []
    for _ in range(400):  # every night a hit: the scale shrinks to its floor
        cal.update(*band, np.array([0.02]))
        low.append(cal.scale_.min())
    assert min(low) == pytest.approx(0.56, rel=1e-12)
    assert min(low) > 0.5
    assert cal.bias_.max() == pytest.approx(0.001 + 0.003, rel=1e-12)  # residual 2% pushes up
    for _ in range(400):  # every night a miss (1.5 half-widths out, inside the 4-sigma guard)
        bias, scale = cal.effective()
        cal.update(*band, bias - 1.5 * scale * 0.05)
    assert cal.scale_.max() == pytest.approx(1.26, rel=1e-12)
    assert cal.bias_.min() == pytest.approx(0.001 - 0.003, rel=1e-12)


def _fixed_replay_inputs() -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(19)
    days = _weekdays(260)
    panel = pl.concat(
        pl.DataFrame({"symbol": s, "ts": days, "y": rng.standard_t(4, 260) * 0.01 * (1 + i / 4)})
        for i, s in enumerate(SYMBOLS)
    )
    q = np.tile(np.array([-0.011, 0.0004, 0.012]), (4, 5, 1))
    return panel, pl.concat(forecast_frame(SYMBOLS, o, q, "m", "v") for o in days[:-1])


def test_an_artifact_without_a_start_calibrates_exactly_as_before(store, tmp_path: Path):
    """Reference: the same replay through the calibrator before starting calibrations existed."""
    panel, raw = _fixed_replay_inputs()
    plain = replay(raw, panel, OnlineCalibrator(SYMBOLS, SECTORS, S))
    old_artifact = tmp_path / "run"
    old_artifact.mkdir()
    loaded, night = load_calibrator(store, "m", date(2021, 1, 1), SYMBOLS, SECTORS, S, old_artifact)
    assert night is None and loaded.start is None
    assert loaded.bounds() == (-0.003, 0.003, 0.8, 1.8)
    through_artifact = replay(raw, panel, loaded)
    assert through_artifact.equals(plain)  # bit-identical
    # pinned (rel 1e-12: summation order only) when guarded nights began to count as misses
    # and the gain became 0.05; the equality above is what says "as without a start"
    assert float(plain["bias"].sum()) == pytest.approx(-0.10308385659720322, rel=1e-12)
    assert float(plain["scale"].sum()) == pytest.approx(1714.1383523058585, rel=1e-12)
    last = plain.filter(pl.col("asof") == plain["asof"].max()).sort("symbol")
    assert last["scale"].to_list() == pytest.approx(
        [1.7468019603873144, 1.6450761334882096, 1.7910224625468283, 1.8], rel=1e-12
    )


def test_start_travels_through_the_artifact_and_the_calibration_file(store, tmp_path: Path):
    start = StartCalibration(bias=-0.002, scale=0.75, n=500, valid_start="2020-01-02")
    write_start(tmp_path, start)
    assert read_start(tmp_path) == start
    assert read_start(None) is None and read_start(tmp_path / "none") is None
    cal, _ = load_calibrator(store, "m", date(2021, 1, 1), SYMBOLS, SECTORS, S, tmp_path)
    assert cal.start == start
    assert np.all(cal.effective()[1] == 0.75) and np.all(cal.effective()[0] == -0.002)
    back, _, _ = OnlineCalibrator.from_json(cal.to_json("m", date(2021, 1, 1)), S)
    assert back.start == start and back.bounds() == cal.bounds()
    (tmp_path / START_FILE).write_text(json.dumps({"bias": 0.0, "n": 3}))
    with pytest.raises(InputError, match=f"{START_FILE}: starting calibration lacks 'scale'"):
        read_start(tmp_path)


def _panel(n_symbols: int = 3, n_days: int = 700) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    days = _weekdays(n_days, date(2016, 1, 4))
    return pl.concat(
        pl.DataFrame({"symbol": f"S{i}", "ts": days, "y": rng.standard_t(5, n_days) * 0.01})
        for i in range(n_symbols)
    )


def test_gate_and_publish_writes_the_start(run_settings, tmp_path: Path):
    from kronos.cli.train import gate_and_publish
    from kronos.config import ModelSettings
    from kronos.models.artifacts import latest_artifact
    from kronos.models.baselines import EwmaNormal
    from kronos.tracking import mlflow_run

    with mlflow_run("kronos-test-start", "train-ewma", settings=run_settings) as rec:
        outcome, _ = gate_and_publish(EwmaNormal(), _panel(), tmp_path, ModelSettings(), rec)
    assert latest_artifact(tmp_path, "ewma") == outcome.run_dir
    start = read_start(outcome.run_dir)
    assert start is not None and start.n > 1000  # 3 symbols x ~260 origins x 5 steps
    assert start.valid_start is not None and start.valid_start >= outcome.data_range["train_end"]
    assert 0.5 < start.scale < 2.0 and start.coverage_after >= 0.90
    metrics = json.loads((outcome.run_dir / "METRICS.json").read_text())
    assert metrics["start_calibration"]["scale"] == start.scale
    logged = rec.client.get_run(rec.run_id).data.metrics
    assert logged["start_scale"] == pytest.approx(start.scale)
    assert logged["start_coverage_after"] == pytest.approx(start.coverage_after)


def test_bench_starts_every_calibrator_from_its_validation_fit():
    """A 40%-too-wide EWMA starts at EWMA's scale / 1.4 (exact: every score is scaled alike)."""
    from kronos.bench.calibration import run_calibration_bench

    panel = _panel(3, 1100)
    sectors = {"S0": "X", "S1": "X", "S2": "Y"}
    result = run_calibration_bench(panel, sectors, ("ewma",), settings=S, dynamic=False)
    rows = {r["model"]: r for r in result["models"]}
    ewma = rows["ewma"]["start"]
    assert ewma is not None and ewma["n"] > 1000
    assert ewma["valid_end"] <= result["warmup_start"]  # fitted before the warm-up
    assert rows["ewma_wide40"]["start"]["scale"] == pytest.approx(ewma["scale"] / 1.4, rel=1e-9)
    assert rows["ewma_narrow40"]["start"]["scale"] == pytest.approx(ewma["scale"] / 0.6, rel=1e-9)
    assert rows["ewma_bias50bp"]["start"]["bias"] == pytest.approx(ewma["bias"] - 0.005, abs=1e-12)
    # started from their fits, the distorted forecasts calibrate to EWMA's own coverage
    for name in ("ewma_wide40", "ewma_narrow40", "ewma_bias50bp"):
        assert rows[name]["calibrated_coverage"] == pytest.approx(
            rows["ewma"]["calibrated_coverage"], abs=1e-9
        )
    plain = run_calibration_bench(
        panel, sectors, ("ewma",), settings=S, dynamic=False, starting=False
    )
    assert all(r["start"] is None for r in plain["models"])


def test_step_factors_fit_each_steps_band():
    """Step h's band is 1.4 / (1 + 0.2 (h - 1)) x the true 90% band.

    Reference: step h's own conformal scale, ``scale x factor_h``, is ``(1 + 0.2 (h - 1)) / 1.4``;
    relative tolerance 0.03 (about 4 standard errors at n = 20,000 per step, as above).
    """
    frames = []
    for h in range(1, 6):
        f = _wide_forecasts(20_000, 1.4 / (1 + 0.2 * (h - 1)), seed=h)
        frames.append(f.with_columns(step=pl.lit(h, pl.Int32)))
    start = fit_start(pl.concat(frames))
    assert start is not None and start.step_factors is not None
    own = start.scale * np.array(start.step_factors)
    np.testing.assert_allclose(own, (1 + 0.2 * np.arange(5)) / 1.4, rtol=0.03)
    # every step is covered about 90% on validation by its own scale
    assert 0.899 <= start.coverage_after <= 0.902
    # the calibrator applies s0 x factor_h (x the nightly state's relative factor, 1 at start)
    cal = OnlineCalibrator(["A"], {"A": "X"}, S, start)
    frame = pl.DataFrame(
        {"symbol": ["A"] * 5, "step": list(range(1, 6)), "p05": -1.0, "p50": 0.0, "p95": 1.0}
    )
    out = cal.apply(frame)
    np.testing.assert_allclose(
        out["p95"].to_numpy() - out["p50"].to_numpy(),
        start.scale * np.array(start.step_factors),
        rtol=1e-12,
    )
    # the nightly update judges step 1's band: s0 x factor_1
    _, mid, hi = cal.apply_arrays(np.array([-1.0]), np.array([0.0]), np.array([1.0]))
    assert hi[0] - mid[0] == pytest.approx(start.scale * start.step_factors[0], rel=1e-12)


def test_a_start_without_step_factors_scales_every_step_alike():
    """Files written before step factors existed: one scale for all steps, as before."""
    document = {"bias": 0.0, "scale": 0.8, "n": 100}
    start = StartCalibration.from_dict(document, "old file")
    assert start.step_factors is None
    cal = OnlineCalibrator(["A"], {"A": "X"}, S, start)
    frame = pl.DataFrame(
        {"symbol": ["A"] * 5, "step": list(range(1, 6)), "p05": -1.0, "p50": 0.0, "p95": 1.0}
    )
    assert cal.apply(frame)["p95"].to_list() == [0.8] * 5
    with pytest.raises(InputError, match="step_factors"):
        StartCalibration.from_dict({**document, "step_factors": [1.0, -2.0]}, "bad file")
