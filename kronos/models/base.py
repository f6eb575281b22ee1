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

The base also owns what every model repeats: the artifact header (name,
format and feature versions, quantiles), the training settings a neural
model falls back on (:meth:`Forecaster.default_training`), rebuilding a model
from its saved hyper-parameters, and the fitted check. Writing and reading the
artifact files and the version fingerprint are :mod:`kronos.models.files`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol, Self

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from kronos.calendar import Calendar, step_sessions
from kronos.errors import KronosError

QUANTILES: tuple[float, float, float] = (0.05, 0.5, 0.95)
QUANTILE_COLUMNS: tuple[str, str, str] = ("p05", "p50", "p95")
HORIZON = 5

PANEL_SCHEMA = {"symbol": pl.String(), "ts": pl.Date(), "y": pl.Float64()}
Panel = pl.DataFrame
"""A panel of daily log returns (:data:`PANEL_SCHEMA`), as forecasters take it."""
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


class ForecastError(KronosError):
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
    # Placement, not hyper-parameters: left out of model_dump(), so an artifact's
    # config and version do not depend on where it was trained, and it loads on one device.
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, exclude=True, description="Lightning devices (processes on CPU) per node"
    )
    strategy: str = Field("auto", exclude=True, description="Lightning strategy, e.g. ddp")
    num_nodes: int = Field(1, ge=1, exclude=True, description="machines taking part")
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


def origin_windows(
    panel: pl.DataFrame, names: Sequence[str], origins: Sequence[date], length: int
) -> np.ndarray:
    """The last ``length`` returns up to each origin, ``(n_origins, n_names, length)``, checked.

    A symbol with fewer than ``length`` returns up to an origin, or a NaN/inf in
    one of its windows, raises :class:`ForecastError` naming it and the origin.
    """
    data = (
        panel.filter(pl.col("symbol").is_in(list(names)))
        .select("symbol", pl.col("ts").cast(pl.Date).cast(pl.Int32).alias("day"), "y")
        .sort("symbol", "day")
    )
    grouped = {s: (g["day"].to_numpy(), g["y"].to_numpy()) for (s,), g in data.group_by("symbol")}
    origin_days = np.array([(o - date(1970, 1, 1)).days for o in origins])
    windows = np.empty((len(origins), len(names), length))
    for j, s in enumerate(names):
        day, y = grouped[s]
        ends = np.searchsorted(day, origin_days, side="right")
        short = np.flatnonzero(ends < length)
        if len(short):
            i = int(short[0])
            raise ForecastError(
                f"symbol {s}: {int(ends[i])} returns up to {origins[i]}, needs at least {length}"
            )
        w = y[ends[:, None] - length + np.arange(length)[None, :]]
        bad = ~np.isfinite(w)
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise ForecastError(
                f"symbol {s}: NaN/inf in the input window ending {origins[i]} "
                f"(position {k - length} from the end)"
            )
        windows[:, j] = w
    return windows


class Forecaster(ABC):
    """Fit on a panel, predict quantiles from any origin, save and load.

    Hyper-parameters are explicit keyword arguments stored unchanged; fitted
    state ends in ``_`` (skfolio's convention). ``format_version`` and
    ``feature_version`` go into every artifact's header and are checked on load.
    """

    name: ClassVar[str]
    format_version: ClassVar[int] = 1
    feature_version: ClassVar[str] = "log_return_v1"
    horizon: int = HORIZON

    @property
    @abstractmethod
    def input_size(self) -> int:
        """How many past returns a prediction needs."""

    @abstractmethod
    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
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

    def get_config(self) -> dict:
        """The header and the hyper-parameters, JSON-ready (written to ``config.json``)."""
        return {**self.header(), **self._hyper_parameters()}

    def _hyper_parameters(self) -> dict[str, Any]:
        """Constructor arguments, JSON-ready; ``cls(**...)`` rebuilds the estimator."""
        raise NotImplementedError(f"{type(self).__name__} defines get_config itself")

    def save(self, directory: Path) -> None:
        """Write ``state.pt``, ``config.json`` and ``scaler.pkl`` into ``directory``.

        Needed only to write an artifact (``kronos train``): a model that does
        not override it is refused then, and works everywhere else.
        """
        raise ForecastError(
            f"forecaster {type(self).__module__}:{type(self).__qualname__} does not implement "
            "save(): it cannot write an artifact (it is fitted on the fly instead)"
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a fitted forecaster saved by :meth:`save`; refuse incompatible files."""
        raise ForecastError(
            f"forecaster {cls.__module__}:{cls.__qualname__} does not implement load(): "
            f"cannot read the artifact {directory}"
        )

    @property
    def version(self) -> str:
        """Identifies the fitted state (set by fit or load)."""
        return getattr(self, "version_", "unfitted")

    # ------------------------------------------------------- shared plumbing

    @classmethod
    def header(cls, *, horizon: bool = False) -> dict[str, Any]:
        """What an artifact of this class must say: name, format and feature versions, quantiles.

        ``horizon``: the header also pins the forecast horizon (graph models, TFT).
        """
        out: dict[str, Any] = {
            "name": cls.name,
            "format_version": cls.format_version,
            "feature_version": cls.feature_version,
        }
        if horizon:
            out["horizon"] = HORIZON
        out["quantiles"] = list(QUANTILES)
        return out

    @staticmethod
    def default_training() -> TrainingConfig:
        """The training settings used when ``training`` is None (neural models)."""
        return TrainingConfig()

    def _training(self) -> TrainingConfig:
        training = getattr(self, "training", None)
        return training if training is not None else self.default_training()

    def _quiet(self) -> bool:
        return not self._training().progress

    @classmethod
    def _from_hyper_parameters(cls, params: dict[str, Any], path: Path | None = None) -> Self:
        """The estimator from saved constructor arguments (``training`` as a dict).

        A bad argument is a :class:`ForecastError` naming ``path``.
        """
        params = dict(params)
        try:
            if isinstance(params.get("training"), dict):
                params["training"] = TrainingConfig(**params["training"])
            return cls(**params)
        except (TypeError, ValueError) as exc:
            raise ForecastError(f"{path or cls.name}: bad hyper-parameters ({exc})") from exc

    def _check_fitted(self) -> None:
        if not hasattr(self, "version_"):
            raise ForecastError(f"{self.name}: not fitted (call fit or load first)")
