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

from kronos.cli import app
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
        # 05:00+09:00 on the 5th is 15:00 on the 4th in New York: the 4th's session;
        # 10:00+09:00 on the 6th is 20:00 on the 5th, after its close: the 6th;
        # 16:00-05:00 is the 7th's close; 17:00-05:00 on Friday the 8th: Monday the 11th
        "Date,Close\n2021-01-05T05:00:00+09:00,10\n2021-01-06T10:00:00+09:00,11\n"
        "2021-01-07T16:00:00-05:00,12\n2021-01-08T17:00:00-05:00,13\n",
        stored=[
            ("ACME", "2021-01-04", 10.0),
            ("ACME", "2021-01-06", 11.0),
            ("ACME", "2021-01-07", 12.0),
            ("ACME", "2021-01-11", 13.0),
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


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
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
