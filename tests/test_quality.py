"""Each data-quality rule, on a crafted frame that breaks it and one that does not."""

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.quality import RULES, run_qa
from kronos.data.store import Store


def _clean(n: int = 1600, symbol: str = "AAA") -> pl.DataFrame:
    days = [
        d
        for d in (date(2010, 1, 4) + timedelta(days=i) for i in range(n * 7 // 5 + 10))
        if d.weekday() < 5
    ][:n]
    px = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.01, n)))
    return pl.DataFrame(
        {
            "symbol": symbol,
            "ts": days,
            "open": px,
            "high": px * 1.01,
            "low": px * 0.99,
            "close": px,
            "adj_close": px,
            "volume": 1e6,
            "source": "test",
        }
    )


def _failed(frame: pl.DataFrame, **settings) -> dict[str, str]:
    report = run_qa(frame, "t.csv", DataSettings(**settings))
    return {rule: res.first or res.detail for _, rule, res in report.failures()}


def test_clean_frame_passes_every_rule():
    report = run_qa(_clean(), "t.csv")
    assert report.passed and list(report.symbols[0].rules) == list(RULES)


def _set(frame: pl.DataFrame, i: int, **values) -> pl.DataFrame:
    idx = pl.int_range(pl.len())
    return frame.with_columns(
        pl.when(idx == i).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()
    )


@pytest.mark.parametrize(
    ("rule", "change", "where"),
    [
        ("no_nulls", lambda f: _set(f, 10, volume=None), "2010-01-18, column 'volume'"),
        ("positive_prices", lambda f: _set(f, 20, close=-1.0, adj_close=-1.0), "column 'close'"),
        ("ohlc_consistent", lambda f: _set(f, 30, high=1.0), "column 'high'"),
        ("duplicate_keys", lambda f: pl.concat([f, f.slice(40, 1)]), "2010-03-01"),
        (
            "monotonic_dates",
            lambda f: pl.concat([f.slice(0, 50), f.slice(60, 10), f.slice(50, 10), f.slice(70)]),
            "column 'ts'",
        ),
        (
            "calendar_gaps",
            lambda f: pl.concat([f.slice(0, 100), f.slice(110)]),
            "10 weekdays missing",
        ),
        ("min_span", lambda f: f.head(1000), "3.8 years"),
        (
            "extreme_moves",
            lambda f: f.with_columns(
                adj_close=pl.when(pl.int_range(pl.len()) % 300 == 150)
                .then(pl.col("adj_close") * 2)
                .otherwise(pl.col("adj_close"))
            ),
            "2010-08-02, column 'adj_close': 0.70",
        ),
    ],
)
def test_each_rule_catches_its_fault(rule, change, where):
    failed = _failed(change(_clean()))
    assert rule in failed, failed
    assert where in failed[rule]


def test_extreme_moves_within_budget_pass():
    frame = _set(_clean(), 800, adj_close=1e6)  # one spike: two moves in 1599 = 0.125%
    assert "extreme_moves" in _failed(frame)
    assert "extreme_moves" not in _failed(frame, qa_max_extreme_frac=0.002)


def test_unreadable_values_name_the_file_line(tmp_path: Path):
    from kronos.data.sources.files import read_bars_file

    path = tmp_path / "bad.csv"
    rows = "\n".join(f"2015-01-{d:02d},1,1,1,1" for d in (5, 6, 7))
    path.write_text(
        "ts,open,high,low,close\n" + rows.replace("2015-01-06,1,1,1,1", "2015-01-06,1,1,x,1")
    )
    failed = _failed(read_bars_file(path, symbol="AAA"))
    assert failed["readable"] == "t.csv:3, column 'low': x"


def test_bundled_data_passes(bundled_db: Path):
    with Store.open(bundled_db, read_only=True) as s:
        report = run_qa(readers.prices(s, date(2023, 1, 1)), "bundled")
    assert report.passed, report.failures()
    assert len(report.symbols) == 27
