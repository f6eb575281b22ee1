"""Strategist (factor-aware ranking) and regime tuner (whitepaper sections 2.4 and 6).

Reads are split from computation: :func:`strategist_inputs` is the only function
here that reads the store (point in time, through :mod:`kronos.data.readers`);
:func:`standardize`, :func:`score`, :func:`recommendations`, :func:`regime` and
:func:`knob_rows` are pure functions of polars frames; :func:`write_recos` and
:func:`write_knobs` store the results. Settings come from
:class:`kronos.config.StrategySettings` (environment names ``STRAT_*``).

Rules
-----
- **Inputs** (one row per symbol, nulls where unknown at ``asof``): ``mom_s`` and
  ``mom_m`` are sums of the symbol's last ``STRAT_MOM_SHORT_DAYS`` /
  ``STRAT_MOM_MEDIUM_DAYS`` daily log returns up to the last session completed at
  ``asof`` (daily bars stand in for the whitepaper's intraday short horizon);
  ``mom_60`` is the same over 60 sessions (regime breadth). A horizon of ``n``
  sessions needs ``n`` returns within the last ``2n + 10`` calendar days, else it
  is null (too short or stale a history). Quality inputs ``z_roe .. z_rev``,
  ``market_cap`` (key metrics, else profile) come from ``fundamentals_factors_v1``;
  ``avg_dollar_vol_60d`` from the liquidity reader (the last session completed at
  ``asof``). ``revisions`` is ``z_rev_eps`` of ``fmp_revisions_cs``; where that
  is null, the same z-score computed locally from ``fmp_analyst_estimates``
  snapshots (relative change of the consensus EPS of the nearest fiscal period
  ending after ``asof`` over 30 days, z-scored over the cross-section, clipped to
  +/-3). ``rating = (ratingScore - 3) / 2`` in [-1, 1]; ``sentiment`` is the mean
  ``senti_mean`` of the last ``STRAT_SENTIMENT_DAYS`` calendar days.
- **Standardization**: cross-sectional z-scores (sample standard deviation,
  clipped to +/-3) of mom_s, mom_m, quality, sentiment, revisions and ratings,
  where quality is the mean of the available ``z_roe, z_roa, z_gm, -z_dta,
  z_rev``. Missing (or non-finite) inputs become 0 (neutral) and are listed in
  ``missing``; a factor with fewer than two values or no spread is 0 for all.
- **Blend** (:data:`BLEND`, exactly as published; the weights sum to 1.05):
  ``0.5 mom_s + 0.2 mom_m + 0.15 quality + 0.10 sentiment + 0.06 revisions +
  0.04 ratings``. Each term is a ``c_*`` column; ``score`` is their sum.
- **Tilts**: the whitepaper "adjusts score for Utilities/REITs in risk-on and
  Tech/Industrials in risk-off". We read it as a defensive/cyclical rotation:
  in risk-on the defensives (Utilities, Real Estate) lose ``STRAT_TILT``; in
  risk-off the cyclicals (Information Technology, Industrials) lose it
  (``c_tilt``). Nothing is tilted up.
- **Forecast**: ``forecast_z = p50 / ((p95 - p05) / 3.29)`` from the calibrated
  step-1 forecast (null without one, or with ``p95 <= p05``) is always output;
  with ``STRAT_FORECAST_IN_SCORE`` it adds ``STRAT_FORECAST_WEIGHT x forecast_z``
  (clipped to +/-3 like every other z) as ``c_forecast``; otherwise
  ``c_forecast = 0``.
- **Universe**: ``market_cap >= STRAT_MIN_MARKET_CAP`` and ``avg_dollar_vol_60d
  >= STRAT_MIN_DOLLAR_VOL`` (null fails); with ``STRAT_ENABLE_TURNAROUND`` also
  ``mom_m > 0`` and ``rev_eps_chg > 0`` (raw medium momentum and raw consensus
  EPS change: the price trend and the estimates both point up); optionally
  symbols blocked by circuit breakers. Excluded names stay with
  ``eligible = False`` and ``excluded_reason`` naming each failed rule and value.
- **Recommendations**: the top ``STRAT_RECO_TOPK`` eligible names by score (ties
  by symbol), ranked 1..K; side ``buy`` for a positive score, ``sell`` for a
  negative one and ``hold`` for exactly 0 (no direction at all). A sell only
  appears when fewer than K eligible names score above 0.
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
- **Timestamps**: rows are stamped with the market close of ``asof`` (UTC) for a
  date, or the given aware instant. Writers replace all rows of the stamped
  instants in one transaction, so re-running a day is idempotent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from kronos.config import DataSettings, StrategySettings
from kronos.data import readers
from kronos.data.readers import PointInTime
from kronos.data.store import Store
from kronos.features.regime import RegimeReading
from kronos.risk import session_close

BLEND: Mapping[str, float] = MappingProxyType(
    {
        "mom_s": 0.50,
        "mom_m": 0.20,
        "quality": 0.15,
        "sentiment": 0.10,
        "revisions": 0.06,
        "ratings": 0.04,
    }
)
"""Whitepaper blend weights by factor (read-only mapping; never renormalized)."""

# factor -> its raw input column (quality is built from QUALITY_SIGNS)
_RAW: Mapping[str, str] = MappingProxyType(
    {
        "mom_s": "mom_s",
        "mom_m": "mom_m",
        "quality": "quality_raw",
        "sentiment": "sentiment",
        "revisions": "revisions",
        "ratings": "rating",
    }
)
QUALITY_SIGNS: Mapping[str, float] = MappingProxyType(
    {
        "z_roe": 1.0,
        "z_roa": 1.0,
        "z_gm": 1.0,
        "z_dta": -1.0,  # leverage lowers quality
        "z_rev": 1.0,
    }
)
DEFENSIVE_SECTORS = frozenset({"Utilities", "Real Estate"})
CYCLICAL_SECTORS = frozenset({"Information Technology", "Technology", "Industrials"})
TILTED_DOWN: Mapping[str, frozenset[str]] = MappingProxyType(
    {"on": DEFENSIVE_SECTORS, "off": CYCLICAL_SECTORS}
)
Z_CLIP = 3.0
SIGMA_SPAN = 3.29  # p05..p95 spans 2 x 1.645 standard deviations
REVISION_LOOKBACK_DAYS = 30
REGIME_MOM_DAYS = 60
CONTRIBUTIONS = (*(f"c_{k}" for k in BLEND), "c_forecast", "c_tilt")
REFERENCE_READS = ("factors", "liquidity", "revisions", "estimates", "ratings", "social")
_REVISION_SCHEMA = {
    "symbol": pl.String(),
    "rev_eps_chg": pl.Float64(),
    "z_rev_eps": pl.Float64(),
}
_COMBINED_SCHEMA = {  # combine_revisions
    "symbol": pl.String(),
    "revisions": pl.Float64(),
    "rev_eps_chg": pl.Float64(),
    "rev_source": pl.String(),
}

INPUT_SCHEMA: Mapping[str, pl.DataType] = MappingProxyType(
    {
        "symbol": pl.String(),
        "sector": pl.String(),
        "market_cap": pl.Float64(),
        "avg_dollar_vol_60d": pl.Float64(),
        "mom_s": pl.Float64(),
        "mom_m": pl.Float64(),
        "mom_60": pl.Float64(),
        "z_roe": pl.Float64(),
        "z_roa": pl.Float64(),
        "z_gm": pl.Float64(),
        "z_dta": pl.Float64(),
        "z_rev": pl.Float64(),
        "revisions": pl.Float64(),
        "rev_eps_chg": pl.Float64(),
        "rev_source": pl.String(),
        "rating": pl.Float64(),
        "sentiment": pl.Float64(),
    }
)
RECO_SCHEMA: Mapping[str, pl.DataType] = MappingProxyType(
    {
        "asof": pl.Datetime("us", "UTC"),
        "symbol": pl.String(),
        "rank": pl.Int32(),
        "side": pl.String(),
        "score": pl.Float64(),
        "contributions": pl.String(),
        "run_id": pl.String(),
    }
)
KNOB_SCHEMA: Mapping[str, pl.DataType] = MappingProxyType(
    {
        "asof": pl.Datetime("us", "UTC"),
        "knob": pl.String(),
        "value": pl.String(),
        "reason": pl.String(),
        "run_id": pl.String(),
    }
)


# ---------------------------------------------------------------- reads


def _local_date(asof: readers.Asof, data_settings: DataSettings | None) -> date:
    """The market-local calendar date of ``asof``."""
    if isinstance(asof, datetime):
        tz = ZoneInfo((data_settings or DataSettings()).market_tz)
        return asof.astimezone(tz).date()
    return asof


def _momentum(rets: pl.DataFrame, last: date, horizons: Mapping[str, int]) -> pl.DataFrame:
    """Per symbol, for each ``name -> days`` of ``horizons``, its momentum (one pass).

    The sum of the symbol's last ``days`` log returns inside ``2 days + 10``
    calendar days; null with fewer.
    """
    sums = []
    for name, days in horizons.items():
        recent = pl.col("ts") >= last - timedelta(days=2 * days + 10)
        x = pl.col("log_ret").filter(recent)
        latest = x.sort_by(pl.col("ts").filter(recent)).tail(days).sum()
        sums.append(pl.when(x.count() >= days).then(latest).alias(name))
    return rets.group_by("symbol").agg(sums)


def local_revisions(now: pl.DataFrame, prev: pl.DataFrame, asof: date) -> pl.DataFrame:
    """EPS revisions computed from two estimate snapshots (fallback for ``fmp_revisions_cs``).

    ``now``/``prev``: ``readers.estimates`` at ``asof`` and 30 days earlier. For
    each symbol, the nearest fiscal period ending after ``asof`` with a consensus
    now; ``rev_eps_local = (eps_now - eps_prev) / max(|eps_prev|, 0.01)`` and its
    cross-sectional z-score ``z_rev_local`` (clipped to +/-3; null without spread).
    """
    key = ["symbol", "period_end", "period"]
    cur = (
        now.filter((pl.col("period_end") > asof) & pl.col("eps_avg").is_not_null())
        .sort(*key)
        .group_by("symbol", maintain_order=True)
        .first()
        .select(*key, eps_now=pl.col("eps_avg"))
    )
    old = prev.select(*key, eps_prev=pl.col("eps_avg"))
    chg = (pl.col("eps_now") - pl.col("eps_prev")) / pl.max_horizontal(
        pl.col("eps_prev").abs(), pl.lit(0.01)
    )
    out = cur.join(old, on=key, how="left").with_columns(rev_eps_local=chg)
    x = pl.col("rev_eps_local")
    sd = x.std()
    return out.with_columns(
        z_rev_local=pl.when(sd > 0).then(((x - x.mean()) / sd).clip(-Z_CLIP, Z_CLIP))
    ).select("symbol", "period_end", "eps_now", "eps_prev", "rev_eps_local", "z_rev_local")


def combine_revisions(view: pl.DataFrame, local: pl.DataFrame | None) -> pl.DataFrame:
    """``revisions``/``rev_eps_chg`` per symbol: ``fmp_revisions_cs`` first, else local.

    ``view``: symbol, rev_eps_chg, z_rev_eps; ``local``: :func:`local_revisions`.
    """
    base = view.select("symbol", "rev_eps_chg", "z_rev_eps")
    if local is None:
        local = pl.DataFrame(
            schema={
                "symbol": pl.String(),
                "rev_eps_local": pl.Float64(),
                "z_rev_local": pl.Float64(),
            }
        )
    merged = base.join(
        local.select("symbol", "rev_eps_local", "z_rev_local"),
        on="symbol",
        how="full",
        coalesce=True,
    )
    use_view = pl.col("z_rev_eps").is_not_null()
    use_local = pl.col("z_rev_local").is_not_null()
    return merged.select(
        "symbol",
        revisions=pl.when(use_view).then("z_rev_eps").otherwise("z_rev_local"),
        rev_eps_chg=pl.when(use_view)
        .then("rev_eps_chg")
        .when(use_local)
        .then("rev_eps_local")
        .otherwise(pl.coalesce("rev_eps_chg", "rev_eps_local")),
        rev_source=pl.when(use_view)
        .then(pl.lit("fmp_revisions_cs"))
        .when(use_local)
        .then(pl.lit("local_estimates")),
    )


@dataclass(frozen=True)
class Prefetched:
    """Reads a replay makes once, then slices point in time at each decision.

    ``profiles``: every profile row of the universe (with ``available_at``),
    kept sorted by symbol, newest first; ``returns``: ``symbol, ts, log_ret``
    over the whole history, kept sorted by ``ts`` (see :func:`prefetch`).
    Sliced, they equal the per-decision reads, except that a return after a
    trading halt longer than ``readers.RETURN_MARGIN_DAYS`` is present here and
    missing there.
    """

    profiles: pl.DataFrame
    returns: pl.DataFrame
    # the sort keys as arrays, so a decision slices without a polars sort or search
    _profile_symbols: np.ndarray = field(init=False, repr=False, compare=False)
    _profile_known: np.ndarray = field(init=False, repr=False, compare=False)
    _return_days: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        profiles = self.profiles.sort("symbol", "available_at", descending=[False, True])
        returns = self.returns.sort("ts", "symbol")
        known = profiles["available_at"]
        if known.dtype.time_zone is not None:  # type: ignore[union-attr]
            known = known.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        object.__setattr__(self, "profiles", profiles)
        object.__setattr__(self, "returns", returns)
        object.__setattr__(self, "_profile_symbols", profiles["symbol"].to_numpy())
        object.__setattr__(self, "_profile_known", known.cast(pl.Datetime("ns")).to_numpy())
        object.__setattr__(self, "_return_days", returns["ts"].to_numpy())

    def profiles_at(self, cutoff: datetime, symbols: Sequence[str] | None) -> pl.DataFrame:
        """The newest profile row of each symbol (of ``symbols``) known at ``cutoff``."""
        at = np.datetime64(cutoff.astimezone(UTC).replace(tzinfo=None), "ns")
        known = self._profile_known <= at
        if symbols is not None:
            wanted = set(symbols)
            known &= np.fromiter(
                (s in wanted for s in self._profile_symbols), bool, len(self._profile_symbols)
            )
        rows = np.flatnonzero(known)
        names = self._profile_symbols[rows]
        newest = np.ones(rows.size, dtype=bool)  # the first known row of each symbol
        newest[1:] = names[1:] != names[:-1]
        keep = np.zeros(known.size, dtype=bool)
        keep[rows[newest]] = True
        return self.profiles.filter(pl.Series(keep, dtype=pl.Boolean))

    def returns_between(self, first: date, last: date) -> pl.DataFrame:
        """Returns of sessions ``first..last`` (every symbol)."""
        lo = np.searchsorted(self._return_days, np.datetime64(first), side="left")
        hi = np.searchsorted(self._return_days, np.datetime64(last), side="right")
        return self.returns.slice(int(lo), int(hi - lo))


def prefetch(
    store: Store, symbols: Sequence[str], end: date, data_settings: DataSettings | None = None
) -> Prefetched:
    """The profile and return history of ``symbols`` known at ``end``."""
    return Prefetched(
        readers.profile_history(store, end, symbols, data_settings),
        readers.returns(store, end, symbols, settings=data_settings).select(
            "symbol", "ts", "log_ret"
        ),
    )


def _attach(
    out: pl.DataFrame, parts: Sequence[pl.DataFrame | Mapping[str, pl.DataType]]
) -> pl.DataFrame:
    """``out`` left-joined on symbol with each of ``parts``.

    A part without rows, or given as a schema (a skipped read), only adds its
    columns, null: a join costs far more than that on a small frame.
    """
    nulls = []
    for part in parts:
        if isinstance(part, pl.DataFrame) and part.height:
            out = out.join(part, on="symbol", how="left")
        else:
            schema = part.schema if isinstance(part, pl.DataFrame) else part
            nulls += [pl.lit(None, t).alias(c) for c, t in schema.items() if c != "symbol"]
    return out.with_columns(nulls) if nulls else out


def strategist_inputs(
    store: Store,
    asof: readers.Asof,
    symbols: Sequence[str] | None = None,
    settings: StrategySettings | None = None,
    *,
    data_settings: DataSettings | None = None,
    skip: Collection[str] = (),
    prefetched: Prefetched | None = None,
) -> pl.DataFrame:
    """Raw strategist inputs known at ``asof``: one row per symbol, :data:`INPUT_SCHEMA`.

    ``symbols=None`` takes every equity with a company profile known at ``asof``.
    ``skip`` names reference datasets (of :data:`REFERENCE_READS`) the caller
    knows hold no row for these symbols (a backtest checks once instead of
    querying them at every rebalance); their columns stay null. ``prefetched``
    replaces the profile and return reads by slices of histories read once.
    """
    unknown = set(skip) - set(REFERENCE_READS)
    if unknown:
        raise ValueError(f"unknown reference datasets to skip: {sorted(unknown)}")
    settings = settings or StrategySettings()
    pit = PointInTime.at(asof, data_settings)
    prof = (
        readers.profiles(store, asof, symbols, data_settings)
        if prefetched is None
        else prefetched.profiles_at(pit.cutoff, symbols)
    )
    if symbols is None:
        names = prof.filter(pl.col("asset_type") == "equity")["symbol"].to_list()
    else:
        names = list(dict.fromkeys(symbols))
    out = pl.DataFrame({"symbol": names}, schema={"symbol": pl.String()})

    horizons = {
        "mom_s": settings.strat_mom_short_days,
        "mom_m": settings.strat_mom_medium_days,
        "mom_60": REGIME_MOM_DAYS,
    }
    longest = max(horizons.values())
    first_day = pit.bar_date - timedelta(days=2 * longest + 10)
    if prefetched is None:
        rets = readers.returns(store, asof, names, start=first_day, settings=data_settings)
    else:
        # every symbol's window: the left join below keeps the names asked for
        rets = prefetched.returns_between(first_day, pit.bar_date)
    momentum = _momentum(rets.select("symbol", "ts", "log_ret"), pit.bar_date, horizons)

    # a skipped read is its schema: its columns stay null
    fac: pl.DataFrame | Mapping[str, pl.DataType] = {
        **{c: pl.Float64() for c in QUALITY_SIGNS},
        "f_sector": pl.String(),
        "f_cap": pl.Float64(),
    }
    if "factors" not in skip:
        fac = readers.factors(store, asof, names, data_settings).select(
            "symbol", *QUALITY_SIGNS, f_sector="sector", f_cap="market_cap"
        )
    liq: pl.DataFrame | Mapping[str, pl.DataType] = {"avg_dollar_vol_60d": pl.Float64()}
    if "liquidity" not in skip:
        liq = readers.liquidity(store, asof, names, data_settings).select(
            "symbol", "avg_dollar_vol_60d"
        )
    profile = prof.select("symbol", p_sector="sector", p_cap="market_cap")
    out = _attach(out, [momentum, profile, fac, liq]).with_columns(
        sector=pl.coalesce("p_sector", pl.when(pl.col("f_sector") != "Unknown").then("f_sector")),
        market_cap=pl.coalesce("f_cap", "p_cap"),
    )

    revisions: pl.DataFrame | Mapping[str, pl.DataType] = _COMBINED_SCHEMA
    view = None
    if "revisions" not in skip:
        view = readers.revisions(
            store, asof, None, lookback_days=REVISION_LOOKBACK_DAYS, settings=data_settings
        )
    local = None
    covered = (
        set()
        if view is None
        else set(view.filter(pl.col("z_rev_eps").is_not_null())["symbol"].to_list())
    )
    # only when some name lacks the view's revisions is the fallback needed
    if "estimates" not in skip and not set(names) <= covered:
        local = local_revisions(
            readers.estimates(store, asof, None, data_settings),
            readers.estimates(
                store, pit.cutoff - timedelta(days=REVISION_LOOKBACK_DAYS), None, data_settings
            ),
            _local_date(asof, data_settings),
        )
    if view is not None or local is not None:
        view = view if view is not None else pl.DataFrame(schema=_REVISION_SCHEMA)
        revisions = combine_revisions(view, local)

    rat: pl.DataFrame | Mapping[str, pl.DataType] = {"rating": pl.Float64()}
    if "ratings" not in skip:
        rat = readers.ratings(store, asof, names, data_settings).select(
            "symbol", rating=(pl.col("rating_score") - 3.0) / 2.0
        )
    since = pit.cutoff - timedelta(days=settings.strat_sentiment_days)
    soc: pl.DataFrame | Mapping[str, pl.DataType] = {"sentiment": pl.Float64()}
    if "social" not in skip:
        soc = (
            readers.social(store, asof, names, start=since.date(), settings=data_settings)
            .filter(pl.col("ts") > since)
            .group_by("symbol")
            .agg(sentiment=pl.col("senti_mean").mean())
        )
    out = _attach(out, [revisions, rat, soc])
    return out.select(pl.col(c).cast(t) for c, t in INPUT_SCHEMA.items()).sort("symbol")


# ---------------------------------------------------------------- pure scoring


def _finite(x: pl.Expr) -> pl.Expr:
    """``x`` with NaN and infinities turned into nulls."""
    return pl.when(x.is_finite()).then(x)


def _zscore(x: pl.Series) -> np.ndarray:
    """Cross-sectional z-score (sample sd) clipped to +/-3; nulls and no spread give 0.

    Computed as ``(x - mean) * (1 / sd)``: polars divides a column by a scalar
    that way, and the scores stay bit-identical to those it gave.
    """
    sd, mean = x.std(), x.mean()
    if not (isinstance(sd, float) and isinstance(mean, float) and sd > 0):
        return np.zeros(len(x))
    values = x.to_numpy()
    z = np.clip((values - mean) * (1.0 / sd), -Z_CLIP, Z_CLIP)
    return np.where(np.isnan(values), 0.0, z)


def _flags(unset: np.ndarray, names: Sequence[str]) -> pl.Series:
    """Per row of ``unset`` (rows x names), the comma-separated names whose flag is set."""
    bits = unset.astype(np.int64) @ (1 << np.arange(len(names), dtype=np.int64))
    patterns, row_pattern = np.unique(bits, return_inverse=True)
    text = [",".join(n for k, n in enumerate(names) if p >> k & 1) for p in patterns.tolist()]
    return pl.Series([text[k] for k in row_pattern.tolist()], dtype=pl.String())


def standardize(inputs: pl.DataFrame) -> pl.DataFrame:
    """``inputs`` plus ``quality_raw``, ``z_<factor>`` per factor of :data:`BLEND`, ``missing``.

    ``missing`` lists (comma-separated, in :data:`BLEND` order) the factors whose
    raw input was null or non-finite; their ``z_`` is 0.
    """
    raw = [*(c for c in _RAW.values() if c != "quality_raw"), *QUALITY_SIGNS]
    finite = {c: _finite(pl.col(c).cast(pl.Float64)) for c in raw}
    frame = inputs.with_columns(
        *(x.alias(c) for c, x in finite.items()),
        quality_raw=pl.mean_horizontal(sign * finite[c] for c, sign in QUALITY_SIGNS.items()),
    )
    # every raw input is null or finite now: NaN in its array marks a null
    unset = np.column_stack([np.isnan(frame[_RAW[k]].to_numpy()) for k in BLEND])
    return frame.with_columns(
        *(pl.Series(f"z_{k}", _zscore(frame[_RAW[k]])) for k in BLEND),
        missing=_flags(unset, list(BLEND)),
    )


def _forecast_z(forecasts: pl.DataFrame | None, symbols: pl.Series) -> pl.Series:
    """Per symbol of ``symbols``, ``p50 / ((p95 - p05) / 3.29)`` from step-1 forecasts.

    Null without a forecast, or where the width is <= 0.
    """
    if forecasts is None or forecasts.is_empty():
        return pl.Series("forecast_z", [None] * len(symbols), dtype=pl.Float64())
    if "step" in forecasts.columns:
        forecasts = forecasts.filter(pl.col("step") == 1)
    if forecasts["symbol"].n_unique() != forecasts.height:
        dup = sorted(set(forecasts.filter(pl.col("symbol").is_duplicated())["symbol"].to_list()))
        raise ValueError(f"one step-1 forecast per symbol expected; duplicated: {dup[:5]}")
    width = pl.col("p95") - pl.col("p05")
    z = _finite(pl.when(width > 0).then(pl.col("p50") / (width / SIGMA_SPAN)))
    by_symbol = dict(
        zip(
            forecasts["symbol"].to_list(),
            forecasts.select(z.cast(pl.Float64)).to_series().to_list(),
            strict=True,
        )
    )
    return pl.Series(
        "forecast_z", [by_symbol.get(x) for x in symbols.to_list()], dtype=pl.Float64()
    )


def _exclusions(settings: StrategySettings) -> list[pl.Expr]:
    """One string-or-null expression per universe rule on the inputs (breakers aside)."""
    cap, adv = pl.col("market_cap"), pl.col("avg_dollar_vol_60d")
    min_cap, min_adv = settings.strat_min_market_cap, settings.strat_min_dollar_vol
    # a filter set to 0 is off: a price-only source (no volume, no market cap)
    # then keeps its names instead of losing them all as "missing"
    rules = []
    if min_cap > 0:
        rules.append(
            pl.when(cap.is_null())
            .then(pl.lit("market_cap missing"))
            .when(cap < min_cap)
            .then(pl.format("market_cap {} < {}", cap, pl.lit(min_cap)))
        )
    if min_adv > 0:
        rules.append(
            pl.when(adv.is_null())
            .then(pl.lit("avg_dollar_vol_60d missing"))
            .when(adv < min_adv)
            .then(pl.format("avg_dollar_vol_60d {} < {}", adv, pl.lit(min_adv)))
        )
    if settings.strat_enable_turnaround:
        for col in ("mom_m", "rev_eps_chg"):
            x = pl.col(col)
            rules.append(
                pl.when(x.is_null())
                .then(pl.lit(f"turnaround: {col} missing"))
                .when(x <= 0)
                .then(pl.format(f"turnaround: {col} {{}} <= 0", x))
            )
    return rules


def score(
    features: pl.DataFrame,
    knobs: RegimeKnobs,
    settings: StrategySettings,
    forecasts: pl.DataFrame | None = None,
    *,
    blocked: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Blend, tilt and filter standardized ``features`` (see the module rules).

    Adds ``forecast_z``, the ``c_*`` contributions of :data:`CONTRIBUTIONS`,
    ``score`` (their sum), ``eligible`` and ``excluded_reason``; sorted by score
    (descending), then symbol. ``forecasts``: symbol, p05, p50, p95 (step 1; a
    ``step`` column is filtered to 1). ``blocked``: symbol -> breaker reason (as
    from :func:`kronos.risk.blocked_symbols`), excluded.
    """
    symbols = features["symbol"]
    if symbols.n_unique() != features.height:
        raise ValueError("features hold a symbol more than once")
    tilted = TILTED_DOWN[knobs.risk_regime]
    forecast_z = _forecast_z(forecasts, symbols)
    fz = pl.lit(forecast_z).clip(-Z_CLIP, Z_CLIP).fill_null(0.0)
    in_tilt = pl.Series([x in tilted for x in features["sector"].to_list()], dtype=pl.Boolean())
    use_forecast = settings.strat_forecast_in_score
    frame = features.with_columns(
        forecast_z,
        *((pl.lit(w, pl.Float64) * pl.col(f"z_{k}")).alias(f"c_{k}") for k, w in BLEND.items()),
        c_forecast=(settings.strat_forecast_weight * fz) if use_forecast else pl.lit(0.0),
        c_tilt=pl.when(pl.lit(in_tilt)).then(pl.lit(-settings.strat_tilt)).otherwise(pl.lit(0.0)),
    )
    # the rules on numbers format them in polars; a breaker's reason is plain text
    rules = _exclusions(settings)
    breaker = None
    if blocked:
        breaker = pl.Series(
            [f"breaker: {blocked[x]}" if x in blocked else None for x in symbols.to_list()],
            dtype=pl.String(),
        )
    if rules:
        joined = pl.concat_str(
            [*rules, *([pl.lit(breaker)] if breaker is not None else [])],
            separator="; ",
            ignore_nulls=True,
        )
        reason = pl.when(joined != "").then(joined)
    elif breaker is not None:
        reason = pl.lit(breaker)
    else:
        reason = pl.lit(None, pl.String)
    return frame.with_columns(
        score=pl.sum_horizontal(CONTRIBUTIONS),
        excluded_reason=reason,
        eligible=reason.is_null(),
    ).sort(["score", "symbol"], descending=[True, False], nulls_last=True)


