"""Volatility features every symbol shares, for the global quantile model (:mod:`har_gbm`).

All features at row ``t`` use returns up to ``t`` only, and are scale-free:
each is a log ratio to the symbol's own RiskMetrics volatility ``sigma_t``
(λ 0.94, exactly :class:`~kronos.models.baselines.EwmaNormal`'s), or to the
market's, so one model serves every symbol and every volatility level.

- HAR terms (Corsi 2009): realized volatility of the symbol over the last 1, 5
  and 22 sessions, plus 66 and 250 for the slow mean reversion EWMA ignores;
- the market (equal-weight mean return of the panel's symbols): its realized
  volatility over 5, 22 and 250 sessions against its own EWMA volatility, and
  its EWMA volatility against the symbol's;
- the symbol's sector (equal-weight mean of the panel's members of it): realized
  volatility over 22 sessions against the symbol's ``sigma``;
- cross-sectional dispersion (sd of the day's returns across symbols), over 5
  sessions, against its 250-session mean and against the symbol's ``sigma``;
- the leverage effect: the last return and the last 5 sessions' return of the
  symbol, and the market's last 5 sessions' return, in units of volatility.

A feature whose window is not yet full is NaN; LightGBM routes NaN itself.
Own-series features are computed on each symbol's own rows (a gap in the
calendar of one symbol does not restart anything), cross-sectional ones on
the union of the panel's dates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from kronos.models.baselines import ewma_variance

__all__ = ["FEATURES", "VolFeatures", "volatility_features"]

FEATURES: tuple[str, ...] = (
    "rv1",
    "rv5",
    "rv22",
    "rv66",
    "rv250",
    "mkt_rv5",
    "mkt_rv22",
    "mkt_rv250",
    "mkt_vs_own",
    "sector_rv22",
    "dispersion5",
    "dispersion_vs_own",
    "ret1",
    "ret5",
    "mkt_ret5",
)
_OWN_WINDOWS = (5, 22, 66, 250)
_FLOOR = 1e-5  # daily-return units: keeps log ratios finite on a zero-volatility day


@dataclass(frozen=True)
class VolFeatures:
    """Features on a ``dates x symbols`` grid: ``values[t, j, k]`` is feature ``k``."""

    dates: np.ndarray  # datetime64[D], ascending
    symbols: list[str]
    sigma: np.ndarray  # (T, N): EWMA sd after row t (NaN before it is seeded)
    returns: np.ndarray  # (T, N): the daily log returns, NaN where a symbol has no row
    values: np.ndarray  # (T, N, len(FEATURES))


def _rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` rows along axis 0; NaN unless all are finite."""
    ok = np.isfinite(x)
    pad = np.zeros((1, *x.shape[1:]))
    total = np.cumsum(np.concatenate([pad, np.where(ok, x, 0.0)]), axis=0)
    count = np.cumsum(np.concatenate([pad, ok.astype(float)]), axis=0)
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        full = (count[window:] - count[:-window]) == window
        out[window - 1 :] = np.where(full, (total[window:] - total[:-window]) / window, np.nan)
    return out


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log((a + _FLOOR) / (b + _FLOOR))


def _cross_mean(y: np.ndarray) -> np.ndarray:
    """Row means over the finite entries (NaN where a row has none)."""
    ok = np.isfinite(y)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, y, 0.0).sum(axis=1) / n, np.nan)


def _ewma_sd(y: np.ndarray, lam: float) -> np.ndarray:
    return np.sqrt(ewma_variance(y, lam))


def volatility_features(
    panel: pl.DataFrame,
    sectors: Mapping[str, str | None] | None = None,
    lam: float = 0.94,
    symbols: Sequence[str] | None = None,
) -> VolFeatures:
    """The :data:`FEATURES` of every symbol of ``panel`` on every date of it.

    ``symbols`` orders the grid's columns (default: sorted); the market,
    sector and dispersion terms always use all of the panel's symbols.
    """
    names = sorted(panel["symbol"].unique().to_list())
    order = list(symbols) if symbols is not None else names
    frame = panel.select("symbol", "ts", "y").sort("symbol", "ts")
    dates = np.unique(frame["ts"].to_numpy().astype("datetime64[D]"))
    index = {s: j for j, s in enumerate(names)}
    shape = (len(dates), len(names))
    y_wide = np.full(shape, np.nan)
    sigma = np.full(shape, np.nan)
    own = {w: np.full(shape, np.nan) for w in _OWN_WINDOWS}
    ret5 = np.full(shape, np.nan)
    for (s,), g in frame.group_by("symbol", maintain_order=True):
        j = index[s]
        rows = np.searchsorted(dates, g["ts"].to_numpy().astype("datetime64[D]"))
        y = g["y"].to_numpy().astype(np.float64)
        y_wide[rows, j] = y
        sigma[rows, j] = _ewma_sd(y, lam)
        for w in _OWN_WINDOWS:
            own[w][rows, j] = np.sqrt(_rolling_mean(y[:, None] ** 2, w)[:, 0])
        ret5[rows, j] = _rolling_mean(y[:, None], 5)[:, 0] * 5

    market = _cross_mean(y_wide)
    m_sigma = _ewma_sd(np.where(np.isfinite(market), market, np.nan), lam)[:, None]
    m_sq = market[:, None] ** 2
    sector_of = sectors or {}
    sector_rv22 = np.full(shape, np.nan)
    for sector in sorted({sector_of.get(s) for s in names} - {None}):
        cols = [index[s] for s in names if sector_of.get(s) == sector]
        mean = _cross_mean(y_wide[:, cols])[:, None]
        sector_rv22[:, cols] = np.sqrt(_rolling_mean(mean**2, 22))
    ok = np.isfinite(y_wide)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = np.where(ok, y_wide - market[:, None], 0.0)
        dispersion = np.where(n >= 2, np.sqrt((centred**2).sum(axis=1) / n), np.nan)[:, None]
    d5 = _rolling_mean(dispersion, 5)

    def wide(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(a, shape)

    with np.errstate(invalid="ignore", divide="ignore"):
        columns = {
            "rv1": _log_ratio(np.abs(y_wide), sigma),
            "rv5": _log_ratio(own[5], sigma),
            "rv22": _log_ratio(own[22], sigma),
            "rv66": _log_ratio(own[66], sigma),
            "rv250": _log_ratio(own[250], sigma),
            "mkt_rv5": wide(_log_ratio(np.sqrt(_rolling_mean(m_sq, 5)), m_sigma)),
            "mkt_rv22": wide(_log_ratio(np.sqrt(_rolling_mean(m_sq, 22)), m_sigma)),
            "mkt_rv250": wide(_log_ratio(np.sqrt(_rolling_mean(m_sq, 250)), m_sigma)),
            "mkt_vs_own": _log_ratio(wide(m_sigma), sigma),
            "sector_rv22": _log_ratio(sector_rv22, sigma),
            "dispersion5": wide(_log_ratio(d5, _rolling_mean(dispersion, 250))),
            "dispersion_vs_own": _log_ratio(wide(d5), sigma),
            "ret1": y_wide / sigma,
            "ret5": ret5 / sigma,
            "mkt_ret5": wide(_rolling_mean(market[:, None], 5) * 5 / m_sigma),
        }
    values = np.stack([columns[k] for k in FEATURES], axis=-1)
    values[~np.isfinite(values)] = np.nan
    cols = [index[s] for s in order]
    return VolFeatures(
        dates=dates,
        symbols=order,
        sigma=sigma[:, cols],
        returns=y_wide[:, cols],
        values=values[:, cols],
    )
