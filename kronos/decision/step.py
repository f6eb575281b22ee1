"""The decision step: one function of one snapshot, for the backtest and the paper loop.

:func:`decide_from` is the chain, in order, on a
:class:`~kronos.decision.snapshot.Snapshot` (pure: no reads):

1. **data switches**: a filter the data cannot feed is switched off, and the
   decision says so (no market cap anywhere in the inputs: the size filter;
   no dollar volume: the liquidity filter);
2. **breakers** active at ``now`` block new buys of what they cover, and so
   does a last bar older than ``PRICE_STALE_DAYS`` (a halt, or bars that stopped);
3. **regime tuner** (:mod:`kronos.decision.regime`), with the regime
   encoder's reading where the snapshot has one;
4. **strategist** (:mod:`kronos.decision.strategist`): scores and the top-K;
5. **allocator** (:mod:`kronos.decision.allocator`) with the reviewer;
6. **planner** (:mod:`kronos.decision.planner`): orders;
7. **panic exit**: with ``ENABLE_PANIC_EXIT`` and a global breaker active,
   the plan is replaced by market sells of every holding.

:func:`decide` takes the snapshot from a
:class:`~kronos.decision.snapshot.SnapshotSource`: the store's (paper loop)
or the replay's (backtest); only that differs between the two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

import polars as pl

from kronos.config import DataSettings, DecisionSettings
from kronos.data.store import Store
from kronos.decision.allocator import Account, Allocation, allocate, check_unique
from kronos.decision.planner import (
    ORDERS_SCHEMA,
    Plan,
    client_order_id,
    orders_table_rows,
    plan_orders,
)
from kronos.decision.regime import RegimeKnobs, knob_rows, regime, write_knobs
from kronos.decision.snapshot import PRICE_STALE_DAYS, Snapshot, SnapshotSource
from kronos.decision.strategist import (
    CONTRIBUTIONS,
    contributions,
    recommendations,
    score,
    standardize,
    write_recos,
)
from kronos.decision.weighting import Reviewer
from kronos.risk import blocked_symbols, panic_exit_orders, session_close


@dataclass(frozen=True)
class Decision:
    """The whole decision of one step, and why each name was left out."""

    asof: date
    run_id: str
    snapshot: Snapshot
    blocked: Mapping[str, str]
    knobs: RegimeKnobs
    scored: pl.DataFrame
    recos: pl.DataFrame
    allocation: Allocation
    plan: Plan
    excluded: pl.DataFrame  # symbol, stage, reason
    notes: tuple[str, ...] = ()  # steps the data switched (filters off, panic exit)
    contributions: tuple[str, ...] = CONTRIBUTIONS  # the c_* columns of ``scored`` in ``score``

    @property
    def orders(self) -> pl.DataFrame:
        """The planned orders."""
        return self.plan.orders


def run_id_for(asof: date, label: str = "decision") -> str:
    """A deterministic run id for a decision date (so retries reuse order ids)."""
    return (
        f"{label}-{asof.isoformat()}-" + hashlib.sha256(f"{label}|{asof}".encode()).hexdigest()[:8]
    )


def _book(prices: pl.DataFrame, positions: pl.DataFrame) -> pl.DataFrame:
    """Every priced name with its holding (0 when not held), and every held name.

    Columns symbol, qty, price (null where unpriced), so buys can be sized.
    """
    price_of = prices["symbol"].to_list()
    held = positions["symbol"].to_list()
    qty = positions["qty"].cast(pl.Float64).fill_null(0.0).to_list()
    check_unique(prices["symbol"], "positions")  # as a join would give the name twice
    check_unique(positions["symbol"], "positions")
    held_qty = dict(zip(held, qty, strict=True))
    priced = set(price_of)
    symbols = [*price_of, *(x for x in held if x not in priced)]
    return pl.DataFrame(
        {
            "symbol": symbols,
            "qty": [held_qty.get(x, 0.0) for x in symbols],
            "price": pl.concat(
                [
                    prices["price"].cast(pl.Float64),
                    pl.Series([None] * (len(symbols) - len(price_of)), dtype=pl.Float64()),
                ]
            ),
        },
        schema={"symbol": pl.String(), "qty": pl.Float64(), "price": pl.Float64()},
    )


def decide_from(
    snapshot: Snapshot,
    positions: pl.DataFrame,
    account: Account,
    settings: DecisionSettings,
    run_id: str,
    now: datetime,
    reviewer: Reviewer | None = None,
) -> Decision:
    """The chain on ``snapshot`` (the module's steps, in order).

    ``positions``: symbol, qty (prices come from the snapshot).
    """
    settings, notes = data_switches(snapshot.inputs, settings)
    sectors = snapshot.inputs.select("symbol", "sector")
    blocked = dict(blocked_symbols(snapshot.breakers, sectors))
    for name, why in stale(snapshot).items():
        blocked[name] = f"{blocked[name]}; {why}" if name in blocked else why
    knobs = regime(snapshot.inputs, settings.strategy, snapshot.regime)
    features = standardize(snapshot.inputs, settings.strategy)
    scored = score(features, knobs, settings.strategy, snapshot.forecasts, blocked=blocked)
    recos = recommendations(
        scored, snapshot.asof, settings.strategy, run_id, data_settings=settings.data
    )
    book = _book(snapshot.prices, positions)
    # the ideas are the strategist's buy recommendations (top-K); the rest of
    # the universe glides to zero
    ideas = {
        x
        for x, side in zip(recos["symbol"].to_list(), recos["side"].to_list(), strict=True)
        if side == "buy"
    }
    eligible = scored["eligible"].to_list()
    left_out = f"not among the top {settings.strategy.strat_reco_topk} recommendations"
    candidates = pl.DataFrame(
        [
            scored["symbol"],
            scored["sector"],
            scored["score"],
            pl.Series(
                "eligible",
                [
                    ok and x in ideas
                    for ok, x in zip(eligible, scored["symbol"].to_list(), strict=True)
                ],
                dtype=pl.Boolean(),
            ),
            pl.Series(
                "ineligible_reason",
                [
                    left_out if ok else why
                    for ok, why in zip(eligible, scored["excluded_reason"].to_list(), strict=True)
                ],
                dtype=pl.String(),
            ),
        ]
    )
    allocation = allocate(candidates, book, account, sectors, blocked, settings.portfolio, reviewer)
    plan = plan_orders(
        allocation=allocation,
        book=book,
        account=account,
        forecasts=snapshot.forecasts,
        ideas=ideas,
        last_trade_at=snapshot.last_trade_at,
        blocked=blocked,
        now=now,
        run_id=run_id,
        asof=snapshot.asof,
        portfolio=settings.portfolio,
        policy=settings.policy,
    )
    out = ~scored["eligible"].to_numpy().astype(bool)
    stages = (
        ("strategist", scored["symbol"].filter(out), scored["excluded_reason"].filter(out)),
        ("allocator", allocation.excluded["symbol"], allocation.excluded["reason"]),
        ("planner", plan.dropped["symbol"], plan.dropped["reason"]),
    )
    excluded = pl.DataFrame(
        {
            "symbol": pl.concat([names for _, names, _ in stages]),
            "stage": [stage for stage, names, _ in stages for _ in range(len(names))],
            "reason": pl.concat([why.cast(pl.String) for _, _, why in stages]),
        },
        schema={"symbol": pl.String(), "stage": pl.String(), "reason": pl.String()},
    )
    panic = panic_exit_orders(snapshot.breakers, positions, settings.risk)
    if panic.height:
        plan, reason = panic_plan(panic, plan, book, run_id, snapshot.asof), panic["reason"][0]
        notes = (*notes, f"{reason}: selling {panic.height} holding(s)")
    return Decision(
        snapshot.asof, run_id, snapshot, blocked, knobs, scored, recos, allocation, plan,
        excluded, notes, contributions(settings.strategy),
    )  # fmt: skip


def stale(snapshot: Snapshot) -> dict[str, str]:
    """Step 2: names whose last bar is too old to trade on (a halt, or bars that stopped).

    They keep their last price for valuing the book, but get no new buys.
    """
    oldest = snapshot.asof - timedelta(days=PRICE_STALE_DAYS)
    old = snapshot.prices.filter(pl.col("last_bar") < oldest)
    return {
        s: f"no longer trading: no bar since {d}"
        for s, d in zip(old["symbol"].to_list(), old["last_bar"].to_list(), strict=True)
    }


def data_switches(
    inputs: pl.DataFrame, settings: DecisionSettings
) -> tuple[DecisionSettings, tuple[str, ...]]:
    """Step 1: the strategist's size and liquidity filters, off where no input feeds them.

    A filter on a column with no value for any name would exclude every name;
    the decision switches it off instead and says so. Returns the settings to
    use and one note per switch.
    """
    strategy, notes = settings.strategy, []
    off: dict[str, float] = {}
    if strategy.strat_min_market_cap > 0 and inputs["market_cap"].drop_nulls().len() == 0:
        off["strat_min_market_cap"] = 0
        notes.append("no market cap in the data: the market-cap filter is off")
    if strategy.strat_min_dollar_vol > 0 and inputs["avg_dollar_vol_60d"].drop_nulls().len() == 0:
        off["strat_min_dollar_vol"] = 0
        notes.append("no dollar volume in the data: the liquidity filter is off")
    if not off:
        return settings, ()
    changed = type(strategy).model_validate({**strategy.model_dump(), **off})
    return settings.model_copy(update={"strategy": changed}), tuple(notes)


def panic_plan(
    panic: pl.DataFrame, plan: Plan, book: pl.DataFrame, run_id: str, asof: date
) -> Plan:
    """Step 7: the plan replaced by market sells of every holding (``panic_exit_orders``)."""
    price = dict(zip(book["symbol"].to_list(), book["price"].to_list(), strict=True))
    symbols, qty = panic["symbol"].to_list(), (-panic["qty_delta"]).to_list()
    orders = pl.DataFrame(
        {
            "client_order_id": [client_order_id(run_id, asof, s, "panic") for s in symbols],
            "symbol": symbols,
            "side": ["sell"] * len(symbols),
            "qty": qty,
            "order_type": ["market"] * len(symbols),
            "intent": ["panic"] * len(symbols),
            "target_weight": [0.0] * len(symbols),
            "notional": [q * (price.get(s) or 0.0) for s, q in zip(symbols, qty, strict=True)],
        }
    )
    orders = orders.with_columns(
        pl.lit(None, pl.Float64).alias(c) for c in ORDERS_SCHEMA if c not in orders.columns
    ).select(pl.col(c).cast(t) for c, t in ORDERS_SCHEMA.items())
    dropped = plan.orders.select(
        "symbol", "side", reason=pl.lit(f"replaced by the {panic['reason'][0]}")
    )
    sold = float(orders["notional"].sum())
    return replace(
        plan,
        orders=orders,
        dropped=pl.concat([plan.dropped, dropped.cast(plan.dropped.schema)]),
        cash_after=plan.cash_before + sold,
    )


def decide(
    source: SnapshotSource,
    asof: date,
    positions: pl.DataFrame,
    account: Account,
    settings: DecisionSettings,
    *,
    run_id: str | None = None,
    now: datetime | None = None,
    reviewer: Reviewer | None = None,
) -> Decision:
    """The decision step at ``asof`` on the snapshot ``source`` builds.

    ``now`` (default: the session close of ``asof``) is when breakers and
    trade cooldowns are judged.
    """
    now = now or session_close(asof, settings.data)
    if now.tzinfo is None:
        raise ValueError(f"now={now} is naive; give a time zone")
    snapshot = source.snapshot(asof, now.astimezone(UTC))
    return decide_from(
        snapshot, positions, account, settings, run_id or run_id_for(asof), now, reviewer
    )


def record(
    store: Store,
    decision: Decision,
    now: datetime,
    broker: str = "sim",
    *,
    data_settings: DataSettings,
) -> int:
    """Store the decision's recommendations, knobs and planned orders.

    Recommendations and knobs replace that day's rows; orders are keyed by
    their deterministic ``client_order_id``, so recording a retried decision
    never stores an order twice. Returns how many orders were new.
    """
    write_recos(store, decision.recos, asof=decision.asof, data_settings=data_settings)
    knobs = knob_rows(decision.knobs, decision.asof, decision.run_id, data_settings=data_settings)
    write_knobs(store, knobs, asof=decision.asof, data_settings=data_settings)
    rows = orders_table_rows(decision.plan, decision.run_id, decision.asof, broker, now=now)
    if rows.is_empty():
        return 0
    store.con.register("_orders", rows.to_arrow())
    try:
        with store.transaction() as con:
            before = con.execute("SELECT count(*) FROM orders").fetchall()[0][0]
            cols = ", ".join(f'"{c}"' for c in rows.columns)
            con.execute(
                f"INSERT INTO orders ({cols}) SELECT {cols} FROM _orders ON CONFLICT DO NOTHING"
            )
            added = con.execute("SELECT count(*) FROM orders").fetchall()[0][0] - before
    finally:
        store.con.unregister("_orders")
    return added
