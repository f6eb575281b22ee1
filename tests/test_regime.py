"""Regime features, the S4D regime encoder, and the calibrator's dynamic lambda."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kronos.bench.calibration import DYNAMIC_VARIANTS, run_calibration_bench
from kronos.calibration import OnlineCalibrator, dynamic_lambda
from kronos.config import CalibrationSettings, DataSettings
from kronos.data import readers
from kronos.data.store import Store
from kronos.features.regime import (
    PROBABILITY_COLUMNS,
    forward_vol,
    latest_regime,
    market_features,
    regime_rows,
    write_regime,
)
from kronos.features.returns import returns_panel
from kronos.models.base import ForecastError, TrainingConfig
from kronos.models.baselines import EwmaNormal
from kronos.models.regime import (
    RegimeEncoder,
    label_split,
    load_promoted_regime,
    train_regime,
)
from kronos.nightly import nightly_calibrate, refresh_regime

# The FFT convolution is causal in exact arithmetic; in float64 later inputs can
# reach earlier outputs only through round-off, measured at ~1e-16.
FFT_ROUND_OFF = 1e-12
VOLS = np.array([0.006, 0.012, 0.03])  # daily vol of the calm, normal, turbulent states


def regime_panel(n_days: int = 900, n_symbols: int = 6, seed: int = 0) -> pl.DataFrame:
    """Returns whose volatility follows a persistent three-state Markov chain (synthetic)."""
    rng = np.random.default_rng(seed)
    states, state = [], 0
    for _ in range(n_days):
        if rng.random() < 0.02:
            state = int(rng.integers(3))
        states.append(state)
    vol = VOLS[states]
    market = rng.standard_normal(n_days) * vol
    y = 0.7 * market[:, None] + 0.7 * rng.standard_normal((n_days, n_symbols)) * vol[:, None]
    ts = pl.date_range(date(2016, 1, 4), date(2030, 1, 1), "1d", eager=True)
    ts = ts.filter(ts.dt.weekday() <= 5).head(n_days)
    return pl.DataFrame(
        {
            "symbol": np.repeat([f"S{i}" for i in range(n_symbols)], n_days),
            "ts": pl.concat([ts] * n_symbols),
            "y": y.T.ravel(),
        }
    )


def tiny(valid_days: int = 180, epochs: int = 25) -> RegimeEncoder:
    training = TrainingConfig(
        max_epochs=epochs, patience=10, scheduler_patience=5, learning_rate=1e-2
    )
    return RegimeEncoder(d_model=8, d_state=8, n_layers=1, valid_days=valid_days, training=training)


def altered_after(panel: pl.DataFrame, cut: date, seed: int = 1) -> pl.DataFrame:
    """The panel with every return after ``cut`` replaced by a wilder one."""
    rng = np.random.default_rng(seed)
    later = pl.col("ts") > cut
    noise = pl.Series(rng.standard_normal(panel.height) * 0.05)
    return panel.with_columns(pl.when(later).then(noise).otherwise(pl.col("y")).alias("y"))


@pytest.fixture(scope="module")
def panel() -> pl.DataFrame:
    return regime_panel()


@pytest.fixture(scope="module")
def fitted(panel) -> RegimeEncoder:
    return tiny().fit(market_features(panel))


# ---------------------------------------------------------------- features


def test_features_of_a_day_use_no_later_returns(panel):
    full = market_features(panel)
    for cut in full["ts"].gather([70, 300, 650]).to_list():
        changed = market_features(altered_after(panel, cut))
        assert_frame_equal(
            full.filter(pl.col("ts") <= cut), changed.filter(pl.col("ts") <= cut), check_exact=True
        )
        assert not full.filter(pl.col("ts") > cut).equals(changed.filter(pl.col("ts") > cut))
        # and the same as computing from the truncated panel
        truncated = market_features(panel.filter(pl.col("ts") <= cut))
        assert_frame_equal(full.filter(pl.col("ts") <= cut), truncated, check_exact=True)


def test_features_by_hand():
    ts = pl.date_range(date(2020, 1, 1), date(2020, 3, 31), "1d", eager=True).head(60)
    r = np.linspace(-0.02, 0.03, 60)
    same = pl.DataFrame(
        {"symbol": ["A"] * 60 + ["B"] * 60, "ts": pl.concat([ts, ts]), "y": np.concatenate([r, r])}
    )
    f = market_features(same)
    # identical names: the index is each name, dispersion 0, correlation 1
    assert f["index_ret"].to_numpy() == pytest.approx(r, abs=1e-15)
    assert f["dispersion"].to_numpy() == pytest.approx(0.0, abs=1e-15)
    assert f["correlation"][19:].to_numpy() == pytest.approx(1.0, rel=1e-12)
    assert f["rv_5"][:4].is_null().all() and f["rv_60"][:59].is_null().all()
    # rv_5 of session 10: sqrt(mean(r[6..10]^2)); drawdown: exp(cum - running max) - 1
    assert f["rv_5"][10] == pytest.approx(np.sqrt(np.mean(r[6:11] ** 2)), rel=1e-12)
    cum = np.cumsum(r)
    drawdown = np.exp(cum - np.maximum.accumulate(np.maximum(cum, 0))) - 1
    assert f["drawdown"].to_numpy() == pytest.approx(drawdown, abs=1e-12)
    # the label: the next 5 sessions' realized vol, unknown for the last 5
    label = forward_vol(f, 5)
    assert label[10] == pytest.approx(np.sqrt(np.mean(r[11:16] ** 2)), rel=1e-12)
    assert label[-5:].is_null().all() and label[-6] is not None


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(20, 400),
    horizon=st.integers(1, 10),
    valid_days=st.integers(0, 200),
)
def test_no_training_label_reads_the_validation_period(n, horizon, valid_days):
    ts = [date(2020, 1, 1) + timedelta(days=i + i // 5 * 2) for i in range(n)]
    labelled = np.arange(max(n - horizon, 0))
    train, valid, first_valid = label_split(ts, labelled, valid_days, horizon)
    assert not set(train) & set(valid)
    assert np.all(train + horizon < first_valid)  # purge: label windows end before validation
    assert np.all(valid >= first_valid) and np.all(valid + horizon <= n - 1)
    if len(valid):
        assert ts[valid[0]] > ts[labelled[-1]] - timedelta(days=valid_days)


# ---------------------------------------------------------------- the encoder


def test_encoder_output_of_a_day_depends_on_no_later_data(panel, fitted):
    full = fitted.predict_proba(market_features(panel))
    for cut in full["ts"].gather([0, 250, 700]).to_list():
        changed = fitted.predict_proba(market_features(altered_after(panel, cut)))
        before = full.filter(pl.col("ts") <= cut).select(PROBABILITY_COLUMNS).to_numpy()
        after = changed.filter(pl.col("ts") <= cut).select(PROBABILITY_COLUMNS).to_numpy()
        assert np.abs(before - after).max() <= FFT_ROUND_OFF
        later = full.filter(pl.col("ts") > cut).select(PROBABILITY_COLUMNS).to_numpy()
        later_changed = changed.filter(pl.col("ts") > cut).select(PROBABILITY_COLUMNS).to_numpy()
        assert np.abs(later - later_changed).max() > 1e-3  # the test can see a change
    total = full.select(pl.sum_horizontal(PROBABILITY_COLUMNS).alias("total"))["total"]
    assert total.to_numpy() == pytest.approx(1.0, abs=1e-12)


def test_fit_sees_nothing_after_its_cutoff(panel):
    features = market_features(panel)
    cut = features["ts"][600]
    a = tiny(epochs=8).fit(features, cut)
    b = tiny(epochs=8).fit(market_features(altered_after(panel, cut)), cut)
    assert a.trained_until_ == b.trained_until_ == cut
    np.testing.assert_array_equal(a.thresholds_, b.thresholds_)
    assert a.version.split("-")[1] == b.version.split("-")[1]  # hash of weights and thresholds
    assert_frame_equal(a.predict_proba(features), b.predict_proba(features))


def test_encoder_learns_the_volatility_states(fitted):
    m = fitted.metrics_
    # uniform guessing scores ln 3 = 1.0986; the persistence baseline is the bar to promote
    assert m["valid_log_loss"] < m["uniform_log_loss"]
    assert 0 < fitted.fit_info_["best_epoch"] < fitted.fit_info_["epochs"]


def test_training_stops_by_the_patience_rule_and_keeps_the_best_epoch(fitted):
    """Lightning's EarlyStopping and ModelCheckpoint: the rule of the hand-written loop."""
    losses = [row["valid_loss"] for row in fitted.history_]
    best, patience = fitted.fit_info_["best_epoch"], fitted.training.patience
    assert best == int(np.argmin(losses))  # strict improvements only: the first of ties
    assert len(losses) < fitted.training.max_epochs  # the tiny fit stops early...
    assert len(losses) - 1 - best == patience  # ...after `patience` epochs without improving
    assert all(losses[i] >= losses[best] for i in range(best + 1, len(losses)))


