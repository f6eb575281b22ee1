from __future__ import annotations

import math
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos.calendar import get_calendar
from kronos.data.schema import TABLES
from kronos.data.sources.synthetic import (
    SECTORS,
    iter_synthetic_bars,
    synthetic_bars,
    synthetic_profiles,
    synthetic_symbols,
)
from kronos.data.sources.synthetic_reference import SyntheticReference, synthetic_reference
from kronos.errors import InputError

REF_START, REF_END = date(2018, 1, 1), date(2020, 12, 31)
STATEMENTS = ("income-statement", "balance-sheet-statement", "cash-flow-statement")


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return synthetic_bars(20, 10, seed=0)


@pytest.fixture(scope="module")
def ref() -> SyntheticReference:
    return synthetic_reference(synthetic_symbols(12), REF_START, REF_END, seed=3)


def _log_returns(bars: pl.DataFrame) -> np.ndarray:
    """(symbols, days-1) matrix of daily log returns."""
    n_sym = bars["symbol"].n_unique()
    r = bars.sort("symbol", "ts").select(pl.col("close").log().diff().over("symbol"))
    return r.drop_nulls().to_series().to_numpy().reshape(n_sym, -1)


def _acf1(x: np.ndarray) -> float:
    x = x - x.mean()
    return float((x[1:] * x[:-1]).sum() / (x * x).sum())


# ------------------------------------------------------------------ symbols & schemas


def test_symbols_are_padded_and_widen_past_9999() -> None:
    assert synthetic_symbols(3) == ["SYN0001", "SYN0002", "SYN0003"]
    wide = synthetic_symbols(10_000)
    assert wide[0] == "SYN00001" and wide[-1] == "SYN10000"
    assert len(set(wide)) == 10_000


def test_frames_match_table_schemas(bars: pl.DataFrame, ref: SyntheticReference) -> None:
    profiles = synthetic_profiles(synthetic_symbols(5), seed=0)
    assert bars.schema == pl.Schema(TABLES["bars"].schema)
    assert profiles.schema == pl.Schema(TABLES["dim_company_profile"].schema)
    assert ref.social.schema == pl.Schema(TABLES["social_features"].schema)
    for frame in (bars, profiles, ref.social):
        assert frame["source"].unique().to_list() == ["synthetic"]


def test_profiles_fields(bars: pl.DataFrame) -> None:
    profiles = synthetic_profiles(synthetic_symbols(400), seed=1)
    assert profiles["sector"].is_in(list(SECTORS)).all()
    assert profiles["sector"].n_unique() == len(SECTORS)
    assert profiles["name"][2] == "Synthetic Co 0003"
    caps = profiles["market_cap"]
    assert 8e9 < caps.median() < 40e9
    assert caps.min() >= 1e9 and caps.max() <= 2e12 and caps.max() > 200e9
    assert (profiles["available_at"] == datetime.fromisoformat("1970-01-01T00:00:00+00:00")).all()


def test_profile_of_a_symbol_does_not_depend_on_its_company() -> None:
    alone = synthetic_profiles(["SYN0003"], seed=9)
    among = synthetic_profiles(synthetic_symbols(6), seed=9).filter(pl.col("symbol") == "SYN0003")
    assert_frame_equal(alone, among)


# ------------------------------------------------------------------ bars


def test_bars_are_deterministic_by_seed() -> None:
    a, b = synthetic_bars(4, 1, seed=11), synthetic_bars(4, 1, seed=11)
    assert_frame_equal(a, b)
    assert not synthetic_bars(4, 1, seed=12)["close"].equals(a["close"])


def test_symbol_path_ignores_batching_and_universe_size() -> None:
    small = pl.concat(iter_synthetic_bars(5, 2, seed=4, batch_symbols=3))
    large = pl.concat(iter_synthetic_bars(8, 2, seed=4, batch_symbols=50))
    assert_frame_equal(small, large.filter(pl.col("symbol").is_in(synthetic_symbols(5))))


