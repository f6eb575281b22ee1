"""Interactive plotly figures of the backtest report, embedded without a CDN.

:func:`plotly_js` inlines plotly.js once per page; :func:`embed` writes one figure
as a ``<div>`` and a short script that draws it with that copy, so the page opens
offline and loads nothing from elsewhere (no MathJax, no web fonts).
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import polars as pl
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

CONFIG = {"displaylogo": False, "responsive": True}
_HEIGHT = 380
_MAX_STACKED = 1000  # points per trace of the stacked weights
_BLUE, _GRAY, _ORANGE, _GREEN, _RED = "#1f77b4", "#7f7f7f", "#ff7f0e", "#2ca02c", "#d62728"
# d3 formats: "$1.5M" on a log axis instead of matplotlib's "1e7" offset
MONEY_TICKS = "$.3~s"
MONEY_HOVER = "$,.0f"
PCT = ".1%"


def plotly_js() -> str:
    """The ``<script>`` with plotly.js, once per page (about 4.8 MB)."""
    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def embed(fig: go.Figure, div_id: str) -> str:
    """``fig`` as a ``<div id=div_id>`` drawn by the page's inlined plotly.js."""
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        config=CONFIG,
        default_height=f"{fig.layout.height or _HEIGHT}px",
    )


def _layout(fig: go.Figure, title: str, height: int = _HEIGHT, **kw: object) -> go.Figure:
    opts: dict[str, object] = {
        "hovermode": "x unified",
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
    }
    fig.update_layout(
        title={"text": html.escape(title), "x": 0.01},
        template="plotly_white",
        height=height,
        margin={"l": 70, "r": 20, "t": 50, "b": 40},
        **(opts | kw),
    )
    return fig


def x_dates(values: object) -> np.ndarray:
    """Dates as ISO strings: the compact, fast form of an x axis (plotly copies what it gets)."""
    return pl.Series(values).cast(pl.String).to_numpy()


def _y(values: object) -> np.ndarray:
    # float32: 7 significant digits are plenty on screen and halve the page's data
    return np.asarray(values, dtype=np.float32)


def _name(text: str) -> str:
    # plotly renders trace names as HTML-ish text: a symbol is shown, never interpreted
    return html.escape(text)


def equity(eq: pl.DataFrame, name: str) -> go.Figure:
    """NAV of the strategy and the benchmark on a log axis with money ticks."""
    eq = eq.sort("ts")
    fig = go.Figure()
    for col, label, color in (("nav", _name(name), _BLUE), ("benchmark", "benchmark", _GRAY)):
        fig.add_scatter(
            x=x_dates(eq["ts"]),
            y=_y(eq[col]),
            name=label,
            line={"color": color, "width": 1.6 if col == "nav" else 1.2},
            hovertemplate=f"%{{y:{MONEY_HOVER}}}",
        )
    fig.update_yaxes(type="log", tickformat=MONEY_TICKS, nticks=8, title_text="NAV (log scale)")
    return _layout(fig, "NAV: strategy vs benchmark (buy and hold)")


def excess(curve: pl.DataFrame) -> go.Figure:
    """Growth of the strategy relative to the benchmark's, minus 1."""
    fig = go.Figure()
    fig.add_scatter(
        x=x_dates(curve["ts"]),
        y=_y(curve["excess"]),
        name="excess",
        fill="tozeroy",
        line={"color": _GREEN, "width": 1.2},
        hovertemplate=f"%{{y:{PCT}}}",
    )
    fig.update_yaxes(tickformat=".0%", title_text="strategy / benchmark - 1")
    return _layout(fig, "Excess return vs the benchmark (cumulative, relative)", height=300)


def underwater(ts: list, dd_strategy: object, dd_benchmark: object, name: str) -> go.Figure:
    """Drawdown from the running peak, strategy and benchmark."""
    fig = go.Figure()
    fig.add_scatter(
        x=x_dates(ts),
        y=_y(dd_strategy),
        name=_name(name),
        fill="tozeroy",
        line={"color": _BLUE, "width": 1},
    )
    fig.add_scatter(
        x=x_dates(ts), y=_y(dd_benchmark), name="benchmark", line={"color": _GRAY, "width": 1}
    )
    fig.update_traces(hovertemplate=f"%{{y:{PCT}}}")
    fig.update_yaxes(tickformat=".0%", title_text="drawdown")
    return _layout(fig, "Drawdown (underwater)", height=300)


