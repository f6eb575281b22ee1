"""The walk-forward engine: the decision step replayed over history against a simulated book.

For each session of the test window, in order (:func:`trade`):

1. corporate actions with this ex-date reach the book (raw price basis only:
   cash dividends to the holders of the previous close, splits to the shares
   and to pending orders);
2. a held name whose bars have ended is closed at its last close, and the run
   records the date; its orders are refused as "no longer trading";
3. orders decided at the previous rebalance fill at this session's open (or
   close, per :class:`~kronos.execution.fills.FillRules`); a missing or NaN bar
   never fills; a limit order fills only when the bar's price is at or inside
   its limit (bracket exits are not simulated: the entry is the order);
4. the book is marked at the close;
5. on a rebalance session, the decision step (:func:`kronos.decision.step.decide_from`,
   the function the paper loop calls) runs on the snapshot
   :class:`~kronos.backtest.replay.ReplaySource` builds by the rules the paper
   loop's store source follows: strategist inputs read from the store point in
   time, the fold model's calibrated step-1 forecasts from this session, the
   breakers active at the close, prices on the run's one basis, the simulated
   book and its last trades.

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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as clock

import numpy as np
import polars as pl

from kronos.backtest.market import Market
from kronos.backtest.monitor import Quantiles
from kronos.backtest.replay import ReplaySource
from kronos.backtest.result import EVENTS_SCHEMA, FILLS_SCHEMA, ORDERS_SCHEMA
from kronos.calendar import day_of_week, period_key
from kronos.config import DecisionSettings
from kronos.data.store import Store
from kronos.decision.allocator import Account
from kronos.decision.step import Decision, decide_from, run_id_for
from kronos.execution.fills import Book, FillRules, fill_orders, limit_fills, within_cash
from kronos.risk import Breaker, session_close

Progress = Callable[[str], None]
# the step-5 callable: decide_on's keywords (run, market, i, nav, settings, label) -> orders
Planner = Callable[..., pl.DataFrame]


@dataclass(frozen=True)
class Trading:
    """What the trading loop produced (frames in :mod:`kronos.backtest.result` shapes)."""

    nav: np.ndarray  # per test session
    cash: np.ndarray
    qty: np.ndarray  # [test session, symbol] after the session's fills
    fills: pl.DataFrame
    orders: pl.DataFrame
    factors: pl.DataFrame  # ts, factor, contribution
    events: pl.DataFrame  # EVENTS_SCHEMA: corporate actions and delistings applied to the book
    decisions: int
    notes: tuple[str, ...]  # the price basis, and what the decisions switched (first seen)
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


def _factor_rows(decision: Decision) -> pl.DataFrame:
    """``ts, factor, contribution``: each factor's share of the target book.

    ``sum(target_weight x c_<factor>)`` over the scored targets.
    """
    columns = decision.contributions  # the whitepaper's, and the run's own factors
    targets = decision.allocation.targets.select("symbol", "target_weight")
    rows = targets.join(decision.scored.select("symbol", *columns), on="symbol").select(
        (pl.col("target_weight") * pl.col(c)).sum().alias(c) for c in columns
    )
    return pl.DataFrame(
        {
            "ts": [decision.asof] * len(columns),
            "factor": [c.removeprefix("c_") for c in columns],
            "contribution": rows.row(0),
        },
        schema={"ts": pl.Date, "factor": pl.String, "contribution": pl.Float64},
    )


@dataclass
class _Run:
    """The state one replay carries from session to session."""

    book: Book
    source: ReplaySource
    fills: list[pl.DataFrame] = field(default_factory=list)
    orders: list[tuple] = field(default_factory=list)
    factors: list[pl.DataFrame] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    pending: pl.DataFrame | None = None
    decisions: int = 0
    notes: dict[str, None] = field(default_factory=dict)  # the decisions' notes, first seen first
    # pending orders a split changed: id -> (decided qty, decided limit, what changed)
    adjusted: dict[str, tuple[float, float | None, str]] = field(default_factory=dict)


def apply_actions(*, run: _Run, market: Market, i: int) -> None:
    """Step 1: splits and cash dividends with ex-date ``i`` reach the book and pending orders.

    A holder of record at the previous close gets ``qty x dividend`` in cash;
    a split multiplies the shares by its ratio, and a pending order's shares
    (rounded down to whole shares) and limit follow it.
    """
    if not market.basis.raw:
        return
    day, book = market.sessions[i], run.book
    for j in np.flatnonzero((market.split[i] != 1.0) | (market.dividend[i] != 0.0)).tolist():
        s, ratio, cash = market.symbols[j], float(market.split[i, j]), float(market.dividend[i, j])
        held = book.qty(s)
        if held != 0:
            book.cash += held * cash
            book.positions[s] = held * ratio
            run.events.append((day, s, "split" if ratio != 1.0 else "dividend",
                               held, held * ratio, held * cash, None))  # fmt: skip
        if ratio != 1.0 and run.pending is not None and run.pending.height:
            hit = run.pending.filter(pl.col("symbol") == s)
            for cid, q, lim in hit.select("client_order_id", "qty", "limit_price").iter_rows():
                what = f"split {ratio:g}:1 on {day}: {math.floor(abs(q) * ratio):g} shares" + (
                    f" at limit {lim / ratio:.6g}" if lim is not None else ""
                )
                first = run.adjusted.get(cid, (abs(q), lim, ""))
                run.adjusted[cid] = (first[0], first[1], what)
            run.pending = run.pending.with_columns(
                pl.when(pl.col("symbol") == s)
                .then((pl.col("qty").abs() * ratio).floor() * pl.col("qty").sign())
                .otherwise(pl.col("qty"))
                .alias("qty"),
                pl.when(pl.col("symbol") == s)
                .then(pl.col("limit_price") / ratio)
                .otherwise(pl.col("limit_price"))
                .alias("limit_price"),
            )


def close_ended(*, run: _Run, market: Market, i: int) -> set[str]:
    """Step 2: positions in names whose bars have ended are closed at their last price.

    Returns the symbols no longer trading at session ``i`` (their last bar is
    before it); a held one is sold to cash at its last close, no costs, and the
    run records it (no delisting return is in the data).
    """
    gone = {market.symbols[j]: j for j in np.flatnonzero(market.last_bar < i).tolist()}
    day, book = market.sessions[i], run.book
    for s in sorted(gone.keys() & book.positions.keys()):
        j = gone[s]
        qty, price = book.positions.pop(s), float(market.mark[i, j])
        book.cash += qty * price
        last = market.sessions[int(market.last_bar[j])]
        run.events.append((day, s, "delisted", qty, 0.0, qty * price, f"last bar {last}"))
    return set(gone)


def execute(
    *, run: _Run, market: Market, i: int, orders: pl.DataFrame, rules: FillRules,
    settings: DecisionSettings, ended: set[str],
) -> None:  # fmt: skip
    """Step 3: fill ``orders`` against session ``i``'s bars (module rules)."""
    day, col = market.sessions[i], {s: j for j, s in enumerate(market.symbols)}
    why: dict[str, list[str]] = {}
    gone = orders["symbol"].is_in(list(ended))
    for cid in orders.filter(gone)["client_order_id"].to_list():
        why.setdefault(cid, []).append("no longer trading")
    live = orders.filter(~gone)
    j = np.array([col[s] for s in live["symbol"].to_list()], dtype=int)
    ref_row = market.open[i] if rules.at == "next_open" else market.close[i]
    ok, price = limit_fills(
        live, ref_row[j], market.low[i][j], market.high[i][j], rules.at != "close"
    )
    # the session's bar of each traded symbol, at its order's reference price; the
    # planner may send a rebalance and a replacement sell of one name: both rest
    # at the same limit, so they share it
    syms = live["symbol"].to_list()
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
    done, unfilled = fill_orders(live.filter(pl.Series(ok)), bars, rules)
    done, short = within_cash(done, run.book.cash, rules.commission)
    run.book.apply(done)
    at = _fill_time(day, rules.at, settings)
    for s in done["symbol"].to_list():
        run.source.last_trade_at[s] = at
    run.fills.append(done.with_columns(ts=pl.lit(day, pl.Date)))
    filled: dict[str, float] = {}
    for cid, q in zip(done["client_order_id"].to_list(), done["qty"].to_list(), strict=True):
        filled[cid] = filled.get(cid, 0.0) + abs(q)
    for frame in (unfilled, short):
        for cid, r in zip(
            frame["client_order_id"].to_list(), frame["reason"].to_list(), strict=True
        ):
            why.setdefault(cid, []).append(r)
    for cid, good in zip(live["client_order_id"].to_list(), ok.tolist(), strict=True):
        if not good:
            why.setdefault(cid, []).append("limit not reached during the session")
    for row in orders.select(
        "asof", "symbol", "side", "qty", "limit_price", "client_order_id"
    ).iter_rows():
        cid, wanted = row[5], abs(row[3])
        if cid in run.adjusted:  # the record keeps what was decided, and says what changed
            qty, limit, what = run.adjusted[cid]
            row = (*row[:3], math.copysign(qty, row[3]), limit, cid)
            why.setdefault(cid, []).insert(0, what)
        reason = "; ".join(why[cid]) if cid in why else None
        run.orders.append((*row, filled.get(cid, 0.0), reason, wanted))


