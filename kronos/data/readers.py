"""Point-in-time readers. Every read takes ``asof`` and sees only what was known then.

``asof`` is a date or a time-zone-aware datetime. A date means the end of that
day in the market's time zone. A daily bar becomes known at the close of its
session (the exchange calendar's, early closes included); reference rows at
their ``available_at``. All readers return polars frames in long format,
sorted by symbol and time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from kronos.calendar import get_calendar
from kronos.config import DataSettings
from kronos.data.store import Store
from kronos.errors import ConfigError

Asof = date | datetime


@dataclass(frozen=True)
class PointInTime:
    """The instant a read is made at, and the last daily bar complete by then."""

    cutoff: datetime  # UTC
    bar_date: date
    day: date  # the market-local calendar date of the instant

    @classmethod
    def at(cls, asof: Asof, settings: DataSettings) -> PointInTime:
        """Resolve ``asof`` against the market's time zone and close."""
        tz = ZoneInfo(settings.market_tz)
        if isinstance(asof, datetime):
            if asof.tzinfo is None:
                raise ValueError(f"asof {asof} is a naive datetime; give a time zone or a date")
            local = asof.astimezone(tz)
        elif isinstance(asof, date):
            local = datetime.combine(asof + timedelta(days=1), time(), tz) - timedelta(
                microseconds=1
            )
        else:
            raise TypeError(f"asof must be a date or datetime, not {type(asof).__name__}")
        cutoff = local.astimezone(ZoneInfo("UTC"))
        day = local.date()
        close = get_calendar(settings.calendar).close_if_session(day)
        if close is None:  # no session that day: the configured close
            known = local.time() >= time.fromisoformat(settings.market_close)
        else:
            known = cutoff >= close
        return cls(cutoff, day if known else day - timedelta(days=1), day)


def _symbol_filter(symbols: Sequence[str] | None, column: str = "symbol") -> tuple[str, list]:
    if symbols is None:
        return "", []
    return f" AND {column} IN (SELECT unnest(?::VARCHAR[]))", [list(symbols)]


def _query(store: Store, sql: str, params: list) -> pl.DataFrame:
    return store.con.sql(sql, params=params).pl()


