"""Split, evaluation alignment, artifacts, the promotion gate and MLflow records."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fakes.calendar_days import weekdays
from hypothesis import given, settings
from hypothesis import strategies as st

from kronos.models.artifacts import gate, latest_artifact, load_promoted, promote, write_artifact
from kronos.models.base import ForecastError, forecast_frame
from kronos.models.baselines import EwmaNormal
from kronos.models.evaluation import realized, score, with_realized
from kronos.models.split import train_valid_split
from kronos.models.training import train_and_gate


def _panel(n_symbols: int = 3, n_days: int = 900, seed: int = 0, scale=None) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    days = weekdays(date(2015, 1, 5), n_days)
    frames = []
    for i in range(n_symbols):
        sd = 0.01 * (1 + i) if scale is None else scale
        frames.append(
            pl.DataFrame({"symbol": f"S{i}", "ts": days, "y": rng.standard_t(5, n_days) * sd})
        )
    return pl.concat(frames)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 2000), frac=st.floats(0.05, 0.5), days=st.integers(30, 800))
def test_split_is_time_ordered_and_holds_out_the_larger_share(n, frac, days):
    panel = pl.DataFrame({"symbol": "A", "ts": weekdays(date(2000, 1, 3), n), "y": 0.0})
    train, valid = train_valid_split(panel, valid_days=days, valid_frac=frac)
    assert train.height + valid.height == n
    if train.height:
        assert train["ts"].max() < valid["ts"].min()
    last = panel["ts"].max()
    in_window = panel.filter(pl.col("ts") > last - timedelta(days=days)).height
    assert valid.height == max(in_window, int(np.ceil(n * frac)))


def test_realized_aligns_by_position_not_calendar():
    days = [date(2020, 12, 23), date(2020, 12, 24), date(2020, 12, 28), date(2020, 12, 29)]
    panel = pl.DataFrame({"symbol": "A", "ts": days, "y": [0.1, 0.2, 0.3, 0.4]})
    got = realized(panel, horizon=2).sort("asof", "step")
    # step 2 from Dec 23 is the second bar after it (Dec 28), skipping the Christmas holiday
    assert got.filter(pl.col("asof") == date(2020, 12, 23))["y_true"].to_list() == [0.2, 0.3]
    assert got.height == 5  # 3 origins x step 1 + 2 origins x step 2


def test_score_matches_hand_computation():
    panel = pl.DataFrame({"symbol": "A", "ts": weekdays(date(2020, 1, 6), 2), "y": [0.0, 0.02]})
    q = np.array([[[-0.01, 0.0, 0.01]]])  # one symbol, one step
    scored = with_realized(forecast_frame(["A"], date(2020, 1, 6), q, "m", "v"), panel)
    got = score(scored)
    # y = 0.02 above p95: coverage 0; MAE |0.02 - 0| = 0.02; pinball: 0.05*0.03,
    # 0.5*0.02, 0.95*0.01; CRPS = mean(2 x pinball) = 2*(0.0015+0.01+0.0095)/3 = 0.014
    assert got["coverage"] == 0.0
    assert got["mae"] == pytest.approx(0.02, rel=1e-12)
    assert got["crps"] == pytest.approx(0.014, rel=1e-12)


class _ShiftedEwma(EwmaNormal):
    """An EWMA whose every quantile is moved up by 5%: a model that must lose."""

    def predict_origins(self, panel, origins, symbols=None):
        out = super().predict_origins(panel, origins, symbols)
        return out.with_columns(pl.col(c) + 0.05 for c in ("p05", "p50", "p95"))


def test_gate_refuses_a_worse_model_and_latest_stays(tmp_path: Path):
    panel = _panel()
    first = train_and_gate(EwmaNormal(), panel, model_dir=tmp_path, baseline="ewma")
    assert first.decision.promoted  # equal CRPS passes "not worse"
    assert latest_artifact(tmp_path, "ewma") == first.run_dir
    worse = train_and_gate(_ShiftedEwma(), panel, model_dir=tmp_path, baseline="ewma")
    assert not worse.decision.promoted
    assert worse.metrics["crps"] > worse.baseline_metrics["crps"]
    assert latest_artifact(tmp_path, "ewma") == first.run_dir  # latest stays
    assert worse.run_dir.exists() and worse.run_dir != first.run_dir  # kept for inspection
    metrics = json.loads((worse.run_dir / "METRICS.json").read_text())
    assert metrics["promotion"]["promoted"] is False
    assert sorted(p.name for p in first.run_dir.iterdir()) == [
        "CALIBRATION_START.json",
        "METRICS.json",
        "VERSION",
        "config.json",
        "scaler.pkl",
        "state.pt",
    ]


def test_gate_decision_arithmetic():
    assert gate(1.0, 1.0, baseline="ewma").promoted
    assert not gate(1.0001, 1.0, baseline="ewma").promoted
    assert gate(1.009, 1.0, baseline="ewma", tolerance=0.01).promoted


def test_interrupted_write_never_moves_latest(tmp_path: Path):
    panel = _panel()
    model = EwmaNormal().fit(panel)
    run = write_artifact(model, tmp_path, {"crps": 1.0})
    promote(run)

    class Boom(EwmaNormal):
        def save(self, directory: Path) -> None:
            (directory / "state.pt").write_bytes(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_artifact(Boom().fit(panel), tmp_path, {"crps": 0.5})
    assert latest_artifact(tmp_path, "ewma") == run
    assert [
        p.name for p in (tmp_path / "kronos-ewma").iterdir() if p.name.endswith(".partial")
    ] == []
    with pytest.raises(ForecastError, match="missing"):
        promote(tmp_path / "kronos-ewma" / "nothing")


def test_load_promoted_or_fallback(tmp_path: Path):
    panel = _panel()
    with pytest.raises(ForecastError, match="no promoted ewma artifact"):
        load_promoted(tmp_path, "ewma")
    fallback = load_promoted(tmp_path, "ewma", fallback=lambda: EwmaNormal().fit(panel))
    assert fallback.source == "fallback" and "on the fly" in fallback.message
    model = EwmaNormal().fit(panel)
    promote(write_artifact(model, tmp_path, {}))
    loaded = load_promoted(tmp_path, "ewma", fallback=lambda: pytest.fail("must not refit"))
    assert loaded.source == "artifact"
    asof = panel["ts"].max()
    assert loaded.forecaster.predict(panel, asof).equals(model.predict(panel, asof))
