"""What a walk-forward backtest produces: frames in long format, statistics, hashes.

Every frame is polars; dates are the session dates of the bars (``ts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import polars as pl

EQUITY_SCHEMA = {
    "ts": pl.Date,
    "nav": pl.Float64,  # cash + marked positions at the session close
    "cash": pl.Float64,
    "invested": pl.Float64,  # marked value of the positions
    "benchmark": pl.Float64,  # buy-and-hold NAV of the benchmark, same initial cash
}
POSITIONS_SCHEMA = {
    "ts": pl.Date,
    "symbol": pl.String,
    "qty": pl.Float64,
    "price": pl.Float64,  # close used for marking
    "value": pl.Float64,
    "weight": pl.Float64,  # value / nav
}
FILLS_SCHEMA = {
    "ts": pl.Date,  # session of the fill
    "asof": pl.Date,  # decision date that planned the order
    "symbol": pl.String,
    "side": pl.String,  # buy | sell
    "qty": pl.Float64,  # positive shares
    "price": pl.Float64,  # fill price after slippage
    "ref_price": pl.Float64,  # bar price before slippage (open or close)
    "fee": pl.Float64,  # commission in cash
    "client_order_id": pl.String,
}
ORDERS_SCHEMA = {
    "asof": pl.Date,
    "symbol": pl.String,
    "side": pl.String,
    "qty": pl.Float64,
    "limit_price": pl.Float64,  # null for market orders
    "client_order_id": pl.String,
    "status": pl.String,  # filled | partial | unfilled
    "filled_qty": pl.Float64,
    "reason": pl.String,  # why not (fully) filled; null when filled
}
FOLD_METRICS_SCHEMA = {
    "fold": pl.Int32,
    "train_start": pl.Date,
    "train_end": pl.Date,
    "test_start": pl.Date,
    "test_end": pl.Date,
    "stage": pl.String,  # raw | calibrated
    "n": pl.Int64,
    "mae": pl.Float64,
    "coverage": pl.Float64,
    "crps": pl.Float64,
}
COVERAGE_SCHEMA = {
    "ts": pl.Date,
    "raw": pl.Float64,  # rolling share of realized returns inside raw p05-p95
    "calibrated": pl.Float64,
}
FACTORS_SCHEMA = {
    "ts": pl.Date,  # rebalance date
    "factor": pl.String,
    "contribution": pl.Float64,  # weight-averaged factor contribution of the targets
}
BREAKERS_SCHEMA = {
    "tripped_at": pl.Datetime("us", "UTC"),
    "scope": pl.String,
    "key": pl.String,
    "reason": pl.String,
    "expires_at": pl.Datetime("us", "UTC"),
}
EVENTS_SCHEMA = {
    "ts": pl.Date,  # session the event reached the book
    "symbol": pl.String,
    "event": pl.String,  # split | dividend | delisted
    "qty_before": pl.Float64,
    "qty_after": pl.Float64,
    "cash": pl.Float64,  # cash the book received
    "detail": pl.String,
}
# forecast quality, small summaries of the step-1 forecasts (the report's forecast page)
PIT_SCHEMA = {
    "stage": pl.String,  # raw | calibrated
    "bin_lo": pl.Float64,
    "bin_hi": pl.Float64,
    "share": pl.Float64,  # share of the scored forecasts whose PIT falls in the bin
    "expected": pl.Float64,  # 1 / bins: a calibrated forecast's share
}
TERCILE_SCHEMA = {
    "stage": pl.String,
    "tercile": pl.String,  # low | mid | high realized EWMA volatility at the origin
    "vol_lo": pl.Float64,  # daily volatility range of the tercile
    "vol_hi": pl.Float64,
    "n": pl.Int64,
    "coverage": pl.Float64,  # share of realized returns inside p05-p95
}
SCALE_SCHEMA = {
    "ts": pl.Date,
    "median": pl.Float64,  # calibrator band scale in force, median across symbols
    "p10": pl.Float64,
    "p90": pl.Float64,
}
STAT_NAMES = (
    "total_return",
    "cagr",
    "volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "turnover",
    "exposure",
    "hit_rate",
)


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame of ``schema``."""
    return pl.DataFrame(schema=schema)


@dataclass(frozen=True)
class BacktestResult:
    """Everything one backtest run produced (see the ``*_SCHEMA`` constants)."""

    name: str
    spec_hash: str
    order_hash: str  # sha256 of the ordered order list: equal hashes, equal runs
    start: date
    end: date
    equity: pl.DataFrame
    positions: pl.DataFrame
    fills: pl.DataFrame
    orders: pl.DataFrame
    stats: dict[str, float]  # STAT_NAMES for the strategy, and benchmark_<name> for buy-and-hold
    fold_metrics: pl.DataFrame = field(default_factory=lambda: empty(FOLD_METRICS_SCHEMA))
    coverage: pl.DataFrame = field(default_factory=lambda: empty(COVERAGE_SCHEMA))
    factor_contrib: pl.DataFrame = field(default_factory=lambda: empty(FACTORS_SCHEMA))
    breakers: pl.DataFrame = field(default_factory=lambda: empty(BREAKERS_SCHEMA))
    parity: dict[str, float] = field(default_factory=dict)  # max relative diffs vs vectorbt
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    events: pl.DataFrame = field(default_factory=lambda: empty(EVENTS_SCHEMA))
    notes: tuple[str, ...] = ()  # price basis, filters the data switched off, skipped checks
    pit_hist: pl.DataFrame = field(default_factory=lambda: empty(PIT_SCHEMA))
    coverage_terciles: pl.DataFrame = field(default_factory=lambda: empty(TERCILE_SCHEMA))
    calibration_scale: pl.DataFrame = field(default_factory=lambda: empty(SCALE_SCHEMA))
    crossed_rows: int = 0  # step-1 forecast rows emitted with crossed quantiles, sorted
