"""The edge attempts: ``har_gbm`` (global LightGBM quantiles) and ``combination``.

Small seeded panels with volatility clustering (a GARCH(1,1) simulation), so
the tests run in seconds; the leaderboard figures come from ``kronos bench
forecast --holdouts`` (docs/models.md).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest

from kronos.calendar import get_calendar
from kronos.errors import ConfigError
from kronos.models.base import PANEL_SCHEMA, QUANTILES, ForecastError
from kronos.models.baselines import EwmaNormal, ewma_variance
from kronos.models.combination import Combination, simplex_quantile_weights
from kronos.models.contract import check_forecaster
from kronos.models.evaluation import with_realized
from kronos.models.har_features import FEATURES, volatility_features
from kronos.models.har_gbm import HarGbm
from kronos.models.split import train_valid_split

SECTORS = {"S1": "Tech", "S2": "Tech", "S3": "Energy", "S4": None}


def garch_panel(n_sessions: int = 700, seed: int = 3) -> pl.DataFrame:
    """Four symbols of GARCH(1,1) returns (omega 2e-6, alpha 0.08, beta 0.9) on XNYS days."""
    days = get_calendar("XNYS").sessions(date(2015, 1, 2), date(2019, 12, 31))[:n_sessions]
    rng = np.random.default_rng(seed)
    frames = []
    for s in SECTORS:
        var, y = 1e-4, np.empty(n_sessions)
        for t in range(n_sessions):
            y[t] = np.sqrt(var) * rng.standard_normal()
            var = 2e-6 + 0.08 * y[t] ** 2 + 0.9 * var
        frames.append(pl.DataFrame({"symbol": s, "ts": days, "y": y}, schema=PANEL_SCHEMA))
    return pl.concat(frames)


@pytest.fixture(scope="module")
def panel() -> pl.DataFrame:
    return garch_panel()


@pytest.fixture(scope="module")
def fitted_combination(panel) -> tuple[Combination, pl.DataFrame]:
    history = panel.filter(pl.col("ts") < date(2017, 6, 1))
    return Combination(sectors=SECTORS, valid_days=120).fit(history), history


def test_features_use_rows_up_to_the_origin_only(panel):
    full = volatility_features(panel, SECTORS)
    cut_day = full.dates[400]
    cut = volatility_features(panel.filter(pl.col("ts") <= cut_day.astype(object)), SECTORS)
    assert np.array_equal(cut.values, full.values[:401], equal_nan=True)
    assert np.array_equal(cut.sigma, full.sigma[:401], equal_nan=True)


def test_features_match_their_definitions(panel):
    feats = volatility_features(panel, SECTORS)
    t, j = 500, 2  # S3
    y = panel.filter(pl.col("symbol") == "S3")["y"].to_numpy()
    sigma = np.sqrt(ewma_variance(y, 0.94))[t]
    # the scale is exactly EwmaNormal's one-day-ahead sd
    ewma = EwmaNormal().fit(panel).predict(panel, feats.dates[t].astype(object), ["S3"])
    assert ewma["p95"][0] == pytest.approx(1.6448536269514722 * sigma, rel=1e-12)
    col = {name: k for k, name in enumerate(FEATURES)}
    value = feats.values[t, j]
    rv22 = np.sqrt(np.mean(y[t - 21 : t + 1] ** 2))
    assert value[col["rv22"]] == pytest.approx(np.log((rv22 + 1e-5) / (sigma + 1e-5)), abs=1e-12)
    assert value[col["ret5"]] == pytest.approx(y[t - 4 : t + 1].sum() / sigma, abs=1e-12)
    day = panel.filter(pl.col("ts") == feats.dates[t].astype(object))["y"].to_numpy()
    d5 = np.mean(
        [
            np.std(panel.filter(pl.col("ts") == d.astype(object))["y"].to_numpy())
            for d in feats.dates[t - 4 : t + 1]
        ]
    )
    assert value[col["dispersion_vs_own"]] == pytest.approx(
        np.log((d5 + 1e-5) / (sigma + 1e-5)), abs=1e-12
    )
    assert len(day) == 4
    # S4 has no sector: its sector term is missing (LightGBM routes NaN), not invented
    assert np.isnan(feats.values[t, 3, col["sector_rv22"]])
    assert np.isnan(feats.values[100, 0, col["rv250"]])  # window not yet full


def test_har_gbm_passes_the_contract_and_round_trips(panel, tmp_path):
    check_forecaster(HarGbm(valid_days=60))
    history = panel.filter(pl.col("ts") < date(2017, 1, 1))
    model = HarGbm(sectors=SECTORS, valid_days=120).fit(history)
    assert len(model.rounds_) == 3 and all(r >= 1 for r in model.rounds_)
    origins = sorted(panel.filter(pl.col("ts") >= date(2017, 1, 1))["ts"].unique().to_list())[:30]
    batch = model.predict_origins(panel, origins)
    single = model.predict(panel, origins[7], ["S2", "S1"])
    assert single["symbol"].to_list()[:1] == ["S2"]
    same = batch.filter(pl.col("asof") == origins[7]).sort("symbol", "step")
    assert np.array_equal(
        single.sort("symbol", "step").select("p05", "p50", "p95").to_numpy(),
        same.filter(pl.col("symbol").is_in(["S1", "S2"])).select("p05", "p50", "p95").to_numpy(),
    )
    q = batch.select("p05", "p50", "p95").to_numpy()
    assert np.all(np.diff(q, axis=1) >= 0)
    model.save(tmp_path / "har")
    loaded = HarGbm.load(tmp_path / "har")
    assert loaded.version == model.version
    assert loaded.predict_origins(panel, origins).equals(batch)
    with pytest.raises(ForecastError, match="unknown symbols"):
        model.predict(panel, origins[0], ["NOPE"])


def test_simplex_weights_are_the_exact_pinball_optimum():
    rng = np.random.default_rng(7)
    y = rng.standard_normal(2000)
    tau = 0.95
    members = np.column_stack([np.full(2000, 1.0), np.full(2000, 2.5), rng.normal(1.6, 0.3, 2000)])
    w = simplex_quantile_weights(members, y, tau)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)

    def loss(weights: np.ndarray) -> float:
        u = y - members @ weights
        return float(np.mean(np.maximum(tau * u, (tau - 1) * u)))

    # reference: a brute-force grid over the simplex (step 0.01); the LP is at least as good
    grid = [
        np.array([a, b, 1 - a - b])
        for a in np.arange(0, 1.0001, 0.01)
        for b in np.arange(0, 1.0001 - a, 0.01)
    ]
    assert loss(w) <= min(loss(g) for g in grid) + 1e-12


def test_combination_weights_come_from_the_validation_window_only(fitted_combination):
    model, history = fitted_combination
    train, valid = train_valid_split(history, valid_days=120)
    # the weights are reproduced from members fitted on the rows before validation
    members = [model._build(m).fit(train) for m in model.members]
    both = pl.concat([train, valid]).sort("symbol", "ts")
    cells = with_realized(
        model._stack(members, both, sorted(valid["ts"].unique().to_list()), None), both
    )
    for k, col in enumerate(("p05", "p50", "p95")):
        x = np.column_stack([cells[f"{col}_{i}"].to_numpy() for i in range(3)])
        expected = simplex_quantile_weights(x, cells["y_true"].to_numpy(), QUANTILES[k])
        np.testing.assert_allclose(model.weights_[k], expected, atol=1e-12)
    assert np.allclose(model.weights_.sum(axis=1), 1.0) and model.weights_.min() >= 0
    summary = model.fitted_summary()
    assert set(summary["weights"]["p95"]) == {"ewma", "garch", "har_gbm"}
    assert summary["valid_cells"] == cells.height
    # members were then refitted on all of the history
    assert model.members_[1].train_end_.max() == np.datetime64(history["ts"].max(), "D")


def test_combination_forecasts_are_the_weighted_member_quantiles(
    fitted_combination, panel, tmp_path
):
    model, _ = fitted_combination
    origins = sorted(panel.filter(pl.col("ts") >= date(2017, 6, 1))["ts"].unique().to_list())[:20]
    out = model.predict_origins(panel, origins, ["S3", "S1"])
    assert out["symbol"].to_list()[:5] == ["S3"] * 5
    parts = [m.predict_origins(panel, origins, ["S3", "S1"]) for m in model.members_]
    for k, col in enumerate(("p05", "p50", "p95")):
        mixed = sum(w * p[col].to_numpy() for w, p in zip(model.weights_[k], parts, strict=True))
        np.testing.assert_allclose(out[col].to_numpy(), mixed, rtol=1e-12, atol=1e-15)
    single = model.predict(panel, origins[3], ["S3", "S1"])
    assert single.equals(out.filter(pl.col("asof") == origins[3]))
    model.save(tmp_path / "combo")
    loaded = Combination.load(tmp_path / "combo")
    assert loaded.version == model.version
    assert loaded.predict_origins(panel, origins, ["S3", "S1"]).equals(out)


def test_combination_passes_the_contract():
    check_forecaster(Combination(members=("ewma", "har_gbm"), valid_days=40))


def test_given_validation_rows_steer_only(panel):
    history = panel.filter(pl.col("ts") < date(2017, 1, 1))
    train, valid = train_valid_split(history, valid_days=120)
    steered = HarGbm(valid_days=120).fit(train, valid)
    refitted = HarGbm(valid_days=120).fit(history)
    # the same split, the same early-stopping choice; only the refit differs
    assert steered.rounds_ == refitted.rounds_
    assert [b.num_trees() for b in steered.boosters_] == steered.rounds_
    assert steered.version != refitted.version


def test_member_options_reach_the_members_and_survive_a_round_trip(panel, tmp_path):
    history = panel.filter(pl.col("ts") < date(2017, 1, 1))
    model = Combination(
        members=("ewma", "historical"), valid_days=120, member_options={"ewma": {"lam": 0.97}}
    ).fit(history)
    assert model.members_[0].lam == 0.97 and model.members_[1].window == 250
    model.save(tmp_path / "combo")
    assert Combination.load(tmp_path / "combo").members_[0].lam == 0.97
    with pytest.raises(ConfigError, match=r"member_options for \['garch'\], not members"):
        Combination(members=("ewma", "historical"), member_options={"garch": {}}).fit(history)
