"""The checks :class:`~kronos.testing.fake_market.FakeMarket` makes when an order is submitted.

:class:`OrderChecks` is a mixin of :class:`~kronos.testing.fake_market.FakeMarket`:
its methods read the market's state and are called with the market's lock held.
In Alpaca's order: the ``client_order_id``, the symbol (known, tradable), the
order's form (side, type, time in force, class, quantity, limit price and its
increments, a bracket's legs), then the venue's rules
(:mod:`kronos.testing.venue_rules`: auction cut-offs, wash trades,
pattern-day-trader protection) and last the cash account (buying power, shares
held). A valid order comes back as a new :class:`SimOrder`; a refused one raises
:class:`MarketError` with Alpaca's status, code and message.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from kronos.calendar import Calendar
from kronos.testing.market_records import MarketError, SimOrder
from kronos.testing.venue_rules import (
    PDT_CODE,
    PDT_MESSAGE,
    WASH_CODE,
    WASH_MESSAGE,
    auction_cutoff,
    pdt_protected,
    wash_conflict,
)

__all__ = ["ID_NAMESPACE", "TIME_IN_FORCE", "OrderChecks"]

TIME_IN_FORCE = ("day", "gtc", "opg", "cls")
ID_NAMESPACE = uuid.UUID("6b1f3b4e-5d0c-4a57-9a43-6b726f6e6f73")  # fixed: ids are reproducible
_NS = ID_NAMESPACE
_EPS = 1e-9


def _ticks_ok(price: float) -> bool:
    """Alpaca's minimum increments: $0.01 at or above $1, $0.0001 below."""
    step = 0.01 if price >= 1.0 else 0.0001
    return abs(price / step - round(price / step)) < 1e-6


