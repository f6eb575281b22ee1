"""Render a :class:`BacktestResult` as PNG plots, one self-contained HTML page, and files.

Plots are drawn on bare ``matplotlib.figure.Figure`` objects with the Agg canvas, so
nothing touches pyplot's global state. The HTML embeds the PNGs as data URIs and
inline CSS: it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from kronos.backtest import report_plots, report_sections
from kronos.backtest.report_sections import MISSING as _MISSING
from kronos.backtest.report_sections import cell as _cell
from kronos.backtest.report_sections import finite as _finite
from kronos.backtest.report_sections import frame_table as _frame_table
from kronos.backtest.report_sections import note as _note
from kronos.backtest.report_sections import table as _table
from kronos.backtest.result import STAT_NAMES, BacktestResult

# Stable HTML ids of the report's panels (a browser test looks for them). Every id is
# present in every report except "forecast-quality", which a plain strategy (no forecasts)
# replaces by a note with the id "forecast-quality-absent".
PANEL_IDS: tuple[str, ...] = (
    "summary",
    "equity",
    "drawdowns",
    "monthly-returns",
    "rolling",
    "distribution",
    "trades",
    "per-year",
    "forecast-quality",
)
COVERAGE_TARGET = 0.90
COVERAGE_BAND = (0.88, 0.92)
TOP_WEIGHTS = 10
MAX_BREAKERS = 50
LAST_FILLS = 20
_DPI = 110
_FIGSIZE = (10.0, 4.0)

_STAT_LABELS = {
    "total_return": "Total return",
    "cagr": "CAGR",
    "volatility": "Volatility (ann.)",
    "sharpe": "Sharpe",
    "sortino": "Sortino",
    "max_drawdown": "Max drawdown",
    "turnover": "Turnover",
    "exposure": "Exposure",
    "hit_rate": "Hit rate",
}
_PERCENT_STATS = {"total_return", "cagr", "volatility", "max_drawdown", "exposure", "hit_rate"}
_RATIO_STATS = {"sharpe", "sortino"}

_FRAMES = (
    "equity",
    "positions",
    "fills",
    "orders",
    "fold_metrics",
    "coverage",
    "factor_contrib",
    "breakers",
    "events",
    "pit_hist",
    "coverage_terciles",
    "calibration_scale",
)

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;
max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
.meta td,.meta th{text-align:left}.key{color:#888;font-size:.8em;margin-left:.4em}
.note{color:#777;font-style:italic}img{max-width:100%;height:auto}
figure{margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.85em}
code{font-size:.9em}
nav.toc{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd;z-index:9}
nav.toc a{margin-right:1em;font-size:.9em}.panel{margin-bottom:1.5em}
.side{display:flex;gap:1.2em;align-items:flex-start}.side>div:first-child{flex:0 0 auto}
.side>div:last-child{flex:1 1 auto;overflow-x:auto}
table.compact,.compact table{font-size:.75em}
table.compact td,table.compact th,.compact td,.compact th{padding:.15em .3em;white-space:nowrap}
"""


# ---------------------------------------------------------------- formatting


def format_stat(name: str, value: float | None) -> str:
    """Format one headline statistic: percentages, 2-decimal ratios, turnover as x per year."""
    if not _finite(value):
        return "n/a"
    if name in _PERCENT_STATS:
        return f"{value:.2%}"
    if name == "turnover":
        return f"{value:.2f}x / yr"
    if name in _RATIO_STATS:
        return f"{value:.2f}"
    return f"{value:.4g}"


# --------------------------------------------------------------------- plots


