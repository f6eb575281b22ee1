"""Crossed quantiles are sorted and counted where forecasts leave a model.

A model whose heads are fitted separately (LightGBM boosters, MQLoss heads)
can emit ``p05 > p50``; the calibrator's bias and scale, the strategist and
the breakers all assume a sorted triple. The exits: ``forecast_with``
(``kronos forecast``, ``kronos serve``, the paper loop), the backtest's fold
forecasts (its result and MLflow metric) and the forecasts the nightly
calibration makes.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from kronos.backtest.forecasts import fold_forecasts
from kronos.backtest.splits import Fold
from kronos.config import CalibrationSettings, DataSettings
from kronos.data.store import Store
from kronos.features.returns import returns_panel
from kronos.forecasting import forecast_with
from kronos.models.artifacts import Loaded
from kronos.models.baselines import EwmaNormal
from kronos.models.contract import probe_panel

ASOF = date(2020, 3, 5)


def _swap_for(frame: pl.DataFrame, symbol: str) -> pl.DataFrame:
    """``frame`` with p05 and p50 exchanged on ``symbol``'s rows (so p05 > p50)."""
    hit = pl.col("symbol") == symbol
    return frame.with_columns(
        p05=pl.when(hit).then(pl.col("p50")).otherwise(pl.col("p05")),
        p50=pl.when(hit).then(pl.col("p05")).otherwise(pl.col("p50")),
    )


def _produce(db, model):
    with Store.open(db, read_only=True) as store:
        panel = returns_panel(store, ASOF, ["KO", "AAPL"], settings=DataSettings())
        return forecast_with(
            store,
            Loaded(model, "artifact", None, "test"),
            "ewma",
            panel,
            symbols=["KO", "AAPL"],
            settings=CalibrationSettings(calibration_enabled=False),
            data=DataSettings(),
        ), panel


def test_forecast_with_sorts_and_counts_crossed_rows(bundled_db):
    plain = EwmaNormal().fit(pl.DataFrame({"symbol": [], "ts": [], "y": []}))
    clean, panel = _produce(bundled_db, plain)
    assert clean.crossed == {} and clean.crossed_rows == 0
    # an uncrossed forecast passes bit for bit
    direct = plain.predict(panel, panel["ts"].max(), ["KO", "AAPL"])
    assert clean.raw.select("p05", "p50", "p95").equals(direct.select("p05", "p50", "p95"))

    crossing = EwmaNormal().fit(pl.DataFrame({"symbol": [], "ts": [], "y": []}))
    crossing.predict = lambda p, a, s=None: _swap_for(plain.predict(p, a, s), "KO")  # type: ignore[method-assign]
    made, _ = _produce(bundled_db, crossing)
    assert made.crossed == {"KO": 5} and made.crossed_rows == 5
    q = made.raw.select("p05", "p50", "p95").to_numpy()
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])
    # sorting restores the model's own triple
    assert made.raw.select("p05", "p50", "p95").equals(clean.raw.select("p05", "p50", "p95"))


def cross_first_symbol(monkeypatch) -> None:
    """Make EWMA's forecasts of the first symbol cross (p05 above p50) at every step."""
    original = EwmaNormal._quantiles

    def crossed(self, names, series, at):
        q = original(self, names, series, at)
        q[:, 0, :, [0, 1]] = q[:, 0, :, [1, 0]]
        return q

    monkeypatch.setattr(EwmaNormal, "_quantiles", crossed)


def test_fold_forecasts_sort_and_count_crossed_rows(monkeypatch):
    panel = probe_panel()
    days = panel["ts"].unique().sort().to_list()
    fold = Fold(0, days[0], days[199], days[205], days[240], purge=5)
    origins = days[205:241]
    clean = fold_forecasts("ewma", {}, 0, panel, fold, origins)
    assert clean.crossed == 0

    cross_first_symbol(monkeypatch)
    made = fold_forecasts("ewma", {}, 0, panel, fold, origins)
    assert made.crossed == len(origins)  # one step-1 row per origin
    assert made.forecasts.equals(clean.forecasts)


SYNTH_SPEC = {
    "name": "synthetic_crossing",
    "universe": {"source": "synthetic"},
    "dates": {"start": "2001-06-01", "end": "2002-01-31"},
    "forecaster": {"name": "ewma"},
    "splits": {"train_sessions": 250, "retrain": "quarterly"},
    "rebalance": {"every": "weekly", "weekday": 2},
    "decision": {
        "strategy": {"strat_reco_topk": 4, "strat_min_market_cap": 0, "strat_min_dollar_vol": 0},
        "policy": {"policy_min_abs_dev": 0, "policy_min_sigma_z": 0},
    },
}


