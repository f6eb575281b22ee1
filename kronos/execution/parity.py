"""Paper vs backtest: what the backtest's fill rule gives for each paper fill.

Parity measured, not assumed. Each paper fill (the ``fills`` table) is priced
again by the backtest's fill rule (:mod:`kronos.execution.fills`), for the same
order on the bar of the session it happened in (its ``filled_at`` date in the
exchange's zone), on the store's price basis (:mod:`kronos.data.prices`):

- the reference price ``ref`` is the bar's open (``next_open``; its close where
  the bar has no open, as the simulated broker and ``at: auto`` do) or close;
- a limit order fills only when ``ref`` is inside the limit or, except under
  ``close``, when the bar's low (buy) or high (sell) reached it, and then at the
  limit (:func:`~kronos.execution.fills.limit_fills`); otherwise the fill has no
  modelled price and ``model_note`` says why;
- the modelled price is that price moved against the trade by the slippage:
  ``x * (1 + s)`` for a buy, ``x * (1 - s)`` for a sell.

With ``sign`` +1 for a buy and -1 for a sell, in bps of the bar's ``ref``:
realized slippage ``sign * (price - ref) / ref * 1e4``, modelled slippage
``sign * (model_price - ref) / ref * 1e4``, and the gap ``realized - modelled``:
positive when paper did worse than the backtest assumed. :func:`parity_report`
weights them by each fill's notional ``|qty| * price``, per symbol and overall.
Commissions are not part of the gap.

A fill made before its session's bar is in the store (an intraday fill at a
live broker) has no modelled price yet (the note names the bar);
:func:`backfill_model_prices` stores the modelled prices of every fill still
without one, so the paper loop calls it each cycle after reconciliation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import polars as pl

from kronos.config import DataSettings
from kronos.data.prices import on_basis, price_basis
from kronos.data.store import Store
from kronos.execution.fills import FillRules, limit_fills
from kronos.execution.reconcile import run_prefix

__all__ = ["ALL", "REPORT_SCHEMA", "backfill_model_prices", "model_prices", "parity_report"]

ALL = "(all)"  # the overall row's symbol (no ticker has parentheses)
MODEL_SCHEMA = {
    "session": pl.Date(),
    "model_ref": pl.Float64(),
    "model_price": pl.Float64(),
    "model_rule": pl.String(),
    "model_note": pl.String(),
}
REPORT_SCHEMA = {
    "symbol": pl.String(),
    "fills": pl.Int64(),
    "priced": pl.Int64(),  # fills with a modelled price
    "notional": pl.Float64(),  # of the priced fills
    "realized_bps": pl.Float64(),
    "modelled_bps": pl.Float64(),
    "gap_bps": pl.Float64(),  # realized - modelled: > 0 when paper did worse
}
_FILL_SQL = (
    "SELECT f.fill_id, f.symbol, f.side, f.qty, f.price, f.filled_at, o.order_type, "
    "o.limit_price, f.model_ref, f.model_price, f.model_rule, f.model_note "
    "FROM fills f LEFT JOIN orders o USING (client_order_id)"
)


def model_prices(
    fills: pl.DataFrame, bars: pl.DataFrame, rules: FillRules, *, tz: str
) -> pl.DataFrame:
    """``fills`` with the backtest's price for each (module rules), row for row.

    ``fills``: ``symbol, side`` (buy or sell), ``qty`` (> 0), ``price``,
    ``filled_at`` (aware), optionally ``limit_price`` (null: a market order).
    ``bars``: ``symbol, ts, open, high, low, close`` on the price basis of the
    fills. ``tz``: the exchange's zone (a fill's session is its date there).
    Adds ``session, model_ref, model_price, model_rule, model_note``
    (:data:`MODEL_SCHEMA`; ``model_price`` null with the reason in ``model_note``).
    """
    if fills["filled_at"].dtype.time_zone is None:  # type: ignore[union-attr]
        raise ValueError("fills.filled_at: give time-zone-aware timestamps")
    bad = set(fills["side"].unique().to_list()) - {"buy", "sell"}
    if bad:
        raise ValueError(f"fills.side must be buy or sell, got {sorted(map(str, bad))}")
    col = rules.price_column
    ref_expr = pl.coalesce("open", "close") if col == "open" else pl.col("close")
    keyed = bars.select(
        "symbol",
        pl.col("ts").cast(pl.Date).alias("session"),
        ref_expr.cast(pl.Float64).fill_nan(None).alias("_ref"),
        pl.col("open").is_null().alias("_no_open"),
        pl.col("low").cast(pl.Float64).fill_nan(None).alias("_low"),
        pl.col("high").cast(pl.Float64).fill_nan(None).alias("_high"),
        pl.lit(True).alias("_bar"),
    )
    limit = fills["limit_price"] if "limit_price" in fills.columns else None
    frame = fills.with_columns(
        session=pl.col("filled_at").dt.convert_time_zone(tz).dt.date(),
        _limit=pl.lit(None, pl.Float64) if limit is None else limit.cast(pl.Float64),
    ).join(keyed, on=["symbol", "session"], how="left", maintain_order="left")
    buy = (frame["side"] == "buy").to_numpy()
    ref = frame["_ref"].fill_null(np.nan).to_numpy()
    low = frame["_low"].fill_null(np.nan).to_numpy()
    high = frame["_high"].fill_null(np.nan).to_numpy()
    limits = frame["_limit"].fill_null(np.nan).to_numpy()
    signed = pl.DataFrame({"qty": np.where(buy, 1.0, -1.0), "limit_price": limits})
    ok, at = limit_fills(signed, ref, low, high, touch=rules.at != "close")
    has_bar = frame["_bar"].fill_null(False).to_numpy()
    has_ref = has_bar & np.isfinite(ref) & (ref > 0)
    priced = has_ref & ok
    slip = rules.slippage
    model = np.where(priced, np.where(buy, at * (1 + slip), at * (1 - slip)), np.nan)
    rule = f"{rules.at}: {{}} +{rules.slippage_bps:g} bps"
    used = np.where(
        (col == "open") & frame["_no_open"].fill_null(False).to_numpy(), "close (no open)", col
    )
    notes = []
    for i, (s, day) in enumerate(zip(frame["symbol"], frame["session"], strict=True)):
        if not has_bar[i]:
            notes.append(f"no {day} bar of {s} in the store yet")
        elif not has_ref[i]:
            notes.append(f"the {day} bar of {s} has no positive {used[i]} price")
        elif not ok[i]:
            side, reach = ("buy", "low") if buy[i] else ("sell", "high")
            seen = low[i] if buy[i] else high[i]
            notes.append(
                f"the backtest would not fill this {side} limit {limits[i]:g}: "
                f"{used[i]} {ref[i]:g}, {reach} {seen:g}"
            )
        else:
            notes.append(None)
    return frame.drop("_limit", "_ref", "_no_open", "_low", "_high", "_bar").with_columns(
        model_ref=pl.Series(np.where(has_ref, ref, np.nan), dtype=pl.Float64).fill_nan(None),
        model_price=pl.Series(model, dtype=pl.Float64).fill_nan(None),
        model_rule=pl.Series([rule.format(u) for u in used.tolist()], dtype=pl.String),
        model_note=pl.Series(notes, dtype=pl.String),
    )


def _bars(
    store: Store,
    symbols: Sequence[str],
    first: date,
    last: date,
    settings: DataSettings,
    universe: Sequence[str] | None,
) -> pl.DataFrame:
    """The sessions' bars of ``symbols`` on the price basis of ``universe`` (else ``symbols``)."""
    bars = store.con.sql(
        "SELECT symbol, ts, open, high, low, close, adj_close FROM bars "
        "WHERE ts BETWEEN ? AND ? AND symbol IN (SELECT unnest(?::VARCHAR[]))",
        params=[first, last, list(symbols)],
    ).pl()
    basis = price_basis(store, list(universe or symbols), last, settings)
    return on_basis(bars, basis)


