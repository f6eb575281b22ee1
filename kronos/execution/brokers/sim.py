"""The simulated broker: the broker contract over the store's daily bars.

Time moves in phases, one call of :meth:`SimBroker.advance` each: the market
is *closed* after a session's close, then *open* at the next session's open,
then closed again at its close. Orders are accepted in either phase and fill
when the open phase ends, against that session's bar, by the rules the
walk-forward engine uses (:mod:`kronos.execution.fills`):

- the reference price is the session's open (``FillRules.at == "next_open"``)
  or close (``"next_close"``); close-only bars (no open) use the close;
- a limit order fills at the reference price when it is inside the limit,
  else at the limit when the session's low (buy) or high (sell) reached it;
- slippage and commission in basis points, an optional volume-share cap
  (partial fills), buys cut to the cash there is (sells first);
- a day order still open at the close expires (with what filled kept).

Sessions are the days of the stored bars that are sessions of the exchange
calendar (:mod:`kronos.calendar`); the clock opens and closes at that
calendar's times, early closes included (13:00 New York the day after
Thanksgiving).

Prices are on the store's one price basis (:mod:`kronos.data.prices`), as in
the backtest: raw where every symbol has raw closes, with splits and cash
dividends applied to positions, cash and open orders when the ex-date's
session opens; else adjusted (``open * adj_close / close``).

Every piece of state (clock, cash, orders, fills, positions)
lives in the ``sim_broker_*`` tables and changes in one transaction per call,
so a process killed at any point restarts exactly where the last call left it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime

import duckdb
import numpy as np
import polars as pl

from kronos.calendar import Calendar, get_calendar
from kronos.config import DataSettings
from kronos.data.prices import ACTIONS_SCHEMA, corporate_actions, on_basis, price_basis
from kronos.data.store import Store
from kronos.errors import InputError
from kronos.execution.brokers.base import (
    AccountState,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    Clock,
    DuplicateOrder,
    OrderRejected,
    OrderRequest,
)
from kronos.execution.fills import FillRules, fill_orders, limit_fills, within_cash

__all__ = ["SimBroker"]

_ORDER_COLUMNS = (
    "client_order_id, broker_order_id, symbol, side, qty, filled_qty, filled_avg_price, status, "
    "order_type, limit_price, time_in_force, submitted_at, updated_at, reason"
)


class SimBroker:
    """A broker simulated on stored bars, its state persisted in the store (module rules)."""

    name = "sim"

    def __init__(
        self,
        store: Store,
        account: str = "sim",
        rules: FillRules | None = None,
        symbols: Sequence[str] | None = None,
        *,
        data_settings: DataSettings,
        calendar: Calendar | None = None,
    ) -> None:
        self.store = store
        self.account_id = account
        self.rules = rules or FillRules()
        if self.rules.at == "close":
            raise ValueError("the simulated broker cannot fill at the decision's own close")
        self.data = data_settings
        self.calendar = calendar or get_calendar(self.data.calendar)
        if symbols is None:
            rows = store.con.execute("SELECT DISTINCT symbol FROM bars ORDER BY 1").fetchall()
            symbols = [r[0] for r in rows]
        self.symbols = sorted(set(symbols))
        if not self.symbols:
            raise InputError(f"no bars in {store.path}: nothing to trade")
        marks = ", ".join("?" for _ in self.symbols)
        rows = store.con.execute(
            f"SELECT DISTINCT ts FROM bars WHERE symbol IN ({marks}) ORDER BY 1", self.symbols
        ).fetchall()
        days = np.array([r[0] for r in rows], dtype="datetime64[D]")
        keep = self.calendar.in_range(days)
        keep[keep] = self.calendar.sessions_mask(days[keep])
        # a bar on a closed day (``kronos data validate``: off_session) is no session
        self.sessions: list[date] = days[keep].tolist()
        self._index = {d: i for i, d in enumerate(self.sessions)}
        self._last_bar = dict(
            store.con.execute(
                "SELECT symbol, max(ts) FROM bars WHERE symbol IN (SELECT unnest(?)) GROUP BY 1",
                [self.symbols],
            ).fetchall()
        )
        end = self.sessions[-1] if self.sessions else date.max
        self.basis = price_basis(store, self.symbols, end, self.data)
        self._actions = (
            corporate_actions(store, end, self.symbols, self.data)
            if self.basis.raw
            else pl.DataFrame(schema=ACTIONS_SCHEMA)
        )

    # -- state -------------------------------------------------------------
    def start(self, session: date, cash: float) -> bool:
        """Open the account at the close of ``session`` with ``cash``; False when it exists."""
        if self._state() is not None:
            return False
        if session not in self._index:
            raise InputError(f"{session} is not a session of the stored bars")
        if not (cash > 0):
            raise InputError(f"starting cash must be positive, got {cash!r}")
        self.store.con.execute(
            "INSERT INTO sim_broker_state VALUES (?, ?, 'closed', ?, ?, ?)",
            [self.account_id, session, cash, cash, self._moment(session, "closed")],
        )
        return True

    def _state(self) -> tuple[date, str, float] | None:
        row = self.store.con.execute(
            "SELECT session, phase, cash FROM sim_broker_state WHERE account = ?", [self.account_id]
        ).fetchall()
        return (row[0][0], row[0][1], row[0][2]) if row else None

    def _need_state(self) -> tuple[date, str, float]:
        state = self._state()
        if state is None:
            raise RuntimeError(f"simulated account {self.account_id!r} is not started")
        return state

    def _moment(self, session: date, phase: str) -> datetime:
        if phase == "open":
            return self.calendar.session_open(session)
        return self.calendar.session_close(session)

    @property
    def session(self) -> date:
        """The session the clock is in (or after, when closed)."""
        return self._need_state()[0]

    # -- prices ------------------------------------------------------------
    def _bars(self, session: date) -> pl.DataFrame:
        """``symbol, open, high, low, close, volume`` of ``session`` on the price basis."""
        frame = self.store.con.sql(
            "SELECT symbol, open, high, low, close, adj_close, volume FROM bars "
            "WHERE ts = ? AND symbol IN (SELECT unnest(?))",
            params=[session, self.symbols],
        ).pl()
        return (
            on_basis(frame, self.basis)
            .select(
                "symbol",
                *(pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume")),
            )
            .with_columns(pl.col("open", "high", "low", "close").fill_nan(None))
        )

    def _marks(self) -> dict[str, float]:
        """The last price known now: this session's open while open, its close once closed."""
        session, phase, _ = self._need_state()
        marks: dict[str, float] = {}
        k = self._index[session]
        days = self.sessions[max(k - 10, 0) : k + 1]
        for day in days:
            bars = self._bars(day)
            price = bars["open"] if (day == session and phase == "open") else bars["close"]
            for s, p in zip(bars["symbol"].to_list(), price.to_list(), strict=True):
                if p is not None and p > 0:
                    marks[s] = p
        return marks

    # -- the contract ------------------------------------------------------
    def clock(self) -> Clock:
        """The simulated clock."""
        session, phase, _ = self._need_state()
        k = self._index[session]
        nxt = self.sessions[k + 1] if k + 1 < len(self.sessions) else None
        now = self._moment(session, phase)
        if phase == "open":
            next_open = self._moment(nxt, "open") if nxt else now
            return Clock(now, True, next_open, self._moment(session, "closed"))
        if nxt is None:
            return Clock(now, False, now, now)
        return Clock(now, False, self._moment(nxt, "open"), self._moment(nxt, "closed"))

    def account(self) -> AccountState:
        """NAV at the last known prices, cash, and buying power net of open orders."""
        _, _, cash = self._need_state()
        marks = self._marks()
        nav = cash + sum(p.qty * marks.get(p.symbol, p.avg_price) for p in self.positions())
        committed = 0.0
        for o in self.open_orders():
            px = o.limit_price or marks.get(o.symbol, 0.0)
            left = (o.qty - o.filled_qty) * px
            committed += left if o.side == "buy" else -left
        return AccountState(nav=nav, cash=cash, buying_power=max(cash - committed, 0.0))

    def positions(self) -> list[BrokerPosition]:
        """Held symbols marked at the last known prices."""
        rows = self.store.con.execute(
            "SELECT symbol, qty, avg_price FROM sim_broker_positions WHERE account = ? "
            "ORDER BY symbol",
            [self.account_id],
        ).fetchall()
        marks = self._marks() if rows else {}
        return [BrokerPosition(s, q, a, q * marks.get(s, a)) for s, q, a in rows]

    def submit(self, order: OrderRequest) -> BrokerOrder:
        """Accept ``order`` or raise :class:`OrderRejected` / :class:`DuplicateOrder`."""
        session, phase, _ = self._need_state()
        if self.order(order.client_order_id) is not None:
            raise DuplicateOrder(f"client_order_id {order.client_order_id} exists already")
        if order.symbol not in self.symbols:
            raise OrderRejected(f"{order.client_order_id}: unknown symbol {order.symbol!r}")
        if self._last_bar.get(order.symbol, date.max) < session:
            last = self._last_bar[order.symbol]
            raise OrderRejected(
                f"{order.client_order_id}: {order.symbol} no longer trading (last bar {last})"
            )
        if order.qty != np.floor(order.qty):
            raise OrderRejected(f"{order.client_order_id}: whole shares only, got {order.qty}")
        open_now = self.open_orders()
        if order.side == "sell":
            held = {p.symbol: p.qty for p in self.positions()}.get(order.symbol, 0.0)
            selling = sum(
                o.qty - o.filled_qty
                for o in open_now
                if o.symbol == order.symbol and o.side == "sell"
            )
            if order.qty > held - selling:
                raise OrderRejected(
                    f"{order.client_order_id}: insufficient qty available for order "
                    f"({order.qty:g} to sell, {held - selling:g} available)"
                )
        else:
            price = order.limit_price or self._marks().get(order.symbol)
            if price is None:
                raise OrderRejected(f"{order.client_order_id}: no price known for {order.symbol}")
            power = self.account().buying_power
            if order.qty * price > power:
                raise OrderRejected(
                    f"{order.client_order_id}: insufficient buying power "
                    f"({order.qty * price:,.2f} needed, {power:,.2f} available)"
                )
        now = self._moment(session, phase)
        limit = order.limit_price if order.order_type in ("limit", "bracket") else None
        broker_id = (
            "sim-"
            + hashlib.sha256(f"{self.account_id}|{order.client_order_id}".encode()).hexdigest()[:20]
        )
        self.store.con.execute(
            f"INSERT INTO sim_broker_orders (account, {_ORDER_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, NULL, 'new', ?, ?, ?, ?, ?, NULL)",
            [
                self.account_id,
                order.client_order_id,
                broker_id,
                order.symbol,
                order.side,
                float(order.qty),
                order.order_type,
                limit,
                order.time_in_force,
                now,
                now,
            ],
        )
        found = self.order(order.client_order_id)
        assert found is not None
        return found

    def cancel(self, client_order_id: str) -> None:
        """Cancel an open order; a terminal or unknown order is left as it is."""
        session, phase, _ = self._need_state()
        self.store.con.execute(
            "UPDATE sim_broker_orders SET status = 'canceled', updated_at = ?, "
            "reason = 'canceled by the client' WHERE account = ? AND client_order_id = ? "
            "AND status IN ('new', 'accepted', 'partially_filled')",
            [self._moment(session, phase), self.account_id, client_order_id],
        )

    def _orders(self, where: str, params: list) -> list[BrokerOrder]:
        rows = self.store.con.execute(
            f"SELECT {_ORDER_COLUMNS} FROM sim_broker_orders WHERE account = ? AND {where} "
            "ORDER BY submitted_at, client_order_id",
            [self.account_id, *params],
        ).fetchall()
        return [
            BrokerOrder(
                client_order_id=r[0],
                broker_order_id=r[1],
                symbol=r[2],
                side=r[3],
                qty=r[4],
                filled_qty=r[5],
                filled_avg_price=r[6],
                status=r[7],
                order_type=r[8],
                limit_price=r[9],
                submitted_at=r[11],
                updated_at=r[12],
                reason=r[13],
                time_in_force=r[10],
            )
            for r in rows
        ]

    def order(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this id, or None."""
        found = self._orders("client_order_id = ?", [client_order_id])
        return found[0] if found else None

    def open_orders(self) -> list[BrokerOrder]:
        """Orders that may still fill."""
        return self._orders("status IN ('new', 'accepted', 'partially_filled')", [])

    def fills_since(self, since: datetime) -> list[BrokerFill]:
        """Executions at or after ``since``, oldest first."""
        if since.tzinfo is None:
            raise ValueError(f"since={since} is naive; give a time zone")
        rows = self.store.con.execute(
            "SELECT fill_id, client_order_id, broker_order_id, symbol, side, qty, price, "
            "commission, filled_at FROM sim_broker_fills WHERE account = ? AND filled_at >= ? "
            "ORDER BY filled_at, fill_id",
            [self.account_id, since],
        ).fetchall()
        return [BrokerFill(*r) for r in rows]

    # -- time --------------------------------------------------------------
    def advance(self) -> list[BrokerFill]:
        """Move the clock one phase; fill the open orders when a session's open phase ends.

        Returns the fills made. Raises ``InputError`` at the end of the stored bars.
        """
        session, phase, cash = self._need_state()
        if phase == "closed":
            k = self._index[session]
            if k + 1 >= len(self.sessions):
                raise InputError(f"no session after {session} in the stored bars")
            nxt = self.sessions[k + 1]
            with self.store.transaction() as con:
                self._apply_actions(con, nxt, cash)
                con.execute(
                    "UPDATE sim_broker_state SET session = ?, phase = 'open', updated_at = ? "
                    "WHERE account = ?",
                    [nxt, self._moment(nxt, "open"), self.account_id],
                )
            return []
        at = self._moment(session, "closed")
        fills, updates, cash = self._execute(session, cash)
        positions = {p.symbol: (p.qty, p.avg_price) for p in self.positions()}
        for f in fills:
            q, avg = positions.get(f.symbol, (0.0, 0.0))
            signed = f.qty if f.side == "buy" else -f.qty
            new = q + signed
            if new == 0:
                positions.pop(f.symbol, None)
                continue
            avg = (q * avg + signed * f.price) / new if signed > 0 else avg
            positions[f.symbol] = (new, avg)
        with self.store.transaction() as con:
            for f in fills:
                con.execute(
                    "INSERT INTO sim_broker_fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [self.account_id, f.fill_id, f.client_order_id, f.broker_order_id, f.symbol,
                     f.side, f.qty, f.price, f.commission, f.filled_at],
                )  # fmt: skip
            for cid, filled, avg, status, reason in updates:
                con.execute(
                    "UPDATE sim_broker_orders SET filled_qty = ?, filled_avg_price = ?, "
                    "status = ?, reason = ?, updated_at = ? "
                    "WHERE account = ? AND client_order_id = ?",
                    [filled, avg, status, reason, at, self.account_id, cid],
                )
            con.execute("DELETE FROM sim_broker_positions WHERE account = ?", [self.account_id])
            for s, (q, avg) in sorted(positions.items()):
                con.execute(
                    "INSERT INTO sim_broker_positions VALUES (?, ?, ?, ?)",
                    [self.account_id, s, q, avg],
                )
            con.execute(
                "UPDATE sim_broker_state SET phase = 'closed', cash = ?, updated_at = ? "
                "WHERE account = ?",
                [cash, at, self.account_id],
            )
        return fills

    def _apply_actions(self, con: duckdb.DuckDBPyConnection, session: date, cash: float) -> None:
        """Splits and cash dividends with ex-date ``session``: positions, cash, open orders.

        Holders of record at the previous close get ``qty x dividend``; a split
        multiplies shares (and divides average prices), and an open order's
        remaining shares (rounded down) and limit follow it. Inside the caller's
        transaction, so a kill never applies an action twice.
        """
        today = self._actions.filter(pl.col("ts") == session)
        for symbol, ratio, dividend in today.select(
            "symbol", "split_ratio", "dividend"
        ).iter_rows():
            held = con.execute(
                "SELECT qty FROM sim_broker_positions WHERE account = ? AND symbol = ?",
                [self.account_id, symbol],
            ).fetchall()
            qty = held[0][0] if held else 0.0
            cash += qty * dividend
            if ratio != 1.0:
                con.execute(
                    "UPDATE sim_broker_positions SET qty = qty * ?, avg_price = avg_price / ? "
                    "WHERE account = ? AND symbol = ?",
                    [ratio, ratio, self.account_id, symbol],
                )
                con.execute(
                    "UPDATE sim_broker_orders SET "
                    "qty = filled_qty + floor((qty - filled_qty) * ?), "
                    "limit_price = limit_price / ? WHERE account = ? AND symbol = ? "
                    "AND status IN ('new', 'accepted', 'partially_filled')",
                    [ratio, ratio, self.account_id, symbol],
                )
        if today.height:
            con.execute(
                "UPDATE sim_broker_state SET cash = ? WHERE account = ?", [cash, self.account_id]
            )

    def _execute(
        self, session: date, cash: float
    ) -> tuple[list[BrokerFill], list[tuple[str, float, float | None, str, str | None]], float]:
        """Fill the open orders against ``session``'s bar; expire what a day order left."""
        pending = self.open_orders()
        if not pending:
            return [], [], cash
        at_open, at_close = self._moment(session, "open"), self._moment(session, "closed")
        bars = self._bars(session)
        ref_col = "open" if self.rules.at == "next_open" else "close"
        bars = bars.with_columns(pl.coalesce(ref_col, "close").alias("ref"))
        frame = pl.DataFrame(
            {
                "client_order_id": [o.client_order_id for o in pending],
                "symbol": [o.symbol for o in pending],
                "qty": [(o.qty - o.filled_qty) * (1 if o.side == "buy" else -1) for o in pending],
                "limit_price": [o.limit_price for o in pending],
            },
            schema={
                "client_order_id": pl.String,
                "symbol": pl.String,
                "qty": pl.Float64,
                "limit_price": pl.Float64,
            },
        ).join(bars, on="symbol", how="left", maintain_order="left")
        nan = np.nan
        ref = frame["ref"].fill_null(nan).to_numpy()
        low = frame["low"].fill_null(nan).to_numpy()
        high = frame["high"].fill_null(nan).to_numpy()
        ok, price = limit_fills(frame, ref, low, high, touch=True)
        # close-only bars fill at the close, and then they happen at the close
        when = dict(
            zip(
                frame["client_order_id"],
                (
                    at_open if o is not None and ref_col == "open" else at_close
                    for o in frame["open"]
                ),
                strict=True,
            )
        )
        fillable = frame.select("client_order_id", "symbol", "qty").filter(pl.Series(ok))
        priced = pl.DataFrame(
            {
                "client_order_id": frame["client_order_id"].filter(pl.Series(ok)),
                self.rules.price_column: price[ok],
                "volume": frame["volume"].filter(pl.Series(ok)),
            },
            schema={
                "client_order_id": pl.String,
                self.rules.price_column: pl.Float64,
                "volume": pl.Float64,
            },
        ).with_columns(pl.col(self.rules.price_column).fill_nan(None))
        # fill_orders joins bars on symbol: key by order so two orders of one name keep
        # their own prices, then restore the symbol
        keyed = fillable.rename({"symbol": "name", "client_order_id": "symbol"})
        done, unfilled = fill_orders(
            keyed, priced.rename({"client_order_id": "symbol"}), self.rules
        )
        done = done.rename({"symbol": "client_order_id", "name": "symbol"})
        unfilled = unfilled.rename({"symbol": "client_order_id", "name": "symbol"})
        done, short = within_cash(done, cash, self.rules.commission)
        why: dict[str, list[str]] = {}
        for part in (unfilled, short):
            for cid, r in zip(part["client_order_id"], part["reason"], strict=True):
                why.setdefault(cid, []).append(r)
        for cid, good in zip(frame["client_order_id"], ok.tolist(), strict=True):
            if not good:
                why.setdefault(cid, []).append("limit not reached during the session")
        fills: list[BrokerFill] = []
        got: dict[str, tuple[float, float]] = {}
        by_id = {o.client_order_id: o for o in pending}
        for cid, sym, q, px, fee in zip(
            done["client_order_id"], done["symbol"], done["qty"], done["price"], done["fee"],
            strict=True,
        ):  # fmt: skip
            o = by_id[cid]
            cash -= q * px + fee
            n = sum(1 for f in fills if f.client_order_id == cid)
            fills.append(
                BrokerFill(
                    fill_id=f"{o.broker_order_id}-{session.isoformat()}-{n}",
                    client_order_id=cid,
                    broker_order_id=o.broker_order_id,
                    symbol=sym,
                    side=o.side,
                    qty=abs(q),
                    price=px,
                    commission=fee,
                    filled_at=when[cid],
                )
            )
            got[cid] = (abs(q), px)
        updates = []
        for o in pending:
            q, px = got.get(o.client_order_id, (0.0, 0.0))
            filled = o.filled_qty + q
            avg = ((o.filled_avg_price or 0.0) * o.filled_qty + px * q) / filled if filled else None
            reasons = why.get(o.client_order_id)
            if filled >= o.qty:
                status, reason = "filled", None
            elif o.time_in_force == "day":
                status = "expired"
                reason = "day order expired" + (f": {'; '.join(reasons)}" if reasons else "")
            else:
                status = "partially_filled" if filled else o.status
                reason = "; ".join(reasons) if reasons else None
            updates.append((o.client_order_id, filled, avg, status, reason))
        return fills, updates, cash