def test_backtest_reports_and_logs_crossed_rows(tmp_path, monkeypatch, run_settings):
    from mlflow.tracking import MlflowClient

    from kronos.backtest.run import run_backtest
    from kronos.backtest.spec import parse_spec
    from kronos.data import loaders
    from kronos.runner.backtest_record import EXPERIMENT, log_backtest
    from kronos.tracking import mlflow_run

    db = tmp_path / "k.duckdb"
    with Store.open(db) as s:
        loaders.load_synthetic(s, n_symbols=8, years=2.5, seed=3)
    spec = parse_spec(SYNTH_SPEC)
    with Store.open(db, read_only=True) as store:
        clean = run_backtest(spec, store)
    assert clean.crossed_rows == 0
    assert not any("crossed" in n for n in clean.notes)

    cross_first_symbol(monkeypatch)
    with Store.open(db, read_only=True) as store:
        made = run_backtest(spec, store)
    # one step-1 row of the first symbol per session (an origin each), all sorted back
    assert made.crossed_rows == made.equity.height == 165
    assert made.order_hash == clean.order_hash and clean.orders.height > 0
    assert f"{made.crossed_rows} step-1 forecast rows had crossed quantiles" in " ".join(made.notes)

    (tmp_path / "report").mkdir()  # the metric is the point here, not the report
    with mlflow_run(EXPERIMENT, spec.name, settings=run_settings) as recorder:
        log_backtest(recorder, spec, made, tmp_path / "report")
    run = MlflowClient(run_settings.tracking.tracking_uri()).get_run(recorder.run_id)
    assert run.data.metrics["crossed_rows"] == float(made.crossed_rows)


def test_service_counts_crossed_rows_per_answer(bundled_db, tmp_path, caplog):
    from fastapi.testclient import TestClient

    from kronos.serve import ServiceConfig, create_app

    model = EwmaNormal().fit(pl.DataFrame({"symbol": [], "ts": [], "y": []}))
    predict, calls = model.predict, []

    def crossing(panel, origin, symbols=None):
        calls.append(symbols)
        return _swap_for(predict(panel, origin, symbols), "KO")

    model.predict = crossing  # type: ignore[method-assign]
    loaded = Loaded(model, "artifact", None, "ewma")
    config = ServiceConfig(
        db=bundled_db, model="ewma", model_dir=tmp_path / "none", allow_lookahead=True
    )
    app = create_app(
        config,
        CalibrationSettings(calibration_enabled=False),
        DataSettings(),
        loader=lambda config, data: (loaded, ASOF),
    )
    client = TestClient(app)
    with caplog.at_level("WARNING", logger="kronos.serve"):
        ko = client.get("/forecast", params={"symbols": "KO", "asof": str(ASOF)}).json()
    # the universe is forecast once per origin; each answer counts its own rows
    aapl = client.get("/forecast", params={"symbols": "AAPL", "asof": str(ASOF)}).json()
    assert len(calls) == 1 and len(calls[0]) > 2  # the per-origin universe forecast, cut twice
    assert ko["crossed_rows"] == 5 and aapl["crossed_rows"] == 0
    assert all(f["p05"] <= f["p50"] <= f["p95"] for f in ko["forecasts"])
    assert "ewma: 5 forecast rows had crossed quantiles" in caplog.text


def test_nightly_calibration_sorts_the_forecasts_it_makes(bundled_db, tmp_path):
    import shutil

    from kronos.nightly import nightly_calibrate

    db = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, db)
    model = EwmaNormal().fit(pl.DataFrame({"symbol": [], "ts": [], "y": []}))
    predict = model.predict
    model.predict = lambda p, a, s=None: _swap_for(predict(p, a, s), "KO")  # type: ignore[method-assign]
    with Store.open(db) as store:
        panel = returns_panel(store, ASOF, ["KO", "AAPL"], settings=DataSettings())
        nights = nightly_calibrate(
            store, "ewma", ASOF, panel, lambda: model, since=date(2020, 3, 3),
            settings=CalibrationSettings(), data=DataSettings(),
        )  # fmt: skip
        stored = store.con.execute("SELECT p05, p50, p95 FROM forecasts").fetchnumpy()
    assert [n.crossed for n in nights] == [5, 5, 5]  # KO's five steps, each night it forecast
    assert len(stored["p05"]) == 30
    assert np.all(stored["p05"] <= stored["p50"]) and np.all(stored["p50"] <= stored["p95"])
