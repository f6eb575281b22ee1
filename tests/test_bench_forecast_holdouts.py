"""``kronos bench forecast --holdouts``: refits per holdout year, significance on every row."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from kronos.bench.forecast import run_forecast_bench
from kronos.config import DataSettings
from kronos.data.store import Store
from kronos.errors import InputError
from kronos.features.returns import returns_panel

BASELINES = ["historical", "ewma", "garch"]
SIGNIFICANCE = {
    "dm_stat_vs_ewma",
    "dm_pvalue_vs_ewma",
    "dm_stat_vs_garch",
    "dm_pvalue_vs_garch",
    "in_mcs",
    "mcs_pvalue",
}
PER_HOLDOUT = {"crps", "crps_ratio_garch", "crps_ratio_ewma", "coverage", "mae", "n"}


@pytest.fixture(scope="module")
def few_symbols(bundled_db: Path):
    """Three bundled stocks' returns (the whole 1990-2022 span)."""
    with Store.open(bundled_db, read_only=True) as store:
        return returns_panel(
            store, date(2023, 1, 1), ["AAPL", "JPM", "XOM"], settings=DataSettings()
        )


def test_holdouts_refit_before_each_year_and_pool_into_an_aggregate(few_symbols):
    result = run_forecast_bench(few_symbols, BASELINES, holdouts=[2022, 2020])
    years = [h["year"] for h in result["holdouts"]]
    assert years == [2020, 2022]
    for h in result["holdouts"]:
        # fitted strictly before Jan 1; origins inside the year, each with a realized step
        assert h["train_end"] < f"{h['year']}-01-01" <= h["first_origin"]
        assert h["last_origin"] <= f"{h['year']}-12-31"
    h2022 = result["holdouts"][1]
    assert h2022["last_origin"] == "2022-12-27"  # the data end 2022-12-28: nothing to score after
    rows = {r["model"]: r for r in result["models"]}
    assert set(rows) == set(BASELINES)
    for row in rows.values():
        assert set(row) >= SIGNIFICANCE and set(row["aggregate"]) >= SIGNIFICANCE
        assert set(row["holdouts"]) == {"2020", "2022"}
        for held in row["holdouts"].values():
            assert set(held) >= PER_HOLDOUT | SIGNIFICANCE
            assert 0.5 < held["coverage"] < 1.0
        agg = row["aggregate"]
        assert agg["origins"] == sum(h["origins"] for h in result["holdouts"])
        assert 0.0 <= agg["mcs_pvalue"] <= 1.0
    assert rows["garch"]["holdouts"]["2020"]["crps_ratio_garch"] == pytest.approx(1.0)
    assert rows["ewma"]["aggregate"]["mean_crps_ratio_ewma"] == pytest.approx(1.0)
    assert rows["ewma"]["dm_pvalue_vs_ewma"] is None  # no test against itself
    # the two sides of one test: same p-value, opposite statistic
    ewma, garch = rows["ewma"]["aggregate"], rows["garch"]["aggregate"]
    assert ewma["dm_pvalue_vs_garch"] == pytest.approx(garch["dm_pvalue_vs_ewma"])
    assert ewma["dm_stat_vs_garch"] == pytest.approx(-garch["dm_stat_vs_ewma"])
    assert any(r["mcs_pvalue"] == 1.0 for r in rows.values())  # the MCS keeps its best model
    # the 2020 refit differs from the 2022 one: fitted on 30 vs 32 years
    assert rows["historical"]["holdouts"]["2020"]["crps"] != pytest.approx(
        rows["historical"]["holdouts"]["2022"]["crps"]
    )
    json.dumps(result)  # one serializable object


def test_holdout_outside_the_data_names_the_span(few_symbols):
    with pytest.raises(InputError, match=r"holdout 1980: the panel spans 1990-01-0\d\.\.2022"):
        run_forecast_bench(few_symbols, ["ewma"], holdouts=[1980])


def _bench(args: list[str], monkeypatch, mlflow_settings, bundled_db: Path):
    from typer.testing import CliRunner

    from kronos.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    return CliRunner().invoke(app, ["bench", "forecast", "--db", str(bundled_db), *args])


def test_cli_holdouts_json_and_table(monkeypatch, mlflow_settings, bundled_db):
    got = _bench(
        ["--holdouts", "2022", "--models", "historical,ewma", "--json"],
        monkeypatch,
        mlflow_settings,
        bundled_db,
    )
    assert got.exit_code == 0, f"{got.stdout}\n{got.stderr}\n{got.exception}"
    result = json.loads(got.stdout)
    assert len(result["symbols"]) == 20 and result["holdouts"][0]["year"] == 2022
    for row in result["models"]:
        assert set(row) >= SIGNIFICANCE and set(row["holdouts"]["2022"]) >= PER_HOLDOUT
        assert row["dm_pvalue_vs_garch"] is None  # GARCH not run: no test, not a fake one
    bad = _bench(["--holdouts", "2008,20x0"], monkeypatch, mlflow_settings, bundled_db)
    assert bad.exit_code == 2 and "'20x0' is not a calendar year" in bad.stderr


def test_cli_single_holdout_table_shows_the_tests(monkeypatch, mlflow_settings, bundled_db):
    got = _bench(
        ["--holdout-days", "40", "--models", "ewma,historical"],
        monkeypatch,
        mlflow_settings,
        bundled_db,
    )
    assert got.exit_code == 0, f"{got.stdout}\n{got.stderr}\n{got.exception}"
    assert "DM p vs EWMA" in got.stdout and "MCS p" in got.stdout
    assert "1.000" in got.stdout  # the MCS p-value of its best model, 3 decimals
