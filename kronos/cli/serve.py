"""``kronos serve``: the forecast service over HTTP (whitepaper section 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kronos.cli._common import DbOption, err, fail
from kronos.config import load_settings, resolve_db_path
from kronos.errors import KronosError


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    db: DbOption = None,
    model: Annotated[
        str,
        typer.Option(
            help="Forecaster to serve: nbeats, ewma, ..., pkg.mod:Class, entry point, or a "
            "registered version (models:/kronos-nbeats@champion, from MLFLOW_TRACKING_URI)."
        ),
    ] = "nbeats",
    model_dir: Annotated[Path | None, typer.Option(help="Artifact root [env MODEL_DIR].")] = None,
    source: Annotated[
        str, typer.Option(help="Bars source the fallback is fitted on when no artifact exists.")
    ] = "skfolio.sp500",
    max_symbols: Annotated[int, typer.Option(help="Most symbols per request.")] = 100,
) -> None:
    """Serve /health, /forecast and /version (FastAPI, docs at /docs) until interrupted."""
    import uvicorn

    from kronos.serve import ServiceConfig, create_app

    loaded = load_settings()
    settings = loaded.data
    config = ServiceConfig(
        db=resolve_db_path(db, settings),
        model=model,
        model_dir=model_dir or loaded.models.model_dir,
        tracking_uri=loaded.tracking.tracking_uri(),
        fit_source=source,
        max_symbols=max_symbols,
    )
    try:
        app = create_app(config, loaded.calibration, settings)
    except KronosError as exc:
        fail(str(exc))
    service = app.state.service
    err.print(service.loaded.message, highlight=False)
    err.print(f"serving {model} on http://{host}:{port} (docs at /docs)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info")
