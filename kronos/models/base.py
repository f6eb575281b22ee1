"""The forecaster contract every model follows.

A forecaster is fitted on a panel of daily log returns and predicts the
(p05, p50, p95) quantiles of each of the next ``horizon`` daily log returns
from any origin ``asof``, using only rows with ``ts <= asof``.

Panel: a polars frame ``symbol (str), ts (date), y (float: daily log return)``
sorted by symbol and ts. Forecast frame: :data:`FORECAST_SCHEMA`, one row per
(symbol, asof, step); ``target_ts`` is the ``step``-th session after ``asof``
of the exchange calendar (:mod:`kronos.calendar`, XNYS unless one is passed):
a holiday or weekend is never a target.

Models never import mlflow: training takes a :class:`Recorder`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import ClassVar, Protocol, Self

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from kronos.calendar import Calendar, step_sessions

QUANTILES: tuple[float, float, float] = (0.05, 0.5, 0.95)
QUANTILE_COLUMNS: tuple[str, str, str] = ("p05", "p50", "p95")
HORIZON = 5

PANEL_SCHEMA = {"symbol": pl.String(), "ts": pl.Date(), "y": pl.Float64()}
FORECAST_SCHEMA = {
    "symbol": pl.String(),
    "asof": pl.Date(),
    "step": pl.Int32(),
    "target_ts": pl.Date(),
    "p05": pl.Float64(),
    "p50": pl.Float64(),
    "p95": pl.Float64(),
    "model": pl.String(),
    "version": pl.String(),
}


class ForecastError(ValueError):
    """Bad input to a forecaster; the message names the symbol or file."""


class Recorder(Protocol):
    """Where training reports parameters and metrics (an MLflow run, or nothing)."""

    def log_params(self, params: dict[str, object]) -> None:
        """Record parameters once per run."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metric values, optionally at a step (epoch)."""


class NullRecorder:
    """A recorder that records nothing."""

    def log_params(self, params: dict[str, object]) -> None:
        """Ignore parameters."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Ignore metrics."""


