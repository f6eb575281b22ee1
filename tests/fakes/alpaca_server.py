"""A local fake of Alpaca's REST APIs, spoken to by the real alpaca-py client.

Point a client at it with ``url_override=server.url``; alpaca-py then calls
``{url}/v2/...`` with the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers.

Implemented: the market-data stock bars endpoint, ``GET /v2/stocks/bars``
(query: ``symbols`` comma-separated, ``timeframe``, ``start``/``end`` RFC 3339,
``adjustment``, ``feed``, ``limit``, ``page_token``, ``sort``), answering
``{"bars": {symbol: [{"t", "o", "h", "l", "c", "v", "n", "vw"}, ...]},
"next_page_token": str | null}``. Pages hold at most ``page_size`` bars across
all symbols (default 3), so clients must paginate.

Extending it:

* more endpoints (the trading API: ``/v2/account``, ``/v2/orders``,
  ``/v2/positions``, ...): add a handler ``(RecordedRequest) -> FakeResponse``
  and register it in ``FakeAlpacaServer._routes``; every HTTP method is already
  routed, JSON bodies are parsed into ``RecordedRequest.body``. Trading and data
  paths do not collide, so one server can serve both base URLs.
* fault injection (429 with ``Retry-After``, 5xx): make ``FakeAlpacaServer._fault``
  return a ``FakeResponse``; it runs after the request is recorded and before
  authentication and routing.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

ADJUSTMENTS = ("raw", "split", "dividend", "all")
FEEDS = ("iex", "sip", "delayed_sip", "otc", "boats", "overnight")
DAILY_TIMEFRAMES = ("1Day", "1D")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
_BAR_FIELDS = ("o", "h", "l", "c", "v", "n", "vw")


@dataclass(frozen=True)
class FakeBar:
    """One daily bar as Alpaca sends it, with per-adjustment overrides.

    ``t`` is an RFC 3339 UTC instant (``"2024-03-11T04:00:00Z"``). The other fields
    are the raw (unadjusted) values; ``adjusted`` maps an adjustment name
    (``"split"``, ``"dividend"``, ``"all"``) to the fields that differ under it.
    """

    t: str
    o: float
    h: float
    l: float  # noqa: E741 - Alpaca's wire name
    c: float
    v: float
    n: int
    vw: float
    adjusted: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.instant.tzinfo is None:
            raise ValueError(f"FakeBar.t must carry a UTC offset: {self.t!r}")
        unknown = set(self.adjusted) - set(ADJUSTMENTS)
        if unknown:
            raise ValueError(f"unknown adjustments {sorted(unknown)}")

    @property
    def instant(self) -> datetime:
        """``t`` parsed."""
        return datetime.fromisoformat(self.t)

    def to_json(self, adjustment: str) -> dict[str, Any]:
        """The bar's wire form under ``adjustment``."""
        body: dict[str, Any] = {"t": self.t, **{k: getattr(self, k) for k in _BAR_FIELDS}}
        body.update(self.adjusted.get(adjustment, {}))
        return body


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received (headers are not kept: they hold secrets)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None


@dataclass(frozen=True)
class FakeResponse:
    """What a route answers: status, JSON body, extra headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[RecordedRequest], FakeResponse]


def _error(status: int, code: int, message: str) -> FakeResponse:
    """An error in Alpaca's shape, which ``alpaca.common.exceptions.APIError`` parses."""
    return FakeResponse(status, {"code": code, "message": message})


def _bad_request(message: str) -> FakeResponse:
    return _error(400, 40010001, message)


