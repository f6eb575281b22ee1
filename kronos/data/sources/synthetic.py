"""Synthetic market and reference data, labelled ``source="synthetic"``.

Everything here is a pure function of its arguments: randomness comes from
``numpy.random.default_rng`` generators seeded from ``(seed, stream, key)``,
where ``stream`` names the component (traits, price path, news, ...) and
``key`` is a stable hash of the symbol string. A symbol's traits and paths are
therefore the same whichever other symbols are generated with it and however
they are batched, and its sector in :func:`synthetic_profiles` is the one its
bars are driven by.

Price model (daily log returns, one row per exchange session)::

    r[t, i] = beta_m[i] * m[t] + beta_s[i] * s[t, sector(i)] + mu[i] + e[t, i] + J[t, i]

* ``m`` is a market factor whose drift and volatility follow a 2-state Markov
  regime: calm (positive drift, low vol) and turbulent (negative drift, ~2.5x
  vol); regimes last months on average.
* ``s`` holds one factor per GICS sector, a little more volatile when turbulent.
* ``e`` is idiosyncratic GARCH(1,1): ``h[t] = omega + alpha e[t-1]^2 + beta h[t-1]``.
* ``J`` are Poisson jumps (1-2 a year, size N(0, 8%)); ``r`` is clipped to +/-0.25.

Factor paths depend only on ``seed`` and the number of days; every random
array is drawn day-major, so extending ``years`` leaves the earlier history
unchanged. Synthetic names have no corporate actions: ``adj_close == close``.

Days are sessions of an exchange calendar (:mod:`kronos.calendar`, XNYS unless
one is passed): bars, filing days, rating days and daily social aggregates
fall on sessions; news flows every day, thinner when the exchange is closed.

Reference data (fundamentals, estimates, ratings, news, social) is
:mod:`kronos.data.sources.synthetic_reference`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from statistics import NormalDist

import numpy as np
import polars as pl

from kronos.calendar import Calendar, get_calendar
from kronos.data.schema import TABLES, empty_frame
from kronos.errors import InputError

SOURCE = "synthetic"


SECTORS: tuple[str, ...] = (
    "Information Technology",
    "Health Care",
    "Financials",
    "Consumer Discretionary",
    "Communication Services",
    "Industrials",
    "Consumer Staples",
    "Energy",
    "Utilities",
    "Real Estate",
    "Materials",
)


# Roughly the sector mix of a broad US index.
_SECTOR_WEIGHTS = (14, 13, 13, 11, 6, 14, 6, 5, 5, 6, 7)


_INDUSTRIES: tuple[tuple[str, ...], ...] = (
    ("Software", "Semiconductors", "IT Services", "Hardware"),
    ("Biotechnology", "Pharmaceuticals", "Medical Devices", "Health Care Providers"),
    ("Banks", "Insurance", "Capital Markets", "Consumer Finance"),
    ("Retail", "Automobiles", "Hotels & Leisure", "Apparel"),
    ("Media", "Telecom Services", "Interactive Media", "Entertainment"),
    ("Aerospace & Defense", "Machinery", "Transportation", "Building Products"),
    ("Food Products", "Beverages", "Household Products", "Food Retail"),
    ("Oil & Gas Producers", "Oil Services", "Refining", "Integrated Oil"),
    ("Electric Utilities", "Gas Utilities", "Water Utilities", "Multi-Utilities"),
    ("REITs", "Real Estate Services", "Residential REITs", "Industrial REITs"),
    ("Chemicals", "Metals & Mining", "Construction Materials", "Packaging"),
)


# RNG stream tags: each component draws from its own seed sequence.
_S_TRAITS, _S_PATH, _S_MARKET, _S_REGIME = 1, 2, 3, 4


S_FUND, S_EST, S_RATING, S_NEWS, S_SOCIAL = 5, 6, 7, 8, 9


# Market regime model: index 0 = calm, 1 = turbulent.
# Mean stays ~6 months calm, ~2 months turbulent (27% of days); the long-run
# market drift is ~6% a year.
_P_LEAVE = (1 / 120, 1 / 45)


_MKT_DRIFT = (0.0007, -0.0010)


_MKT_VOL = (0.008, 0.020)


_SECTOR_VOL = (0.006, 0.009)


_JUMP_SIZE = 0.08


_RET_CLIP = 0.25


_TURNOVER = 0.005


_DAYS_PER_YEAR = 252


# Standard-normal draws per symbol and day, in this order.
_Z_EPS, _Z_JUMP, _Z_JSIZE, _Z_GAP, _Z_HIGH, _Z_LOW, _Z_VOL = range(7)


_N_DRAWS = 7


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


DAY_S = 86_400


def synthetic_symbols(n: int) -> list[str]:
    """Tickers ``SYN0001 .. SYNn``, zero-padded to 4 digits (more if ``n > 9999``)."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    width = max(4, len(str(n)))
    return [f"SYN{i:0{width}d}" for i in range(1, n + 1)]