def prices(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    start: date | None = None,
    end: date | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Daily bars known at ``asof`` (``ts`` up to the last completed session)."""
    pit = PointInTime.at(asof, settings)
    last = min(pit.bar_date, end) if end else pit.bar_date
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        f"SELECT * FROM bars WHERE ts <= ? AND ts >= ?{where} ORDER BY symbol, ts",
        [last, start or date(1, 1, 1), *params],
    )


RETURN_MARGIN_DAYS = 31  # bars read before ``start`` so its first return has its previous close
LIQUIDITY_SPAN_DAYS = 180  # the 60 sessions must all fall within this many calendar days


def returns(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    start: date | None = None,
    end: date | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Close-to-close returns on adjusted closes (``ret``, ``log_ret``) known at ``asof``.

    With ``start``, only bars from ``RETURN_MARGIN_DAYS`` before it are read
    (the first return after a longer trading halt is then missing).
    """
    pit = PointInTime.at(asof, settings)
    last = min(pit.bar_date, end) if end else pit.bar_date
    where, params = _symbol_filter(symbols)
    if start is None:
        return _query(
            store,
            f"SELECT * FROM daily_returns WHERE ts <= ?{where} ORDER BY symbol, ts",
            [last, *params],
        )
    return _query(
        store,
        "SELECT symbol, ts, ret, log_ret FROM ("
        "  SELECT symbol, ts, adj_close / lag(adj_close) OVER w - 1 AS ret,"
        "         ln(adj_close / lag(adj_close) OVER w) AS log_ret"
        f"  FROM bars WHERE ts <= ? AND ts >= ?{where}"
        "  WINDOW w AS (PARTITION BY symbol ORDER BY ts)"
        ") WHERE ts >= ? AND ret IS NOT NULL ORDER BY symbol, ts",
        [last, start - timedelta(days=RETURN_MARGIN_DAYS), *params, start],
    )


def liquidity(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Average dollar volume (raw close x volume) of each symbol's last 60 sessions.

    Only symbols whose last 60 sessions all have a dollar volume and fall
    within ``LIQUIDITY_SPAN_DAYS`` calendar days get a value; the same rule
    as ``fundamentals_factors_v1``.
    """
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        "SELECT symbol, max(ts) AS ts, avg(dv) AS avg_dollar_vol_60d FROM ("
        "  SELECT symbol, ts, close * volume AS dv,"
        "         row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS k"
        f"  FROM bars WHERE ts <= ? AND ts > ?{where}"
        ") WHERE k <= 60 GROUP BY symbol HAVING count(dv) = 60 ORDER BY 1",
        [pit.bar_date, pit.bar_date - timedelta(days=LIQUIDITY_SPAN_DAYS), *params],
    )


def _newest_known(
    store: Store,
    table: str,
    asof: Asof,
    symbols: Sequence[str] | None,
    settings: DataSettings,
    *,
    per: str,
    newest: str = "available_at DESC",
    order: str,
) -> pl.DataFrame:
    """Rows of ``table`` known at ``asof``, keeping the newest one per ``per``."""
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        f"SELECT * FROM {table} WHERE available_at <= ?{where} "
        f"QUALIFY row_number() OVER (PARTITION BY {per} ORDER BY {newest}) = 1 ORDER BY {order}",
        [pit.cutoff, *params],
    )


def profiles(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """The newest company profile of each symbol known at ``asof``."""
    return _newest_known(
        store, "dim_company_profile", asof, symbols, settings, per="symbol", order="symbol"
    )


def sectors(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> dict[str, str]:
    """``symbol -> sector`` of the newest profiles known at ``asof``; names without one left out."""
    rows = profiles(store, asof, symbols, settings=settings)
    return {s: k for s, k in zip(rows["symbol"], rows["sector"], strict=True) if k}


def profile_history(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Every company-profile row known at ``asof`` (a replay slices it per date)."""
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        f"SELECT * FROM dim_company_profile WHERE available_at <= ?{where} "
        "ORDER BY symbol, available_at",
        [pit.cutoff, *params],
    )


STATEMENT_TABLES = (
    "fmp_income_statement",
    "fmp_balance_sheet",
    "fmp_cash_flow",
    "fmp_key_metrics",
    "fmp_ratios",
)


def statements(
    store: Store,
    table: str,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Each fiscal period's newest version known at ``asof`` (restatements replace)."""
    if table not in STATEMENT_TABLES:
        raise ConfigError(f"unknown statement table {table!r}; one of {STATEMENT_TABLES}")
    key = "symbol, period_end, period"
    return _newest_known(store, table, asof, symbols, settings, per=key, order=key)


def estimates(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """The newest consensus snapshot per (symbol, fiscal period) known at ``asof``."""
    key = "symbol, period_end, period"
    return _newest_known(
        store, "fmp_analyst_estimates", asof, symbols, settings, per=key, order=key
    )


def ratings(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """The newest rating per symbol known at ``asof``."""
    return _newest_known(
        store,
        "fmp_rating",
        asof,
        symbols,
        settings,
        per="symbol",
        newest="rating_date DESC, available_at DESC",
        order="symbol",
    )


def _known_since(
    store: Store,
    table: str,
    asof: Asof,
    symbols: Sequence[str] | None,
    settings: DataSettings,
    *,
    column: str,
    since: datetime,
) -> pl.DataFrame:
    """Rows of ``table`` known at ``asof`` whose ``column`` is at or after ``since``."""
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        f"SELECT * FROM {table} WHERE available_at <= ? AND {column} >= ?{where} "
        f"ORDER BY symbol, {column}",
        [pit.cutoff, since, *params],
    )


def news(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    since: datetime | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Headlines known at ``asof``, optionally only those published since ``since``."""
    return _known_since(
        store,
        "fmp_news",
        asof,
        symbols,
        settings,
        column="published_at",
        since=since or datetime(1, 1, 1, tzinfo=ZoneInfo("UTC")),
    )


def headline_days(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    start: date | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """``symbol, day, available_at`` of each headline known at ``asof`` (day: market-local).

    The rows behind :func:`news_counts`: counting those with ``available_at``
    up to an earlier cutoff gives the counts known then (a replay reads once).
    """
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        "SELECT * FROM (SELECT symbol, CAST(timezone(?, published_at) AS DATE) AS day, "
        f"available_at FROM fmp_news WHERE available_at <= ?{where}) "
        "WHERE day >= ? ORDER BY symbol, day",
        [settings.market_tz, pit.cutoff, *params, start or date(1, 1, 1)],
    )


def news_counts(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    start: date | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Headline counts per symbol and market-local day, from headlines known at ``asof``.

    Days without headlines are absent (count them as zero).
    """
    days = headline_days(store, asof, symbols, start, settings=settings)
    return (
        days.group_by("symbol", "day")
        .agg(pl.len().cast(pl.Int64).alias("n_news"))
        .sort("symbol", "day")
    )


def social(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    start: date | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Social-sentiment aggregates known at ``asof``, from ``start`` on."""
    since = datetime.combine(start or date(1, 1, 1), time(), ZoneInfo("UTC"))
    return _known_since(store, "social_features", asof, symbols, settings, column="ts", since=since)


def factors(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Sector z-scored value/quality factors as of ``asof`` (``fundamentals_factors_v1``)."""
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        f"SELECT * FROM fundamentals_factors_v1(?::TIMESTAMPTZ) WHERE true{where} ORDER BY symbol",
        [pit.cutoff, *params],
    )


def revisions(
    store: Store,
    asof: Asof,
    symbols: Sequence[str] | None = None,
    lookback_days: int = 30,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Cross-sectional EPS revisions as of ``asof`` (``fmp_revisions_cs``)."""
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    return _query(
        store,
        "SELECT * FROM fmp_revisions_cs(?::TIMESTAMPTZ, lookback_days := ?) "
        f"WHERE true{where} ORDER BY symbol",
        [pit.cutoff, lookback_days, *params],
    )


def forecasts(
    store: Store,
    asof: Asof,
    model: str | None = None,
    symbols: Sequence[str] | None = None,
    calibrated: bool | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Stored forecasts made from origins up to the last session completed at ``asof``."""
    pit = PointInTime.at(asof, settings)
    where, params = _symbol_filter(symbols)
    extra, extra_params = "", []
    if model is not None:
        extra += " AND model = ?"
        extra_params.append(model)
    if calibrated is not None:
        extra += " AND calibrated = ?"
        extra_params.append(calibrated)
    return _query(
        store,
        'SELECT * EXCLUDE (created_at) FROM forecasts WHERE "asof" <= ?'
        f'{extra}{where} ORDER BY model, version, symbol, "asof", step',
        [pit.bar_date, *extra_params, *params],
    )


def regime_features(
    store: Store,
    asof: Asof,
    model: str = "regime",
    version: str | None = None,
    start: date | None = None,
    *,
    settings: DataSettings,
) -> pl.DataFrame:
    """Regime probabilities per session known at ``asof``, sorted by ``ts``.

    A row for session ``ts`` from a model trained on data up to
    ``trained_until`` is known once both sessions have closed. The rows come
    from one version: ``version`` if given, else the one trained most recently
    by ``asof`` (newest ``trained_until``, then newest ``computed_at``).
    """
    pit = PointInTime.at(asof, settings)
    known = "model = ? AND trained_until <= ? AND ts <= ?"
    known_params = [model, pit.bar_date, pit.bar_date]
    if version is None:
        pick = (
            "(SELECT arg_max(version, (trained_until, computed_at)) "
            f"FROM regime_features WHERE {known})"
        )
        pick_params = known_params
    else:
        pick, pick_params = "?", [version]
    return _query(
        store,
        f"SELECT * EXCLUDE (computed_at) FROM regime_features WHERE {known} AND ts >= ? "
        f"AND version = {pick} ORDER BY ts",
        [*known_params, start or date(1, 1, 1), *pick_params],
    )
