"""The nightly calibration job (``kronos calibrate``), driven by the store.

For each night from the last stored state to ``asof``, in date order: take the
model's raw step-1 forecasts from the previous session (from the ``forecasts``
table, or predicted and stored now when missing), the returns realized that
night, update the calibrator, and store its state for that night in one
transaction. A night that already has state is never processed again, so the
job is idempotent and a run after skipped nights catches up in order.

Forecasts made during a catch-up come from today's model (promoted artifact or
fallback fit), which may have seen those nights' data: the daily
``kronos forecast`` run stores forecasts as it goes, so a catch-up only fills
gaps. ``kronos bench calibration`` measures the calibrator strictly out of
sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

from kronos.calibration import NightReport, OnlineCalibrator, load_calibrator, write_json
from kronos.config import CalibrationSettings, DataSettings
from kronos.data import readers
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.features.regime import market_features_at, regime_rows, write_regime
from kronos.forecast_quality import repair_frame
from kronos.models.base import Forecaster
from kronos.models.regime import RegimeEncoder, load_promoted_regime
from kronos.models.start_calibration import StartCalibration


@dataclass(frozen=True)
class Night:
    """One processed night."""

    day: date
    origin: date
    report: NightReport
    predicted: bool  # raw forecasts had to be made (none were stored)
    p_turbulent: float | None = None  # the night's regime, read with dynamic lambda only
    crossed: int = 0  # rows of the forecasts made here with crossed quantiles (sorted)


def last_state_date(store: Store, model: str) -> date | None:
    """The newest night with stored calibration state for ``model``."""
    return store.con.execute(
        'SELECT max("asof") FROM calibration_state WHERE model = ?', [model]
    ).fetchall()[0][0]


def _p_turbulent(store: Store, day: date, data: DataSettings) -> float | None:
    """The regime encoder's ``p_turbulent`` of session ``day`` as known that night, if stored."""
    rows = readers.regime_features(store, day, start=day, settings=data)
    return float(rows["p_turbulent"][-1]) if rows.height else None


def refresh_regime(
    store: Store,
    model_dir: Path,
    asof: date,
    source: str | None = "skfolio.sp500",
    *,
    settings: DataSettings,
) -> tuple[RegimeEncoder, int] | None:
    """Store the promoted regime encoder's probabilities of every session up to ``asof``.

    Returns the encoder and the number of new rows (sessions its version had
    not stored yet), or None when no encoder is promoted. Run it each night
    before :func:`nightly_calibrate` when ``CALIBRATION_DYNAMIC_LAMBDA`` is on.
    """
    encoder = load_promoted_regime(model_dir)
    if encoder is None:
        return None
    probabilities = encoder.predict_proba(
        market_features_at(store, asof, source, settings=settings)
    )
    rows = regime_rows(probabilities, encoder.name, encoder.version, encoder.trained_until_)
    return encoder, write_regime(store, rows)


def _step1(store: Store, model: str, origin: date, data: DataSettings) -> pl.DataFrame:
    stored = readers.forecasts(store, origin, model=model, calibrated=False, settings=data)
    return stored.filter((pl.col("asof") == origin) & (pl.col("step") == 1))


def nightly_calibrate(
    store: Store,
    model: str,
    asof: date,
    panel: pl.DataFrame,
    forecaster: Callable[[], Forecaster],
    *,
    since: date | None = None,
    settings: CalibrationSettings,
    data: DataSettings,
    on_night: Callable[[Night], None] | None = None,
    start: StartCalibration | Path | None = None,
) -> list[Night]:
    """Bring ``model``'s calibration state up to ``asof``; return the nights processed.

    ``panel`` holds the universe's returns (``symbol, ts, y``) up to ``asof``;
    ``forecaster`` supplies the model when raw forecasts must be made. With no
    stored state, the first night is ``since`` (default ``asof``). With
    ``CALIBRATION_DYNAMIC_LAMBDA`` each night reads its ``p_turbulent`` from
    ``regime_features`` as known that night (``kronos train regime`` writes
    them); a night without one uses the fixed lambda. ``data`` places what the
    store knew at each night. ``start``: the promoted model's starting
    calibration or its artifact directory (see :func:`load_calibrator`).
    """
    symbols = sorted(panel["symbol"].unique().to_list())
    profiles = readers.profiles(store, asof, symbols, settings=data)
    sectors = dict(zip(profiles["symbol"], profiles["sector"], strict=True))
    last = last_state_date(store, model)
    if last is not None and last >= asof:
        return []
    calibrator, _ = load_calibrator(store, model, asof, symbols, sectors, settings, start)
    days = sorted(panel.filter(pl.col("ts") <= asof)["ts"].unique().to_list())
    if last is None:
        nights = [d for d in days if d >= (since or asof)]
    else:
        nights = [d for d in days if d > last]
    wide = panel.pivot(on="symbol", index="ts", values="y").sort("ts")
    model_obj: Forecaster | None = None
    done = []
    for day in nights:
        origin = max((d for d in days if d < day), default=None)
        if origin is None:
            continue
        raw = _step1(store, model, origin, data)
        predicted, crossed = raw.is_empty(), 0
        if predicted:
            model_obj = model_obj or forecaster()
            frame = model_obj.predict(panel, origin, symbols).with_columns(calibrated=pl.lit(False))
            frame, crossed = repair_frame(frame)  # the calibrator updates on a sorted triple
            ingest(store, "forecasts", [frame], source=model, origin=f"nightly {model} {origin}")
            raw = frame.filter(pl.col("step") == 1)
        aligned = pl.DataFrame({"symbol": symbols}).join(raw, on="symbol", how="left")
        q = {c: aligned[c].fill_null(np.nan).to_numpy() for c in ("p05", "p50", "p95")}
        row = wide.filter(pl.col("ts") == day)
        y = np.array(
            [row[s][0] if s in row.columns and row[s][0] is not None else np.nan for s in symbols]
        )
        dynamic = settings.calibration_dynamic_lambda
        p_turbulent = _p_turbulent(store, day, data) if dynamic else None
        report = calibrator.update(q["p05"], q["p50"], q["p95"], y, p_turbulent)
        state = calibrator.to_frame(model, day).with_columns(updated_at=pl.lit(datetime.now(UTC)))
        ingest(store, "calibration_state", [state], source="nightly", origin=f"{model} {day}")
        night = Night(day, origin, report, predicted, p_turbulent, crossed)
        done.append(night)
        if on_night:
            on_night(night)
    if done and settings.calibration_file is not None:
        write_json(Path(settings.calibration_file), calibrator.to_json(model, done[-1].day))
    return done


def import_json(store: Store, document: dict, settings: CalibrationSettings) -> date:
    """Store a calibration document (``CALIBRATION_FILE``) as the state of its night."""
    calibrator, model, day = OnlineCalibrator.from_json(document, settings)
    state = calibrator.to_frame(model, day).with_columns(updated_at=pl.lit(datetime.now(UTC)))
    ingest(store, "calibration_state", [state], source="import", origin=f"{model} {day}")
    return day