def monthly_heatmap(monthly: pl.DataFrame) -> go.Figure:
    """Monthly returns, one row per year, diverging colours centred on 0."""
    months = [c for c in monthly.columns if c not in ("year", "year_return")]
    z = [[row[m] for m in months] for row in monthly.iter_rows(named=True)]
    text = [["" if v is None else f"{v:.1%}" for v in r] for r in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=months,
            y=[str(y) for y in monthly["year"]],
            text=text,
            texttemplate="%{text}",
            colorscale="RdYlGn",
            zmid=0.0,
            hovertemplate="%{y} %{x}: %{z:.2%}<extra></extra>",
            colorbar={"tickformat": ".0%"},
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    return _layout(fig, "Monthly returns", height=max(260, 26 * monthly.height + 90))


def rolling(roll: pl.DataFrame, window: int) -> go.Figure:
    """Rolling Sharpe, volatility and beta, one panel each."""
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(f"Sharpe ({window} sessions)", "Volatility (ann.)", "Beta vs benchmark"),
    )
    ts = x_dates(roll["ts"])
    for row, (col, color, fmt) in enumerate(
        (("sharpe", _BLUE, ".2f"), ("volatility", _ORANGE, PCT), ("beta", _GREEN, ".2f")), 1
    ):
        fig.add_scatter(
            x=ts,
            y=_y(roll[col]),
            name=col,
            line={"color": color, "width": 1.2},
            hovertemplate=f"%{{y:{fmt}}}",
            row=row,
            col=1,
        )
    fig.update_yaxes(tickformat=".0%", row=2, col=1)
    return _layout(
        fig, f"Rolling statistics, {window}-session window", height=620, showlegend=False
    )


def distribution(returns: object, var: float, cvar: float) -> go.Figure:
    """Histogram of daily returns with the 95 % VaR and CVaR marked."""
    r = _y(returns)
    lo, hi = np.nanpercentile(r, [0.5, 99.5]) if r.size else (0.0, 0.0)
    fig = go.Figure(
        go.Histogram(
            x=r,
            xbins={"size": float(hi - lo) / 60 or None},  # 60 bins over the central 99 %
            marker={"color": _BLUE},
            opacity=0.8,
            name="daily returns",
            hovertemplate="%{x}: %{y} sessions<extra></extra>",
        )
    )
    marks = ((var, "VaR 95%", _ORANGE, "top right"), (cvar, "CVaR 95%", _RED, "top left"))
    for value, label, color, where in marks:
        if value == value:  # not NaN
            fig.add_vline(
                x=value,
                line={"color": color, "dash": "dash"},
                annotation_text=f"{label} {value:.2%}",
                annotation_position=where,
            )
    fig.update_xaxes(tickformat=".1%", title_text="daily return")
    fig.update_yaxes(title_text="sessions")
    return _layout(fig, "Distribution of daily returns", hovermode="closest")


def turnover(monthly: pl.DataFrame) -> go.Figure:
    """Traded notional / mean NAV per month."""
    fig = go.Figure(
        go.Bar(
            x=x_dates(monthly["month"]),
            y=_y(monthly["turnover"]),
            marker={"color": _ORANGE},
            name="turnover",
            hovertemplate="%{y:.2f}x NAV",
        )
    )
    fig.update_yaxes(title_text="x mean NAV")
    return _layout(fig, "Turnover per month (traded notional / mean NAV)", height=300)


def lines(frame: pl.DataFrame, title: str, ytitle: str, pct: bool = False) -> go.Figure:
    """One line per non-``ts`` column of ``frame`` (weights stack, others do not)."""
    fig = go.Figure()
    ts = x_dates(frame["ts"])
    for col in (c for c in frame.columns if c != "ts"):
        fig.add_scatter(
            x=ts,
            y=_y(frame[col]),
            name=_name(col),
            line={"width": 1.2},
            hovertemplate=f"%{{y:{PCT if pct else '.4f'}}}",
        )
    if pct:
        fig.update_yaxes(tickformat=".0%")
    fig.update_yaxes(title_text=ytitle)
    return _layout(fig, title)


