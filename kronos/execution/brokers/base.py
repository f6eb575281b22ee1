"""The broker contract shared by the simulated broker and Alpaca.

A broker answers six questions and takes two commands:

- :meth:`Broker.account` (NAV, cash, buying power), :meth:`Broker.positions`,
  :meth:`Broker.order` (by ``client_order_id``), :meth:`Broker.open_orders`,
  :meth:`Broker.fills_since`, :meth:`Broker.clock`;
- :meth:`Broker.submit` and :meth:`Broker.cancel`.

Errors say what the caller may do next:

- :class:`OrderRejected`: the broker refused the order; nothing was placed.
- :class:`DuplicateOrder`: an order with this ``client_order_id`` exists
  already (look it up: it is the earlier submission).
- :class:`AmbiguousOutcome`: the request may or may not have taken effect
  (timeout, 5xx, connection lost). Never resubmit blindly: look the order up
  by ``client_order_id`` first.
- :class:`BrokerUnavailable`: the request surely did not take effect
  (rate limited after retries, connection refused); try again later.

Quantities are positive share counts with the direction in ``side``; money is
USD; every datetime is time-zone aware (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from kronos.errors import KronosError

__all__ = [
    "REJECTION_KINDS",
    "TERMINAL_STATUSES",
    "AccountState",
    "AmbiguousOutcome",
    "Broker",
    "BrokerError",
    "BrokerFill",
    "BrokerOrder",
    "BrokerPosition",
    "BrokerUnavailable",
    "Clock",
    "DuplicateOrder",
    "OrderRejected",
    "OrderRequest",
    "TimeInForce",
]

Side = Literal["buy", "sell"]
TimeInForce = Literal["day", "gtc", "opg", "cls"]
OrderType = Literal["market", "limit", "bracket"]
OrderStatus = Literal[
    "new", "accepted", "partially_filled", "filled", "canceled", "expired", "rejected"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"filled", "canceled", "expired", "rejected"})
# what a venue refuses an order for (OrderRejected.kind)
REJECTION_KINDS = (
    "buying_power",  # insufficient buying power / qty available
    "wash_trade",  # an opposite-side order for the symbol is open
    "pattern_day_trader",  # a 4th day trade in 5 sessions under 25,000 equity
    "market_closed",  # outside the hours the order's time in force allows
    "not_tradable",  # unknown, inactive, not tradable or not shortable asset
    "invalid",  # 422: invalid qty, price, time in force ...
    "unauthorized",  # 401/403 on credentials
    "other",
)


class BrokerError(KronosError):
    """A broker request failed; the subclass says what is known about its effect."""


class OrderRejected(BrokerError):
    """The broker refused the order (e.g. insufficient buying power); nothing was placed.

    ``kind`` names the venue rule when it is known (one of :data:`REJECTION_KINDS`).
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.kind)


class DuplicateOrder(BrokerError):
    """An order with this ``client_order_id`` exists already."""


class AmbiguousOutcome(BrokerError):
    """The request may have taken effect (timeout, 5xx): look the order up before acting."""


class BrokerUnavailable(BrokerError):
    """The request did not take effect (rate limited, refused): safe to try later."""


def _aware(value: datetime, name: str) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{name}={value} is naive; give a time zone")


@dataclass(frozen=True)
class AccountState:
    """The account in USD."""

    nav: float
    cash: float
    buying_power: float


@dataclass(frozen=True)
class BrokerPosition:
    """One held symbol: signed share quantity, average entry price, market value."""

    symbol: str
    qty: float
    avg_price: float
    market_value: float


@dataclass(frozen=True)
class OrderRequest:
    """An order to submit: positive ``qty``, direction in ``side``.

    ``limit_price`` is required for limit orders and is the entry of a bracket;
    a bracket also carries ``take_profit`` and ``stop_loss`` prices.
    """

    client_order_id: str
    symbol: str
    side: Side
    qty: float
    order_type: OrderType = "market"
    limit_price: float | None = None
    take_profit: float | None = None
    stop_loss: float | None = None
    time_in_force: TimeInForce = "day"

    def __post_init__(self) -> None:
        if not self.client_order_id:
            raise ValueError("client_order_id is empty")
        if self.side not in ("buy", "sell"):
            raise ValueError(f"{self.client_order_id}: side must be buy or sell, got {self.side!r}")
        if not (self.qty > 0):
            raise ValueError(f"{self.client_order_id}: qty must be positive, got {self.qty!r}")
        if self.order_type == "limit" and self.limit_price is None:
            raise ValueError(f"{self.client_order_id}: a limit order needs limit_price")
        if self.time_in_force not in ("day", "gtc", "opg", "cls"):
            raise ValueError(
                f"{self.client_order_id}: time_in_force must be day, gtc, opg or cls, "
                f"got {self.time_in_force!r}"
            )
        if self.order_type == "bracket" and (self.take_profit is None or self.stop_loss is None):
            raise ValueError(f"{self.client_order_id}: a bracket needs take_profit and stop_loss")


@dataclass(frozen=True)
class BrokerOrder:
    """An order as the broker knows it."""

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: Side
    qty: float
    filled_qty: float
    filled_avg_price: float | None
    status: OrderStatus
    order_type: OrderType
    limit_price: float | None
    submitted_at: datetime
    updated_at: datetime
    reason: str | None = None
    time_in_force: TimeInForce = "day"

    @property
    def is_terminal(self) -> bool:
        """Filled, canceled, expired or rejected: nothing more will happen to it."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class BrokerFill:
    """One execution. ``fill_id`` is stable: asking again returns the same id."""

    fill_id: str
    client_order_id: str
    broker_order_id: str
    symbol: str
    side: Side
    qty: float
    price: float
    commission: float
    filled_at: datetime


@dataclass(frozen=True)
class Clock:
    """The market clock: the broker's now, whether the market is open, the next open/close."""

    now: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime

    def __post_init__(self) -> None:
        for name in ("now", "next_open", "next_close"):
            _aware(getattr(self, name), name)


@runtime_checkable
class Broker(Protocol):
    """What the paper loop needs from a broker."""

    name: str

    def account(self) -> AccountState:
        """NAV, cash and buying power now."""
        ...

    def positions(self) -> list[BrokerPosition]:
        """Every open position."""
        ...

    def submit(self, order: OrderRequest) -> BrokerOrder:
        """Place ``order``; raises a :class:`BrokerError` subclass on failure."""
        ...

    def cancel(self, client_order_id: str) -> None:
        """Cancel an open order (no error when it is already terminal)."""
        ...

    def order(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this ``client_order_id``, or ``None`` when the broker has none."""
        ...

    def open_orders(self) -> list[BrokerOrder]:
        """Every order that is not terminal."""
        ...

    def fills_since(self, since: datetime) -> list[BrokerFill]:
        """Executions at or after ``since``, oldest first."""
        ...

    def clock(self) -> Clock:
        """The market clock."""
        ...
