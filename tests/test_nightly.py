"""The nightly calibration job against a real store: idempotent, catches up in order."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from kronos.config import CalibrationSettings, DataSettings
from kronos.data.store import Store
from kronos.features.returns import returns_panel
from kronos.models.baselines import EwmaNormal
from kronos.nightly import last_state_date, nightly_calibrate


@pytest.fixture
def store(bundled_db: Path, tmp_path: Path):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    with Store.open(path) as s:
        yield s


def _run(store: Store, asof: date, since: date | None = None, settings=None):
    panel = returns_panel(store, asof, ["AAPL", "MSFT", "KO", "XOM"], settings=DataSettings())
    return nightly_calibrate(
        store,
        "ewma",
        asof,
        panel,
        lambda: EwmaNormal().fit(panel),
        since=since,
        settings=settings or CalibrationSettings(),
        data=DataSettings(),
    )


def _state(store: Store, day: date) -> pl.DataFrame:
    return store.con.sql(
        'SELECT scope, key, bias, scale, n_samples FROM calibration_state WHERE "asof" = ? '
        "ORDER BY scope, key",
        params=[day],
    ).pl()


def test_rerun_changes_nothing_and_skipped_nights_catch_up_in_order(store, tmp_path):
    first = _run(store, date(2020, 3, 6), since=date(2020, 3, 2))
    assert [n.day for n in first] == [date(2020, 3, d) for d in (2, 3, 4, 5, 6)]
    rows = store.row_counts()
    assert _run(store, date(2020, 3, 6)) == []  # idempotent
    assert store.row_counts() == rows
    later = _run(store, date(2020, 3, 12))  # skipped nights are processed in order
    assert [n.day for n in later] == [date(2020, 3, d) for d in (9, 10, 11, 12)]
    assert last_state_date(store, "ewma") == date(2020, 3, 12)
    two_runs = _state(store, date(2020, 3, 12))
    assert two_runs["n_samples"].max() == 9  # nine nights, March 2-12
    assert two_runs.filter(pl.col("scope") == "global")["scale"][0] != 1.0


def test_one_run_equals_two_runs(bundled_db: Path, tmp_path: Path):
    states = []
    for split in (True, False):
        path = tmp_path / f"{split}.duckdb"
        shutil.copy(bundled_db, path)
        with Store.open(path) as s:
            if split:
                _run(s, date(2020, 3, 6), since=date(2020, 3, 2))
                _run(s, date(2020, 3, 12))
            else:
                _run(s, date(2020, 3, 12), since=date(2020, 3, 2))
            states.append(_state(s, date(2020, 3, 12)))
    assert states[0].equals(states[1])


def test_calibration_file_is_written(store, tmp_path):
    target = tmp_path / "calibration.json"
    settings = CalibrationSettings(calibration_file=target)
    _run(store, date(2020, 3, 4), since=date(2020, 3, 2), settings=settings)
    doc = json.loads(target.read_text())
    assert doc["model"] == "ewma" and doc["asof"] == "2020-03-04"
    assert {s["scope"] for s in doc["states"]} == {"symbol", "sector", "global"}
