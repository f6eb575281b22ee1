"""Fill rules shared by the walk-forward engine and the simulated broker.

One session at a time: :func:`fill_orders` prices the orders against that
session's bars; :class:`Book` books the fills into cash and positions. The
arithmetic is vectorbt's (``Portfolio.from_orders``), so a replay there lands on
the same cash to the last bits:

- the reference price is the bar's open (``next_open``) or close (``next_close``,
  ``close``);
- slippage moves the price against the trade: ``ref * (1 + s)`` for a buy,
  ``ref * (1 - s)`` for a sell;
- the commission is a share of the traded value, ``fee = |qty| * price * c``;
- cash moves by ``-(qty * price + fee)`` (``qty`` signed, + buys).

An order never fills without a bar, or against a missing, NaN or non-positive
reference price; with ``volume_share`` at most ``floor(volume_share * volume)``
whole shares fill, and never when the volume is missing or zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Book", "FillRules", "fill_orders", "limit_fills", "within_cash"]

FILL_COLUMNS = ("symbol", "qty", "ref_price", "price", "fee")
UNFILLED_COLUMNS = ("symbol", "qty", "filled_qty", "reason")


class FillRules(BaseModel):
    """When an order fills, at what price, and at what cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: Literal["next_open", "next_close", "close"] = Field(
        "next_open", description="open or close of the session after the decision, or its close"
    )
    commission_bps: float = Field(0.0, ge=0, lt=1e4, description="fee, bps of traded value")
    slippage_bps: float = Field(0.0, ge=0, lt=1e4, description="price move against the trade")
    volume_share: float | None = Field(
        None, gt=0, le=1, description="largest share of the session volume one order may take"
    )

    @property
    def commission(self) -> float:
        """The commission as a fraction (vectorbt's ``fees``)."""
        return self.commission_bps / 1e4

    @property
    def slippage(self) -> float:
        """The slippage as a fraction (vectorbt's ``slippage``)."""
        return self.slippage_bps / 1e4

    @property
    def price_column(self) -> Literal["open", "close"]:
        """The bar column an order fills against."""
        return "open" if self.at == "next_open" else "close"