def test_artifact_round_trip_gives_identical_outputs(panel, fitted, tmp_path):
    features = market_features(panel)
    outcome = train_regime(tiny(epochs=5), features, model_dir=tmp_path)
    run_dir = outcome.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "METRICS.json",
        "VERSION",
        "config.json",
        "scaler.pkl",
        "state.pt",
    ]
    metrics = json.loads((run_dir / "METRICS.json").read_text())
    assert metrics["promotion"]["promoted"] == outcome.promoted
    assert (run_dir / "VERSION").read_text().strip() == outcome.encoder.version
    fitted.save(tmp_path / "direct")
    loaded = RegimeEncoder.load(tmp_path / "direct")
    assert loaded.version == fitted.version
    assert loaded.get_config() == fitted.get_config()
    assert_frame_equal(loaded.predict_proba(features), fitted.predict_proba(features))
    assert_frame_equal(loaded.embed(features), fitted.embed(features))
    if outcome.promoted:
        promoted = load_promoted_regime(tmp_path)
        assert_frame_equal(
            promoted.predict_proba(features), outcome.encoder.predict_proba(features)
        )
    config = json.loads((tmp_path / "direct" / "config.json").read_text())
    (tmp_path / "direct" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ForecastError, match="format_version"):
        RegimeEncoder.load(tmp_path / "direct")


