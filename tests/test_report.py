"""Report rendering on a hand-built BacktestResult."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kronos.backtest.report import PANEL_IDS, drawdown, format_stat, write_frames, write_report
from kronos.backtest.result import (
    BREAKERS_SCHEMA,
    COVERAGE_SCHEMA,
    EQUITY_SCHEMA,
    FACTORS_SCHEMA,
    FILLS_SCHEMA,
    FOLD_METRICS_SCHEMA,
    ORDERS_SCHEMA,
    PIT_SCHEMA,
    POSITIONS_SCHEMA,
    SCALE_SCHEMA,
    STAT_NAMES,
    TERCILE_SCHEMA,
    BacktestResult,
    empty,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
SYMBOLS = ("AAA", "BBB", "CCC", "DDD", EVIL)
SPEC_HASH = "spec" + "a1" * 30
ORDER_HASH = "ord" + "b2" * 30


def _sessions(n: int) -> list[date]:
    out, d = [], date(2023, 1, 2)
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


@pytest.fixture(scope="module")
def result() -> BacktestResult:
    rng = np.random.default_rng(7)
    ts = _sessions(300)
    n, k = len(ts), len(SYMBOLS)
    prices = 100.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.015, (n, k)), axis=0))
    qty = np.full(k, 40.0)
    value = prices * qty
    cash = np.full(n, 20_000.0)
    nav = cash + value.sum(axis=1)
    bench = nav[0] * prices[:, 0] / prices[0, 0]
    equity = pl.DataFrame(
        {"ts": ts, "nav": nav, "cash": cash, "invested": value.sum(axis=1), "benchmark": bench},
        schema=EQUITY_SCHEMA,
    )
    positions = pl.DataFrame(
        {
            "ts": [t for t in ts for _ in SYMBOLS],
            "symbol": list(SYMBOLS) * n,
            "qty": np.tile(qty, n),
            "price": prices.ravel(),
            "value": value.ravel(),
            "weight": (value / nav[:, None]).ravel(),
        },
        schema=POSITIONS_SCHEMA,
    )
    statuses = ["filled", "partial", "unfilled"] * 10
    orders = pl.DataFrame(
        {
            "asof": [ts[i * 10] for i in range(30)],
            "symbol": [SYMBOLS[i % k] for i in range(30)],
            "side": ["buy", "sell"] * 15,
            "qty": [10.0] * 30,
            "limit_price": [None, 101.5] * 15,
            "client_order_id": [f"o{i}" for i in range(30)],
            "status": statuses,
            "filled_qty": [{"filled": 10.0, "partial": 4.0, "unfilled": 0.0}[s] for s in statuses],
            "reason": [
                None if s == "filled" else ("volume cap" if s == "partial" else EVIL)
                for s in statuses
            ],
        },
        schema=ORDERS_SCHEMA,
    )
    done = orders.filter(pl.col("filled_qty") > 0)
    fills = pl.DataFrame(
        {
            "ts": [a + timedelta(days=1) for a in done["asof"]],
            "asof": done["asof"],
            "symbol": done["symbol"],
            "side": done["side"],
            "qty": done["filled_qty"],
            "price": [101.0] * done.height,
            "ref_price": [100.0] * done.height,
            "fee": [1.0] * done.height,
            "client_order_id": done["client_order_id"],
        },
        schema=FILLS_SCHEMA,
    )
    folds = []
    for fold, start in enumerate((0, 150)):
        for stage, cov in (("raw", 0.81), ("calibrated", 0.895)):
            folds.append(
                {
                    "fold": fold,
                    "train_start": ts[start],
                    "train_end": ts[start + 99],
                    "test_start": ts[start + 105],
                    "test_end": ts[start + 149],
                    "stage": stage,
                    "n": 225,
                    "mae": 0.012,
                    "coverage": cov,
                    "crps": 0.008,
                }
            )
    coverage = pl.DataFrame(
        {
            "ts": ts,
            "raw": np.clip(0.8 + rng.normal(0, 0.02, n), 0, 1),
            "calibrated": np.clip(0.9 + rng.normal(0, 0.01, n), 0, 1),
        },
        schema=COVERAGE_SCHEMA,
    )
    rebal = ts[::20]
    factors = pl.DataFrame(
        {
            "ts": [t for t in rebal for _ in range(3)],
            "factor": ["momentum", "value", "quality"] * len(rebal),
            "contribution": rng.normal(0, 0.01, 3 * len(rebal)),
        },
        schema=FACTORS_SCHEMA,
    )
    t0 = datetime(2023, 3, 1, 14, 30, tzinfo=UTC)
    breakers = pl.DataFrame(
        {
            "tripped_at": [t0 + timedelta(days=i) for i in range(60)],
            "scope": ["symbol"] * 60,
            "key": [SYMBOLS[i % k] for i in range(60)],
            "reason": ["gap > 10%"] * 60,
            "expires_at": [t0 + timedelta(days=i + 1) for i in range(60)],
        },
        schema=BREAKERS_SCHEMA,
    )
    stats = {name: 0.1 for name in STAT_NAMES} | {f"benchmark_{n}": 0.05 for n in STAT_NAMES}
    stats["sharpe"] = float("nan")
    return BacktestResult(
        name="demo <b>strategy</b>",
        spec_hash=SPEC_HASH,
        order_hash=ORDER_HASH,
        start=ts[0],
        end=ts[-1],
        equity=equity,
        positions=positions,
        fills=fills,
        orders=orders,
        stats=stats,
        fold_metrics=pl.DataFrame(folds, schema=FOLD_METRICS_SCHEMA),
        coverage=coverage,
        factor_contrib=factors,
        breakers=breakers,
        parity={"nav": 1.2e-9, "cash": 3.4e-10},
        timings={"forecast": 12.5, "simulate": 0.8},
        pit_hist=pl.DataFrame(
            {
                "stage": ["raw"] * 10 + ["calibrated"] * 10,
                "bin_lo": np.tile(np.arange(10) / 10, 2),
                "bin_hi": np.tile(np.arange(1, 11) / 10, 2),
                "share": np.full(20, 0.1),
                "expected": np.full(20, 0.1),
            },
            schema=PIT_SCHEMA,
        ),
        coverage_terciles=pl.DataFrame(
            {
                "stage": ["raw"] * 3 + ["calibrated"] * 3,
                "tercile": ["low", "mid", "high"] * 2,
                "vol_lo": [0.005, 0.01, 0.02] * 2,
                "vol_hi": [0.01, 0.02, 0.05] * 2,
                "n": [100] * 6,
                "coverage": [0.93, 0.9, 0.84, 0.91, 0.9, 0.886],
            },
            schema=TERCILE_SCHEMA,
        ),
        calibration_scale=pl.DataFrame(
            {"ts": ts, "median": np.full(n, 1.1), "p10": np.full(n, 0.9), "p90": np.full(n, 1.3)},
            schema=SCALE_SCHEMA,
        ),
    )


@pytest.fixture(scope="module")
def report(result: BacktestResult, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report") / "nested" / "dir"
    written = write_report(result, out, spec_yaml="name: demo\nthreshold: 1 < 2\n")
    return written, written["report.html"].read_text(encoding="utf-8")


def test_writes_plots_and_html(report) -> None:
    written, _ = report
    expected = {"equity.png", "drawdown.png", "coverage.png", "weights.png", "factors.png"}
    assert set(written) == expected | {"report.html", "trades.parquet"}
    for name in expected:
        data = written[name].read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 1000, name


def test_html_has_stats_hashes_and_sections(report) -> None:
    _, page = report
    for name in STAT_NAMES:
        assert name in page
    assert SPEC_HASH in page and ORDER_HASH in page
    assert "2023-01-02" in page
    assert "10.00%" in page and "5.00%" in page  # percent stats
    assert "0.10x / yr" in page  # turnover
    assert "n/a" in page  # NaN sharpe
    for panel in PANEL_IDS:
        assert page.count(f'<section id="{panel}"') == 1, panel
    assert "forecast-quality-absent" not in page
    for fig in ("equity", "excess", "drawdown", "monthly", "rolling", "distribution", "turnover"):
        assert page.count(f'id="fig-{fig}"') == 1, fig
    for fig in ("coverage", "pit", "terciles", "scale"):  # the forecast page
        assert page.count(f'id="fig-{fig}"') == 1, fig
    assert "88.6%" in page and "low" in page  # tercile table
    assert "Round trips (FIFO, closed)" in page and "Information ratio (ann.)" in page
    assert "Trading per year" in page and "Forecast metrics per fold" in page
    assert '"tickformat":"$.3~s"' in page and '"type":"log"' in page  # money ticks, log NAV
    assert "Breaker trips (60)" in page
    assert "first 50 of 60" in page
    assert "volume cap" in page
    assert "1.20e-09" in page and "forecast" in page
    assert "threshold: 1 &lt; 2" in page
    assert "89.5%" in page and "81.0%" in page  # fold coverage raw and calibrated


def test_html_is_self_contained(report) -> None:
    """plotly.js inlined once, in the head; nothing else refers to another origin."""
    _, page = report
    head, body = page.split("</head>", 1)
    assert head.count("<script") == 1 and "src=" not in head.split("<script", 1)[1][:40]
    assert head.count("plotly.js v") == 1 and body.count("plotly.js v") == 0
    assert "http://" not in body and "https://" not in body
    assert "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:|#)[a-z]+:""", body)
    assert not re.search(r"<script[^>]*\ssrc=", page, re.IGNORECASE)
    assert "cdn.plot.ly" not in body and "mathjax" not in body.lower()