def decide_on(
    *, run: _Run, market: Market, i: int, nav: float, settings: DecisionSettings, label: str
) -> pl.DataFrame:
    """Step 5: the decision at session ``i``'s close; its orders (signed qty)."""
    day = market.sessions[i]
    now = session_close(day, settings.data)
    snap = run.source.snapshot(day, now)
    held = pl.DataFrame(
        {"symbol": list(run.book.positions), "qty": list(run.book.positions.values())},
        schema={"symbol": pl.String, "qty": pl.Float64},
    ).sort("symbol")
    decision = decide_from(
        snap, held, Account(nav=nav, cash=run.book.cash), settings, run_id_for(day, label), now
    )
    run.decisions += 1
    run.notes.update(dict.fromkeys(decision.notes))
    run.factors.append(_factor_rows(decision))
    return decision.orders.select(
        pl.lit(day, pl.Date).alias("asof"),
        "symbol",
        "side",
        "client_order_id",
        pl.when(pl.col("side") == "buy").then(pl.col("qty")).otherwise(-pl.col("qty")).alias("qty"),
        "limit_price",
    )


def trade(
    *,
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
    plan: Planner | None = None,
) -> Trading:
    """Run sessions ``first..last`` of ``market``: per session, the numbered steps.

    1. corporate actions (:func:`apply_actions`); 2. names whose bars ended
    (:func:`close_ended`); 3. the pending orders fill (:func:`execute`);
    4. the book is marked at the close; 5. on a rebalance session, the decision
    (:func:`decide_on`), filled at this close (``rules.at == "close"``) or
    pending for the next session.

    ``plan`` replaces :func:`decide_on` in step 5 (a plain strategy,
    :mod:`kronos.backtest.plain`): same keywords, same orders frame; it counts
    its decisions in ``run.decisions``. Everything else is the engine's own.
    """
    decide = plan or decide_on
    say = progress or (lambda _m: None)
    n_days, symbols = last - first + 1, market.symbols
    source = ReplaySource(store, market, forecasts, breakers, settings)
    run = _Run(book=Book(cash=initial_cash), source=source)
    nav, cash = np.empty(n_days), np.empty(n_days)
    qty = np.zeros((n_days, len(symbols)))
    sim_s = decide_s = 0.0

    def mark(k: int, i: int) -> None:  # step 4
        qty[k] = [run.book.positions.get(s, 0.0) for s in symbols]
        nav[k] = run.book.cash + float(qty[k] @ np.nan_to_num(market.mark[i]))
        cash[k] = run.book.cash

    for k in range(n_days):
        i = first + k
        day = market.sessions[i]
        t0 = time.perf_counter()
        apply_actions(run=run, market=market, i=i)
        ended = close_ended(run=run, market=market, i=i)
        if run.pending is not None and run.pending.height:
            execute(run=run, market=market, i=i, orders=run.pending, rules=rules,
                    settings=settings, ended=ended)  # fmt: skip
        run.pending = None
        mark(k, i)
        sim_s += time.perf_counter() - t0
        if day not in rebalance or (k == n_days - 1 and rules.at != "close"):
            continue
        t0 = time.perf_counter()
        planned = decide(run=run, market=market, i=i, nav=nav[k], settings=settings,
                         label=label)  # fmt: skip
        decide_s += time.perf_counter() - t0
        if rules.at == "close":
            t0 = time.perf_counter()
            execute(run=run, market=market, i=i, orders=planned, rules=rules,
                    settings=settings, ended=ended)  # fmt: skip
            mark(k, i)
            sim_s += time.perf_counter() - t0
        else:
            run.pending = planned
        if run.decisions % 50 == 0:
            say(f"{day}: {run.decisions} decisions, NAV {nav[k]:,.0f}")
    return Trading(
        nav=nav,
        cash=cash,
        qty=qty,
        fills=_fills_frame(run.fills),
        orders=_orders_frame(run.orders),
        factors=pl.concat(run.factors) if run.factors else pl.DataFrame(),
        events=pl.DataFrame(run.events, schema=EVENTS_SCHEMA, orient="row"),
        decisions=run.decisions,
        notes=(f"price basis: {market.basis.name} ({market.basis.reason})", *run.notes),
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
    """Order records ``(asof, symbol, side, signed qty, limit, id, filled, reason, wanted)``.

    ``qty`` and ``limit`` as decided; ``wanted`` the shares the order asked for when
    it was filled (a split in between changes them), which sets the status.
    """
    if not records:
        return pl.DataFrame(schema=ORDERS_SCHEMA)
    # typed up front: inferred from the first rows, a limit price column of
    # market orders only would be null-typed and refuse a later limit
    columns = ("asof", "symbol", "side", "qty", "limit_price", "client_order_id", "filled_qty")
    frame = pl.DataFrame(
        records,
        schema={
            **{c: ORDERS_SCHEMA[c] for c in columns},
            "reason": pl.String,
            "wanted": pl.Float64,
        },
        orient="row",
    )
    wanted = pl.col("wanted")
    return frame.select(
        "asof",
        "symbol",
        "side",
        qty=pl.col("qty").abs(),
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
