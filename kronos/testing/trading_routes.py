"""The trading routes of :class:`~kronos.testing.fake_alpaca.FakeAlpacaServer`.

:class:`TradingRoutes` is a mixin of the server: each method answers one
``TradingClient`` endpoint (account, positions, orders, clock, fill activities)
from the server's :class:`~kronos.testing.fake_market.FakeMarket`, in Alpaca's
wire formats (:mod:`kronos.testing.alpaca_wire`). A refusal by the market is a
:class:`MarketError`, which the server's router turns into Alpaca's error body.
Fault injection, authentication and routing stay in
:mod:`kronos.testing.fake_alpaca`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kronos.testing.alpaca_wire import (
    ACCOUNT_ID,
    FakeResponse,
    RecordedRequest,
    api_error,
    fill_json,
    float_or_none,
    num,
    order_json,
    parse_instant,
    position_json,
    ts,
)
from kronos.testing.fake_market import FakeMarket, MarketError
from kronos.testing.faults import Faults

__all__ = ["MAX_ORDERS_PAGE", "TradingRoutes"]

MAX_ORDERS_PAGE = 500


class TradingRoutes:
    """The ``TradingClient`` endpoints of the fake server (a mixin)."""

    if TYPE_CHECKING:  # provided by FakeAlpacaServer
        market: FakeMarket | None
        faults: Faults
        advance_on_clock: bool

    def _require_market(self) -> FakeMarket:
        if self.market is None:
            raise MarketError(404, 40410000, "this fake serves no trading market")
        return self.market

    # --- trading routes -------------------------------------------------------------

    def _account(self, request: RecordedRequest) -> FakeResponse:
        """``GET /v2/account``."""
        acct = self._require_market().account()
        bp = num(acct.buying_power)
        return FakeResponse(
            200,
            {
                "id": ACCOUNT_ID,
                "account_number": "PAFAKE0001",
                "status": "ACTIVE",
                "crypto_status": "INACTIVE",
                "currency": "USD",
                "buying_power": bp,
                "regt_buying_power": bp,
                "daytrading_buying_power": "0",
                "non_marginable_buying_power": bp,
                "options_buying_power": bp,
                "cash": num(acct.cash),
                "accrued_fees": "0",
                "pending_transfer_in": "0",
                "portfolio_value": num(acct.equity),
                "pattern_day_trader": acct.pattern_day_trader,
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "created_at": "2020-01-02T15:00:00Z",
                "trade_suspended_by_user": False,
                "multiplier": "1",
                "shorting_enabled": False,
                "equity": num(acct.equity),
                "last_equity": num(acct.last_equity),
                "long_market_value": num(acct.long_market_value),
                "short_market_value": "0",
                "initial_margin": "0",
                "maintenance_margin": "0",
                "last_maintenance_margin": "0",
                "sma": "0",
                "daytrade_count": acct.daytrade_count,
            },
        )

    def _positions(self, request: RecordedRequest) -> FakeResponse:
        """``GET /v2/positions``."""
        return FakeResponse(200, [position_json(p) for p in self._require_market().positions()])

    def _position(self, request: RecordedRequest, symbol: str) -> FakeResponse:
        """``GET /v2/positions/{symbol}``."""
        position = self._require_market().position(symbol)
        if position is None:
            return api_error(404, 40410000, "position does not exist")
        return FakeResponse(200, position_json(position))

    def _submit(self, request: RecordedRequest) -> FakeResponse:
        """``POST /v2/orders``."""
        market = self._require_market()
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("notional") is not None:
            raise MarketError(422, 40010001, "notional orders are not supported by the fake")
        qty = float_or_none(body.get("qty"), "qty")
        if qty is None:
            raise MarketError(422, 40010001, "qty is required")
        take_profit = body.get("take_profit") or {}
        stop_loss = body.get("stop_loss") or {}
        order = market.submit(
            symbol=str(body.get("symbol", "")),
            side=str(body.get("side", "")),
            qty=qty,
            order_type=str(body.get("type", "")),
            time_in_force=str(body.get("time_in_force", "")),
            limit_price=float_or_none(body.get("limit_price"), "limit_price"),
            client_order_id=body.get("client_order_id"),
            order_class=str(body.get("order_class") or "simple"),
            take_profit=float_or_none(take_profit.get("limit_price"), "take_profit.limit_price"),
            stop_loss=float_or_none(stop_loss.get("stop_price"), "stop_loss.stop_price"),
        )
        return FakeResponse(200, order_json(order))

    def _orders(self, request: RecordedRequest) -> FakeResponse:
        """``GET /v2/orders``."""
        q = request.query
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise MarketError(422, 40010001, f"invalid status: {status}")
        direction = q.get("direction", "desc")
        if direction not in ("asc", "desc"):
            raise MarketError(422, 40010001, f"invalid direction: {direction}")
        try:
            limit = int(q.get("limit", 50))
            after = parse_instant(q["after"]) if "after" in q else None
            until = parse_instant(q["until"]) if "until" in q else None
        except ValueError as exc:
            raise MarketError(422, 40010001, f"invalid parameter: {exc}") from None
        if limit < 1:
            raise MarketError(422, 40010001, f"invalid limit: {limit}")
        limit = min(limit, MAX_ORDERS_PAGE)  # Alpaca's maximum page
        symbols = {s for s in q.get("symbols", "").split(",") if s}
        orders = [
            o
            for o in self._require_market().orders()
            if (status == "all" or o.is_open == (status == "open"))
            and (after is None or o.submitted_at > after)
            and (until is None or o.submitted_at < until)
            and (not symbols or o.symbol in symbols)
            and q.get("side") in (None, o.side)
        ]
        orders.sort(key=lambda o: o.submitted_at, reverse=direction == "desc")
        return FakeResponse(200, [order_json(o) for o in orders[:limit]])

    def _order_by_client_id(self, request: RecordedRequest) -> FakeResponse:
        """``GET /v2/orders:by_client_order_id?client_order_id=...``."""
        order = self._require_market().order_by_client_id(request.query.get("client_order_id", ""))
        if order is None:
            return api_error(404, 40410000, "order not found")
        return FakeResponse(200, order_json(order))

    def _order(self, request: RecordedRequest, order_id: str) -> FakeResponse:
        """``GET /v2/orders/{id}``."""
        order = self._require_market().order(order_id)
        if order is None:
            return api_error(404, 40410000, "order not found")
        return FakeResponse(200, order_json(order))

    def _cancel(self, request: RecordedRequest, order_id: str) -> FakeResponse:
        """``DELETE /v2/orders/{id}``: 204."""
        self._require_market().cancel(order_id)
        return FakeResponse(204, None)

    def _clock(self, request: RecordedRequest) -> FakeResponse:
        """``GET /v2/clock``; advances first when ``advance_on_clock``."""
        market = self._require_market()
        if self.advance_on_clock:
            market.advance(partial=self.faults.partial)
        clock = market.clock()
        return FakeResponse(
            200,
            {
                "timestamp": ts(clock.now),
                "is_open": clock.is_open,
                "next_open": ts(clock.next_open),
                "next_close": ts(clock.next_close),
            },
        )

    def _activities(self, request: RecordedRequest, activity_type: str) -> FakeResponse:
        """``GET /v2/account/activities/{type}``: FILL executions; other types are empty."""
        market = self._require_market()
        q = request.query
        direction = q.get("direction", "desc")
        if direction not in ("asc", "desc"):
            raise MarketError(422, 40010001, f"invalid direction: {direction}")
        try:
            page_size = int(q.get("page_size", 100))
            after = parse_instant(q["after"]) if "after" in q else None
            until = parse_instant(q["until"]) if "until" in q else None
        except ValueError as exc:
            raise MarketError(422, 40010001, f"invalid parameter: {exc}") from None
        if not 1 <= page_size <= 100:
            raise MarketError(422, 40010001, f"invalid page_size: {page_size}")
        fills = [
            f
            for f in (market.fills() if activity_type.upper() == "FILL" else [])
            if (after is None or f.at > after) and (until is None or f.at < until)
        ]
        fills.sort(key=lambda f: (f.at, f.id), reverse=direction == "desc")
        token = q.get("page_token")
        if token:
            ids = [f.id for f in fills]
            if token not in ids:
                raise MarketError(422, 40010001, f"invalid page_token: {token}")
            fills = fills[ids.index(token) + 1 :]
        return FakeResponse(200, [fill_json(f) for f in fills[:page_size]])
