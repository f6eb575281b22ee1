"""Forecasts for a session from the promoted model, calibrated when a state exists, stored.

What ``kronos forecast``, the calibration job and the notebooks share: load the
promoted artifact (or fit the lightweight fallback and say so), predict from
the origin, apply the newest calibration state, and write raw and calibrated
rows to ``forecasts``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from kronos.calendar import get_calendar
from kronos.calibration import load_calibrator
from kronos.config import CalibrationSettings, DataSettings
from kronos.data import readers
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.models.artifacts import Loaded, load_promoted
from kronos.models.base import Forecaster, retarget
from kronos.models.registry import ForecasterRef


def fallback(name: ForecasterRef, panel: pl.DataFrame) -> Callable[[], Forecaster] | None:
    """What to fit when no artifact is promoted (TFT and the graph models: nothing).

    The lightweight N-BEATS (whitepaper section 3), or a baseline on ``panel``;
    a model not built in (an import path, entry point or class) is built with
    its defaults and fitted on ``panel`` like the baselines. TFT and the graph
    models need sectors, validation rows and minutes of training: train them
    with ``kronos train``.
    """
    from kronos.models.registry import build
    from kronos.models.split import train_valid_split

    if name in ("tft", "stemgnn", "mtgnn", "mtgnn_prior"):
        return None

    def fit() -> Forecaster:
        if name == "nbeats":
            from kronos.models.nbeats import lightweight_nbeats

            return lightweight_nbeats().fit(*train_valid_split(panel))
        return build(name).fit(panel)

    return fit


@dataclass(frozen=True)
class Produced:
    """Forecasts of one origin and how they were made."""

    origin: date
    raw: pl.DataFrame
    calibrated: pl.DataFrame | None  # None without a calibration state (or when disabled)
    calibration_night: date | None
    source: str  # "artifact" or "fallback"
    message: str

    @property
    def best(self) -> pl.DataFrame:
        """The calibrated forecasts when there are some, else the raw ones."""
        return self.calibrated if self.calibrated is not None else self.raw


def forecast_with(
    store: Store,
    loaded: Loaded,
    model: str,
    panel: pl.DataFrame,
    *,
    symbols: Sequence[str] | None = None,
    settings: CalibrationSettings,
    data: DataSettings,
) -> Produced:
    """Forecast steps 1-5 from the panel's last session with a loaded model; calibrate.

    ``target_ts`` counts sessions of ``data.calendar``. Writes nothing; the
    service calls this with the model it loaded once.
    """
    origin = panel["ts"].max()
    raw = retarget(loaded.forecaster.predict(panel, origin, symbols), get_calendar(data.calendar))
    calibrated, night = None, None
    if settings.calibration_enabled:
        names = sorted(raw["symbol"].unique().to_list())
        profiles = readers.profiles(store, origin, names, settings=data)
        sectors = dict(zip(profiles["symbol"], profiles["sector"], strict=True))
        calibrator, night = load_calibrator(store, model, origin, names, sectors, settings)
        if night is not None:
            calibrated = calibrator.apply(raw)
    return Produced(origin, raw, calibrated, night, loaded.source, loaded.message)


def forecast_and_store(
    store: Store,
    model: str,
    panel: pl.DataFrame,
    model_dir: Path,
    *,
    symbols: Sequence[str] | None = None,
    settings: CalibrationSettings,
    data: DataSettings,
    write: bool = True,
) -> Produced:
    """Forecast steps 1-5 from the panel's last session; calibrate; store (idempotent).

    ``model``: a name, import path or entry point; rows and calibration state
    are labelled with the class's ``name``.
    """
    loaded = load_promoted(model_dir, model, fallback(model, panel))
    label = loaded.forecaster.name
    made = forecast_with(store, loaded, label, panel, symbols=symbols, settings=settings, data=data)
    if write:
        store_forecasts(store, label, made)
    return made


def store_forecasts(store: Store, model: str, made: Produced) -> None:
    """Write raw and (when made) calibrated rows to ``forecasts`` (idempotent)."""
    frames = [made.raw.with_columns(calibrated=pl.lit(False))]
    if made.calibrated is not None:
        frames.append(made.calibrated.with_columns(calibrated=pl.lit(True)))
    ingest(store, "forecasts", frames, source=model, origin=f"forecast {model} {made.origin}")
