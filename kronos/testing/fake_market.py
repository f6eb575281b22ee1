"""A small deterministic market behind the fake Alpaca trading API.

Time moves in phases over a list of sessions of an exchange calendar
(:mod:`kronos.calendar`, XNYS by default: holidays are closed, early closes and
daylight saving time are the exchange's): session ``k`` is ``"open"`` (the
clock reads 30 minutes after the session's open, the market is open) and then
``"closed"`` (8:00pm exchange time, after Alpaca's 7:00pm cut-over, so auction
orders for the next session are accepted). :meth:`FakeMarket.advance` moves
open -> closed within a session and closed -> open of the next session; the
market starts in the closed phase of its first session unless told otherwise.
``next_open`` / ``next_close`` are the calendar's.

Orders execute only when time advances, against the daily bar of the session:

* entering **open** of session ``k``: a market order fills at ``open_k``; a limit
  buy fills at ``open_k`` when ``open_k <= limit`` (a sell when ``open_k >= limit``);
* entering **closed** of session ``k``: a market order still open fills at
  ``close_k``; a limit buy fills when ``low_k <= limit``, at ``min(limit, open_k)``
  (a sell when ``high_k >= limit``, at ``max(limit, open_k)``); then every
  ``day`` order still open expires. ``gtc`` orders stay.

An order submitted while the market is open does not fill at once: it waits for
the close like any other. ``opg`` orders execute only at the next open (market
at ``open_k``, limit when ``open_k`` crosses it), ``cls`` orders only at the next
close (at ``close_k``); what they do not fill there is canceled.

Submission is checked as Alpaca would (:mod:`kronos.testing.order_checks`: the
order's form, then the venue's rules of :mod:`kronos.testing.venue_rules`):
auction cut-offs for ``opg``/``cls``, wash-trade and pattern-day-trader
protection; symbols in ``not_tradable`` are refused.

A symbol without a bar in a session does not trade in it. A bracket's entry
behaves as its market or limit parent; its take-profit and stop-loss legs are
validated but not simulated. The account is a cash account:
buys need ``cash`` minus open buy commitments (``qty x limit``, or the last
price for market orders), sells need shares held minus open sells; no shorting,
no commission. A market order may fill above its commitment, so cash can end up
slightly negative, as with a real broker.

Marks (last prices) are ``open_k`` during the open phase and ``close_k`` after
the close. Every event (submission, fill, cancel, expiry) is stamped with the
phase's clock time plus a microsecond counter, so events sort in the order they
happened and none is earlier than the clock reading of its phase.

Every public method takes the market's lock; the HTTP server calls it from many
threads.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import polars as pl

from kronos.calendar import Calendar, get_calendar
from kronos.testing.market_records import (
    AccountSnapshot,
    DailyBar,
    MarketClock,
    MarketError,
    SimFill,
    SimOrder,
    SimPosition,
)
from kronos.testing.order_checks import ID_NAMESPACE as _NS
from kronos.testing.order_checks import OrderChecks
from kronos.testing.venue_rules import PDT_WINDOW_SESSIONS

__all__ = [
    "CLOSED_LOCAL",
    "OPEN_AFTER",
    "AccountSnapshot",
    "DailyBar",
    "FakeMarket",
    "MarketClock",
    "MarketError",
    "SimFill",
    "SimOrder",
    "SimPosition",
]

Phase = Literal["open", "closed"]
PartialSource = Callable[[], float | None]

OPEN_AFTER = timedelta(minutes=30)  # the open phase's clock: this long after the open
CLOSED_LOCAL = time(20, 0)  # the closed phase's clock, exchange time
_EPS = 1e-9


class FakeMarket(OrderChecks):
    """Sessions of daily bars, a cash account, an order book and a phase clock.

    Args:
        sessions: the trading days, strictly increasing.
        bars: per session, per symbol, its :class:`DailyBar`; a symbol missing on a
            session does not trade on it.
        cash: starting cash in USD.
        start: index of the session the market starts in.
        phase: the phase it starts in (``"closed"``: after the close of ``start``).
        marks: last prices known before ``start`` (overridden by the start session's bar).
        calendar: the exchange calendar (XNYS when ``None``); every session must be one of its.
        not_tradable: symbols Alpaca lists but refuses orders for.
        daytrades: sessions of day trades made before the market starts (one entry each).
        pattern_day_trader: the account is flagged PDT.

    """

    def __init__(
        self,
        sessions: Sequence[date],
        bars: Mapping[date, Mapping[str, DailyBar]],
        *,
        cash: float = 100_000.0,
        start: int = 0,
        phase: Phase = "closed",
        marks: Mapping[str, float] | None = None,
        calendar: Calendar | None = None,
        not_tradable: Sequence[str] = (),
        daytrades: Sequence[date] = (),
        pattern_day_trader: bool = False,
    ) -> None:
        self.calendar = calendar or get_calendar()
        self._tz = ZoneInfo(self.calendar.tz)
        self.sessions: tuple[date, ...] = tuple(sessions)
        if not self.sessions:
            raise ValueError("FakeMarket needs at least one session")
        if any(b <= a for a, b in zip(self.sessions, self.sessions[1:], strict=False)):
            raise ValueError("sessions must be strictly increasing")
        if not 0 <= start < len(self.sessions):
            raise ValueError(f"start={start} is not a session index (0..{len(self.sessions) - 1})")
        if phase not in ("open", "closed"):
            raise ValueError(f"phase must be 'open' or 'closed', got {phase!r}")
        if not cash >= 0:
            raise ValueError(f"cash must be >= 0, got {cash}")
        closed = [d for d, ok in zip(self.sessions, self.calendar.sessions_mask(self.sessions),
                                     strict=True) if not ok]  # fmt: skip
        if closed:
            raise ValueError(
                f"not {self.calendar.name} sessions: {', '.join(map(str, closed[:5]))}"
            )
        self._bars = {day: dict(bars.get(day, {})) for day in self.sessions}
        self.symbols: frozenset[str] = frozenset(
            s for day_bars in self._bars.values() for s in day_bars
        ) | frozenset(marks or {})
        self._lock = threading.RLock()
        self._index = start
        self._phase: Phase = phase
        self._tick = 0
        self._cash = float(cash)
        self._marks: dict[str, float] = dict(marks or {})
        for symbol, bar in self._bars[self.sessions[start]].items():
            self._marks[symbol] = bar.open if phase == "open" else bar.close
        self._positions: dict[str, tuple[float, float]] = {}  # symbol -> (qty, avg price)
        self._orders: dict[str, SimOrder] = {}  # by id, in submission order
        self._by_client_id: dict[str, str] = {}
        self._fills: list[SimFill] = []
        self._last_equity = self._cash
        self.not_tradable = frozenset(not_tradable)
        self.pattern_day_trader = pattern_day_trader
        self._daytrades: list[date] = list(daytrades)
        self._last_side_today: dict[str, str] = {}  # symbol -> side of its last fill this session
        self.orders_accepted = 0
        self.orders_refused = 0
        self.duplicates_refused = 0

    @classmethod
    def from_bars(
        cls,
        frame: pl.DataFrame,
        *,
        start: date | None = None,
        end: date | None = None,
        cash: float = 100_000.0,
        phase: Phase = "closed",
        calendar: Calendar | None = None,
        **kwargs: Any,
    ) -> FakeMarket:
        """A market over the calendar's sessions from the first to the last day of ``frame``.

        ``frame`` is long: ``symbol, ts`` (date or datetime) and ``open, high, low,
        close`` (``volume`` optional). A missing ``close`` falls back to
        ``adj_close`` when that column exists; missing open/high/low fall back to
        the close (close-only data: ``o = h = l = c``). Rows before ``start`` only
        seed the last prices. The sessions are the calendar's (XNYS by default)
        between the first and last day in ``start..end``; a session without bars
        does not trade; a bar on a day that is no session is refused.
        ``kwargs`` go to the constructor (``not_tradable``, ``daytrades``...).
        """
        missing = {"symbol", "ts", "close"} - set(frame.columns)
        if missing:
            raise ValueError(f"FakeMarket.from_bars: frame lacks columns {sorted(missing)}")
        close = pl.col("close").cast(pl.Float64)
        if "adj_close" in frame.columns:
            close = pl.coalesce(close, pl.col("adj_close").cast(pl.Float64))
        ts = pl.col("ts")
        if frame.schema["ts"] != pl.Date():
            ts = ts.cast(pl.Date)
        cols = [pl.col("symbol").cast(pl.String), ts.alias("ts"), close.alias("close")]
        for name in ("open", "high", "low"):
            value = pl.col(name).cast(pl.Float64) if name in frame.columns else pl.lit(None)
            cols.append(pl.coalesce(value, close).alias(name))
        volume = pl.col("volume").cast(pl.Float64) if "volume" in frame.columns else pl.lit(0.0)
        cols.append(volume.fill_null(0.0).alias("volume"))
        data = frame.select(cols).filter(pl.col("close").is_not_null()).sort("ts", "symbol")
        if end is not None:
            data = data.filter(pl.col("ts") <= end)
        inside = data if start is None else data.filter(pl.col("ts") >= start)
        if inside.is_empty():
            raise ValueError(f"FakeMarket.from_bars: no bars between {start} and {end}")
        before = data.filter(pl.col("ts") < inside["ts"].min())
        marks = {s: c for s, c in before.group_by("symbol").agg(pl.col("close").last()).iter_rows()}
        bars: dict[date, dict[str, DailyBar]] = {}
        for symbol, day, c, o, h, low, v in inside.iter_rows():
            bars.setdefault(day, {})[symbol] = DailyBar(o, h, low, c, v)
        calendar = calendar or get_calendar()
        days = sorted(bars)
        off = [d for d, ok in zip(days, calendar.sessions_mask(days), strict=True) if not ok]
        if off:
            raise ValueError(
                f"FakeMarket.from_bars: bars on days that are no {calendar.name} session: "
                f"{', '.join(map(str, off[:5]))}"
            )
        sessions = calendar.sessions(days[0], days[-1])
        return cls(sessions, bars, cash=cash, phase=phase, marks=marks, calendar=calendar, **kwargs)

    # --- clock -----------------------------------------------------------------

    @property
    def session(self) -> date:
        """The current session's date."""
        return self.sessions[self._index]

    @property
    def session_index(self) -> int:
        """The current session's index in :attr:`sessions`."""
        return self._index

    @property
    def phase(self) -> Phase:
        """``"open"`` or ``"closed"``."""
        return self._phase

    @property
    def now(self) -> datetime:
        """The clock: 30 minutes after the session's open, or 8:00pm exchange time (closed)."""
        return self._phase_time(self.session, self._phase)

    def _phase_time(self, day: date, phase: Phase) -> datetime:
        if phase == "open":
            return self.calendar.session_open(day).astimezone(UTC) + OPEN_AFTER
        evening = datetime.combine(day, CLOSED_LOCAL, tzinfo=self._tz).astimezone(UTC)
        return max(evening, self.calendar.session_close(day).astimezone(UTC) + OPEN_AFTER)

    @property
    def finished(self) -> bool:
        """After the close of the last session: :meth:`advance` does nothing more."""
        with self._lock:
            return self._phase == "closed" and self._index == len(self.sessions) - 1

    def clock(self) -> MarketClock:
        """Now, whether open, the next open and close (the calendar's, past the last session)."""
        with self._lock:
            following = (
                self.sessions[self._index + 1]
                if self._index + 1 < len(self.sessions)
                else self.calendar.next_session(self.session)
            )
            is_open = self._phase == "open"
            close_day = self.session if is_open else following
            return MarketClock(
                now=self.now,
                is_open=is_open,
                next_open=self.calendar.session_open(following).astimezone(UTC),
                next_close=self.calendar.session_close(close_day).astimezone(UTC),
            )

    def advance(self, partial: PartialSource | None = None) -> bool:
        """Move one phase, executing and expiring orders; ``False`` once finished.

        ``partial`` is asked once per execution of an order with at least 2 shares
        left; a fraction ``f`` fills ``max(1, floor(remaining * f))`` shares only.
        """
        with self._lock:
            if self.finished:
                return False
            if self._phase == "closed":
                self._index += 1
                self._phase = "open"
                self._tick = 0
                self._last_side_today.clear()
                day_bars = self._bars[self.session]
                for symbol, bar in day_bars.items():
                    self._marks[symbol] = bar.open
                for order in self._open_orders():
                    if order.time_in_force == "cls":
                        continue  # waits for the closing auction
                    bar = day_bars.get(order.symbol)
                    if bar is None:
                        if order.time_in_force == "opg":
                            self._cancel(order)
                        continue
                    if order.status == "accepted":
                        order = self._update(order, status="new")
                    price = self._price_at(order, bar.open)
                    if price is not None:
                        order = self._execute(order, price, partial)
                    if order.time_in_force == "opg" and order.is_open:
                        self._cancel(order)  # the opening auction is over
            else:
                self._phase = "closed"
                self._tick = 0
                day_bars = self._bars[self.session]
                for order in self._open_orders():
                    bar = day_bars.get(order.symbol)
                    if order.time_in_force == "cls":
                        price = None if bar is None else self._price_at(order, bar.close)
                    else:
                        price = None if bar is None else self._price_in_session(order, bar)
                    if price is not None:
                        order = self._execute(order, price, partial)
                    if order.time_in_force == "cls" and order.is_open:
                        self._cancel(order)  # the closing auction is over
                for symbol, bar in day_bars.items():
                    self._marks[symbol] = bar.close
                for order in self._open_orders():
                    if order.time_in_force == "day":
                        stamp = self._stamp()
                        self._update(order, status="expired", expired_at=stamp, updated_at=stamp)
                self._last_equity = self._equity()
            return True

    # --- orders ----------------------------------------------------------------

    def submit(
        self,
        *,
        symbol: str,
        side: str,
        qty: float,
        order_type: str = "market",
        time_in_force: str = "day",
        limit_price: float | None = None,
        client_order_id: str | None = None,
        order_class: str = "simple",
        take_profit: float | None = None,
        stop_loss: float | None = None,
    ) -> SimOrder:
        """Validate and book an order, as Alpaca would; raises :class:`MarketError`."""
        with self._lock:
            if client_order_id is not None and client_order_id in self._by_client_id:
                self.duplicates_refused += 1
                raise MarketError(422, 40010001, "client_order_id must be unique")
            try:
                order = self._validated(
                    symbol=symbol,
                    side=side,
                    qty=qty,
                    order_type=order_type,
                    time_in_force=time_in_force,
                    limit_price=limit_price,
                    client_order_id=client_order_id,
                    order_class=order_class,
                    take_profit=take_profit,
                    stop_loss=stop_loss,
                )
            except MarketError:
                self.orders_refused += 1
                raise
            self._orders[order.id] = order
            self._by_client_id[order.client_order_id] = order.id
            self.orders_accepted += 1
            return order

    def cancel(self, order_id: str) -> SimOrder:
        """Cancel an open order; 404 when unknown, 422 when it is not open any more."""
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                raise MarketError(404, 40410000, "order not found")
            if not order.is_open:
                raise MarketError(422, 42210000, f'order is already in "{order.status}" state')
            return self._cancel(order)

    def order(self, order_id: str) -> SimOrder | None:
        """The order with this id, if any."""
        with self._lock:
            return self._orders.get(order_id)

    def order_by_client_id(self, client_order_id: str) -> SimOrder | None:
        """The order with this ``client_order_id``, if any."""
        with self._lock:
            order_id = self._by_client_id.get(client_order_id)
            return None if order_id is None else self._orders[order_id]

    def orders(self) -> list[SimOrder]:
        """Every order, in submission order."""
        with self._lock:
            return list(self._orders.values())

    def fills(self) -> list[SimFill]:
        """Every execution, oldest first."""
        with self._lock:
            return list(self._fills)

    # --- account ---------------------------------------------------------------

    def mark(self, symbol: str) -> float | None:
        """The last known price of ``symbol``."""
        with self._lock:
            return self._marks.get(symbol)

    def positions(self) -> list[SimPosition]:
        """Every held symbol, by symbol."""
        with self._lock:
            return [
                SimPosition(s, q, avg, self._marks.get(s, avg))
                for s, (q, avg) in sorted(self._positions.items())
            ]

    def position(self, symbol: str) -> SimPosition | None:
        """The position in ``symbol``, if held."""
        return next((p for p in self.positions() if p.symbol == symbol), None)

    def account(self) -> AccountSnapshot:
        """Cash, buying power (cash minus open buy commitments), market value, equity."""
        with self._lock:
            long_value = sum(p.market_value for p in self.positions())
            return AccountSnapshot(
                cash=self._cash,
                buying_power=self._buying_power(),
                long_market_value=long_value,
                equity=self._cash + long_value,
                last_equity=self._last_equity,
                daytrade_count=self.daytrade_count(),
                pattern_day_trader=self.pattern_day_trader,
            )

    def daytrade_count(self) -> int:
        """Day trades in the last 5 sessions, the current one included."""
        with self._lock:
            first = self.session
            for _ in range(PDT_WINDOW_SESSIONS - 1):
                first = self.calendar.previous_session(first)
            return sum(1 for d in self._daytrades if first <= d <= self.session)

    # --- internals (called with the lock held) ----------------------------------

    def _cancel(self, order: SimOrder) -> SimOrder:
        stamp = self._stamp()
        return self._update(order, status="canceled", canceled_at=stamp, updated_at=stamp)

    def _stamp(self) -> datetime:
        stamp = self.now + timedelta(microseconds=self._tick)
        self._tick += 1
        return stamp

    def _open_orders(self) -> list[SimOrder]:
        return [o for o in self._orders.values() if o.is_open]

    def _update(self, order: SimOrder, **changes: object) -> SimOrder:
        updated = replace(order, **changes)  # type: ignore[arg-type]
        self._orders[order.id] = updated
        return updated

    def _buying_power(self) -> float:
        committed = 0.0
        for o in self._open_orders():
            if o.side == "buy":
                price = o.limit_price if o.limit_price is not None else self._marks.get(o.symbol)
                committed += o.remaining * (price or 0.0)
        return self._cash - committed

    def _equity(self) -> float:
        return self._cash + sum(
            q * self._marks.get(s, avg) for s, (q, avg) in self._positions.items()
        )

    @staticmethod
    def _price_at(order: SimOrder, price: float) -> float | None:
        """``price`` when the order takes it (a market order, or a limit it satisfies)."""
        limit = order.limit_price
        if limit is None:
            return price
        if order.side == "buy":
            return price if price <= limit else None
        return price if price >= limit else None

    @staticmethod
    def _price_in_session(order: SimOrder, bar: DailyBar) -> float | None:
        limit = order.limit_price
        if limit is None:
            return bar.close
        if order.side == "buy":
            return min(limit, bar.open) if bar.low <= limit else None
        return max(limit, bar.open) if bar.high >= limit else None

    def _execute(self, order: SimOrder, price: float, partial: PartialSource | None) -> SimOrder:
        qty = order.remaining
        if partial is not None and qty >= 2:
            fraction = partial()
            if fraction is not None:
                qty = min(qty, max(1.0, math.floor(qty * fraction)))
        held, avg = self._positions.get(order.symbol, (0.0, 0.0))
        if order.side == "sell" and self._last_side_today.get(order.symbol) == "buy":
            self._daytrades.append(self.session)  # bought this session, now sold: a day trade
        self._last_side_today[order.symbol] = order.side
        if order.side == "buy":
            self._cash -= qty * price
            new_held = held + qty
            self._positions[order.symbol] = (new_held, (held * avg + qty * price) / new_held)
        else:
            self._cash += qty * price
            new_held = held - qty
            if abs(new_held) < _EPS:
                del self._positions[order.symbol]
            else:
                self._positions[order.symbol] = (new_held, avg)
        filled = order.filled_qty + qty
        avg_fill = (order.filled_qty * (order.filled_avg_price or 0.0) + qty * price) / filled
        done = order.qty - filled < _EPS
        stamp = self._stamp()
        order = self._update(
            order,
            filled_qty=filled,
            filled_avg_price=avg_fill,
            status="filled" if done else "partially_filled",
            filled_at=stamp if done else None,
            updated_at=stamp,
        )
        n = len(self._fills)
        self._fills.append(
            SimFill(
                id=f"{stamp:%Y%m%d%H%M%S}{stamp.microsecond // 1000:03d}::"
                f"{uuid.uuid5(_NS, f'fill-{n}')}",
                order_id=order.id,
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                side=order.side,
                qty=qty,
                price=price,
                at=stamp,
                cum_qty=filled,
                leaves_qty=max(order.qty - filled, 0.0),
                order_status=order.status,
            )
        )
        return order
