"""The store as a Parquet dataset: export, read-only views, ingest back.

Checks: the export of the bundled store has a manifest whose row counts, schema
version, data range and content hash match the store (the hash is the same for
two exports); a backtest of the EWMA spec on a short window gives the same
order hash on the DuckDB file and on the dataset; export -> ingest gives equal
tables and a second ingest changes nothing; a bad manifest, an altered file or
a foreign schema version is refused naming the file; a write is refused in one
line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kronos.cli import app
from kronos.data.dataset import MANIFEST, DatasetError, export_dataset, read_manifest
from kronos.data.errors import SchemaVersionError
from kronos.data.schema import TABLES
from kronos.data.store import Store, latest_version

SPEC = "backtests/sp500_ewma_weekly.yaml"


@pytest.fixture(scope="module")
def dataset(bundled_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("dataset") / "kronos"
    got = CliRunner().invoke(app, ["data", "export", str(target), "--db", str(bundled_db)])
    assert got.exit_code == 0, got.output
    return target


def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def test_manifest_describes_the_store(dataset, bundled_db, tmp_path):
    manifest = read_manifest(dataset, verify_files=True)
    with Store.open(bundled_db, read_only=True) as store:
        counts = store.row_counts()
        first, last = store.con.execute("SELECT min(ts), max(ts) FROM bars").fetchone()
        again = export_dataset(store, tmp_path / "again")
    assert manifest["schema_version"] == latest_version()
    assert {t: e["rows"] for t, e in manifest["tables"].items()} == counts
    assert manifest["data_range"] == {"first": str(first), "last": str(last)}
    assert manifest["tables"]["bars"]["columns"]["adj_close"] == "DOUBLE"
    assert "newest_available_at" in manifest["tables"]["dim_company_profile"]
    # bars one folder per year, small tables one file
    bars = [f["path"] for f in manifest["tables"]["bars"]["files"]]
    assert len(bars) == int(last.year) - int(first.year) + 1
    assert bars[0] == f"bars/year={first.year}/part-0.parquet"
    assert [f["path"] for f in manifest["tables"]["orders"]["files"]] == ["orders/part-0.parquet"]
    # same store, same bytes: the content hash is reproducible
    assert again["content_hash"] == manifest["content_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp folder left


def test_export_refuses_an_existing_folder_unless_replace(dataset, bundled_db, tmp_path):
    target = _copy(dataset, tmp_path)
    with Store.open(bundled_db, read_only=True) as store:
        with pytest.raises(DatasetError, match="exists; export to a new folder or pass --replace"):
            export_dataset(store, target)
        (target / "stray.txt").write_text("old")
        export_dataset(store, target, replace=True)
    assert not (target / "stray.txt").exists() and (target / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def _order_hash(db: Path, out: Path) -> str:
    args = ["backtest", SPEC, "--db", str(db), "--no-mlflow", "--out", str(out), "--json"]
    got = CliRunner().invoke(app, [*args, "--set", "dates.start=2022-01-03"])
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    return (row[0] if isinstance(row, list) else row)["order_hash"]


def test_backtest_on_the_dataset_gives_the_orders_of_the_file(dataset, bundled_db, tmp_path):
    on_file = _order_hash(bundled_db, tmp_path / "file")
    on_dataset = _order_hash(dataset, tmp_path / "dataset")
    assert on_dataset == on_file


def test_round_trip_gives_equal_tables_and_a_second_ingest_changes_nothing(
    dataset, bundled_db, tmp_path
):
    db = tmp_path / "back.duckdb"
    args = ["data", "ingest", "--source", "parquet", str(dataset), "--db", str(db), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["bars"]["inserted"] > 0
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    for table, r in json.loads(second.stdout).items():
        assert (r["inserted"], r["updated"]) == (0, 0), table
    with Store.open(bundled_db, read_only=True) as a, Store.open(db, read_only=True) as b:
        for table, spec in TABLES.items():
            cols = ", ".join(f'"{c}"' for c in spec.columns)
            query = f'SELECT {cols} FROM "{table}" ORDER BY ALL'
            assert a.con.sql(query).pl().equals(b.con.sql(query).pl()), table


def test_a_dataset_is_read_only(dataset):
    with pytest.raises(DatasetError, match="Parquet dataset, read only"):
        Store.open(dataset)
    got = CliRunner().invoke(app, ["data", "ingest", "-s", "bundled", "--db", str(dataset)])
    assert got.exit_code == 2
    assert "Parquet dataset, read only" in got.output
    assert len(got.output.strip().splitlines()) <= 2  # one message (rich may wrap once)
    with Store.open(dataset, read_only=True) as store:
        assert store.version == latest_version()
        assert store.row_counts()["bars"] == store.dataset["tables"]["bars"]["rows"]


def test_an_altered_manifest_or_file_is_refused_naming_it(dataset, tmp_path):
    copy = _copy(dataset, tmp_path)
    manifest_file = copy / MANIFEST
    original = manifest_file.read_text()

    manifest = json.loads(original)
    manifest["tables"]["bars"]["files"][0]["sha256"] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=rf"{manifest_file}: content_hash .* does not match"):
        read_manifest(copy)

    manifest = json.loads(original)
    manifest["schema_version"] = latest_version() + 1
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError, match=rf"{manifest_file}: schema version"):
        Store.open(copy, read_only=True)

    manifest_file.write_text(original)
    part = copy / manifest["tables"]["dim_company_profile"]["files"][0]["path"]
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    part.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=rf"{part}: SHA-256 differs"):
        read_manifest(copy, verify_files=True)
    got = CliRunner().invoke(
        app, ["data", "ingest", "-s", "parquet", str(copy), "--db", str(tmp_path / "x.duckdb")]
    )
    assert got.exit_code == 2 and "SHA-256 differs" in got.output

    manifest_file.write_text("{not json")
    with pytest.raises(DatasetError, match=rf"{manifest_file}: cannot read it as JSON"):
        read_manifest(copy)


def test_views_serve_the_tables_with_their_types(dataset, bundled_db):
    query = "SELECT * FROM dim_company_profile ORDER BY ALL"
    with Store.open(bundled_db, read_only=True) as a, Store.open(dataset, read_only=True) as b:
        left, right = a.con.sql(query).pl(), b.con.sql(query).pl()
        assert right.schema == left.schema
        assert right.equals(left)
        returns = "SELECT count(*), sum(log_ret) FROM daily_returns"
        (n_a, s_a), (n_b, s_b) = (
            a.con.execute(returns).fetchone(),
            b.con.execute(returns).fetchone(),
        )
    assert n_a == n_b and s_a == pytest.approx(s_b, rel=1e-12)  # same rows: same sum
