"""``kronos forecast``: quantile forecasts from the promoted model, into the store."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from kronos.cli._common import DbOption, JsonOption, err, fail, out, table
from kronos.config import CalibrationSettings, DataSettings, ModelSettings, resolve_db_path
from kronos.data import readers
from kronos.data.errors import KronosDataError
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.models.base import Forecaster, ForecastError


def fallback_or_fail(name: str, panel: pl.DataFrame) -> Callable[[], Forecaster] | None:
    """What to fit when no artifact is promoted.

    The lightweight N-BEATS (whitepaper section 3), or a baseline on the panel;
    TFT has no fallback.
    """
    from kronos.models.registry import forecaster_class
    from kronos.models.split import train_valid_split

    if name == "tft":
        return None

    def fit() -> Forecaster:
        if name == "nbeats":
            from kronos.models.nbeats import lightweight_nbeats

            return lightweight_nbeats().fit(*train_valid_split(panel))
        return forecaster_class(name)().fit(panel)

    return fit


def forecast(
    model: Annotated[str, typer.Argument(help="Forecaster name (nbeats, tft, ewma, garch, ...).")],
    asof: Annotated[str | None, typer.Option(help="Origin YYYY-MM-DD [default: last bar].")] = None,
    db: DbOption = None,
    source: Annotated[str, typer.Option(help="Symbols of this bars source.")] = "skfolio.sp500",
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols.")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Artifact root [env MODEL_DIR].")] = None,
    write: Annotated[bool, typer.Option(help="Store the forecasts in the forecasts table.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Predict p05/p50/p95 for steps 1-5 with the promoted artifact (or the fallback fit)."""
    from kronos.features.returns import returns_panel
    from kronos.models.artifacts import load_promoted
    from kronos.nightly import load_calibrator

    cutoff = date.fromisoformat(asof) if asof else date.today()
    names = symbols.split(",") if symbols else None
    try:
        with Store.open(resolve_db_path(db, DataSettings())) as store:
            panel = returns_panel(store, cutoff, names, source=None if names else source)
            origin = panel["ts"].max()
            loaded = load_promoted(
                model_dir or ModelSettings().model_dir, model, fallback_or_fail(model, panel)
            )
            err.print(loaded.message, highlight=False)
            frame = loaded.forecaster.predict(panel, origin, names)
            frames = [frame.with_columns(calibrated=pl.lit(False))]
            settings = CalibrationSettings()
            if settings.calibration_enabled:
                symbols = sorted(frame["symbol"].unique().to_list())
                profiles = readers.profiles(store, origin, symbols)
                sectors = dict(zip(profiles["symbol"], profiles["sector"], strict=True))
                calibrator, night = load_calibrator(
                    store, model, origin, symbols, sectors, settings
                )
                if night is not None:
                    err.print(f"calibrated with the state of {night}", highlight=False)
                    frames.append(calibrator.apply(frame).with_columns(calibrated=pl.lit(True)))
                else:
                    err.print(f"no calibration state for {model} yet: raw forecasts only")
            frame = frames[-1]
            if write:
                ingest(
                    store,
                    "forecasts",
                    frames,
                    source=model,
                    origin=f"kronos forecast {model} {origin}",
                )
    except (ForecastError, KronosDataError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        print(
            json.dumps(
                {"source": loaded.source, "message": loaded.message, "forecasts": frame.to_dicts()},
                default=str,
            )
        )
        return
    label = "calibrated" if frame["calibrated"][0] else "raw"
    rows = [
        [
            r["symbol"],
            str(r["step"]),
            str(r["target_ts"]),
            f"{r['p05']:+.4f}",
            f"{r['p50']:+.4f}",
            f"{r['p95']:+.4f}",
        ]
        for r in frame.iter_rows(named=True)
    ]
    out.print(
        table(
            f"{model} {frame['version'][0]} from {origin} ({label} daily log-return quantiles)",
            ["symbol", "step", "target", "p05", "p50", "p95"],
            rows,
            left=3,
        )
    )
