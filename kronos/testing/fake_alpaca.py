"""A local fake of Alpaca's REST APIs, spoken to by the real alpaca-py clients.

Point a client at it with ``url_override=server.url``; alpaca-py then calls
``{url}/v2/...`` with the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers,
which the fake checks (401 otherwise). Errors come in Alpaca's shape
``{"code": int, "message": str}``, which ``alpaca.common.exceptions.APIError`` parses.

**Market data** (``StockHistoricalDataClient``): ``GET /v2/stocks/bars`` (query:
``symbols`` comma-separated, ``timeframe``, ``start``/``end`` RFC 3339,
``adjustment``, ``feed``, ``limit``, ``page_token``, ``sort``), answering
``{"bars": {symbol: [{"t", "o", "h", "l", "c", "v", "n", "vw"}, ...]},
"next_page_token": str | null}``. Pages hold at most ``page_size`` bars across
all symbols (default 3), so clients must paginate.

**Trading** (``TradingClient``), served from a :class:`~kronos.testing.fake_market.FakeMarket`
by the routes of :mod:`kronos.testing.trading_routes` (404 when the server has none):
``GET /v2/account``, ``GET /v2/positions``,
``GET /v2/positions/{symbol}``, ``POST /v2/orders``, ``GET /v2/orders`` (``status``
open|closed|all, ``after``/``until`` exclusive on ``submitted_at``, ``limit``
default 50, at most 500 per page (larger limits are capped), ``direction`` default
desc, ``nested``, ``symbols``, ``side``),
``GET /v2/orders:by_client_order_id``, ``GET /v2/orders/{id}``,
``DELETE /v2/orders/{id}`` (204; 422 when not open), ``GET /v2/clock``, and
``GET /v2/account/activities/FILL`` (``after``/``until`` exclusive on
``transaction_time``, ``direction`` default desc, ``page_size`` 1..100 default 100,
``page_token`` = the id of the last activity of the previous page). Fill
activities carry ``order_id`` but, as at Alpaca, no ``client_order_id``. Order
legs of brackets are not simulated (``legs`` is null). The account reports the
market's ``daytrade_count`` and ``pattern_day_trader``. Orders are checked as
Alpaca checks them (:mod:`kronos.testing.venue_rules`: auction cut-offs, wash
trades, pattern-day-trader protection, not tradable symbols); a refusal carries
Alpaca's status and body, e.g. 403 ``{"code": 40310000, "message": "potential
wash trade detected. use complex orders", "existing_order_id": ...,
"reject_reason": ...}``. With
``advance_on_clock=True`` every ``GET /v2/clock`` moves the market one phase
before answering, so a loop drives time by asking the clock.

**Faults** (trading paths only; the data API is always served faithfully), drawn
per request from a seeded :class:`random.Random` at :class:`FaultConfig` rates, or
queued exactly with :meth:`FakeAlpacaServer.inject`:

* ``"429"``: answered 429 with ``Retry-After: retry_after_s`` and Alpaca's
  ``X-RateLimit-Limit/Remaining/Reset`` headers; nothing happens.
* ``"500"`` / ``"503"``: answered with that status; nothing happens.
* ``"504_after_accept"`` (``POST /v2/orders`` only): the order is processed, the
  answer is a 504 with a non-JSON body.
* ``"timeout"``: ``POST``/``DELETE`` are processed, then the answer waits
  ``timeout_s`` (longer than the client's timeout); a ``GET`` waits and is not
  processed (a faulted clock request never advances the market).
* ``"reject"`` (``POST /v2/orders`` only): 403 insufficient buying power
  although the order would pass; nothing is booked.
* ``"partial"``: drawn once per execution of an order with >= 2 shares left; it
  fills ``max(1, floor(remaining * partial_fraction))`` shares only.

Counts are in :attr:`FakeAlpacaServer.stats`. Use the server as a context manager,
or ``start()`` / ``stop()``; it listens on ``127.0.0.1`` (free port by default).
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qs, unquote, urlsplit

from kronos.testing.alpaca_wire import FakeResponse, RecordedRequest, api_error, parse_instant
from kronos.testing.fake_market import (
    DailyBar,
    FakeMarket,
    MarketError,
)
from kronos.testing.faults import FAULT_KINDS, FaultConfig, Faults
from kronos.testing.trading_routes import TradingRoutes

__all__ = [
    "ADJUSTMENTS",
    "DAILY_TIMEFRAMES",
    "FAULT_KINDS",
    "FEEDS",
    "DailyBar",
    "FakeAlpacaServer",
    "FakeBar",
    "FakeMarket",
    "FakeResponse",
    "FakeStats",
    "FaultConfig",
    "Faults",
    "RecordedRequest",
    "run_alpaca_data_server",
]

ADJUSTMENTS = ("raw", "split", "dividend", "all")
FEEDS = ("iex", "sip", "delayed_sip", "otc", "boats", "overnight")
DAILY_TIMEFRAMES = ("1Day", "1D")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
_BAR_FIELDS = ("o", "h", "l", "c", "v", "n", "vw")

_ORDERS = "/v2/orders"


# --- requests and responses ---------------------------------------------------------


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


Route = Callable[[RecordedRequest], FakeResponse]


def _bad_request(message: str) -> FakeResponse:
    return api_error(400, 40010001, message)


@dataclass(frozen=True)
class FakeStats:
    """What the server has done so far.

    ``orders_refused`` counts orders the market refused on validation (buying
    power, quantity, symbol, prices); duplicates and injected ``"reject"`` faults
    are counted apart (``duplicates_refused``, ``faults["reject"]``).
    """

    requests: int
    faults: Mapping[str, int]
    orders_accepted: int
    orders_refused: int
    duplicates_refused: int
    fills: int
    partial_fills: int

    @property
    def faults_injected(self) -> int:
        """All faults, every kind."""
        return sum(self.faults.values())


# --- the server ---------------------------------------------------------------------


class FakeAlpacaServer(TradingRoutes):
    """Alpaca's data and trading APIs on ``127.0.0.1``, with fault injection.

    Args:
        bars: the data API's bars per symbol (``None``: serves no bars).
        key_id: the API key id every request must carry.
        secret: the secret key every request must carry.
        market: the market behind the trading API (``None``: trading paths 404).
        faults: random fault rates, seed and timings (default: no random faults).
        advance_on_clock: every ``GET /v2/clock`` advances the market one phase first.
        page_size: data API bars per page.
        host: address to listen on.
        port: port to listen on (0: a free one).

    """

    def __init__(
        self,
        bars: Mapping[str, Sequence[FakeBar]] | None,
        key_id: str,
        secret: str,
        *,
        market: FakeMarket | None = None,
        faults: FaultConfig | None = None,
        advance_on_clock: bool = False,
        page_size: int = 3,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be positive")
        if not key_id or not secret:
            raise ValueError("key_id and secret must be non-empty")
        self.bars = {
            s: sorted(series, key=lambda b: b.instant) for s, series in (bars or {}).items()
        }
        self.page_size = page_size
        self.market = market
        self.faults = Faults(faults)
        self.advance_on_clock = advance_on_clock
        self.url = ""  # set once listening
        self._address = (host, port)
        self._credentials = (key_id, secret)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/v2/stocks/bars"): self._stock_bars,
            ("GET", "/v2/account"): self._account,
            ("GET", "/v2/positions"): self._positions,
            ("POST", _ORDERS): self._submit,
            ("GET", _ORDERS): self._orders,
            ("GET", "/v2/orders:by_client_order_id"): self._order_by_client_id,
            ("GET", "/v2/clock"): self._clock,
        }
        self._prefix_routes: list[
            tuple[str, str, Callable[[RecordedRequest, str], FakeResponse]]
        ] = [
            ("GET", "/v2/positions/", self._position),
            ("GET", "/v2/orders/", self._order),
            ("DELETE", "/v2/orders/", self._cancel),
            ("GET", "/v2/account/activities/", self._activities),
        ]

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and serve in a daemon thread; :attr:`url` is set on return."""
        if self._httpd is not None:
            raise RuntimeError("FakeAlpacaServer is already started")
        self._stopping.clear()
        httpd = _HTTPServer(self, self._address)
        host, port = cast(tuple[str, int], httpd.server_address[:2])
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-alpaca-{port}",
            daemon=True,
        )
        self._httpd = httpd
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (cuts short any injected timeout still waiting)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start() if self._httpd is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- control and inspection -----------------------------------------------------

    def inject(
        self, kind: str, *, method: str | None = None, path: str | None = None, times: int = 1
    ) -> None:
        """Queue exact faults; see :meth:`Faults.inject`."""
        self.faults.inject(kind, method=method, path=path, times=times)

    def advance(self) -> bool:
        """Move the market one phase (partial-fill faults apply); ``False`` once finished."""
        if self.market is None:
            raise RuntimeError("this FakeAlpacaServer has no market")
        return self.market.advance(partial=self.faults.partial)

    @property
    def stats(self) -> FakeStats:
        """A snapshot of the counters."""
        market = self.market
        fills = market.fills() if market else []
        with self._lock:
            requests = len(self._requests)
        return FakeStats(
            requests=requests,
            faults=self.faults.counts(),
            orders_accepted=market.orders_accepted if market else 0,
            orders_refused=market.orders_refused if market else 0,
            duplicates_refused=market.duplicates_refused if market else 0,
            fills=len(fills),
            partial_fills=sum(f.is_partial for f in fills),
        )

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests for one path."""
        return [r for r in self.requests if r.path == path]

    # --- dispatch -------------------------------------------------------------------

    def handle(self, request: RecordedRequest, headers: Mapping[str, str]) -> FakeResponse:
        """Record, fault injection, authentication, routing. ``headers`` are lower-cased."""
        with self._lock:
            self._requests.append(request)
        trading = not request.path.startswith("/v2/stocks/")
        fault = self.faults.draw(request.method, request.path) if trading else None
        if fault == "429":
            wait = self.faults.config.retry_after_s
            reset = datetime.now(UTC).timestamp() + wait
            return FakeResponse(
                429,
                {"code": 42910000, "message": "rate limit exceeded"},
                {
                    "Retry-After": f"{wait:g}",
                    "X-RateLimit-Limit": "200",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{math.ceil(reset)}",
                },
            )
        if fault in ("500", "503"):
            return api_error(int(cast(str, fault)), 50010000, "internal server error (injected)")
        if fault == "timeout" and request.method == "GET":
            self._stopping.wait(self.faults.config.timeout_s)
            return FakeResponse(504, b"upstream request timeout")
        if (headers.get("apca-api-key-id"), headers.get("apca-api-secret-key")) != (
            self._credentials
        ):
            return api_error(401, 40110000, "request is not authorized")
        if fault == "reject":
            return api_error(403, 40310000, "insufficient buying power")
        response = self._route(request)
        if fault == "504_after_accept":
            return FakeResponse(504, b"<html><body>504 Gateway Time-out</body></html>")
        if fault == "timeout":
            self._stopping.wait(self.faults.config.timeout_s)
        return response

    def _route(self, request: RecordedRequest) -> FakeResponse:
        try:
            route = self._routes.get((request.method, request.path))
            if route is not None:
                return route(request)
            for method, prefix, handler in self._prefix_routes:
                if request.method == method and request.path.startswith(prefix):
                    tail = unquote(request.path[len(prefix) :])
                    if tail and "/" not in tail:
                        return handler(request, tail)
        except MarketError as exc:
            return FakeResponse(exc.status, {"code": exc.code, "message": exc.message, **exc.extra})
        return api_error(404, 40410000, f"endpoint not found: {request.method} {request.path}")

    # --- data routes ----------------------------------------------------------------

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
                parse_instant(q["start"])
                if "start" in q
                else now.replace(hour=0, minute=0, second=0, microsecond=0)
            )
            end = parse_instant(q["end"]) if "end" in q else now
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

    def __init__(self, fake: FakeAlpacaServer, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.fake = fake

    def handleapi_error(self, request: Any, client_address: Any) -> None:
        """Clients that hung up (injected timeouts) are expected: stay quiet."""


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
            response = api_error(500, 50010000, f"fake server error: {exc!r}")
        if response.status == 204:
            payload = b""
        elif isinstance(response.body, bytes):
            payload = response.body
        else:
            payload = json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            if payload:
                kind = "text/html" if isinstance(response.body, bytes) else "application/json"
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up waiting (an injected timeout)
            pass

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
    with FakeAlpacaServer(bars, key_id, secret, page_size=page_size) as fake:
        yield fake
