"""The synthetic universe through the real loaders and point-in-time readers."""

from datetime import date

import pytest

from kronos.config import DataSettings
from kronos.data import loaders, readers
from kronos.data.store import Store


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Store:
    path = tmp_path_factory.mktemp("synth") / "k.duckdb"
    with Store.open(path) as s:
        first = loaders.load_synthetic(s, n_symbols=24, years=6, seed=3)
        again = loaders.load_synthetic(s, n_symbols=24, years=6, seed=3)
        assert all(r.inserted == r.updated == 0 for r in again.values())
        assert {r.table: r.rows_in for r in first.values()} == {
            r.table: r.rows_in for r in again.values()
        }
    with Store.open(path, read_only=True) as s:
        yield s


def test_every_reference_table_is_filled_and_labelled(synth: Store):
    for table in (
        "bars",
        "dim_company_profile",
        "fmp_income_statement",
        "fmp_balance_sheet",
        "fmp_cash_flow",
        "fmp_key_metrics",
        "fmp_ratios",
        "fmp_analyst_estimates",
        "fmp_rating",
        "fmp_news",
        "social_features",
    ):
        sources = synth.con.execute(f"SELECT DISTINCT source FROM {table}").fetchall()
        assert sources == [("synthetic",)], table


def test_factor_views_as_of_a_date_cover_the_universe(synth: Store):
    asof = date(2004, 6, 30)
    factors = readers.factors(synth, asof, settings=DataSettings())
    assert factors.height == 24
    assert factors["known_at"].max() <= readers.PointInTime.at(asof, DataSettings()).cutoff
    z = factors["z_roe"].drop_nulls()
    assert z.len() >= 20 and z.abs().max() <= 3
    revisions = readers.revisions(synth, asof, settings=DataSettings())
    assert revisions.height == 24 and revisions["z_rev_eps"].null_count() < 24
    assert readers.liquidity(synth, asof, settings=DataSettings())["avg_dollar_vol_60d"].min() > 0


def test_key_metrics_are_never_known_before_their_income_statement(synth: Store):
    early = synth.con.execute(
        "SELECT count(*) FROM fmp_key_metrics k JOIN fmp_income_statement i "
        "USING (symbol, period_end) WHERE k.available_at < i.available_at"
    ).fetchall()[0][0]
    assert early == 0


def test_factor_liquidity_stops_at_the_last_closed_session(synth: Store):
    """Regression: the macro once read the next session's bar (UTC date of the cutoff)."""
    asof = date(2004, 6, 30)
    factors = readers.factors(synth, asof, settings=DataSettings()).select(
        "symbol", "avg_dollar_vol_60d"
    )
    liquidity = readers.liquidity(synth, asof, settings=DataSettings()).select(
        "symbol", "avg_dollar_vol_60d"
    )
    joined = factors.join(liquidity, on="symbol", suffix="_reader")
    assert joined.height == 24
    assert (joined["avg_dollar_vol_60d"] == joined["avg_dollar_vol_60d_reader"]).all()


def test_failed_upsert_reports_its_own_error(synth: Store, tmp_path):
    import shutil

    import polars as pl

    from kronos.data.ingest import upsert

    path = tmp_path / "copy.duckdb"
    shutil.copy(synth.path, path)
    with Store.open(path) as s:
        bad = pl.DataFrame({"symbol": ["SYN0001"], "ts": [date(2004, 1, 5)]})
        with pytest.raises(Exception) as info:
            upsert(s, "bars", bad, source="x", origin="x")  # missing columns: a SQL error
        assert "aborted" not in str(info.value)
        assert s.con.execute("SELECT count(*) FROM bars").fetchall()[0][0] > 0
