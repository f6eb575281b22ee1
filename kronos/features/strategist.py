"""Strategist inputs: the store reads behind the ranking (point in time).

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
- **Custom factors** (``STRAT_FACTORS``, ``decision.strategy.factors``): one
  column per factor with a ``fn`` and a non-zero weight, named as the factor,
  holding the ``value`` its function returned for the symbol (null where it
  returned none). The function is called as ``fn(store, asof, symbols)`` with the
  asof of the decision; it must read only what was known then (the store's
  readers take ``asof``): a look-ahead inside it is not detected here.

The scoring of these inputs is :mod:`kronos.decision.strategist`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType

import numpy as np
import polars as pl

from kronos.config import DataSettings, FactorSpec, StrategySettings
from kronos.data import readers
from kronos.data.readers import PointInTime
from kronos.data.store import Store
from kronos.errors import ConfigError, InputError
from kronos.plugins import resolve

Z_CLIP = 3.0
QUALITY_SIGNS: Mapping[str, float] = MappingProxyType(
    {
        "z_roe": 1.0,
        "z_roa": 1.0,
        "z_gm": 1.0,
        "z_dta": -1.0,  # leverage lowers quality
        "z_rev": 1.0,
    }
)
REVISION_LOOKBACK_DAYS = 30


REGIME_MOM_DAYS = 60


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
    store: Store, symbols: Sequence[str], end: date, data_settings: DataSettings
) -> Prefetched:
    """The profile and return history of ``symbols`` known at ``end``."""
    return Prefetched(
        readers.profile_history(store, end, symbols, settings=data_settings),
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
    *,
    settings: StrategySettings,
    data_settings: DataSettings,
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
    pit = PointInTime.at(asof, data_settings)
    prof = (
        readers.profiles(store, asof, symbols, settings=data_settings)
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
        fac = readers.factors(store, asof, names, settings=data_settings).select(
            "symbol", *QUALITY_SIGNS, f_sector="sector", f_cap="market_cap"
        )
    liq: pl.DataFrame | Mapping[str, pl.DataType] = {"avg_dollar_vol_60d": pl.Float64()}
    if "liquidity" not in skip:
        liq = readers.liquidity(store, asof, names, settings=data_settings).select(
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
            readers.estimates(store, asof, None, settings=data_settings),
            readers.estimates(
                store,
                pit.cutoff - timedelta(days=REVISION_LOOKBACK_DAYS),
                None,
                settings=data_settings,
            ),
            pit.day,
        )
    if view is not None or local is not None:
        view = view if view is not None else pl.DataFrame(schema=_REVISION_SCHEMA)
        revisions = combine_revisions(view, local)

    rat: pl.DataFrame | Mapping[str, pl.DataType] = {"rating": pl.Float64()}
    if "ratings" not in skip:
        rat = readers.ratings(store, asof, names, settings=data_settings).select(
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
    out = out.select(pl.col(c).cast(t) for c, t in INPUT_SCHEMA.items())
    custom = [
        custom_factor(store, asof, names, name, spec)
        for name, spec in settings.custom_factors().items()
    ]
    return _attach(out, custom).sort("symbol")


def custom_factor(
    store: Store, asof: readers.Asof, symbols: Sequence[str], name: str, spec: FactorSpec
) -> pl.DataFrame:
    """``symbol, <name>``: the factor ``spec.fn`` computed at ``asof`` for ``symbols``, checked.

    The function (an import path or a ``kronos.factors`` entry point) is called
    as ``fn(store, asof, symbols)`` and must return a polars frame with columns
    ``symbol`` (string) and ``value`` (castable to float), at most one row per
    symbol and no symbol it was not asked for; nulls and NaN are allowed (the
    factor is then missing for that name). Anything else is an
    :class:`~kronos.errors.InputError` naming the factor, its import path and ``asof``.
    """
    if spec.fn is None:
        raise ConfigError(f"factor {name!r} has no fn")
    fn, path = resolve(spec.fn, {}, "kronos.factors")
    where = f"factor {name!r} ({path}) at asof {asof}"
    if not callable(fn):
        raise ConfigError(f"{where}: {path} is a {type(fn).__name__}, not a function")
    try:
        frame = fn(store, asof, list(symbols))
    except Exception as exc:  # the researcher's code: name it, keep the cause
        raise InputError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(frame, pl.DataFrame):
        raise InputError(
            f"{where} returned a {type(frame).__name__}; expected a polars DataFrame "
            "with columns symbol, value"
        )
    absent = [c for c in ("symbol", "value") if c not in frame.columns]
    if absent:
        raise InputError(
            f"{where}: no column {', '.join(map(repr, absent))} in its frame "
            f"(columns {frame.columns}); expected symbol, value"
        )
    try:
        frame = frame.select(
            pl.col("symbol").cast(pl.String, strict=True),
            pl.col("value").cast(pl.Float64, strict=True).alias(name),
        )
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        dtypes = dict(zip(frame.columns, map(str, frame.dtypes), strict=True))
        raise InputError(
            f"{where}: symbol must be a string and value a number, got "
            f"symbol {dtypes['symbol']}, value {dtypes['value']} ({type(exc).__name__})"
        ) from None
    sym = frame["symbol"]
    if sym.null_count():
        raise InputError(f"{where}: {sym.null_count()} row(s) without a symbol")
    if sym.n_unique() != frame.height:
        dup = sorted(set(sym.filter(sym.is_duplicated()).to_list()))
        raise InputError(f"{where}: more than one row for {', '.join(dup[:5])}")
    asked = set(symbols)
    extra = sorted(x for x in sym.to_list() if x not in asked)
    if extra:
        raise InputError(
            f"{where}: {len(extra)} symbol(s) it was not asked for: {', '.join(extra[:5])}"
        )
    return frame
