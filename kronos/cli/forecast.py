"""``kronos forecast``: quantile forecasts from the promoted model, into the store.

The model is the promoted artifact under MODEL_DIR (``latest``), or a version
of MLflow's model registry (``models:/kronos-nbeats@champion``,
``models:/kronos-nbeats/3``) downloaded from the tracking server.

An artifact fitted through day D (METRICS.json ``data_range``) forecasts only
from origins on or after D; an earlier ``--asof`` exits 2 unless
``--allow-lookahead`` (the rule: :mod:`kronos.forecasting`). The fallback is
fitted on the bars up to the origin, so it is always point in time.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from kronos.cli._common import DbOption, JsonOption, err, fail, open_store, out, parse_day, table
from kronos.config import load_settings
from kronos.errors import KronosError


def forecast(
    model: Annotated[
        str,
        typer.Argument(
            help="Forecaster: nbeats, ewma, garch, ..., pkg.mod:Class, entry point, or a "
            "registered version: models:/kronos-nbeats@champion, models:/kronos-nbeats/3."
        ),
    ],
    asof: Annotated[str | None, typer.Option(help="Origin YYYY-MM-DD [default: last bar].")] = None,
    db: DbOption = None,
    source: Annotated[str, typer.Option(help="Symbols of this bars source.")] = "skfolio.sp500",
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols.")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Artifact root [env MODEL_DIR].")] = None,
    write: Annotated[bool, typer.Option(help="Store the forecasts in the forecasts table.")] = True,
    allow_lookahead: Annotated[
        bool,
        typer.Option(
            "--allow-lookahead",
            help="Forecast from an origin before the artifact's training cutoff "
            "(point_in_time: false); exit 2 otherwise.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Predict p05/p50/p95 for steps 1-5 with the promoted artifact (or the fallback fit)."""
    from kronos.features.returns import returns_panel
    from kronos.forecasting import (
        forecast_and_store,
        forecast_with,
        point_in_time,
        store_forecasts,
    )
    from kronos.mlflow_registry import is_model_uri, load_registered
    from kronos.models.artifacts import latest_artifact
    from kronos.models.registry import model_name

    names = symbols.split(",") if symbols else None
    loaded = load_settings()
    settings, data = loaded.calibration, loaded.data
    try:
        cutoff = parse_day(asof, "--asof") if asof else date.today()
        root = model_dir or loaded.models.model_dir
        # a registry version (no fallback fit), downloaded before the store is held for writing
        registered = (
            load_registered(model, tracking_uri=loaded.tracking.tracking_uri(), model_dir=root)
            if is_model_uri(model)
            else None
        )
        with open_store(db, settings=data) as store:
            panel = returns_panel(
                store, cutoff, names, source=None if names else source, settings=data
            )
            origin = panel["ts"].max()
            if registered is not None:
                artifact = registered.directory
            else:
                artifact = latest_artifact(root, model_name(model))
            # the fallback is fitted on this panel: through the origin
            fitted = _fitted_through(artifact) if artifact is not None else origin
            honest = origin is not None and point_in_time(
                fitted, cutoff, origin, allow_lookahead=allow_lookahead
            )
            if not honest:
                err.print(
                    f"[yellow]look-ahead allowed[/]: model fitted through {fitted}, "
                    f"after the origin {origin}",
                    highlight=False,
                )
            if registered is not None:
                stored_as = registered.forecaster.name  # rows and calibration as a local one's
                made = forecast_with(
                    store, registered, stored_as, panel, symbols=names, settings=settings, data=data
                )
                if write:
                    store_forecasts(store, stored_as, made)
            else:
                made = forecast_and_store(
                    store,
                    model,
                    panel,
                    root,
                    symbols=names,
                    settings=settings,
                    write=write,
                    data=data,
                )
            origin = made.origin
            err.print(made.message, highlight=False)
            if made.crossed_note:
                err.print(f"[yellow]{model}: {made.crossed_note}[/]", highlight=False)
            if made.calibration_night is not None:
                err.print(f"calibrated with the state of {made.calibration_night}", highlight=False)
            elif settings.calibration_enabled:
                err.print(f"no calibration state for {model} yet: raw forecasts only")
            frame = made.best.with_columns(calibrated=pl.lit(made.calibrated is not None))
    except KronosError as exc:
        fail(str(exc))
    if as_json:
        print(
            json.dumps(
                {
                    "source": made.source,
                    "message": made.message,
                    "origin": made.origin,
                    "fitted_through": fitted,
                    "point_in_time": honest,
                    "crossed_rows": made.crossed_rows,
                    "forecasts": frame.to_dicts(),
                },
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


def _fitted_through(directory: Path) -> date | None:
    """The last day an artifact's model saw (METRICS.json ``data_range``); None if unrecorded."""
    from kronos.backtest.forecasts import artifact_cutoff

    try:
        return artifact_cutoff(directory)
    except KronosError:
        return None
