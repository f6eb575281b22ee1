"""Regime tuner (whitepaper section 6): risk-on or risk-off, and the knobs that follow.

- **Regime**: over large caps (``market_cap >= STRAT_MIN_MARKET_CAP``),
  ``breadth`` = share with ``mom_60 > 0`` (among those with a ``mom_60``) and
  ``median_z_rev`` = median fundamentals ``z_rev`` (revenue-growth z-score).
  Risk-on when ``breadth >= STRAT_BREADTH_ON`` and ``median_z_rev >= 0``; else
  (including when either is unknown) risk-off, the conservative side. Where
  the state-space regime encoder's features are stored
  (:mod:`kronos.features.regime`, ``kronos train regime``), its reading of the
  newest session known at ``asof`` also counts: ``p_turbulent >=
  STRAT_TURBULENT_OFF`` forces risk-off. ``threshold_bps`` is
  ``STRAT_THRESHOLD_BPS_ON`` / ``_OFF``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import polars as pl

from kronos.config import DataSettings, StrategySettings
from kronos.data import readers
from kronos.data.store import Store
from kronos.decision.rows import replace_rows
from kronos.decision.rows import stamp as stamp_of
from kronos.features.regime import RegimeReading

KNOB_SCHEMA: Mapping[str, pl.DataType] = MappingProxyType(
    {
        "asof": pl.Datetime("us", "UTC"),
        "knob": pl.String(),
        "value": pl.String(),
        "reason": pl.String(),
        "run_id": pl.String(),
    }
)


@dataclass(frozen=True)
class RegimeKnobs:
    """The regime switch written to ``policy_knobs``."""

    risk_regime: Literal["on", "off"]
    threshold_bps: float
    breadth: float | None  # share of large caps with positive 60-session momentum
    median_z_rev: float | None  # median fundamentals z_rev over large caps
    reason: str
    p_turbulent: float | None = None  # the regime encoder's, when its features are stored


def regime(
    inputs: pl.DataFrame, settings: StrategySettings, reading: RegimeReading | None = None
) -> RegimeKnobs:
    """Breadth and median ``z_rev`` of large caps -> risk-on/off and ``threshold_bps``.

    With the size filter off (``STRAT_MIN_MARKET_CAP`` 0) every name counts, a
    missing market cap included. Without any ``z_rev`` (a price-only universe)
    breadth alone decides; without breadth the regime is off. ``reading``: the
    regime encoder's (None where none is stored); ``p_turbulent >=
    STRAT_TURBULENT_OFF`` makes it risk-off whatever breadth says.
    """
    min_cap = settings.strat_min_market_cap
    cap_col = inputs["market_cap"].cast(pl.Float64)
    cap = cap_col.to_numpy()  # NaN where null
    # as polars compares, NaN is above every number: a NaN cap counts as large
    large = (cap >= min_cap) | np.isnan(cap)
    if min_cap > 0 and cap_col.has_nulls():
        large &= ~cap_col.is_null().to_numpy()
    mom = inputs["mom_60"].cast(pl.Float64).to_numpy()[large]
    mom = mom[~np.isnan(mom)]
    zrev = inputs["z_rev"].cast(pl.Float64).to_numpy()[large]
    zrev = zrev[~np.isnan(zrev)]
    breadth = float(np.count_nonzero(mom > 0) / len(mom)) if len(mom) else None
    median = float(pl.Series(zrev).median()) if len(zrev) else None
    turbulent = reading is not None and reading.p_turbulent >= settings.strat_turbulent_off
    on = (
        breadth is not None
        and breadth >= settings.strat_breadth_on
        and (median is None or median >= 0)
        and not turbulent
    )
    b = "unknown" if breadth is None else f"{breadth:.3f}"
    m = "unknown" if median is None else f"{median:+.3f}"
    reason = (
        f"risk-{'on' if on else 'off'}: breadth {b} (on at >= {settings.strat_breadth_on:g}, "
        f"{len(mom)} large caps with mom_60), median z_rev {m} (on at >= 0, "
        f"{len(zrev)} large caps)"
    )
    if reading is not None:
        reason += (
            f", regime encoder p_turbulent {reading.p_turbulent:.3f} on {reading.ts} "
            f"(off at >= {settings.strat_turbulent_off:g})"
        )
    return RegimeKnobs(
        risk_regime="on" if on else "off",
        threshold_bps=settings.strat_threshold_bps_on if on else settings.strat_threshold_bps_off,
        breadth=breadth,
        median_z_rev=median,
        reason=reason,
        p_turbulent=None if reading is None else reading.p_turbulent,
    )


def _knob_value(x: float | None) -> str:
    """Numbers as ``repr`` (``float()`` reads them back); unknown as ``nan``."""
    return repr(float("nan") if x is None else float(x))


def knob_rows(
    knobs: RegimeKnobs,
    asof: readers.Asof,
    run_id: str | None = None,
    *,
    data_settings: DataSettings,
) -> pl.DataFrame:
    """``policy_knobs`` rows: risk_regime, threshold_bps, breadth, median_z_rev, p_turbulent."""
    values = {
        "risk_regime": knobs.risk_regime,
        "threshold_bps": _knob_value(knobs.threshold_bps),
        "breadth": _knob_value(knobs.breadth),
        "median_z_rev": _knob_value(knobs.median_z_rev),
        "p_turbulent": _knob_value(knobs.p_turbulent),
    }
    stamp = stamp_of(asof, data_settings)
    return pl.DataFrame(
        {
            "asof": [stamp] * len(values),
            "knob": list(values),
            "value": list(values.values()),
            "reason": [knobs.reason] * len(values),
            "run_id": [run_id] * len(values),
        },
        schema=dict(KNOB_SCHEMA),
    )


def write_knobs(
    store: Store,
    rows: pl.DataFrame,
    *,
    asof: readers.Asof | None = None,
    data_settings: DataSettings,
) -> int:
    """Store ``policy_knobs`` rows, replacing those of the same ``asof`` stamps; returns rows."""
    return replace_rows(store, "policy_knobs", rows, KNOB_SCHEMA, asof, data_settings)
