"""The graph forecasters' data: the universe on a date grid, training windows, files.

See :mod:`kronos.models.graph` for what the grid, the sector normalisation and
the windows are. ``scaler.pkl`` (each symbol's sector mean and std) is read
without executing code; ``graph.npz`` holds the inter-asset graph as arrays
(``allow_pickle=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from kronos.features.graph import InterAssetGraph
from kronos.models.base import ForecastError
from kronos.models.files import read_plain_pickle

__all__ = [
    "Grid",
    "Windows",
    "clean_panel",
    "day_number",
    "grid",
    "read_graph",
    "read_scales",
    "window_starts",
    "write_graph",
]

_EPOCH = date(1970, 1, 1)


def day_number(d: date) -> int:
    """Days since 1970-01-01 (polars' integer date)."""
    return (d - _EPOCH).days


@dataclass(frozen=True)
class Grid:
    """The universe on its common trading days."""

    days: np.ndarray  # (T,) days since 1970
    z: np.ndarray  # (T, N) sector-normalised returns, 0 where not observed
    observed: np.ndarray  # (T, N) bool


def grid(panel: pl.DataFrame, symbols: Sequence[str], mean: np.ndarray, std: np.ndarray) -> Grid:
    """Align ``symbols``' rows on the union of their days and normalise them."""
    index = {s: i for i, s in enumerate(symbols)}
    rows = panel.filter(pl.col("symbol").is_in(list(symbols))).select(
        "symbol",
        pl.col("ts").cast(pl.Date).cast(pl.Int32).alias("day"),
        pl.col("y").cast(pl.Float64),
    )
    days = np.unique(rows["day"].to_numpy())
    t = np.searchsorted(days, rows["day"].to_numpy())
    n = np.array([index[s] for s in rows["symbol"].to_list()], dtype=np.int64)
    y = rows["y"].to_numpy()
    ok = np.isfinite(y)
    z = np.zeros((len(days), len(symbols)))
    observed = np.zeros((len(days), len(symbols)), dtype=bool)
    z[t[ok], n[ok]] = (y[ok] - mean[n[ok]]) / std[n[ok]]
    observed[t[ok], n[ok]] = True
    return Grid(days.astype(np.int64), z, observed)


def clean_panel(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    """``symbol, ts, y`` typed and sorted; duplicate (symbol, ts) refused."""
    missing = {"symbol", "ts", "y"} - set(frame.columns)
    if missing:
        raise ForecastError(f"{what} panel lacks columns {sorted(missing)}")
    out = frame.select(
        pl.col("symbol").cast(pl.String), pl.col("ts").cast(pl.Date), pl.col("y").cast(pl.Float64)
    ).sort("symbol", "ts")
    dup = out.filter(pl.struct("symbol", "ts").is_duplicated())
    if dup.height:
        raise ForecastError(f"symbol {dup['symbol'][0]}: duplicate ts in the {what} rows")
    return out


class Windows(Dataset):
    """Windows of the grid: inputs ``[L, N]``, targets ``[h, N]`` and their mask."""

    def __init__(
        self, z: torch.Tensor, mask: torch.Tensor, starts: np.ndarray, input_size: int, horizon: int
    ):
        self.z, self.mask, self.starts = z, mask, starts
        self.input_size, self.horizon = input_size, horizon

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        e = s + self.input_size
        return self.z[s:e], self.z[e : e + self.horizon], self.mask[e : e + self.horizon]


def window_starts(target_ok: np.ndarray, first: int, last: int, input_size: int, horizon: int):
    """Window starts whose targets lie in rows ``[first, last)`` with one observed at least."""
    lo = max(0, first - input_size)
    hi = last - input_size - horizon  # inclusive
    if hi < lo:
        return np.empty(0, dtype=np.int64)
    counts = np.concatenate([[0], np.cumsum(target_ok.any(axis=1))])
    starts = np.arange(lo, hi + 1)
    seen = counts[starts + input_size + horizon] - counts[starts + input_size]
    return starts[seen > 0]


def read_scales(path: Path, symbols: list[str]) -> pl.DataFrame:
    """``scaler.pkl`` read without executing code: ``{symbol: {group, mean, std}}``."""
    raw = read_plain_pickle(path)
    ok = isinstance(raw, dict) and sorted(raw) == sorted(symbols)
    ok = ok and all(
        isinstance(v, dict)
        and isinstance(v.get("group"), str)
        and isinstance(v.get("mean"), float)
        and isinstance(v.get("std"), float)
        and v["std"] > 0
        for v in raw.values()
    )
    if not ok:
        raise ForecastError(f"{path}: not a scale (group, mean, std > 0) for each of the symbols")
    return pl.DataFrame(
        {
            "symbol": symbols,
            "group": [raw[s]["group"] for s in symbols],
            "mean": [raw[s]["mean"] for s in symbols],
            "std": [raw[s]["std"] for s in symbols],
        }
    )


def write_graph(graph: InterAssetGraph, path: Path) -> None:
    """The inter-asset graph as ``.npz`` arrays in symbol order (no pickled objects)."""
    np.savez(
        path,
        symbols=np.asarray(graph.symbols, dtype=str),
        sectors=np.asarray([s or "" for s in graph.sectors], dtype=str),
        sector=graph.sector,
        correlation=graph.correlation,
        adjacency=graph.adjacency,
        cutoff=np.asarray(str(graph.cutoff)),
        window=np.asarray(graph.window),
        min_periods=np.asarray(graph.min_periods),
        sector_weight=np.asarray(graph.sector_weight),
        min_correlation=np.asarray(graph.min_correlation),
    )


def read_graph(path: Path) -> InterAssetGraph:
    """Read :func:`write_graph`'s file (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            symbols = tuple(str(s) for s in f["symbols"])
            n = len(symbols)
            graph = InterAssetGraph(
                symbols=symbols,
                sectors=tuple(str(s) or None for s in f["sectors"]),
                cutoff=date.fromisoformat(str(f["cutoff"])),
                window=int(f["window"]),
                min_periods=int(f["min_periods"]),
                sector_weight=float(f["sector_weight"]),
                min_correlation=float(f["min_correlation"]),
                sector=np.asarray(f["sector"], dtype=np.float64),
                correlation=np.asarray(f["correlation"], dtype=np.float64),
                adjacency=np.asarray(f["adjacency"], dtype=np.float64),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ForecastError(f"{path}: not a graph file ({exc})") from exc
    if any(a.shape != (n, n) for a in (graph.sector, graph.correlation, graph.adjacency)):
        raise ForecastError(f"{path}: matrices are not {n} x {n}")
    return graph
