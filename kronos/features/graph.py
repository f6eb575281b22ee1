"""Sector-normalised returns and the inter-asset graph (whitepaper section 4).

Inputs of the graph forecasters, computed from a returns panel (``symbol, ts,
y``), a ``symbol -> sector`` mapping and a ``cutoff`` date. Every statistic
here reads only rows with ``ts < cutoff``, so changing any row on or after the
cutoff changes nothing (tested); the forecasters pass the first day after
their training rows.

- **Sector-normalised returns**: ``z = (y - mean_g) / std_g``, where ``g`` is
  the symbol's sector and ``mean_g``, ``std_g`` are the mean and standard
  deviation of all its sector members' returns before the cutoff, pooled. A
  symbol without a sector is its own group. Within a sector the relative
  volatility of its members is kept (a volatile name stays more volatile than
  its peers); across sectors the scales become comparable. The map is affine
  and increasing per symbol, so quantiles of ``z`` map back to quantiles of
  returns exactly (:func:`sector_denormalize`).
- **Sector adjacency**: 1 between two symbols of the same sector, else 0.
- **Correlation**: Pearson correlation of daily returns over the last
  ``window`` trading days before the cutoff (the trailing value of a rolling
  correlation), pairwise over the days both symbols traded; pairs with fewer
  than ``min_periods`` common days get 0.
- **Combined graph**: ``sector_weight * sector + (1 - sector_weight) * c``,
  where ``c`` keeps the correlations at or above ``min_correlation`` (others
  0); non-negative, symmetric, zero diagonal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from kronos.errors import ConfigError, InputError

__all__ = [
    "InterAssetGraph",
    "combine_graph",
    "inter_asset_graph",
    "return_correlation",
    "sector_adjacency",
    "sector_denormalize",
    "sector_normalize",
    "sector_scales",
]

SCALES_SCHEMA = {
    "symbol": pl.String(),
    "sector": pl.String(),
    "group": pl.String(),
    "mean": pl.Float64(),
    "std": pl.Float64(),
    "n": pl.Int64(),
}


def _group(symbol: str, sectors: Mapping[str, str | None]) -> str:
    sector = sectors.get(symbol)
    return f"sector:{sector}" if sector else f"symbol:{symbol}"


def _before(panel: pl.DataFrame, cutoff: date, symbols: Sequence[str]) -> pl.DataFrame:
    return panel.filter(
        pl.col("ts") < cutoff, pl.col("symbol").is_in(list(symbols)), pl.col("y").is_finite()
    )


def sector_scales(
    panel: pl.DataFrame,
    sectors: Mapping[str, str | None],
    cutoff: date,
    symbols: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Per symbol, its sector's pooled return mean and std before ``cutoff``.

    ``symbol, sector, group, mean, std, n`` (``n``: the pooled returns). A group
    with fewer than two returns, or zero spread, takes the pooled statistics of
    every symbol. Raises InputError when even those are unusable.
    """
    names = sorted(set(panel["symbol"].to_list())) if symbols is None else list(symbols)
    past = _before(panel, cutoff, names)
    groups = {s: _group(s, sectors) for s in names}
    labelled = past.with_columns(
        pl.col("symbol").replace_strict(groups, return_dtype=pl.String).alias("group")
    )
    stats = labelled.group_by("group").agg(
        pl.col("y").mean().alias("mean"), pl.col("y").std().alias("std"), pl.len().alias("n")
    )
    everyone = past["y"]
    g_mean, g_std = everyone.mean(), everyone.std()
    if len(everyone) < 2 or not g_std or not np.isfinite(g_std):
        raise InputError(f"fewer than two finite returns before {cutoff}: no scale to fit")
    by_group = {r["group"]: r for r in stats.iter_rows(named=True)}
    rows = []
    for s in names:
        g = groups[s]
        r = by_group.get(g)
        ok = r is not None and r["n"] >= 2 and r["std"] and np.isfinite(r["std"])
        rows.append(
            {
                "symbol": s,
                "sector": sectors.get(s),
                "group": g,
                "mean": float(r["mean"]) if ok else float(g_mean),
                "std": float(r["std"]) if ok else float(g_std),
                "n": int(r["n"]) if r is not None else 0,
            }
        )
    return pl.DataFrame(rows, schema=SCALES_SCHEMA)


def sector_normalize(panel: pl.DataFrame, scales: pl.DataFrame) -> pl.DataFrame:
    """``symbol, ts, y, z`` with ``z = (y - mean) / std`` (symbols of ``scales`` only)."""
    return (
        panel.select("symbol", "ts", "y")
        .join(scales.select("symbol", "mean", "std"), on="symbol", how="inner")
        .with_columns(((pl.col("y") - pl.col("mean")) / pl.col("std")).alias("z"))
        .drop("mean", "std")
        .sort("symbol", "ts")
    )


