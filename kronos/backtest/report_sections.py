"""HTML of the report's tearsheet panels: tables escaped here, figures from :mod:`report_plots`.

Each panel is a ``<section id=...>`` with an id of :data:`kronos.backtest.report.PANEL_IDS`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
import polars as pl

from kronos.backtest import report_plots as rp
from kronos.backtest import tearsheet as ts
from kronos.backtest.result import BacktestResult

MISSING = "-"
LAST_TRADES = 25


def finite(value: object) -> bool:
    """A real, finite number (not None, NaN or inf)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def cell(value: object) -> str:
    """Default text for a table cell (not yet escaped)."""
    if value is None:
        return MISSING
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:,.4f}" if math.isfinite(value) else "n/a"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; every header and cell is escaped here."""
    attr = f' class="{cls}"' if cls else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def frame_table(df: pl.DataFrame, formats: dict[str, Callable[[object], str]] | None = None) -> str:
    """``df`` as a table, ``formats`` per column (default :func:`cell`)."""
    formats = formats or {}
    rows = [
        [
            formats.get(col, cell)(row[col]) if row[col] is not None else MISSING
            for col in df.columns
        ]
        for row in df.iter_rows(named=True)
    ]
    return table(df.columns, rows)


def note(text: str) -> str:
    """An italic remark (escaped)."""
    return f'<p class="note">{html.escape(text)}</p>'


def section(panel_id: str, title: str, body: str) -> str:
    """One panel: ``<section id=panel_id>`` with an ``<h2>``."""
    return f'<section id="{panel_id}" class="panel"><h2>{html.escape(title)}</h2>{body}</section>'


def pct(value: object, digits: int = 2) -> str:
    """``12.34%``, or ``-`` when missing."""
    return f"{value:.{digits}%}" if finite(value) else MISSING


