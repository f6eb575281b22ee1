"""The backtest's snapshot source: the store's reads, served from a replay.

:class:`ReplaySource` follows the rules of :mod:`kronos.decision.snapshot`
(the same as :class:`~kronos.decision.snapshot.StoreSource`'s) from what a
backtest has loaded once: the market's bars on the run's price basis, the fold
forecasts of each session, the fail-safe replay's breaker trips and the
simulated book's last trades. The strategist inputs are still read from the
store point in time, from the histories the market prefetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import polars as pl

from kronos.backtest.market import Market
from kronos.backtest.monitor import Quantiles
from kronos.config import DecisionSettings
from kronos.data.store import Store
from kronos.decision.snapshot import FORECAST_SCHEMA, PRICE_SCHEMA, Snapshot
from kronos.features.regime import has_regime, latest_regime
from kronos.features.strategist import REFERENCE_READS, strategist_inputs
from kronos.risk import Breaker


def pick(symbols: Sequence[str], mask: np.ndarray) -> list[str]:
    """The symbols where ``mask`` holds."""
    return [s for s, keep in zip(symbols, mask.tolist(), strict=True) if keep]


@dataclass
class ReplaySource:
    """Snapshots of a backtest's sessions (see the module docstring).

    ``last_trade_at`` is the simulated book's: the engine updates it as orders fill.
    """

    store: Store
    market: Market
    forecasts: Quantiles  # calibrated step-1 quantiles by [session, symbol]
    breakers: Sequence[Breaker]  # every trip of the run
    settings: DecisionSettings
    last_trade_at: dict[str, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._regime = has_regime(self.store)  # else no session has a reading to look up
        self._days = np.array(self.market.sessions, dtype="datetime64[D]")

    def snapshot(self, asof: date, now: datetime) -> Snapshot:
        """The snapshot of session ``asof`` (a session of the market)."""
        m, i = self.market, self.market.index_of(asof)
        inputs = strategist_inputs(
            self.store,
            asof,
            m.symbols,
            settings=self.settings.strategy,
            data_settings=self.settings.data,
            skip=[a for a in m.absent if a in REFERENCE_READS],
            prefetched=m.prefetched,
        )
        has = ~np.isnan(self.forecasts.p50[i])
        forecasts = pl.DataFrame(
            {
                "symbol": pick(m.symbols, has),
                "p05": self.forecasts.p05[i][has],
                "p50": self.forecasts.p50[i][has],
                "p95": self.forecasts.p95[i][has],
            },
            schema=FORECAST_SCHEMA,
        )
        at = m.marked_at[i]
        priced = (at >= 0) & ~np.isnan(m.mark[i])
        prices = pl.DataFrame(
            {
                "symbol": pick(m.symbols, priced),
                "price": m.mark[i][priced],
                "last_bar": self._days[at[priced]].tolist(),
            },
            schema=PRICE_SCHEMA,
        )
        return Snapshot(
            asof=asof,
            inputs=inputs,
            forecasts=forecasts,
            calibrated=True,
            breakers=[b for b in self.breakers if b.tripped_at <= now and b.is_active(now)],
            prices=prices,
            last_trade_at={s: t for s, t in self.last_trade_at.items() if t <= now},
            regime=(
                latest_regime(self.store, asof, settings=self.settings.data)
                if self._regime
                else None
            ),
            basis=m.basis,
        )
