"""Frame contracts for every table that ingest writes.

The DuckDB DDL lives in ``migrations/``; this module states, for each ingestible
table, the polars schema a source must produce, which columns may not be null,
and the primary key that makes upserts idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

UTC = "UTC"
TS = pl.Datetime("us", UTC)


@dataclass(frozen=True)
class TableSpec:
    """What a source must hand to :func:`kronos.data.ingest.upsert` for one table."""

    name: str
    schema: dict[str, pl.DataType]
    key: tuple[str, ...]
    required: tuple[str, ...]
    positive: tuple[str, ...] = ()
    reference: bool = False  # rows must name symbols the store already knows

    @property
    def columns(self) -> list[str]:
        """Column names in table order."""
        return list(self.schema)


_FMP_STATEMENT = {
    "symbol": pl.String(),
    "period_end": pl.Date(),
    "period": pl.String(),
    "fiscal_year": pl.Int32(),
    "reported_currency": pl.String(),
    "filing_date": pl.Date(),
    "available_at": TS,
    "payload": pl.String(),
    "source": pl.String(),
}
_FMP_KEY = ("symbol", "period_end", "period", "available_at")
_FMP_REQUIRED = ("symbol", "period_end", "period", "available_at", "payload", "source")

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in [
        TableSpec(
            "bars",
            {
                "symbol": pl.String(),
                "ts": pl.Date(),
                "open": pl.Float64(),
                "high": pl.Float64(),
                "low": pl.Float64(),
                "close": pl.Float64(),
                "adj_close": pl.Float64(),
                "volume": pl.Float64(),
                "source": pl.String(),
            },
            key=("symbol", "ts"),
            required=("symbol", "ts", "adj_close", "source"),
            positive=("open", "high", "low", "close", "adj_close"),
        ),
        TableSpec(
            "dim_company_profile",
            {
                "symbol": pl.String(),
                "available_at": TS,
                "name": pl.String(),
                "asset_type": pl.String(),
                "sector": pl.String(),
                "industry": pl.String(),
                "exchange": pl.String(),
                "currency": pl.String(),
                "market_cap": pl.Float64(),
                "source": pl.String(),
            },
            key=("symbol", "available_at"),
            required=("symbol", "available_at", "asset_type", "source"),
            positive=("market_cap",),
        ),
        *[
            TableSpec(name, dict(_FMP_STATEMENT), _FMP_KEY, _FMP_REQUIRED, reference=True)
            for name in (
                "fmp_income_statement",
                "fmp_balance_sheet",
                "fmp_cash_flow",
                "fmp_key_metrics",
                "fmp_ratios",
            )
        ],
        TableSpec(
            "fmp_analyst_estimates",
            {
                "symbol": pl.String(),
                "period_end": pl.Date(),
                "period": pl.String(),
                "available_at": TS,
                "eps_avg": pl.Float64(),
                "revenue_avg": pl.Float64(),
                "num_analysts_eps": pl.Int32(),
                "payload": pl.String(),
                "source": pl.String(),
            },
            key=_FMP_KEY,
            required=_FMP_REQUIRED,
            reference=True,
        ),
        TableSpec(
            "fmp_rating",
            {
                "symbol": pl.String(),
                "rating_date": pl.Date(),
                "available_at": TS,
                "rating": pl.String(),
                "rating_score": pl.Float64(),
                "recommendation": pl.String(),
                "payload": pl.String(),
                "source": pl.String(),
            },
            key=("symbol", "rating_date"),
            required=("symbol", "rating_date", "available_at", "payload", "source"),
            reference=True,
        ),
        TableSpec(
            "fmp_news",
            {
                "news_id": pl.String(),
                "symbol": pl.String(),
                "published_at": TS,
                "available_at": TS,
                "title": pl.String(),
                "site": pl.String(),
                "url": pl.String(),
                "text": pl.String(),
                "source": pl.String(),
            },
            key=("news_id",),
            required=("news_id", "symbol", "published_at", "available_at", "title", "source"),
            reference=True,
        ),
        TableSpec(
            "social_features",
            {
                "symbol": pl.String(),
                "ts": TS,
                "available_at": TS,
                "n_posts": pl.Int32(),
                "rate": pl.Float64(),
                "senti_mean": pl.Float64(),
                "senti_std": pl.Float64(),
                "source": pl.String(),
            },
            key=("symbol", "ts"),
            required=("symbol", "ts", "available_at", "source"),
            reference=True,
        ),
        TableSpec(
            "forecasts",
            {
                "symbol": pl.String(),
                "asof": pl.Date(),
                "step": pl.Int32(),
                "target_ts": pl.Date(),
                "p05": pl.Float64(),
                "p50": pl.Float64(),
                "p95": pl.Float64(),
                "model": pl.String(),
                "version": pl.String(),
                "calibrated": pl.Boolean(),
            },
            key=("symbol", "asof", "step", "model", "version", "calibrated"),
            required=(
                "symbol",
                "asof",
                "step",
                "target_ts",
                "p05",
                "p50",
                "p95",
                "model",
                "version",
                "calibrated",
            ),
        ),
        TableSpec(
            "calibration_state",
            {
                "model": pl.String(),
                "scope": pl.String(),
                "key": pl.String(),
                "asof": pl.Date(),
                "bias": pl.Float64(),
                "scale": pl.Float64(),
                "n_samples": pl.Int32(),
                "resid_var": pl.Float64(),
                "updated_at": TS,
            },
            key=("model", "scope", "key", "asof"),
            required=("model", "scope", "key", "asof", "bias", "scale", "n_samples", "updated_at"),
        ),
        TableSpec(
            "regime_features",
            {
                "model": pl.String(),
                "version": pl.String(),
                "ts": pl.Date(),
                "trained_until": pl.Date(),
                "p_calm": pl.Float64(),
                "p_normal": pl.Float64(),
                "p_turbulent": pl.Float64(),
                "computed_at": TS,
            },
            key=("model", "version", "ts"),
            required=(
                "model",
                "version",
                "ts",
                "trained_until",
                "p_calm",
                "p_normal",
                "p_turbulent",
                "computed_at",
            ),
        ),
    ]
}


def empty_frame(table: str) -> pl.DataFrame:
    """An empty frame with the exact schema of ``table``."""
    return pl.DataFrame(schema=TABLES[table].schema)
