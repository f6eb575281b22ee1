"""``kronos calibrate``: the nightly calibration update (whitepaper section 5)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from kronos.cli._common import DbOption, JsonOption, err, fail, open_store, out, parse_day, table
from kronos.config import load_settings, settings_hash
from kronos.errors import KronosError


def calibrate(
    asof: Annotated[str, typer.Option(help="Bring the state up to this night (YYYY-MM-DD).")],
    model: Annotated[
        str,
        typer.Option(help="Forecaster whose forecasts are calibrated (name, pkg.mod:Class, ...)."),
    ] = "nbeats",
    since: Annotated[
        str | None, typer.Option(help="First night when no state exists yet [default: --asof].")
    ] = None,
    db: DbOption = None,
    source: Annotated[str, typer.Option(help="Universe: symbols of this source.")] = (
        "skfolio.sp500"
    ),
    model_dir: Annotated[Path | None, typer.Option(help="Artifact root [env MODEL_DIR].")] = None,
    import_file: Annotated[
        Path | None, typer.Option("--import", help="Load a calibration JSON into the store.")
    ] = None,
    mlflow: Annotated[
        bool, typer.Option(help="Record the run in MLflow (kronos-calibration).")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Update the calibrator night by night up to --asof; idempotent, catches up in order."""
    from kronos.calibration import read_json
    from kronos.features.returns import returns_panel
    from kronos.forecasting import fallback
    from kronos.models.artifacts import latest_artifact, load_promoted
    from kronos.models.registry import model_name
    from kronos.nightly import import_json, nightly_calibrate, refresh_regime
    from kronos.tracking import mlflow_run

    loaded = load_settings()
    settings = loaded.calibration
    run_id = None
    reference = model
    try:
        model = model_name(reference)  # forecasts and state are labelled with the class's name
        night_date = parse_day(asof, "--asof")
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(open_store(db, settings=loaded.data))
            if import_file is not None:
                day = import_json(store, read_json(import_file), settings)
                out.print(f"imported calibration state for {day} from {import_file}")
                return
            if mlflow:
                tags = {"model": model, "asof": str(night_date), "source": source}
                recorder = stack.enter_context(
                    mlflow_run("kronos-calibration", f"calibrate-{model}", tags, settings=loaded)
                )
                run_id = recorder.run_id
            panel = returns_panel(store, night_date, source=source, settings=loaded.data)
            root = model_dir or loaded.models.model_dir
            if settings.calibration_dynamic_lambda:
                refreshed = refresh_regime(store, root, night_date, source, settings=loaded.data)
                err.print(
                    "dynamic lambda: no promoted regime encoder (kronos train regime), "
                    "lambda stays fixed"
                    if refreshed is None
                    else f"dynamic lambda: regime encoder {refreshed[0].version}, "
                    f"{refreshed[1]} new session(s) of regime features",
                    highlight=False,
                )

            def forecaster():
                found = load_promoted(root, reference, fallback(reference, panel))
                err.print(found.message, highlight=False)
                return found.forecaster

            nights = nightly_calibrate(
                store,
                model,
                night_date,
                panel,
                forecaster,
                since=parse_day(since, "--since") if since else None,
                settings=settings,
                data=loaded.data,
                on_night=lambda n: err.print(f"[dim]night {n.day}: {n.report.used} used[/dim]"),
                start=latest_artifact(root, model),  # its CALIBRATION_START.json, if any
            )
    except KronosError as exc:
        fail(str(exc))
    result = [
        {
            "night": str(n.day),
            "origin": str(n.origin),
            "used": n.report.used,
            "skipped_return": n.report.skipped_return,
            "skipped_residual": n.report.skipped_residual,
            "missing": n.report.missing,
            "forecasts_made": n.predicted,
            "crossed_rows": n.crossed,
        }
        for n in nights
    ]
    if as_json:
        payload = {"model": model, "asof": asof, "nights": result}
        payload |= {"settings_hash": settings_hash(loaded), "mlflow_run_id": run_id}
        print(json.dumps(payload))
        return
    summary = f"settings {settings_hash(loaded)}" + (f"  MLflow run {run_id}" if run_id else "")
    if not nights:
        out.print(f"{model}: calibration state already up to {asof}; nothing to do")
        out.print(summary, highlight=False)
        return
    rows = [
        [
            r["night"],
            r["origin"],
            str(r["used"]),
            str(r["skipped_return"]),
            str(r["skipped_residual"]),
            str(r["missing"]),
            "yes" if r["forecasts_made"] else "",
        ]
        for r in result
    ]
    out.print(
        table(
            f"{model} calibration: {len(nights)} night(s)",
            [
                "night",
                "forecast origin",
                "used",
                "|y|>10%",
                ">4 sigma",
                "missing",
                "forecasts made",
            ],
            rows,
            left=2,
        )
    )
    out.print(summary, highlight=False)