def _symbol_key(symbol: str) -> int:
    """Hash ``symbol`` to a stable 64-bit integer (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(symbol.encode(), digest_size=8).digest(), "little")


def symbol_column(symbols: Sequence[str], index: np.ndarray) -> pl.Series:
    """Gather ``symbols`` by integer ``index`` into a String series."""
    return pl.Series("symbol", list(symbols), dtype=pl.String).gather(index)


def rng_for(seed: int, stream: int, symbol: str | None = None) -> np.random.Generator:
    """The generator of component ``stream`` (and ``symbol``) under ``seed``."""
    entropy = [seed, stream] if symbol is None else [seed, stream, _symbol_key(symbol)]
    return np.random.default_rng(entropy)


@dataclass(frozen=True)
class Traits:
    """Static per-symbol parameters, one array entry per symbol."""

    sector: np.ndarray  # index into SECTORS
    industry: np.ndarray  # index into _INDUSTRIES[sector]
    market_cap: np.ndarray
    price0: np.ndarray
    beta_market: np.ndarray
    beta_sector: np.ndarray
    drift: np.ndarray
    idio_vol: np.ndarray
    garch_alpha: np.ndarray
    garch_beta: np.ndarray
    jump_threshold: np.ndarray  # a N(0,1) draw above this is a jump day
    turnover: np.ndarray

    @property
    def shares(self) -> np.ndarray:
        """Shares outstanding: market cap at the first price."""
        return self.market_cap / self.price0

    def take(self, sl: slice) -> Traits:
        """Select the traits of a contiguous run of symbols."""
        return Traits(**{f.name: getattr(self, f.name)[sl] for f in fields(self)})


def symbol_traits(symbols: Sequence[str], seed: int) -> Traits:
    """Each symbol's sector, betas, drift and GARCH traits (drawn per symbol)."""
    n = len(symbols)
    u = np.empty((n, 6))
    z = np.empty((n, 6))
    for j, sym in enumerate(symbols):
        rng = rng_for(seed, _S_TRAITS, sym)
        rng.random(out=u[j])
        rng.standard_normal(out=z[j])
    cum = np.cumsum(_SECTOR_WEIGHTS) / sum(_SECTOR_WEIGHTS)
    sector = np.minimum(np.searchsorted(cum, u[:, 0], side="right"), len(SECTORS) - 1)
    alpha = 0.06 + 0.04 * u[:, 3]
    beta = np.minimum(0.86 + 0.06 * u[:, 4], 0.985 - alpha)
    jump_rate = (1.0 + u[:, 5]) / _DAYS_PER_YEAR  # 1-2 jumps a year
    inv = NormalDist().inv_cdf
    return Traits(
        sector=sector,
        industry=np.floor(u[:, 1] * 4).astype(np.int64),
        # median $20B; clipped so the cross-section spans ~$1B..$2T
        market_cap=np.clip(20e9 * np.exp(1.3 * z[:, 0]), 1e9, 2e12),
        price0=50.0 * np.exp(0.5 * z[:, 1]),
        beta_market=np.clip(1.0 + 0.25 * z[:, 2], 0.5, 1.8),
        beta_sector=0.5 + u[:, 2],
        drift=0.02 / _DAYS_PER_YEAR * z[:, 3],
        idio_vol=np.clip(0.0165 * np.exp(0.2 * z[:, 4]), 0.011, 0.025),
        garch_alpha=alpha,
        garch_beta=beta,
        jump_threshold=np.array([inv(1.0 - p) for p in jump_rate]),
        turnover=_TURNOVER * np.exp(0.3 * z[:, 5]),
    )