def num(value: object, digits: int = 2) -> str:
    """``1.23``, ``inf``, or ``-`` when missing."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:,.{digits}f}" if finite(value) else MISSING


@dataclass(frozen=True)
class Sheet:
    """Everything the tearsheet panels show, computed once per report."""

    returns: pd.DataFrame
    summary: dict[str, float]
    monthly: pl.DataFrame
    rolling: pl.DataFrame
    drawdowns: pl.DataFrame
    trades: pl.DataFrame
    open_lots: int
    trade_stats: dict[str, float]
    per_year: pl.DataFrame
    turnover: pl.DataFrame
    excess: pl.DataFrame


def build_sheet(result: BacktestResult) -> Sheet:
    """Compute the tearsheet of ``result`` (:mod:`kronos.backtest.tearsheet`)."""
    rets = ts.daily_returns(result.equity)
    sessions = result.equity.sort("ts")["ts"].to_list()
    trades, open_lots = ts.round_trips(result.fills, sessions, result.events)
    return Sheet(
        returns=rets,
        summary=ts.summary(rets),
        monthly=ts.monthly_returns(rets),
        rolling=ts.rolling(rets),
        drawdowns=ts.worst_drawdowns(rets),
        trades=trades,
        open_lots=open_lots,
        trade_stats=ts.trade_stats(trades),
        per_year=ts.per_year(result.equity, result.fills, trades),
        turnover=ts.turnover_by_month(result.equity, result.fills),
        excess=ts.excess_curve(rets),
    )


_SUMMARY_ROWS = (
    ("alpha", "Alpha (ann., vs benchmark)", pct),
    ("beta", "Beta", num),
    ("information_ratio", "Information ratio (ann.)", num),
    ("calmar", "Calmar", num),
    ("var_95", "VaR 95%, 1 day (normal)", pct),
    ("cvar_95", "CVaR 95%, 1 day (normal)", pct),
    ("cvar_95_hist", "CVaR 95%, 1 day (historical)", pct),
    ("profit_factor_daily", "Profit factor (daily returns)", num),
    ("win_days", "Winning sessions", pct),
    ("best_day", "Best session", pct),
    ("worst_day", "Worst session", pct),
)


def summary_table(sheet: Sheet) -> str:
    """Risk and benchmark-relative figures (quantstats)."""
    s = sheet.summary
    rows = [[label, fmt(s.get(key))] for key, label, fmt in _SUMMARY_ROWS]
    return "<h3>Risk and relative performance</h3>" + table(["Statistic", "Value"], rows)


def trade_table(sheet: Sheet) -> str:
    """Figures of the closed FIFO round trips."""
    t = sheet.trade_stats
    rows = [
        ["Round trips (FIFO, closed)", f"{int(t.get('trades', 0)):,}"],
        ["Win rate (round trips)", pct(t.get("win_rate"))],
        ["Profit factor (round trips)", num(t.get("profit_factor"))],
        ["Median holding (sessions)", num(t.get("median_sessions"), 0)],
        ["Mean return per round trip", pct(t.get("avg_return"))],
    ]
    return table(["Round trips", "Value"], rows)


def equity_panel(result: BacktestResult, sheet: Sheet) -> str:
    """NAV (log scale) and the excess-return curve."""
    if result.equity.is_empty():
        return section("equity", "Equity", note("No equity recorded: plot skipped."))
    return section(
        "equity",
        "Equity",
        rp.embed(rp.equity(result.equity, result.name), "fig-equity")
        + rp.embed(rp.excess(sheet.excess), "fig-excess"),
    )


def drawdowns_panel(result: BacktestResult, sheet: Sheet) -> str:
    """Underwater plot and the worst drawdowns with start, trough, recovery."""
    if result.equity.is_empty():
        return section("drawdowns", "Drawdowns", note("No equity recorded: plot skipped."))
    wealth = (1 + sheet.returns.fillna(0.0)).cumprod()
    dd = wealth / np.maximum(wealth.cummax(), 1.0) - 1  # the initial cash is the first peak
    fig = rp.underwater(
        list(sheet.returns.index.date), dd["strategy"].to_numpy(), dd["benchmark"].to_numpy(),
        result.name,
    )  # fmt: skip
    worst = sheet.drawdowns
    rows = [
        [cell(r["start"]), cell(r["trough"]), cell(r["recovery"]) if r["recovery"] else
         "not recovered", pct(r["depth"]), str(r["sessions"]), str(r["days"])]
        for r in worst.iter_rows(named=True)
    ]  # fmt: skip
    body = rp.embed(fig, "fig-drawdown") + f"<h3>Worst {worst.height} drawdowns</h3>"
    body += table(["start", "trough", "recovery", "depth", "sessions", "days"], rows)
    return section("drawdowns", "Drawdowns", body)


def monthly_panel(sheet: Sheet) -> str:
    """Heatmap of monthly returns and the table with the year's return."""
    m = sheet.monthly
    if m.is_empty():
        return section("monthly-returns", "Monthly returns", note("No returns."))
    rows = [
        [str(r["year"])] + [pct(r[c], 1) for c in ts.MONTHS] + [pct(r["year_return"], 1)]
        for r in m.iter_rows(named=True)
    ]
    body = rp.embed(rp.monthly_heatmap(m), "fig-monthly") + table(
        ["year", *ts.MONTHS, "year"], rows, cls="compact"
    )
    return section("monthly-returns", "Monthly and yearly returns (compounded)", body)


def rolling_panel(sheet: Sheet) -> str:
    """Rolling Sharpe, volatility and beta."""
    title = f"Rolling Sharpe, volatility and beta ({ts.ROLLING_WINDOW} sessions)"
    if sheet.rolling.is_empty():
        return section(
            "rolling", title, note(f"Fewer than {ts.ROLLING_WINDOW} sessions: nothing to roll.")
        )
    return section(
        "rolling", title, rp.embed(rp.rolling(sheet.rolling, ts.ROLLING_WINDOW), "fig-rolling")
    )


