"""Alpaca's venue rules, written once: the broker checks them, the local fake enforces them.

* **Auction windows** (alpaca-py ``TimeInForce`` docs): ``opg`` orders (market
  or limit on open) submitted after 9:28am but before 7:00pm ET are rejected;
  ``cls`` orders (on close) after 3:50pm (10 minutes before the close on an
  early-close day) but before 7:00pm ET are rejected. Outside those windows
  they queue for the next opening / closing auction. ``day`` and ``gtc``
  orders are accepted at any time; placed outside regular hours they queue for
  the next session's open.
* **Pattern-day-trader protection**: an account under 25,000 USD equity with 3
  day trades in the last 5 sessions (``daytrade_count``), or flagged
  ``pattern_day_trader``, is refused an order that could make another day
  trade (HTTP 403, "trade denied due to pattern day trading protection").
* **Wash trades**: an order is refused (HTTP 403, "potential wash trade
  detected. use complex orders") while an opposite-side order for the symbol
  is open that it could trade against: a market order against any opposite
  order; a limit order against an opposite market order or a crossing limit.
* **Rate limits**: HTTP 429 carries ``Retry-After`` (seconds or an HTTP date)
  and/or ``X-RateLimit-Reset`` (Unix seconds); the wait honours either, capped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

from kronos.calendar import Calendar

__all__ = [
    "AUCTION_TIFS",
    "PDT_EQUITY",
    "PDT_MAX_DAYTRADES",
    "PDT_WINDOW_SESSIONS",
    "auction_cutoff",
    "crosses",
    "pdt_protected",
    "rejection_kind",
    "retry_after_s",
]

AUCTION_TIFS = ("opg", "cls")
PDT_EQUITY = 25_000.0
PDT_MAX_DAYTRADES = 3  # with this many in the window, the next day trade is refused
PDT_WINDOW_SESSIONS = 5
OPG_CUTOFF = time(9, 28)
CLS_BEFORE_CLOSE = timedelta(minutes=10)
AUCTION_REOPENS = time(19, 0)


def auction_cutoff(tif: str, now: datetime, calendar: Calendar) -> str | None:
    """Why an ``opg``/``cls`` order placed at ``now`` is refused, or ``None`` when it is not."""
    if tif not in AUCTION_TIFS or calendar.always_open:
        return None
    local = now.astimezone(ZoneInfo(calendar.tz))
    day = local.date()
    if not calendar.is_session(day):
        return None
    if tif == "opg":
        start = OPG_CUTOFF
    else:
        close = calendar.session_close(day).astimezone(local.tzinfo)
        start = (close - CLS_BEFORE_CLOSE).time().replace(tzinfo=None)
    if start <= local.time().replace(tzinfo=None) < AUCTION_REOPENS:
        what = "opening" if tif == "opg" else "closing"
        return (
            f"market closed to {tif} orders from {start:%H:%M} to {AUCTION_REOPENS:%H:%M} "
            f"exchange time (now {local:%H:%M} on {day}): the {what} auction takes no new "
            "orders; place it after 19:00 or before the cut-off"
        )
    return None


def pdt_protected(equity: float, daytrade_count: int, flagged: bool) -> bool:
    """Whether pattern-day-trader protection refuses another day trade."""
    return equity < PDT_EQUITY and (flagged or daytrade_count >= PDT_MAX_DAYTRADES)


def crosses(new_side: str, new_limit: float | None, other_limit: float | None) -> bool:
    """Whether an opposite order at ``other_limit`` could trade against one at ``new_limit``.

    ``None`` is a market order (or a stop: it trades at any price).
    """
    if new_limit is None or other_limit is None:
        return True
    return other_limit <= new_limit if new_side == "buy" else other_limit >= new_limit


def rejection_kind(status: int | None, message: str) -> str:
    """The venue rule behind an Alpaca refusal (one of ``base.REJECTION_KINDS``)."""
    text = message.lower()
    if "wash trade" in text:
        return "wash_trade"
    if "pattern day trading" in text or "day trading protection" in text:
        return "pattern_day_trader"
    if "buying power" in text or "insufficient qty" in text or "insufficient balance" in text:
        return "buying_power"
    if any(
        k in text
        for k in ("not tradable", "not found", "not active", "sold short", "shortable", "halted")
    ):
        return "not_tradable"
    if "market closed" in text or "market is closed" in text or "auction" in text:
        return "market_closed"
    if status == 401 or "not authorized" in text or "unauthorized" in text:
        return "unauthorized"
    if status in (400, 422):
        return "invalid"
    return "other"


def retry_after_s(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds a 429 asks to wait: ``Retry-After``, else ``X-RateLimit-Reset``; None if neither."""
    now = now or datetime.now(UTC)
    header = headers.get("Retry-After")
    wait: float | None = None
    if header:
        try:
            wait = float(header)
        except ValueError:
            try:
                wait = (parsedate_to_datetime(header) - now).total_seconds()
            except (TypeError, ValueError):
                wait = None
    if wait is None and headers.get("X-RateLimit-Reset"):
        try:
            wait = float(headers["X-RateLimit-Reset"]) - now.timestamp()
        except ValueError:
            wait = None
    if wait is None or not math.isfinite(wait):
        return None
    return max(wait, 0.0)