# ---------------------------------------------------------------- the store


def test_stored_regime_is_point_in_time_and_append_only(store, panel, fitted):
    probs = fitted.predict_proba(market_features(panel))
    days = probs["ts"].to_list()
    old = regime_rows(probs.head(300), "regime", "v1", days[100])
    assert write_regime(store, old) == 300
    assert write_regime(store, old) == 0  # nothing new
    new = regime_rows(probs, "regime", "v2", days[400])
    assert write_regime(store, new) == len(days)
    # before v2's training cutoff only v1 is known, and only sessions up to asof
    seen = readers.regime_features(store, days[250], settings=DataSettings())
    assert set(seen["version"]) == {"v1"} and seen["ts"].max() == days[250]
    seen = readers.regime_features(store, days[500], settings=DataSettings())
    assert set(seen["version"]) == {"v2"} and seen["ts"].max() == days[500]
    assert readers.regime_features(
        store, days[50], settings=DataSettings()
    ).is_empty()  # v1 trained after day 50
    # stored rows are not rewritten, even with other values
    shifted = new.with_columns(pl.col("p_turbulent") * 0 + 0.5)
    assert write_regime(store, shifted) == 0
    reading = latest_regime(store, days[500], settings=DataSettings())
    assert reading.ts == days[500] and reading.version == "v2"
    assert reading.p_turbulent == pytest.approx(probs["p_turbulent"][500], abs=0)
    assert (
        latest_regime(store, days[-1] + timedelta(days=30), settings=DataSettings()) is None
    )  # stale: unknown


# ---------------------------------------------------------------- dynamic lambda


DYN = CalibrationSettings(calibration_dynamic_lambda=True)
DYN_GAIN = CalibrationSettings(calibration_dynamic_lambda=True, calibration_dynamic_gain=True)


def test_dynamic_lambda_mapping():
    lam, turb = DYN.calibration_lambda, DYN.calibration_lambda_turbulent
    assert (lam, turb) == (0.02, 0.06)
    assert dynamic_lambda(0.0, DYN) == lam and dynamic_lambda(1.0, DYN) == turb
    assert dynamic_lambda(0.5, DYN) == pytest.approx(0.04, abs=1e-15)
    assert dynamic_lambda(-1.0, DYN) == lam and dynamic_lambda(2.0, DYN) == turb  # clipped


def _night(cal: OnlineCalibrator, y: np.ndarray, p: float | None, sigma: float = 0.01) -> None:
    z = 1.6448536269514722 * sigma
    zero = np.zeros_like(y)
    cal.update(zero - z, zero, zero + z, y, p)


def test_default_path_ignores_the_regime():
    rng = np.random.default_rng(3)
    fixed, given_p, dyn_no_p = (
        OnlineCalibrator(["A", "B"], {"A": "X", "B": "X"}, s)
        for s in (CalibrationSettings(), CalibrationSettings(), DYN)
    )
    for _ in range(50):
        y = rng.standard_normal(2) * 0.01
        _night(fixed, y, None)
        _night(given_p, y, 0.9)  # dynamic lambda off: p is ignored
        _night(dyn_no_p, y, None)  # dynamic lambda on, no regime: the fixed lambda
    for other in (given_p, dyn_no_p):
        assert np.array_equal(fixed.bias_, other.bias_)
        assert np.array_equal(fixed.scale_, other.scale_)


