"""Conditional calibration of p05/p50/p95 forecasts: PIT, coverage by volatility, VaR tests.

Pure functions of arrays (numpy, scipy, polars; no I/O, no kronos state).
2-D arrays are ``[session, symbol]`` with NaN where a cell is unscored; 1-D
arrays are one series. Shapes of the arguments of one call must broadcast.

The PIT from three quantiles: the forecast's CDF is taken to be the
**two-piece (split) normal through the three quantiles**: below p50 a normal
of sd ``(p50 - p05) / z95``, above it one of sd ``(p95 - p50) / z95``
(``z95 = 1.6449``), both centred on p50. It passes exactly through
``(p05, 0.05)``, ``(p50, 0.5)`` and ``(p95, 0.95)``, is continuous, and is
the forecast itself for the normal baselines (EWMA); for a model whose true
tails are fatter than normal the extreme PIT bins are where it shows, which is
the point. A zero half-width (p05 == p50) puts that half's mass on p50.

Exceedances: ``y < p05`` and ``y > p95`` (the band is closed, as in
:func:`kronos.metrics.coverage`), each with nominal rate 0.05. Kupiec (1995)
tests the rate; Christoffersen (1998) tests first-order Markov independence
of the hit series and, added to Kupiec's statistic, conditional coverage.
p-values assume independent observations: cells of correlated symbols on the
same session are not, so pooled p-values overstate significance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from numpy.typing import ArrayLike
from scipy import special, stats

__all__ = [
    "TERCILES",
    "breakdown",
    "christoffersen",
    "conditional_summary",
    "coverage_by_tercile",
    "exceedances",
    "grid",
    "kupiec",
    "pit",
    "pit_histogram",
    "repair_crossing",
    "repair_frame",
]

TERCILES: tuple[str, str, str] = ("low", "mid", "high")
_Z95 = float(stats.norm.ppf(0.95))


def _floats(*arrays: ArrayLike) -> list[np.ndarray]:
    return [a.astype(np.float64, copy=True) for a in np.broadcast_arrays(*map(np.asarray, arrays))]


def repair_crossing(
    p05: ArrayLike, p50: ArrayLike, p95: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The quantiles sorted per row (cell), and how many rows crossed.

    A row crossed when all three are finite and not ``p05 <= p50 <= p95``;
    rows with a NaN are returned unchanged and never counted.
    """
    lo, mid, hi = _floats(p05, p50, p95)
    finite = np.isfinite(lo) & np.isfinite(mid) & np.isfinite(hi)
    crossed = finite & ~((lo <= mid) & (mid <= hi))
    if crossed.any():
        q = np.sort(np.stack([lo[crossed], mid[crossed], hi[crossed]]), axis=0)
        lo[crossed], mid[crossed], hi[crossed] = q
    return lo, mid, hi, int(crossed.sum())


def crossed_rows() -> pl.Expr:
    """True on rows whose three quantiles are finite and not ``p05 <= p50 <= p95``."""
    a, b, c = pl.col("p05"), pl.col("p50"), pl.col("p95")
    finite = (a.is_finite() & b.is_finite() & c.is_finite()).fill_null(False)
    return finite & ~((a <= b) & (b <= c))