def _stamp(asof: readers.Asof, data_settings: DataSettings | None) -> datetime:
    """The instant rows for ``asof`` carry: market close of a date, or the aware instant."""
    if isinstance(asof, datetime):
        if asof.tzinfo is None:
            raise ValueError(f"asof {asof} is a naive datetime; give a time zone or a date")
        return asof.astimezone(UTC)
    return session_close(asof, data_settings)


def recommendations(
    scored: pl.DataFrame,
    asof: readers.Asof,
    settings: StrategySettings,
    run_id: str | None = None,
    *,
    data_settings: DataSettings | None = None,
) -> pl.DataFrame:
    """The top ``strat_reco_topk`` eligible names as ``strategist_recos`` rows.

    ``contributions`` is a JSON object of the ``c_*`` columns.
    """
    top = (
        scored.filter(pl.col("eligible"))
        .sort(["score", "symbol"], descending=[True, False])
        .head(settings.strat_reco_topk)
    )
    s = pl.col("score")
    return top.select(
        asof=pl.lit(_stamp(asof, data_settings), dtype=RECO_SCHEMA["asof"]),
        symbol="symbol",
        rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32),
        side=pl.when(s > 0)
        .then(pl.lit("buy"))
        .when(s < 0)
        .then(pl.lit("sell"))
        .otherwise(pl.lit("hold")),
        score=s,
        contributions=pl.struct(CONTRIBUTIONS).struct.json_encode(),
        run_id=pl.lit(run_id, dtype=pl.String),
    ).cast(dict(RECO_SCHEMA))


