"""``kronos serve``: the forecast service over HTTP (whitepaper section 3)."""

from __future__ import annotations

import contextlib
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
    allow_lookahead: Annotated[
        bool,
        typer.Option(
            "--allow-lookahead",
            help="Answer an asof before the model's training cutoff (answers say "
            "point_in_time: false); refused with 409 otherwise.",
        ),
    ] = False,
    cache_size: Annotated[
        int, typer.Option(help="Forecast answers cached per copy of the store (0: none).", min=0)
    ] = 4096,
) -> None:
    """Serve /health, /forecast and /version (FastAPI, docs at /docs) until interrupted."""
    import uvicorn

    from kronos.serve import ServiceConfig, Startup, create_app

    loaded = load_settings()
    settings = loaded.data
    config = ServiceConfig(
        db=resolve_db_path(db, settings),
        model=model,
        model_dir=model_dir or loaded.models.model_dir,
        tracking_uri=loaded.tracking.tracking_uri(),
        fit_source=source,
        max_symbols=max_symbols,
        allow_lookahead=allow_lookahead,
        cache_size=cache_size,
    )
    server: uvicorn.Server | None = None

    def loaded_or_failed(startup: Startup) -> None:
        if startup.error is not None and server is not None:
            server.should_exit = True  # a service without its model must not keep listening
        elif startup.service is not None:
            err.print(f"ready: {startup.service.loaded.message}", highlight=False)

    try:  # the model loads in a thread: /health says "loading" meanwhile
        app = create_app(
            config, loaded.calibration, settings, background=True, on_done=loaded_or_failed
        )
    except KronosError as exc:
        fail(str(exc))
    startup = app.state.startup
    err.print(f"loading: {startup.message}", highlight=False)
    err.print(f"serving {model} on http://{host}:{port} (docs at /docs)", highlight=False)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    if startup.error is not None:  # failed before the server object existed
        fail(f"the model failed to load ({startup.message}): {startup.error}")
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it handled
        server.run()
    if startup.error is not None:
        fail(f"the model failed to load ({startup.message}): {startup.error}")