def weights(wm: pl.DataFrame, top: int) -> go.Figure:
    """Stacked weights of the top symbols, ``other`` and ``cash``."""
    fig = go.Figure()
    wm = wm.gather_every(max(1, wm.height // _MAX_STACKED))  # a stacked area needs fewer points
    ts = x_dates(wm["ts"])
    for col in (c for c in wm.columns if c != "ts"):
        fig.add_scatter(
            x=ts,
            y=_y(wm[col].fill_null(0.0)),
            name=_name(col),
            stackgroup="w",
            line={"width": 0.5},
            hovertemplate=f"%{{y:{PCT}}}",
        )
    fig.update_yaxes(tickformat=".0%")
    return _layout(fig, f"Weights (top {top} symbols by average weight, other, cash)")


def coverage(cov: pl.DataFrame, target: float, band: tuple[float, float]) -> go.Figure:
    """Rolling p05-p95 coverage, raw and calibrated, against the target band."""
    fig = lines(cov, "Rolling p05-p95 coverage (60 sessions, all symbols)", "coverage", pct=True)
    fig.update_traces(line_color=_ORANGE, selector={"name": "raw"})
    fig.update_traces(line_color=_BLUE, selector={"name": "calibrated"})
    fig.add_hrect(y0=band[0], y1=band[1], fillcolor=_GREEN, opacity=0.12, line_width=0)
    fig.add_hline(y=target, line={"color": _GREEN, "dash": "dash"})
    return fig


def pit_histogram(hist: pl.DataFrame) -> go.Figure:
    """PIT shares per bin, raw and calibrated, against the uniform share."""
    fig = go.Figure()
    for stage, color in (("raw", _ORANGE), ("calibrated", _BLUE)):
        part = hist.filter(pl.col("stage") == stage)
        if part.is_empty():
            continue
        centre = ((part["bin_lo"] + part["bin_hi"]) / 2).to_numpy()
        fig.add_bar(
            x=centre, y=part["share"].to_numpy(), name=stage, marker={"color": color}, opacity=0.8
        )
    if hist.height:
        fig.add_hline(
            y=float(hist["expected"][0]),
            line={"color": "black", "dash": "dash"},
            annotation_text="uniform",
        )
    fig.update_xaxes(title_text="PIT = F(realized return)", range=[0, 1])
    fig.update_yaxes(tickformat=".0%", title_text="share")
    return _layout(fig, "PIT histogram of the step-1 forecasts", barmode="group")


def tercile_coverage(terc: pl.DataFrame, target: float) -> go.Figure:
    """p05-p95 coverage per realized-volatility tercile, raw and calibrated."""
    fig = go.Figure()
    for stage, color in (("raw", _ORANGE), ("calibrated", _BLUE)):
        part = terc.filter(pl.col("stage") == stage)  # low, mid, high
        labels = [
            f"{t}: vol {lo:.2%}-{hi:.2%}"
            for t, lo, hi in part.select("tercile", "vol_lo", "vol_hi").iter_rows()
        ]
        fig.add_bar(x=labels, y=part["coverage"].to_numpy(), name=stage, marker={"color": color})
    fig.add_hline(y=target, line={"color": _GREEN, "dash": "dash"}, annotation_text="target")
    low = terc["coverage"].drop_nans().min() if terc.height else None
    floor = max(0.0, min(float(low) if low is not None else 0.0, target) - 0.1)
    fig.update_yaxes(tickformat=".0%", title_text="coverage", range=[floor, 1.0])
    return _layout(
        fig, "Coverage by realized-volatility tercile (EWMA at the origin)", barmode="group"
    )


def calibration_scale(scale: pl.DataFrame) -> go.Figure:
    """Median calibrator scale across symbols per session, with the 10-90 % band."""
    fig = go.Figure()
    ts = x_dates(scale["ts"])
    fig.add_scatter(x=ts, y=_y(scale["p90"]), line={"width": 0}, showlegend=False)
    fig.add_scatter(
        x=ts,
        y=_y(scale["p10"]),
        fill="tonexty",
        line={"width": 0},
        name="10-90% of symbols",
        fillcolor="rgba(31,119,180,0.2)",
    )
    fig.add_scatter(x=ts, y=_y(scale["median"]), name="median", line={"color": _BLUE})
    fig.add_hline(y=1.0, line={"color": "black", "dash": "dot"})
    fig.update_yaxes(title_text="band scale (1 = raw width)")
    return _layout(fig, "Calibration scale over time")