def test_iterator_yields_sorted_batches() -> None:
    frames = list(iter_synthetic_bars(7, 0.5, seed=2, batch_symbols=3))
    assert [f["symbol"].n_unique() for f in frames] == [3, 3, 1]
    for f in frames:
        assert f.equals(f.sort("symbol", "ts"))
    days = frames[0].filter(pl.col("symbol") == "SYN0001")["ts"]
    assert days.len() == 126 and days[0] == date(2000, 1, 3)
    # the first 126 XNYS sessions of 2000: MLK day (Jan 17) and Good Friday are skipped
    assert days.to_list() == get_calendar().sessions(date(2000, 1, 3), date(2000, 6, 30))
    assert date(2000, 1, 17) not in days and date(2000, 4, 21) not in days


def test_bars_follow_the_calendar_they_are_given() -> None:
    xnys = synthetic_bars(2, 1, seed=0)
    always = synthetic_bars(2, 1, seed=0, calendar=get_calendar("none"))
    assert always["ts"].dt.weekday().max() == 7  # Sundays trade around the clock
    assert always["ts"].max() == date(2000, 1, 3) + timedelta(days=251)  # 252 days in a row
    # the same path (values by session index), only on other days
    assert_frame_equal(xnys.drop("ts"), always.drop("ts"))


def test_prices_positive_finite_and_consistent(bars: pl.DataFrame) -> None:
    prices = bars.select("open", "high", "low", "close", "adj_close", "volume").to_numpy()
    assert np.isfinite(prices).all() and (prices > 0).all()
    assert (bars["adj_close"] == bars["close"]).all()
    ordered = bars.select(
        high=(pl.col("high") >= pl.max_horizontal("open", "close")).all(),
        low=(pl.col("low") <= pl.min_horizontal("open", "close")).all(),
    )
    assert ordered.row(0) == (True, True)
    assert bars.select(pl.struct("symbol", "ts").is_unique().all()).item()


def test_volatility_clusters_in_idiosyncratic_returns(bars: pl.DataFrame) -> None:
    r = _log_returns(bars)
    market = r.mean(axis=0)
    residual = r - np.outer(r @ market / (market @ market), market)
    # Jumps are i.i.d. and ~5x a normal day, so they dominate the fourth moment
    # and hide the GARCH signal in raw squares; winsorise them first. Removing
    # the market also removes the regime-switching clustering, so what is left
    # is the per-symbol GARCH (with alpha=0 this average is ~0.00).
    cap = 6 * np.median(np.abs(residual), axis=1, keepdims=True)
    winsorised = np.clip(residual, -cap, cap)
    assert np.mean([_acf1(x**2) for x in winsorised]) > 0.05


def test_annualised_vol_is_plausible(bars: pl.DataFrame) -> None:
    vol = _log_returns(bars).std(axis=1) * math.sqrt(252)
    assert vol.min() > 0.15 and vol.max() < 0.60


def test_sector_factor_matches_profile_sectors() -> None:
    n = 40
    r = _log_returns(synthetic_bars(n, 8, seed=5))
    residual = r - r.mean(axis=0)
    corr = np.corrcoef(residual)
    sector = synthetic_profiles(synthetic_symbols(n), seed=5)["sector"].to_numpy()
    same = (sector[:, None] == sector[None, :]) & ~np.eye(n, dtype=bool)
    other = sector[:, None] != sector[None, :]
    assert corr[same].mean() > corr[other].mean() + 0.05


def test_dollar_volume_tracks_market_cap_turnover() -> None:
    early = (
        synthetic_bars(30, 0.1, seed=6)
        .group_by("symbol")
        .agg(dollar_volume=(pl.col("close") * pl.col("volume")).median())
    )
    joined = early.join(synthetic_profiles(synthetic_symbols(30), seed=6), on="symbol")
    turnover = (joined["dollar_volume"] / joined["market_cap"]).median()
    assert 0.002 < turnover < 0.0125


def test_empty_requests() -> None:
    assert synthetic_bars(0, 1, seed=0).is_empty()
    assert synthetic_bars(3, 0, seed=0).schema == pl.Schema(TABLES["bars"].schema)
    with pytest.raises(InputError, match="batch_symbols >= 1; got 3, 1, 0"):
        iter_synthetic_bars(3, 1, seed=0, batch_symbols=0)


# ------------------------------------------------------------------ reference data


