from pathlib import Path

import duckdb
import polars as pl
import pytest

from kronos.data.errors import SchemaVersionError
from kronos.data.ingest import ingest
from kronos.data.store import Store, latest_version, migrations


def test_fresh_database_is_at_latest_version_with_every_table(tmp_path: Path):
    with Store.open(tmp_path / "k.duckdb") as s:
        assert s.version == latest_version() == len(migrations())
        tables = set(s.tables())
    expected = {
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
        "forecasts",
        "calibration_state",
        "strategist_recos",
        "policy_knobs",
        "orders",
        "fills",
        "positions",
        "circuit_breakers",
    }
    assert expected <= tables


def test_older_database_is_upgraded_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "old.duckdb"
    with Store.open(path, target_version=1) as s:
        assert s.version == 1
        assert "fmp_news" not in s.tables()
        bar = pl.DataFrame({"symbol": ["A"], "ts": [pl.date(2020, 1, 2)]}).select(
            pl.lit("A").alias("symbol"),
            pl.date(2020, 1, 2).alias("ts"),
            *(pl.lit(None, pl.Float64).alias(c) for c in ("open", "high", "low", "close")),
            pl.lit(10.0).alias("adj_close"),
            pl.lit(None, pl.Float64).alias("volume"),
            pl.lit("test").alias("source"),
        )
        ingest(s, "bars", [bar], source="test", origin="test")
    with Store.open(path) as s:
        assert s.version == latest_version()
        assert "fmp_news" in s.tables()
        assert s.con.execute("SELECT adj_close FROM bars").fetchall() == [(10.0,)]
        applied = s.con.execute("SELECT version FROM kronos_schema ORDER BY 1").fetchall()
        assert [v for (v,) in applied] == list(range(1, latest_version() + 1))


def test_newer_database_is_refused_with_a_clear_message(tmp_path: Path):
    path = tmp_path / "new.duckdb"
    Store.open(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO kronos_schema VALUES (99, 'future', now())")
    con.close()
    with pytest.raises(
        SchemaVersionError, match=r"schema version 99, newer than .*supports \(\d+\)"
    ):
        Store.open(path)


def test_read_only_open_of_old_database_asks_for_migration(tmp_path: Path):
    path = tmp_path / "old.duckdb"
    Store.open(path, target_version=1).close()
    with pytest.raises(SchemaVersionError, match="needs migrating"):
        Store.open(path, read_only=True)


def test_transaction_rolls_back_on_error(store: Store):
    with pytest.raises(RuntimeError), store.transaction() as con:
        con.execute("INSERT INTO policy_knobs VALUES (now(), 'risk_regime', 'on', NULL, NULL)")
        raise RuntimeError("boom")
    assert store.con.execute("SELECT count(*) FROM policy_knobs").fetchall() == [(0,)]
