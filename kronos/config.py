"""Frozen, typed settings.

Values resolve as: explicit argument > environment variable (or ``.env``) >
default. Each component receives the settings object it needs; nothing reads
the environment at import time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_COMMON = {"frozen": True, "extra": "ignore", "env_file": ".env", "env_file_encoding": "utf-8"}


class DataSettings(BaseSettings):
    """Where the store lives and the data-quality thresholds (whitepaper section 9)."""

    model_config = SettingsConfigDict(env_prefix="KRONOS_", **_COMMON)

    db: Path = Field(Path("data/kronos.duckdb"), description="DuckDB file (KRONOS_DB)")
    market_tz: str = Field("America/New_York", description="exchange time zone of daily bars")
    market_close: str = Field("16:00", description="local time a daily bar becomes known")
    qa_extreme_move: float = Field(
        0.30, gt=0, description="|daily log return| above which a move counts as extreme"
    )
    qa_max_extreme_frac: float = Field(
        0.001, ge=0, description="largest allowed share of extreme moves per symbol (0.1%)"
    )
    qa_min_span_years: float = Field(5.0, ge=0, description="shortest allowed history")
    qa_max_gap_days: int = Field(
        5, ge=1, description="most weekdays allowed to be missing between two bars"
    )


def resolve_db_path(cli_value: Path | str | None, settings: DataSettings | None = None) -> Path:
    """The store path: ``--db`` > ``KRONOS_DB`` > ``data/kronos.duckdb``."""
    if cli_value is not None:
        return Path(cli_value)
    return (settings or DataSettings()).db


def config_hash(settings: BaseSettings) -> str:
    """A stable short hash of a settings object, for run records."""
    blob = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ModelSettings(BaseSettings):
    """Where model artifacts live and when a new one may replace ``latest``."""

    model_config = SettingsConfigDict(**_COMMON)

    model_dir: Path = Field(Path("data/models"), description="artifact root (MODEL_DIR)")
    promotion_tolerance: float = Field(
        0.0,
        ge=0,
        validation_alias="KRONOS_PROMOTION_TOLERANCE",
        description="promote when validation CRPS <= baseline CRPS x (1 + tolerance)",
    )
    promotion_baseline: str = Field(
        "ewma", validation_alias="KRONOS_PROMOTION_BASELINE", description="gate baseline model"
    )


class TrackingSettings(BaseSettings):
    """The MLflow store: any tracking URI, SQLite under ``mlruns/`` by default."""

    model_config = SettingsConfigDict(**_COMMON)

    mlflow_tracking_uri: str | None = Field(None, description="MLFLOW_TRACKING_URI")
    mlruns_dir: Path = Field(Path("mlruns"), validation_alias="KRONOS_MLRUNS_DIR")

    def tracking_uri(self) -> str:
        """The URI to use: ``MLFLOW_TRACKING_URI`` or SQLite in ``mlruns/``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.mlruns_dir / 'mlflow.db').resolve()}"

    def artifact_root(self) -> str:
        """Where a local store keeps run artifacts."""
        return (self.mlruns_dir / "artifacts").resolve().as_uri()
