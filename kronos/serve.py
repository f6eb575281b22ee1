"""The forecast service (whitepaper section 3, "Service operation"): FastAPI on 8080.

:func:`create_app` loads the promoted artifact once (or fits the lightweight
fallback on the store and says so) and serves ``GET /health``, ``GET|POST
/forecast``, ``GET /version`` and the OpenAPI docs at ``/docs`` and ``/redoc``
(assets packaged by fastapi-offline, no CDN). ``kronos serve`` listens first and
loads in a thread: until the model is ready, ``/health`` answers 503 with
``status: loading`` and what is loading, and the other endpoints 503 with
Retry-After. Everything the app needs is passed in; the app keeps its state on
``app.state.startup`` (and ``app.state.service`` once loaded).

Requests read an in-memory copy of the store (:class:`StoreCache`), re-read
when the file changes. DuckDB lets one process write a file or any number read
it, never both at once: the service holds the file only while copying it (tens
of milliseconds), so a writer (``kronos data ingest``, ``kronos calibrate``, a
notebook) gets it between two copies, and while a writer holds it requests are
answered from the previous copy. Only before a first copy exists does a busy
store give 503 with ``Retry-After``. Error bodies name no file system path.
Forecasts at ``asof`` read only the bars known then; the model's parameters are
those loaded (or fitted, up to the store's last bar) at start, so the model is
*fitted through* its artifact's last training/validation day (METRICS.json
``data_range``) or the store's last bar (the fallback). An ``asof`` whose origin
lies before that day would use the future: 409, unless the service runs with
``allow_lookahead`` (``kronos serve --allow-lookahead``); every answer says
``fitted_through`` and ``point_in_time`` (see :mod:`kronos.forecasting`).

Answers are cached per request (symbols, asof, raw) and copy of the store: a
repeated request is served from memory without touching the model or the
store, a request already being computed is awaited rather than computed again,
and the cache (bounded, least recently used first out) starts empty with each
new copy of the store, so new bars or a new calibration state are answered
afresh. The model is fixed for the life of the service and part of each key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import polars as pl
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from kronos.calendar import Calendar, get_calendar
from kronos.config import CalibrationSettings, DataSettings
from kronos.data.store import Store
from kronos.errors import InputError, KronosError, LookAhead
from kronos.features.returns import returns_panel
from kronos.forecasting import Produced, ResultCache, fallback, forecast_with, point_in_time
from kronos.models.artifacts import Loaded, latest_artifact, load_promoted
from kronos.models.base import ForecastError
from kronos.models.registry import is_builtin
from kronos.nightly import last_state_date
from kronos.serve_docs import offline_app
from kronos.serve_models import (
    CacheInfo,
    CalibrationInfo,
    ErrorResponse,
    ForecastRequest,
    ForecastResponse,
    HealthResponse,
    LoadingResponse,
    QuantileRow,
    StoreInfo,
    VersionResponse,
)
from kronos.serve_request import clean_symbols, resolve_request
from kronos.serve_store import ServiceError, StoreCache, StoreFacts
from kronos.tracking import git_state

log = logging.getLogger(__name__)

# built-in models whose forecast of a symbol depends on that symbol's returns only, so
# one forecast of the whole universe at an origin answers every request there (the
# graph models and TFT forecast the symbols they are given together: not these)
PER_SYMBOL = frozenset({"historical", "ewma", "garch", "nbeats", "nbeats_default", "fracast"})
ORIGINS_KEPT = 64  # origins whose whole-universe forecasts are kept per copy of the store
UNIVERSE_FAILED = "universe-failed"  # cached: a symbol at that origin cannot be forecast


class ServiceConfig(BaseModel):
    """What the service serves and from where."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db: Path = Field(description="DuckDB store, copied into memory and re-read when it changes")
    model: str = Field(
        "nbeats", description="forecaster name, or a models:/ URI of MLflow's model registry"
    )
    model_dir: Path = Field(Path("data/models"), description="artifact root (MODEL_DIR)")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking server a models:/ model is downloaded from"
    )
    fit_source: str | None = Field(
        "skfolio.sp500", description="bars source the fallback is fitted on (None: all bars)"
    )
    max_symbols: int = Field(100, ge=1, description="most symbols per forecast request")
    first_read_wait_s: float = Field(
        2.0, ge=0, description="how long a request waits for a busy store before any copy exists"
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After of a 503 (seconds)")
    allow_lookahead: bool = Field(
        False, description="answer an asof before the model's training cutoff (not point in time)"
    )
    cache_size: int = Field(
        4096, ge=0, description="forecast answers kept per copy of the store (0: none)"
    )


# ---------------------------------------------------------------- the service


@dataclass
class Service:
    """The loaded model and settings one app serves with."""

    config: ServiceConfig
    loaded: Loaded
    calibration: CalibrationSettings
    data: DataSettings
    calendar: Calendar
    fitted_through: date | None
    lock: threading.Lock  # Lightning models are not safe to predict from two threads
    stores: StoreCache
    answers: ResultCache = field(default_factory=lambda: ResultCache(0))
    # per (copy, origin): the forecasts of every symbol with a bar at the origin, or
    # UNIVERSE_FAILED when one of them cannot be forecast (requests then go one by one)
    origins: ResultCache = field(default_factory=lambda: ResultCache(ORIGINS_KEPT))
    _facts: tuple[int, StoreFacts] | None = field(default=None, init=False, repr=False)
    _answered: int = field(default=0, init=False, repr=False)  # the generation answers are of

    def _key(self, names: list[str], asof: date | None, raw: bool, generation: int) -> tuple:
        model = (self.loaded.directory, self.loaded.forecaster.version)
        return (generation, model, tuple(names), asof, raw)

    def cached(self, symbols: list[str], asof: date | None, raw: bool) -> bytes | None:
        """The JSON answer when this request was answered on the current copy; never computes."""
        names = clean_symbols(symbols, self.config.max_symbols)
        generation = self.stores.unchanged()
        if generation is None:
            return None
        found = self.answers.peek(self._key(names, asof, raw, generation))
        return found if isinstance(found, bytes) else None

    def forecast_json(self, symbols: list[str], asof: date | None, raw: bool) -> bytes:
        """:meth:`forecast` as JSON, computed once per request and copy of the store."""
        names = clean_symbols(symbols, self.config.max_symbols)
        with self.stores.copy() as (store, generation):
            if generation > self._answered:  # a newer copy: what older ones answered is obsolete
                self._answered = generation
                self.answers.clear()
                self.origins.clear()

            def compute() -> bytes:
                return self._answer(store, generation, names, asof, raw).model_dump_json().encode()

            body = self.answers.get(self._key(names, asof, raw, generation), compute)
        assert isinstance(body, bytes)
        return body

    def forecast(self, symbols: list[str], asof: date | None, raw: bool) -> ForecastResponse:
        """Calibrated (or raw) quantiles of each symbol from the last session at ``asof``."""
        names = clean_symbols(symbols, self.config.max_symbols)
        with self.stores.copy() as (store, generation):
            return self._answer(store, generation, names, asof, raw)

    def facts(self, store: Store, generation: int) -> StoreFacts:
        """What every request checks against, read once per copy of the store."""
        known = self._facts
        if known is None or known[0] != generation:
            known = (generation, StoreFacts.read(store))
            if self._facts is None or self._facts[0] < generation:
                self._facts = known
        return known[1]

    def _answer(
        self, store: Store, generation: int, names: list[str], asof: date | None, raw: bool
    ) -> ForecastResponse:
        facts = self.facts(store, generation)
        asof, origin = resolve_request(store, names, asof, self.data, self.calendar, facts)
        allow = self.config.allow_lookahead
        try:
            point_in_time(self.fitted_through, asof, origin, allow_lookahead=allow)
            made = self._at_origin(store, generation, facts, asof, origin, names)
            if made is None:
                panel = returns_panel(store, asof, names, settings=self.data)
                made = self._forecast(store, panel, names)
            # the origin forecast from, which a stale symbol may put before the store's
            honest = point_in_time(self.fitted_through, asof, made.origin, allow_lookahead=allow)
            if made.crossed_note:
                log.warning("%s: %s", self.loaded.forecaster.name, made.crossed_note)
        except LookAhead as exc:
            raise ServiceError(409, str(exc)) from exc
        except ForecastError as exc:
            raise ServiceError(422, str(exc)) from exc
        frame = made.raw if raw else made.best
        order = {s: i for i, s in enumerate(names)}
        frame = frame.sort(pl.col("symbol").replace_strict(order), "step")
        return ForecastResponse(
            asof=asof,
            origin=made.origin,
            model=self.loaded.forecaster.name,
            version=self.loaded.forecaster.version,
            source=made.source,
            calibrated=not raw and made.calibrated is not None,
            calibration_night=None if raw else made.calibration_night,
            fitted_through=self.fitted_through,
            point_in_time=honest,
            crossed_rows=made.crossed_rows,
            forecasts=[
                QuantileRow.model_validate(r)
                for r in frame.select(list(QuantileRow.model_fields)).iter_rows(named=True)
            ],
        )

    def _forecast(self, store: Store, panel: pl.DataFrame, names: list[str]) -> Produced:
        return forecast_with(
            store,
            self.loaded,
            self.loaded.forecaster.name,  # the label its forecasts are stored under
            panel,
            symbols=names,
            settings=self.calibration,
            data=self.data,
            lock=self.lock,
        )

    def _at_origin(
        self,
        store: Store,
        generation: int,
        facts: StoreFacts,
        asof: date,
        origin: date,
        names: list[str],
    ) -> Produced | None:
        """``names``' forecasts cut from the whole universe's at ``origin``, computed once.

        Only for per-symbol models (a graph model forecasts the symbols it is
        given together) and symbols whose last bar is the origin itself (a stale
        symbol is forecast from its own last session); None otherwise, or when
        some symbol of the universe cannot be forecast: the request is then
        computed on its own.
        """
        model = self.loaded.forecaster
        if not (is_builtin(type(model)) and model.name in PER_SYMBOL):
            return None
        _, last_bar = facts.bars_at(store, asof)
        if any(last_bar[s] != origin for s in names):
            return None
        universe = sorted(s for s, day in last_bar.items() if day == origin)

        def compute() -> object:
            panel = returns_panel(store, asof, universe, settings=self.data)
            try:
                return self._forecast(store, panel, universe)
            except KronosError:  # e.g. one symbol too short: the requests go one by one
                return UNIVERSE_FAILED

        made = self.origins.get((generation, self.loaded.forecaster.version, asof), compute)
        if not isinstance(made, Produced):
            return None
        wanted = pl.col("symbol").is_in(names)
        return replace(
            made,
            raw=made.raw.filter(wanted),
            calibrated=None if made.calibrated is None else made.calibrated.filter(wanted),
            crossed={s: n for s, n in made.crossed.items() if s in names},
        )

    def health(self) -> HealthResponse:
        """Model, calibration and store summary."""
        with self.stores.reader() as store:
            first, last, n = store.con.execute(
                "SELECT min(ts), max(ts), count(DISTINCT symbol) FROM bars"
            ).fetchall()[0]
            night = None
            if self.calibration.calibration_enabled:
                night = last_state_date(store, self.loaded.forecaster.name)
        return HealthResponse(
            status="ok",
            model=self.loaded.forecaster.name,
            version=self.loaded.forecaster.version,
            source=self.loaded.source,
            message=self.loaded.message,
            fitted_through=self.fitted_through,
            lookahead_allowed=self.config.allow_lookahead,
            calibration=CalibrationInfo(enabled=self.calibration.calibration_enabled, night=night),
            cache=CacheInfo(
                entries=len(self.answers),
                max_entries=self.answers.maxsize,
                hits=self.answers.hits,
                computed=self.answers.misses,
            ),
            store=StoreInfo(
                path=str(self.config.db),
                read_at=self.stores.read_at,
                first_bar=first,
                last_bar=last,
                symbols=n,
            ),
        )


def fitted_through(loaded: Loaded) -> date | None:
    """The last day an artifact's model saw (METRICS.json ``data_range``); None if unrecorded."""
    from kronos.backtest.forecasts import artifact_cutoff

    if loaded.directory is None:
        return None
    try:
        return artifact_cutoff(loaded.directory)
    except InputError as exc:
        log.warning("no training cutoff: %s; every request is look-ahead", exc)
        return None


def load_model(config: ServiceConfig, data: DataSettings) -> tuple[Loaded, date | None]:
    """The promoted artifact, else the fallback fitted on the store's bars; and fitted through.

    ``config.model``: a built-in name, import path or entry point (artifacts
    under ``kronos-<class name>``), or a ``models:/`` URI: that registry
    version, downloaded from ``config.tracking_uri`` (no fallback). The second
    item is the last day the model saw: the artifact's recorded cutoff (None if
    it records none), or the store's last bar for the fallback.
    """
    from kronos.mlflow_registry import is_model_uri, load_registered
    from kronos.models.registry import model_name

    if is_model_uri(config.model):
        if not config.tracking_uri:
            raise InputError(f"{config.model}: no MLflow tracking URI to download it from")
        found = load_registered(
            config.model, tracking_uri=config.tracking_uri, model_dir=config.model_dir
        )
        return found, fitted_through(found)
    if latest_artifact(config.model_dir, model_name(config.model)) is not None:
        loaded = load_promoted(config.model_dir, config.model)
        return loaded, fitted_through(loaded)
    with Store.open(config.db, read_only=True, lock_wait_s=data.lock_wait_s) as store:
        last = store.con.execute("SELECT max(ts) FROM bars").fetchall()[0][0]
        if last is None:
            raise InputError(f"no bars in {config.db} to fit the fallback {config.model} on")
        panel = returns_panel(store, last, source=config.fit_source, settings=data)
    return load_promoted(config.model_dir, config.model, fallback(config.model, panel)), last


def describe_load(config: ServiceConfig) -> str:
    """What :func:`load_model` will do for ``config``, said before it starts (for logs, /health)."""
    from kronos.mlflow_registry import is_model_uri
    from kronos.models.registry import model_name

    if is_model_uri(config.model):
        return f"downloading {config.model} from the MLflow registry"
    found = latest_artifact(config.model_dir, model_name(config.model))
    if found is not None:
        return f"loading the promoted artifact {found}"
    return f"fitting the fallback {config.model} on the store's bars (no promoted artifact)"


def _kronos_version() -> str:
    try:
        return version("kronos")
    except PackageNotFoundError:
        return "unknown"


def version_info(service: Service) -> VersionResponse:
    """Package, model and code versions."""
    kronos_version = _kronos_version()
    git = git_state(Path(__file__).parent)
    commit = git["git_commit"] if git["git_commit"] != "unknown" else None
    directory = service.loaded.directory
    return VersionResponse(
        kronos=kronos_version,
        model=service.config.model,
        model_version=service.loaded.forecaster.version,
        source=service.loaded.source,
        artifact=str(directory) if directory else None,
        git_commit=commit,
        git_dirty=git["git_dirty"] == "true" if commit else None,
    )


# ---------------------------------------------------------------- the app

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "unknown symbol(s)"},
    409: {
        "model": ErrorResponse,
        "description": "asof before the model's training cutoff (look-ahead; see "
        "--allow-lookahead)",
    },
    422: {"description": "invalid request (symbols, asof, or too little history)"},
    503: {
        "model": ErrorResponse,
        "description": "the model is still loading, or the store is unavailable (a writer "
        "holds it and nothing was read yet)",
        "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
    },
}