def synthetic_profiles(symbols: list[str], seed: int) -> pl.DataFrame:
    """Company profiles (``dim_company_profile``) for ``symbols``; sectors match the bars."""
    t = symbol_traits(symbols, seed)
    names = [f"Synthetic Co {s[3:] if s.startswith('SYN') else s}" for s in symbols]
    return pl.DataFrame(
        {
            "symbol": symbols,
            "available_at": [_EPOCH] * len(symbols),
            "name": names,
            "asset_type": "equity",
            "sector": [SECTORS[k] for k in t.sector],
            "industry": [_INDUSTRIES[s][k] for s, k in zip(t.sector, t.industry, strict=True)],
            "exchange": "SYN",
            "currency": "USD",
            "market_cap": t.market_cap,
            "source": SOURCE,
        },
        schema=TABLES["dim_company_profile"].schema,
    )


@dataclass(frozen=True)
class _Factors:
    market: np.ndarray  # (days,)
    sector: np.ndarray  # (days, len(SECTORS))


def _regimes(seed: int, n_days: int) -> np.ndarray:
    """Markov regime path from alternating geometric sojourns, starting calm."""
    # Row-major (n_days, 2) draws: a longer horizon only appends sojourns.
    stays = rng_for(seed, _S_REGIME).geometric(_P_LEAVE, size=(max(n_days, 1), 2))
    states = np.tile(np.array([False, True]), stays.shape[0])
    return np.repeat(states, stays.ravel())[:n_days]


def _factor_paths(seed: int, n_days: int) -> _Factors:
    turbulent = _regimes(seed, n_days)
    state = turbulent.astype(np.int64)
    z = rng_for(seed, _S_MARKET).standard_normal((n_days, 1 + len(SECTORS)))
    market = np.asarray(_MKT_DRIFT)[state] + np.asarray(_MKT_VOL)[state] * z[:, 0]
    sector = np.asarray(_SECTOR_VOL)[state][:, None] * z[:, 1:]
    return _Factors(market=market, sector=sector)


