"""Fail-safe controller and circuit breakers (whitepaper sections 1, 2.4, 7 and 11).

The controller looks at one session, ``asof``, and trips breakers for what the
forecasts cannot explain. Thresholds come from :class:`kronos.config.RiskSettings`
(environment names in brackets):

- **Residual** (scope ``symbol``): the realized daily log return ``y`` of
  ``asof`` against the step-1 forecast made from the symbol's previous session,
  ``z = (y - p50) / sigma`` with ``sigma = (p95 - p05) / (2 * 1.645)``; a breach
  is ``|z| > FAILSAFE_RESID_Z``.
- **Coverage drift** (scope ``symbol``): the share of the symbol's last
  ``FAILSAFE_COVERAGE_WINDOW`` scored sessions (ending at ``asof``) with ``y``
  inside ``[p05, p95]`` is below ``FAILSAFE_COVERAGE_MIN``. A window that is
  not yet full is not judged.
- **Many at once** (scopes ``sector`` and ``global``): the share of symbols
  scored on ``asof`` that breach (residual only) is at least
  ``FAILSAFE_SECTOR_BREACH_FRAC`` within a sector, or
  ``FAILSAFE_GLOBAL_BREACH_FRAC`` across all symbols. Both need at least
  ``FAILSAFE_MIN_SECTOR_SIZE`` scored symbols, so one odd name in a tiny
  universe cannot halt the whole book.
- **Headline risk** (scope ``headline``, one symbol): the symbol's headline
  count on ``asof`` is at least ``HEADLINE_MIN_COUNT`` and at least
  ``HEADLINE_SPIKE_MULT`` times its mean daily count over the previous
  ``HEADLINE_BASELINE_DAYS`` calendar days (days without news count as 0).

A breaker is tripped at the market close of ``asof`` (when the bar became known)
and expires after its scope's cooldown (``FAILSAFE_SYMBOL_COOLDOWN_HOURS``,
``FAILSAFE_SECTOR_COOLDOWN_HOURS``, ``FAILSAFE_GLOBAL_COOLDOWN_HOURS``,
``HEADLINE_COOLDOWN_HOURS``) unless cleared sooner. While active, the tripped
scope gets no new buys (:func:`blocked_symbols`); a global trip also flattens the
book when ``ENABLE_PANIC_EXIT`` is true (:func:`panic_exit_orders`).

:meth:`FailSafeController.evaluate` is pure and uses only rows dated up to
``asof``: realized returns with ``ts <= asof``, forecasts from origins before
``asof`` and news counts of days up to ``asof``; later rows are ignored. Breakers
are stored as rows of the ``circuit_breakers`` table, so they survive restarts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from kronos.calendar import get_calendar
from kronos.config import DataSettings, RiskSettings
from kronos.data.store import Store
from kronos.errors import InputError
from kronos.metrics import sigma_from_band

Scope = Literal["symbol", "sector", "global", "headline"]
SCOPES: tuple[Scope, ...] = ("global", "sector", "headline", "symbol")
GLOBAL_KEY = "*"
ORDER_SCHEMA = {"symbol": pl.String(), "qty_delta": pl.Float64(), "reason": pl.String()}


class BreakerError(InputError):
    """A breaker operation that cannot be done (unknown or ambiguous id, no target)."""


def breaker_id(scope: str, key: str, reason: str, tripped_at: datetime) -> str:
    """A stable id: the same trip evaluated twice gets the same id."""
    blob = f"{scope}|{key}|{reason}|{tripped_at.astimezone(UTC).isoformat()}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cooldown(scope: Scope, settings: RiskSettings) -> timedelta:
    """How long a breaker of ``scope`` stays active unless cleared."""
    hours = {
        "symbol": settings.failsafe_symbol_cooldown_hours,
        "sector": settings.failsafe_sector_cooldown_hours,
        "global": settings.failsafe_global_cooldown_hours,
        "headline": settings.headline_cooldown_hours,
    }[scope]
    return timedelta(hours=hours)


@dataclass(frozen=True)
class Breaker:
    """One tripped circuit breaker (a row of ``circuit_breakers``)."""

    breaker_id: str
    scope: Scope
    key: str
    reason: str
    tripped_at: datetime
    expires_at: datetime
    cleared_at: datetime | None = None
    details: dict = field(default_factory=dict, hash=False)

    @classmethod
    def new(
        cls,
        scope: Scope,
        key: str,
        reason: str,
        tripped_at: datetime,
        settings: RiskSettings,
        details: dict | None = None,
    ) -> Breaker:
        """A fresh breaker with its id and expiry derived from scope and settings."""
        return cls(
            breaker_id=breaker_id(scope, key, reason, tripped_at),
            scope=scope,
            key=key,
            reason=reason,
            tripped_at=tripped_at,
            expires_at=tripped_at + cooldown(scope, settings),
            details=details or {},
        )

    @property
    def short_id(self) -> str:
        """The first 8 characters of the id (enough to clear it by)."""
        return self.breaker_id[:8]

    def is_active(self, at: datetime) -> bool:
        """Tripped by ``at``, not expired and not cleared by then."""
        cleared = self.cleared_at is not None and self.cleared_at <= at
        return self.tripped_at <= at < self.expires_at and not cleared

    def to_dict(self) -> dict:
        """JSON-ready fields (times as ISO strings)."""
        return {
            "breaker_id": self.breaker_id,
            "scope": self.scope,
            "key": self.key,
            "reason": self.reason,
            "tripped_at": self.tripped_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "cleared_at": self.cleared_at.isoformat() if self.cleared_at else None,
            "details": self.details,
        }


def session_close(day: date, data_settings: DataSettings) -> datetime:
    """The market close of ``day`` in UTC: when that day's bar became known.

    The exchange calendar's close (``DataSettings.calendar``; early closes
    included); ``market_close`` in ``market_tz`` for a day that is no session.
    """
    s = data_settings
    close = get_calendar(s.calendar).close_if_session(day)
    if close is not None:
        return close
    local = datetime.combine(day, time.fromisoformat(s.market_close), ZoneInfo(s.market_tz))
    return local.astimezone(UTC)


def _unique(frame: pl.DataFrame, keys: list[str], what: str) -> None:
    rows = frame.select(keys)
    duplicated = rows.is_duplicated()
    if duplicated.any():
        raise ValueError(f"{what}: duplicate rows for {rows.filter(duplicated).row(0)}")


class FailSafeController:
    """Evaluates one session and returns the breakers it trips (see the module rules)."""

    def __init__(self, settings: RiskSettings, data_settings: DataSettings) -> None:
        self.settings = settings
        self.data_settings = data_settings

    def scores(self, asof: date, forecasts: pl.DataFrame, realized: pl.DataFrame) -> pl.DataFrame:
        """Each realized session up to ``asof`` against its step-1 forecast.

        Returns ``symbol, ts, origin, y, p05, p50, p95, sigma, z, inside``; the
        forecast of session ``ts`` is the one made from the symbol's previous
        session in ``realized``. Forecasts with ``p95 <= p05`` cannot be scored.
        """
        if isinstance(asof, datetime):
            raise TypeError("asof must be a date (a session), not a datetime")
        fc = forecasts
        if "step" in fc.columns:
            fc = fc.filter(pl.col("step") == 1)
        fc = fc.filter(pl.col("asof") < asof).select(
            "symbol", pl.col("asof").alias("origin"), "p05", "p50", "p95"
        )
        _unique(fc, ["symbol", "origin"], "step-1 forecasts (one model version only)")
        real = realized.filter(pl.col("ts") <= asof, pl.col("y").is_not_null()).select(
            "symbol", "ts", pl.col("y").cast(pl.Float64)
        )
        _unique(real, ["symbol", "ts"], "realized returns")
        real = real.sort("symbol", "ts").with_columns(origin=pl.col("ts").shift(1).over("symbol"))
        sigma = sigma_from_band(pl.col("p05"), pl.col("p95"))
        return (
            real.join(fc, on=["symbol", "origin"], how="inner")
            .filter(sigma > 0)
            .with_columns(
                sigma=sigma,
                z=(pl.col("y") - pl.col("p50")) / sigma,
                inside=(pl.col("y") >= pl.col("p05")) & (pl.col("y") <= pl.col("p95")),
            )
            .sort("symbol", "ts")
        )

    def evaluate(
        self,
        asof: date,
        forecasts: pl.DataFrame,
        realized: pl.DataFrame,
        sectors: pl.DataFrame,
        news_counts: pl.DataFrame | None = None,
    ) -> list[Breaker]:
        """The breakers session ``asof`` trips, ordered global, sector, headline, symbol.

        ``forecasts``: symbol, asof (origin), p05, p50, p95 (step 1 when a ``step``
        column is present); ``realized``: symbol, ts, y; ``sectors``: symbol,
        sector; ``news_counts``: symbol, day, n_news. Touches no store.
        """
        tripped_at = session_close(asof, self.data_settings)
        scored = self.scores(asof, forecasts, realized)
        today = scored.filter(pl.col("ts") == asof).with_columns(
            breach=pl.col("z").abs() > self.settings.failsafe_resid_z
        )
        out = self._many_at_once(asof, today, sectors, tripped_at)
        if news_counts is not None:
            out += self._headlines(asof, news_counts, tripped_at)
        symbol = self._residuals(asof, today, tripped_at)
        symbol += self._coverage(asof, scored, today, tripped_at)
        return out + sorted(symbol, key=lambda b: (b.key, b.reason))

    def _residuals(self, asof: date, today: pl.DataFrame, at: datetime) -> list[Breaker]:
        thr = self.settings.failsafe_resid_z
        return [
            Breaker.new(
                "symbol",
                r["symbol"],
                f"residual z={r['z']:+.1f} beyond {thr!r} on {asof}",
                at,
                self.settings,
                {
                    "rule": "residual",
                    "asof": str(asof),
                    "origin": str(r["origin"]),
                    "y": r["y"],
                    "p50": r["p50"],
                    "sigma": r["sigma"],
                    "z": r["z"],
                    "threshold": thr,
                },
            )
            for r in today.filter("breach").iter_rows(named=True)
        ]

    def _coverage(
        self, asof: date, scored: pl.DataFrame, today: pl.DataFrame, at: datetime
    ) -> list[Breaker]:
        window, floor = self.settings.failsafe_coverage_window, self.settings.failsafe_coverage_min
        if scored.is_empty():
            return []
        recent = []
        # scored is sorted by symbol, then ts: each symbol's rows are one run
        symbol = scored["symbol"].to_numpy()
        starts = np.flatnonzero(np.r_[True, symbol[1:] != symbol[:-1]])
        ends = [*starts[1:], symbol.size]
        hit = scored["inside"]
        hit = hit.fill_null(False) if hit.has_nulls() else hit
        inside = np.concatenate([[0], np.cumsum(hit.to_numpy())])
        judged = set(today["symbol"].to_list())
        days = scored["ts"]
        for lo, hi in zip(starts, ends, strict=True):
            first = max(lo, hi - window)  # the last `window` scored sessions
            if symbol[lo] not in judged or hi - first != window:
                continue
            n_in = int(inside[hi] - inside[first])
            # the share as polars computed it (times the reciprocal), so a boundary
            # case trips exactly as before
            if n_in * (1.0 / window) < floor:
                recent.append({"symbol": symbol[lo], "inside": n_in, "first": days[int(first)]})
        return [
            Breaker.new(
                "symbol",
                r["symbol"],
                f"coverage drift: {r['inside']}/{window} sessions inside p05-p95 "
                f"({r['inside'] / window:.0%}) below {floor:.0%} on {asof}",
                at,
                self.settings,
                {
                    "rule": "coverage",
                    "asof": str(asof),
                    "window_start": str(r["first"]),
                    "inside": r["inside"],
                    "window": window,
                    "coverage": r["inside"] / window,
                    "threshold": floor,
                },
            )
            for r in recent
        ]

    def _many_at_once(
        self, asof: date, today: pl.DataFrame, sectors: pl.DataFrame, at: datetime
    ) -> list[Breaker]:
        s = self.settings
        out = []
        k, n = int(today["breach"].sum()), today.height
        if n >= s.failsafe_min_sector_size and k / n >= s.failsafe_global_breach_frac:
            out.append(self._group("global", GLOBAL_KEY, asof, today, at))
        sec = sectors.select("symbol", "sector").filter(pl.col("sector").is_not_null())
        _unique(sec, ["symbol"], "sectors")
        by_sector = today.join(sec, on="symbol", how="inner")
        counts = by_sector.group_by("sector").agg(n=pl.len(), k=pl.col("breach").sum())
        for name, n, k in sorted(counts.iter_rows()):
            if n >= s.failsafe_min_sector_size and k / n >= s.failsafe_sector_breach_frac:
                group = by_sector.filter(pl.col("sector") == name)
                out.append(self._group("sector", name, asof, group, at))
        return out

    def _group(
        self, scope: Scope, key: str, asof: date, group: pl.DataFrame, at: datetime
    ) -> Breaker:
        s = self.settings
        frac = s.failsafe_global_breach_frac if scope == "global" else s.failsafe_sector_breach_frac
        k, n = int(group["breach"].sum()), group.height
        label = "global" if scope == "global" else f"sector {key}"
        breaching = sorted(group.filter("breach")["symbol"].to_list())
        return Breaker.new(
            scope,
            key,
            f"{label}: {k}/{n} symbols ({k / n:.0%}) with |z| beyond {s.failsafe_resid_z!r} "
            f"on {asof}, at or above {frac:.0%}; median z={group['z'].median():+.1f}",
            at,
            s,
            {
                "rule": "many_at_once",
                "asof": str(asof),
                "breaching": k,
                "scored": n,
                "share": k / n,
                "threshold": frac,
                "symbols": breaching,
            },
        )

    def _headlines(self, asof: date, counts: pl.DataFrame, at: datetime) -> list[Breaker]:
        s = self.settings
        days = s.headline_baseline_days
        start = asof - timedelta(days=days)
        window = counts.filter(pl.col("day") >= start, pl.col("day") <= asof)
        per = (
            window.group_by("symbol")
            .agg(
                today=pl.col("n_news").filter(pl.col("day") == asof).sum(),
                base=pl.col("n_news").filter(pl.col("day") < asof).sum() / days,
            )
            .filter(
                pl.col("today") >= s.headline_min_count,
                pl.col("today") >= s.headline_spike_mult * pl.col("base"),
            )
            .sort("symbol")
        )
        return [
            Breaker.new(
                "headline",
                r["symbol"],
                f"headline spike: {r['today']} headlines on {asof} vs {r['base']:.1f}/day "
                f"over the previous {days} days (at least {s.headline_spike_mult:g}x "
                f"and {s.headline_min_count})",
                at,
                s,
                {
                    "rule": "headline",
                    "asof": str(asof),
                    "count": int(r["today"]),
                    "baseline_per_day": r["base"],
                    "baseline_days": days,
                },
            )
            for r in per.iter_rows(named=True)
        ]


# --- persistence: rows of circuit_breakers ---------------------------------------------------

_COLUMNS = "breaker_id, scope, key, reason, tripped_at, expires_at, cleared_at, details"


def _row_to_breaker(row: tuple) -> Breaker:
    bid, scope, key, reason, tripped, expires, cleared, details = row
    return Breaker(
        bid, scope, key, reason, tripped, expires, cleared, json.loads(details) if details else {}
    )


def trip(store: Store, breakers: list[Breaker]) -> int:
    """Store ``breakers``; ids already stored are left alone. Returns how many were new."""
    if not breakers:
        return 0
    rows = {
        b.breaker_id: [
            b.breaker_id,
            b.scope,
            b.key,
            b.reason,
            b.tripped_at,
            b.expires_at,
            b.cleared_at,
            json.dumps(b.details, sort_keys=True, default=str),
        ]
        for b in breakers
    }
    with store.transaction() as con:
        stored = {
            r[0]
            for r in con.execute(
                "SELECT breaker_id FROM circuit_breakers "
                "WHERE breaker_id IN (SELECT unnest(?::VARCHAR[]))",
                [list(rows)],
            ).fetchall()
        }
        new = [row for bid, row in rows.items() if bid not in stored]
        if new:
            con.executemany(
                f"INSERT INTO circuit_breakers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", new
            )
    return len(new)


def _select(store: Store, where: str = "true", params: list | dict | None = None) -> list[Breaker]:
    rows = store.con.execute(
        f"SELECT {_COLUMNS} FROM circuit_breakers WHERE {where} "
        "ORDER BY tripped_at, scope, key, breaker_id",
        params or [],
    ).fetchall()
    return [_row_to_breaker(r) for r in rows]


_ACTIVE = (
    "tripped_at <= $at::TIMESTAMPTZ AND (expires_at IS NULL OR expires_at > $at::TIMESTAMPTZ) "
    "AND (cleared_at IS NULL OR cleared_at > $at::TIMESTAMPTZ)"
)


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"{at} is a naive datetime; give a time zone (UTC)")
    return at


def active_breakers(store: Store, at: datetime) -> list[Breaker]:
    """Breakers active at ``at``: tripped by then, not expired, not cleared by then."""
    return _select(store, _ACTIVE, {"at": _aware(at)})


def all_breakers(store: Store) -> list[Breaker]:
    """Every stored breaker, cleared and expired ones included, oldest first."""
    return _select(store)


def clear(
    store: Store,
    breaker_id: str | None = None,
    scope: str | None = None,
    key: str | None = None,
    at: datetime | None = None,
) -> int:
    """Clear breakers active at ``at`` (default now) by id (or unique id prefix) or scope/key.

    Returns how many were cleared. Raises :class:`BreakerError` for an unknown or
    ambiguous id, or when neither an id nor a scope is given.
    """
    at = _aware(at or datetime.now(UTC))
    if breaker_id is not None:
        ids = [
            r[0]
            for r in store.con.execute(
                "SELECT breaker_id FROM circuit_breakers WHERE starts_with(breaker_id, ?)",
                [breaker_id],
            ).fetchall()
        ]
        if not ids:
            raise BreakerError(f"no circuit breaker with id {breaker_id!r}")
        if len(ids) > 1:
            raise BreakerError(f"id {breaker_id!r} is ambiguous: it matches {sorted(ids)}")
        where, params = "breaker_id = ?", ids
    elif scope is not None:
        if scope not in SCOPES:
            raise BreakerError(f"unknown scope {scope!r}; one of {list(SCOPES)}")
        where, params = "scope = ?", [scope]
        if key is not None:
            where, params = where + " AND key = ?", [scope, key]
    else:
        raise BreakerError("give a breaker id, or a scope (and optionally a key)")
    targets = [b.breaker_id for b in _select(store, where, params) if b.is_active(at)]
    if targets:
        with store.transaction() as con:
            con.execute(
                "UPDATE circuit_breakers SET cleared_at = ? "
                "WHERE breaker_id IN (SELECT unnest(?::VARCHAR[]))",
                [at, targets],
            )
    return len(targets)


# --- what active breakers mean for trading ---------------------------------------------------


def blocked_symbols(active: list[Breaker], sectors: pl.DataFrame) -> dict[str, str]:
    """Symbol -> reason for every symbol a tripped scope blocks from new buys.

    The universe is the symbols of ``sectors`` (symbol, sector; sector may be
    null) plus any symbol named by a symbol or headline breaker. A global breaker
    blocks every symbol of that universe. Several reasons are joined by ``"; "``
    in the order global, sector, headline, symbol.
    """
    sector_of = dict(zip(sectors["symbol"].to_list(), sectors["sector"].to_list(), strict=True))
    universe = set(sector_of) | {b.key for b in active if b.scope in ("symbol", "headline")}
    reasons: dict[str, list[str]] = {}
    rank = {scope: i for i, scope in enumerate(SCOPES)}
    for b in sorted(active, key=lambda b: (rank[b.scope], b.key, b.reason)):
        if b.scope == "global":
            hit = universe
        elif b.scope == "sector":
            hit = {s for s in universe if sector_of.get(s) == b.key}
        else:
            hit = {b.key}
        for s in hit:
            reasons.setdefault(s, []).append(b.reason)
    return {s: "; ".join(reasons[s]) for s in sorted(reasons)}


def panic_exit_orders(
    active: list[Breaker], positions: pl.DataFrame, settings: RiskSettings
) -> pl.DataFrame:
    """Orders flattening the book (``qty_delta = -qty``) when a global breaker is active.

    Only when ``settings.enable_panic_exit`` (``ENABLE_PANIC_EXIT``) is true;
    otherwise, or with no global breaker, an empty frame of the same schema.
    """
    glob = [b for b in active if b.scope == "global"]
    if not (settings.enable_panic_exit and glob):
        return pl.DataFrame(schema=ORDER_SCHEMA)
    reason = f"panic exit: {glob[0].reason}"
    return (
        positions.group_by("symbol")
        .agg(qty=pl.col("qty").cast(pl.Float64).sum())
        .filter(pl.col("qty") != 0)
        .select("symbol", qty_delta=-pl.col("qty"), reason=pl.lit(reason))
        .sort("symbol")
        .cast(ORDER_SCHEMA)
    )
