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
those loaded (or fitted, up to the store's last bar) at start.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import duckdb
import polars as pl
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from kronos.calendar import Calendar, get_calendar
from kronos.config import CalibrationSettings, DataSettings
from kronos.data.errors import KronosDataError
from kronos.data.store import Store
from kronos.errors import InputError, KronosError, StoreBusy
from kronos.features.returns import returns_panel
from kronos.forecasting import fallback, forecast_with
from kronos.models.artifacts import Loaded, latest_artifact, load_promoted
from kronos.models.base import ForecastError
from kronos.nightly import last_state_date
from kronos.serve_models import (
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
from kronos.tracking import git_state

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------- the service


class ServiceError(KronosError):
    """A request the service refuses, with its HTTP status (and Retry-After for a 503)."""

    def __init__(
        self,
        status: int,
        detail: str,
        symbols: list[str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.symbols = status, detail, symbols
        self.retry_after = retry_after

    def __reduce__(self) -> tuple:
        return type(self), (self.status, self.detail, self.symbols, self.retry_after)


class StoreCache:
    """The store as requests read it: an in-memory copy, re-read when the file changes.

    Each request stats the file (and its write-ahead log); when they changed, one
    request re-reads it with :meth:`Store.snapshot`, holding the file only while
    copying, and the others keep the previous copy meanwhile. A writer holding the
    file leaves the previous copy in service. Before any copy exists a busy store
    is 503; so is a store that cannot be read, and neither message names a path.
    """

    def __init__(self, path: Path, first_read_wait_s: float, retry_after_s: int) -> None:
        self.path = path
        self.first_read_wait_s = first_read_wait_s
        self.retry_after_s = retry_after_s
        self.read_at: datetime | None = None
        self._store: Store | None = None
        self._stamp: tuple | None = None
        self._reading = threading.Lock()

    def _file_stamp(self) -> tuple:
        stamp = []
        for file in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                st = file.stat()
            except OSError:
                stamp.append(None)
            else:
                stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    @contextmanager
    def reader(self) -> Iterator[Store]:
        """A store on the current copy for one request (its own DuckDB cursor)."""
        store = self.current()  # this reference keeps the copy alive until the request ends
        cursor = store.con.cursor()
        try:
            yield Store(cursor, store.path)
        finally:
            cursor.close()

    def current(self) -> Store:
        """The copy of the file as it is now, or the previous one while a writer holds it."""
        stamp, store = self._file_stamp(), self._store
        if store is not None and stamp == self._stamp:
            return store
        if not self._reading.acquire(blocking=store is None):
            return store  # another request is re-reading: keep serving the previous copy
        try:
            if self._store is not None and self._stamp == stamp:
                return self._store  # re-read by the request we waited for
            wait = self.first_read_wait_s if self._store is None else 0.0
            try:
                fresh = Store.snapshot(self.path, lock_wait_s=wait)
            except (StoreBusy, KronosDataError, duckdb.Error) as exc:
                busy = isinstance(exc, StoreBusy)
                if busy and self._store is not None:
                    return self._store
                log.log(logging.WARNING if busy else logging.ERROR, "store %s: %s",
                        "busy" if busy else "unavailable", exc)  # fmt: skip
                why = (
                    "the store is busy: another process is writing it; retry shortly"
                    if busy
                    else "the store is unavailable (the service log says why); retry later"
                )
                raise ServiceError(503, why, retry_after=self.retry_after_s) from exc
            self._store, self._stamp, self.read_at = fresh, stamp, datetime.now(UTC)
            return fresh
        finally:
            self._reading.release()


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

    def forecast(self, symbols: list[str], asof: date | None, raw: bool) -> ForecastResponse:
        """Calibrated (or raw) quantiles of each symbol from the last session at ``asof``."""
        names = clean_symbols(symbols, self.config.max_symbols)
        with self.stores.reader() as store:
            asof = check_request(store, names, asof, self.data, self.calendar)
            panel = returns_panel(store, asof, names, settings=self.data)
            try:
                with self.lock:
                    made = forecast_with(
                        store,
                        self.loaded,
                        self.loaded.forecaster.name,  # the label its forecasts are stored under
                        panel,
                        symbols=names,
                        settings=self.calibration,
                        data=self.data,
                    )
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
            forecasts=[
                QuantileRow.model_validate(r)
                for r in frame.select(list(QuantileRow.model_fields)).iter_rows(named=True)
            ],
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
            calibration=CalibrationInfo(enabled=self.calibration.calibration_enabled, night=night),
            store=StoreInfo(
                path=str(self.config.db),
                read_at=self.stores.read_at,
                first_bar=first,
                last_bar=last,
                symbols=n,
            ),
        )


def clean_symbols(symbols: list[str], max_symbols: int) -> list[str]:
    """Symbols split on commas, stripped, upper-cased as ingest stores them, de-duplicated.

    422 if none or too many.
    """
    names = [p.strip().upper() for s in symbols for p in s.split(",") if p.strip()]
    names = list(dict.fromkeys(names))
    if not names:
        raise ServiceError(422, "no symbols given: pass at least one, e.g. symbols=AAPL,KO")
    if len(names) > max_symbols:
        raise ServiceError(422, f"too many symbols: {len(names)}, at most {max_symbols} a request")
    return names


def check_request(
    store: Store, names: list[str], asof: date | None, data: DataSettings, calendar: Calendar
) -> date:
    """The request's ``asof`` (the last bar when None), or a 4xx naming the problem.

    Unknown symbols are 404; asof outside the bars, a symbol without bars up to
    asof or with more than ``qa_max_gap_days`` sessions of ``calendar`` missing
    between its last bar and the origin is 422.
    """
    known = {r[0] for r in store.con.execute("SELECT DISTINCT symbol FROM bars").fetchall()}
    unknown = [s for s in names if s not in known]
    if unknown:
        hints = [
            f"{s} (did you mean {m[0]}?)"
            if (m := difflib.get_close_matches(s.upper(), known, n=1))
            else s
            for s in unknown
        ]
        detail = f"unknown symbols, no bars in the store: {', '.join(hints)}"
        raise ServiceError(404, detail, unknown)
    first, last = store.con.execute("SELECT min(ts), max(ts) FROM bars").fetchall()[0]
    asof = asof or last
    if asof > last:
        raise ServiceError(422, f"asof {asof} is after the last bar in the store ({last})")
    if asof < first:
        raise ServiceError(422, f"asof {asof} is before the first bar in the store ({first})")
    origin = store.con.execute("SELECT max(ts) FROM bars WHERE ts <= ?", [asof]).fetchall()[0][0]
    rows = store.con.execute(
        "SELECT symbol, max(ts) FROM bars "
        "WHERE ts <= ? AND symbol IN (SELECT unnest(?::VARCHAR[])) GROUP BY symbol",
        [asof, names],
    ).fetchall()
    last_bar = dict(rows)
    missing = [s for s in names if s not in last_bar]
    if missing:
        raise ServiceError(422, f"no bars up to asof {asof} for: {', '.join(missing)}", missing)
    gap = data.qa_max_gap_days
    stale = [s for s in names if calendar.sessions_between(last_bar[s], origin) > gap]
    if stale:
        detail = ", ".join(f"{s} (last bar {last_bar[s]})" for s in stale)
        raise ServiceError(
            422,
            f"more than {gap} {calendar.name} sessions without bars before {origin}: {detail}",
            stale,
        )
    return asof


def load_model(config: ServiceConfig, data: DataSettings) -> tuple[Loaded, date | None]:
    """The promoted artifact, else the fallback fitted on the store's bars (and up to when).

    ``config.model``: a built-in name, import path or entry point (artifacts
    under ``kronos-<class name>``), or a ``models:/`` URI: that registry
    version, downloaded from ``config.tracking_uri`` (no fallback).
    """
    from kronos.mlflow_registry import is_model_uri, load_registered
    from kronos.models.registry import model_name

    if is_model_uri(config.model):
        if not config.tracking_uri:
            raise InputError(f"{config.model}: no MLflow tracking URI to download it from")
        found = load_registered(
            config.model, tracking_uri=config.tracking_uri, model_dir=config.model_dir
        )
        return found, None
    if latest_artifact(config.model_dir, model_name(config.model)) is not None:
        return load_promoted(config.model_dir, config.model), None
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
    service = Service(
        config,
        loaded,
        calibration,
        data,
        get_calendar(data.calendar),
        fitted_through,
        threading.Lock(),
        StoreCache(config.db, config.first_read_wait_s, config.retry_after_s),
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
    app = FastAPIOffline(  # /docs and /redoc from packaged assets: no CDN
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

    @app.get("/forecast", responses=_ERRORS)
    def forecast_get(
        symbols: Annotated[list[str], Query(description="comma-separated or repeated")],
        asof: Annotated[date | None, Query(description="YYYY-MM-DD [default: last bar]")] = None,
        raw: Annotated[bool, Query(description="skip the calibration")] = False,
    ) -> ForecastResponse:
        """Quantile forecasts of steps 1-5 from the last session at or before asof."""
        return startup.ready().forecast(symbols, asof, raw)

    @app.post("/forecast", responses=_ERRORS)
    def forecast_post(request: ForecastRequest) -> ForecastResponse:
        """As ``GET /forecast``, with a JSON body."""
        return startup.ready().forecast(request.symbols, request.asof, request.raw)

    return app