def sector_denormalize(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Returns from sector-normalised values; ``mean``/``std`` broadcast over ``z``."""
    return mean + std * z


def sector_adjacency(symbols: Sequence[str], sectors: Mapping[str, str | None]) -> np.ndarray:
    """``(n, n)``: 1 where two different symbols share a (known) sector."""
    labels = np.asarray([sectors.get(s) or "" for s in symbols], dtype=object)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] != "")
    np.fill_diagonal(same, False)
    return same.astype(float)


def return_correlation(
    panel: pl.DataFrame,
    symbols: Sequence[str],
    cutoff: date,
    window: int = 252,
    min_periods: int = 60,
) -> np.ndarray:
    """Pairwise Pearson correlation over the last ``window`` trading days before ``cutoff``.

    Trading days are the dates any of ``symbols`` has a finite return; each pair
    uses the days both have. Pairs with fewer than ``min_periods`` such days, or
    no spread, get 0; the diagonal is 1.
    """
    names = list(symbols)
    past = _before(panel, cutoff, names)
    days = past["ts"].unique().sort().tail(window)
    recent = past.filter(pl.col("ts").is_in(days.implode()))
    index = {s: i for i, s in enumerate(names)}
    x = np.full((len(days), len(names)), np.nan)
    if recent.height:
        rows = np.searchsorted(days.to_numpy(), recent["ts"].to_numpy())
        cols = np.array([index[s] for s in recent["symbol"].to_list()])
        x[rows, cols] = recent["y"].to_numpy()
    seen = np.isfinite(x).astype(float)
    x0 = np.where(seen > 0, x, 0.0)
    n = seen.T @ seen
    sx = x0.T @ seen  # sx[i, j]: sum of x_i over days both i and j traded
    sxx = (x0**2).T @ seen
    sxy = x0.T @ x0
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / n
        var_i = sxx - sx**2 / n
        corr = cov / np.sqrt(var_i * var_i.T)
    ok = (n >= min_periods) & np.isfinite(corr) & (var_i > 0) & (var_i.T > 0)
    corr = np.clip(np.where(ok, corr, 0.0), -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def combine_graph(
    sector: np.ndarray,
    correlation: np.ndarray,
    sector_weight: float = 0.5,
    min_correlation: float = 0.3,
) -> np.ndarray:
    """The adjacency: sector edges and correlations >= ``min_correlation``, weighted."""
    if not 0.0 <= sector_weight <= 1.0:
        raise ConfigError(f"sector_weight must lie in [0, 1], not {sector_weight}")
    corr = np.where(correlation >= min_correlation, correlation, 0.0)
    out = sector_weight * sector + (1.0 - sector_weight) * corr
    np.fill_diagonal(out, 0.0)
    return out


@dataclass(frozen=True)
class InterAssetGraph:
    """The graph a forecaster was trained with, in ``symbols`` order."""

    symbols: tuple[str, ...]
    sectors: tuple[str | None, ...]
    cutoff: date
    window: int
    min_periods: int
    sector_weight: float
    min_correlation: float
    sector: np.ndarray
    correlation: np.ndarray
    adjacency: np.ndarray

    def edges(self) -> pl.DataFrame:
        """``source, target, same_sector, correlation, weight`` for every weighted pair."""
        i, j = np.nonzero(self.adjacency)
        names = np.asarray(self.symbols, dtype=object)
        return pl.DataFrame(
            {
                "source": names[i].tolist(),
                "target": names[j].tolist(),
                "same_sector": self.sector[i, j] > 0,
                "correlation": self.correlation[i, j],
                "weight": self.adjacency[i, j],
            },
            schema={
                "source": pl.String,
                "target": pl.String,
                "same_sector": pl.Boolean,
                "correlation": pl.Float64,
                "weight": pl.Float64,
            },
        )


def inter_asset_graph(
    panel: pl.DataFrame,
    symbols: Sequence[str],
    sectors: Mapping[str, str | None],
    cutoff: date,
    *,
    window: int = 252,
    min_periods: int = 60,
    sector_weight: float = 0.5,
    min_correlation: float = 0.3,
) -> InterAssetGraph:
    """Sector membership and trailing return correlation before ``cutoff``, combined."""
    names = tuple(symbols)
    sector = sector_adjacency(names, sectors)
    corr = return_correlation(panel, names, cutoff, window, min_periods)
    return InterAssetGraph(
        symbols=names,
        sectors=tuple(sectors.get(s) for s in names),
        cutoff=cutoff,
        window=window,
        min_periods=min_periods,
        sector_weight=sector_weight,
        min_correlation=min_correlation,
        sector=sector,
        correlation=corr,
        adjacency=combine_graph(sector, corr, sector_weight, min_correlation),
    )
