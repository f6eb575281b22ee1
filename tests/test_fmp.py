"""FMP payload files: kinds, point-in-time stamps, and clear errors."""

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from kronos.config import DataSettings
from kronos.data import loaders, readers
from kronos.data.errors import InputError
from kronos.data.ingest import ingest
from kronos.data.sources import fmp
from kronos.data.sources.bundled import bundled_profiles
from kronos.data.store import Store

# Shapes as FMP's v3 API saves them (field names and formats, values invented).
INCOME_V3 = {
    "date": "2022-09-24",
    "symbol": "AAPL",
    "reportedCurrency": "USD",
    "fillingDate": "2022-10-28",
    "acceptedDate": "2022-10-27 18:01:14",
    "calendarYear": "2022",
    "period": "FY",
    "revenue": 394328000000,
    "grossProfit": 170782000000,
    "netIncome": 99803000000,
}
NEWS = {
    "symbol": "AAPL",
    "publishedDate": "2023-01-05 10:13:00",
    "title": "Apple falls",
    "image": "",
    "site": "example.com",
    "text": "...",
    "url": "https://example.com/a",
}


@pytest.fixture
def aapl_store(store: Store) -> Store:
    ingest(store, "dim_company_profile", [bundled_profiles()], source="bundled", origin="t")
    return store


def _write(tmp_path: Path, name: str, payload) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


def test_available_at_follows_the_most_exact_stamp():
    _, f = fmp.normalize(
        "income-statement",
        [
            INCOME_V3,
            {
                **INCOME_V3,
                "date": "2022-06-25",
                "period": "Q3",
                "acceptedDate": None,
                "fillingDate": "2022-07-29",
            },
            {
                **INCOME_V3,
                "date": "2022-03-26",
                "period": "Q2",
                "acceptedDate": None,
                "fillingDate": None,
            },
            {
                **INCOME_V3,
                "date": "2021-12-25",
                "period": "Q4",
                "acceptedDate": None,
                "fillingDate": None,
            },
        ],
        origin="t",
    )
    got = f["available_at"].to_list()
    assert got[0] == datetime(2022, 10, 27, 22, 1, 14, tzinfo=UTC)  # 18:01 EDT
    assert got[1] == datetime(2022, 7, 30, 3, 59, 59, tzinfo=UTC)  # end of filing day, EDT
    assert got[2] == datetime(2022, 5, 11, 3, 59, 59, tzinfo=UTC)  # Q2: +45 days deadline
    assert got[3] == datetime(2022, 3, 26, 3, 59, 59, tzinfo=UTC)  # Q4: +90 days (10-K)
    assert f["fiscal_year"].to_list() == ["2022"] * 4  # text until conform() casts it


def test_key_metrics_take_the_filing_time_of_their_period(aapl_store: Store, tmp_path: Path):
    loaders.load_fmp_files(
        aapl_store, [_write(tmp_path, "AAPL_income-statement.json", [INCOME_V3])]
    )
    metrics = [
        {"symbol": "AAPL", "date": "2022-09-24", "period": "FY", "marketCap": 2.4e12},
        {"symbol": "AAPL", "date": "2021-09-25", "period": "FY", "marketCap": 2.4e12},
    ]
    loaders.load_fmp_files(aapl_store, [_write(tmp_path, "AAPL_key-metrics.json", metrics)])
    rows = aapl_store.con.execute(
        "SELECT period_end::VARCHAR, available_at FROM fmp_key_metrics ORDER BY 1"
    ).fetchall()
    assert rows[1][1] == datetime(2022, 10, 27, 22, 1, 14, tzinfo=UTC)  # the 10-K's acceptance
    assert rows[0][1] == datetime(2021, 12, 25, 4, 59, 59, tzinfo=UTC)  # no filing: deadline


def test_snapshots_need_a_time(aapl_store: Store, tmp_path: Path):
    est = [{"symbol": "AAPL", "date": "2023-09-30", "epsAvg": 6.1, "numAnalystsEps": 30}]
    path = _write(tmp_path, "AAPL_analyst-estimates.json", est)
    with pytest.raises(InputError, match="snapshot without a time"):
        loaders.load_fmp_files(aapl_store, [path])
    known = datetime(2023, 2, 1, 12, tzinfo=UTC)  # 07:00 in New York
    loaders.load_fmp_files(aapl_store, [path], known_at=known)
    got = readers.estimates(aapl_store, date(2023, 2, 1), ["AAPL"], settings=DataSettings())
    assert got.select("eps_avg", "num_analysts_eps", "available_at").row(0) == (6.1, 30, known)
    assert readers.estimates(
        aapl_store, date(2023, 1, 31), ["AAPL"], settings=DataSettings()
    ).is_empty()


def test_news_is_idempotent_and_timestamped_in_eastern_time(aapl_store: Store, tmp_path: Path):
    path = _write(tmp_path, "AAPL_stock_news.json", [NEWS, {**NEWS, "title": "Apple rises"}])
    first = loaders.load_fmp_files(aapl_store, [path])["fmp_news"]
    second = loaders.load_fmp_files(aapl_store, [path])["fmp_news"]
    assert (first.inserted, second.inserted, second.updated) == (2, 0, 0)
    got = readers.news(aapl_store, date(2023, 1, 5), ["AAPL"], settings=DataSettings())
    assert got["published_at"][0] == datetime(2023, 1, 5, 15, 13, tzinfo=UTC)


