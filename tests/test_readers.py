"""Point-in-time reads: nothing known after ``asof`` is ever returned."""

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.ingest import ingest
from kronos.data.sources import fmp
from kronos.data.store import Store

QUARTERS = [
    date(2018, 3, 31),
    date(2018, 6, 30),
    date(2018, 9, 30),
    date(2018, 12, 31),
    date(2019, 3, 31),
    date(2019, 6, 30),
    date(2019, 9, 30),
    date(2019, 12, 31),
]


def _profiles(store: Store, symbols: dict[str, str]) -> None:
    frame = pl.DataFrame(
        {
            "symbol": list(symbols),
            "available_at": [datetime(1970, 1, 1, tzinfo=UTC)] * len(symbols),
            "name": list(symbols),
            "asset_type": ["equity"] * len(symbols),
            "sector": list(symbols.values()),
            "industry": [None] * len(symbols),
            "exchange": [None] * len(symbols),
            "currency": ["USD"] * len(symbols),
            "market_cap": [1e10] * len(symbols),
            "source": ["test"] * len(symbols),
        }
    )
    ingest(store, "dim_company_profile", [frame], source="test", origin="test")


def _load(store: Store, kind: str, records: list[dict]) -> None:
    table, frame = fmp.normalize(kind, records, origin=f"test:{kind}", source="test")
    ingest(store, table, [frame], source="test", origin=f"test:{kind}")


def _statements(symbol: str, ni: float, revenue: float, growth: float) -> tuple[list, list]:
    inc, bal = [], []
    for i, q in enumerate(QUARTERS):
        accepted = f"{q.year + (q.month == 12)}-{(q.month % 12) + 2:02d}-05 17:00:00"
        rev = revenue * (1 + growth) ** (i // 4)
        inc.append(
            {
                "symbol": symbol,
                "date": str(q),
                "period": f"Q{(q.month - 1) // 3 + 1}",
                "acceptedDate": accepted,
                "revenue": rev,
                "grossProfit": rev * 0.4,
                "netIncome": ni,
            }
        )
        bal.append(
            {
                "symbol": symbol,
                "date": str(q),
                "period": f"Q{(q.month - 1) // 3 + 1}",
                "acceptedDate": accepted,
                "totalAssets": 1000.0,
                "totalStockholdersEquity": 500.0,
                "totalDebt": 200.0,
            }
        )
    return inc, bal


@pytest.fixture
def ref_store(store: Store) -> Store:
    _profiles(store, {"A": "Tech", "B": "Tech", "C": "Tech", "D": "Energy"})
    for sym, ni, growth in (
        ("A", 10.0, 0.10),
        ("B", 20.0, 0.20),
        ("C", 30.0, 0.0),
        ("D", 5.0, 0.05),
    ):
        inc, bal = _statements(sym, ni, 100.0, growth)
        _load(store, "income-statement", inc)
        _load(store, "balance-sheet-statement", bal)
    return store


def test_pit_resolution_uses_market_close():
    before_close = datetime(2020, 1, 2, 20, 59, tzinfo=UTC)  # 15:59 New York
    after_close = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
    assert readers.PointInTime.at(before_close, DataSettings()).bar_date == date(2020, 1, 1)
    assert readers.PointInTime.at(after_close, DataSettings()).bar_date == date(2020, 1, 2)
    assert readers.PointInTime.at(date(2020, 1, 2), DataSettings()).bar_date == date(2020, 1, 2)
    with pytest.raises(ValueError, match="naive"):
        readers.PointInTime.at(datetime(2020, 1, 2, 12), DataSettings())


def test_prices_and_returns_stop_at_asof(bundled_db: Path):
    with Store.open(bundled_db, read_only=True) as s:
        px = readers.prices(
            s, asof=date(2000, 1, 3), symbols=["AAPL", "GOOG"], settings=DataSettings()
        )
        intraday = readers.prices(
            s, asof=datetime(2000, 1, 3, 15, tzinfo=UTC), symbols=["AAPL"], settings=DataSettings()
        )
        rets = readers.returns(
            s,
            asof=date(2000, 1, 3),
            symbols=["AAPL"],
            start=date(1999, 12, 1),
            settings=DataSettings(),
        )
    assert px["ts"].max() == date(2000, 1, 3)
    assert px["symbol"].unique().to_list() == ["AAPL"]  # GOOG listed in 2004
    assert intraday["ts"].max() == date(1999, 12, 31)  # 10:00 in New York: the 3rd is not closed
    assert rets["ts"].max() == date(2000, 1, 3) and rets["ts"].min() >= date(1999, 12, 1)
    first = px.filter(pl.col("ts") >= date(1999, 12, 30))["adj_close"].to_list()
    assert rets["ret"][-1] == pytest.approx(first[-1] / first[-2] - 1, rel=1e-12)


def test_statements_restatement_becomes_visible_only_when_known(ref_store: Store):
    restated = {
        "symbol": "A",
        "date": "2019-12-31",
        "period": "Q4",
        "acceptedDate": "2020-06-01 09:00:00",
        "revenue": 1.0,
        "netIncome": -99.0,
    }
    _load(ref_store, "income-statement", [restated])
    before = readers.statements(
        ref_store, "fmp_income_statement", date(2020, 5, 31), ["A"], settings=DataSettings()
    )
    after = readers.statements(
        ref_store, "fmp_income_statement", date(2020, 6, 1), ["A"], settings=DataSettings()
    )
    q4 = lambda f: f.filter(pl.col("period_end") == date(2019, 12, 31))  # noqa: E731
    assert q4(before).height == 1 and '"netIncome": 10.0' in q4(before)["payload"][0]
    assert q4(after).height == 1 and '"netIncome": -99.0' in q4(after)["payload"][0]
    early = readers.statements(
        ref_store, "fmp_income_statement", date(2019, 2, 1), ["A"], settings=DataSettings()
    )
    assert early["period_end"].max() == date(2018, 9, 30)  # Q4 2018 accepted 2019-02-05


def test_factors_match_hand_computation_and_ignore_later_data(ref_store: Store):
    asof = date(2020, 3, 1)
    got = readers.factors(ref_store, asof, settings=DataSettings()).sort("symbol")
    # TTM net income = 4 x quarterly; equity 500, assets 1000 (reference: hand arithmetic)
    assert got["roe"].to_list() == pytest.approx([0.08, 0.16, 0.24, 0.04], rel=1e-12)
    assert got["roa"].to_list() == pytest.approx([0.04, 0.08, 0.12, 0.02], rel=1e-12)
    assert got["dta"].to_list() == pytest.approx([0.2] * 4)
    assert got["rev"].to_list() == pytest.approx([0.10, 0.20, 0.0, 0.05], rel=1e-12)
    # within Tech (3 names): roe 0.08, 0.16, 0.24 -> z = -1, 0, 1 (sample std 0.08)
    assert got["z_roe"].to_list()[:3] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-12)
    # Energy has one name: falls back to the whole cross-section
    allroe = [0.08, 0.16, 0.24, 0.04]
    mu = sum(allroe) / 4
    sd = (sum((x - mu) ** 2 for x in allroe) / 3) ** 0.5
    assert got["z_roe"][3] == pytest.approx((0.04 - mu) / sd, rel=1e-12)
    # a later filing must not move the factors as of an earlier date
    _load(
        ref_store,
        "income-statement",
        [
            {
                "symbol": "A",
                "date": "2020-03-31",
                "period": "Q1",
                "acceptedDate": "2020-05-01 17:00:00",
                "revenue": 1e6,
                "grossProfit": 1.0,
                "netIncome": 1e6,
            }
        ],
    )
    assert readers.factors(ref_store, asof, settings=DataSettings()).sort("symbol").equals(got)
    assert (
        readers.factors(ref_store, date(2020, 5, 2), settings=DataSettings()).filter(
            pl.col("symbol") == "A"
        )["roe"][0]
        > 1
    )


