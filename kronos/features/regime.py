"""Market volatility features and stored regime probabilities (whitepaper sections 4 and 10).

:func:`market_features` turns a returns panel (``symbol, ts, y``: daily log
returns) into one row per session of market-wide volatility features. Every
feature of session ``t`` is a function of returns up to ``t`` only: cross
sections of the day, and trailing windows counted in sessions (a window that
is not full yet gives null). Columns:

- ``n_symbols``: symbols with a return that session;
- ``index_ret``: the equal-weight index's log return (mean of the day's
  returns);
- ``abs_ret``: cross-sectional mean of ``|y|``;
- ``dispersion``: cross-sectional standard deviation of ``y`` (0 with one
  symbol);
- ``rv_5``, ``rv_20``, ``rv_60``: realized volatility of the index over the last
  5, 20, 60 sessions, ``sqrt(mean(index_ret^2))``, daily units;
- ``vol_of_vol``: standard deviation of ``log rv_5`` over the last 20 sessions;
- ``correlation``: ``sum(index_ret^2) / sum(mean_i y_i^2)`` over the last 20
  sessions, the index variance over the average single-name variance, which
  approaches the average pairwise correlation (1 when every name moves alike,
  about ``1/n`` when they are independent);
- ``drawdown``: the index level (cumulated log returns) over its running
  maximum, minus 1 (``<= 0``).

:func:`forward_vol` is the training label of the regime encoder: the realized
volatility of the index over the *next* ``horizon`` sessions, null where those
sessions are not all in the frame, so a frame cut at a date can never label a
day with returns after it.

The regime encoder's probabilities live in the ``regime_features`` table;
:func:`write_regime` appends them and :func:`latest_regime` is what the risk
layer reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.features.returns import returns_panel

FEATURE_COLUMNS = (
    "n_symbols",
    "index_ret",
    "abs_ret",
    "dispersion",
    "rv_5",
    "rv_20",
    "rv_60",
    "vol_of_vol",
    "correlation",
    "drawdown",
)
STATES = ("calm", "normal", "turbulent")
PROBABILITY_COLUMNS = tuple(f"p_{s}" for s in STATES)
_TINY = 1e-12  # floor under divisions by variances
VOL_FLOOR = 1e-5  # daily volatilities below this are floored before a log


def _rv(window: int) -> pl.Expr:
    return (pl.col("index_ret") ** 2).rolling_mean(window, min_samples=window).sqrt()


def market_features(panel: pl.DataFrame) -> pl.DataFrame:
    """One row per session of the panel: ``ts`` and :data:`FEATURE_COLUMNS`, sorted by ``ts``."""
    missing = {"symbol", "ts", "y"} - set(panel.columns)
    if missing:
        raise ValueError(f"returns panel lacks columns {sorted(missing)}")
    y = pl.col("y")
    daily = (
        panel.filter(y.is_finite())
        .group_by("ts")
        .agg(
            pl.len().cast(pl.Int32).alias("n_symbols"),
            y.mean().alias("index_ret"),
            y.abs().mean().alias("abs_ret"),
            y.std(ddof=0).alias("dispersion"),
            (y**2).mean().alias("_mean_sq"),
        )
        .sort("ts")
    )
    corr_window = 20
    return (
        daily.with_columns(
            _rv(5).alias("rv_5"),
            _rv(20).alias("rv_20"),
            _rv(60).alias("rv_60"),
            (
                (pl.col("index_ret") ** 2).rolling_sum(corr_window, min_samples=corr_window)
                / pl.max_horizontal(
                    pl.col("_mean_sq").rolling_sum(corr_window, min_samples=corr_window),
                    pl.lit(_TINY),
                )
            ).alias("correlation"),
            (pl.col("index_ret").cum_sum() - pl.col("index_ret").cum_sum().cum_max().clip(0)).alias(
                "_log_dd"
            ),
        )
        .with_columns(
            pl.max_horizontal("rv_5", pl.lit(VOL_FLOOR))
            .log()
            .rolling_std(20, min_samples=20)
            .alias("vol_of_vol"),
            (pl.col("_log_dd").exp() - 1).alias("drawdown"),
        )
        .select("ts", *FEATURE_COLUMNS)
    )


def forward_vol(features: pl.DataFrame, horizon: int) -> pl.Series:
    """Realized index volatility over the ``horizon`` sessions after each row (label)."""
    ahead = (pl.col("index_ret") ** 2).rolling_mean(horizon, min_samples=horizon)
    return features.sort("ts").select(ahead.shift(-horizon).sqrt().alias("forward_vol"))[
        "forward_vol"
    ]


def market_features_at(
    store: Store, asof: date, source: str | None = "skfolio.sp500", *, settings: DataSettings
) -> pl.DataFrame:
    """:func:`market_features` of the universe of ``source`` (all symbols if None), at ``asof``."""
    return market_features(returns_panel(store, asof, source=source, settings=settings))


# ---------------------------------------------------------------- the stored probabilities


def regime_rows(
    probabilities: pl.DataFrame,
    model: str,
    version: str,
    trained_until: date,
    computed_at: datetime | None = None,
) -> pl.DataFrame:
    """``regime_features`` rows from a frame of ``ts`` and :data:`PROBABILITY_COLUMNS`."""
    stamp = computed_at or datetime.now(UTC)
    return probabilities.select(
        pl.lit(model).alias("model"),
        pl.lit(version).alias("version"),
        pl.col("ts").cast(pl.Date),
        pl.lit(trained_until, pl.Date).alias("trained_until"),
        *(pl.col(c).cast(pl.Float64) for c in PROBABILITY_COLUMNS),
        pl.lit(stamp, pl.Datetime("us", "UTC")).alias("computed_at"),
    ).drop_nulls(PROBABILITY_COLUMNS)


def write_regime(store: Store, rows: pl.DataFrame) -> int:
    """Append rows of sessions a version has not stored yet; return how many were written.

    Stored rows are never rewritten: a session's probabilities are what was
    computed when it was first written (a retrained model writes a new version).
    """
    if rows.is_empty():
        return 0
    fresh = []
    for (model, version), group in rows.group_by("model", "version", maintain_order=True):
        last = store.con.execute(
            "SELECT max(ts) FROM regime_features WHERE model = ? AND version = ?", [model, version]
        ).fetchall()[0][0]
        fresh.append(group if last is None else group.filter(pl.col("ts") > last))
    new = pl.concat(fresh)
    if new.is_empty():
        return 0
    ingest(store, "regime_features", [new], source="regime", origin=f"regime {new['ts'].max()}")
    return new.height


@dataclass(frozen=True)
class RegimeReading:
    """The market regime known at a moment: the newest session's probabilities."""

    ts: date
    p_calm: float
    p_normal: float
    p_turbulent: float
    model: str
    version: str

    @property
    def state(self) -> str:
        """The most probable state."""
        probs = (self.p_calm, self.p_normal, self.p_turbulent)
        return STATES[max(range(len(STATES)), key=probs.__getitem__)]