def test_rating_and_profile(aapl_store: Store, tmp_path: Path):
    rating = [
        {
            "symbol": "AAPL",
            "date": "2023-01-05",
            "rating": "S",
            "ratingScore": 5,
            "ratingRecommendation": "Strong Buy",
        }
    ]
    loaders.load_fmp_files(aapl_store, [_write(tmp_path, "AAPL_rating.json", rating)])
    assert readers.ratings(aapl_store, date(2023, 1, 4), settings=DataSettings()).is_empty()
    assert readers.ratings(aapl_store, date(2023, 1, 5), settings=DataSettings())[
        "rating_score"
    ].to_list() == [5.0]
    profile = {
        "symbol": "AAPL",
        "companyName": "Apple Inc.",
        "sector": "Technology",
        "industry": "Consumer Electronics",
        "mktCap": 2.1e12,
        "exchangeShortName": "NASDAQ",
        "currency": "USD",
        "isEtf": False,
    }
    path = _write(tmp_path, "AAPL_profile.json", [profile])
    loaders.load_fmp_files(aapl_store, [path], known_at=datetime(2023, 1, 6, 12, tzinfo=UTC))
    now = readers.profiles(aapl_store, date(2023, 1, 6), ["AAPL"], settings=DataSettings())
    before = readers.profiles(aapl_store, date(2023, 1, 5), ["AAPL"], settings=DataSettings())
    assert (now["sector"][0], now["market_cap"][0]) == ("Technology", 2.1e12)
    assert before["sector"][0] == "Information Technology"  # the bundled profile


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("x_income-statement.json", '[{"symbol": "AAPL",', "malformed JSON at line 1"),
        ("x_income-statement.json", '"nope"', "expected a JSON list"),
        (
            "x_income-statement.json",
            '[{"symbol": "AAPL", "period": "FY"}]',
            "column 'date', symbol AAPL: record 1: missing field",
        ),
        (
            "x_income-statement.json",
            '[{"symbol": "AAPL", "date": "24/09/2022", "period": "FY"}]',
            "cannot read '24/09/2022' as a date",
        ),
        ("mystery.json", "[]", "cannot tell the FMP endpoint"),
    ],
)
def test_bad_files_name_the_problem(aapl_store: Store, tmp_path: Path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises((InputError, ValueError), match=message):
        loaders.load_fmp_files(aapl_store, [path])
    assert aapl_store.row_counts()["fmp_income_statement"] == 0


def test_error_payloads_and_empty_files_are_refused(tmp_path: Path):
    error = {"Error Message": "Invalid API KEY.  Feel free to create a Free API Key."}
    for payload, message in [
        (error, "FMP returned an error: Invalid API KEY. Feel free to create a Free API Key."),
        ({"message": "Limit Reach"}, "FMP returned an error: Limit Reach"),
        ([], "no records"),
    ]:
        with pytest.raises(InputError, match=message):
            fmp.read_fmp_records(_write(tmp_path, "AAPL_rating.json", payload))


def test_symbols_are_normalised_with_a_note(aapl_store: Store, tmp_path: Path):
    notes: list[str] = []
    path = _write(tmp_path, "aapl_stock_news.json", [{**NEWS, "symbol": " aapl"}])
    loaders.load_fmp_files(aapl_store, [path], on_note=notes.append)
    assert notes == ["symbol ' aapl' stored as 'AAPL'"]
    rows = aapl_store.con.execute("SELECT symbol, title FROM fmp_news").fetchall()
    assert rows == [("AAPL", "Apple falls")]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([{"Error Message": "Invalid API KEY."}], "Invalid API KEY."),
        ([{"Error Message": "Limit Reach ."}, {"Error Message": "Limit Reach ."}], "Limit Reach ."),
        ({"error": "Invalid  API key"}, "Invalid API key"),
        ([{"message": "Too many requests", "status": 429}], "Too many requests"),
    ],
)
def test_error_payloads_in_every_shape_give_fmps_message(tmp_path: Path, payload, message):
    with pytest.raises(InputError) as info:
        fmp.read_fmp_records(_write(tmp_path, "AAPL_rating.json", payload))
    assert str(info.value).endswith(f"AAPL_rating.json: FMP returned an error: {message}")


def test_records_that_mention_a_message_are_not_errors(tmp_path: Path):
    records = [{**NEWS, "message": "not an error"}]
    assert fmp.read_fmp_records(_write(tmp_path, "AAPL_stock_news.json", records)) == (
        "news",
        records,
    )


def test_a_refused_file_after_a_committed_one_names_both(aapl_store: Store, tmp_path: Path):
    good = _write(tmp_path, "AAPL_stock_news.json", [NEWS])
    bad = _write(tmp_path, "AAPL_rating.json", [{"Error Message": "Invalid API KEY."}])
    with pytest.raises(loaders.PartialIngest) as info:
        loaders.load_fmp_files(aapl_store, [good, bad])
    assert str(info.value) == (
        f"{bad} refused, nothing of it was written ({good} was committed: 1 fmp_news row):\n"
        f"  {bad}: FMP returned an error: Invalid API KEY."
    )
    assert aapl_store.row_counts()["fmp_news"] == 1
    assert aapl_store.row_counts()["fmp_rating"] == 0
