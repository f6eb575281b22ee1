"""What Alpaca answers when the fake market refuses an order by a venue rule.

The rules themselves are written once, in :mod:`kronos.execution.brokers.venue`
(the broker checks them before sending; the fake enforces them); this module
adds the fake's side: which booked order a new one washes against, and the
error bodies. Where Alpaca documents a rule but not its exact answer, the
assumption is said here:

* auction cut-off (``opg`` after 9:28am, ``cls`` after 3:50pm, until 7:00pm ET):
  HTTP 422, code 42210000 (assumed: Alpaca's "unprocessable" code);
* wash trade: HTTP 403, code 40310000, ``"potential wash trade detected. use
  complex orders"`` with ``existing_order_id`` and ``reject_reason``; bracket
  orders (complex) are exempt;
* pattern-day-trader protection: HTTP 403, code 40310100, ``"trade denied due to
  pattern day trading protection"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from kronos.execution.brokers.venue import (
    PDT_EQUITY,
    PDT_MAX_DAYTRADES,
    PDT_WINDOW_SESSIONS,
    auction_cutoff,
    crosses,
    pdt_protected,
)

__all__ = [
    "PDT_CODE",
    "PDT_EQUITY",
    "PDT_MAX_DAYTRADES",
    "PDT_MESSAGE",
    "PDT_WINDOW_SESSIONS",
    "WASH_CODE",
    "WASH_MESSAGE",
    "auction_cutoff",
    "pdt_protected",
    "wash_conflict",
]

WASH_CODE = 40310000
WASH_MESSAGE = "potential wash trade detected. use complex orders"
PDT_CODE = 40310100
PDT_MESSAGE = "trade denied due to pattern day trading protection"


class _Order(Protocol):
    id: str
    side: str
    limit_price: float | None
    order_class: str


def wash_conflict(
    side: str, limit_price: float | None, order_class: str, open_orders: Iterable[_Order]
) -> tuple[_Order, str] | None:
    """The open opposite-side order a new order would wash against, and Alpaca's reason."""
    if order_class != "simple":
        return None
    for other in open_orders:
        if other.side == side or other.order_class != "simple":
            continue
        if crosses(side, limit_price, other.limit_price):
            reason = (
                "opposite side market/stop order exists"
                if other.limit_price is None
                else "opposite side limit order exists"
            )
            return other, reason
    return None