def fill_orders(
    orders: pl.DataFrame, bars: pl.DataFrame, rules: FillRules
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fill one session's ``orders`` (``symbol``, signed ``qty``, ...) against its ``bars``.

    ``bars`` holds ``symbol`` and the reference column (``open`` or ``close``),
    plus ``volume`` when ``rules.volume_share`` is set. Other order columns pass
    through. Returns ``(fills, unfilled)``: ``fills`` has ``symbol, qty`` (signed,
    filled), ``ref_price, price, fee`` and the pass-through columns, one row per
    order that filled at all; ``unfilled`` has ``symbol, qty`` (wanted),
    ``filled_qty, reason`` and the pass-through columns, one row per order that
    did not fill in full. Both keep the order of ``orders``.
    """
    ref = rules.price_column
    missing = {"symbol", "qty"} - set(orders.columns)
    if missing:
        raise ValueError(f"orders lack columns {sorted(missing)}")
    needed = {"symbol", ref} | ({"volume"} if rules.volume_share is not None else set())
    missing = needed - set(bars.columns)
    if missing:
        raise ValueError(f"bars lack columns {sorted(missing)}")
    if bars["symbol"].is_duplicated().any():
        raise ValueError("bars hold more than one row per symbol")
    passthrough = [c for c in orders.columns if c not in ("symbol", "qty")]
    clash = set(passthrough) & {"ref_price", "price", "fee", "filled_qty", "reason"}
    if clash:
        raise ValueError(f"orders may not carry columns {sorted(clash)}")

    share = rules.volume_share
    bar_cols = [
        pl.col(ref).cast(pl.Float64).fill_nan(None).alias("ref_price"),
        (
            pl.col("volume").cast(pl.Float64).fill_nan(None)
            if share is not None
            else pl.lit(None, pl.Float64)
        ).alias("_volume"),
        pl.lit(True).alias("_has_bar"),
    ]
    qty = pl.col("qty")
    want = qty.abs()
    no_price = pl.col("ref_price").is_null() | (pl.col("ref_price") <= 0)
    if share is None:
        filled_abs, no_volume = want, pl.lit(False)
    else:
        cap = (share * pl.col("_volume")).floor()
        filled_abs = pl.min_horizontal(want, cap)
        no_volume = pl.col("_volume").is_null() | (cap <= 0)
    bad_qty = qty.is_null() | ~qty.cast(pl.Float64).is_finite()
    blocked = ~pl.col("_has_bar").fill_null(False) | no_price | no_volume | bad_qty | (qty == 0)

    frame = (
        orders.with_columns(qty.cast(pl.Float64))
        .join(
            bars.select("symbol", *bar_cols),
            on="symbol",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            pl.when(blocked).then(0.0).otherwise(qty.sign() * filled_abs).alias("filled_qty")
        )
    )
    reason = (
        pl.when(~pl.col("_has_bar").fill_null(False))
        .then(pl.lit("no bar this session"))
        .when(pl.col("ref_price").is_null())
        .then(pl.lit(f"no {ref} price"))
        .when(pl.col("ref_price") <= 0)
        .then(pl.format(f"non-positive {ref} price {{}}", pl.col("ref_price").cast(pl.String)))
        .when(bad_qty)
        .then(pl.lit("quantity not finite"))
        .when(qty == 0)
        .then(pl.lit("zero quantity"))
        .when(pl.col("_volume").is_null() & pl.lit(share is not None))
        .then(pl.lit(f"no volume to cap the fill (volume_share {share})"))
        .when(no_volume)
        .then(
            pl.format(
                f"volume cap 0 shares (volume_share {share} x volume {{}})",
                pl.col("_volume").cast(pl.String),
            )
        )
        .when(pl.col("filled_qty").abs() < want)
        .then(
            pl.format(
                f"partial: {{}} of {{}} shares (volume_share {share} x volume {{}})",
                pl.col("filled_qty").abs().cast(pl.String),
                want.cast(pl.String),
                pl.col("_volume").cast(pl.String),
            )
        )
    )
    frame = frame.with_columns(reason.alias("reason"))

    slip = rules.slippage
    fills = (
        frame.filter(pl.col("filled_qty") != 0)
        .with_columns(pl.col("filled_qty").alias("qty"))
        .with_columns(
            pl.when(pl.col("qty") > 0)
            .then(pl.col("ref_price") * (1 + slip))
            .otherwise(pl.col("ref_price") * (1 - slip))
            .alias("price")
        )
        # the same operation order as vectorbt: (size * adj_price) * fees
        .with_columns(((pl.col("qty").abs() * pl.col("price")) * rules.commission).alias("fee"))
        .select(*FILL_COLUMNS, *passthrough)
    )
    unfilled = frame.filter(pl.col("reason").is_not_null()).select(*UNFILLED_COLUMNS, *passthrough)
    return fills, unfilled


def limit_fills(
    orders: pl.DataFrame,
    ref: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    touch: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Which orders may fill, and at what reference price (``ref`` rows follow ``orders``).

    A market order takes the bar's price. A buy limit fills at that price when
    it is at or below the limit, else at the limit when ``touch`` (a day order
    resting through the session) and the bar's low reached it; sells mirror
    this with the high. Without a low or high only the bar's price counts.
    """
    qty = orders["qty"].to_numpy()
    limit = orders["limit_price"].fill_null(np.nan).to_numpy()
    market = np.isnan(limit)
    buy = qty > 0
    at_price = np.where(buy, ref <= limit, ref >= limit)
    touched = touch & np.where(buy, low <= limit, high >= limit)
    ok = market | at_price | touched
    price = np.where(market | at_price, ref, limit)
    return ok, price


def within_cash(
    fills: pl.DataFrame, cash: float, commission: float
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Sells first, then buys in order, each cut to the whole shares the cash left pays for.

    The planner sized buys at the decision's close; at the fill price (another
    bar, plus slippage and commission) they may cost more than the cash there is.
    Returns the fills and ``client_order_id, reason`` of the buys cut.
    """
    qty = fills["qty"].to_numpy().copy()
    price = fills["price"].to_numpy()
    sells = qty < 0
    left = (
        cash
        - float(np.sum(qty[sells] * price[sells]))
        - float(np.sum(np.abs(qty[sells]) * price[sells] * commission))
    )
    cut = []
    for k in np.flatnonzero(~sells):
        unit = price[k] * (1 + commission)
        if qty[k] * unit > left:
            affordable = max(np.floor(left / unit), 0.0)
            # leave a hair of cash so float rounding never overdraws it
            while (
                affordable > 0 and affordable * price[k] + affordable * price[k] * commission > left
            ):
                affordable -= 1
            cut.append(
                (
                    fills["client_order_id"][int(k)],
                    f"cash: {affordable:.0f} of {qty[k]:.0f} shares affordable",
                )
            )
            qty[k] = affordable
        left -= qty[k] * price[k] + qty[k] * price[k] * commission
    out = (
        fills.with_columns(qty=pl.Series(qty))
        .with_columns(fee=(pl.col("qty").abs() * pl.col("price")) * commission)
        .filter(pl.col("qty") != 0)
    )
    reasons = pl.DataFrame(
        cut, schema={"client_order_id": pl.String, "reason": pl.String}, orient="row"
    )
    return out, reasons


class Book:
    """A simulated account: cash and signed share positions, booked exactly in floats."""

    def __init__(self, cash: float, positions: Mapping[str, float] | None = None) -> None:
        self.cash = float(cash)
        self.positions: dict[str, float] = {
            s: float(q) for s, q in (positions or {}).items() if q != 0
        }

    def __repr__(self) -> str:
        return f"Book(cash={self.cash!r}, positions={self.positions!r})"

    def qty(self, symbol: str) -> float:
        """Shares held of ``symbol`` (0 when none)."""
        return self.positions.get(symbol, 0.0)

    def apply(self, fills: pl.DataFrame) -> None:
        """Book ``fills`` (``symbol, qty, price, fee``): ``cash -= qty * price + fee``."""
        symbols = fills["symbol"].to_list()
        qty = fills["qty"].cast(pl.Float64).to_numpy()
        price = fills["price"].cast(pl.Float64).to_numpy()
        fee = fills["fee"].cast(pl.Float64).to_numpy()
        if not (np.isfinite(qty).all() and np.isfinite(price).all() and np.isfinite(fee).all()):
            raise ValueError("fills must have finite qty, price and fee")
        for s, q, p, f in zip(symbols, qty.tolist(), price.tolist(), fee.tolist(), strict=True):
            self.cash -= q * p + f
            new = self.positions.get(s, 0.0) + q
            if new == 0:
                self.positions.pop(s, None)
            else:
                self.positions[s] = new

    def value(self, prices: Mapping[str, float] | pl.DataFrame) -> float:
        """Cash plus the positions marked at ``prices`` (a mapping or ``symbol, price|close``).

        A held symbol without a price raises; a NaN price gives a NaN value.
        """
        if isinstance(prices, pl.DataFrame):
            col = "price" if "price" in prices.columns else "close"
            prices = dict(zip(prices["symbol"].to_list(), prices[col].to_list(), strict=True))
        invested = 0.0
        for s, q in self.positions.items():
            if s not in prices:
                raise KeyError(f"no price to mark {s}")
            p = prices[s]
            invested += q * (float("nan") if p is None else float(p))
        return self.cash + invested
