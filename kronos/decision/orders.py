"""Orders of a plan: ids, :class:`Plan`, the order frame and the ``orders`` table rows.

:func:`client_order_id` derives every order's id from (run, asof, symbol,
intent), so a retried submission can never place a second order.
:func:`orders_frame` is the planner's last step (order type, limit and bracket
prices; :data:`ORDERS_SCHEMA`); :func:`orders_table_rows` shapes its orders as
rows of the ``orders`` table (:data:`TABLE_SCHEMA`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import numpy as np
import polars as pl

from kronos.config import PolicySettings

_EPS = 1e-9
ORDERS_SCHEMA = {
    "client_order_id": pl.String(),
    "symbol": pl.String(),
    "side": pl.String(),
    "qty": pl.Float64(),
    "order_type": pl.String(),
    "limit_price": pl.Float64(),
    "take_profit": pl.Float64(),
    "stop_loss": pl.Float64(),
    "intent": pl.String(),
    "target_weight": pl.Float64(),
    "turnover_est": pl.Float64(),
    "notional": pl.Float64(),
}
_STAMP = pl.Datetime("us", "UTC")
_ORDER_FIELDS = ("symbol", "side", "qty", "order_type", "limit_price", "take_profit", "stop_loss")
# the ``orders`` table's columns, in its order
TABLE_SCHEMA = {
    "client_order_id": pl.String(),
    "run_id": pl.String(),
    "asof": _STAMP,
    **{c: ORDERS_SCHEMA[c] for c in (*_ORDER_FIELDS, "intent")},
    "status": pl.String(),
    "broker": pl.String(),
    "broker_order_id": pl.String(),
    "target_weight": pl.Float64(),
    "turnover_est": pl.Float64(),
    "submitted_at": _STAMP,
    "updated_at": _STAMP,
}


def _asof_text(asof: date | datetime | str) -> str:
    if isinstance(asof, datetime):
        return (asof.astimezone(UTC) if asof.tzinfo else asof).isoformat()
    if isinstance(asof, date):
        return asof.isoformat()
    return str(asof)


def client_order_id(run_id: str, asof: date | datetime | str, symbol: str, intent: str) -> str:
    """``"kr-"`` + the first 24 hex digits of sha256 of ``[run_id, asof, symbol, intent]``.

    The four are JSON-encoded (so no separator inside a field can make two
    tuples collide) with ``asof`` in ISO form (aware datetimes in UTC). The same
    run, session, symbol and intent always give the same id, so a retried
    submission is refused by the broker as a duplicate and can never place a
    second order.
    """
    blob = json.dumps([run_id, _asof_text(asof), symbol, intent])
    return "kr-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Plan:
    """The orders of one run and the candidates that were dropped.

    ``orders``: :data:`ORDERS_SCHEMA` (sells first, then buys, by symbol);
    ``dropped``: symbol, side, reason. ``cash_after = cash_before + sells - buys``
    at last prices; ``turnover_scale`` and ``buy_scale`` are the factors of the
    turnover guard and the cash step (1 when not binding).
    """

    orders: pl.DataFrame
    dropped: pl.DataFrame
    run_id: str
    asof: date | datetime | str
    cash_before: float
    cash_after: float
    cash_floor: float
    turnover_scale: float = 1.0
    buy_scale: float = 1.0
    replacement_notional: float = 0.0


def _tick(x: np.ndarray, up: bool | None = None) -> np.ndarray:
    """Round to the price tick: 0.01 at or above $1, 0.0001 below (up, down or nearest)."""
    step = np.where(x >= 1.0, 0.01, 0.0001)
    q = x / step
    q = np.ceil(q - _EPS) if up else np.floor(q + _EPS) if up is False else np.round(q)
    return np.round(q * step, 4)


def orders_frame(
    *,
    alive: np.ndarray,
    buy: np.ndarray,
    exit_: np.ndarray,
    shares: np.ndarray,
    replacement: np.ndarray,
    price: np.ndarray,
    inputs: pl.DataFrame,
    z: np.ndarray,
    turnover_est: float,
    policy: PolicySettings,
    run_id: str,
    asof: date | datetime | str,
) -> pl.DataFrame:
    """The planner's step 8: orders (sells first, then buys; by symbol), type, prices, ids.

    Row-aligned arrays over the planner's candidates (``inputs``: symbol, p05,
    p95, target_weight): ``shares`` of each alive candidate (``buy``, ``exit_``:
    its side and intent), ``replacement`` shares sold on top, ``price`` (last),
    ``z`` (the forecast's p50 / sigma).
    """
    repl, px, f = replacement, price, inputs
    main = np.flatnonzero(alive & (shares > 0))
    extra = np.flatnonzero(repl > 0)
    idx = np.concatenate([main, extra])
    is_repl = np.arange(idx.size) >= main.size
    is_buy = np.concatenate([buy[main], np.zeros(extra.size, dtype=bool)])
    sort = np.lexsort((is_repl, idx, is_buy))
    idx, is_repl, is_buy = idx[sort], is_repl[sort], is_buy[sort]
    qty = np.concatenate([shares[main], repl[extra]])[sort]
    intent = np.where(is_repl, "replacement", np.where(exit_[idx] & ~is_buy, "exit", "rebalance"))
    p05, p95 = f["p05"].to_numpy()[idx], f["p95"].to_numpy()[idx]
    price = px[idx]
    notional = qty * price
    limit = (np.nan_to_num(z[idx], nan=0.0) > policy.planner_z_dev_thresh) | (
        notional > policy.planner_limit_notional
    )
    entry = _tick(price)
    tp = _tick(price * np.exp(np.nan_to_num(p95)), up=True)
    sl = _tick(price * np.exp(np.nan_to_num(p05)), up=False)
    bracket = (
        is_buy
        & (qty == np.floor(qty))
        & (price <= policy.planner_bracket_price_max)
        & (p05 < 0)
        & (p95 > 0)
        & (tp > entry)
        & (sl < entry)
        & (sl > 0)
    )
    names = f["symbol"].to_list()
    symbols = [names[i] for i in idx.tolist()]
    ids = [
        client_order_id(run_id, asof, sym, it)
        for sym, it in zip(symbols, intent.tolist(), strict=True)
    ]
    return pl.DataFrame(
        {
            "client_order_id": ids,
            "symbol": symbols,
            "side": np.where(is_buy, "buy", "sell"),
            "qty": qty,
            "order_type": np.where(bracket, "bracket", np.where(limit, "limit", "market")),
            "limit_price": np.where(limit, entry, np.nan),
            "take_profit": np.where(bracket, tp, np.nan),
            "stop_loss": np.where(bracket, sl, np.nan),
            "intent": intent,
            "target_weight": f["target_weight"].to_numpy()[idx],
            "turnover_est": np.full(idx.size, turnover_est),
            "notional": notional,
        },
        schema=ORDERS_SCHEMA,
        nan_to_null=True,
    )


def orders_table_rows(
    plan: Plan,
    run_id: str,
    asof: date | datetime | str,
    broker: str = "sim",
    *,
    now: datetime,
) -> pl.DataFrame:
    """``plan.orders`` shaped as rows of the ``orders`` table (status ``"planned"``).

    ``asof``: a date becomes midnight UTC of that day; ``now`` (aware) is
    ``updated_at``. Raises ``ValueError`` when an order's id is not the one
    :func:`client_order_id` gives for this ``run_id`` and ``asof``, so a plan
    cannot be stored under another run.
    """
    if now.tzinfo is None:
        raise ValueError(f"{now} is a naive datetime; give a time zone (UTC)")
    o = plan.orders
    ids = [
        client_order_id(run_id, asof, s, it)
        for s, it in zip(o["symbol"].to_list(), o["intent"].to_list(), strict=True)
    ]
    if ids != o["client_order_id"].to_list():
        raise ValueError(f"plan was not made for run {run_id!r} at {_asof_text(asof)}")
    if isinstance(asof, datetime):
        at = asof if asof.tzinfo else asof.replace(tzinfo=UTC)
    else:
        at = datetime.combine(date.fromisoformat(str(asof)), time(), UTC)
    return o.select(
        "client_order_id",
        run_id=pl.lit(run_id),
        asof=pl.lit(at),
        symbol="symbol",
        side="side",
        qty="qty",
        order_type="order_type",
        limit_price="limit_price",
        take_profit="take_profit",
        stop_loss="stop_loss",
        intent="intent",
        status=pl.lit("planned"),
        broker=pl.lit(broker),
        broker_order_id=pl.lit(None, dtype=pl.String),
        target_weight="target_weight",
        turnover_est="turnover_est",
        submitted_at=pl.lit(None, dtype=pl.Datetime("us", "UTC")),
        updated_at=pl.lit(now),
    ).cast(TABLE_SCHEMA)
