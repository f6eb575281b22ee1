"""Foundation models: local weights only, honest p05/p95, Fracast-0 end to end."""

from __future__ import annotations

from datetime import date, timedelta
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
from scipy import stats

from kronos.models import registry
from kronos.models.base import ForecastError
from kronos.models.contract import check_forecaster
from kronos.models.foundation import GAUSSIAN_K, FoundationForecaster, conformal_k

SIGMA = 0.01


class NormalBand:
    """A stand-in checkpoint: N(0, width x SIGMA) at the levels 0.1..0.9."""

    quantiles: ClassVar[list[float]] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

    def __init__(self, width: float) -> None:
        self.z = stats.norm.ppf(self.quantiles) * width * SIGMA

    def forecast_batch(self, context: np.ndarray, *, horizon: int | None = None) -> np.ndarray:
        return np.broadcast_to(self.z, (len(context), horizon or 1, len(self.z))).copy()


def half_width(checkpoint: object) -> NormalBand:
    """A loader: checkpoint -> model."""
    return NormalBand(0.5)


def must_not_load(checkpoint: object) -> NormalBand:
    raise AssertionError("the loader ran for a checkpoint that is not a local directory")


def panel(n_symbols: int, n_sessions: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    days = [date(2015, 1, 1) + timedelta(days=i) for i in range(n_sessions)]
    return pl.DataFrame(
        {
            "symbol": np.repeat([f"S{i}" for i in range(n_symbols)], n_sessions),
            "ts": days * n_symbols,
            "y": rng.normal(0.0, SIGMA, n_symbols * n_sessions),
        }
    ).sort("symbol", "ts")


def test_a_hub_id_is_refused_before_any_loader_runs():
    model = FoundationForecaster(
        loader=f"{__name__}:must_not_load", checkpoint="amazon/chronos-bolt-small"
    )
    with pytest.raises(ForecastError, match="local path only, never downloaded"):
        model.fit(panel(2, 100))


def test_conformal_tails_undo_a_band_that_is_half_too_narrow():
    # the model's 0.1/0.9 band is half the true one: p95 needs k = 2 x z(.95)/z(.9)
    model = FoundationForecaster(
        loader=f"{__name__}:half_width", context_length=8, tail_sessions=600, tail_every=1
    ).fit(panel(4, 700))
    assert model.tails_ == "conformal" and model.tail_cells_ > 10_000
    # reference: the normal ratio, doubled; tolerance 6% (sampling error of a 95% quantile)
    assert model.k_hi_ == pytest.approx(2 * GAUSSIAN_K, rel=0.06)
    assert model.k_lo_ == pytest.approx(2 * GAUSSIAN_K, rel=0.06)


def test_too_few_validation_cells_fall_back_to_the_normal_ratio():
    assert conformal_k(np.ones(50)) is None
    model = FoundationForecaster(
        loader=f"{__name__}:half_width", context_length=8, tail_sessions=12, tail_every=5
    ).fit(panel(1, 60))
    assert model.tails_ == "gaussian" and model.k_hi_ == pytest.approx(1.2835, abs=1e-4)


def test_fracast_zero_shot_saves_loads_and_keeps_the_contract(tmp_path):
    data = panel(3, 420, seed=1)
    model = registry.build("fracast", context_length=64, tail_sessions=120, tail_every=6)
    model.fit(data.filter(pl.col("ts") < date(2015, 12, 1)))
    assert model.tails_ == "conformal" and model.k_hi_ > 0
    origins = [date(2016, 1, 4), date(2016, 1, 20)]
    first = model.predict_origins(data, origins, ["S0", "S2"])
    assert first.height == 2 * 2 * 5 and first["model"].unique().to_list() == ["fracast"]
    assert (first["p05"] < first["p50"]).all() and (first["p50"] < first["p95"]).all()
    model.save(tmp_path)
    again = type(model).load(tmp_path).predict_origins(data, origins, ["S0", "S2"])
    assert again.equals(first)
    check_forecaster(model)  # columns, steps, sorted quantiles and the look-ahead probe
