"""The decision's snapshot: everything it reads, as known at the decision time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl

from kronos.config import (
    DecisionSettings,
)
from kronos.data import readers
from kronos.data.store import Store
from kronos.features.regime import RegimeReading, latest_regime
from kronos.features.strategist import strategist_inputs
from kronos.risk import Breaker, active_breakers


@dataclass(frozen=True)
class Snapshot:
    """What the decision reads from the store, as known at the decision time."""

    asof: date
    inputs: pl.DataFrame  # strategist inputs, one row per symbol
    forecasts: pl.DataFrame  # symbol, p05, p50, p95 (step 1)
    calibrated: bool
    breakers: list[Breaker]
    prices: pl.DataFrame  # symbol, price
    last_trade_at: Mapping[str, datetime]
    regime: RegimeReading | None = None  # the regime encoder's newest reading, if stored


def read_snapshot(
    store: Store,
    asof: date,
    model: str,
    settings: DecisionSettings,
    now: datetime,
    symbols: list[str] | None = None,
) -> Snapshot:
    """Read every input of the decision at ``asof`` (nothing known later)."""
    inputs = strategist_inputs(store, asof, symbols, settings.strategy, data_settings=settings.data)
    # the newest origin wins; at that origin calibrated rows are preferred (an
    # older calibrated forecast never beats a fresher raw one)
    forecasts, calibrated, newest = pl.DataFrame(), False, None
    for want in (True, False):
        rows = readers.forecasts(store, asof, model=model, calibrated=want)
        rows = rows.filter((pl.col("asof") == pl.col("asof").max()) & (pl.col("step") == 1))
        if rows.height and (newest is None or rows["asof"][0] > newest):
            forecasts, calibrated = rows.select("symbol", "p05", "p50", "p95"), want
            newest = rows["asof"][0]
    if forecasts.is_empty():
        forecasts = pl.DataFrame(
            schema={"symbol": pl.String, "p05": pl.Float64, "p50": pl.Float64, "p95": pl.Float64}
        )
    last = readers.prices(
        store,
        asof,
        inputs["symbol"].to_list(),
        start=asof - timedelta(days=14),
        settings=settings.data,
    )
    prices = last.group_by("symbol").agg(
        pl.col("close").fill_null(pl.col("adj_close")).sort_by("ts").last().alias("price")
    )
    fills = store.con.execute(
        "SELECT symbol, max(filled_at) FROM fills WHERE filled_at <= ? GROUP BY symbol", [now]
    ).fetchall()
    return Snapshot(
        asof,
        inputs,
        forecasts,
        calibrated,
        active_breakers(store, now),
        prices,
        dict(fills),
        latest_regime(store, asof),
    )