def _priced(
    store: Store,
    fills: pl.DataFrame,
    rules: FillRules,
    settings: DataSettings,
    universe: Sequence[str] | None,
) -> pl.DataFrame:
    """:func:`model_prices` of ``fills`` against the store's bars."""
    tz = settings.market_tz
    days = fills["filled_at"].dt.convert_time_zone(tz).dt.date()
    first, last = days.min(), days.max()
    bars = _bars(store, fills["symbol"].unique().to_list(), first, last, settings, universe)  # type: ignore[arg-type]
    return model_prices(fills, bars, rules, tz=tz)


def backfill_model_prices(
    store: Store,
    rules: FillRules,
    *,
    settings: DataSettings,
    account: str | None = None,
    universe: Sequence[str] | None = None,
) -> int:
    """Store the modelled price of every fill that has none yet; returns how many got one.

    ``rules``: the backtest's fill rule to compare with; ``account``: only that
    paper account's fills (default: all); ``universe``: the symbols whose price
    basis the account trades on (default: the fills' symbols). A fill whose bar
    is still missing keeps a null price and a note, and is tried again next time.
    """
    sql, params = _FILL_SQL + " WHERE f.model_price IS NULL", []
    if account is not None:
        sql, params = sql + " AND o.run_id LIKE ?", [run_prefix(account) + "%"]
    fills = store.con.sql(sql, params=params).pl()
    if fills.is_empty():
        return 0
    out = _priced(store, fills.drop(*MODEL_SCHEMA.keys() - {"session"}), rules, settings, universe)
    rows = out.select("fill_id", *(c for c in MODEL_SCHEMA if c != "session"))
    store.con.register("_model_prices", rows.to_arrow())
    try:
        with store.transaction() as con:
            con.execute(
                "UPDATE fills SET model_ref = m.model_ref, model_price = m.model_price, "
                "model_rule = m.model_rule, model_note = m.model_note "
                "FROM _model_prices m WHERE fills.fill_id = m.fill_id"
            )
    finally:
        store.con.unregister("_model_prices")
    return int(rows["model_price"].is_not_null().sum())


