"""A researcher's own forecaster: found by import path or entry point, checked, used everywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest

from kronos.config import CalibrationSettings, DataSettings
from kronos.errors import ConfigError
from kronos.models.artifacts import load_promoted, promote, write_artifact
from kronos.models.base import ForecastError, forecast_frame
from kronos.models.contract import check_forecaster, probe_panel
from kronos.models.registry import build, forecaster_class, model_name, override_keys, reference
from kronos.plugins import reference_of

ROOT = Path(__file__).resolve().parents[1]
PATH = "kronos_example.forecasters:RollingQuantiles"


@pytest.fixture(scope="module")
def example(example_plugin):
    """The example package's forecasters module (imported from the installed copy)."""
    import kronos_example.forecasters as module

    assert Path(module.__file__).is_relative_to(example_plugin)
    return module


# ------------------------------------------------------------ resolution


def test_import_path_entry_point_class_and_instance_resolve(example):
    cls = example.RollingQuantiles
    assert forecaster_class(PATH) is cls
    assert forecaster_class("example_quantiles") is cls  # entry point
    assert reference("example_quantiles") == PATH
    assert reference("ewma") == "kronos.models.baselines:EwmaNormal"
    assert model_name("example_quantiles") == "rolling_quantiles"
    assert override_keys(PATH) == {"window"}
    assert build("example_quantiles", seed=3, window=20).window == 20
    assert build(cls).window == 60
    made = cls(window=5)
    assert build(made) is made
    with pytest.raises(ConfigError, match=r"already built, cannot take \['window'\]"):
        build(made, window=6)
    with pytest.raises(
        ConfigError, match=r"'kronos_example.forecasters:RollingQuantiles'.*'windw'"
    ):
        build(PATH, windw=3)


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("example_quantile", r"unknown forecaster 'example_quantile'.*'example_quantiles'"),
        ("kronos_example.nope:Model", r"cannot import module 'kronos_example.nope'"),
        ("kronos_example.forecasters:Rolling", r"kronos_example.forecasters has no attribute"),
        ("kronos_example.forecasters:np", r"'kronos_example.forecasters:np' is a module"),
    ],
)
def test_unknown_references_are_named(example, ref, words):
    with pytest.raises(ConfigError, match=words):
        forecaster_class(ref)


# ------------------------------------------------------------ the contract


class _Quantiles:
    """A minimal duck-typed forecaster; subclasses break one rule each."""

    name: ClassVar[str] = "tiny"
    horizon = 5
    input_size = 1

    def fit(self, train, valid=None, recorder=None):
        self.version_ = "v1"
        return self

    def predict(self, panel, asof, symbols=None):
        q = np.tile([-0.02, 0.0, 0.02], (len(symbols), self.horizon, 1))
        return forecast_frame(symbols, asof, q, self.name, self.version_)

    def get_config(self):
        return {"name": self.name}


class NoPredict:
    name: ClassVar[str] = "no_predict"
    horizon = 5
    input_size = 1

    def fit(self, train, valid=None, recorder=None):
        return self


class WrongDtype(_Quantiles):
    def predict(self, panel, asof, symbols=None):
        return super().predict(panel, asof, symbols).with_columns(pl.col("step").cast(pl.Int64))


class Unsorted(_Quantiles):
    def predict(self, panel, asof, symbols=None):
        frame = super().predict(panel, asof, symbols)
        return frame.with_columns(p05=pl.when(pl.col("step") == 3).then(0.5).otherwise("p05"))


class WrongSteps(_Quantiles):
    def predict(self, panel, asof, symbols=None):
        return super().predict(panel, asof, symbols).with_columns(pl.col("step") - 1)


class Duplicated(_Quantiles):
    def predict(self, panel, asof, symbols=None):
        frame = super().predict(panel, asof, symbols)
        return pl.concat([frame, frame.head(1)])


class BuiltinName(_Quantiles):
    name: ClassVar[str] = "ewma"


@pytest.mark.parametrize(
    ("cls", "error", "words"),
    [
        (NoPredict, ConfigError, r"test_custom_forecasters:NoPredict: missing predict"),
        (WrongDtype, ForecastError, r"column 'step' is Int64, expected Int32"),
        (
            Unsorted,
            ForecastError,
            r"quantiles not sorted for symbol S0001, step 3 \(p05 0.5, p50 0, p95 0.02\)",
        ),
        (WrongSteps, ForecastError, r"symbol S0001 has steps \[0, 1, 2, 3, 4\], expected"),
        (Duplicated, ForecastError, r"symbol S0001 has steps \[1, 1, 2, 3, 4, 5\]"),
        (BuiltinName, ConfigError, r"name 'ewma' is a built-in model's"),
    ],
)
def test_contract_refusals_name_the_model_and_the_problem(cls, error, words):
    with pytest.raises(error, match=words):
        check_forecaster(cls)
    with pytest.raises(error, match=words):  # the same when resolved by import path
        forecaster_class(reference_of(cls))


