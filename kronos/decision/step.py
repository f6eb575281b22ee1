"""One decision step: store -> breakers -> strategist -> allocator -> planner.

The walk-forward backtest and the paper loop both call :func:`decide`, so a
backtest and the live loop make decisions the same way by construction.
:func:`read_snapshot` does every read (point in time); :func:`decide_from` is
pure, so the benchmark can time the two apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl

from kronos.config import (
    DecisionSettings,
)
from kronos.data.store import Store
from kronos.decision.allocator import Account, Allocation, Reviewer, allocate, check_unique
from kronos.decision.planner import Plan, orders_table_rows, plan_orders
from kronos.decision.regime import RegimeKnobs, knob_rows, regime, write_knobs
from kronos.decision.snapshot import Snapshot, read_snapshot
from kronos.decision.strategist import recommendations, score, standardize, write_recos
from kronos.risk import blocked_symbols, session_close


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
    """The pure part of the step: score, recommend, allocate, plan.

    ``positions``: symbol, qty (prices come from the snapshot).
    """
    sectors = snapshot.inputs.select("symbol", "sector")
    blocked = blocked_symbols(snapshot.breakers, sectors)
    knobs = regime(snapshot.inputs, settings.strategy, snapshot.regime)
    scored = score(
        standardize(snapshot.inputs), knobs, settings.strategy, snapshot.forecasts, blocked=blocked
    )
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
        allocation,
        book,
        account,
        snapshot.forecasts,
        ideas,
        snapshot.last_trade_at,
        blocked,
        now,
        run_id,
        snapshot.asof,
        settings.portfolio,
        settings.policy,
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
    return Decision(
        snapshot.asof, run_id, snapshot, blocked, knobs, scored, recos, allocation, plan, excluded
    )


def decide(
    asof: date,
    store: Store,
    positions: pl.DataFrame,
    account: Account,
    settings: DecisionSettings | None = None,
    *,
    model: str = "nbeats",
    run_id: str | None = None,
    now: datetime | None = None,
    reviewer: Reviewer | None = None,
) -> Decision:
    """The decision step at ``asof``: read the store point in time, then decide.

    ``now`` (default: the session close of ``asof``) is when breakers and
    trade cooldowns are judged.
    """
    settings = settings or DecisionSettings()
    now = now or session_close(asof, settings.data)
    if now.tzinfo is None:
        raise ValueError(f"now={now} is naive; give a time zone")
    snapshot = read_snapshot(store, asof, model, settings, now.astimezone(UTC))
    return decide_from(
        snapshot, positions, account, settings, run_id or run_id_for(asof), now, reviewer
    )


def record(store: Store, decision: Decision, now: datetime, broker: str = "sim") -> int:
    """Store the decision's recommendations, knobs and planned orders.

    Recommendations and knobs replace that day's rows; orders are keyed by
    their deterministic ``client_order_id``, so recording a retried decision
    never stores an order twice. Returns how many orders were new.
    """
    write_recos(store, decision.recos, asof=decision.asof)
    write_knobs(
        store, knob_rows(decision.knobs, decision.asof, decision.run_id), asof=decision.asof
    )
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
