"""The decision's snapshot, and where it comes from.

A :class:`Snapshot` is everything the decision reads, as known at its
decision time. A :class:`SnapshotSource` builds it; there are two:

- :class:`StoreSource` (paper loop, service, ``kronos forecast``) reads the
  store point in time;
- :class:`kronos.backtest.replay.ReplaySource` (walk-forward backtest) serves
  the same reads from arrays loaded once, the fold forecasts and the
  simulated book.

Both follow the same rules, so the same store gives the same snapshot
(``tests/test_snapshot_sources.py`` checks it frame for frame):

- **inputs**: :func:`kronos.features.strategist.strategist_inputs` at ``asof``;
- **forecasts**: step 1 of the newest origin at or before ``asof``; at that
  origin calibrated rows win (an older calibrated forecast never beats a
  fresher raw one);
- **prices**: each symbol's last close on the run's price basis
  (:mod:`kronos.data.prices`) and the date of its bar, however old (a held
  name keeps its value through a halt; the decision buys no name whose last
  bar is more than :data:`PRICE_STALE_DAYS` calendar days old);
- **breakers** active at ``now``; **last trades** at or before ``now``; the
  regime encoder's newest reading at ``asof`` where one is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

import polars as pl

from kronos.config import DataSettings, DecisionSettings
from kronos.data import readers
from kronos.data.prices import PriceBasis, last_prices, price_basis
from kronos.data.store import Store
from kronos.features.regime import RegimeReading, latest_regime
from kronos.features.strategist import strategist_inputs
from kronos.risk import Breaker, active_breakers

PRICE_STALE_DAYS = 14
FORECAST_SCHEMA = {"symbol": pl.String, "p05": pl.Float64, "p50": pl.Float64, "p95": pl.Float64}
PRICE_SCHEMA = {"symbol": pl.String, "price": pl.Float64, "last_bar": pl.Date}


@dataclass(frozen=True)
class Snapshot:
    """What the decision reads, as known at the decision time."""

    asof: date
    inputs: pl.DataFrame  # strategist inputs, one row per symbol
    forecasts: pl.DataFrame  # symbol, p05, p50, p95 (step 1)
    calibrated: bool
    breakers: list[Breaker]
    prices: pl.DataFrame  # symbol, price (on ``basis``), last_bar; sorted by symbol
    last_trade_at: Mapping[str, datetime]
    basis: PriceBasis
    regime: RegimeReading | None = None  # the regime encoder's newest reading, if stored


class SnapshotSource(Protocol):
    """Builds the decision's snapshot at ``asof``, judged at ``now`` (aware)."""

    def snapshot(self, asof: date, now: datetime) -> Snapshot:
        """The snapshot of ``asof``: nothing known after it."""
        ...


def newest_forecasts(
    store: Store, asof: date, model: str, settings: DataSettings
) -> tuple[pl.DataFrame, bool]:
    """Step-1 forecasts of the newest origin at ``asof`` and whether they are calibrated."""
    forecasts, calibrated, newest = pl.DataFrame(schema=FORECAST_SCHEMA), False, None
    for want in (True, False):
        rows = readers.forecasts(store, asof, model=model, calibrated=want, settings=settings)
        rows = rows.filter((pl.col("asof") == pl.col("asof").max()) & (pl.col("step") == 1))
        if rows.height and (newest is None or rows["asof"][0] > newest):
            forecasts, calibrated = rows.select(*FORECAST_SCHEMA).cast(FORECAST_SCHEMA), want
            newest = rows["asof"][0]
    return forecasts.sort("symbol"), calibrated


@dataclass(frozen=True)
class StoreSource:
    """Snapshots read from the store point in time (the paper loop's, the service's)."""

    store: Store
    model: str
    settings: DecisionSettings
    symbols: Sequence[str] | None = None

    def snapshot(self, asof: date, now: datetime) -> Snapshot:
        """Read every input of the decision at ``asof`` (module rules)."""
        data = self.settings.data
        names = list(self.symbols) if self.symbols is not None else None
        inputs = strategist_inputs(
            self.store, asof, names, settings=self.settings.strategy, data_settings=data
        )
        forecasts, calibrated = newest_forecasts(self.store, asof, self.model, data)
        symbols = inputs["symbol"].to_list()
        basis = price_basis(self.store, symbols, asof, data)
        fills = self.store.con.execute(
            "SELECT symbol, max(filled_at) FROM fills WHERE filled_at <= ? GROUP BY symbol", [now]
        ).fetchall()
        return Snapshot(
            asof=asof,
            inputs=inputs,
            forecasts=forecasts,
            calibrated=calibrated,
            breakers=active_breakers(self.store, now),
            prices=last_prices(self.store, asof, symbols, basis, data),
            last_trade_at=dict(fills),
            regime=latest_regime(self.store, asof, settings=data),
            basis=basis,
        )


def read_snapshot(
    store: Store,
    asof: date,
    model: str,
    settings: DecisionSettings,
    now: datetime,
    symbols: Sequence[str] | None = None,
) -> Snapshot:
    """The store's snapshot at ``asof`` (:class:`StoreSource` in one call)."""
    return StoreSource(store, model, settings, symbols).snapshot(asof, now)