class OrderChecks:
    """Order validation for :class:`~kronos.testing.fake_market.FakeMarket` (a mixin)."""

    if TYPE_CHECKING:  # provided by FakeMarket
        calendar: Calendar
        symbols: frozenset[str]
        not_tradable: frozenset[str]
        pattern_day_trader: bool
        _phase: Literal["open", "closed"]
        _marks: dict[str, float]
        _positions: dict[str, tuple[float, float]]
        _orders: dict[str, SimOrder]
        _last_side_today: dict[str, str]

        @property
        def now(self) -> datetime:
            """The market's clock."""
            ...

        def daytrade_count(self) -> int:
            """Day trades in the last 5 sessions."""
            ...

        def _open_orders(self) -> list[SimOrder]: ...
        def _stamp(self) -> datetime: ...
        def _buying_power(self) -> float: ...
        def _equity(self) -> float: ...

    def _validated(
        self,
        *,
        symbol: str,
        side: str,
        qty: float,
        order_type: str,
        time_in_force: str,
        limit_price: float | None,
        client_order_id: str | None,
        order_class: str,
        take_profit: float | None,
        stop_loss: float | None,
    ) -> SimOrder:
        if client_order_id is not None and not 0 < len(client_order_id) <= 128:
            raise MarketError(422, 40010001, "client_order_id must be 1 to 128 characters")

        def invalid(message: str) -> MarketError:
            return MarketError(422, 40010001, message)

        if symbol not in self.symbols:
            raise invalid(f'asset "{symbol}" not found')
        if symbol in self.not_tradable:
            raise MarketError(422, 42210000, f"asset {symbol} is not tradable")
        if side not in ("buy", "sell"):
            raise invalid(f"invalid side: {side}")
        if order_type not in ("market", "limit"):
            raise invalid(f"order type {order_type!r} is not supported by the fake")
        if time_in_force not in TIME_IN_FORCE:
            raise invalid(f"time_in_force {time_in_force!r} is not supported by the fake")
        if time_in_force in ("opg", "cls") and order_class != "simple":
            raise MarketError(422, 42210000, f"{time_in_force} orders must be simple orders")
        if order_class not in ("simple", "bracket"):
            raise invalid(f"order_class {order_class!r} is not supported by the fake")
        if not (math.isfinite(qty) and qty > 0):
            raise invalid(f"qty must be > 0, got {qty}")
        if qty != math.floor(qty) and not (
            order_type == "market" and time_in_force == "day" and order_class == "simple"
        ):
            raise MarketError(422, 42210000, "fractional orders must be simple market day orders")
        if order_type == "limit":
            if limit_price is None or not limit_price > 0:
                raise invalid("limit orders require a positive limit_price")
            if not _ticks_ok(limit_price):
                raise MarketError(
                    422,
                    42210000,
                    f"invalid limit_price {limit_price}. sub-penny increment does not "
                    "fulfill minimum pricing criteria",
                )
        elif limit_price is not None:
            raise invalid("limit_price is only allowed for limit orders")
        price = limit_price if limit_price is not None else self._marks.get(symbol)
        if price is None:
            raise invalid(f'asset "{symbol}" has no price yet')
        if order_class == "bracket":
            self._check_bracket(side, price, take_profit, stop_loss)
        closed = auction_cutoff(time_in_force, self.now, self.calendar)
        if closed:
            raise MarketError(422, 42210000, closed)
        conflict = wash_conflict(
            side, limit_price, order_class, (o for o in self._open_orders() if o.symbol == symbol)
        )
        if conflict is not None:
            other, reason = conflict
            raise MarketError(
                403,
                WASH_CODE,
                WASH_MESSAGE,
                {"existing_order_id": other.id, "reject_reason": reason},
            )
        if self._pdt_protected() and self._could_day_trade(symbol, side):
            raise MarketError(403, PDT_CODE, PDT_MESSAGE)
        if side == "buy":
            if qty * price > self._buying_power() + _EPS:
                raise MarketError(403, 40310000, "insufficient buying power")
        else:
            held = self._positions.get(symbol, (0.0, 0.0))[0]
            selling = sum(
                o.remaining for o in self._open_orders() if o.symbol == symbol and o.side == "sell"
            )
            available = held - selling
            if qty > available + _EPS:
                raise MarketError(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {qty:g}, "
                    f"available: {max(available, 0.0):g})",
                )
        stamp = self._stamp()
        n = len(self._orders)
        return SimOrder(
            id=str(uuid.uuid5(_NS, f"order-{n}")),
            client_order_id=client_order_id or str(uuid.uuid5(_NS, f"client-order-{n}")),
            symbol=symbol,
            side=side,  # type: ignore[arg-type]  # checked above
            qty=float(qty),
            order_type=order_type,  # type: ignore[arg-type]
            limit_price=limit_price,
            time_in_force=time_in_force,  # type: ignore[arg-type]
            order_class=order_class,  # type: ignore[arg-type]
            take_profit=take_profit,
            stop_loss=stop_loss,
            status="new" if self._phase == "open" else "accepted",
            submitted_at=stamp,
            updated_at=stamp,
        )

    @staticmethod
    def _check_bracket(
        side: str, base: float, take_profit: float | None, stop_loss: float | None
    ) -> None:
        if take_profit is None or stop_loss is None:
            raise MarketError(
                422, 40010001, "bracket orders require take_profit.limit_price and stop_loss"
            )
        for name, price in (("take_profit.limit_price", take_profit), ("stop_loss", stop_loss)):
            if not (price > 0 and _ticks_ok(price)):
                raise MarketError(422, 42210000, f"invalid {name} {price}")
        sign = 1.0 if side == "buy" else -1.0
        if sign * (take_profit - base) < 0.01 - _EPS:
            op = ">=" if side == "buy" else "<="
            raise MarketError(
                422,
                42210000,
                f"take_profit.limit_price must be {op} base_price {'+' if sign > 0 else '-'} 0.01",
            )
        if sign * (base - stop_loss) < 0.01 - _EPS:
            op = "<=" if side == "buy" else ">="
            raise MarketError(
                422,
                42210000,
                f"stop_loss.stop_price must be {op} base_price {'-' if sign > 0 else '+'} 0.01",
            )

    def _pdt_protected(self) -> bool:
        """Under 25,000 equity with 3 day trades in 5 sessions (or flagged PDT)."""
        return pdt_protected(self._equity(), self.daytrade_count(), self.pattern_day_trader)

    def _could_day_trade(self, symbol: str, side: str) -> bool:
        """Whether the order could close, this session, what this session opened.

        While the market is open the order executes today: a sell after today's
        buy (or a buy after today's short sale) is a day trade. Orders placed
        after the close execute in a later session.
        """
        if self._phase != "open":
            return False
        last = self._last_side_today.get(symbol)
        return last is not None and last != side