def test_an_honest_minimal_model_passes_and_is_usable_by_path():
    check_forecaster(_Quantiles)
    assert forecaster_class(reference_of(_Quantiles)) is _Quantiles


def test_the_peeking_model_is_refused_naming_the_origin(example):
    words = (
        r"forecaster kronos_example.forecasters:PeekingQuantiles looks ahead: its prediction at "
        r"origin 2021-02-04 moved when rows after it changed \(symbol S0001, step 1, p50 "
    )
    with pytest.raises(ForecastError, match=words):
        forecaster_class("kronos_example.forecasters:PeekingQuantiles")


@pytest.mark.parametrize("name", ["ewma", "garch"])
def test_builtins_pass_the_probe(name):
    check_forecaster(forecaster_class(name))  # no false alarm on honest models


# ------------------------------------------------------------ artifacts


def test_artifact_records_path_and_version_and_loads_through_them(example, tmp_path: Path):
    panel = probe_panel()
    model = example.RollingQuantiles(window=30).fit(panel)
    run_dir = write_artifact(model, tmp_path, {"crps": 1.0})
    assert run_dir.parent.name == "kronos-rolling_quantiles"
    source = json.loads((run_dir / "SOURCE.json").read_text())
    assert source == {"import_path": PATH, "distribution": "kronos_example", "version": "0.1.0"}
    promote(run_dir)  # no state.pt/scaler.pkl: the model's own files are its business
    loaded = load_promoted(tmp_path, "example_quantiles")
    assert loaded.source == "artifact" and loaded.directory == run_dir
    assert "saved with version" not in loaded.message
    asof = panel["ts"].max()
    assert loaded.forecaster.predict(panel, asof).equals(model.predict(panel, asof))
    source["version"] = "0.0.9"
    (run_dir / "SOURCE.json").write_text(json.dumps(source))
    again = load_promoted(tmp_path, PATH)
    assert f"{PATH} was saved with version 0.0.9, 0.1.0 is installed" in again.message
    # a builtin artifact records nothing extra
    ewma = write_artifact(build("ewma").fit(panel), tmp_path, {})
    assert not (ewma / "SOURCE.json").exists()


def test_kronos_train_forecaster_gates_and_promotes_a_custom_model(
    example, bundled_db, mlflow_settings, tmp_path: Path, monkeypatch
):
    from typer.testing import CliRunner

    from kronos.cli import app

    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["train", "forecaster", "example_quantiles", "--set", "window=40", "--json"]
    args += ["--db", str(bundled_db), "--symbols", "AAPL,KO", "--asof", "1996-12-31"]
    got = CliRunner().invoke(app, [*args, "--model-dir", str(tmp_path)])
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout.strip().splitlines()[-1])
    assert row["model"] == "rolling_quantiles"
    run_dir = Path(row["run_dir"])
    assert json.loads((run_dir / "config.json").read_text())["window"] == 40
    assert json.loads((run_dir / "SOURCE.json").read_text())["import_path"] == PATH
    bad = CliRunner().invoke(app, ["train", "forecaster", "example_quantiles", "--set", "w=1"])
    assert bad.exit_code == 2 and "unknown option 'w'" in bad.output


# ------------------------------------------------------------ everywhere a model is named


