"""Crafted inputs through ``kronos data ingest``: the sessions stored, or the refusal.

Each row is one file as users hand them over (CSV and Parquet, FMP JSON). A row
either names the exact (symbol, session, close) rows the store gains, or the
refusal text; a refusal exits 2 and leaves every table's row count, the ingest
log included, as it was. Sessions are XNYS unless the row says ``--calendar``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kronos.calendar import get_calendar
from kronos.cli import app
from kronos.config import AlpacaDataSettings
from kronos.data import loaders
from kronos.data.errors import InputError
from kronos.data.ingest import IngestRules
from kronos.data.store import Store

SEED = "Date,Open,High,Low,Close,Volume\n" + "\n".join(
    f"2020-01-{d:02d},10,11,9,10.5,1000" for d in (2, 3, 6, 7, 8)
)
ENV = ("KRONOS_CALENDAR", "KRONOS_MAX_PRICE", "KRONOS_SYMBOL_PATTERN", "KRONOS_DB")
TOKYO = ZoneInfo("Asia/Tokyo")
ARGS = ("--symbol", "ACME", "--db", "k.duckdb")


def _parquet(columns: dict[str, pa.Array]) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.table(columns), path)


def _stamps(values: list[datetime], unit: str = "ns", tz: str | None = "UTC") -> pa.Array:
    return pa.array(values, type=pa.timestamp(unit, tz=tz))


@dataclass(frozen=True)
class Case:
    """One crafted file and what ``kronos data ingest`` must make of it."""

    name: str
    content: str | Callable[[Path], None]
    args: tuple[str, ...] = ("--symbol", "ACME")
    stored: list[tuple[str, str, float]] | None = None  # (symbol, session, close)
    refused: tuple[str, ...] = ()  # fragments of the error, {path} for the file
    source: str = "csv"
    notes: tuple[str, ...] = field(default=())


CASES = [
    # --- which session: stored ------------------------------------------------------
    Case(
        "utc_midnight.csv",  # how pandas writes aware daily dates: Monday, not Sunday
        "Date,Close\n2021-01-04T00:00:00Z,10\n2021-01-05 00:00:00+00:00,11\n",
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
    ),
    Case(
        "offset_midnight.csv",  # midnight in its own stated zone is that date
        "Date,Close\n2021-01-04T00:00:00-05:00,10\n2021-01-05T00:00:00+09:00,11\n"
        "2021-01-06T00:00:00+0900,12\n",
        stored=[
            ("ACME", "2021-01-04", 10.0),
            ("ACME", "2021-01-05", 11.0),
            ("ACME", "2021-01-06", 12.0),
        ],
    ),
    Case(
        "offset_intraday.csv",
        # each stamp's New York date: 05:00+09:00 on the 5th is 15:00 on the 4th;
        # 10:00+09:00 on the 6th is 20:00 on the 5th (after its close, still the 5th);
        # 16:00-05:00 is the 7th's close; 17:00-05:00 on Friday the 8th stays Friday
        "Date,Close\n2021-01-05T05:00:00+09:00,10\n2021-01-06T10:00:00+09:00,11\n"
        "2021-01-07T16:00:00-05:00,12\n2021-01-08T17:00:00-05:00,13\n",
        stored=[
            ("ACME", "2021-01-04", 10.0),
            ("ACME", "2021-01-05", 11.0),
            ("ACME", "2021-01-07", 12.0),
            ("ACME", "2021-01-08", 13.0),
        ],
    ),
    Case(
        "dates_tokyo_tz.csv",  # --tz places only intraday stamps; dates stay dates
        "Date,Close\n2021-01-04,10\n2021-01-05,11\n",
        args=("--symbol", "ACME", "--tz", "Asia/Tokyo"),
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
    ),
    Case(
        "naive_intraday_tokyo.csv",  # 03:00 Tokyo on the 5th is 13:00 on the 4th in New York
        "Date,Close\n2021-01-05 03:00:00,10\n2021-01-06 00:00:00,11\n",
        args=("--symbol", "ACME", "--tz", "Asia/Tokyo"),
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-06", 11.0)],
    ),
    Case(
        "dates_tokyo_tz.parquet",
        _parquet(
            {
                "date": pa.array([date(2021, 1, 4), date(2021, 1, 5)], pa.date32()),
                "close": [10.0, 11.0],
            }
        ),
        args=("--symbol", "ACME", "--tz", "Asia/Tokyo"),
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
        source="parquet",
    ),
    Case(
        "utc_midnight.parquet",  # timestamp[ns, UTC] at 00:00, as pyarrow writes aware dates
        _parquet(
            {
                "date": _stamps(
                    [datetime(2021, 1, 4, tzinfo=UTC), datetime(2021, 1, 5, tzinfo=UTC)]
                ),
                "close": [10.0, 11.0],
            }
        ),
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
        source="parquet",
    ),
    Case(
        "utc_close.parquet",  # 21:00Z is 16:00 in New York: that session's close
        _parquet(
            {
                "date": _stamps([datetime(2021, 1, 4, 21, tzinfo=UTC)], unit="us"),
                "close": [10.0],
            }
        ),
        stored=[("ACME", "2021-01-04", 10.0)],
        source="parquet",
    ),
    Case(
        "tokyo_stamps.parquet",  # midnight Tokyo is that date; 05:00 Tokyo is 15:00 in NY
        _parquet(
            {
                "date": _stamps(
                    [datetime(2021, 1, 5, tzinfo=TOKYO), datetime(2021, 1, 7, 5, tzinfo=TOKYO)],
                    tz="Asia/Tokyo",
                ),
                "close": [10.0, 11.0],
            }
        ),
        stored=[("ACME", "2021-01-05", 10.0), ("ACME", "2021-01-06", 11.0)],
        source="parquet",
    ),
    Case(
        "naive_midnight.parquet",
        _parquet({"date": _stamps([datetime(2021, 1, 4)], tz=None), "close": [10.0]}),
        stored=[("ACME", "2021-01-04", 10.0)],
        source="parquet",
    ),
    Case(
        "us_slash.csv",
        "Date,Close\n01/04/2021,10\n01/05/2021,11\n",
        args=("--symbol", "ACME", "--date-format", "%m/%d/%Y"),
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
    ),
    Case(
        "eu_slash.csv",
        "Date,Close\n04/01/2021,10\n05/01/2021,11\n",
        args=("--symbol", "ACME", "--date-format", "%d/%m/%Y"),
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
    ),
    Case(
        "eu_dot.csv",
        "Date,Close\n04.01.2021,10\n",
        args=("--symbol", "ACME", "--date-format", "%d.%m.%Y"),
        stored=[("ACME", "2021-01-04", 10.0)],
    ),
    Case(
        "trailing_blank.csv",
        "Date,Close\n2021-01-04,10\n2021-01-05,11\n\n",
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
    ),
    Case(
        "lower_symbol.csv",
        "Date,Symbol,Close\n2021-01-04, aapl,10\n2021-01-04,BRK.B,20\n",
        args=(),
        stored=[("AAPL", "2021-01-04", 10.0), ("BRK.B", "2021-01-04", 20.0)],
        notes=("note: symbol ' aapl' stored as 'AAPL'",),
    ),
    Case(
        "sunday_24_7.csv",
        "Date,Close\n2021-01-03,10\n2021-01-04,11\n",
        args=("--symbol", "BTCUSD", "--calendar", "none"),
        stored=[("BTCUSD", "2021-01-03", 10.0), ("BTCUSD", "2021-01-04", 11.0)],
    ),
    # --- refused --------------------------------------------------------------------
    Case(
        "sunday.csv",
        "Date,Close\n2021-01-04,10\n2021-01-03,11\n",
        refused=(
            "{path}:3, column 'ts', symbol ACME: 2021-01-03 is not a XNYS session (Sunday); "
            "the nearest session is 2021-01-04",
        ),
    ),
    Case(
        "holiday.csv",
        "Date,Close\n2021-01-01,10\n",
        refused=(
            "{path}:2, column 'ts', symbol ACME: 2021-01-01 is not a XNYS session "
            "(Friday, an exchange holiday); the nearest session is 2020-12-31",
        ),
    ),
    Case(
        "us_slash_no_format.csv",  # every day <= 12: either order reads
        "Date,Close\n01/04/2021,10\n01/05/2021,11\n",
        refused=(
            "{path}:2, column 'ts', symbol ACME: date '01/04/2021' is ambiguous",
            "--date-format '%m/%d/%Y'",
        ),
    ),
    Case(
        "eu_slash_no_format.csv",
        "Date,Close\n13/01/2021,10\n",
        refused=("{path}:2, column 'ts', symbol ACME: date '13/01/2021' is ambiguous",),
    ),
    Case(
        "eu_dot_no_format.csv",
        "Date,Close\n04.01.2021,10\n",
        refused=("date '04.01.2021' is ambiguous", "--date-format"),
    ),
    Case(
        "wrong_format.csv",
        "Date,Close\n2021-01-04,10\n",
        args=("--symbol", "ACME", "--date-format", "%d/%m/%Y"),
        refused=(
            "{path}:2, column 'ts', symbol ACME: cannot read '2021-01-04' with --date-format",
        ),
    ),
    Case(
        "naive_intraday.csv",
        "Date,Close\n2021-01-04 16:00:00,10\n",
        refused=("{path}:2, column 'ts', symbol ACME: naive timestamp", "--tz"),
    ),
    Case(
        "duplicate_columns.csv",
        "Date,Close,Close\n2021-01-04,10,11\n",
        refused=("{path}:1, column 'Close': duplicate column name 'Close' (columns 2 and 3)",),
    ),
    Case(
        "duplicate_columns_case.csv",
        "Date,close,Close\n2021-01-04,10,11\n",
        refused=("duplicate column name 'Close' (columns 2 and 3)",),
    ),
    Case(
        "duplicate_columns.parquet",
        lambda path: pq.write_table(
            pa.Table.from_arrays(
                [pa.array([date(2021, 1, 4)]), pa.array([10.0]), pa.array([11.0])],
                names=["date", "close", "close"],
            ),
            path,
        ),
        refused=("{path}, column 'close': duplicate column name 'close' (columns 2 and 3)",),
        source="parquet",
    ),
    Case("header_only.csv", "Date,Close\n", refused=("{path}: no data rows",)),
    Case(
        "header_only.parquet",
        _parquet({"date": pa.array([], pa.date32()), "close": pa.array([], pa.float64())}),
        refused=("{path}: no data rows",),
        source="parquet",
    ),
    Case(
        "high_below_low.csv",
        "Date,Open,High,Low,Close\n2021-01-04,10,9,11,10\n",
        refused=("{path}:2, column 'high', symbol ACME: high 9 below low 11",),
    ),
    Case(
        "close_above_high.csv",
        "Date,Open,High,Low,Close\n2021-01-04,10,11,9,10\n2021-01-05,10,11,9,12\n",
        refused=("{path}:3, column 'close', symbol ACME: close 12 outside low..high 9..11",),
    ),
    Case(
        "huge.csv",
        "Date,Close\n2021-01-04,10\n2021-01-05,1e308\n",
        refused=(
            "{path}:3, column 'close', symbol ACME: price 1e+308 above the sanity bound 1e+06 "
            "(KRONOS_MAX_PRICE)",
        ),
    ),
    Case(
        "huge.parquet",
        _parquet({"date": pa.array([date(2021, 1, 4)], pa.date32()), "close": [1e308]}),
        refused=("{path}:1, column 'close', symbol ACME: price 1e+308 above the sanity bound",),
        source="parquet",
    ),
    Case(
        "space_symbol.csv",
        "Date,Symbol,Close\n2021-01-04,BRK B,10\n",
        args=(),
        refused=("{path}:2, column 'symbol', symbol BRK B: symbol 'BRK B' does not match",),
    ),
    Case(
        "punct_symbol.csv",
        "Date,Symbol,Close\n2021-01-04,MSFT,10\n2021-01-04,A$B,10\n",
        args=(),
        refused=("{path}:3, column 'symbol', symbol A$B: symbol 'A$B' does not match",),
    ),
    Case(
        "csv_as_parquet.csv",
        "Date,Close\n2021-01-04,10\n",
        refused=("{path}: the file is not Parquet but --source parquet was given",),
        source="parquet",
    ),
    Case(
        "parquet_as_csv.parquet",
        _parquet({"date": pa.array([date(2021, 1, 4)], pa.date32()), "close": [10.0]}),
        refused=("{path}: the file is Parquet (it starts with PAR1) but --source csv",),
        source="csv",
    ),
    Case(
        "SEED_income-statement.json",
        json.dumps(
            {
                "Error Message": "Invalid API KEY. Feel free to create a Free API Key or "
                "visit https://site.financialmodelingprep.com/faqs?search=why-is-my-api-key-invalid"
            }
        ),
        args=(),
        refused=("{path}: FMP returned an error: Invalid API KEY. Feel free",),
        source="fmp",
    ),
    Case(
        "SEED_stock_news.json",
        json.dumps(
            [
                {
                    "symbol": "SEED",
                    "publishedDate": "2020-01-03 10:00:00",
                    "title": "Seed rises",
                    "url": "https://example.com/1",
                },
                {
                    "symbol": "SEED",
                    "publishedDate": "2031-01-05 10:13:00",
                    "title": "Seed rose",
                    "url": "https://example.com/2",
                },
            ]
        ),
        args=(),
        refused=(
            "{path}:2, column 'available_at', symbol SEED: available_at 2031-01-05 15:13 UTC "
            "lies after the ingest time",
        ),
        source="fmp",
    ),
    Case("SEED_news.json", "[]", args=(), refused=("{path}: no records",), source="fmp"),
]


WEEK = [f"2021-01-{d:02d}" for d in (4, 5, 6, 7, 8)]  # Monday..Friday, all XNYS sessions


def _week(stamp: str) -> str:
    """A CSV of closes 10..14 on 2021-01-04..08, each stamped as ``stamp`` says."""
    rows = (stamp.format(day=day) + f",{10 + i}" for i, day in enumerate(WEEK))
    return "Date,Close\n" + "\n".join(rows) + "\n"


def _zip(path: Path) -> None:
    """A ZIP laid out as an .xlsx workbook (what Excel saves)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")