def _new_figure(title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=_FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _label(text: str) -> str:
    # A "$" pair would switch matplotlib to mathtext; symbols are plain text.
    return text.replace("$", r"\$")


def _total_return(stats: dict[str, float], key: str, series: np.ndarray) -> float:
    value = stats.get(key)
    if _finite(value):
        return float(value)
    ok = series[np.isfinite(series)]
    return float(ok[-1] / ok[0] - 1.0) if ok.size >= 2 and ok[0] != 0 else math.nan


def drawdown(nav: np.ndarray) -> np.ndarray:
    """Fractional drawdown from the running peak (0 at a peak, negative below it)."""
    peak = np.fmax.accumulate(nav)
    with np.errstate(divide="ignore", invalid="ignore"):
        return nav / peak - 1.0


def _money(value: float, _pos: object = None) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"${value / size:.3g}{suffix}"
    return f"${value:.3g}"


def plot_equity(result: BacktestResult, log_scale: bool = False) -> Figure | None:
    """Strategy NAV against the buy-and-hold benchmark; None when there is no equity."""
    eq = result.equity.sort("ts")
    if eq.is_empty():
        return None
    ts, nav, bench = eq["ts"].to_numpy(), eq["nav"].to_numpy(), eq["benchmark"].to_numpy()
    strat_ret = _total_return(result.stats, "total_return", nav)
    bench_ret = _total_return(result.stats, "benchmark_total_return", bench)
    fig, ax = _new_figure(
        f"NAV: strategy {format_stat('total_return', strat_ret)}, "
        f"benchmark {format_stat('total_return', bench_ret)}"
    )
    ax.plot(ts, nav, label=_label(result.name), color="tab:blue", lw=1.4)
    ax.plot(ts, bench, label="benchmark (buy and hold)", color="tab:gray", lw=1.2)
    if log_scale:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(FuncFormatter(_money))
    ax.yaxis.set_major_formatter(FuncFormatter(_money))  # "$1.5M", never a "1e7" offset
    ax.set_ylabel("NAV")
    ax.legend(loc="upper left")
    return fig


def plot_drawdown(result: BacktestResult) -> Figure | None:
    """Underwater plot of strategy and benchmark; None when there is no equity."""
    eq = result.equity.sort("ts")
    if eq.is_empty():
        return None
    ts = eq["ts"].to_numpy()
    dd_s, dd_b = drawdown(eq["nav"].to_numpy()), drawdown(eq["benchmark"].to_numpy())
    fig, ax = _new_figure(
        f"Drawdown: strategy {np.nanmin(dd_s):.1%}, benchmark {np.nanmin(dd_b):.1%}"
    )
    ax.fill_between(ts, dd_s, 0.0, color="tab:blue", alpha=0.35, label=_label(result.name))
    ax.plot(ts, dd_b, color="tab:gray", lw=1.2, label="benchmark")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("drawdown")
    ax.legend(loc="lower left")
    return fig


def plot_coverage(result: BacktestResult) -> Figure | None:
    """Rolling p05-p95 coverage, raw vs calibrated, against the 0.90 target."""
    cov = result.coverage.sort("ts")
    if cov.is_empty():
        return None
    ts = cov["ts"].to_numpy()
    fig, ax = _new_figure("Rolling p05-p95 coverage")
    ax.axhspan(*COVERAGE_BAND, color="tab:green", alpha=0.12, label="0.88-0.92 band")
    ax.axhline(COVERAGE_TARGET, color="tab:green", lw=1.0, ls="--", label="target 0.90")
    ax.plot(ts, cov["raw"].to_numpy(), color="tab:orange", lw=1.2, label="raw")
    ax.plot(ts, cov["calibrated"].to_numpy(), color="tab:blue", lw=1.4, label="calibrated")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return fig


def weight_matrix(result: BacktestResult, top: int = TOP_WEIGHTS) -> pl.DataFrame:
    """Weights per session: the ``top`` symbols by mean absolute weight, ``other``, ``cash``.

    Sessions are those of the equity frame; a symbol not held on a session weighs 0.
    """
    eq = result.equity.sort("ts").select("ts", (pl.col("cash") / pl.col("nav")).alias("cash"))
    pos = result.positions
    if pos.is_empty():
        return eq.select("ts", pl.lit(0.0).alias("other"), "cash")
    wide = pos.pivot(on="symbol", index="ts", values="weight", aggregate_function="sum")
    wide = eq.select("ts").join(wide, on="ts", how="left").fill_null(0.0)
    symbols = [c for c in wide.columns if c != "ts"]
    mean_abs = {s: float(wide[s].abs().mean()) for s in symbols}
    ranked = sorted(symbols, key=lambda s: (-mean_abs[s], s))
    keep, rest = ranked[:top], ranked[top:]
    other = pl.sum_horizontal(rest) if rest else pl.lit(0.0)
    return wide.select("ts", *keep, other.alias("other")).join(eq, on="ts", how="left")


def plot_weights(result: BacktestResult) -> Figure | None:
    """Stacked weights of the top symbols, the rest and cash; None when there is no equity."""
    if result.equity.is_empty():
        return None
    wm = weight_matrix(result)
    names = [c for c in wm.columns if c != "ts"]
    palette = colormaps["tab20"]
    colors = [palette(i % 20) for i in range(len(names) - 2)] + ["#9e9e9e", "#e0e0e0"]
    fig, ax = _new_figure(f"Weights (top {TOP_WEIGHTS} symbols by average weight)")
    ax.stackplot(
        wm["ts"].to_numpy(),
        *[wm[n].fill_null(0.0).to_numpy() for n in names],
        labels=[_label(n) for n in names],
        colors=colors,
        alpha=0.9,
    )
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return fig


def plot_factors(result: BacktestResult) -> Figure | None:
    """Factor contribution per rebalance, one line per factor; None when there are none."""
    fc = result.factor_contrib
    if fc.is_empty():
        return None
    wide = fc.pivot(on="factor", index="ts", values="contribution", aggregate_function="sum")
    wide = wide.sort("ts")
    fig, ax = _new_figure("Factor contributions of the targets")
    ts = wide["ts"].to_numpy()
    for name in sorted(c for c in wide.columns if c != "ts"):
        ax.plot(ts, wide[name].to_numpy(), lw=1.2, label=_label(name))
    ax.axhline(0.0, color="black", lw=0.6)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return fig


# -------------------------------------------------------------- HTML sections


def _header(result: BacktestResult, generated_at: datetime) -> str:
    rows = [
        ["Spec hash", result.spec_hash],
        ["Order hash", result.order_hash],
        ["Date range", f"{result.start.isoformat()} to {result.end.isoformat()}"],
        ["Generated at", generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")],
    ]
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows
    )
    return (
        f"<h1>Backtest report: {html.escape(result.name)}</h1>"
        f'<table class="meta"><tbody>{body}</tbody></table>'
    )


def _stats_section(result: BacktestResult) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("Statistic", result.name, "Benchmark"))
    rows = []
    for name in STAT_NAMES:
        strat = format_stat(name, result.stats.get(name))
        bench = format_stat(name, result.stats.get(f"benchmark_{name}"))
        rows.append(
            f"<tr><td>{html.escape(_STAT_LABELS.get(name, name))}"
            f'<span class="key">{html.escape(name)}</span></td>'
            f"<td>{html.escape(strat)}</td><td>{html.escape(bench)}</td></tr>"
        )
    return (
        "<h3>Headline statistics (vectorbt)</h3>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _fold_section(fm: pl.DataFrame) -> str:
    out = "<h3>Forecast metrics per fold</h3>"
    if fm.is_empty():
        return out + _note("No fold metrics recorded.")
    stages = sorted(
        fm["stage"].unique().to_list(), key=lambda s: ({"raw": 0, "calibrated": 1}.get(s, 2), s)
    )
    metrics = (
        ("mae", "MAE", "{:.4f}"),
        ("coverage", "coverage", "{:.1%}"),
        ("crps", "CRPS", "{:.4f}"),
    )
    headers = ["fold", "train", "test", "n"] + [
        f"{lbl} {s}" for _, lbl, _ in metrics for s in stages
    ]
    rows = []
    for (fold,), grp in sorted(fm.group_by("fold"), key=lambda kv: kv[0][0]):
        by_stage = {r["stage"]: r for r in grp.iter_rows(named=True)}
        first = by_stage.get(stages[0]) or next(iter(by_stage.values()))
        row = [
            str(fold),
            f"{_cell(first['train_start'])} to {_cell(first['train_end'])}",
            f"{_cell(first['test_start'])} to {_cell(first['test_end'])}",
            str(first["n"]),
        ]
        for col, _, fmt in metrics:
            for s in stages:
                v = by_stage.get(s, {}).get(col)
                row.append(fmt.format(v) if _finite(v) else _MISSING)
        rows.append(row)
    return out + _table(headers, rows)


def _no_forecasts(result: BacktestResult) -> str | None:
    """Why a run has no forecast page: a plain strategy has no forecasts; None if it has them."""
    said = [n for n in result.notes if n.startswith("plain ")]  # kronos.backtest.plain's note
    if said:
        return said[0]
    if result.fold_metrics.is_empty() and result.coverage.is_empty() and result.pit_hist.is_empty():
        return "This run recorded no step-1 forecasts, so there is no forecast quality to show."
    return None


def _breakers_section(br: pl.DataFrame) -> str:
    out = f"<h2>Breaker trips ({br.height})</h2>"
    if br.is_empty():
        return out + _note("No breaker tripped.")
    shown = br.sort("tripped_at").head(MAX_BREAKERS)
    if br.height > MAX_BREAKERS:
        out += _note(f"Showing the first {MAX_BREAKERS} of {br.height} trips.")
    return out + _frame_table(shown)


def _orders_section(orders: pl.DataFrame) -> str:
    out = f"<h2>Orders ({orders.height})</h2>"
    if orders.is_empty():
        return out + _note("No orders.")
    by_status = orders.group_by("status").len().sort("len", descending=True)
    rows = [[s, str(n), f"{n / orders.height:.1%}"] for s, n in by_status.iter_rows()]
    out += _table(["status", "orders", "share"], rows)
    missed = orders.filter(pl.col("status") != "filled")
    if missed.is_empty():
        return out + _note("Every order filled in full.")
    reasons = (
        missed.with_columns(pl.col("reason").fill_null("(no reason given)"))
        .group_by("status", "reason")
        .len()
        .sort(["len", "status", "reason"], descending=[True, False, False])
    )
    rows = [[s, r, str(n)] for s, r, n in reasons.iter_rows()]
    return (
        out + "<h3>Not (fully) filled: reasons</h3>" + _table(["status", "reason", "orders"], rows)
    )


def _fills_section(fills: pl.DataFrame) -> str:
    out = f"<h2>Last {LAST_FILLS} fills (of {fills.height})</h2>"
    if fills.is_empty():
        return out + _note("No fills.")
    money = {c: (lambda v: f"{v:,.2f}") for c in ("qty", "price", "ref_price", "fee")}
    return out + _frame_table(fills.sort("ts", maintain_order=True).tail(LAST_FILLS), money)


def _kv_section(title: str, values: dict[str, float], fmt: str, empty_note: str) -> str:
    out = f"<h3>{html.escape(title)}</h3>"
    if not values:
        return out + _note(empty_note)
    rows = [[k, fmt.format(v) if _finite(v) else "n/a"] for k, v in values.items()]
    return out + _table(["", title.lower()], rows)


def _parity_timings_section(result: BacktestResult) -> str:
    timings = dict(result.timings)
    if timings:
        timings["total"] = sum(v for v in timings.values() if _finite(v))
    return (
        "<h2>Parity and timings</h2>"
        + _kv_section(
            "Parity vs vectorbt (max relative difference)",
            result.parity,
            "{:.2e}",
            "No vectorbt parity check was run.",
        )
        + _kv_section("Timings (seconds)", timings, "{:.2f}", "No timings recorded.")
    )


# ------------------------------------------------------------------- writers

_PNGS: tuple[tuple[str, Callable[[BacktestResult], Figure | None]], ...] = (
    ("drawdown.png", plot_drawdown),
    ("coverage.png", plot_coverage),
    ("weights.png", plot_weights),
    ("factors.png", plot_factors),
)
_NAV = "".join(f'<a href="#{p}">{p.replace("-", " ")}</a>' for p in PANEL_IDS)


def write_pngs(result: BacktestResult, out_dir: Path, *, log_scale: bool = True) -> dict[str, Path]:
    """The static matplotlib copies of the main plots (for notebooks), beside the report."""
    written: dict[str, Path] = {}
    plots = (("equity.png", lambda r: plot_equity(r, log_scale=log_scale)), *_PNGS)
    for fname, plot in plots:
        fig = plot(result)
        if fig is not None:
            written[fname] = out_dir / fname
            written[fname].write_bytes(_png(fig))
    return written


def _positions_section(result: BacktestResult) -> str:
    out = "<h2>Positions and factors</h2>"
    if result.equity.is_empty():
        return out + _note("No equity recorded: plot skipped.")
    out += report_plots.embed(
        report_plots.weights(weight_matrix(result), TOP_WEIGHTS), "fig-weights"
    )
    fc = result.factor_contrib
    if fc.is_empty():
        return out + _note("No factor contributions: plot skipped.")
    wide = fc.pivot(on="factor", index="ts", values="contribution", aggregate_function="sum")
    wide = wide.sort("ts").select("ts", *sorted(c for c in wide.columns if c != "ts"))
    fig = report_plots.lines(wide, "Factor contributions of the targets", "contribution")
    return out + report_plots.embed(fig, "fig-factors")


def write_report(
    result: BacktestResult,
    out_dir: Path,
    spec_yaml: str | None = None,
    *,
    log_scale: bool = True,
) -> dict[str, Path]:
    """Write the PNG copies of the plots and a self-contained ``report.html`` into ``out_dir``.

    The page's plots are interactive (plotly.js inlined once, nothing loaded from
    elsewhere); the PNGs are static copies for notebooks (``log_scale``: equity on
    a log axis). Returns ``{file name: path}`` of every file written; a plot whose
    frame is empty is not written and the HTML says so instead.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_pngs(result, out_dir, log_scale=log_scale)
    sheet = report_sections.build_sheet(result)
    why_not = _no_forecasts(result)
    rs = report_sections
    folds = _fold_section(result.fold_metrics) if why_not is None else _note(why_not)
    parts = [
        _header(result, datetime.now(UTC)),
        f'<nav class="toc">{_NAV}</nav>',
        rs.section("summary", "Summary", _stats_section(result) + rs.summary_table(sheet)),
        rs.equity_panel(result, sheet),
        rs.drawdowns_panel(result, sheet),
        rs.monthly_panel(sheet),
        rs.rolling_panel(sheet),
        rs.distribution_panel(sheet),
        rs.trades_panel(result, sheet),
        rs.per_year_panel(sheet, folds),
        rs.forecast_quality_panel(result, COVERAGE_TARGET, COVERAGE_BAND)
        if why_not is None
        else rs.forecast_absent_panel(why_not),
        _positions_section(result),
        _breakers_section(result.breakers),
        _orders_section(result.orders),
        _fills_section(result.fills),
        _parity_timings_section(result),
    ]
    if spec_yaml is not None:
        parts.append(f"<h2>Spec</h2><pre>{html.escape(spec_yaml)}</pre>")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(f'Backtest report: {result.name}')}</title>"
        f"<style>{_CSS}</style>{report_plots.plotly_js()}</head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    written["report.html"] = out_dir / "report.html"
    written["report.html"].write_text(page, encoding="utf-8")
    if not sheet.trades.is_empty():
        written["trades.parquet"] = out_dir / "trades.parquet"
        sheet.trades.write_parquet(written["trades.parquet"])
    return written


def _json_safe(values: dict[str, float]) -> dict[str, float | None]:
    # NaN and inf are not JSON; strict readers reject them.
    return {k: (float(v) if _finite(v) else None) for k, v in values.items()}


def write_frames(result: BacktestResult, out_dir: Path) -> dict[str, Path]:
    """Write each non-empty frame as parquet and the scalars as ``stats.json``.

    Returns ``{file name: path}`` of every file written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in _FRAMES:
        frame: pl.DataFrame = getattr(result, name)
        if frame.is_empty():
            continue
        path = out_dir / f"{name}.parquet"
        frame.write_parquet(path)
        written[path.name] = path
    summary = {
        "name": result.name,
        "spec_hash": result.spec_hash,
        "order_hash": result.order_hash,
        "start": result.start.isoformat(),
        "end": result.end.isoformat(),
        "stats": _json_safe(result.stats),
        "parity": _json_safe(result.parity),
        "timings": _json_safe(result.timings),
        "notes": list(result.notes),
        "crossed_rows": result.crossed_rows,
    }
    path = out_dir / "stats.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    written[path.name] = path
    return written
