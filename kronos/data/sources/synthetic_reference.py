"""Synthetic reference data, labelled ``source="synthetic"``, from the same seeds as the prices.

Reference data (:func:`synthetic_reference`) mimics FMP's JSON payloads:
quarterly statements with realistic filing lags, analyst consensus snapshots
that converge on the eventual actual EPS, monthly ratings, news with Poisson
base flow plus event bursts (whose ground truth is returned), and daily social
aggregates whose post counts jump during those bursts.

Randomness follows :mod:`kronos.data.sources.synthetic`: generators seeded from
``(seed, stream, key)``, so a symbol's data does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from kronos.calendar import Calendar, get_calendar
from kronos.data.schema import TABLES, TS, empty_frame
from kronos.data.sources.synthetic import (
    DAY_S,
    S_EST,
    S_FUND,
    S_NEWS,
    S_RATING,
    S_SOCIAL,
    SECTORS,
    SOURCE,
    Traits,
    rng_for,
    symbol_column,
    symbol_traits,
)


@dataclass(frozen=True)
class SyntheticReference:
    """FMP-shaped payloads per endpoint, social aggregates and news-burst ground truth."""

    payloads: dict[str, list[dict[str, Any]]]
    social: pl.DataFrame  # social_features schema
    news_bursts: pl.DataFrame  # symbol, start, end (UTC): where the headline bursts are


def _quarter_ends(first: date, last: date) -> np.ndarray:
    """Calendar quarter ends in [first, last] as ``datetime64[D]``."""
    months = np.arange(np.datetime64(first, "M"), np.datetime64(last, "M") + 1)
    month_no = months.astype(np.int64) % 12  # 0 = January
    ends = (months[month_no % 3 == 2] + 1).astype("datetime64[D]") - 1
    return ends[(ends >= np.datetime64(first)) & (ends <= np.datetime64(last))]


def _seconds(d: np.ndarray) -> np.ndarray:
    """``datetime64[D]`` -> int64 seconds since the epoch (UTC midnight)."""
    return d.astype("datetime64[D]").astype(np.int64) * DAY_S


def _utc(seconds: np.ndarray) -> pl.Series:
    return pl.Series(np.asarray(seconds, dtype=np.int64) * 1_000_000).cast(TS)


def _ar1(shocks: np.ndarray, phi: float) -> np.ndarray:
    """AR(1) along axis 1 with stationary start; ``shocks`` has unit variance."""
    out = np.empty_like(shocks)
    out[:, 0] = shocks[:, 0]
    scale = np.sqrt(1.0 - phi * phi)
    for k in range(1, shocks.shape[1]):
        out[:, k] = phi * out[:, k - 1] + scale * shocks[:, k]
    return out


@dataclass(frozen=True)
class _Fundamentals:
    """Quarterly fundamentals, arrays of shape (symbols, quarters)."""

    quarter_ends: np.ndarray  # (quarters,) datetime64[D]
    filing: np.ndarray  # datetime64[D]
    accepted_s: np.ndarray  # seconds after filing-date midnight, US Eastern wall clock
    revenue: np.ndarray
    cost_of_revenue: np.ndarray
    operating_income: np.ndarray
    net_income: np.ndarray
    shares: np.ndarray
    eps: np.ndarray
    assets: np.ndarray
    liabilities: np.ndarray
    debt: np.ndarray
    cash: np.ndarray
    operating_cf: np.ndarray
    capex: np.ndarray
    market_cap: np.ndarray


def _fundamentals(
    symbols: Sequence[str], traits: Traits, qe: np.ndarray, seed: int, calendar: Calendar
) -> _Fundamentals:
    n_s, n_q = len(symbols), len(qe)
    st = np.empty((n_s, 8))
    z = np.empty((n_s, n_q, 8))
    lag = np.empty((n_s, n_q), dtype=np.int64)
    acc = np.empty((n_s, n_q), dtype=np.int64)
    for j, sym in enumerate(symbols):
        rng = rng_for(seed, S_FUND, sym)
        rng.standard_normal(out=st[j])
        rng.standard_normal(out=z[j])
        lag[j] = rng.integers(20, 59, size=n_q)
        acc[j] = rng.integers((16 * 60 + 5) * 60, 20 * 3600 + 1, size=n_q)

    col = np.newaxis
    heavy_assets = np.isin(traits.sector, [SECTORS.index(s) for s in ("Financials", "Real Estate")])
    ps_ratio = np.clip(2.5 * np.exp(0.6 * st[:, 0]), 0.3, 20.0)
    growth = 0.06 + 0.08 * st[:, 1]  # annual log growth
    season = (
        0.05
        * np.abs(st[:, 2])[:, col]
        * np.array([-1.0, -0.2, 0.2, 1.0])[(qe.astype("datetime64[M]").astype(np.int64) % 12) // 3]
    )
    log_rev = (
        np.log(traits.market_cap / ps_ratio / 4)[:, col]
        + np.cumsum(growth[:, col] / 4 + 0.03 * z[:, :, 0], axis=1)
        + season
        + 0.03 * z[:, :, 1]
    )
    revenue = np.exp(log_rev)
    gross_margin = np.clip(
        np.clip(0.4 + 0.15 * st[:, 3], 0.1, 0.85)[:, col] + 0.015 * _ar1(z[:, :, 2], 0.8),
        0.02,
        0.95,
    )
    op_margin = np.minimum(0.12 + 0.09 * st[:, 4], 0.4)[:, col] + 0.025 * _ar1(z[:, :, 3], 0.7)
    op_margin = np.minimum(op_margin, gross_margin - 0.01)
    shares = traits.shares[:, col] * np.exp(np.cumsum(0.005 * z[:, :, 4], axis=1))

    asset_turn = np.exp(np.log(1.5) + 0.4 * st[:, 5]) * np.where(heavy_assets, 5.0, 1.0)
    assets = 4 * revenue * asset_turn[:, col] * np.exp(0.02 * z[:, :, 5])
    leverage = np.clip(0.55 + 0.15 * st[:, 6], 0.15, 0.9)[:, col] + 0.03 * _ar1(z[:, :, 6], 0.9)
    liabilities = assets * np.clip(leverage, 0.05, 1.1)
    debt = liabilities * np.clip(0.5 + 0.15 * st[:, 7], 0.1, 0.9)[:, col]
    cash = assets * 0.08 * np.exp(0.3 * z[:, :, 7])

    operating_income = revenue * op_margin
    pretax = operating_income - 0.012 * debt
    net_income = np.where(pretax > 0, 0.79 * pretax, pretax)
    operating_cf = net_income + revenue * (0.05 + 0.03 * z[:, :, 1])
    capex = -revenue * 0.05 * np.exp(0.5 * np.abs(st[:, 0]))[:, col]
    market_cap = traits.market_cap[:, col] * np.exp(
        np.cumsum(growth[:, col] / 4 + 0.12 * z[:, :, 4], axis=1)
    )
    filing = calendar.sessions_on_or_after(qe[None, :] + lag)
    return _Fundamentals(
        quarter_ends=qe,
        filing=filing,
        accepted_s=acc,
        revenue=revenue,
        cost_of_revenue=revenue * (1.0 - gross_margin),
        operating_income=operating_income,
        net_income=net_income,
        shares=shares,
        eps=np.round(net_income / shares, 2),
        assets=assets,
        liabilities=liabilities,
        debt=debt,
        cash=cash,
        operating_cf=operating_cf,
        capex=capex,
        market_cap=market_cap,
    )


def _round_int(x: np.ndarray) -> np.ndarray:
    return np.round(x).astype(np.int64).ravel()


def _statement_payloads(
    symbols: Sequence[str], fd: _Fundamentals, start: date, end: date
) -> dict[str, list[dict[str, Any]]]:
    n_s, n_q = fd.revenue.shape
    keep = (fd.quarter_ends >= np.datetime64(start)) & (fd.quarter_ends <= np.datetime64(end))
    keep = np.broadcast_to(keep, (n_s, n_q)).ravel()
    qe = np.broadcast_to(fd.quarter_ends, (n_s, n_q)).ravel()
    month = qe.astype("datetime64[M]").astype(np.int64) % 12
    accepted = _utc(_seconds(fd.filing.ravel()) + fd.accepted_s.ravel())
    base = pl.DataFrame(
        {
            "symbol": symbol_column(symbols, np.repeat(np.arange(n_s), n_q)),
            "date": pl.Series(qe).dt.strftime("%Y-%m-%d"),
            "period": pl.Series([f"Q{k}" for k in range(1, 5)]).gather(month // 3),
            "fiscalYear": pl.Series(qe.astype("datetime64[Y]").astype(np.int64) + 1970).cast(
                pl.String
            ),
        }
    )
    filing = pl.DataFrame(
        {
            "reportedCurrency": pl.repeat("USD", n_s * n_q, eager=True),
            "filingDate": pl.Series(fd.filing.ravel()).dt.strftime("%Y-%m-%d"),
            # accepted_s is a wall-clock time on the filing date, i.e. US Eastern local.
            "acceptedDate": accepted.dt.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    equity = fd.assets - fd.liabilities
    gross = fd.revenue - fd.cost_of_revenue
    annual_ni = 4 * fd.net_income

    def frame(head: pl.DataFrame, body: dict[str, Any]) -> list[dict[str, Any]]:
        return pl.concat([head, pl.DataFrame(body)], how="horizontal").filter(keep).to_dicts()

    statement_head = pl.concat([base, filing], how="horizontal")
    return {
        "income-statement": frame(
            statement_head,
            {
                "revenue": _round_int(fd.revenue),
                "costOfRevenue": _round_int(fd.cost_of_revenue),
                "grossProfit": _round_int(fd.revenue) - _round_int(fd.cost_of_revenue),
                "operatingIncome": _round_int(fd.operating_income),
                "netIncome": _round_int(fd.net_income),
                "eps": fd.eps.ravel(),
                "weightedAverageShsOut": _round_int(fd.shares),
            },
        ),
        "balance-sheet-statement": frame(
            statement_head,
            {
                "totalAssets": _round_int(fd.assets),
                "totalLiabilities": _round_int(fd.liabilities),
                "totalStockholdersEquity": _round_int(fd.assets) - _round_int(fd.liabilities),
                "totalDebt": _round_int(fd.debt),
                "cashAndCashEquivalents": _round_int(fd.cash),
            },
        ),
        "cash-flow-statement": frame(
            statement_head,
            {
                "operatingCashFlow": _round_int(fd.operating_cf),
                "capitalExpenditure": _round_int(fd.capex),
                "freeCashFlow": _round_int(fd.operating_cf) + _round_int(fd.capex),
            },
        ),
        "key-metrics": frame(
            base,
            {
                "marketCap": _round_int(fd.market_cap),
                "enterpriseValue": _round_int(fd.market_cap + fd.debt - fd.cash),
                "peRatio": np.round(fd.market_cap / annual_ni, 4).ravel(),
                "revenuePerShare": np.round(fd.revenue / fd.shares, 4).ravel(),
            },
        ),
        "ratios": frame(
            base,
            {
                "grossProfitMargin": np.round(gross / fd.revenue, 6).ravel(),
                "netProfitMargin": np.round(fd.net_income / fd.revenue, 6).ravel(),
                "returnOnEquity": np.round(fd.net_income / equity, 6).ravel(),
                "debtToAssetsRatio": np.round(fd.debt / fd.assets, 6).ravel(),
            },
        ),
    }


_MAX_SNAPSHOTS = 12


def _estimate_payloads(
    symbols: Sequence[str], traits: Traits, fd: _Fundamentals, start: date, end: date, seed: int
) -> list[dict[str, Any]]:
    n_s, n_q = fd.eps.shape
    shape = (n_s, n_q, _MAX_SNAPSHOTS)
    n_snap = np.empty((n_s, n_q), dtype=np.int64)
    gaps = np.empty(shape)
    z = np.empty((*shape, 6))
    err0 = np.empty((n_s, n_q, 2))
    for j, sym in enumerate(symbols):
        rng = rng_for(seed, S_EST, sym)
        n_snap[j] = rng.integers(8, 13, size=n_q)
        gaps[j] = 0.5 + rng.random((n_q, _MAX_SNAPSHOTS))
        rng.standard_normal(out=z[j])
        rng.standard_normal(out=err0[j])

    active = np.arange(_MAX_SNAPSHOTS) < n_snap[:, :, None]
    steps = np.where(active, gaps, 0.0)
    frac = np.cumsum(steps, axis=2) / steps.sum(axis=2, keepdims=True)  # last active == 1
    # Window: ~180 days before the period end until noon UTC on the filing day.
    w0 = _seconds(fd.quarter_ends)[None, :] - 180 * DAY_S
    w1 = _seconds(fd.filing) + 12 * 3600
    known = np.round(w0[:, :, None] + frac * (w1 - w0)[:, :, None]).astype(np.int64)

    actual = fd.eps[:, :, None]
    typical = np.maximum(np.abs(fd.eps).mean(axis=1, keepdims=True)[:, :, None], 0.05)
    scale = np.maximum(np.abs(actual), 0.5 * typical)
    # Brownian bridge on the snapshot times: a random walk pinned to the final miss.
    dfrac = np.diff(frac, axis=2, prepend=0.0)
    walk = np.cumsum(np.sqrt(dfrac) * z[..., 0] * active, axis=2)
    last = np.take_along_axis(walk, (n_snap - 1)[:, :, None], axis=2)
    bridge = walk - frac * last
    first_err = 0.25 * scale * err0[:, :, 0:1]
    final_err = 0.05 * scale * err0[:, :, 1:2]
    eps_avg = np.round(actual + first_err * (1 - frac) + final_err * frac + 0.1 * scale * bridge, 2)
    spread = scale * (0.03 + 0.15 * (1 - frac))
    eps_high = np.round(eps_avg + spread * np.abs(z[..., 1]), 2)
    eps_low = np.round(eps_avg - spread * np.abs(z[..., 2]), 2)
    rev_err = 0.04 * z[..., 3] * (1 - frac) + 0.01 * z[..., 4] * frac
    revenue_avg = np.round(fd.revenue[:, :, None] * np.exp(rev_err))

    base_n = np.clip(np.round(3 + 4 * np.log(traits.market_cap / 1e9)), 3, 40)
    n_eps = np.clip(base_n[:, None, None] + np.round(z[..., 5]), 1, 45).astype(np.int64)
    n_rev = np.maximum(n_eps - (np.abs(z[..., 5]) > 1), 1)

    lo, hi = _seconds(np.datetime64(start)), _seconds(np.datetime64(end) + 1)
    keep = (active & (known >= lo) & (known < hi)).ravel()
    qe = np.broadcast_to(fd.quarter_ends[None, :, None], shape).ravel()
    sym_idx = np.broadcast_to(np.arange(n_s)[:, None, None], shape).ravel()
    frame = pl.DataFrame(
        {
            "symbol": symbol_column(symbols, sym_idx[keep]),
            "date": pl.Series(qe[keep]).dt.strftime("%Y-%m-%d"),
            "period": pl.repeat("quarter", int(keep.sum()), eager=True),
            "epsAvg": eps_avg.ravel()[keep],
            "epsHigh": eps_high.ravel()[keep],
            "epsLow": eps_low.ravel()[keep],
            "revenueAvg": revenue_avg.astype(np.int64).ravel()[keep],
            "numAnalystsEps": n_eps.ravel()[keep],
            "numAnalystsRevenue": n_rev.ravel()[keep],
            "knownAt": _utc(known.ravel()[keep]).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    return frame.sort("symbol", "date", "knownAt").to_dicts()


_GRADES = ("F", "D", "C", "B", "A")  # score 1..5


_RECOMMENDATION = ("Strong Sell", "Sell", "Neutral", "Buy", "Strong Buy")


def _rating_payloads(
    symbols: Sequence[str], start: date, end: date, seed: int, calendar: Calendar
) -> list[dict[str, Any]]:
    months = np.arange(np.datetime64(start, "M"), np.datetime64(end, "M") + 1)
    days = calendar.sessions_on_or_after(months.astype("datetime64[D]"))
    days = days[(days >= np.datetime64(start)) & (days <= np.datetime64(end))]
    n_s, n_m = len(symbols), len(days)
    if n_m == 0 or n_s == 0:
        return []
    level = np.empty(n_s)
    shocks = np.empty((n_s, n_m))
    for j, sym in enumerate(symbols):
        rng = rng_for(seed, S_RATING, sym)
        level[j] = rng.standard_normal()
        rng.standard_normal(out=shocks[j])
    quality = 3.0 + 0.7 * level[:, None] + 0.6 * _ar1(shocks, 0.85)
    score = np.clip(np.round(quality), 1, 5).astype(np.int64)
    within = quality - score  # in [-0.5, 0.5] except beyond the end grades
    modifier = np.where(within > 1 / 6, "+", np.where(within < -1 / 6, "-", ""))
    modifier = np.where(score == 1, "", modifier)
    frame = pl.DataFrame(
        {
            "symbol": symbol_column(symbols, np.repeat(np.arange(n_s), n_m)),
            "date": pl.Series(np.tile(days, n_s)).dt.strftime("%Y-%m-%d"),
            "rating": pl.Series(np.char.add(np.array(_GRADES)[score - 1], modifier).ravel()),
            "ratingScore": score.ravel(),
            "ratingRecommendation": pl.Series(_RECOMMENDATION).gather(score.ravel() - 1),
        }
    )
    return frame.to_dicts()


_ROUTINE = (
    "{} shares rise after analyst upgrade",
    "{} shares slip as sector lags",
    "{} to present at industry conference",
    "{} declares quarterly dividend",
    "{} files routine 8-K",
    "{} reaffirms full-year outlook",
    "Options activity in {} near normal levels",
    "{} opens new regional office",
    "{} trading volume in line with average",
    "{} names new board member",
)


# (event, sign of its news): burst headlines repeat one event with varying framing.
_EVENTS = (
    ("{} receives takeover offer", 1),
    ("{} wins major government contract", 1),
    ("{} lead product approved by regulator", 1),
    ("{} raises guidance sharply", 1),
    ("{} discloses accounting investigation", -1),
    ("{} CEO resigns unexpectedly", -1),
    ("{} hit by cyberattack", -1),
    ("{} recalls flagship product", -1),
    ("{} cuts guidance sharply", -1),
)


_BURST_FRAMES = ("BREAKING: {}", "UPDATE: {}", "{} - analysts react", "Report: {}", "{}")


@dataclass(frozen=True)
class _News:
    symbol: np.ndarray  # int index per headline
    ts: np.ndarray  # int seconds UTC
    title: list[str]
    burst_symbol: np.ndarray
    burst_start: np.ndarray  # seconds UTC
    burst_end: np.ndarray
    burst_sign: np.ndarray


def _news(symbols: Sequence[str], start: date, end: date, seed: int, calendar: Calendar) -> _News:
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    day_s = _seconds(days)
    lam = np.where(calendar.sessions_mask(days), 0.3, 0.12)
    lo, hi = int(day_s[0]), int(day_s[-1]) + DAY_S
    years = len(days) / 365.25
    keys = ("sym", "ts", "title", "b_sym", "b_s", "b_e", "b_g")
    parts: dict[str, list[Any]] = {k: [] for k in keys}
    for j, sym in enumerate(symbols):
        rng = rng_for(seed, S_NEWS, sym)
        counts = rng.poisson(lam)
        ts = np.repeat(day_s, counts) + 10 * 3600 + rng.integers(0, 14 * 3600, counts.sum())
        titles = [_ROUTINE[k].format(sym) for k in rng.integers(0, len(_ROUTINE), len(ts))]

        n_bursts = rng.poisson(3.0 * years) if hi - lo > 3 * DAY_S else 0
        b_start = rng.integers(lo, hi - 2 * DAY_S, n_bursts)
        b_end = b_start + rng.integers(DAY_S, 2 * DAY_S + 1, n_bursts)
        b_event = rng.integers(0, len(_EVENTS), n_bursts)
        b_count = rng.integers(10, 41, n_bursts)
        # Front-loaded inside [start, end): most of a burst lands in its first hours.
        offsets = rng.random(b_count.sum()) ** 2 * np.repeat(b_end - b_start, b_count)
        b_ts = np.repeat(b_start, b_count) + offsets.astype(np.int64)
        frames = rng.integers(0, len(_BURST_FRAMES), len(b_ts))
        events = np.repeat(b_event, b_count)
        b_titles = [
            _BURST_FRAMES[f].format(_EVENTS[e][0].format(sym))
            for f, e in zip(frames, events, strict=True)
        ]
        parts["sym"].append(np.full(len(ts) + len(b_ts), j))
        parts["ts"].extend([ts, b_ts])
        parts["title"].extend([titles, b_titles])
        parts["b_sym"].append(np.full(n_bursts, j))
        parts["b_s"].append(b_start)
        parts["b_e"].append(b_end)
        parts["b_g"].append(np.array([_EVENTS[e][1] for e in b_event], dtype=np.int64))

    def cat(key: str) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.empty(0, dtype=np.int64)

    return _News(
        symbol=cat("sym"),
        ts=cat("ts"),
        title=[t for chunk in parts["title"] for t in chunk],
        burst_symbol=cat("b_sym"),
        burst_start=cat("b_s"),
        burst_end=cat("b_e"),
        burst_sign=cat("b_g"),
    )


def _news_payloads(symbols: Sequence[str], news: _News) -> list[dict[str, Any]]:
    sym = pl.Series(list(symbols), dtype=pl.String)
    frame = (
        pl.DataFrame(
            {
                "symbol": sym.gather(news.symbol),
                "_ts": _utc(news.ts),
                "title": pl.Series(news.title, dtype=pl.String),
            }
        )
        .sort("symbol", "_ts", "title", maintain_order=True)
        .with_columns(_seq=pl.int_range(pl.len()).over("symbol"))
    )
    return frame.select(
        "symbol",
        publishedDate=pl.col("_ts")
        .dt.convert_time_zone("America/New_York")
        .dt.strftime("%Y-%m-%d %H:%M:%S"),
        title="title",
        image=pl.lit(""),
        site=pl.lit("synthetic.example"),
        text=pl.concat_str(
            pl.col("title"),
            pl.lit(". Generated by the kronos synthetic source; it describes no real company."),
        ),
        url=pl.concat_str(
            pl.lit("https://synthetic.example/news/"),
            pl.col("symbol").str.to_lowercase(),
            pl.lit("-"),
            pl.col("_seq").cast(pl.String).str.zfill(7),
        ),
    ).to_dicts()


def _social(
    symbols: Sequence[str],
    traits: Traits,
    news: _News,
    days: np.ndarray,
    seed: int,
) -> pl.DataFrame:
    n_s, n_d = len(symbols), len(days)
    if n_s == 0 or n_d == 0:
        return empty_frame("social_features")
    ts = _seconds(days) + 21 * 3600
    # A day's window is (ts - 24h, ts]; flag windows that overlap a burst.
    lo = np.searchsorted(ts, news.burst_start, side="left")
    hi = np.searchsorted(ts - DAY_S, news.burst_end, side="left")
    flag = np.zeros((n_s, n_d + 1))
    sign = np.zeros((n_s, n_d + 1))
    np.add.at(flag, (news.burst_symbol, lo), 1.0)
    np.add.at(flag, (news.burst_symbol, hi), -1.0)
    np.add.at(sign, (news.burst_symbol, lo), news.burst_sign)
    np.add.at(sign, (news.burst_symbol, hi), -news.burst_sign)
    in_burst = np.cumsum(flag, axis=1)[:, :n_d] > 0.5
    burst_sign = np.sign(np.cumsum(sign, axis=1)[:, :n_d])

    rngs = [rng_for(seed, S_SOCIAL, sym) for sym in symbols]
    level = np.empty((n_s, 2))
    z = np.empty((n_s, n_d, 3))
    for j, rng in enumerate(rngs):
        rng.standard_normal(out=level[j])
        rng.standard_normal(out=z[j])
    base = 15.0 * np.exp(0.4 * level[:, 0]) * (traits.market_cap / 20e9) ** 0.3
    activity = np.exp(0.3 * _ar1(z[..., 0], 0.7))
    lam = base[:, None] * activity * np.where(in_burst, 6.0, 1.0)
    n_posts = np.stack([rng.poisson(row) for rng, row in zip(rngs, lam, strict=True)])
    senti = np.tanh(0.3 * level[:, 1:2] + 0.5 * _ar1(z[..., 1], 0.6) + 0.6 * burst_sign)
    senti_std = np.clip(0.4 + 0.08 * z[..., 2], 0.05, 1.0)
    n_flat = n_posts.ravel()
    frame = pl.DataFrame(
        {
            "symbol": symbol_column(symbols, np.repeat(np.arange(n_s), n_d)),
            "ts": _utc(np.tile(ts, n_s)),
            "n_posts": n_flat,
            "rate": n_flat.astype(np.float64),
            "senti_mean": np.where(n_flat > 0, senti.ravel(), np.nan),
            "senti_std": np.where(n_flat > 1, senti_std.ravel(), np.nan),
        }
    ).with_columns(
        available_at=pl.col("ts"),
        senti_mean=pl.col("senti_mean").fill_nan(None),
        senti_std=pl.col("senti_std").fill_nan(None),
        source=pl.lit(SOURCE),
    )
    spec = TABLES["social_features"]
    return frame.select(spec.columns).cast(spec.schema)


def _bursts_frame(symbols: Sequence[str], news: _News) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": symbol_column(symbols, news.burst_symbol),
            "start": _utc(news.burst_start),
            "end": _utc(news.burst_end),
        }
    ).sort("symbol", "start")


def synthetic_reference(
    symbols: list[str], start: date, end: date, seed: int, calendar: Calendar | None = None
) -> SyntheticReference:
    """FMP-shaped reference payloads and social features for ``symbols`` over [start, end].

    Filing, rating and social days are sessions of ``calendar`` (XNYS when None).
    """
    calendar = calendar or get_calendar()
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    traits = symbol_traits(symbols, seed)
    # Simulate beyond the window: estimates for quarters ending up to ~6 months
    # after ``end`` are already being revised inside it, and quarters ending
    # shortly before ``start`` are still awaiting their filing.
    qe = _quarter_ends(start - timedelta(days=70), end + timedelta(days=200))
    fd = _fundamentals(symbols, traits, qe, seed, calendar)
    news = _news(symbols, start, end, seed, calendar)
    payloads = _statement_payloads(symbols, fd, start, end)
    payloads["analyst-estimates"] = _estimate_payloads(symbols, traits, fd, start, end, seed)
    payloads["rating"] = _rating_payloads(symbols, start, end, seed, calendar)
    payloads["news"] = _news_payloads(symbols, news)
    return SyntheticReference(
        payloads=payloads,
        social=_social(symbols, traits, news, calendar.sessions_array(start, end), seed),
        news_bursts=_bursts_frame(symbols, news),
    )
