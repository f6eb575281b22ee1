"""Strategist: factor-aware ranking (whitepaper sections 2.4 and 6).

Pure functions of polars frames (:func:`standardize`, :func:`score`,
:func:`recommendations`) over the inputs :func:`kronos.features.strategist.strategist_inputs`
reads; :func:`write_recos` stores the result. Settings come from
:class:`kronos.config.StrategySettings` (environment names ``STRAT_*``).

Rules
-----
- **Standardization**: cross-sectional z-scores (sample standard deviation,
  clipped to +/-3) of mom_s, mom_m, quality, sentiment, revisions and ratings,
  where quality is the mean of the available ``z_roe, z_roa, z_gm, -z_dta,
  z_rev``. Missing (or non-finite) inputs become 0 (neutral) and are listed in
  ``missing``; a factor with fewer than two values or no spread is 0 for all.
- **Blend** (:data:`BLEND`, exactly as published; the weights sum to 1.05):
  ``0.5 mom_s + 0.2 mom_m + 0.15 quality + 0.10 sentiment + 0.06 revisions +
  0.04 ratings``. Each term is a ``c_*`` column; ``score`` is their sum.
- **Your factors** (``StrategySettings.factors``, ``STRAT_FACTORS``): a built-in
  factor given only a ``weight`` takes that weight instead (0 removes it: its
  ``c_`` column is 0, it is neither a contribution nor listed in ``missing``).
  A custom factor (its raw column, named as the factor, comes from
  :func:`kronos.features.strategist.strategist_inputs`) is standardized like
  the built-ins into ``z_<name>`` and adds ``c_<name> = weight x z_<name>``,
  after ``c_tilt`` (:func:`contributions`). With no factors set, the blend,
  the columns and the scores are exactly the whitepaper's.
- **Tilts**: the whitepaper "adjusts score for Utilities/REITs in risk-on and
  Tech/Industrials in risk-off". We read it as a defensive/cyclical rotation:
  in risk-on the defensives (Utilities, Real Estate) lose ``STRAT_TILT``; in
  risk-off the cyclicals (Information Technology, Industrials) lose it
  (``c_tilt``). Nothing is tilted up.
- **Forecast**: ``forecast_z = p50 / sigma`` with sigma from the calibrated
  step-1 band (:func:`kronos.metrics.sigma_from_band`; null without one, or with
  ``p95 <= p05``) is always output;
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
- **Timestamps**: rows are stamped with the market close of ``asof`` (UTC) for a
  date, or the given aware instant. Writers replace all rows of the stamped
  instants in one transaction, so re-running a day is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import polars as pl

from kronos.config import DataSettings, StrategySettings
from kronos.data import readers
from kronos.data.store import Store
from kronos.decision.regime import RegimeKnobs
from kronos.decision.rows import replace_rows, stamp
from kronos.features.strategist import QUALITY_SIGNS, Z_CLIP
from kronos.metrics import sigma_from_band

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


DEFENSIVE_SECTORS = frozenset({"Utilities", "Real Estate"})


CYCLICAL_SECTORS = frozenset({"Information Technology", "Technology", "Industrials"})


TILTED_DOWN: Mapping[str, frozenset[str]] = MappingProxyType(
    {"on": DEFENSIVE_SECTORS, "off": CYCLICAL_SECTORS}
)


CONTRIBUTIONS = (*(f"c_{k}" for k in BLEND), "c_forecast", "c_tilt")
"""The contribution columns of the whitepaper blend (no factors set)."""


def blend(settings: StrategySettings | None) -> dict[str, float]:
    """The weight of each factor: :data:`BLEND` with the settings' changes, then custom ones.

    A built-in factor set to 0 stays here with weight 0 (its ``c_`` column is 0).
    """
    weights = dict(BLEND)
    if settings is None:
        return weights
    for name, spec in settings.factors.items():
        if name in BLEND:
            weights[name] = spec.weight
    return weights | {k: v.weight for k, v in settings.custom_factors().items()}


def contributions(settings: StrategySettings | None) -> tuple[str, ...]:
    """The ``c_*`` columns that make up ``score`` (and ``recommendations``' JSON).

    :data:`CONTRIBUTIONS` without the built-in factors weighted 0, then one
    ``c_<name>`` per custom factor; :data:`CONTRIBUTIONS` itself by default.
    """
    weights = blend(settings)
    return (
        *(f"c_{k}" for k in BLEND if weights[k] != 0),
        "c_forecast",
        "c_tilt",
        *(f"c_{k}" for k in weights if k not in BLEND),
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


def standardize(inputs: pl.DataFrame, settings: StrategySettings | None = None) -> pl.DataFrame:
    """``inputs`` plus ``quality_raw``, ``z_<factor>`` per factor of :func:`blend`, ``missing``.

    ``missing`` lists (comma-separated, in :func:`blend` order) the factors whose
    raw input was null or non-finite; their ``z_`` is 0. A built-in factor
    weighted 0 is never listed. Custom factors (of ``settings``) need their raw
    column in ``inputs`` (:func:`kronos.features.strategist.strategist_inputs`
    with the same settings adds it).
    """
    weights = blend(settings)
    custom = [k for k in weights if k not in BLEND]
    lacking = [k for k in custom if k not in inputs.columns]
    if lacking:
        raise ValueError(
            f"inputs lack the column of custom factor(s) {', '.join(lacking)}: read them "
            "with strategist_inputs(settings=...) of the same settings"
        )
    raw_of = {**_RAW, **{k: k for k in custom}}
    raw = [*(c for c in raw_of.values() if c != "quality_raw"), *QUALITY_SIGNS]
    finite = {c: _finite(pl.col(c).cast(pl.Float64)) for c in raw}
    frame = inputs.with_columns(
        *(x.alias(c) for c, x in finite.items()),
        quality_raw=pl.mean_horizontal(sign * finite[c] for c, sign in QUALITY_SIGNS.items()),
    )
    listed = [k for k in weights if k in custom or weights[k] != 0]
    # every raw input is null or finite now: NaN in its array marks a null
    unset = np.column_stack(
        [np.isnan(frame[raw_of[k]].to_numpy()) for k in listed] or [np.zeros((frame.height, 0))]
    )
    return frame.with_columns(
        *(pl.Series(f"z_{k}", _zscore(frame[raw_of[k]])) for k in weights),
        missing=_flags(unset, listed),
    )


def _forecast_z(forecasts: pl.DataFrame | None, symbols: pl.Series) -> pl.Series:
    """Per symbol of ``symbols``, ``p50 / sigma_from_band(p05, p95)`` from step-1 forecasts.

    Null without a forecast, or where the width is <= 0.
    """
    if forecasts is None or forecasts.is_empty():
        return pl.Series("forecast_z", [None] * len(symbols), dtype=pl.Float64())
    if "step" in forecasts.columns:
        forecasts = forecasts.filter(pl.col("step") == 1)
    if forecasts["symbol"].n_unique() != forecasts.height:
        dup = sorted(set(forecasts.filter(pl.col("symbol").is_duplicated())["symbol"].to_list()))
        raise ValueError(f"one step-1 forecast per symbol expected; duplicated: {dup[:5]}")
    sigma = sigma_from_band(pl.col("p05"), pl.col("p95"))
    z = _finite(pl.when(sigma > 0).then(pl.col("p50") / sigma))
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
    rules = [
        pl.when(col.is_null())
        .then(pl.lit(f"{name} missing"))
        .when(col < floor)
        .then(pl.format(f"{name} {{}} < {{}}", col, pl.lit(floor)))
        for name, col, floor in (
            ("market_cap", cap, min_cap),
            ("avg_dollar_vol_60d", adv, min_adv),
        )
        if floor > 0
    ]
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

    Adds ``forecast_z``, the ``c_*`` contributions of :func:`contributions`
    (``c_`` of a built-in weighted 0 is 0), ``score`` (their sum), ``eligible``
    and ``excluded_reason``; sorted by score (descending), then symbol.
    ``forecasts``: symbol, p05, p50, p95 (step 1; a ``step`` column is filtered
    to 1). ``blocked``: symbol -> breaker reason (as from
    :func:`kronos.risk.blocked_symbols`), excluded.
    """
    symbols = features["symbol"]
    if symbols.n_unique() != features.height:
        raise ValueError("features hold a symbol more than once")
    tilted = TILTED_DOWN[knobs.risk_regime]
    forecast_z = _forecast_z(forecasts, symbols)
    fz = pl.lit(forecast_z).clip(-Z_CLIP, Z_CLIP).fill_null(0.0)
    in_tilt = pl.Series([x in tilted for x in features["sector"].to_list()], dtype=pl.Boolean())
    use_forecast = settings.strat_forecast_in_score
    weights = blend(settings)
    lacking = [f"z_{k}" for k in weights if f"z_{k}" not in features.columns]
    if lacking:
        raise ValueError(f"features lack {', '.join(lacking)}: standardize(inputs, settings) first")
    frame = features.with_columns(
        forecast_z,
        *(
            (pl.lit(w, pl.Float64) * pl.col(f"z_{k}") if w != 0 else pl.lit(0.0)).alias(f"c_{k}")
            for k, w in weights.items()
        ),
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
        score=pl.sum_horizontal(contributions(settings)),
        excluded_reason=reason,
        eligible=reason.is_null(),
    ).sort(["score", "symbol"], descending=[True, False], nulls_last=True)


def recommendations(
    scored: pl.DataFrame,
    asof: readers.Asof,
    settings: StrategySettings,
    run_id: str | None = None,
    *,
    data_settings: DataSettings,
) -> pl.DataFrame:
    """The top ``strat_reco_topk`` eligible names as ``strategist_recos`` rows.

    ``contributions`` is a JSON object of the ``c_*`` columns of
    :func:`contributions` (custom factors included).
    """
    top = (
        scored.filter(pl.col("eligible"))
        .sort(["score", "symbol"], descending=[True, False])
        .head(settings.strat_reco_topk)
    )
    s = pl.col("score")
    return top.select(
        asof=pl.lit(stamp(asof, data_settings), dtype=RECO_SCHEMA["asof"]),
        symbol="symbol",
        rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32),
        side=pl.when(s > 0)
        .then(pl.lit("buy"))
        .when(s < 0)
        .then(pl.lit("sell"))
        .otherwise(pl.lit("hold")),
        score=s,
        contributions=pl.struct(contributions(settings)).struct.json_encode(),
        run_id=pl.lit(run_id, dtype=pl.String),
    ).cast(dict(RECO_SCHEMA))


def write_recos(
    store: Store,
    recos: pl.DataFrame,
    *,
    asof: readers.Asof | None = None,
    data_settings: DataSettings,
) -> int:
    """Store recommendations, replacing those of the same ``asof`` stamps; returns rows written.

    Give ``asof`` to clear that day even when ``recos`` is empty.
    """
    return replace_rows(store, "strategist_recos", recos, RECO_SCHEMA, asof, data_settings)