def test_html_escapes_text(report) -> None:
    _, page = report
    assert EVIL not in page
    assert html_escaped(EVIL) in page
    assert "demo &lt;b&gt;strategy&lt;/b&gt;" in page


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_empty_frames_leave_notes(result: BacktestResult, tmp_path: Path) -> None:
    bare = dataclasses.replace(
        result,
        coverage=empty(COVERAGE_SCHEMA),
        factor_contrib=empty(FACTORS_SCHEMA),
        breakers=empty(BREAKERS_SCHEMA),
        fold_metrics=empty(FOLD_METRICS_SCHEMA),
        pit_hist=empty(PIT_SCHEMA),
        coverage_terciles=empty(TERCILE_SCHEMA),
        calibration_scale=empty(SCALE_SCHEMA),
        parity={},
        timings={},
    )
    written = write_report(bare, tmp_path)
    page = written["report.html"].read_text(encoding="utf-8")
    assert "coverage.png" not in written and "factors.png" not in written
    assert "No factor contributions: plot skipped." in page
    assert "No breaker tripped." in page
    # no forecasts recorded: the forecast page is replaced by a sentence saying so
    assert '<section id="forecast-quality"' not in page
    assert '<section id="forecast-quality-absent"' in page
    assert "recorded no step-1 forecasts" in page
    assert "<pre>" not in page