def _garch(
    z: np.ndarray, omega: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) residuals and variances for standardised shocks ``z`` (days, symbols)."""
    eps = np.empty_like(z)
    var = np.empty_like(z)
    h = omega / (1.0 - alpha - beta)
    for t in range(z.shape[0]):
        var[t] = h
        np.sqrt(h, out=eps[t])
        eps[t] *= z[t]
        h = omega + alpha * eps[t] * eps[t] + beta * h
    return eps, var


def _bars_batch(
    symbols: Sequence[str], t: Traits, f: _Factors, days: np.ndarray, seed: int
) -> pl.DataFrame:
    b, n = len(symbols), len(days)
    draws = np.empty((b, n, _N_DRAWS))
    for j, sym in enumerate(symbols):
        rng_for(seed, _S_PATH, sym).standard_normal(out=draws[j])

    omega = t.idio_vol**2 * (1.0 - t.garch_alpha - t.garch_beta)
    eps, var = _garch(
        np.ascontiguousarray(draws[:, :, _Z_EPS].T), omega, t.garch_alpha, t.garch_beta
    )
    eps, sd = eps.T, np.sqrt(var.T)

    jumps = np.where(
        draws[:, :, _Z_JUMP] > t.jump_threshold[:, None], _JUMP_SIZE * draws[:, :, _Z_JSIZE], 0.0
    )
    r = (
        t.beta_market[:, None] * f.market[None, :]
        + t.beta_sector[:, None] * f.sector[:, t.sector].T
        + t.drift[:, None]
        + eps
        + jumps
    )
    np.clip(r, -_RET_CLIP, _RET_CLIP, out=r)

    log_close = np.log(t.price0)[:, None] + np.cumsum(r, axis=1)
    log_prev = np.concatenate([np.log(t.price0)[:, None], log_close[:, :-1]], axis=1)
    close = np.exp(log_close)
    # The open carries part of the day's move (overnight news) plus noise.
    open_ = np.exp(log_prev + 0.3 * r + 0.003 * draws[:, :, _Z_GAP])
    high = np.maximum(open_, close) * np.exp(0.5 * sd * np.abs(draws[:, :, _Z_HIGH]))
    low = np.minimum(open_, close) * np.exp(-0.5 * sd * np.abs(draws[:, :, _Z_LOW]))
    # Shares traded ~ shares * turnover, so close*volume ~ market cap * turnover;
    # busier on big-move days (the factor averages ~1 at typical |r|).
    volume = (t.shares * t.turnover)[:, None] * np.exp(0.4 * draws[:, :, _Z_VOL] - 0.08)
    volume *= 0.75 + 12.0 * np.abs(r)
    volume = np.maximum(np.round(volume), 1.0)

    return pl.DataFrame(
        {
            "symbol": symbol_column(symbols, np.repeat(np.arange(b), n)),
            "ts": np.tile(days, b),
            "open": open_.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "adj_close": close.ravel(),
            "volume": volume.ravel(),
            "source": pl.repeat(SOURCE, b * n, eager=True),
        }
    ).cast(TABLES["bars"].schema)


def iter_synthetic_bars(
    n_symbols: int,
    years: float,
    seed: int,
    start: date = date(2000, 1, 3),
    batch_symbols: int = 250,
    calendar: Calendar | None = None,
) -> Iterator[pl.DataFrame]:
    """Yield ``bars`` frames for ``SYN0001..`` in batches of consecutive symbols.

    Each frame is sorted by (symbol, ts) and covers ``round(years * 252)``
    sessions of ``calendar`` (XNYS when None) from ``start``. Memory is bounded
    by ``batch_symbols`` x days.
    """
    if n_symbols < 0 or years < 0 or batch_symbols < 1:
        raise InputError(
            "need n_symbols >= 0, years >= 0, batch_symbols >= 1; "
            f"got {n_symbols}, {years}, {batch_symbols}"
        )
    n_days = round(years * _DAYS_PER_YEAR)
    days = (calendar or get_calendar()).first_sessions(start, n_days)
    return _iter_bars(n_symbols, seed, days, batch_symbols)


def _iter_bars(
    n_symbols: int, seed: int, days: np.ndarray, batch_symbols: int
) -> Iterator[pl.DataFrame]:
    n_days = len(days)
    if n_days == 0:
        return
    symbols = synthetic_symbols(n_symbols)
    factors = _factor_paths(seed, n_days)
    traits = symbol_traits(symbols, seed)
    for lo in range(0, n_symbols, batch_symbols):
        sl = slice(lo, lo + batch_symbols)
        yield _bars_batch(symbols[sl], traits.take(sl), factors, days, seed)


def synthetic_bars(
    n_symbols: int,
    years: float,
    seed: int,
    start: date = date(2000, 1, 3),
    calendar: Calendar | None = None,
) -> pl.DataFrame:
    """All batches of :func:`iter_synthetic_bars` in one frame."""
    frames = list(iter_synthetic_bars(n_symbols, years, seed, start, calendar=calendar))
    return pl.concat(frames) if frames else empty_frame("bars")