def _parse_instant(text: str) -> datetime:
    """RFC 3339 or a bare date; naive values are UTC, as Alpaca reads them."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class FakeAlpacaServer:
    """State and request handling; the HTTP plumbing lives in :func:`run_alpaca_data_server`."""

    def __init__(
        self,
        bars: Mapping[str, Sequence[FakeBar]],
        key_id: str,
        secret: str,
        *,
        page_size: int = 3,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.bars = {s: sorted(series, key=lambda b: b.instant) for s, series in bars.items()}
        self.page_size = page_size
        self.url = ""  # set once listening
        self._credentials = (key_id, secret)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/v2/stocks/bars"): self._stock_bars,
        }

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests for one path."""
        return [r for r in self.requests if r.path == path]

    def handle(self, request: RecordedRequest, headers: Mapping[str, str]) -> FakeResponse:
        """Record, then fault injection, then authentication, then routing.

        ``headers`` has lower-cased names.
        """
        with self._lock:
            self._requests.append(request)
        fault = self._fault(request)
        if fault is not None:
            return fault
        if (headers.get("apca-api-key-id"), headers.get("apca-api-secret-key")) != (
            self._credentials
        ):
            return _error(401, 40110000, "request is not authorized")
        route = self._routes.get((request.method, request.path))
        if route is None:
            return _error(404, 40410000, f"endpoint not found: {request.method} {request.path}")
        return route(request)

    def _fault(self, request: RecordedRequest) -> FakeResponse | None:
        """Extension point for fault injection (429 + Retry-After, 5xx); none yet."""
        return None

    def _stock_bars(self, request: RecordedRequest) -> FakeResponse:
        """``GET /v2/stocks/bars``: multi-symbol historical bars, paginated."""
        q = request.query
        symbols = list(dict.fromkeys(s for s in q.get("symbols", "").split(",") if s))
        if not symbols:
            return _bad_request("symbols is required")
        if q.get("timeframe") not in DAILY_TIMEFRAMES:
            return _bad_request(f"fake serves daily bars only, got timeframe={q.get('timeframe')}")
        adjustment = q.get("adjustment", "raw")
        if adjustment not in ADJUSTMENTS:
            return _bad_request(f"invalid adjustment: {adjustment}")
        if q.get("feed", "sip") not in FEEDS:
            return _bad_request(f"invalid feed: {q['feed']}")
        sort = q.get("sort", "asc")
        if sort not in ("asc", "desc"):
            return _bad_request(f"invalid sort: {sort}")
        try:
            now = datetime.now(UTC)
            # Alpaca's defaults: start at the beginning of today, end now.
            start = (
                _parse_instant(q["start"])
                if "start" in q
                else now.replace(hour=0, minute=0, second=0, microsecond=0)
            )
            end = _parse_instant(q["end"]) if "end" in q else now
            limit = int(q.get("limit", DEFAULT_LIMIT))
            offset = int(base64.urlsafe_b64decode(q["page_token"])) if "page_token" in q else 0
        except ValueError as exc:
            return _bad_request(f"invalid parameter: {exc}")
        if not 1 <= limit <= MAX_LIMIT:
            return _bad_request(f"invalid limit: {limit}")

        matching = []
        for symbol in sorted(symbols):
            series = [b for b in self.bars.get(symbol, []) if start <= b.instant <= end]
            matching += [(symbol, b) for b in (reversed(series) if sort == "desc" else series)]
        page = matching[offset : offset + min(limit, self.page_size)]
        body: dict[str, list[dict[str, Any]]] = {}
        for symbol, bar in page:
            body.setdefault(symbol, []).append(bar.to_json(adjustment))
        after = offset + len(page)
        token = (
            base64.urlsafe_b64encode(str(after).encode()).decode()
            if after < len(matching)
            else None
        )
        return FakeResponse(200, {"bars": body, "next_page_token": token})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeAlpacaServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = RecordedRequest(self.command, parts.path, query, body)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = self.server.fake.handle(request, headers)
        except Exception as exc:  # a bug in the fake: answer 500, don't hang the client
            response = _error(500, 50010000, f"fake server error: {exc!r}")
        payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""


@contextmanager
def run_alpaca_data_server(
    bars: Mapping[str, Sequence[FakeBar]],
    key_id: str,
    secret: str,
    *,
    page_size: int = 3,
) -> Iterator[FakeAlpacaServer]:
    """Serve ``bars`` on ``127.0.0.1`` (free port) for the duration of the block."""
    fake = FakeAlpacaServer(bars, key_id, secret, page_size=page_size)
    httpd = _HTTPServer(fake)
    host, port = cast(tuple[str, int], httpd.server_address[:2])
    fake.url = f"http://{host}:{port}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