def test_forecast_page_without_coverage_still_shows_fold_table(
    result: BacktestResult, tmp_path: Path
) -> None:
    partial = dataclasses.replace(result, coverage=empty(COVERAGE_SCHEMA))
    page = write_report(partial, tmp_path)["report.html"].read_text(encoding="utf-8")
    assert '<section id="forecast-quality"' in page
    assert "No coverage data: plot skipped." in page and "89.5%" in page


def test_plain_strategy_report_says_why_no_forecast_page(
    result: BacktestResult, tmp_path: Path
) -> None:
    said = "plain weights strategy plain_fixed:fixed: no forecaster is used"
    plain = dataclasses.replace(
        result,
        coverage=empty(COVERAGE_SCHEMA),
        fold_metrics=empty(FOLD_METRICS_SCHEMA),
        pit_hist=empty(PIT_SCHEMA),
        coverage_terciles=empty(TERCILE_SCHEMA),
        calibration_scale=empty(SCALE_SCHEMA),
        notes=(said,),
    )
    page = write_report(plain, tmp_path)["report.html"].read_text(encoding="utf-8")
    assert '<section id="forecast-quality"' not in page
    assert '<section id="forecast-quality-absent"' in page and said in page


def test_empty_everything(tmp_path: Path) -> None:
    bare = BacktestResult(
        name="nothing",
        spec_hash="s",
        order_hash="o",
        start=date(2024, 1, 2),
        end=date(2024, 1, 3),
        equity=empty(EQUITY_SCHEMA),
        positions=empty(POSITIONS_SCHEMA),
        fills=empty(FILLS_SCHEMA),
        orders=empty(ORDERS_SCHEMA),
        stats={},
    )
    written = write_report(bare, tmp_path)
    assert set(written) == {"report.html"}
    assert write_frames(bare, tmp_path).keys() == {"stats.json"}


def test_write_frames_round_trip(result: BacktestResult, tmp_path: Path) -> None:
    written = write_frames(result, tmp_path)
    assert {"equity.parquet", "breakers.parquet", "stats.json"} <= set(written)
    back = pl.read_parquet(written["equity.parquet"])
    assert back.equals(result.equity)
    assert back.schema == result.equity.schema
    summary = json.loads(written["stats.json"].read_text())
    assert summary["spec_hash"] == SPEC_HASH and summary["order_hash"] == ORDER_HASH
    assert summary["start"] == "2023-01-02"
    assert summary["stats"]["sharpe"] is None  # NaN is not JSON
    assert summary["stats"]["benchmark_cagr"] == 0.05
    assert summary["timings"] == {"forecast": 12.5, "simulate": 0.8}


def test_format_stat() -> None:
    assert format_stat("cagr", 0.1234) == "12.34%"
    assert format_stat("sharpe", 1.234) == "1.23"
    assert format_stat("turnover", 5.0) == "5.00x / yr"
    assert format_stat("hit_rate", None) == "n/a"


def test_drawdown() -> None:
    dd = drawdown(np.array([100.0, 110.0, 99.0, 121.0]))
    np.testing.assert_allclose(dd, [0.0, 0.0, -0.1, 0.0], atol=1e-12)