def parity_report(
    store: Store,
    settings: DataSettings,
    *,
    account: str | None = None,
    rules: FillRules | None = None,
    universe: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Realized vs modelled slippage per symbol and overall (:data:`REPORT_SCHEMA`).

    ``account``: only that paper account's fills (default: every fill). Stored
    modelled prices are used; with ``rules``, fills without one are priced now
    (nothing is written, so a read-only store will do). Averages are weighted
    by notional over the priced fills (null where none is); the last row,
    :data:`ALL`, is over every fill.
    """
    sql, params = _FILL_SQL, []
    if account is not None:
        sql, params = sql + " WHERE o.run_id LIKE ?", [run_prefix(account) + "%"]
    fills = store.con.sql(sql + " ORDER BY f.filled_at, f.fill_id", params=params).pl()
    if rules is not None and fills["model_price"].null_count():
        todo = fills["model_price"].is_null()
        fresh = _priced(
            store, fills.filter(todo).drop(MODEL_SCHEMA.keys() - {"session"}), rules, settings,
            universe,
        )  # fmt: skip
        fills = pl.concat([fills.filter(~todo), fresh.drop("session")], how="vertical_relaxed")
    sign = pl.when(pl.col("side") == "buy").then(1.0).otherwise(-1.0)
    bps = sign * 1e4 / pl.col("model_ref")
    per_fill = fills.select(
        "symbol",
        priced=pl.col("model_price").is_not_null(),
        w=pl.when(pl.col("model_price").is_not_null()).then(pl.col("qty").abs() * pl.col("price")),
        realized=bps * (pl.col("price") - pl.col("model_ref")),
        modelled=bps * (pl.col("model_price") - pl.col("model_ref")),
    ).with_columns(gap=pl.col("realized") - pl.col("modelled"))

    by_symbol = per_fill.group_by("symbol").agg(_summary()).sort("symbol")
    overall = per_fill.select(pl.lit(ALL).alias("symbol"), *_summary())
    return pl.concat([by_symbol, overall], how="vertical_relaxed").cast(REPORT_SCHEMA)  # type: ignore[arg-type]


def _summary() -> list[pl.Expr]:
    """Counts, notional and notional-weighted bps of a group of per-fill rows."""
    w = pl.col("w").sum()
    mean = {c: (pl.col(c) * pl.col("w")).sum() / w for c in ("realized", "modelled", "gap")}
    return [
        pl.len().cast(pl.Int64).alias("fills"),
        pl.col("priced").sum().cast(pl.Int64).alias("priced"),
        w.fill_null(0.0).alias("notional"),
        *(pl.when(w > 0).then(e).alias(f"{c}_bps") for c, e in mean.items()),
    ]