# ---------------------------------------------------------------- regime tuner


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
    data_settings: DataSettings | None = None,
) -> pl.DataFrame:
    """``policy_knobs`` rows: risk_regime, threshold_bps, breadth, median_z_rev, p_turbulent."""
    values = {
        "risk_regime": knobs.risk_regime,
        "threshold_bps": _knob_value(knobs.threshold_bps),
        "breadth": _knob_value(knobs.breadth),
        "median_z_rev": _knob_value(knobs.median_z_rev),
        "p_turbulent": _knob_value(knobs.p_turbulent),
    }
    stamp = _stamp(asof, data_settings)
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


# ---------------------------------------------------------------- writers


def _replace(
    store: Store,
    table: str,
    rows: pl.DataFrame,
    schema: Mapping[str, pl.DataType],
    asof: readers.Asof | None,
    data_settings: DataSettings | None,
) -> int:
    """Replace every row of ``table`` stamped with an instant of ``rows`` (and ``asof``)."""
    missing = [c for c in schema if c not in rows.columns]
    if missing:
        raise ValueError(f"{table} rows lack columns {missing}")
    rows = rows.select(pl.col(c).cast(t) for c, t in schema.items())
    stamps = set(rows["asof"].unique().to_list())
    if asof is not None:
        stamps.add(_stamp(asof, data_settings))
    if not stamps:
        return 0
    cols = ", ".join(f'"{c}"' for c in schema)
    # Registered outside the transaction: unregistering inside an aborted one would fail
    # and hide the original error.
    store.con.register("_strategy_rows", rows.to_arrow())
    try:
        with store.transaction() as con:
            con.execute(
                f'DELETE FROM {table} WHERE "asof" IN (SELECT unnest(?::TIMESTAMPTZ[]))',
                [sorted(stamps)],
            )
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _strategy_rows")
    finally:
        store.con.unregister("_strategy_rows")
    return rows.height


def write_recos(
    store: Store,
    recos: pl.DataFrame,
    *,
    asof: readers.Asof | None = None,
    data_settings: DataSettings | None = None,
) -> int:
    """Store recommendations, replacing those of the same ``asof`` stamps; returns rows written.

    Give ``asof`` to clear that day even when ``recos`` is empty.
    """
    return _replace(store, "strategist_recos", recos, RECO_SCHEMA, asof, data_settings)


def write_knobs(
    store: Store,
    rows: pl.DataFrame,
    *,
    asof: readers.Asof | None = None,
    data_settings: DataSettings | None = None,
) -> int:
    """Store ``policy_knobs`` rows, replacing those of the same ``asof`` stamps; returns rows."""
    return _replace(store, "policy_knobs", rows, KNOB_SCHEMA, asof, data_settings)
