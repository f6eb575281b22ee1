"""The walk-forward engine: the decision step replayed over history against a simulated book.

For each session of the test window, in order:

1. orders decided at the previous rebalance fill at this session's open (or
   close, per :class:`~kronos.execution.fills.FillRules`); a missing or NaN bar
   never fills; a limit order fills only when the bar's price is at or inside
   its limit (bracket exits are not simulated: the entry is the order);
2. the book is marked at the close;
3. on a rebalance session, the decision step (:func:`kronos.decision.step.decide_from`,
   the same function the paper loop calls) runs on a snapshot of that
   session's close: strategist inputs read from the store point in time, the
   fold model's calibrated step-1 forecasts from this session, the breakers
   active at the close, the simulated book and its last trades.

Nothing after the decision time reaches a decision: the store reads take
``asof``, forecasts come from models fitted ``purge`` sessions before their
test window and from returns up to their origin, and fills happen at or after
the decision's session.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as clock

import numpy as np
import polars as pl

from kronos.backtest.market import Market
from kronos.backtest.monitor import Quantiles
from kronos.backtest.result import FILLS_SCHEMA, ORDERS_SCHEMA
from kronos.calendar import day_of_week, period_key
from kronos.config import DecisionSettings
from kronos.data.store import Store
from kronos.decision.allocator import Account
from kronos.decision.snapshot import Snapshot
from kronos.decision.step import Decision, decide_from, run_id_for
from kronos.decision.strategist import CONTRIBUTIONS
from kronos.execution.fills import Book, FillRules, fill_orders, limit_fills, within_cash
from kronos.features.regime import has_regime, latest_regime
from kronos.features.strategist import REFERENCE_READS, strategist_inputs
from kronos.risk import Breaker, session_close

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Trading:
    """What the trading loop produced (frames in :mod:`kronos.backtest.result` shapes)."""

    nav: np.ndarray  # per test session
    cash: np.ndarray
    qty: np.ndarray  # [test session, symbol] after the session's fills
    fills: pl.DataFrame
    orders: pl.DataFrame
    factors: pl.DataFrame  # ts, factor, contribution
    decisions: int
    seconds: dict[str, float]  # simulate (fills, book, marks) and decide (snapshot + step)


def rebalance_days(sessions: list[date], every: str, weekday: int) -> set[date]:
    """Rebalance sessions: all, each week's first on or after ``weekday``, or each month's first.

    ``sessions`` are exchange sessions (the market's); a holiday on ``weekday``
    moves that week's rebalance to the week's next session, and a week with no
    session from ``weekday`` on has none.
    """
    if every == "daily":
        return set(sessions)
    if every not in ("weekly", "monthly"):
        raise ValueError(f"unknown rebalance cadence {every!r}: daily, weekly or monthly")
    out: dict[Hashable, date] = {}
    for d in sessions:
        if every == "weekly":
            if day_of_week(d) >= weekday:
                out.setdefault(period_key(d, "week"), d)
        else:
            out.setdefault(period_key(d, "month"), d)
    return set(out.values())


def order_hash(orders: pl.DataFrame) -> str:
    """sha256 of the ordered order list (decision date, id, symbol, side, quantity)."""
    h = hashlib.sha256()
    for row in orders.select("asof", "client_order_id", "symbol", "side", "qty").iter_rows():
        h.update(repr(row).encode())
    return h.hexdigest()


def _fill_time(day: date, at: str, settings: DecisionSettings) -> datetime:
    if at == "next_open":
        tz = session_close(day, settings.data).tzinfo
        local = datetime.combine(day, clock(9, 30), tzinfo=tz)
        return local.astimezone(UTC)
    return session_close(day, settings.data)


def _snapshot(
    store: Store,
    market: Market,
    i: int,
    forecasts: Quantiles,
    breakers: list[Breaker],  # those active at ``now``
    last_trade: dict[str, datetime],
    settings: DecisionSettings,
    now: datetime,
    regime: bool,
) -> Snapshot:
    """The decision's snapshot at session ``i``; ``regime``: read the regime encoder's."""
    day = market.sessions[i]
    inputs = strategist_inputs(
        store,
        day,
        market.symbols,
        settings.strategy,
        data_settings=settings.data,
        skip=[a for a in market.absent if a in REFERENCE_READS],
        prefetched=market.prefetched,
    )
    has = ~np.isnan(forecasts.p50[i])
    fc = pl.DataFrame(
        {
            "symbol": _pick(market.symbols, has),
            "p05": forecasts.p05[i][has],
            "p50": forecasts.p50[i][has],
            "p95": forecasts.p95[i][has],
        },
        schema={"symbol": pl.String, "p05": pl.Float64, "p50": pl.Float64, "p95": pl.Float64},
    )
    # the last close known (as read_snapshot's), so a held name missing a bar keeps its value
    mark = market.mark[i]
    priced = ~np.isnan(mark) & (mark > 0)
    prices = pl.DataFrame(
        {"symbol": _pick(market.symbols, priced), "price": mark[priced]},
        schema={"symbol": pl.String, "price": pl.Float64},
    )
    reading = latest_regime(store, day) if regime else None
    return Snapshot(day, inputs, fc, True, breakers, prices, dict(last_trade), reading)


def _pick(symbols: list[str], mask: np.ndarray) -> list[str]:
    """The symbols where ``mask`` holds."""
    return [s for s, keep in zip(symbols, mask.tolist(), strict=True) if keep]


def _factor_rows(decision: Decision) -> pl.DataFrame:
    """``ts, factor, contribution``: each factor's share of the target book.

    ``sum(target_weight x c_<factor>)`` over the scored targets.
    """
    targets = decision.allocation.targets.select("symbol", "target_weight")
    rows = targets.join(decision.scored.select("symbol", *CONTRIBUTIONS), on="symbol").select(
        (pl.col("target_weight") * pl.col(c)).sum().alias(c) for c in CONTRIBUTIONS
    )
    return pl.DataFrame(
        {
            "ts": [decision.asof] * len(CONTRIBUTIONS),
            "factor": [c.removeprefix("c_") for c in CONTRIBUTIONS],
            "contribution": rows.row(0),
        },
        schema={"ts": pl.Date, "factor": pl.String, "contribution": pl.Float64},
    )


def trade(
    store: Store,
    market: Market,
    first: int,
    last: int,
    forecasts: Quantiles,
    breakers: list[Breaker],
    rebalance: set[date],
    rules: FillRules,
    settings: DecisionSettings,
    initial_cash: float,
    label: str,
    progress: Progress | None = None,
) -> Trading:
    """Run sessions ``first..last`` of ``market`` (see the module rules)."""
    say = progress or (lambda _m: None)
    n_days, symbols = last - first + 1, market.symbols
    col = {s: j for j, s in enumerate(symbols)}
    book = Book(cash=initial_cash)
    nav, cash = np.empty(n_days), np.empty(n_days)
    qty = np.zeros((n_days, len(symbols)))
    fills, orders, factors = [], [], []
    last_trade: dict[str, datetime] = {}
    pending: pl.DataFrame | None = None
    decisions = 0
    # breakers by trip time, newest first (popped from the end as time passes)
    upcoming = sorted(breakers, key=lambda b: b.tripped_at, reverse=True)
    live: list[Breaker] = []
    sim_s = decide_s = 0.0
    regime = has_regime(store)  # else no decision has a reading to look up

    def execute(orders_now: pl.DataFrame, i: int) -> None:
        day = market.sessions[i]
        j = np.array([col[s] for s in orders_now["symbol"].to_list()], dtype=int)
        ref_row = market.open[i] if rules.at == "next_open" else market.close[i]
        ok, price = limit_fills(
            orders_now, ref_row[j], market.low[i][j], market.high[i][j], rules.at != "close"
        )
        # the session's bar of each traded symbol, at its order's reference price; the
        # planner may send a rebalance and a replacement sell of one name: both rest
        # at the same limit, so they share it
        syms = orders_now["symbol"].to_list()
        ref: dict[str, float] = {}
        for s, px, good in zip(syms, price.tolist(), ok.tolist(), strict=True):
            seen = ref.setdefault(s, px) if good else px
            if seen != px and not (math.isnan(seen) and math.isnan(px)):
                raise ValueError(f"{day}: orders of {s} at different reference prices")
        bars = pl.DataFrame(
            {
                "symbol": list(ref),
                rules.price_column: list(ref.values()),
                "volume": [float(market.volume[i, col[s]]) for s in ref],
            },
            schema={"symbol": pl.String, rules.price_column: pl.Float64, "volume": pl.Float64},
        ).with_columns(pl.col(rules.price_column, "volume").fill_nan(None))
        done, unfilled = fill_orders(orders_now.filter(pl.Series(ok)), bars, rules)
        done, short = within_cash(done, book.cash, rules.commission)
        book.apply(done)
        at = _fill_time(day, rules.at, settings)
        for s in done["symbol"].to_list():
            last_trade[s] = at
        fills.append(done.with_columns(ts=pl.lit(day, pl.Date)))
        filled: dict[str, float] = {}
        for cid, q in zip(done["client_order_id"].to_list(), done["qty"].to_list(), strict=True):
            filled[cid] = filled.get(cid, 0.0) + abs(q)
        why: dict[str, list[str]] = {}
        for frame in (unfilled, short):
            for cid, r in zip(
                frame["client_order_id"].to_list(), frame["reason"].to_list(), strict=True
            ):
                why.setdefault(cid, []).append(r)
        ids = orders_now["client_order_id"].to_list()
        for cid, good in zip(ids, ok.tolist(), strict=True):
            if not good:
                why.setdefault(cid, []).append("limit not reached during the session")
        for row in zip(
            orders_now["asof"].to_list(),
            syms,
            orders_now["side"].to_list(),
            orders_now["qty"].to_list(),
            orders_now["limit_price"].to_list(),
            ids,
            strict=True,
        ):
            cid = row[5]
            orders.append((*row, filled.get(cid, 0.0), "; ".join(why[cid]) if cid in why else None))

    for k in range(n_days):
        i = first + k
        day = market.sessions[i]
        t0 = time.perf_counter()
        if pending is not None and pending.height:
            execute(pending, i)
            pending = None
        qty[k] = [book.positions.get(s, 0.0) for s in symbols]
        marks = np.nan_to_num(market.mark[i])
        nav[k] = book.cash + float(qty[k] @ marks)
        cash[k] = book.cash
        sim_s += time.perf_counter() - t0
        if day not in rebalance or (k == n_days - 1 and rules.at != "close"):
            continue
        t0 = time.perf_counter()
        now = session_close(day, settings.data)
        while upcoming and upcoming[-1].tripped_at <= now:
            live.append(upcoming.pop())
        live = [b for b in live if b.is_active(now)]
        snap = _snapshot(store, market, i, forecasts, live, last_trade, settings, now, regime)
        owned = qty[k] != 0
        held = pl.DataFrame(
            {"symbol": _pick(symbols, owned), "qty": qty[k][owned]},
            schema={"symbol": pl.String, "qty": pl.Float64},
        )
        decision = decide_from(
            snap,
            held,
            Account(nav=nav[k], cash=book.cash),
            settings,
            run_id_for(day, label),
            now,
        )
        decisions += 1
        factors.append(_factor_rows(decision))
        planned = decision.orders.select(
            pl.lit(day, pl.Date).alias("asof"),
            "symbol",
            "side",
            "client_order_id",
            pl.when(pl.col("side") == "buy")
            .then(pl.col("qty"))
            .otherwise(-pl.col("qty"))
            .alias("qty"),
            "limit_price",
        )
        decide_s += time.perf_counter() - t0
        if rules.at == "close":
            t0 = time.perf_counter()
            execute(planned, i)
            qty[k] = [book.positions.get(s, 0.0) for s in symbols]
            nav[k] = book.cash + float(qty[k] @ marks)
            cash[k] = book.cash
            sim_s += time.perf_counter() - t0
        else:
            pending = planned
        if decisions % 50 == 0:
            say(f"{day}: {decisions} decisions, NAV {nav[k]:,.0f}")
    return Trading(
        nav=nav,
        cash=cash,
        qty=qty,
        fills=_fills_frame(fills),
        orders=_orders_frame(orders),
        factors=pl.concat(factors) if factors else pl.DataFrame(),
        decisions=decisions,
        seconds={"simulate": sim_s, "decide": decide_s},
    )


def _fills_frame(parts: list[pl.DataFrame]) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame(schema=FILLS_SCHEMA)
    frame = pl.concat(parts, how="diagonal_relaxed")
    return frame.select(
        "ts",
        "asof",
        "symbol",
        side=pl.when(pl.col("qty") > 0).then(pl.lit("buy")).otherwise(pl.lit("sell")),
        qty=pl.col("qty").abs(),
        price="price",
        ref_price="ref_price",
        fee="fee",
        client_order_id="client_order_id",
    ).cast(FILLS_SCHEMA)


def _orders_frame(records: list[tuple]) -> pl.DataFrame:
    """Order records ``(asof, symbol, side, signed qty, limit, id, filled, reason)``."""
    if not records:
        return pl.DataFrame(schema=ORDERS_SCHEMA)
    # typed up front: inferred from the first rows, a limit price column of
    # market orders only would be null-typed and refuse a later limit
    columns = ("asof", "symbol", "side", "qty", "limit_price", "client_order_id", "filled_qty")
    frame = pl.DataFrame(
        records,
        schema={**{c: ORDERS_SCHEMA[c] for c in columns}, "reason": pl.String},
        orient="row",
    )
    wanted = pl.col("qty").abs()
    return frame.select(
        "asof",
        "symbol",
        "side",
        qty=wanted,
        limit_price=pl.col("limit_price").fill_nan(None),
        client_order_id="client_order_id",
        status=pl.when(pl.col("filled_qty") >= wanted)
        .then(pl.lit("filled"))
        .when(pl.col("filled_qty") > 0)
        .then(pl.lit("partial"))
        .otherwise(pl.lit("unfilled")),
        filled_qty="filled_qty",
        reason="reason",
    ).cast(ORDERS_SCHEMA)