def has_regime(store: Store, model: str = "regime") -> bool:
    """Whether ``regime_features`` holds any row of ``model`` (a replay checks once)."""
    return bool(
        store.con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM regime_features WHERE model = ? LIMIT 1)",
            [model],
        ).fetchall()[0][0]
    )


def latest_regime(
    store: Store,
    asof: readers.Asof,
    model: str = "regime",
    max_age_days: int = 7,
    *,
    settings: DataSettings,
) -> RegimeReading | None:
    """The regime of the newest session known at ``asof`` (None if none within ``max_age_days``).

    This is the risk layer's regime feature: a reading older than
    ``max_age_days`` calendar days is treated as unknown rather than as today's.
    """
    rows = readers.regime_features(store, asof, model=model, settings=settings)
    if rows.is_empty():
        return None
    last = rows.row(-1, named=True)
    pit = readers.PointInTime.at(asof, settings)
    if (pit.bar_date - last["ts"]).days > max_age_days:
        return None
    return RegimeReading(
        last["ts"],
        *(float(last[c]) for c in PROBABILITY_COLUMNS),
        model=last["model"],
        version=last["version"],
    )


def turbulence_on(rows: pl.DataFrame, day: date) -> float | None:
    """``p_turbulent`` of session ``day`` in ``regime_features`` rows, or None (missing, NaN)."""
    hit = rows.filter(pl.col("ts") == day)
    if hit.is_empty():
        return None
    value = hit["p_turbulent"][-1]
    return None if value is None or not math.isfinite(value) else float(value)
