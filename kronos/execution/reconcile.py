"""Reconciliation: the loop's records brought in line with the broker (the broker wins).

Each cycle of the paper loop starts here. For one account it

1. looks up every order the loop has not seen end, by ``client_order_id``,
   and takes the broker's status (an order the loop never heard back about,
   e.g. after a crash between submit and record, is found this way and never
   submitted a second time);
2. marks planned orders of an earlier session that never reached the broker
   ``stale`` (they are not sent late);
3. records the broker's executions since the last recorded one (each fill id
   once) with the allocator's metadata of its order;
4. snapshots the broker's positions (the loop's book from now on) and records
   every difference it finds: a symbol whose broker position is not what the
   loop's recorded fills add up to (a fill missed or counted twice, or a
   trade made outside the loop), a planned order the broker already had, an
   order the broker lost, and broker orders the loop does not know.
   Differences go to ``paper_reconciliations``; nothing is hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from kronos.data.store import Store
from kronos.execution.brokers.base import (
    TERMINAL_STATUSES,
    AccountState,
    Broker,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
)

__all__ = [
    "OPEN_STATUSES",
    "Difference",
    "Reconciled",
    "follow_fills",
    "is_terminal",
    "reconcile",
    "record_differences",
    "record_fills",
    "run_prefix",
]

# statuses of the loop's orders that may still change at the broker
OPEN_STATUSES = ("planned", "new", "accepted", "pending_new", "partially_filled", "unknown")
QTY_TOLERANCE = 1e-9


def run_prefix(account: str) -> str:
    """Run ids of this account's decisions start with this (``kronos.decision.step.run_id_for``)."""
    return f"paper-{account}-"


@dataclass(frozen=True)
class Difference:
    """One thing the loop's records and the broker disagreed on."""

    kind: str  # position | order
    key: str
    ours: str | None
    broker: str | None
    action: str


@dataclass(frozen=True)
class Reconciled:
    """What one reconciliation saw and changed."""

    account: AccountState
    positions: list[BrokerPosition]
    orders_updated: int
    new_fills: int
    differences: list[Difference] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        """Positions that still disagree with the recorded fills after reconciling."""
        return sum(1 for d in self.differences if d.kind == "position")


def _fmt(qty: float | None) -> str | None:
    return None if qty is None else f"{qty:g}"


def _our_open_orders(store: Store, account: str) -> list[tuple[str, str, date, str]]:
    """``client_order_id, status, session, run_id`` of the account's unfinished orders."""
    marks = ", ".join("?" for _ in OPEN_STATUSES)
    rows = store.con.execute(
        f'SELECT client_order_id, status, "asof", run_id FROM orders '
        f"WHERE run_id LIKE ? AND status IN ({marks}) ORDER BY client_order_id",
        [run_prefix(account) + "%", *OPEN_STATUSES],
    ).fetchall()
    return [(r[0], r[1], r[2].astimezone(UTC).date(), r[3]) for r in rows]


def update_order(store: Store, found: BrokerOrder, now: datetime) -> None:
    """Take the broker's view of one order (status, broker id, the reason when it gives one).

    A reason kept from a refused attempt is cleared once the broker has the order.
    """
    store.con.execute(
        "UPDATE orders SET status = ?, broker_order_id = ?, reason = ?, "
        "submitted_at = coalesce(submitted_at, ?), updated_at = ? WHERE client_order_id = ?",
        [found.status, found.broker_order_id, found.reason, found.submitted_at, now,
         found.client_order_id],
    )  # fmt: skip


def record_fills(store: Store, fills: Sequence[BrokerFill], broker: str) -> int:
    """Insert executions not yet recorded, with their orders' allocator metadata."""
    if not fills:
        return 0
    before = store.con.execute("SELECT count(*) FROM fills").fetchall()[0][0]
    with store.transaction() as con:
        for f in fills:
            con.execute(
                "INSERT INTO fills (fill_id, client_order_id, symbol, side, qty, price, "
                "commission, filled_at, target_weight, turnover_est, broker) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ?, o.target_weight, o.turnover_est, ? "
                "FROM (SELECT 1) LEFT JOIN orders o ON o.client_order_id = ? "
                "ON CONFLICT DO NOTHING",
                [f.fill_id, f.client_order_id, f.symbol, f.side, f.qty, f.price, f.commission,
                 f.filled_at, broker, f.client_order_id],
            )  # fmt: skip
    return store.con.execute("SELECT count(*) FROM fills").fetchall()[0][0] - before


