"""Daily bars from the Alpaca market-data API, in the ``bars`` table contract.

Alpaca is asked twice per fetch: once with ``adjustment=raw`` for the traded
open/high/low/close/volume, once with ``adjustment=all`` (splits and dividends)
for ``adj_close``. Alpaca stamps a daily bar with the UTC instant of midnight in
New York (05:00Z in winter, 04:00Z in summer); ``ts`` is that instant's New York
calendar date, the trading day.

Credentials come from ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY`` (environment
or ``.env``, read by :func:`kronos.config.load_settings` into
:class:`~kronos.config.AlpacaDataSettings`) and are held as
:class:`~pydantic.SecretStr`, so they never show in a repr, a log line or an
error message.

Failures are one-line :class:`~kronos.data.errors.SourceError` messages naming
the host and what to check: :class:`~kronos.data.errors.SourceUnreachable` when
no answer came (no connection, unknown host, no answer within
``APCA_DATA_TIMEOUT_S``), ``SourceError`` when Alpaca refused the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import polars as pl
import requests
from alpaca.common.enums import BaseURL
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.models import BarSet
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame
from pydantic import SecretStr

from kronos.config import AlpacaDataSettings
from kronos.data.errors import SourceError, SourceUnreachable
from kronos.data.schema import TABLES
from kronos.errors import ConfigError, InputError

__all__ = [
    "AlpacaConfigError",
    "AlpacaDataSettings",
    "fetch_alpaca_bars",
    "load_alpaca_settings",
]

SOURCE = "alpaca"
EXCHANGE_TZ = ZoneInfo("America/New_York")
_KEY = ["symbol", "ts"]

ENV_KEY_ID = "APCA_API_KEY_ID"
ENV_SECRET_KEY = "APCA_API_SECRET_KEY"
ENV_DATA_URL = "APCA_DATA_URL"
ENV_DATA_FEED = "APCA_DATA_FEED"
ENV_DATA_TIMEOUT = "APCA_DATA_TIMEOUT_S"


class AlpacaConfigError(ConfigError):
    """Alpaca settings are missing or invalid; the message names the variables."""


def load_alpaca_settings(settings: AlpacaDataSettings) -> AlpacaDataSettings:
    """``settings`` (``load_settings().alpaca_data``) once both keys are set.

    Raises:
        AlpacaConfigError: a key variable is unset or empty; the message names the
            variable(s) and never includes a secret.

    """
    missing = [
        name
        for name, key in ((ENV_KEY_ID, settings.api_key), (ENV_SECRET_KEY, settings.secret_key))
        if key is None or not key.get_secret_value().strip()
    ]
    if missing:
        raise AlpacaConfigError(
            f"Alpaca data settings: set {', '.join(missing)} (environment or .env)"
        )
    return settings


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value().strip() if value is not None else ""


def fetch_alpaca_bars(
    symbols: Sequence[str],
    start: date,
    end: date,
    settings: AlpacaDataSettings,
) -> pl.DataFrame:
    """Daily bars for ``symbols`` on New York trading days ``start``..``end`` inclusive.

    Returns a frame with exactly ``TABLES["bars"].schema``, sorted by
    (symbol, ts), ``source`` = ``"alpaca"``; ``close`` is the raw close and
    ``adj_close`` the split- and dividend-adjusted close.

    Raises:
        TypeError: ``symbols`` is a single string rather than a list.
        InputError: no symbols, or ``end`` before ``start``.
        SourceUnreachable: no answer from the host (connection, DNS, timeout).
        SourceError: the API refused the request (bad keys, bad parameters, ...),
            a symbol has no bars in the range (all such symbols are named), or
            raw and adjusted series do not cover the same days.

    """
    if isinstance(symbols, str):
        raise TypeError("fetch_alpaca_bars: symbols must be a list of symbols, not one string")
    wanted = list(dict.fromkeys(symbols))
    if not wanted:
        raise InputError("fetch_alpaca_bars: no symbols requested")
    if end < start:
        raise InputError(f"fetch_alpaca_bars: end {end} is before start {start}")

    client = _DataClient(
        timeout_s=settings.timeout_s,
        api_key=_secret(load_alpaca_settings(settings).api_key),
        secret_key=_secret(settings.secret_key),
        url_override=settings.data_url,
    )
    host = urlsplit(settings.data_url or BaseURL.DATA.value).netloc

    def request(adjustment: Adjustment) -> BarSet:
        query = StockBarsRequest(
            symbol_or_symbols=wanted,
            timeframe=TimeFrame.Day,
            start=datetime.combine(start, time.min, tzinfo=EXCHANGE_TZ),
            end=datetime.combine(end, time(23, 59, 59), tzinfo=EXCHANGE_TZ),
            adjustment=adjustment,
            feed=DataFeed(settings.feed),
        )
        try:
            bar_set = client.get_stock_bars(query)
        except requests.JSONDecodeError:
            raise SourceError(
                f"Alpaca market data at {host} answered with something that is not JSON; "
                f"check {ENV_DATA_URL}"
            ) from None
        except requests.RequestException as exc:
            raise SourceUnreachable(
                f"cannot reach Alpaca market data at {host} ({_why(exc, settings.timeout_s)}); "
                f"check the network connection and {ENV_DATA_URL}"
            ) from None
        except APIError as exc:
            raise SourceError(_refusal(exc, host)) from None
        if not isinstance(bar_set, BarSet):  # only with raw_data=True, which we never set
            raise TypeError(f"expected a BarSet from alpaca-py, got {type(bar_set).__name__}")
        return bar_set

    raw = request(Adjustment.RAW)
    empty = [symbol for symbol in wanted if not raw.data.get(symbol)]
    if empty:
        raise SourceError(
            f"Alpaca returned no bars for {', '.join(empty)} "
            f"between {start} and {end} (feed {settings.feed})"
        )
    raw_frame = _frame(raw, ["open", "high", "low", "close", "volume"])
    adjusted_frame = _frame(request(Adjustment.ALL), ["close"]).rename({"close": "adj_close"})

    only_raw = raw_frame.join(adjusted_frame, on=_KEY, how="anti")
    only_adjusted = adjusted_frame.join(raw_frame, on=_KEY, how="anti")
    if only_raw.height or only_adjusted.height:
        odd = pl.concat([only_raw.select(_KEY), only_adjusted.select(_KEY)])
        shown = ", ".join(f"{s} {d}" for s, d in odd.head(10).iter_rows())
        raise SourceError(f"Alpaca raw and adjusted bars cover different days: {shown}")

    schema = TABLES["bars"].schema
    return (
        raw_frame.join(adjusted_frame, on=_KEY, how="inner", validate="1:1")
        .with_columns(pl.lit(SOURCE).alias("source"))
        .select([pl.col(name).cast(dtype) for name, dtype in schema.items()])
        .sort(_KEY)
    )


class _DataClient(StockHistoricalDataClient):
    """alpaca-py's data client with a timeout on every request (it sets none itself)."""

    def __init__(self, *, timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timeout_s = timeout_s

    def _one_request(self, method: str, url: str, opts: dict, retry: int) -> dict:
        return super()._one_request(method, url, {**opts, "timeout": self._timeout_s}, retry)


def _why(exc: requests.RequestException, timeout_s: float) -> str:
    """Why no answer came, in a few words."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout_s:g} s ({ENV_DATA_TIMEOUT})"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed"
    text = str(exc)
    if "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
        return "host name not found"
    if "Connection refused" in text:
        return "connection refused"
    if "Connection reset" in text or "RemoteDisconnected" in text:
        return "connection dropped"
    return type(exc).__name__


def _refusal(exc: APIError, host: str) -> str:
    """One line for an HTTP error answer: status, Alpaca's message and what to check."""
    status = exc.status_code
    try:
        message = str(exc.message)
    except (ValueError, KeyError, TypeError):
        message = " ".join(str(exc).split())[:200] or "no message"
    if status in (401, 403):
        hint = f"check {ENV_KEY_ID} and {ENV_SECRET_KEY}"
    elif status == 429:
        hint = "too many requests; try again later"
    elif status is not None and status >= 500:
        hint = "a fault on Alpaca's side; try again later"
    else:
        hint = f"check the symbols, dates and {ENV_DATA_FEED}"
    return f"Alpaca market data at {host} refused the request: HTTP {status} {message}; {hint}"


def _frame(bar_set: BarSet, fields: list[str]) -> pl.DataFrame:
    """Flatten a BarSet into (symbol, ts, *fields), ts being the New York date.

    Raises SourceError if two bars of one symbol fall on the same New York day.
    """
    columns: dict[str, list[Any]] = {"symbol": [], "ts": [], **{f: [] for f in fields}}
    for symbol, bars in bar_set.data.items():
        for bar in bars:
            columns["symbol"].append(symbol)
            instant = bar.timestamp
            if instant.tzinfo is None:  # alpaca sends RFC 3339 with "Z"; be safe anyway
                instant = instant.replace(tzinfo=UTC)
            columns["ts"].append(instant.astimezone(EXCHANGE_TZ).date())
            for field in fields:
                columns[field].append(getattr(bar, field))
    frame = pl.DataFrame(
        columns,
        schema={"symbol": pl.String(), "ts": pl.Date(), **{f: pl.Float64() for f in fields}},
    )
    dupes = frame.filter(pl.struct(_KEY).is_duplicated()).select(_KEY).unique().sort(_KEY)
    if dupes.height:
        shown = ", ".join(f"{s} {d}" for s, d in dupes.head(10).iter_rows())
        raise SourceError(f"Alpaca returned more than one daily bar per day: {shown}")
    return frame