def test_revisions_compare_consensus_now_and_lookback_ago(ref_store: Store):
    snaps = []
    for sym, eps in (("A", (1.0, 1.1)), ("B", (2.0, 1.8)), ("C", (1.0, 1.0))):
        for when, value in zip(("2020-01-01T00:00:00Z", "2020-02-15T00:00:00Z"), eps, strict=True):
            snaps.append(
                {
                    "symbol": sym,
                    "date": "2020-03-31",
                    "period": "quarter",
                    "epsAvg": value,
                    "knownAt": when,
                }
            )
    _load(ref_store, "analyst-estimates", snaps)
    got = readers.revisions(
        ref_store, date(2020, 3, 1), lookback_days=30, settings=DataSettings()
    ).sort("symbol")
    assert got["rev_eps_chg"].to_list() == pytest.approx([0.1, -0.1, 0.0], rel=1e-12)
    assert got["z_rev_eps"].to_list() == pytest.approx([1.0, -1.0, 0.0], abs=1e-12)
    early = readers.revisions(ref_store, date(2020, 2, 1), settings=DataSettings())
    assert early["eps_now"].to_list() == [1.0, 2.0, 1.0]  # the Feb 15 snapshot is unknown
    assert early["rev_eps_chg"].to_list() == [0.0, 0.0, 0.0]  # Jan 1 is both now and 30d ago
    first = readers.revisions(ref_store, date(2020, 1, 20), settings=DataSettings())
    assert first["rev_eps_chg"].null_count() == 3  # nothing was known 30 days before


def test_news_counts_and_social_respect_asof(ref_store: Store):
    news = [
        {
            "symbol": "A",
            "publishedDate": f"2020-01-0{d} 10:00:00",
            "title": f"h{d}{i}",
            "url": f"u{d}{i}",
        }
        for d, n in ((2, 1), (3, 4))
        for i in range(n)
    ]
    _load(ref_store, "news", news)
    counts = readers.news_counts(
        ref_store, datetime(2020, 1, 3, 15, 30, tzinfo=UTC), settings=DataSettings()
    )
    # 15:30 UTC is 10:30 New York: the four 10:00 headlines of the 3rd are known
    assert counts.select("day", "n_news").rows() == [(date(2020, 1, 2), 1), (date(2020, 1, 3), 4)]
    counts = readers.news_counts(
        ref_store, datetime(2020, 1, 3, 14, 59, tzinfo=UTC), settings=DataSettings()
    )
    assert counts.select("day", "n_news").rows() == [(date(2020, 1, 2), 1)]