def distribution_panel(sheet: Sheet) -> str:
    """Histogram of daily returns with VaR and CVaR."""
    r = sheet.returns["strategy"].dropna() if not sheet.returns.empty else pd.Series(dtype=float)
    if len(r) < 2:
        return section("distribution", "Return distribution", note("No returns."))
    s = sheet.summary
    fig = rp.distribution(r.to_numpy(), s.get("var_95", math.nan), s.get("cvar_95_hist", math.nan))
    body = rp.embed(fig, "fig-distribution") + note(
        "VaR: variance-covariance (normal) 95% one-day quantile; "
        "CVaR marked: historical mean of the returns at or below the 5% quantile."
    )
    return section("distribution", "Return distribution", body)


def trades_panel(result: BacktestResult, sheet: Sheet) -> str:
    """Trade figures, the last round trips and turnover per month."""
    t = sheet.trades
    body = trade_table(sheet)
    if not sheet.turnover.is_empty():
        body += rp.embed(rp.turnover(sheet.turnover), "fig-turnover")
    if t.is_empty():
        body += note("No closed round trips.")
    else:
        shown = t.tail(LAST_TRADES)
        money = {c: (lambda v: f"{v:,.2f}") for c in ("qty", "entry_price", "exit_price", "pnl")}
        money["ret"] = lambda v: pct(v)
        body += f"<h3>Last {shown.height} of {t.height:,} round trips (FIFO per symbol)</h3>"
        body += frame_table(shown, money)
        body += note("The full list is trades.parquet beside this report.")
    if sheet.open_lots:
        body += note(f"{sheet.open_lots} lots still open at the end are not in the list.")
    return section("trades", "Trades and turnover", body)


def per_year_table(sheet: Sheet, cls: str = "") -> str:
    """Trading results per calendar year."""
    py = sheet.per_year
    if py.is_empty():
        return note("No equity recorded.")
    rows = [
        [str(r["year"]), pct(r["return"]), pct(r["benchmark"]), pct(r["excess"]), num(r["sharpe"]),
         pct(r["max_drawdown"]), f"{r['trades']:,}", num(r["turnover"])]
        for r in py.iter_rows(named=True)
    ]  # fmt: skip
    return table(
        ["year", "return", "benchmark", "excess", "Sharpe", "max DD", "trades", "turnover"],
        rows,
        cls=cls,
    )


def per_year_panel(sheet: Sheet, folds_html: str) -> str:
    """Per-year trading results beside the per-fold forecast table."""
    body = (
        '<div class="side"><div><h3>Trading per year</h3>'
        + per_year_table(sheet, cls="compact")
        + f'</div><div class="compact">{folds_html}</div></div>'
    )
    return section("per-year", "Per-year trading and per-fold forecasts", body)


def forecast_quality_panel(result: BacktestResult, target: float, band: tuple) -> str:
    """Rolling coverage, PIT histogram, coverage by volatility tercile, calibration scale."""
    parts = []
    if not result.coverage.is_empty():
        parts.append(
            rp.embed(rp.coverage(result.coverage.sort("ts"), target, band), "fig-coverage")
        )
    else:
        parts.append(note("No coverage data: plot skipped."))
    if not result.pit_hist.is_empty():
        parts.append(rp.embed(rp.pit_histogram(result.pit_hist), "fig-pit"))
    if not result.coverage_terciles.is_empty():
        terc = result.coverage_terciles
        parts.append(rp.embed(rp.tercile_coverage(terc, target), "fig-terciles"))
        parts.append(
            frame_table(terc, {"vol_lo": pct, "vol_hi": pct, "coverage": lambda v: pct(v, 1)})
        )
    if not result.calibration_scale.is_empty():
        parts.append(rp.embed(rp.calibration_scale(result.calibration_scale), "fig-scale"))
    elif not result.pit_hist.is_empty():
        parts.append(note("No calibrator ran (forecaster.calibrate is off): no scale to show."))
    return section("forecast-quality", "Forecast quality", "".join(parts))


def forecast_absent_panel(reason: str) -> str:
    """The place of the forecast page in a run without forecasts, saying why."""
    return (
        '<section id="forecast-quality-absent" class="panel"><h2>Forecast quality</h2>'
        + note(reason)
        + "</section>"
    )
