"""One price basis for sizing, filling and marking, and the corporate actions it implies.

Every path that trades (the walk-forward engine, the simulated broker, the
paper loop's planner) reads its prices here, so an order is sized, filled and
marked on the same price.

- **Raw basis** where every traded symbol has raw closes (``bars.close``): the
  bars as printed, with splits and cash dividends applied to positions and
  cash as corporate actions on their ex-dates (:func:`corporate_actions`).
- **Adjusted basis** where any symbol has adjusted closes only (skfolio's S&P
  500 set): ``adj_close``, and open, high, low scaled by the bar's
  ``adj_close / close``; corporate actions are then already in the prices and
  none are applied. The run records which basis it used and why.

Corporate actions are read from the bars themselves: a bar's adjustment factor
is ``F = adj_close / close``. Between two consecutive bars of a symbol the
factor changes only at an ex-date ``e``, by ``a = F[e-1] / F[e]`` (the vendor
multiplied every earlier price by ``a``). Then

- ``a`` within ``1 - MAX_DIVIDEND_YIELD .. 1``: a cash dividend
  ``D = close[e-1] * (1 - a)`` per share (the standard CRSP/Yahoo adjustment);
- otherwise a split of ``1 / a`` new shares per old share (``0.5``: a 1:2
  reverse split), rounded to the nearest ratio of small whole numbers within
  ``RATIO_TOLERANCE``;
- a relative change below ``FACTOR_TOLERANCE`` is rounding noise of the
  vendor's adjusted closes, not an action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Literal

import polars as pl

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.readers import Asof
from kronos.data.store import Store

FACTOR_TOLERANCE = 1e-4  # 1 bp: adjusted closes printed to a few decimals move this much
MAX_DIVIDEND_YIELD = 0.25  # a larger drop of the factor is read as a split
RATIO_TOLERANCE = 1e-3  # 3:2 read from 1.4996 is 3:2
ACTIONS_SCHEMA = {
    "symbol": pl.String(),
    "ts": pl.Date(),
    "split_ratio": pl.Float64(),  # new shares per old share; 1.0 when none
    "dividend": pl.Float64(),  # cash per share held before the ex-date; 0.0 when none
}


@dataclass(frozen=True)
class PriceBasis:
    """Which prices a run trades on, and why (recorded with the run)."""

    name: Literal["raw", "adjusted"]
    reason: str

    @property
    def raw(self) -> bool:
        """True when trading on printed prices with corporate actions applied."""
        return self.name == "raw"


def price_basis(
    store: Store, symbols: Sequence[str], end: date, settings: DataSettings
) -> PriceBasis:
    """Raw when every bar of ``symbols`` up to ``end`` has a raw close, else adjusted."""
    if not symbols:
        return PriceBasis("adjusted", "no symbols")
    rows = store.con.execute(
        "SELECT symbol FROM bars WHERE symbol IN (SELECT unnest(?::VARCHAR[])) AND ts <= ? "
        "GROUP BY symbol HAVING count(close) < count(*) ORDER BY symbol",
        [list(symbols), end],
    ).fetchall()
    if rows:
        lacking = [r[0] for r in rows]
        shown = ", ".join(lacking[:5]) + (
            f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        )
        return PriceBasis(
            "adjusted",
            f"adjusted closes only for {shown}: trading on split- and dividend-adjusted "
            "prices (corporate actions are in the prices)",
        )
    return PriceBasis(
        "raw", "raw closes for every symbol: printed prices, splits and dividends applied"
    )


def basis_bars(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None,
    basis: PriceBasis,
    settings: DataSettings,
    start: date | None = None,
) -> pl.DataFrame:
    """Bars known at ``asof`` with ``open, high, low, close`` on ``basis``.

    Columns ``symbol, ts, open, high, low, close, adj_close, volume``; on the
    adjusted basis ``close`` is ``adj_close`` and the others are scaled by the
    bar's factor (unscaled where the raw close is missing).
    """
    bars = readers.prices(store, asof, symbols, start=start, settings=settings)
    return on_basis(bars, basis)


def on_basis(bars: pl.DataFrame, basis: PriceBasis) -> pl.DataFrame:
    """``bars`` (``open, high, low, close, adj_close``) with their prices on ``basis``."""
    if basis.raw:
        return bars
    factor = pl.when(pl.col("close") > 0).then(pl.col("adj_close") / pl.col("close"))
    return bars.with_columns(
        *(pl.col(c) * factor.fill_null(1.0) for c in ("open", "high", "low")),
        close=pl.col("adj_close"),
    )


def last_prices(
    store: Store,
    asof: Asof,
    symbols: Sequence[str],
    basis: PriceBasis,
    settings: DataSettings,
) -> pl.DataFrame:
    """``symbol, price, last_bar``: each symbol's last close on ``basis`` known at ``asof``.

    However old the bar: a held name keeps a value through a halt; callers
    judge staleness from ``last_bar``.
    """
    day = readers.PointInTime.at(asof, settings).bar_date
    column = "close" if basis.raw else "adj_close"
    return (
        store.con.sql(
            f"SELECT symbol, arg_max({column}, ts) AS price, max(ts) AS last_bar FROM bars "
            f"WHERE symbol IN (SELECT unnest(?::VARCHAR[])) AND ts <= ? AND {column} IS NOT NULL "
            "GROUP BY symbol ORDER BY symbol",
            params=[list(symbols), day],
        )
        .pl()
        .cast({"symbol": pl.String, "price": pl.Float64, "last_bar": pl.Date})
    )


def _split_ratio(ratio: float) -> float:
    """``ratio`` as the nearest ratio of small whole numbers when that is within tolerance."""
    nice = Fraction(ratio).limit_denominator(20)
    return float(nice) if abs(float(nice) / ratio - 1) <= RATIO_TOLERANCE else ratio


def actions_from_bars(bars: pl.DataFrame) -> pl.DataFrame:
    """Splits and dividends implied by raw and adjusted closes (module rules).

    ``bars``: ``symbol, ts, close, adj_close`` (raw closes present). Returns
    :data:`ACTIONS_SCHEMA` rows, one per ex-date with an action.
    """
    if bars.is_empty():
        return pl.DataFrame(schema=ACTIONS_SCHEMA)
    frame = (
        bars.filter(pl.col("close") > 0)
        .sort("symbol", "ts")
        .with_columns(f=pl.col("adj_close") / pl.col("close"))
        .with_columns(
            a=pl.col("f").shift(1).over("symbol") / pl.col("f"),
            prev_close=pl.col("close").shift(1).over("symbol"),
        )
        .filter(pl.col("a").is_not_null() & ((pl.col("a") - 1).abs() > FACTOR_TOLERANCE))
    )
    rows = []
    for symbol, ts, a, prev in frame.select("symbol", "ts", "a", "prev_close").iter_rows():
        if 1 - MAX_DIVIDEND_YIELD <= a < 1:
            rows.append((symbol, ts, 1.0, prev * (1 - a)))
        else:
            rows.append((symbol, ts, _split_ratio(1 / a), 0.0))
    return pl.DataFrame(rows, schema=ACTIONS_SCHEMA, orient="row")


def corporate_actions(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None,
    settings: DataSettings,
    start: date | None = None,
) -> pl.DataFrame:
    """Splits and dividends with ex-dates known at ``asof`` (and from ``start``).

    Empty for symbols without raw closes (their adjusted prices already hold
    the actions).
    """
    bars = readers.prices(store, asof, symbols, settings=settings).select(
        "symbol", "ts", "close", "adj_close"
    )
    out = actions_from_bars(bars)
    return out.filter(pl.col("ts") >= start) if start is not None else out