def _kronos(args: list[str], plugin: Path, tmp: Path, mlruns: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]),
        "KRONOS_MLRUNS_DIR": str(mlruns),
        "MODEL_DIR": str(tmp / "models"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "kronos", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bench_and_backtest_take_a_custom_model(
    example_plugin, bundled_db, mlflow_settings, tmp_path: Path
):
    mlruns = mlflow_settings.mlruns_dir
    bench = _kronos(
        ["bench", "forecast", "--db", str(bundled_db), "--holdout-days", "20", "--json",
         "--models", f"{PATH},ewma"],
        example_plugin, tmp_path, mlruns,
    )  # fmt: skip
    backtest = _kronos(
        ["backtest", "backtests/sp500_ewma_weekly.yaml", "--db", str(bundled_db), "--json",
         "--set", "forecaster.name=example_quantiles", "--set", "forecaster.params={window: 40}",
         "--set", "dates.start=2022-09-01", "--set", "dates.end=2022-10-31",
         "--no-mlflow", "--out", str(tmp_path / "out")],
        example_plugin, tmp_path, mlruns,
    )  # fmt: skip
    out, err = bench.communicate(timeout=300)
    assert bench.returncode == 0, err[-3000:]
    rows = {r["model"]: r for r in json.loads(out)["models"]}
    assert set(rows) == {"rolling_quantiles", "ewma"}
    assert rows["rolling_quantiles"]["config"]["window"] == 60
    assert 0.5 < rows["rolling_quantiles"]["coverage"] <= 1.0
    out, err = backtest.communicate(timeout=300)
    assert backtest.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert result["stats"]["turnover"] > 0


def test_bench_takes_an_instance_from_python(example):
    from kronos.bench.forecast import run_forecast_bench

    panel = probe_panel()
    result = run_forecast_bench(panel, [example.RollingQuantiles(window=30), "ewma"], 60)
    rows = {r["model"]: r for r in result["models"]}
    assert set(rows) == {"rolling_quantiles", "ewma"}
    assert rows["rolling_quantiles"]["config"]["window"] == 30


def test_kronos_forecast_fits_a_custom_model_on_the_fly_and_stores_its_name(
    example, bundled_db, tmp_path: Path, monkeypatch
):
    from typer.testing import CliRunner

    from kronos.cli import app
    from kronos.data.store import Store

    db = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, db)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    args = ["forecast", "example_quantiles", "--db", str(db), "--symbols", "AAPL,KO"]
    got = CliRunner().invoke(app, [*args, "--asof", "2020-03-04", "--json"])
    assert got.exit_code == 0, got.output
    body = json.loads(got.stdout.strip().splitlines()[-1])
    assert body["source"] == "fallback" and "no promoted rolling_quantiles" in body["message"]
    with Store.open(db, read_only=True) as store:
        rows = store.con.execute("SELECT DISTINCT model FROM forecasts").fetchall()
    assert rows == [("rolling_quantiles",)]


def test_serve_answers_with_a_custom_model(example, bundled_db, tmp_path: Path):
    from fastapi.testclient import TestClient

    from kronos.serve import ServiceConfig, create_app

    db = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, db)
    # the fallback is fitted through the store's last bar: an earlier asof looks ahead
    config = ServiceConfig(db=db, model=PATH, model_dir=tmp_path / "models", allow_lookahead=True)
    client = TestClient(create_app(config, CalibrationSettings(), DataSettings()))
    got = client.get("/forecast", params={"symbols": "AAPL,KO", "asof": "2020-03-04"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["source"] == "fallback" and body["version"].startswith("rolling_quantiles-")
    rows = body["forecasts"]
    assert [(r["symbol"], r["step"]) for r in rows] == [
        (s, h) for s in ("AAPL", "KO") for h in range(1, 6)
    ]
    assert all(r["p05"] < r["p50"] < r["p95"] for r in rows)


def test_a_paper_cycle_stores_forecasts_labelled_with_the_class_name(
    example, bundled_db, tmp_path: Path
):
    from kronos.config import DecisionSettings, PolicySettings, StrategySettings
    from kronos.data.store import Store
    from kronos.execution.brokers.sim import SimBroker
    from kronos.execution.fills import FillRules
    from kronos.execution.paper import PaperConfig, PaperLoop

    path = tmp_path / "paper.duckdb"
    shutil.copy(bundled_db, path)
    with Store.open(path) as store:
        symbols = ("AAPL", "KO", "XOM", "MSFT", "JNJ")
        sim = SimBroker(store, "acct", FillRules(), symbols, data_settings=DataSettings())
        sim.start(date(2022, 6, 1), 100_000.0)
        config = PaperConfig(
            model="example_quantiles",
            model_dir=tmp_path / "models",
            symbols=symbols,
            settings=DecisionSettings(
                policy=PolicySettings(policy_min_abs_dev=0, policy_min_sigma_z=0),
                strategy=StrategySettings(strat_reco_topk=3),
            ),
            calibration=CalibrationSettings(),
        )
        assert (config.model, config.model_ref) == ("rolling_quantiles", "example_quantiles")
        reports = PaperLoop(store, sim, config).run(cycles=1, wait=lambda _c: sim.advance())
        assert reports[0].decided
        rows = store.con.execute(
            "SELECT model, count(DISTINCT symbol), min(step), max(step) FROM forecasts GROUP BY 1"
        ).fetchall()
    assert rows == [("rolling_quantiles", len(symbols), 1, 5)]