def positions_from_fills(
    store: Store, account: str, splits: pl.DataFrame | None = None, tz: str = "UTC"
) -> dict[str, float]:
    """Shares per symbol that the account's recorded fills add up to.

    ``splits`` (``symbol, ts, split_ratio``: :func:`kronos.data.prices.corporate_actions`)
    scale each fill by the splits with an ex-date after its session (its date in
    ``tz``, the exchange's zone), as the broker scales the position.
    """
    fills = store.con.sql(
        "SELECT f.symbol, CASE WHEN f.side = 'buy' THEN f.qty ELSE -f.qty END AS qty, "
        "f.filled_at FROM fills f JOIN orders o USING (client_order_id) WHERE o.run_id LIKE ?",
        params=[run_prefix(account) + "%"],
    ).pl()
    fills = fills.with_columns(
        day=pl.col("filled_at").dt.convert_time_zone(tz).dt.date(), factor=pl.lit(1.0)
    )
    if splits is not None:
        for symbol, ex, ratio in splits.select("symbol", "ts", "split_ratio").iter_rows():
            if ratio != 1.0:
                hit = (pl.col("symbol") == symbol) & (pl.col("day") < ex)
                fills = fills.with_columns(
                    factor=pl.when(hit).then(pl.col("factor") * ratio).otherwise(pl.col("factor"))
                )
    held = fills.group_by("symbol").agg((pl.col("qty") * pl.col("factor")).sum())
    return {s: q for s, q in held.iter_rows() if abs(q) > QTY_TOLERANCE}


def _diff_books(
    kind: str, ours: dict[str, float], theirs: dict[str, float], action: str
) -> list[Difference]:
    out = []
    for s in sorted(set(ours) | set(theirs)):
        a, b = ours.get(s), theirs.get(s)
        if a is None or b is None or abs(a - b) > QTY_TOLERANCE:
            out.append(Difference(kind, s, _fmt(a), _fmt(b), action))
    return out


def write_positions(
    store: Store, account: str, at: datetime, positions: Sequence[BrokerPosition], broker: str
) -> None:
    """Snapshot the broker's positions (an empty book is one row with symbol '')."""
    rows = [(account, at, p.symbol, p.qty, p.avg_price, p.market_value, broker) for p in positions]
    if not rows:
        rows = [(account, at, "", 0.0, None, 0.0, broker)]
    with store.transaction() as con:
        con.execute('DELETE FROM positions WHERE account = ? AND "asof" = ?', [account, at])
        con.executemany("INSERT INTO positions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def reconcile(
    store: Store,
    broker: Broker,
    account: str,
    session: date | None,
    now: datetime,
    *,
    splits: pl.DataFrame | None = None,
    tz: str = "UTC",
) -> Reconciled:
    """Bring the account's records in line with ``broker`` (see the module steps).

    ``session``: the session the loop decides on now; planned orders of
    earlier sessions that the broker never saw become ``stale``. ``splits``
    and ``tz``: see :func:`positions_from_fills` (the broker splits positions).
    """
    differences: list[Difference] = []
    updated = 0
    for cid, status, day, _run in _our_open_orders(store, account):
        found = broker.order(cid)
        if found is not None:
            if status == "planned":
                differences.append(
                    Difference("order", cid, status, found.status, "adopted the broker's order")
                )
            if found.status != status:
                update_order(store, found, now)
                updated += 1
        elif status == "planned":
            if session is not None and day < session:
                store.con.execute(
                    "UPDATE orders SET status = 'stale', updated_at = ? WHERE client_order_id = ?",
                    [now, cid],
                )
                updated += 1
        else:
            differences.append(Difference("order", cid, status, None, "marked lost"))
            store.con.execute(
                "UPDATE orders SET status = 'lost', updated_at = ? WHERE client_order_id = ?",
                [now, cid],
            )
            updated += 1
    known = {
        r[0]
        for r in store.con.execute(
            "SELECT client_order_id FROM orders WHERE run_id LIKE ?", [run_prefix(account) + "%"]
        ).fetchall()
    }
    for o in broker.open_orders():
        if o.client_order_id not in known:
            differences.append(
                Difference("order", o.client_order_id, None, o.status, "not ours: left alone")
            )
    new_fills = follow_fills(store, broker, account)
    positions = broker.positions()
    theirs = {p.symbol: p.qty for p in positions if abs(p.qty) > QTY_TOLERANCE}
    differences += _diff_books(
        "position", positions_from_fills(store, account, splits, tz), theirs, "took the broker's"
    )
    write_positions(store, account, now, positions, broker.name)
    state = broker.account()
    return Reconciled(state, positions, updated, new_fills, differences)


def follow_fills(store: Store, broker: Broker, account: str) -> int:
    """Record the broker's executions since the newest recorded one (a day of overlap)."""
    row = store.con.execute(
        "SELECT max(f.filled_at) FROM fills f JOIN orders o USING (client_order_id) "
        "WHERE o.run_id LIKE ?",
        [run_prefix(account) + "%"],
    ).fetchall()[0][0]
    since = (row - timedelta(days=1)) if row else datetime(1970, 1, 1, tzinfo=UTC)
    fills = broker.fills_since(since)
    return record_fills(store, fills, broker.name)


def record_differences(
    store: Store, account: str, cycle: int, differences: Sequence[Difference], at: datetime
) -> None:
    """Keep what reconciliation found."""
    if differences:
        store.con.executemany(
            "INSERT INTO paper_reconciliations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(account, cycle, d.kind, d.key, d.ours, d.broker, d.action, at) for d in differences],
        )


def is_terminal(status: str) -> bool:
    """Whether an order status can no longer change."""
    return status in TERMINAL_STATUSES or status in ("stale", "lost")
