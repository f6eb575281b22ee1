"""The fake Alpaca's wire formats: orders, positions and fill activities as Alpaca sends them.

Also the server's request and response records (:class:`RecordedRequest`,
:class:`FakeResponse`), Alpaca's error shape (:func:`api_error`) and how the
fake reads an instant in a query (:func:`parse_instant`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kronos.testing.market_records import MarketError, SimFill, SimOrder, SimPosition

__all__ = [
    "ACCOUNT_ID",
    "FakeResponse",
    "RecordedRequest",
    "api_error",
    "asset_id",
    "fill_json",
    "float_or_none",
    "num",
    "order_json",
    "parse_instant",
    "position_json",
    "ts",
]

_NS = uuid.UUID("0d5bd2f4-7c1e-4f47-8d0e-6b726f6e6f73")


def ts(value: datetime | None) -> str | None:
    """RFC 3339 UTC with microseconds and ``Z``, as Alpaca stamps."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def num(value: float | None) -> str | None:
    """A decimal string as Alpaca sends (``"10"``, ``"101.5"``); exact for floats."""
    if value is None:
        return None
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def asset_id(symbol: str) -> str:
    """A stable asset id per symbol."""
    return str(uuid.uuid5(_NS, f"asset-{symbol}"))


ACCOUNT_ID = str(uuid.uuid5(_NS, "account"))


def order_json(order: SimOrder) -> dict[str, Any]:
    """An order as ``GET /v2/orders/{id}`` answers it."""
    return {
        "id": order.id,
        "client_order_id": order.client_order_id,
        "created_at": ts(order.submitted_at),
        "updated_at": ts(order.updated_at),
        "submitted_at": ts(order.submitted_at),
        "filled_at": ts(order.filled_at),
        "expired_at": ts(order.expired_at),
        "canceled_at": ts(order.canceled_at),
        "failed_at": None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": asset_id(order.symbol),
        "symbol": order.symbol,
        "asset_class": "us_equity",
        "notional": None,
        "qty": num(order.qty),
        "filled_qty": num(order.filled_qty),
        "filled_avg_price": num(order.filled_avg_price),
        "order_class": order.order_class,
        "order_type": order.order_type,
        "type": order.order_type,
        "side": order.side,
        "time_in_force": order.time_in_force,
        "limit_price": num(order.limit_price),
        "stop_price": None,
        "status": order.status,
        "extended_hours": False,
        "legs": None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
        "position_intent": "buy_to_open" if order.side == "buy" else "sell_to_close",
    }


def position_json(position: SimPosition) -> dict[str, Any]:
    """A position as ``GET /v2/positions`` answers it."""
    unrealized = position.market_value - position.cost_basis
    return {
        "asset_id": asset_id(position.symbol),
        "symbol": position.symbol,
        "exchange": "NASDAQ",
        "asset_class": "us_equity",
        "asset_marginable": False,
        "avg_entry_price": num(position.avg_entry_price),
        "qty": num(position.qty),
        "qty_available": num(position.qty),
        "side": "long",
        "market_value": num(position.market_value),
        "cost_basis": num(position.cost_basis),
        "unrealized_pl": num(unrealized),
        "unrealized_plpc": num(unrealized / position.cost_basis if position.cost_basis else 0.0),
        "unrealized_intraday_pl": "0",
        "unrealized_intraday_plpc": "0",
        "current_price": num(position.mark),
        "lastday_price": num(position.mark),
        "change_today": "0",
    }


def fill_json(fill: SimFill) -> dict[str, Any]:
    """A ``FILL`` account activity: one execution with its own qty and price."""
    return {
        "id": fill.id,
        "account_id": ACCOUNT_ID,
        "activity_type": "FILL",
        "transaction_time": ts(fill.at),
        "type": "partial_fill" if fill.is_partial else "fill",
        "price": num(fill.price),
        "qty": num(fill.qty),
        "side": fill.side,
        "symbol": fill.symbol,
        "leaves_qty": num(fill.leaves_qty),
        "order_id": fill.order_id,
        "cum_qty": num(fill.cum_qty),
        "order_status": fill.order_status,
    }


def float_or_none(value: Any, name: str) -> float | None:
    """A number of a request body; 422 when it is not one."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MarketError(422, 40010001, f"invalid {name}: {value!r}") from None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received (headers are not kept: they hold secrets)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None


@dataclass(frozen=True)
class FakeResponse:
    """What a route answers: status, body (JSON-encoded; ``bytes`` as is), extra headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


def api_error(status: int, code: int, message: str) -> FakeResponse:
    """An error in Alpaca's shape, which ``alpaca.common.exceptions.APIError`` parses."""
    return FakeResponse(status, {"code": code, "message": message})


def parse_instant(text: str) -> datetime:
    """RFC 3339 or a bare date; naive values are UTC, as Alpaca reads them."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