class Startup:
    """The service once its model is loaded, what is loading meanwhile, or why it failed."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        self.message = message
        self.retry_after_s = retry_after_s
        self.service: Service | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def ready(self) -> Service:
        """The service, or a 503 (Retry-After while loading) saying what is loading or failed."""
        if self.service is not None:
            return self.service
        if self.error is not None:
            raise ServiceError(503, f"the model failed to load: {self.error}")
        raise ServiceError(503, f"starting: {self.message}", retry_after=self.retry_after_s)


Loader = Callable[[ServiceConfig, DataSettings], tuple[Loaded, date | None]]


def start_service(
    config: ServiceConfig,
    calibration: CalibrationSettings,
    data: DataSettings,
    loader: Loader = load_model,
) -> Service:
    """Load (or fit) the model with ``loader`` and read the first copy of the store."""
    loaded, fitted_through = loader(config, data)
    log.info(
        "fitted through %s: earlier origins %s",
        fitted_through or "an unrecorded day",
        "are answered (look-ahead allowed)" if config.allow_lookahead else "get 409",
    )
    service = Service(
        config,
        loaded,
        calibration,
        data,
        get_calendar(data.calendar),
        fitted_through,
        threading.Lock(),
        StoreCache(config.db, config.first_read_wait_s, config.retry_after_s),
        ResultCache(config.cache_size),
    )
    try:  # the first copy now, so the first request does not pay for it
        service.stores.current()
    except ServiceError as exc:
        log.warning("no copy of the store yet (%s); requests get 503 until one is read", exc)
    return service


def _load_in_background(
    startup: Startup,
    build: Callable[[], Service],
    on_done: Callable[[Startup], None] | None,
) -> None:
    log.info("model: %s", startup.message)
    try:
        startup.service = build()
        log.info("model ready: %s", startup.service.loaded.message)
    except Exception as exc:  # any failure is reported on /health and by on_done
        startup.error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load (%s): %s", startup.message, startup.error)
    finally:
        startup.done.set()
        if on_done is not None:
            on_done(startup)


def create_app(
    config: ServiceConfig,
    calibration: CalibrationSettings,
    data: DataSettings,
    *,
    background: bool = False,
    loader: Loader = load_model,
    on_done: Callable[[Startup], None] | None = None,
) -> FastAPI:
    """The service app with the settings its edge resolved; loads (or fits) the model once.

    ``background=False`` loads before returning (errors raise here); ``True`` returns
    at once and loads in a thread: meanwhile ``/health``, ``/forecast`` and
    ``/version`` answer 503 with Retry-After and what is loading, and ``on_done``
    is called with the :class:`Startup` when the load succeeded or failed.
    """
    startup = Startup(describe_load(config), config.retry_after_s)
    app = offline_app(  # /docs and /redoc from packaged assets: no CDN
        title="Kronos forecast service",
        version=_kronos_version(),
        description="Calibrated p05/p50/p95 daily log-return forecasts, steps 1-5.",
    )
    app.state.startup = startup

    def build() -> Service:
        service = start_service(config, calibration, data, loader)
        app.state.service = service
        return service

    if background:
        threading.Thread(
            target=_load_in_background,
            args=(startup, build, on_done),
            name="kronos-serve-load",
            daemon=True,
        ).start()
    else:
        startup.service = build()
        startup.done.set()
    abouts: list[VersionResponse] = []

    @app.exception_handler(ServiceError)
    def _refused(request: Request, exc: ServiceError) -> JSONResponse:
        body = ErrorResponse(detail=exc.detail, symbols=exc.symbols)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=exc.status, headers=headers
        )

    loading_503 = {
        "model": LoadingResponse,
        "description": "the model is loading (Retry-After) or failed to load; or no store copy",
    }

    @app.get("/health", responses={503: loading_503}, response_model=HealthResponse)
    def health() -> HealthResponse | JSONResponse:
        """Model, calibration state and store span; while the model loads, what is loading."""
        if startup.service is None:
            failed = startup.error is not None
            body = LoadingResponse(
                status="failed" if failed else "loading",
                message=startup.error if failed else startup.message,
            )
            headers = None if failed else {"Retry-After": str(startup.retry_after_s)}
            return JSONResponse(body.model_dump(), status_code=503, headers=headers)
        return startup.service.health()

    @app.get("/version", responses={503: _ERRORS[503]})
    def version_() -> VersionResponse:
        """Package version, model version, artifact path, git commit."""
        service = startup.ready()
        if not abouts:
            abouts.append(version_info(service))
        return abouts[0]

    async def answer(symbols: list[str], asof: date | None, raw: bool) -> Response:
        service = startup.ready()
        body = service.cached(symbols, asof, raw)  # a repeat: from memory, on the event loop
        if body is None:  # reading the store and predicting block: in the thread pool
            body = await run_in_threadpool(service.forecast_json, symbols, asof, raw)
        return Response(body, media_type="application/json")

    @app.get("/forecast", responses=_ERRORS, response_model=ForecastResponse)
    async def forecast_get(
        symbols: Annotated[list[str], Query(description="comma-separated or repeated")],
        asof: Annotated[date | None, Query(description="YYYY-MM-DD [default: last bar]")] = None,
        raw: Annotated[bool, Query(description="skip the calibration")] = False,
    ) -> Response:
        """Quantile forecasts of steps 1-5 from the last session at or before asof."""
        return await answer(symbols, asof, raw)

    @app.post("/forecast", responses=_ERRORS, response_model=ForecastResponse)
    async def forecast_post(request: ForecastRequest) -> Response:
        """As ``GET /forecast``, with a JSON body."""
        return await answer(request.symbols, request.asof, request.raw)

    return app