ON_THE_DAY = [("ACME", day, 10.0 + i) for i, day in enumerate(WEEK)]
# the user-file rules of files.py: stamps after the close or before the open keep their
# exchange-local date; wrong sources and delimiters are named; year-first slashes read
USER_FILE_CASES = [
    Case(
        "eod_new_york_naive.csv",  # 17:30 New York, after the 16:00 close: that day
        _week("{day} 17:30:00"),
        args=("--symbol", "ACME", "--tz", "America/New_York"),
        stored=ON_THE_DAY,
    ),
    Case("eod_offset.csv", _week("{day}T23:59:59-05:00"), stored=ON_THE_DAY),
    Case("eod_utc.csv", _week("{day}T21:30:00Z"), stored=ON_THE_DAY),  # 16:30 New York
    Case("alpaca_0500z.csv", _week("{day}T05:00:00Z"), stored=ON_THE_DAY),  # midnight NY
    Case(
        "alpaca_0500z.parquet",
        _parquet(
            {
                "timestamp": _stamps(
                    [datetime.fromisoformat(f"{day}T05:00:00+00:00") for day in WEEK]
                ),
                "close": [10.0 + i for i in range(5)],
            }
        ),
        stored=ON_THE_DAY,
        source="parquet",
    ),
    Case(
        "saturday_new_york.csv",  # 10:00 New York on a Saturday: refused, never moved
        "Date,Close\n2021-01-08 10:00:00,10\n2021-01-09 10:00:00,11\n",
        args=("--symbol", "ACME", "--tz", "America/New_York"),
        refused=(
            "{path}:3, column 'ts', symbol ACME: 2021-01-09 is not a XNYS session (Saturday); "
            "the nearest session is 2021-01-08",
        ),
    ),
    Case(
        "year_first_slash.csv",
        "Date,Close\n2021/01/04,10\n2021/1/5,11\n",
        stored=[("ACME", "2021-01-04", 10.0), ("ACME", "2021-01-05", 11.0)],
    ),
    Case(
        "dot_no_format.csv",
        "Date,Close\n4.1.2021,10\n",
        refused=(
            "{path}:2, column 'ts', symbol ACME: date '4.1.2021' is ambiguous",
            "--date-format '%d.%m.%Y' (day first, European: 4.1.2021 is 4 January 2021) "
            "or '%m.%d.%Y' (month first, US: 4.1.2021 is 1 April 2021)",
        ),
    ),
    Case(
        "json_as_csv.csv",  # a BOM and white space before the '['
        "\ufeff\n  " + json.dumps([{"date": "2021-01-04", "close": 10}]),
        refused=("{path}: the file is JSON (an FMP payload?); pass --source fmp",),
    ),
    Case(
        "json_as_parquet.json",
        json.dumps({"symbol": "ACME", "historical": []}),
        refused=("{path}: the file is JSON (an FMP payload?); pass --source fmp",),
        source="parquet",
    ),
    Case(
        "workbook.xlsx",
        _zip,
        refused=("{path}: the file is a ZIP/Excel workbook, not CSV: export it as CSV",),
    ),
    Case(
        "semicolon.csv",
        "Date;Open;High;Low;Close\n2021-01-04;10;11;9;10,5\n",
        refused=(
            "{path}:1: the header is one column 'Date;Open;High;Low;Close': the file seems "
            "delimited by ';', not commas; save it as CSV with commas",
        ),
    ),
    Case(
        "tabs.csv",
        "Date\tClose\n2021-01-04\t10\n",
        refused=("{path}:1: the header is one column 'Date\\tClose'", "delimited by tabs"),
    ),
    Case(
        "SEED_stock_news.parquet",
        _parquet({"date": pa.array([date(2021, 1, 4)], pa.date32()), "close": [10.0]}),
        args=(),
        refused=("{path}: the file is Parquet, not an FMP JSON payload; pass --source parquet",),
        source="fmp",
    ),
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A store holding five SEED bars (so SEED is a known symbol), and its row counts."""
    root = tmp_path_factory.mktemp("seed")
    seed = root / "seed.csv"
    seed.write_text(SEED)
    db = root / "seed.duckdb"
    result = CliRunner().invoke(
        app, ["data", "ingest", "-s", "csv", str(seed), "--symbol", "SEED", "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    with Store.open(db, read_only=True) as store:
        return db, store.row_counts()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no project .env
    return tmp_path


def _write(case: Case, folder: Path) -> Path:
    path = folder / case.name
    if callable(case.content):
        case.content(path)
    else:
        path.write_text(case.content)
    return path


@pytest.mark.parametrize(
    "case", [*CASES, *USER_FILE_CASES], ids=[c.name for c in [*CASES, *USER_FILE_CASES]]
)
def test_crafted_input(case: Case, seeded: tuple[Path, dict[str, int]], clean_env: Path):
    seed_db, seed_counts = seeded
    db = clean_env / "k.duckdb"
    shutil.copy(seed_db, db)
    path = _write(case, clean_env)
    args = ["data", "ingest", "-s", case.source, str(path), *case.args, "--db", str(db)]
    result = CliRunner().invoke(app, args)
    with Store.open(db, read_only=True) as store:
        counts = store.row_counts()
        stored = store.con.execute(
            "SELECT symbol, ts::VARCHAR, close FROM bars WHERE symbol <> 'SEED' ORDER BY ALL"
        ).fetchall()
    if case.refused:
        assert result.exit_code == 2, result.output
        message = " ".join(result.stderr.split())
        for fragment in case.refused:
            assert " ".join(fragment.format(path=path).split()) in message, result.stderr
        assert "nothing was written" in message or "FMP returned" in message
        assert "Traceback" not in result.output
        assert counts == seed_counts  # the ingest log too: nothing logged
    else:
        assert result.exit_code == 0, result.output
        assert stored == case.stored
        assert counts["ingest_log"] == seed_counts["ingest_log"] + 1
        for note in case.notes:
            assert note in result.stderr


def test_second_identical_ingest_changes_nothing(clean_env: Path):
    """The rule is a function of the file: the same file lands on the same sessions."""
    path = _write(CASES[2], clean_env)
    db = str(clean_env / "k.duckdb")
    args = ["data", "ingest", "-s", "csv", str(path), "--symbol", "ACME", "--db", db, "--json"]
    first = CliRunner().invoke(app, args)
    again = CliRunner().invoke(app, args)
    assert json.loads(first.stdout)["bars"]["inserted"] == 4
    assert json.loads(again.stdout)["bars"] == {
        "table": "bars",
        "rows_in": 4,
        "inserted": 0,
        "updated": 0,
        "unchanged": 4,
    }


def test_refusal_in_a_real_process_is_one_message_and_exit_2(clean_env: Path):
    """The exit status and stderr of the installed command, not only of the test runner."""
    path = _write(next(c for c in CASES if c.name == "sunday.csv"), clean_env)
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "kronos", *("data", "ingest", "-s", "csv", str(path)), *ARGS],
        cwd=clean_env,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path}:3, column 'ts', symbol ACME: 2021-01-03 is not a XNYS session" in proc.stderr
    with Store.open(clean_env / "k.duckdb", read_only=True) as store:
        assert store.row_counts()["bars"] == 0 and store.row_counts()["ingest_log"] == 0


@pytest.mark.parametrize(
    ("text", "tz", "hints"),
    [
        ("4.1.2021", None, {"%d.%m.%Y": "2021-01-04", "%m.%d.%Y": "2021-04-01"}),
        ("01/04/2021", None, {"%m/%d/%Y": "2021-01-04", "%d/%m/%Y": "2021-04-01"}),
        ("01/04/21", None, {"%m/%d/%y": "2021-01-04", "%d/%m/%y": "2021-04-01"}),
        ("13/01/2021", None, {"%d/%m/%Y": "2021-01-13"}),  # only day first reads it
        (
            "01/04/2021 16:00",
            "America/New_York",
            {"%m/%d/%Y %H:%M": "2021-01-04", "%d/%m/%Y %H:%M": "2021-04-01"},
        ),
    ],
)
def test_each_date_format_hint_reads_the_file(
    text: str, tz: str | None, hints: dict[str, str], clean_env: Path
):
    """Following each ``--date-format`` the refusal offers ingests the file."""
    import re

    path = clean_env / "dates.csv"
    path.write_text(f"Date,Close\n{text},10\n")
    base = ["data", "ingest", "-s", "csv", str(path), "--symbol", "ACME"]
    base += ["--tz", tz] if tz else []
    refused = CliRunner().invoke(app, [*base, "--db", str(clean_env / "none.duckdb")])
    assert refused.exit_code == 2 and f"date '{text}' is ambiguous" in refused.stderr
    offered = re.findall(r"'(%[^']+)' \(", refused.stderr)
    assert offered == list(hints)
    for i, fmt in enumerate(offered):
        db = clean_env / f"hint{i}.duckdb"
        result = CliRunner().invoke(app, [*base, "--date-format", fmt, "--db", str(db)])
        assert result.exit_code == 0, (fmt, result.output)
        with Store.open(db, read_only=True) as store:
            assert store.con.execute("SELECT ts::VARCHAR FROM bars").fetchall() == [(hints[fmt],)]


# --- the ingest time, several files, FMP error shapes, duplicate keys ----------------
# (own block: future bars, PartialIngest, FMP error payloads in a list, plain key values)

INGEST_TIME = datetime(2026, 12, 4, 16, 10, tzinfo=UTC)  # 11:10 in New York, a Friday

INGEST_CASES = [
    Case(
        "future_bar.csv",  # years ahead of any ingest time these tests run at
        "Date,Close\n2021-01-04,10\n2031-06-02,11\n",
        refused=(
            "{path}:3, column 'ts', symbol ACME: 2031-06-02 closes at 2031-06-02 20:00 UTC, "
            "after the ingest time",
            "UTC: a bar is known only at its session's close",
        ),
    ),
    Case(
        "duplicate_key.csv",
        "Date,Close\n2021-01-04,10\n2021-01-04,11\n",
        refused=(
            "{path}:2, symbol ACME: duplicate key (symbol, ts) = (ACME, 2021-01-04)",
            "{path}:3, symbol ACME: duplicate key (symbol, ts) = (ACME, 2021-01-04)",
        ),
    ),
    Case(
        "SEED_rating.json",  # FMP's error object wrapped in a list
        json.dumps([{"Error Message": "Invalid API KEY."}]),
        args=(),
        refused=("{path}: FMP returned an error: Invalid API KEY.",),
        source="fmp",
    ),
]


@pytest.mark.parametrize("case", INGEST_CASES, ids=[c.name for c in INGEST_CASES])
def test_crafted_input_ingest_time(
    case: Case, seeded: tuple[Path, dict[str, int]], clean_env: Path
):
    test_crafted_input(case, seeded, clean_env)


def _rules(calendar: str = "XNYS", now: datetime = INGEST_TIME) -> IngestRules:
    return IngestRules(calendar=get_calendar(calendar), now=now)


@pytest.mark.parametrize(
    ("calendar", "now", "refused"),
    [
        (
            "XNYS",
            INGEST_TIME,
            "2026-12-04 closes at 2026-12-04 21:00 UTC, after the ingest time 2026-12-04 16:10 "
            "UTC: a bar is known only at its session's close",
        ),
        ("XNYS", datetime(2026, 12, 4, 21, 0, tzinfo=UTC), None),  # at the close: known
        (
            "none",  # 24/7: a day's session closes at the end of the day (UTC)
            INGEST_TIME,
            "2026-12-04 closes at 2026-12-05 00:00 UTC, after the ingest time",
        ),
        ("none", datetime(2026, 12, 5, 0, 0, tzinfo=UTC), None),
    ],
)
def test_a_bar_is_refused_before_its_session_closes(
    store: Store, tmp_path: Path, calendar: str, now: datetime, refused: str | None
):
    path = tmp_path / "today.csv"
    path.write_text("Date,Close\n2026-12-03,10\n2026-12-04,11\n")
    load = lambda: loaders.load_bar_files(  # noqa: E731
        store, [path], symbol="ACME", rules=_rules(calendar, now)
    )
    if refused is None:
        assert load()["bars"].inserted == 2
        return
    with pytest.raises(InputError) as info:
        load()
    assert f"{path}:3, column 'ts', symbol ACME: {refused}" in str(info.value)
    assert len(info.value.problems) == 1  # the 3rd, closed before the ingest time, is fine
    assert store.row_counts()["bars"] == store.row_counts()["ingest_log"] == 0


def test_ingest_time_must_be_aware():
    with pytest.raises(ValueError, match="time-zone aware"):
        IngestRules(calendar=get_calendar(), now=datetime(2026, 12, 4, 16, 10))
    assert _rules(now=datetime(2026, 12, 4, 17, 10, tzinfo=TOKYO)).now.hour == 8


def test_a_refused_file_after_a_committed_one_says_what_was_committed(clean_env: Path):
    good, bad, later = (clean_env / n for n in ("a.csv", "bad.csv", "c.csv"))
    good.write_text(SEED)
    bad.write_text("Date,Close\n2021-01-04,10\n2021-01-03,11\n")
    later.write_text("Date,Close\n2021-01-05,10\n")
    args = ["data", "ingest", "-s", "csv", str(good), str(bad), str(later), *ARGS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert (
        f"error: {bad} refused, nothing of it was written ({good} was committed: 5 bars; "
        f"not read: {later}): {bad}:3, column 'ts', symbol ACME: 2021-01-03 is not a XNYS "
        "session (Sunday)"
    ) in message, result.stderr
    assert "Traceback" not in result.output
    with Store.open(clean_env / "k.duckdb", read_only=True) as store:
        assert store.row_counts()["ingest_log"] == 1
        assert store.con.execute("SELECT count(*), max(ts)::VARCHAR FROM bars").fetchall() == [
            (5, "2020-01-08")
        ]


def test_a_refused_first_file_of_several_says_nothing_was_committed(clean_env: Path):
    bad, later = clean_env / "bad.csv", clean_env / "c.csv"
    bad.write_text("Date,Close\n2021-01-03,11\n")
    later.write_text(SEED)
    result = CliRunner().invoke(app, ["data", "ingest", "-s", "csv", str(bad), str(later), *ARGS])
    assert result.exit_code == 2, result.output
    assert f"{bad} refused, nothing of it was written (nothing was committed; not read: " in (
        " ".join(result.stderr.split())
    )
    with Store.open(clean_env / "k.duckdb", read_only=True) as store:
        assert store.row_counts()["bars"] == 0


def test_synthetic_history_is_never_generated_into_the_future(store: Store):
    before = store.row_counts()
    with pytest.raises(InputError) as info:
        loaders.load_synthetic(
            store, n_symbols=2, years=2, seed=0, start=date(2026, 1, 2), rules=_rules()
        )
    assert (
        "synthetic(n_symbols=2, years=2, seed=0): 2 years of sessions from 2026-01-02 run to "
        "2028-01-04, after 2026-12-03, the last session closed at the ingest time 2026-12-04 "
        "16:10 UTC: synthetic data is never generated into the future"
    ) in str(info.value)
    assert store.row_counts() == before  # not even the profiles


def test_synthetic_reference_known_after_the_ingest_time_is_left_out(store: Store):
    now = datetime(2010, 2, 9, tzinfo=UTC)  # the night after the last synthetic session
    notes: list[str] = []
    loaders.load_synthetic(
        store,
        n_symbols=4,
        years=1.1,
        seed=0,
        start=date(2009, 1, 2),
        rules=_rules(now=now),
        on_note=notes.append,
    )
    assert (
        "synthetic fmp_income_statement: 1 of 16 rows become known after the ingest time "
        "2010-02-09 00:00 UTC and were left out"
    ) in notes
    assert store.con.execute("SELECT max(ts)::VARCHAR FROM bars").fetchall() == [("2010-02-08",)]
    for table in ("fmp_income_statement", "fmp_key_metrics", "fmp_news", "social_features"):
        latest = store.con.execute(f"SELECT max(available_at) FROM {table}").fetchall()[0][0]
        assert latest <= now, table


def test_alpaca_start_after_the_last_closed_session_is_refused_before_any_request(store: Store):
    with pytest.raises(InputError, match="no bar of it is known yet") as info:
        loaders.load_alpaca(
            store, ["AAA"], date(2026, 12, 4), alpaca=AlpacaDataSettings(), rules=_rules()
        )
    assert (
        "alpaca(AAA): --start 2026-12-04 is after 2026-12-03, the last session closed at the "
        "ingest time 2026-12-04 16:10 UTC"
    ) in str(info.value)