def test_dynamic_lambda_adapts_faster_after_a_shift_closed_form():
    """A constant residual: the EWMA bias after n nights is r (1 - (1 - lambda)^n)."""
    r, n = 0.002, 20
    biases = {}
    for name, s in (("fixed", CalibrationSettings()), ("dynamic", DYN)):
        cal = OnlineCalibrator(["A"], {"A": "X"}, s)
        for _ in range(n):
            _night(cal, np.array([r]), 1.0)
        biases[name] = cal.bias_[0]
    assert biases["fixed"] == pytest.approx(r * (1 - 0.98**n), rel=1e-12)
    assert biases["dynamic"] == pytest.approx(r * (1 - 0.94**n), rel=1e-12)
    # the interval scale: every night a miss, log s grows by gain x 0.9 per night
    scales = {}
    for name, s in (("fixed", CalibrationSettings()), ("dynamic_gain", DYN_GAIN), ("dyn", DYN)):
        cal = OnlineCalibrator(["A", "B"], {"A": "X", "B": "X"}, s)
        for _ in range(4):  # 4 nights: the dynamic gain stays under the 1.8 clamp
            _night(cal, np.array([0.03, -0.03]), 1.0)
        scales[name] = cal.scale_[0]
    assert scales["fixed"] == pytest.approx(np.exp(4 * 0.05 * 0.9), rel=1e-12)
    assert scales["dyn"] == scales["fixed"]  # lambda only: the gain is unchanged
    assert scales["dynamic_gain"] == pytest.approx(np.exp(4 * 0.15 * 0.9), rel=1e-12)


def test_dynamic_lambda_tracks_a_noisy_bias_shift_better():
    """Returns' mean jumps from 0 to +0.25% when the regime turns turbulent (synthetic).

    Over the 40 nights after the jump, the mean absolute bias error of the
    dynamic calibrator is at most 70% of the fixed one's (measured 0.53-0.56 with
    seeds 0-7).
    """
    rng = np.random.default_rng(7)
    symbols = [f"S{i}" for i in range(30)]
    cals = {
        name: OnlineCalibrator(symbols, dict.fromkeys(symbols, "X"), s)
        for name, s in (("fixed", CalibrationSettings()), ("dynamic", DYN))
    }
    errors = {name: [] for name in cals}
    for night in range(240):
        shifted = night >= 200
        mean = 0.0025 if shifted else 0.0
        y = mean + rng.standard_normal(len(symbols)) * 0.002
        for name, cal in cals.items():
            _night(cal, y, 1.0 if shifted else 0.0)
            if shifted:
                errors[name].append(np.abs(cal.effective()[0] - mean).mean())
    ratio = np.mean(errors["dynamic"]) / np.mean(errors["fixed"])
    assert ratio <= 0.70


def test_nightly_uses_the_stored_regime_when_enabled(bundled_db: Path, tmp_path: Path):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    nights = {}
    with Store.open(path) as store:
        panel = returns_panel(
            store, date(2020, 3, 6), ["AAPL", "MSFT", "KO", "XOM"], settings=DataSettings()
        )
        days = [date(2020, 3, d) for d in (2, 3, 4)]  # none for the 5th and 6th
        rows = pl.DataFrame({"ts": days, "p_calm": 0.0, "p_normal": 0.0, "p_turbulent": 1.0})
        write_regime(store, regime_rows(rows, "regime", "v1", date(2019, 12, 31)))
        for name, s in (("fixed", CalibrationSettings()), ("dynamic", DYN)):
            nights[name] = nightly_calibrate(
                store,
                f"ewma_{name}",
                date(2020, 3, 6),
                panel,
                lambda: EwmaNormal().fit(panel),
                since=date(2020, 3, 2),
                settings=s,
                data=DataSettings(),
            )
        states = {
            name: store.con.sql(
                'SELECT bias FROM calibration_state WHERE model = ? ORDER BY "asof", scope, key',
                params=[f"ewma_{name}"],
            )
            .pl()["bias"]
            .to_numpy()
            for name in nights
        }
    assert [n.p_turbulent for n in nights["fixed"]] == [None] * 5
    assert [n.p_turbulent for n in nights["dynamic"]] == [1.0, 1.0, 1.0, None, None]
    assert not np.array_equal(states["fixed"], states["dynamic"])


