"""The Alpaca broker: the :class:`~kronos.execution.brokers.base.Broker` contract over alpaca-py.

Settings (keys, mode, the live-trading switch, URL override, timeout) are
:class:`kronos.config.AlpacaTradingSettings`, checked by
:mod:`kronos.execution.brokers.alpaca_settings`; keys never show in a repr, an
error message or a log line. The client that sends each request once, with a
timeout, lives in :mod:`kronos.execution.brokers.alpaca_client`.

Retries are ours, not alpaca-py's (it would retry 429/504 after a fixed 3 s with
no timeout): every request carries the timeout and is sent once; then

* reads (``GET``) retry timeouts, connection errors and 5xx with exponential
  backoff, and 429 after ``Retry-After`` (capped), and raise
  :class:`BrokerUnavailable` once the attempts are spent;
* ``POST /v2/orders`` retries only what surely did not reach Alpaca (429,
  connection refused); a timeout, a lost connection or a 5xx (504 included)
  raises :class:`AmbiguousOutcome` (look the order up by ``client_order_id``);
  403 and other 4xx raise :class:`OrderRejected` with Alpaca's message, a 422
  "client_order_id must be unique" raises :class:`DuplicateOrder`;
* a cancel of an order that is unknown or no longer open is a no-op; a timeout
  or 5xx raises :class:`AmbiguousOutcome`.

alpaca-py's own retry (``RESTClient._request``: 429 and 504 raise
``RetryException`` and are retried 3 times after a fixed 3 s, ignoring
``Retry-After``) is switched off by sending with ``retry=0``; the 429 wait
honours ``Retry-After`` (or ``X-RateLimit-Reset``), capped at ``max_wait_s``, so
one request waits at most ``(attempts - 1) x max_wait_s``.

Before an order is sent, the venue's rules are checked
(:mod:`kronos.execution.brokers.venue`): ``opg``/``cls`` orders outside their
auction windows are refused; under pattern-day-trader protection an order that
could be a day trade is refused; an open opposite-side order for the symbol that
the new one would wash against is cancelled first (and the cancel confirmed).
Every refusal is an :class:`OrderRejected` whose ``kind`` names the rule.

Fills come from the ``FILL`` account activities, one per execution with its own
quantity and price (their ids are stable), never from differences of an order's
cumulative ``filled_qty``; an activity names its order by id only, so each new
order id is looked up once for its ``client_order_id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Clock as AlpacaClock
from alpaca.trading.models import Order, Position, TradeAccount, TradeActivity
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)
from pydantic import ValidationError

from kronos.calendar import Calendar, get_calendar
from kronos.execution.brokers.alpaca_client import AlpacaClient, api_message, never_sent
from kronos.execution.brokers.alpaca_settings import (
    AlpacaConfigError,
    AlpacaTradingSettings,
    credentials,
    live_trading_allowed,
    load_alpaca_trading_settings,
)
from kronos.execution.brokers.base import (
    AccountState,
    AmbiguousOutcome,
    BrokerError,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    BrokerUnavailable,
    Clock,
    DuplicateOrder,
    OrderRejected,
    OrderRequest,
)
from kronos.execution.brokers.venue import (
    auction_cutoff,
    crosses,
    pdt_protected,
    rejection_kind,
    retry_after_s,
)

__all__ = [
    "AlpacaBroker",
    "AlpacaConfigError",
    "AlpacaTradingSettings",
    "live_trading_allowed",
    "load_alpaca_trading_settings",
]

log = logging.getLogger(__name__)

_DUPLICATE = "client_order_id must be unique"
_PAGE = 500  # GET /v2/orders maximum
_FILL_PAGE = 100  # GET /v2/account/activities maximum
_T = TypeVar("_T")

# Alpaca order statuses -> the contract's; what is not listed is "accepted" (working).
_STATUS = {
    "new": "new",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "canceled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
    "replaced": "canceled",  # replaced by another order: this one is over
}


# --- conversions ---------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _f(value: Any, default: float = 0.0) -> float:
    return default if value is None or value == "" else float(value)


def _tif(value: Any) -> Literal["day", "gtc", "opg", "cls"]:
    """Alpaca's time in force as the contract's (``ioc``/``fok``, never sent here, read as day)."""
    text = str(getattr(value, "value", value) or "day")
    return text if text in ("day", "gtc", "opg", "cls") else "day"  # type: ignore[return-value]


def _qty(qty: float) -> float | int:
    """Whole shares as ``int``; fractional quantities as they are."""
    whole = round(qty)
    return int(whole) if abs(qty - whole) < 1e-9 else qty


# --- the broker ---------------------------------------------------------------------


class AlpacaBroker:
    """The broker contract over Alpaca's trading API (paper or live).

    Args:
        settings: keys, mode, URL override and timeout.
        attempts: tries per request for retryable failures (reads; 429 everywhere).
        backoff_s: first wait before retrying a read after a timeout or 5xx (doubles).
        max_wait_s: cap on any wait, ``Retry-After`` included.
        sleep: how to wait (tests pass a recorder).
        calendar: the exchange calendar of the auction windows (XNYS when ``None``).
        cancel_opposite: cancel an open opposite-side order that a new order would
            wash against before sending it (off: the venue's refusal is reported).

    Raises:
        AlpacaConfigError: keys missing for the mode, or live mode without permission.

    """

    name = "alpaca"

    def __init__(
        self,
        settings: AlpacaTradingSettings,
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        max_wait_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        calendar: Calendar | None = None,
        cancel_opposite: bool = True,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        key_id, secret = credentials(settings)
        self.mode = settings.mode
        self.url = settings.trading_url
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_wait_s = max_wait_s
        self._sleep = sleep
        self._calendar = calendar or get_calendar()
        self._cancel_opposite = cancel_opposite
        self._client = AlpacaClient(
            timeout_s=settings.timeout_s,
            api_key=key_id,
            secret_key=secret,
            paper=settings.mode == "paper",
            url_override=settings.trading_url,
        )
        self._client_ids: dict[str, str] = {}  # broker order id -> client_order_id

    def __repr__(self) -> str:
        return f"AlpacaBroker(mode={self.mode!r}, url={self.url or 'alpaca default'!r})"

    # --- questions ------------------------------------------------------------------

    def account(self) -> AccountState:
        """NAV (equity), cash and buying power."""
        acct = TradeAccount(**self._get("GET /v2/account", "/account"))
        nav = _f(acct.equity, _f(acct.portfolio_value))
        return AccountState(nav=nav, cash=_f(acct.cash), buying_power=_f(acct.buying_power))

    def positions(self) -> list[BrokerPosition]:
        """Every open position, by symbol; shorts have negative ``qty``."""
        raw = self._get("GET /v2/positions", "/positions")
        out = []
        for item in raw or []:
            p = Position(**item)
            qty = abs(_f(p.qty)) * (-1.0 if p.side == "short" else 1.0)
            out.append(
                BrokerPosition(
                    symbol=p.symbol,
                    qty=qty,
                    avg_price=_f(p.avg_entry_price),
                    market_value=_f(p.market_value),
                )
            )
        return sorted(out, key=lambda p: p.symbol)

    def order(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this ``client_order_id``, or ``None``."""
        raw = self._get(
            f"GET order {client_order_id}",
            "/orders:by_client_order_id",
            {"client_order_id": client_order_id},
            missing_ok=True,
        )
        return None if raw is None else self._order(Order(**raw))

    def open_orders(self) -> list[BrokerOrder]:
        """Every working order, oldest first (bracket legs rolled up into their parent)."""
        seen: dict[str, BrokerOrder] = {}
        after: datetime | None = None
        while True:
            request = GetOrdersRequest(
                status=QueryOrderStatus.OPEN, limit=_PAGE, direction="asc", nested=True, after=after
            )
            raw = self._get("GET /v2/orders", "/orders", request.to_request_fields())
            page = [Order(**item) for item in raw or []]
            fresh = [o for o in page if str(o.id) not in seen]
            for o in fresh:
                seen[str(o.id)] = self._order(o)
            if len(page) < _PAGE or not fresh:
                break
            # Alpaca's "after" is exclusive: step back 1 µs so ties are not lost.
            after = _utc(page[-1].submitted_at) - timedelta(microseconds=1)
        return sorted(seen.values(), key=lambda o: (o.submitted_at, o.client_order_id))

    def fills_since(self, since: datetime) -> list[BrokerFill]:
        """Executions at or after ``since``, oldest first."""
        if since.tzinfo is None:
            raise ValueError(f"since={since} is naive; give a time zone")
        since = _utc(since)
        params: dict[str, Any] = {
            "after": (since - timedelta(seconds=1)).isoformat(),  # "after" is exclusive
            "direction": "asc",
            "page_size": _FILL_PAGE,
        }
        activities: list[TradeActivity] = []
        while True:
            raw = self._get("GET fill activities", "/account/activities/FILL", dict(params))
            page = [TradeActivity(**item) for item in raw or []]
            activities += page
            if len(page) < params["page_size"]:
                break
            params["page_token"] = page[-1].id
        fills = []
        for a in activities:
            at = _utc(a.transaction_time)
            if at < since:
                continue
            order_id = str(a.order_id)
            fills.append(
                BrokerFill(
                    fill_id=a.id,
                    client_order_id=self._client_order_id(order_id),
                    broker_order_id=order_id,
                    symbol=a.symbol,
                    side="buy" if a.side == OrderSide.BUY else "sell",
                    qty=float(a.qty),
                    price=float(a.price),
                    commission=0.0,
                    filled_at=at,
                )
            )
        return sorted(fills, key=lambda f: (f.filled_at, f.fill_id))

    def clock(self) -> Clock:
        """Alpaca's clock, in UTC."""
        c = AlpacaClock(**self._get("GET /v2/clock", "/clock"))
        return Clock(
            now=_utc(c.timestamp),
            is_open=c.is_open,
            next_open=_utc(c.next_open),
            next_close=_utc(c.next_close),
        )

    # --- commands -------------------------------------------------------------------

    def submit(self, order: OrderRequest) -> BrokerOrder:
        """Place ``order`` once, after the venue checks; see the module docstring."""
        request = self._order_request(order)
        self._check_venue(order)
        what = f"submit {order.client_order_id}"
        for attempt in range(1, self._attempts + 1):
            try:
                return self._order(Order(**self._client.post("/orders", request)))
            except APIError as exc:
                status = exc.status_code
                message = api_message(exc)
                if status == 429:
                    wait = self._retry_after(exc)
                elif status is None or status >= 500:
                    raise AmbiguousOutcome(
                        f"{what}: HTTP {status} ({message}); look the order up before resubmitting"
                    ) from None
                elif status == 422 and _DUPLICATE in message:
                    raise DuplicateOrder(f"{what}: {message}") from None
                else:
                    raise OrderRejected(
                        f"{what}: HTTP {status}: {message}", rejection_kind(status, message)
                    ) from None
            except requests.RequestException as exc:
                if not never_sent(exc):
                    raise AmbiguousOutcome(
                        f"{what}: {type(exc).__name__}; look the order up before resubmitting"
                    ) from None
                wait = self._backoff(attempt)
            self._pause(what, attempt, wait)
        raise BrokerUnavailable(
            f"{what}: rate limited or unreachable, not accepted after {self._attempts} attempts"
        )

    # --- the venue's rules ----------------------------------------------------------

    def _check_venue(self, order: OrderRequest) -> None:
        """Auction window, pattern-day-trader protection, then wash-trade cancels."""
        what = f"submit {order.client_order_id}"
        clock: Clock | None = None
        if order.time_in_force in ("opg", "cls"):
            clock = self.clock()
            closed = auction_cutoff(order.time_in_force, clock.now, self._calendar)
            if closed:
                raise OrderRejected(f"{what}: {closed}", "market_closed")
        acct = TradeAccount(**self._get("GET /v2/account", "/account"))
        equity = _f(acct.equity, _f(acct.portfolio_value))
        count = int(acct.daytrade_count or 0)
        if pdt_protected(equity, count, bool(acct.pattern_day_trader)):
            clock = clock or self.clock()
            if self._could_day_trade(order, clock):
                raise OrderRejected(
                    f"{what}: pattern day trading protection: {count} day trade(s) in 5 "
                    f"sessions and equity {equity:,.2f} < 25,000; {order.side} {order.symbol} "
                    "would close a position opened today",
                    "pattern_day_trader",
                )
        if self._cancel_opposite and order.order_type != "bracket":
            self._cancel_opposite_orders(order)

    def _could_day_trade(self, order: OrderRequest, clock: Clock) -> bool:
        """Whether the order could close today what today's fills opened (market open only)."""
        if not clock.is_open:
            return False  # it executes in a later session
        tz = ZoneInfo(self._calendar.tz)
        day = clock.now.astimezone(tz).date()
        midnight = datetime.combine(day, datetime.min.time(), tzinfo=tz)
        today = [f for f in self.fills_since(midnight) if f.symbol == order.symbol]
        return bool(today) and today[-1].side != order.side

    def _cancel_opposite_orders(self, order: OrderRequest) -> None:
        """Cancel open opposite-side orders the new order would wash against; confirm it."""
        request = GetOrdersRequest(
            status=QueryOrderStatus.OPEN, limit=_PAGE, direction="asc", nested=True
        )
        params = {**request.to_request_fields(), "symbols": order.symbol}  # joined, as alpaca-py
        raw = self._get("GET /v2/orders", "/orders", params)
        limit = order.limit_price if order.order_type == "limit" else None
        opposite = [
            o
            for o in (self._order(Order(**item)) for item in raw or [])
            if o.symbol == order.symbol
            and o.side != order.side
            and not o.is_terminal
            and o.order_type != "bracket"
            and crosses(order.side, limit, o.limit_price)
        ]
        for other in opposite:
            log.warning(
                "alpaca: cancelling open %s order %s (%s) before %s %s: Alpaca refuses a "
                "potential wash trade",
                other.side,
                other.client_order_id,
                other.symbol,
                order.side,
                order.client_order_id,
            )
            self.cancel(other.client_order_id)
            for attempt in range(1, self._attempts + 1):
                now = self.order(other.client_order_id)
                if now is None or now.is_terminal:
                    break
                if attempt == self._attempts:
                    raise BrokerUnavailable(
                        f"submit {order.client_order_id}: the opposite order "
                        f"{other.client_order_id} is still {now.status} after its cancel; "
                        "try again later (Alpaca refuses a potential wash trade)"
                    )
                self._pause(f"cancel of {other.client_order_id}", attempt, self._backoff(attempt))

    def cancel(self, client_order_id: str) -> None:
        """Cancel an open order; an unknown or already terminal order is left alone."""
        current = self.order(client_order_id)
        if current is None or current.is_terminal:
            return
        what = f"cancel {client_order_id}"
        for attempt in range(1, self._attempts + 1):
            try:
                self._client.delete(f"/orders/{current.broker_order_id}")
                return
            except APIError as exc:
                status = exc.status_code
                if status in (404, 422):  # gone, or no longer cancelable (filled meanwhile)
                    return
                if status == 429:
                    wait = self._retry_after(exc)
                elif status is None or status >= 500:
                    raise AmbiguousOutcome(f"{what}: HTTP {status}; look the order up") from None
                else:
                    raise BrokerError(f"{what}: HTTP {status}: {api_message(exc)}") from None
            except requests.RequestException as exc:
                if not never_sent(exc):
                    raise AmbiguousOutcome(
                        f"{what}: {type(exc).__name__}; look the order up"
                    ) from None
                wait = self._backoff(attempt)
            self._pause(what, attempt, wait)
        raise BrokerUnavailable(f"{what}: not done after {self._attempts} attempts")

    # --- internals ------------------------------------------------------------------

    def _get(
        self,
        what: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        missing_ok: bool = False,
    ) -> Any:
        """A read with retries; ``None`` on 404 when ``missing_ok``."""
        for attempt in range(1, self._attempts + 1):
            try:
                return self._client.get(path, params)
            except APIError as exc:
                status = exc.status_code
                if status == 404 and missing_ok:
                    return None
                if status == 429:
                    wait, reason = self._retry_after(exc), "HTTP 429"
                elif status is None or status >= 500:
                    wait, reason = self._backoff(attempt), f"HTTP {status}"
                else:
                    raise BrokerError(f"{what}: HTTP {status}: {api_message(exc)}") from None
            except requests.RequestException as exc:
                wait, reason = self._backoff(attempt), type(exc).__name__
            if attempt == self._attempts:
                raise BrokerUnavailable(f"{what}: {reason} after {self._attempts} attempts")
            self._pause(what, attempt, wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pause(self, what: str, attempt: int, wait: float) -> None:
        if attempt < self._attempts:
            log.warning(
                "alpaca %s: retrying in %.2fs (attempt %d/%d)", what, wait, attempt, self._attempts
            )
            self._sleep(wait)

    def _backoff(self, attempt: int) -> float:
        return min(self._backoff_s * 2 ** (attempt - 1), self._max_wait_s)

    def _retry_after(self, exc: APIError) -> float:
        """A 429's ``Retry-After`` (or ``X-RateLimit-Reset``) in seconds, capped; else backoff."""
        response = exc.response
        wait = retry_after_s(response.headers) if response is not None else None
        if wait is None:
            wait = self._backoff_s
        return min(wait, self._max_wait_s)

    def _client_order_id(self, order_id: str) -> str:
        if order_id not in self._client_ids:
            raw = self._get(f"GET order {order_id}", f"/orders/{order_id}")
            self._client_ids[order_id] = Order(**raw).client_order_id
        return self._client_ids[order_id]

    def _order(self, o: Order) -> BrokerOrder:
        """alpaca-py's order as the contract's."""
        status = _STATUS.get(str(o.status.value), "accepted")
        filled = _f(o.filled_qty)
        if status == "accepted" and filled > 0:
            status = "partially_filled"
        order_type = o.type or o.order_type
        if o.order_class == OrderClass.BRACKET:
            kind = "bracket"
        elif order_type is not None and order_type.value in ("limit", "stop_limit"):
            kind = "limit"
        else:
            kind = "market"
        self._client_ids[str(o.id)] = o.client_order_id
        return BrokerOrder(
            client_order_id=o.client_order_id,
            broker_order_id=str(o.id),
            symbol=o.symbol or "",
            side="sell" if o.side == OrderSide.SELL else "buy",
            qty=_f(o.qty),
            filled_qty=filled,
            filled_avg_price=_f(o.filled_avg_price) if filled > 0 else None,
            status=status,  # type: ignore[arg-type]  # values of _STATUS
            order_type=kind,  # type: ignore[arg-type]
            limit_price=None if o.limit_price is None else _f(o.limit_price),
            submitted_at=_utc(o.submitted_at),
            updated_at=_utc(o.updated_at),
            time_in_force=_tif(o.time_in_force),
        )

    @staticmethod
    def _order_request(order: OrderRequest) -> dict[str, Any]:
        """The ``POST /v2/orders`` body, built (and validated) by alpaca-py's request models."""
        qty = _qty(order.qty)
        if isinstance(qty, float) and (
            order.order_type != "market" or order.time_in_force != "day"
        ):
            raise OrderRejected(
                f"{order.client_order_id}: fractional qty {order.qty} is only allowed for "
                "market day orders; send whole shares",
                "invalid",
            )
        common: dict[str, Any] = {
            "symbol": order.symbol,
            "qty": qty,
            "side": OrderSide(order.side),
            "time_in_force": TimeInForce(order.time_in_force),
            "client_order_id": order.client_order_id,
        }
        if order.order_type == "bracket":
            common["order_class"] = OrderClass.BRACKET
            common["take_profit"] = TakeProfitRequest(limit_price=order.take_profit)
            common["stop_loss"] = StopLossRequest(stop_price=order.stop_loss)
        try:
            if order.limit_price is not None and order.order_type != "market":
                request: MarketOrderRequest | LimitOrderRequest = LimitOrderRequest(
                    **common, limit_price=order.limit_price
                )
            else:
                request = MarketOrderRequest(**common)
        except ValidationError as exc:
            reasons = "; ".join(
                e["msg"] for e in exc.errors(include_input=False, include_url=False)
            )
            raise OrderRejected(f"{order.client_order_id}: {reasons}", "invalid") from None
        return request.to_request_fields()