class TrainingConfig(BaseModel):
    """Training settings shared by the neural forecasters (whitepaper 6.1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_epochs: int = Field(60, ge=1)
    max_steps: int | None = Field(None, ge=1, description="cap on optimisation steps")
    patience: int = Field(8, ge=1, description="early stopping on validation quantile loss")
    scheduler_patience: int = Field(4, ge=1, description="ReduceLROnPlateau patience")
    learning_rate: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-4, ge=0, le=1e-4)
    dropout: float = Field(0.1, ge=0, le=0.1)
    gradient_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    accelerator: str = Field("auto", description="Lightning picks CPU or GPU")
    progress: bool = False


def flatten_params(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as flat ``{"a.b": value}`` run parameters."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def target_dates(
    asof: date, horizon: int = HORIZON, calendar: Calendar | None = None
) -> list[date]:
    """The ``horizon`` sessions after ``asof`` (XNYS unless ``calendar`` is given)."""
    return step_sessions(asof, horizon, calendar)


def retarget(frame: pl.DataFrame, calendar: Calendar) -> pl.DataFrame:
    """``frame`` with ``target_ts`` recomputed as the ``step``-th session of ``calendar``.

    Models stamp XNYS sessions; the edge that knows the configured calendar
    (``KRONOS_CALENDAR``) re-stamps a forecast frame with it.
    """
    if frame.is_empty():
        return frame
    horizon = int(frame["step"].max())
    table = pl.DataFrame(
        [
            {"asof": a, "step": h, "target_ts": t}
            for a in frame["asof"].unique().to_list()
            for h, t in enumerate(calendar.next_sessions(a, horizon), start=1)
        ],
        schema={"asof": pl.Date(), "step": pl.Int32(), "target_ts": pl.Date()},
    )
    columns = frame.columns
    return frame.drop("target_ts").join(table, on=["asof", "step"], how="left").select(columns)


def forecast_frame(
    symbols: Sequence[str],
    asof: date,
    quantiles: np.ndarray,
    model: str,
    version: str,
    calendar: Calendar | None = None,
) -> pl.DataFrame:
    """Build a forecast frame from a ``(n_symbols, horizon, 3)`` array of quantiles.

    ``target_ts`` of step ``h`` is the ``h``-th session of ``calendar`` (default
    XNYS) after ``asof``.
    """
    n, horizon, _ = quantiles.shape
    targets = target_dates(asof, horizon, calendar)
    return pl.DataFrame(
        {
            "symbol": np.repeat(np.asarray(symbols, dtype=object), horizon).tolist(),
            "asof": [asof] * (n * horizon),
            "step": np.tile(np.arange(1, horizon + 1, dtype=np.int32), n),
            "target_ts": targets * n,
            "p05": quantiles[:, :, 0].ravel(),
            "p50": quantiles[:, :, 1].ravel(),
            "p95": quantiles[:, :, 2].ravel(),
            "model": [model] * (n * horizon),
            "version": [version] * (n * horizon),
        },
        schema=FORECAST_SCHEMA,
    )


def history_until(
    panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None, min_length: int
) -> dict[str, np.ndarray]:
    """Each symbol's returns up to ``asof``, checked: known, long enough, finite.

    Raises :class:`ForecastError` naming the symbol otherwise.
    """
    known = set(panel["symbol"].unique().to_list())
    wanted = list(symbols) if symbols is not None else sorted(known)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ForecastError(f"unknown symbols (not in the panel): {unknown}")
    past = panel.filter(pl.col("ts") <= asof, pl.col("symbol").is_in(wanted))
    series = {
        s: g.sort("ts")["y"].to_numpy() for (s,), g in past.group_by("symbol", maintain_order=True)
    }
    out = {}
    for s in wanted:
        y = series.get(s, np.empty(0))
        if len(y) < min_length:
            raise ForecastError(
                f"symbol {s}: {len(y)} returns up to {asof}, needs at least {min_length}"
            )
        window = y[-min_length:]
        if not np.all(np.isfinite(window)):
            bad = int(np.flatnonzero(~np.isfinite(window))[0])
            raise ForecastError(
                f"symbol {s}: NaN/inf in the input window ending {asof} "
                f"(position {bad - min_length} from the end)"
            )
        out[s] = y
    return out


def read_config(path: Path, expected: Mapping[str, object], required: Sequence[str]) -> dict:
    """An artifact's ``config.json`` with ``expected`` values and ``required`` keys.

    Anything else is a ForecastError naming the file and the key.
    """
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ForecastError(f"{path}: cannot read ({exc})") from exc
    for key, value in expected.items():
        if not isinstance(config, dict) or config.get(key) != value:
            found = config.get(key) if isinstance(config, dict) else None
            raise ForecastError(f"{path}: incompatible {key} {found!r}, expected {value!r}")
    for key in required:
        if key not in config:
            raise ForecastError(f"{path}: missing {key!r}")
    return config


class Forecaster(ABC):
    """Fit on a panel, predict quantiles from any origin, save and load.

    Hyper-parameters are explicit keyword arguments stored unchanged; fitted
    state ends in ``_`` (skfolio's convention).
    """

    name: ClassVar[str]
    horizon: int = HORIZON

    @property
    @abstractmethod
    def input_size(self) -> int:
        """How many past returns a prediction needs."""

    @abstractmethod
    def fit(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame | None = None,
        recorder: Recorder | None = None,
    ) -> Self:
        """Fit on ``train`` (validation rows, if any, steer early stopping only)."""

    @abstractmethod
    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Quantile forecasts for steps 1..horizon from ``asof``, using rows ``ts <= asof``."""

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Forecasts from each origin in turn (models override this when they can batch)."""
        return pl.concat([self.predict(panel, o, symbols) for o in origins])

    @abstractmethod
    def get_config(self) -> dict:
        """The hyper-parameters, JSON-ready (written to ``config.json``)."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write ``state.pt``, ``config.json`` and ``scaler.pkl`` into ``directory``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a fitted forecaster saved by :meth:`save`; refuse incompatible files."""

    @property
    def version(self) -> str:
        """Identifies the fitted state (set by fit or load)."""
        return getattr(self, "version_", "unfitted")