def test_reference_is_deterministic(ref: SyntheticReference) -> None:
    again = synthetic_reference(synthetic_symbols(12), REF_START, REF_END, seed=3)
    assert again.payloads == ref.payloads
    assert_frame_equal(again.social, ref.social)
    assert_frame_equal(again.news_bursts, ref.news_bursts)
    other = synthetic_reference(synthetic_symbols(12), REF_START, REF_END, seed=4)
    assert other.payloads["income-statement"] != ref.payloads["income-statement"]


def test_payload_numbers_are_finite(ref: SyntheticReference) -> None:
    for endpoint, records in ref.payloads.items():
        assert records, endpoint
        for value in (v for rec in records for v in rec.values()):
            if isinstance(value, float):
                assert math.isfinite(value), endpoint


def test_statements_cover_quarters_and_file_after_period_end(ref: SyntheticReference) -> None:
    income = pl.DataFrame(ref.payloads["income-statement"])
    assert income.height == 12 * 12  # 12 symbols x 12 quarters in 2018-2020
    assert set(income["period"]) == {"Q1", "Q2", "Q3", "Q4"}
    assert (income["fiscalYear"] == income["date"].str.slice(0, 4)).all()
    for endpoint in STATEMENTS:
        records = pl.DataFrame(ref.payloads[endpoint])
        period_end = records["date"].str.to_date()
        filed = records["filingDate"].str.to_date()
        lag = (filed - period_end).dt.total_days()
        assert (lag >= 20).all() and (lag <= 60).all(), endpoint
        accepted = records["acceptedDate"].str.to_datetime("%Y-%m-%d %H:%M:%S")
        assert (accepted.dt.date() == filed).all(), endpoint
        clock = accepted.dt.hour().cast(pl.Int32) * 60 + accepted.dt.minute()
        assert (clock >= 16 * 60 + 5).all() and (clock <= 20 * 60).all(), endpoint


def test_statement_identities(ref: SyntheticReference) -> None:
    inc = pl.DataFrame(ref.payloads["income-statement"])
    bal = pl.DataFrame(ref.payloads["balance-sheet-statement"])
    cf = pl.DataFrame(ref.payloads["cash-flow-statement"])
    assert (inc["grossProfit"] == inc["revenue"] - inc["costOfRevenue"]).all()
    assert (inc["revenue"] > 0).all()
    equity = bal["totalAssets"] - bal["totalLiabilities"]
    assert (bal["totalStockholdersEquity"] == equity).all()
    assert (equity > 0).mean() > 0.9
    assert (cf["capitalExpenditure"] < 0).all()
    assert (cf["freeCashFlow"] == cf["operatingCashFlow"] + cf["capitalExpenditure"]).all()


def test_estimate_snapshots_increase_and_converge(ref: SyntheticReference) -> None:
    est = pl.DataFrame(ref.payloads["analyst-estimates"]).with_columns(
        known=pl.col("knownAt").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
    )
    assert (est["epsHigh"] >= est["epsAvg"]).all() and (est["epsLow"] <= est["epsAvg"]).all()
    lo = datetime.fromisoformat(f"{REF_START}T00:00:00+00:00")
    hi = datetime.fromisoformat(f"{REF_END}T23:59:59+00:00")
    assert est["known"].min() >= lo and est["known"].max() <= hi
    per_period = est.group_by("symbol", "date", maintain_order=True).agg(
        increasing=(pl.col("known").diff().dt.total_seconds() > 0).all(),
        n=pl.len(),
        first=pl.col("epsAvg").first(),
        last=pl.col("epsAvg").last(),
        last_known=pl.col("known").last(),
    )
    assert per_period["increasing"].all()
    actual = pl.DataFrame(ref.payloads["income-statement"]).select(
        "symbol", "date", "eps", filed=pl.col("filingDate").str.to_date()
    )
    full = per_period.join(actual, on=["symbol", "date"]).filter(pl.col("n") >= 8)
    assert full.height > 50
    assert (full["last_known"].dt.date() <= full["filed"]).all()
    first_err = (full["first"] - full["eps"]).abs().mean()
    last_err = (full["last"] - full["eps"]).abs().mean()
    assert last_err < 0.5 * first_err


def test_estimates_cover_quarters_ending_after_the_window(ref: SyntheticReference) -> None:
    dates = pl.DataFrame(ref.payloads["analyst-estimates"])["date"].str.to_date()
    assert dates.max() > REF_END


