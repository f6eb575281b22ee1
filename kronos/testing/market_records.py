"""The fake market's records: orders, fills, positions, the account, the clock, its errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "OPEN_STATUSES",
    "AccountSnapshot",
    "DailyBar",
    "MarketClock",
    "MarketError",
    "SimFill",
    "SimOrder",
    "SimPosition",
]

OPEN_STATUSES = frozenset({"new", "accepted", "partially_filled"})
_EPS = 1e-9


class MarketError(Exception):
    """A request the market refuses, with Alpaca's HTTP status, error code and message.

    ``extra`` holds further fields of Alpaca's error body (``existing_order_id``...).
    """

    def __init__(
        self, status: int, code: int, message: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = dict(extra or {})


@dataclass(frozen=True)
class DailyBar:
    """One session's prices for one symbol."""

    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


@dataclass(frozen=True)
class MarketClock:
    """What ``GET /v2/clock`` reports."""

    now: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


@dataclass(frozen=True)
class SimOrder:
    """An order in the fake (a snapshot; the market keeps its own copy)."""

    id: str
    client_order_id: str
    symbol: str
    side: Literal["buy", "sell"]
    qty: float
    order_type: Literal["market", "limit"]
    limit_price: float | None
    time_in_force: Literal["day", "gtc", "opg", "cls"]
    order_class: Literal["simple", "bracket"]
    take_profit: float | None
    stop_loss: float | None
    status: str
    submitted_at: datetime
    updated_at: datetime
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    filled_at: datetime | None = None
    expired_at: datetime | None = None
    canceled_at: datetime | None = None

    @property
    def remaining(self) -> float:
        """Shares still to fill."""
        return self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        """New, accepted or partially filled."""
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class SimFill:
    """One execution; ``id`` is Alpaca's activity id (``YYYYMMDDhhmmssmmm::uuid``)."""

    id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: Literal["buy", "sell"]
    qty: float
    price: float
    at: datetime
    cum_qty: float
    leaves_qty: float
    order_status: str

    @property
    def is_partial(self) -> bool:
        """The order still had shares to fill after this execution."""
        return self.leaves_qty > _EPS


@dataclass(frozen=True)
class SimPosition:
    """A held symbol: shares, average entry price, last price."""

    symbol: str
    qty: float
    avg_entry_price: float
    mark: float

    @property
    def market_value(self) -> float:
        """``qty x mark``."""
        return self.qty * self.mark

    @property
    def cost_basis(self) -> float:
        """``qty x avg_entry_price``."""
        return self.qty * self.avg_entry_price


@dataclass(frozen=True)
class AccountSnapshot:
    """The account in USD."""

    cash: float
    buying_power: float
    long_market_value: float
    equity: float
    last_equity: float
    daytrade_count: int = 0
    pattern_day_trader: bool = False
