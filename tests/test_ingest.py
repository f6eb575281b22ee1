import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from kronos.data import loaders
from kronos.data.errors import InputError
from kronos.data.store import Store

GOOD = "Date,Open,High,Low,Close,Adj Close,Volume\n" + "\n".join(
    f"2020-01-{d:02d},10,11,9,10.5,10.4,1000" for d in (2, 3, 6, 7, 8)
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_ingest_twice_changes_nothing(bundled_db: Path, tmp_path: Path):
    with Store.open(bundled_db, read_only=True) as s:
        before = s.row_counts()
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(bundled_db.read_bytes())
    with Store.open(copy) as s:
        again = loaders.load_bundled(s)
        after = s.row_counts()
    assert all(r.inserted == 0 and r.updated == 0 for r in again.values())
    assert again["bars"].rows_in == before["bars"] == 166_260 + 8_313 + 11_320 + 2_148
    assert {k: v for k, v in after.items() if k != "ingest_log"} == {
        k: v for k, v in before.items() if k != "ingest_log"
    }


def test_changed_rows_are_updated_in_place(store: Store, tmp_path: Path):
    path = _write(tmp_path, "a.csv", GOOD)
    first = loaders.load_bar_files(store, [path], symbol="AAA")["bars"]
    assert (first.inserted, first.updated) == (5, 0)
    path.write_text(GOOD.replace("2020-01-07,10,11,9,10.5,10.4", "2020-01-07,10,11,9,10.5,10.6"))
    second = loaders.load_bar_files(store, [path], symbol="AAA")["bars"]
    assert (second.inserted, second.updated, second.unchanged) == (0, 1, 4)
    rows = store.con.execute("SELECT ts::VARCHAR, adj_close FROM bars ORDER BY ts").fetchall()
    assert rows[3] == ("2020-01-07", 10.6) and len(rows) == 5


@pytest.mark.parametrize(
    ("name", "text", "kwargs", "expected"),
    [
        ("ragged.csv", "Date,Close\n2020-01-02,1\n2020-01-03,1,2,3\n", {}, "malformed file"),
        ("nocol.csv", "Date,Open\n2020-01-02,1\n", {}, "neither adj_close nor close"),
        (
            "typed.csv",
            GOOD.replace("10.4,1000\n2020-01-03", "10.4,1000\n2020-01-03").replace(
                "2020-01-06,10,11,9,10.5", "2020-01-06,10,11,9,ten"
            ),
            {},
            "bad.csv:4, column 'close', symbol AAA: cannot read 'ten'",
        ),
        (
            "dup.csv",
            GOOD + "\n2020-01-08,10,11,9,10.5,10.4,1000",
            {},
            "bad.csv:7, symbol AAA: duplicate key",
        ),
        (
            "nan.csv",
            GOOD.replace("2020-01-03,10,11,9,10.5,10.4", "2020-01-03,10,11,9,10.5,NaN"),
            {},
            "bad.csv:3, column 'adj_close', symbol AAA: not a number",
        ),
        (
            "neg.csv",
            GOOD.replace("2020-01-08,10,11,9,10.5", "2020-01-08,10,11,9,-10.5"),
            {},
            "bad.csv:6, column 'close', symbol AAA: non-positive price -10.5",
        ),
        (
            "naive.csv",
            "ts,close\n2020-01-02 16:00:00,1\n",
            {},
            "bad.csv:2, column 'ts', symbol AAA: naive timestamp '2020-01-02 16:00:00'",
        ),
    ],
)
def test_bad_bar_files_name_the_problem_and_write_nothing(
    store: Store, tmp_path: Path, name: str, text: str, kwargs: dict, expected: str
):
    loaders.load_bar_files(store, [_write(tmp_path, "good.csv", GOOD)], symbol="AAA")
    before = store.row_counts()
    bad = _write(tmp_path, "bad.csv", text)
    with pytest.raises(InputError) as info:
        loaders.load_bar_files(store, [bad], symbol="AAA", **kwargs)
    assert expected.replace("bad.csv", str(bad)) in str(info.value) or expected in str(info.value)
    assert "nothing was written" in str(info.value)
    assert store.row_counts() == before


def test_naive_timestamps_are_accepted_with_a_zone(store: Store, tmp_path: Path):
    text = "ts,close\n2020-01-02 20:30:00,1\n2020-01-03 21:30:00,2\n2020-01-07 00:30:00,3\n"
    loaders.load_bar_files(store, [_write(tmp_path, "n.csv", text)], symbol="AAA", tz="UTC")
    days = store.con.execute("SELECT ts::VARCHAR, close FROM bars ORDER BY ts").fetchall()
    # each stamp's New York date: 20:30 UTC is 15:30 on the 2nd, within its session;
    # 21:30 UTC is 16:30 on the 3rd, after its close, and stays the 3rd (never the next
    # session); 00:30 UTC on the 7th is 19:30 on the 6th in New York: the 6th.
    assert days == [("2020-01-02", 1.0), ("2020-01-03", 2.0), ("2020-01-06", 3.0)]


def test_reference_rows_for_unknown_symbols_are_refused(store: Store, tmp_path: Path):
    news = [{"symbol": "NOPE", "publishedDate": "2020-01-02 10:00:00", "title": "t", "url": "u"}]
    path = _write(tmp_path, "NOPE_news.json", json.dumps(news))
    with pytest.raises(InputError, match=r"symbol NOPE: unknown symbol"):
        loaders.load_fmp_files(store, [path])
    assert store.row_counts()["fmp_news"] == 0


def test_parquet_with_mapping_and_aware_timestamps(store: Store, tmp_path: Path):
    frame = pl.DataFrame(
        {
            "when": [
                datetime(2020, 1, 2, 21, 0, tzinfo=UTC),
                datetime(2020, 1, 3, 21, 0, tzinfo=UTC),
            ],
            "tick": ["BBB", "BBB"],
            "px": [5.0, 5.5],
        }
    )
    path = tmp_path / "b.parquet"
    frame.write_parquet(path)
    res = loaders.load_bar_files(
        store, [path], mapping={"ts": "when", "symbol": "tick", "close": "px"}
    )
    assert res["bars"].inserted == 2
    rows = store.con.execute(
        "SELECT symbol, ts::VARCHAR, close, adj_close, source FROM bars"
    ).fetchall()
    assert rows[0] == ("BBB", "2020-01-02", 5.0, 5.0, "parquet")


def test_overlapping_files_keep_one_row_per_key(store: Store, tmp_path: Path):
    first = _write(tmp_path, "a.csv", GOOD)
    more = GOOD.replace("2020-01-02,10,11,9,10.5,10.4", "2020-01-09,10,11,9,10.5,10.4")
    second = _write(
        tmp_path,
        "b.csv",
        more.replace("2020-01-03,10,11,9,10.5,10.4", "2020-01-03,10,11,9,10.5,10.5"),
    )
    loaders.load_bar_files(store, [first], symbol="AAA")
    res = loaders.load_bar_files(store, [second], symbol="AAA")["bars"]
    assert (res.inserted, res.updated, res.unchanged) == (1, 1, 3)
    total, distinct = store.con.execute(
        "SELECT count(*), count(DISTINCT (symbol, ts)) FROM bars"
    ).fetchall()[0]
    assert total == distinct == 6