def repair_frame(forecasts: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """A forecast frame with ``p05 <= p50 <= p95`` per row (sorted where crossed), and the count.

    The frame version of :func:`repair_crossing`: rows with a null or NaN
    quantile are left as they are and not counted; other columns are untouched.
    """
    a, b, c = pl.col("p05"), pl.col("p50"), pl.col("p95")
    crossed = crossed_rows()
    n = int(forecasts.select(crossed.sum()).item())
    if n == 0:
        return forecasts, 0
    middle = pl.max_horizontal(
        pl.min_horizontal(a, b), pl.min_horizontal(pl.max_horizontal(a, b), c)
    )
    return forecasts.with_columns(
        p05=pl.when(crossed).then(pl.min_horizontal(a, b, c)).otherwise(a),
        p50=pl.when(crossed).then(middle).otherwise(b),
        p95=pl.when(crossed).then(pl.max_horizontal(a, b, c)).otherwise(c),
    ), n


def _half_cdf(dist: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Normal CDF of ``dist / (width / z95)``; a zero width is a step at 0."""
    z = np.full(dist.shape, np.nan)
    ok = width > 0
    np.divide(dist * _Z95, width, out=z, where=ok)
    step = ~ok & np.isfinite(dist) & np.isfinite(width)
    z[step] = np.where(dist[step] < 0, -np.inf, np.inf)  # dist == 0 is set to 0.5 by pit
    return special.ndtr(z)


def pit(p05: ArrayLike, p50: ArrayLike, p95: ArrayLike, y: ArrayLike) -> np.ndarray:
    """The PIT ``F(y)`` under the split normal through the three quantiles; NaN if unscored.

    Crossed quantiles are sorted first (:func:`repair_crossing`).
    """
    lo, mid, hi, yv = _floats(p05, p50, p95, y)
    lo, mid, hi, _ = repair_crossing(lo, mid, hi)
    dist = yv - mid
    below = _half_cdf(dist, mid - lo)
    above = _half_cdf(dist, hi - mid)
    out = np.where(dist < 0, below, above)
    out[dist == 0] = 0.5
    out[~(np.isfinite(lo) & np.isfinite(mid) & np.isfinite(hi) & np.isfinite(yv))] = np.nan
    return out


def pit_histogram(pit_values: ArrayLike, bins: int = 10) -> pl.DataFrame:
    """``bin_lo, bin_hi, share, expected`` of the finite PIT values over ``bins`` equal bins.

    ``share`` is NaN when no value is finite; ``expected`` is ``1 / bins``.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    u = np.asarray(pit_values, dtype=np.float64).ravel()
    u = u[np.isfinite(u)]
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)  # 0.3, not 0.30000000000000004
    counts, _ = np.histogram(np.clip(u, 0.0, 1.0), bins=edges)
    share = counts / len(u) if len(u) else np.full(bins, np.nan)
    return pl.DataFrame(
        {
            "bin_lo": edges[:-1],
            "bin_hi": edges[1:],
            "share": share.astype(np.float64),
            "expected": np.full(bins, 1.0 / bins),
        }
    )


def _inside(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((lo <= y) & (y <= hi)).astype(np.float64)


def coverage_by_tercile(lo: ArrayLike, hi: ArrayLike, y: ArrayLike, vol: ArrayLike) -> pl.DataFrame:
    """``tercile, vol_lo, vol_hi, n, coverage``: band coverage in terciles of ``vol``.

    Terciles are of ``vol`` over the scored cells (all of lo, hi, y, vol finite):
    low ``vol <= q(1/3)``, mid up to ``q(2/3)``, high above. ``vol_lo``/``vol_hi``
    are the smallest and largest vol in the tercile (NaN, with n 0, when empty).
    """
    lv, hv, yv, vv = _floats(lo, hi, y, vol)
    ok = np.isfinite(lv) & np.isfinite(hv) & np.isfinite(yv) & np.isfinite(vv)
    lv, hv, yv, vv = lv[ok], hv[ok], yv[ok], vv[ok]
    inside = _inside(lv, hv, yv)
    rows: dict[str, list] = {k: [] for k in ("tercile", "vol_lo", "vol_hi", "n", "coverage")}
    edges = np.quantile(vv, [1 / 3, 2 / 3]) if len(vv) else np.array([np.nan, np.nan])
    groups = (vv <= edges[0], (vv > edges[0]) & (vv <= edges[1]), vv > edges[1])
    for name, member in zip(TERCILES, groups, strict=True):
        n = int(member.sum())
        rows["tercile"].append(name)
        rows["vol_lo"].append(float(vv[member].min()) if n else np.nan)
        rows["vol_hi"].append(float(vv[member].max()) if n else np.nan)
        rows["n"].append(n)
        rows["coverage"].append(float(inside[member].mean()) if n else np.nan)
    return pl.DataFrame(rows, schema_overrides={"n": pl.Int64})


def exceedances(p05: ArrayLike, p95: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Hit series ``(y < p05, y > p95)`` as 1.0/0.0, NaN where unscored."""
    lo, hi, yv = _floats(p05, p95, y)
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(yv)
    below = np.where(ok, (yv < lo).astype(np.float64), np.nan)
    above = np.where(ok, (yv > hi).astype(np.float64), np.nan)
    return below, above


def _hits(exceed: ArrayLike) -> np.ndarray:
    e = np.asarray(exceed, dtype=np.float64)
    bad = np.isfinite(e) & (e != 0) & (e != 1)
    if bad.any():
        raise ValueError(f"exceed must hold 1, 0 or NaN; found {e[bad][0]!r}")
    return e


def _bernoulli_ll(zeros: float, ones: float, p: float) -> float:
    return float(special.xlogy(zeros, 1 - p) + special.xlogy(ones, p))


def kupiec(exceed: ArrayLike, alpha: float) -> dict[str, float]:
    """Kupiec's unconditional-coverage LR test of hit rate ``alpha`` (chi2, 1 df).

    ``n`` scored cells, ``x`` hits, ``rate = x / n``; NaN cells are skipped.
    With no scored cell, rate, lr and pvalue are NaN.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    e = _hits(exceed)
    e = e[np.isfinite(e)]
    n, x = len(e), float(e.sum())
    if n == 0:
        return {"n": 0, "x": 0, "rate": np.nan, "lr": np.nan, "pvalue": np.nan}
    rate = x / n
    lr = max(-2.0 * (_bernoulli_ll(n - x, x, alpha) - _bernoulli_ll(n - x, x, rate)), 0.0)
    return {"n": n, "x": int(x), "rate": rate, "lr": lr, "pvalue": float(stats.chi2.sf(lr, 1))}


def christoffersen(exceed: ArrayLike, alpha: float) -> dict[str, float]:
    """Christoffersen's independence (1 df) and conditional-coverage (2 df) LR tests.

    Transitions are counted between consecutive scored cells of each series
    (a 2-D input: each column, i.e. symbol, separately; counts pooled), so a
    NaN breaks a series. ``lr_cc`` is :func:`kupiec`'s LR plus ``lr_ind``.
    """
    e = _hits(exceed)
    cols = e[:, None] if e.ndim == 1 else e
    if cols.ndim != 2:
        raise ValueError(f"exceed must be 1-D or 2-D [session, symbol], got shape {e.shape}")
    prev, nxt = cols[:-1], cols[1:]
    pair = np.isfinite(prev) & np.isfinite(nxt)
    n00 = int((pair & (prev == 0) & (nxt == 0)).sum())
    n01 = int((pair & (prev == 0) & (nxt == 1)).sum())
    n10 = int((pair & (prev == 1) & (nxt == 0)).sum())
    n11 = int((pair & (prev == 1) & (nxt == 1)).sum())
    total = n00 + n01 + n10 + n11
    uc = kupiec(e, alpha)
    if total == 0:
        lr_ind = np.nan
    else:
        pi = (n01 + n11) / total
        pi0 = n01 / (n00 + n01) if n00 + n01 else 0.0
        pi1 = n11 / (n10 + n11) if n10 + n11 else 0.0
        restricted = _bernoulli_ll(n00 + n10, n01 + n11, pi)
        free = _bernoulli_ll(n00, n01, pi0) + _bernoulli_ll(n10, n11, pi1)
        lr_ind = max(-2.0 * (restricted - free), 0.0)
    lr_cc = uc["lr"] + lr_ind
    return {
        "lr_ind": lr_ind,
        "pvalue_ind": float(stats.chi2.sf(lr_ind, 1)),
        "lr_cc": lr_cc,
        "pvalue_cc": float(stats.chi2.sf(lr_cc, 2)),
        "n00": n00,
        "n01": n01,
        "n10": n10,
        "n11": n11,
    }


def breakdown(lo: ArrayLike, hi: ArrayLike, y: ArrayLike, by: ArrayLike) -> pl.DataFrame:
    """``key, n, coverage, below, above`` per value of ``by`` over the scored cells.

    ``below``/``above``: share of cells with ``y < lo`` / ``y > hi``; keys sorted.
    """
    lv, hv, yv = _floats(lo, hi, y)
    keys = np.broadcast_to(np.asarray(by), lv.shape).ravel()
    lv, hv, yv = lv.ravel(), hv.ravel(), yv.ravel()
    ok = np.isfinite(lv) & np.isfinite(hv) & np.isfinite(yv)
    frame = pl.DataFrame(
        {
            "key": keys[ok],
            "inside": _inside(lv[ok], hv[ok], yv[ok]),
            "below": (yv[ok] < lv[ok]).astype(np.float64),
            "above": (yv[ok] > hv[ok]).astype(np.float64),
        }
    )
    return (
        frame.group_by("key")
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("inside").mean().alias("coverage"),
            pl.col("below").mean(),
            pl.col("above").mean(),
        )
        .sort("key")
    )


def grid(frame: pl.DataFrame, column: str, symbols: Sequence[str] | None = None) -> np.ndarray:
    """``frame[column]`` as a 2-D ``[asof, symbol]`` array (sorted asof; NaN where missing).

    ``frame`` holds one row per ``(asof, symbol)``; ``symbols`` fixes the column order
    (default: sorted).
    """
    names = list(symbols) if symbols is not None else sorted(frame["symbol"].unique().to_list())
    dup = frame.select("asof", "symbol").is_duplicated()
    if dup.any():
        row = frame.filter(dup).row(0, named=True)
        raise ValueError(
            f"grid needs one row per (asof, symbol); {row['symbol']} at {row['asof']} repeats"
        )
    wide = frame.pivot(on="symbol", index="asof", values=column).sort("asof")
    for s in names:
        if s not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Float64).alias(s))
    return wide.select(names).cast(pl.Float64).fill_null(np.nan).to_numpy()


