"""The forecast service's HTTP schema: request and response bodies (``kronos.serve``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ForecastRequest(BaseModel):
    """Body of ``POST /forecast``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"symbols": ["AAPL", "KO"], "asof": "2020-03-04"}]},
    )

    symbols: list[str] = Field(description="symbols to forecast")
    asof: date | None = Field(None, description="use bars known at this date [default: last bar]")
    raw: bool = Field(False, description="skip the calibration")


class QuantileRow(BaseModel):
    """One symbol and step: daily log-return quantiles for ``target_ts``."""

    symbol: str
    step: int
    target_ts: date
    p05: float
    p50: float
    p95: float


class ForecastResponse(BaseModel):
    """Forecasts of one origin, and how they were made."""

    asof: date = Field(description="as requested (or the last bar)")
    origin: date = Field(description="the last session at or before asof, forecast from")
    model: str
    version: str
    source: Literal["artifact", "fallback"]
    calibrated: bool
    calibration_night: date | None
    fitted_through: date | None = Field(
        description="last day the model saw (training and validation data); None: unrecorded"
    )
    point_in_time: bool = Field(
        description="true iff fitted_through <= origin: the model saw nothing after the origin"
    )
    crossed_rows: int = Field(
        0,
        description="rows the model emitted with crossed quantiles (p05 > p50 or p50 > p95); "
        "sorted before calibration",
    )
    forecasts: list[QuantileRow]


class CalibrationInfo(BaseModel):
    """Whether forecasts are calibrated, with the state of which night."""

    enabled: bool
    night: date | None = Field(description="newest stored state (what a forecast now uses)")


class CacheInfo(BaseModel):
    """Forecast answers cached for the copy of the store in service."""

    entries: int
    max_entries: int
    hits: int = Field(description="answers served from the cache since start")
    computed: int = Field(description="answers computed since start (each request once)")


class StoreInfo(BaseModel):
    """The store and the span of its bars."""

    path: str
    read_at: datetime = Field(description="when the copy in service was read from the file")
    first_bar: date | None
    last_bar: date | None
    symbols: int


class HealthResponse(BaseModel):
    """``GET /health``."""

    status: Literal["ok"]
    model: str
    version: str
    source: Literal["artifact", "fallback"]
    message: str
    fitted_through: date | None = Field(
        description="last day the model saw: the artifact's recorded cutoff, or the last bar the "
        "fallback was fitted on; earlier origins are look-ahead (409 unless allowed)"
    )
    lookahead_allowed: bool = Field(description="whether origins before fitted_through answer")
    calibration: CalibrationInfo
    cache: CacheInfo
    store: StoreInfo


class LoadingResponse(BaseModel):
    """``GET /health`` (503) while the model loads at start-up, or after its load failed."""

    status: Literal["loading", "failed"]
    message: str = Field(description="which model is loading (artifact path, or the fallback)")


class VersionResponse(BaseModel):
    """``GET /version``."""

    kronos: str
    model: str
    model_version: str
    source: Literal["artifact", "fallback"]
    artifact: str | None
    git_commit: str | None
    git_dirty: bool | None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx the service itself raises."""

    detail: str
    symbols: list[str] | None = None