# ---------------------------------------------------------------- bench and command


def test_bench_compares_fixed_and_dynamic_lambda_in_one_run(panel):
    kwargs = {"models": ("ewma",), "holdout_days": 150, "warmup_days": 150}
    kwargs["settings"] = CalibrationSettings()
    sectors = dict.fromkeys(panel["symbol"].unique().to_list(), "X")
    fixed_only = run_calibration_bench(panel, sectors, dynamic=False, **kwargs)
    both = run_calibration_bench(panel, sectors, regime_encoder=tiny(epochs=5), **kwargs)
    assert "dynamic" not in fixed_only["models"][0] and "regime" not in fixed_only
    for a, b in zip(fixed_only["models"], both["models"], strict=True):
        assert {k: v for k, v in b.items() if k != "dynamic"} == a  # fixed figures unchanged
        assert set(b["dynamic"]) == set(DYNAMIC_VARIANTS)
        for v in b["dynamic"].values():
            assert v["crps_vs_fixed"] == pytest.approx(v["crps"] / a["calibrated_crps"] - 1)
    assert both["regime"]["trained_until"] == both["warmup_start"]
    # conditional calibration (issue 19): terciles, VaR tests, PIT, per step and symbol
    rows = {r["model"]: r for r in fixed_only["models"]}
    for r in rows.values():
        c = r["conditional"]
        assert c["crossed_rows"] == 0 and c["crossed_calibrated"] == 0
        for label in ("raw", "calibrated"):
            block = c[label]
            terciles = block["coverage_by_tercile"]
            assert [t["tercile"] for t in terciles] == ["low", "mid", "high"]
            pooled = sum(t["n"] * t["coverage"] for t in terciles) / sum(t["n"] for t in terciles)
            assert pooled == pytest.approx(r[f"{label}_coverage"], abs=1e-12)
            assert sum(b["share"] for b in block["pit_histogram"]) == pytest.approx(1.0)
            assert set(block["per_step"]) == {"1", "2", "3", "4", "5"}
            assert len(block["per_symbol"]) == panel["symbol"].n_unique()
            assert set(block["var_tests"]) == {"p05", "p95"}
    narrow = rows["ewma_narrow40"]["conditional"]["raw"]["var_tests"]
    assert narrow["p05"]["rate"] > 0.1 and narrow["p05"]["pvalue"] < 1e-3
    from rich.console import Console

    from kronos.cli.bench_tables import conditional_table  # of `kronos bench calibration`

    console = Console(record=True, width=250)
    console.print(conditional_table(fixed_only))
    text = console.export_text()
    assert "cov high vol" in text and "ewma_narrow40" in text
    assert 0.02 <= both["regime"]["holdout"]["mean_lambda"] <= 0.06


def test_command_writes_the_promoted_encoders_features(bundled_db: Path, tmp_path: Path):
    db = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, db)
    with Store.open(db, read_only=True) as store:
        features = market_features(
            returns_panel(
                store, date(2010, 12, 31), source="skfolio.sp500", settings=DataSettings()
            )
        )
    encoder = tiny(epochs=3, valid_days=0)
    train_regime(encoder, features, model_dir=tmp_path / "models")  # no validation: promoted
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kronos",
            "train",
            "regime",
            "--features-only",
            "--json",
            "--db",
            str(db),
            "--model-dir",
            str(tmp_path / "models"),
            "--asof",
            "2011-06-30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["features_version"] == encoder.version
    assert result["latest"]["ts"] == "2011-06-30"
    with Store.open(db, read_only=True) as store:
        stored = readers.regime_features(store, date(2011, 6, 30), settings=DataSettings())
    assert stored.height == result["rows_written"]
    assert stored["trained_until"].unique().to_list() == [date(2010, 12, 31)]
    # what the nightly job runs before calibrating: a second refresh adds nothing,
    # a later night adds its sessions, and without a promoted encoder nothing happens
    with Store.open(db) as store:
        again = refresh_regime(
            store, tmp_path / "models", date(2011, 6, 30), settings=DataSettings()
        )
        later = refresh_regime(
            store, tmp_path / "models", date(2011, 7, 8), settings=DataSettings()
        )
        assert (
            refresh_regime(store, tmp_path / "empty", date(2011, 7, 8), settings=DataSettings())
            is None
        )
    assert again is not None and again[0].version == encoder.version and again[1] == 0
    assert later is not None and later[1] == 5  # July 1, 5, 6, 7, 8