def conditional_summary(scored: pl.DataFrame, bins: int = 10) -> dict:
    """Every conditional-calibration figure of one model's scored forecasts, JSON-ready.

    ``scored``: ``symbol, asof, step, p05, p50, p95, y_true`` and, optionally,
    ``vol`` (volatility at the origin, for the terciles). The VaR tests are on
    step 1 (one-day-ahead: hits of each symbol ordered by origin); ``per_step``
    repeats them for every step.
    """

    def arr(frame: pl.DataFrame, c: str) -> np.ndarray:
        return frame[c].cast(pl.Float64).fill_null(np.nan).to_numpy()

    if scored.is_empty():
        raise ValueError("conditional_summary: no scored forecast (the frame is empty)")
    lo, mid, hi, y = (arr(scored, c) for c in ("p05", "p50", "p95", "y_true"))
    u = pit(lo, mid, hi, y)
    out: dict = {
        "n": int(np.isfinite(u).sum()),
        "pit_histogram": pit_histogram(u, bins).to_dicts(),
    }
    if "vol" in scored.columns:
        out["coverage_by_tercile"] = coverage_by_tercile(lo, hi, y, arr(scored, "vol")).to_dicts()
    symbols = sorted(scored["symbol"].unique().to_list())
    per_step = {}
    for (step,), part in scored.sort("step").partition_by("step", as_dict=True).items():
        below, above = exceedances(*(grid(part, c, symbols) for c in ("p05", "p95", "y_true")))
        per_step[str(step)] = {
            "n": int(np.isfinite(below).sum()),
            "coverage": float(np.nanmean(1.0 - below - above)),
            **{
                f"{name}_{k}": v
                for name, hits in (("p05", below), ("p95", above))
                for k, v in (kupiec(hits, 0.05) | christoffersen(hits, 0.05)).items()
            },
        }
    out["per_step"] = per_step
    first = per_step[min(per_step, key=int)]
    out["var_tests"] = {
        q: {k: first[f"{q}_{k}"] for k in ("rate", "pvalue", "pvalue_ind", "pvalue_cc")}
        for q in ("p05", "p95")
    }
    out["per_symbol"] = (
        breakdown(lo, hi, y, scored["symbol"].to_numpy()).rename({"key": "symbol"}).to_dicts()
    )
    return out
