"""Each data-quality rule, on a crafted frame that breaks it and one that does not."""

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kronos.calendar import get_calendar
from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.quality import RULES, run_qa
from kronos.data.store import Store


def _clean(n: int = 1600, symbol: str = "AAA") -> pl.DataFrame:
    """``n`` XNYS sessions from Mon 2010-01-04 (Tue 2010-01-19 follows MLK day at row 10)."""
    days = get_calendar().first_sessions(date(2010, 1, 4), n).astype(date).tolist()
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
    report = run_qa(_clean(), "t.csv", DataSettings())
    assert report.passed and list(report.symbols[0].rules) == list(RULES)


def _set(frame: pl.DataFrame, i: int, **values) -> pl.DataFrame:
    idx = pl.int_range(pl.len())
    return frame.with_columns(
        pl.when(idx == i).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()
    )


@pytest.mark.parametrize(
    ("rule", "change", "where"),
    [
        ("no_nulls", lambda f: _set(f, 10, volume=None), "2010-01-19, column 'volume'"),
        ("positive_prices", lambda f: _set(f, 20, close=-1.0, adj_close=-1.0), "column 'close'"),
        ("ohlc_consistent", lambda f: _set(f, 30, high=1.0), "column 'high'"),
        ("duplicate_keys", lambda f: pl.concat([f, f.slice(40, 1)]), "2010-03-03"),
        (
            "monotonic_dates",
            lambda f: pl.concat([f.slice(0, 50), f.slice(60, 10), f.slice(50, 10), f.slice(70)]),
            "column 'ts'",
        ),
        (
            # ten sessions dropped (2010-05-27..06-10): Memorial Day inside is no gap
            "calendar_gaps",
            lambda f: pl.concat([f.slice(0, 100), f.slice(110)]),
            "2010-06-11, column 'ts': 10 sessions missing (XNYS)",
        ),
        ("min_span", lambda f: f.head(1000), "4.0 years"),
        (
            "off_session",
            lambda f: _set(f, 5, ts=date(2010, 1, 10)),
            "2010-01-10, column 'ts': Sun 2010-01-10 is not a session of the XNYS calendar",
        ),
        (
            "extreme_moves",
            lambda f: f.with_columns(
                adj_close=pl.when(pl.int_range(pl.len()) % 300 == 150)
                .then(pl.col("adj_close") * 2)
                .otherwise(pl.col("adj_close"))
            ),
            "2010-08-09, column 'adj_close': 0.70",
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
        report = run_qa(
            readers.prices(s, date(2023, 1, 1), settings=DataSettings()), "bundled", DataSettings()
        )
    assert report.passed, report.failures()
    assert len(report.symbols) == 27


def _bars(days: list[date], symbol: str = "AAA") -> pl.DataFrame:
    return _clean(len(days), symbol).with_columns(ts=pl.Series(days))


def test_a_holiday_is_not_a_gap():
    strict = DataSettings(qa_max_gap_days=1, qa_min_span_years=0)
    # Fri 12-23 -> Wed 12-28 over Christmas (observed Mon 12-26): only Tue 12-27 is
    # missing; a weekday count would see two (and fail at qa_max_gap_days=1)
    days = [date(2022, 12, 22), date(2022, 12, 23), date(2022, 12, 28), date(2022, 12, 29)]
    assert _failed(_bars(days), qa_max_gap_days=1, qa_min_span_years=0) == {}
    days = [date(2022, 12, 23), date(2022, 12, 29)]  # Tue 27 and Wed 28 missing
    gaps = run_qa(_bars(days), "t.csv", strict).symbols[0].rules["calendar_gaps"]
    assert not gaps.passed
    assert gaps.first == "2022-12-29, column 'ts': 2 sessions missing (XNYS)"


def test_24_7_calendar_counts_weekends_and_accepts_sunday_bars():
    days = get_calendar("none").sessions(date(2022, 12, 22), date(2023, 1, 4))
    frame = _bars(days)
    settings = DataSettings(calendar="none", qa_max_gap_days=1, qa_min_span_years=0)
    assert run_qa(frame, "btc.csv", settings).passed  # Sundays are sessions here
    assert not run_qa(frame, "btc.csv", DataSettings(qa_min_span_years=0)).passed
    # a weekday-only file on the 24/7 calendar misses each weekend's two sessions
    weekdays = [d for d in days if get_calendar().is_session(d)]
    report = run_qa(_bars(weekdays), "x.csv", settings)
    gaps = report.symbols[0].rules["calendar_gaps"]
    assert not gaps.passed and "sessions missing (24/7)" in gaps.first
    assert report.settings["calendar"] == "24/7"


def test_off_session_names_every_kind_of_closed_day():
    days = [date(2023, 4, 6), date(2023, 4, 7), date(2023, 4, 8), date(2040, 1, 3)]
    rule = run_qa(_bars(days, "XYZ"), "t.csv", DataSettings()).symbols[0].rules["off_session"]
    assert not rule.passed and rule.count == 3  # Good Friday, a Saturday, beyond 2035
    assert (
        rule.first
        == "2023-04-07, column 'ts': Fri 2023-04-07 is not a session of the XNYS calendar"
    )


def _validate(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kronos", "data", "validate", "--db", str(db), *args],
        cwd=db.parent,
        env={**os.environ, "KRONOS_CALENDAR": "XNYS"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_validate_fails_a_store_holding_a_sunday_bar(bundled_db: Path, tmp_path: Path):
    db = tmp_path / "sunday.duckdb"
    shutil.copy(bundled_db, db)
    with Store.open(db) as s:
        # written behind ingest's back (ingest refuses it): an older store or another tool
        s.con.execute(
            "INSERT INTO bars SELECT symbol, DATE '2023-01-01' AS ts, * EXCLUDE (symbol, ts) "
            "FROM bars WHERE symbol = 'KO' AND ts = DATE '2022-12-28'"
        )
    proc = _validate(db, "--symbols", "KO,PEP", "--report", str(tmp_path / "qa.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        "FAIL KO off_session: 2023-01-01, column 'ts': Sun 2023-01-01 is not a session of "
        "the XNYS calendar" in proc.stdout
    )
    assert "FAIL PEP" not in proc.stdout
    # on the 24/7 calendar the same store has no off-session bar (its weekends are gaps)
    always = _validate(db, "--symbols", "KO", "--calendar", "none", "--json")
    assert "off_session" not in {
        rule for rule, res in _rules(always.stdout).items() if not res["passed"]
    }
    bad = _validate(db, "--calendar", "NYSEE")
    assert bad.returncode == 2 and "unknown calendar 'NYSEE'" in bad.stderr
    assert "Traceback" not in bad.stderr


def _rules(stdout: str) -> dict:
    import json

    payload = json.loads(stdout)
    return payload["reports"][0]["symbols"][0]["rules"]


def test_validate_file_reads_like_ingest_and_words_its_own_errors(tmp_path: Path):
    """``validate --file`` takes ``--date-format``; a refusal says it cannot read the file."""
    import json

    from typer.testing import CliRunner

    from kronos.cli import app

    path = tmp_path / "us.csv"
    # 10:00 New York on Saturday the 9th keeps its date: validate names the off-session bar
    path.write_text("Date,Close\n01/08/2021 10:00,10\n01/09/2021 10:00,11\n")
    base = ["data", "validate", "-f", str(path), "--symbol", "ACME", "--tz", "America/New_York"]
    base += ["--report", str(tmp_path / "qa.json"), "--calendar", "XNYS"]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 2
    assert "1 problem in input, cannot read the file:" in refused.stderr
    assert f"{path}:2, column 'ts', symbol ACME: date '01/08/2021 10:00' is ambiguous" in (
        refused.stderr.replace("\n", "")
    )
    assert "nothing was written" not in refused.stderr and "Traceback" not in refused.output
    read = CliRunner().invoke(app, [*base, "--date-format", "%m/%d/%Y %H:%M", "--json"])
    assert read.exit_code == 1, read.output
    (report,) = json.loads(read.stdout)["reports"]
    symbol = report["symbols"][0]
    assert (symbol["start"], symbol["end"]) == ("2021-01-08", "2021-01-09")
    assert symbol["rules"]["off_session"]["first"] == (
        f"{path}:3, column 'ts': Sat 2021-01-09 is not a session of the XNYS calendar"
    )
