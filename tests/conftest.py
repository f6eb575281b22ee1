"""Shared fixtures: stores are built once per session where tests only read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronos.data import loaders
from kronos.data.store import Store


@pytest.fixture
def store(tmp_path: Path):
    """A fresh, empty store for one test."""
    with Store.open(tmp_path / "kronos.duckdb") as s:
        yield s


@pytest.fixture(scope="session")
def bundled_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file holding the bundled data (closed; open it read-only)."""
    path = tmp_path_factory.mktemp("bundled") / "kronos.duckdb"
    with Store.open(path) as s:
        loaders.load_bundled(s)
    return path


@pytest.fixture(scope="session")
def mlflow_settings(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite MLflow store for the session (its migrations take seconds)."""
    from kronos.config import TrackingSettings

    root = tmp_path_factory.mktemp("mlruns")
    return TrackingSettings(mlflow_tracking_uri=None, KRONOS_MLRUNS_DIR=root)