def test_ratings_are_consistent(ref: SyntheticReference) -> None:
    rating = pl.DataFrame(ref.payloads["rating"])
    assert rating.height == 12 * 36
    labels = {5: "Strong Buy", 4: "Buy", 3: "Neutral", 2: "Sell", 1: "Strong Sell"}
    grades = {5: "A", 4: "B", 3: "C", 2: "D", 1: "F"}
    for row in rating.iter_rows(named=True):
        assert row["ratingRecommendation"] == labels[row["ratingScore"]]
        assert row["rating"][0] == grades[row["ratingScore"]]
    assert rating["ratingScore"].n_unique() >= 3


def _news_frame(ref: SyntheticReference) -> pl.DataFrame:
    news = pl.DataFrame(ref.payloads["news"])
    return news.with_columns(
        local=pl.col("publishedDate").str.to_datetime("%Y-%m-%d %H:%M:%S"),
    ).with_columns(
        utc=pl.col("local")
        .dt.replace_time_zone("America/New_York", ambiguous="earliest")
        .dt.convert_time_zone("UTC"),
        day=pl.col("local").dt.date(),
    )


def test_news_records(ref: SyntheticReference) -> None:
    news = _news_frame(ref)
    assert news["url"].is_unique().all()
    assert news["url"].str.starts_with("https://synthetic.example/news/").all()
    assert (news["site"] == "synthetic.example").all() and (news["image"] == "").all()
    assert news.select(pl.col("title").str.contains(pl.col("symbol")).all()).item()


def test_news_bursts_stand_out(ref: SyntheticReference) -> None:
    news = _news_frame(ref)
    bursts = ref.news_bursts
    assert bursts.schema["start"] == pl.Datetime("us", "UTC") and bursts.height > 0
    days = pl.date_range(REF_START, REF_END, eager=True).alias("day")
    daily = (
        news.group_by("symbol", "day")
        .len()
        .join(
            pl.DataFrame({"symbol": synthetic_symbols(12)}).join(days.to_frame(), how="cross"),
            on=["symbol", "day"],
            how="right",
        )
        .with_columns(pl.col("len").fill_null(0))
    )
    typical = daily.group_by("symbol").agg(
        floor=pl.max_horizontal(pl.col("len").median(), pl.col("len").mean())
    )
    for burst in bursts.iter_rows(named=True):
        inside = news.filter(
            (pl.col("symbol") == burst["symbol"])
            & (pl.col("utc") >= burst["start"])
            & (pl.col("utc") < burst["end"])
        )
        peak = inside.group_by("day").len()["len"].max()
        floor = typical.filter(pl.col("symbol") == burst["symbol"])["floor"].item()
        assert peak > 5 * floor


def test_reference_days_are_sessions(ref: SyntheticReference) -> None:
    xnys = get_calendar()
    filed = pl.DataFrame(ref.payloads["income-statement"])["filingDate"].str.to_date()
    rated = pl.DataFrame(ref.payloads["rating"])["date"].str.to_date()
    social = ref.social["ts"].dt.date()
    for days in (filed, rated, social):
        assert xnys.sessions_mask(days.to_numpy()).all()
    # the first session of each month: Jan 2 2018 (New Year's Day is a holiday)
    assert rated.min() == date(2018, 1, 2)
    assert social.n_unique() == len(xnys.sessions(REF_START, REF_END))


def test_social_posts_rise_in_bursts(ref: SyntheticReference) -> None:
    social = ref.social
    assert (social["available_at"] == social["ts"]).all()
    assert (social["ts"].dt.hour() == 21).all() and (social["ts"].dt.weekday() <= 5).all()
    assert social["senti_mean"].drop_nulls().abs().max() <= 1.0
    assert (social["rate"] == social["n_posts"].cast(pl.Float64)).all()
    windows = ref.news_bursts.join(social, on="symbol").filter(
        (pl.col("start") <= pl.col("ts")) & (pl.col("end") > pl.col("ts") - pl.duration(days=1))
    )
    hot = social.join(windows.select("symbol", "ts").unique(), on=["symbol", "ts"], how="semi")
    calm = social.join(windows.select("symbol", "ts").unique(), on=["symbol", "ts"], how="anti")
    assert hot.height > 0
    assert hot["n_posts"].mean() > 3 * calm["n_posts"].mean()
