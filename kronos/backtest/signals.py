"""Plain long-only signal strategies on one symbol, filled by the engine's fill rules.

Small on purpose: it exists so the fill rules and the book can be checked
against other libraries (backtesting.py, vectorbt) on the same trades.

The signal of bar ``t`` is known at its close. ``rules.at`` says where its
order fills: ``"next_open"`` at bar ``t + 1``'s open (backtesting.py's default,
``trade_on_close=False``), ``"next_close"`` at bar ``t + 1``'s close, ``"close"``
at bar ``t``'s own close. An order that cannot fill at that bar is dropped.
An entry when flat buys, all in, the most whole shares the cash pays for at
the fill price with commission; an exit when long sells everything.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import polars as pl

from kronos.execution.fills import Book, FillRules, fill_orders

__all__ = ["SignalResult", "run_signals"]

# backtesting.py's default order size ``1 - eps`` of the available cash (0.6.6,
# ``Strategy._FULL_EQUITY``); kept so the whole-share count matches it exactly.
_FULL_EQUITY = 1 - sys.float_info.epsilon

EQUITY_SCHEMA = {"ts": pl.Date, "nav": pl.Float64, "cash": pl.Float64, "qty": pl.Float64}
FILLS_SCHEMA = {
    "symbol": pl.String,
    "qty": pl.Float64,
    "ref_price": pl.Float64,
    "price": pl.Float64,
    "fee": pl.Float64,
    "ts": pl.Date,
}
UNFILLED_SCHEMA = {
    "symbol": pl.String,
    "qty": pl.Float64,
    "filled_qty": pl.Float64,
    "reason": pl.String,
    "ts": pl.Date,
}
TRADES_SCHEMA = {
    "entry_ts": pl.Date,
    "exit_ts": pl.Date,  # null while open
    "qty": pl.Float64,
    "entry_price": pl.Float64,  # fill prices, after slippage
    "exit_price": pl.Float64,
    "pnl": pl.Float64,  # after all fees; null while open
}


@dataclass(frozen=True)
class SignalResult:
    """A signal run: per-bar equity (``ts, nav, cash, qty``), fills, round trips."""

    equity: pl.DataFrame
    fills: pl.DataFrame
    trades: pl.DataFrame
    unfilled: pl.DataFrame
    final_equity: float


def _shares_affordable(cash: float, ref: float, rules: FillRules) -> float:
    """Whole shares ``cash`` pays for at ``ref`` after slippage and commission.

    backtesting.py sizes ``int(cash * size // (price + commission per share))``
    with the commission charged on top of the cash spent; so does this.
    """
    if not (math.isfinite(ref) and ref > 0):
        return float("nan")  # fill_orders names the reason
    price = ref * (1 + rules.slippage)
    return float((cash * _FULL_EQUITY) // (price + price * rules.commission))


def _trades(fills: pl.DataFrame) -> pl.DataFrame:
    """Round trips, flat to flat; prices are share-weighted means of the fills."""
    qty, price = pl.col("qty"), pl.col("price")
    buy, sell = qty > 0, qty < 0
    closed = pl.col("pos").last() == 0
    return (
        fills.with_columns(pos=qty.cum_sum())
        .with_columns(trade=(pl.col("pos") - qty == 0).cum_sum())
        .group_by("trade", maintain_order=True)
        .agg(
            entry_ts=pl.col("ts").first(),
            exit_ts=pl.when(closed).then(pl.col("ts").last()),
            qty=qty.filter(buy).sum(),
            entry_price=(qty * price).filter(buy).sum() / qty.filter(buy).sum(),
            exit_price=pl.when(closed).then(
                (qty * price).filter(sell).sum() / qty.filter(sell).sum()
            ),
            pnl=pl.when(closed).then((-(qty * price) - pl.col("fee")).sum()),
        )
        .drop("trade")
        .cast(TRADES_SCHEMA)
    )


def run_signals(
    bars: pl.DataFrame,
    entries: np.ndarray,
    exits: np.ndarray,
    init_cash: float,
    rules: FillRules,
    *,
    symbol: str = "asset",
) -> SignalResult:
    """Trade ``entries``/``exits`` (booleans, one per bar) on ``bars`` (``ts, open, close, ...``).

    Positions are marked at the last known close (forward-filled).
    """
    if not bars["ts"].is_sorted():
        raise ValueError("bars must be sorted by ts")
    bars = bars.with_columns(pl.lit(symbol).alias("symbol"))
    entries = np.asarray(entries, dtype=bool)
    exits = np.asarray(exits, dtype=bool)
    if entries.shape != (bars.height,) or exits.shape != (bars.height,):
        raise ValueError("entries and exits need one value per bar")
    ts = bars["ts"].to_list()
    ref = bars[rules.price_column].cast(pl.Float64).fill_null(np.nan).to_numpy()
    marks = bars["close"].cast(pl.Float64).fill_nan(None).forward_fill().to_numpy()
    bar_rows = bars.select(
        "symbol", "open", "close", *(["volume"] if "volume" in bars.columns else [])
    )

    book = Book(init_cash)
    fills, unfilled, rows = [], [], []
    pending: str | None = None  # "buy" | "sell", decided at the previous bar

    def execute(side: str, t: int) -> None:
        held = book.qty(symbol)
        qty = _shares_affordable(book.cash, ref[t], rules) if side == "buy" else -held
        if qty == 0:
            return  # cash short of one share, as backtesting.py cancels it
        order = pl.DataFrame({"symbol": [symbol], "qty": [qty], "ts": [ts[t]]})
        filled, missed = fill_orders(order, bar_rows.slice(t, 1), rules)
        book.apply(filled)
        fills.append(filled)
        unfilled.append(missed)

    for t in range(bars.height):
        if pending is not None:
            execute(pending, t)
            pending = None
        flat = book.qty(symbol) == 0
        signal = "buy" if flat and entries[t] else "sell" if not flat and exits[t] else None
        if signal is not None:
            if rules.at == "close":
                execute(signal, t)
            else:
                pending = signal
        held = book.qty(symbol)
        rows.append((ts[t], book.cash + (held * marks[t] if held else 0.0), book.cash, held))

    equity = pl.DataFrame(rows, schema=EQUITY_SCHEMA, orient="row")
    all_fills = pl.concat(fills) if fills else pl.DataFrame(schema=FILLS_SCHEMA)
    all_unfilled = pl.concat(unfilled) if unfilled else pl.DataFrame(schema=UNFILLED_SCHEMA)
    final = float(equity["nav"][-1]) if equity.height else float(init_cash)
    return SignalResult(equity, all_fills, _trades(all_fills), all_unfilled, final)
