"""Plain strategies in a backtest spec (``strategy: weights | signals``), issue 16 point 4.

Checks, on a small synthetic store with opens (fills at the next open): every
order of a weights run is ``floor(weight x NAV / price) - held`` shares at the
decision close (exact: whole shares); a weights file and a weights function
with the same books give the same orders; signals enter and exit at the next
session's open; vectorbt replays the fills (relative difference < 1e-9); bad
files are refused naming file, row, column and symbol; ``kronos backtest`` runs
a plain strategy from the example package and records it; the decision chain's
spec hash is unchanged.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest

from kronos.backtest.engine import rebalance_days
from kronos.backtest.plain import read_file
from kronos.backtest.run import run_backtest
from kronos.backtest.spec import SpecError, load_spec, parse_spec, spec_hash
from kronos.data import loaders
from kronos.data.store import Store
from kronos.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ["SYN0001", "SYN0002", "SYN0003", "SYN0004", "SYN0005", "SYN0006"]
START, END = date(2000, 6, 7), date(2000, 8, 31)  # START is a Wednesday: a rebalance
BOOKS = [  # (known from the close of, target book)
    (date(2000, 5, 15), {"SYN0001": 0.3, "SYN0002": 0.2}),  # before the window
    (date(2000, 7, 5), {"SYN0001": 0.0, "SYN0002": 0.5, "SYN0003": 0.25}),  # 0: sold
]
STRATEGY_MODULE = f"""
import polars as pl
import datetime

BOOKS = {BOOKS!r}

def fixed(store, asof, symbols):
    book = {{}}
    for day, b in BOOKS:
        if day <= asof:
            book = b
    return pl.DataFrame({{"symbol": list(book), "value": list(book.values())}})
"""
PARITY_TOLERANCE = 1e-9  # vectorbt vs the engine, max relative difference (float rounding)
# spec hash of backtests/sp500_ewma_weekly.yaml measured before the strategy section existed
EWMA_SPEC_HASH = "f5ef70e41542593e"


def raw_spec(strategy: dict, **changes) -> dict:
    return {
        "name": "plain_test",
        "universe": {"source": "synthetic", "symbols": SYMBOLS},
        "dates": {"start": START.isoformat(), "end": END.isoformat()},
        "rebalance": {"every": "weekly", "weekday": 2},
        "costs": {"commission_bps": 2.0, "slippage_bps": 5.0},
        "strategy": strategy,
        **changes,
    }


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "k.duckdb"
    with Store.open(path) as s:
        loaders.load_synthetic(s, n_symbols=6, years=1.5, seed=5, reference=False)
    return path


@pytest.fixture(scope="module")
def bars(synth_db: Path) -> pl.DataFrame:
    with duckdb.connect(str(synth_db), read_only=True) as con:
        return pl.from_arrow(con.sql("SELECT symbol, ts, open, close FROM bars").arrow())


@pytest.fixture(scope="module")
def strategy_dir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("strategies")
    (folder / "plain_fixed.py").write_text(STRATEGY_MODULE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("plain_fixed", None)


def run(db: Path, raw: dict, spec_dir: Path | None = None):
    with Store.open(db, read_only=True) as store:
        return run_backtest(parse_spec(raw, spec_dir=spec_dir), store)


@pytest.fixture(scope="module")
def weights_fn(synth_db, strategy_dir):
    return run(synth_db, raw_spec({"kind": "weights", "fn": "plain_fixed:fixed"}))


def test_weights_orders_are_the_hand_arithmetic(weights_fn, bars):
    r = weights_fn
    assert "no forecaster is used" in r.notes[-1] and r.fold_metrics.is_empty()
    assert "price basis: raw" in r.notes[0] or "price basis: adjusted" in r.notes[0]
    close = {(s, t): c for s, t, c in bars.select("symbol", "ts", "close").iter_rows()}
    nav = dict(r.equity.select("ts", "nav").iter_rows())
    assert (
        r.orders["asof"].unique().sort().to_list()
        == [d for d in sorted(rebalance_days(r.equity["ts"].to_list(), "weekly", 2)) if d < END][
            : r.orders["asof"].n_unique()
        ]
    )
    checked = 0
    for (asof,), orders in r.orders.group_by("asof"):
        book = [b for day, b in BOOKS if day <= asof][-1]
        held = dict(r.positions.filter(pl.col("ts") == asof).select("symbol", "qty").iter_rows())
        want = {}
        for s in sorted(set(book) | set(held)):
            target = math.floor(book.get(s, 0.0) * nav[asof] / close[(s, asof)])
            if target != held.get(s, 0.0):
                want[s] = target - held.get(s, 0.0)
        got = {
            s: q if side == "buy" else -q
            for s, side, q in orders.select("symbol", "side", "qty").iter_rows()
        }
        assert got == want, asof
        checked += len(got)
    assert checked > 20  # both books, and the weekly resizing
    assert (r.orders["status"] == "filled").all()
    assert max(r.parity.values()) < PARITY_TOLERANCE, r.parity


def test_weights_file_gives_the_fn_orders(weights_fn, synth_db, tmp_path):
    # the fn's books on its rebalance sessions; the first book dated before the window
    sessions = weights_fn.equity["ts"].to_list()
    rows = [(BOOKS[0][0], s, w) for s, w in BOOKS[0][1].items()]
    for day in sorted(rebalance_days(sessions, "weekly", 2)):
        if day > START:
            book = [b for d, b in BOOKS if d <= day][-1]
            rows += [(day, s, w) for s, w in book.items()]
    frame = pl.DataFrame(
        rows, schema={"ts": pl.Date, "symbol": pl.String, "w": pl.Float64}, orient="row"
    )
    frame.write_parquet(tmp_path / "books.parquet")
    # a relative file is found in the spec's folder
    r = run(
        synth_db, raw_spec({"kind": "weights", "file": "books.parquet", "column": "w"}), tmp_path
    )
    keys = ["asof", "symbol", "side", "qty"]
    assert r.orders.select(keys).equals(weights_fn.orders.select(keys))
    assert r.order_hash == weights_fn.order_hash
    assert "sha256" in r.notes[-1]


def test_signals_enter_and_exit_at_the_next_open(synth_db, bars, tmp_path):
    d1, d2, d3 = date(2000, 6, 12), date(2000, 6, 20), date(2000, 7, 10)
    rows = [
        (d1, "SYN0001", 1.0),  # entry
        (d1, "SYN0002", -1.0),  # exit while flat: nothing
        (d2, "SYN0001", 1.0),  # entry while held: nothing (no resizing)
        (d3, "SYN0001", -1.0),  # exit: sells everything
        (d3, "SYN0002", None),  # null: nothing
    ]
    path = tmp_path / "signals.parquet"
    pl.DataFrame(
        rows, schema={"ts": pl.Date, "symbol": pl.String, "signal": pl.Float64}, orient="row"
    ).write_parquet(path)
    r = run(synth_db, raw_spec({"kind": "signals", "file": str(path), "size": 0.1}))
    sessions = r.equity["ts"].to_list()
    nxt = {d: sessions[sessions.index(d) + 1] for d in (d1, d3)}
    bar = {(s, t): (o, c) for s, t, o, c in bars.iter_rows()}
    f = r.fills.sort("ts")
    assert f.select("asof", "ts", "symbol", "side").rows() == [
        (d1, nxt[d1], "SYN0001", "buy"),
        (d3, nxt[d3], "SYN0001", "sell"),
    ]
    shares = math.floor(0.1 * 1_000_000 / bar[("SYN0001", d1)][1])  # NAV = cash at d1
    assert f["qty"].to_list() == [shares, shares]
    opens = [bar[("SYN0001", nxt[d1])][0], bar[("SYN0001", nxt[d3])][0]]
    assert f["ref_price"].to_list() == opens
    assert f["price"].to_list() == pytest.approx([opens[0] * 1.0005, opens[1] * 0.9995], rel=1e-12)
    assert max(r.parity.values()) < PARITY_TOLERANCE, r.parity


def test_entry_point_signals_run_with_vectorbt_parity(synth_db, example_plugin):
    r = run(synth_db, raw_spec({"kind": "signals", "fn": "sma_cross"}))  # entry-point name
    assert "kronos_example.strategies:sma_cross" in r.notes[-1]
    assert r.fills.height > 5 and (r.fills["ts"] > r.fills["asof"]).all()
    assert max(r.parity.values()) < PARITY_TOLERANCE, r.parity


BAD = [
    ({"symbol": ["NOPE"]}, "row 2, column 'weight', symbol 'NOPE': unknown symbol"),
    ({"symbol": ["SYN0001"]}, "row 2, column 'weight', symbol 'SYN0001': duplicate (ts, symbol)"),
    ({"weight": [float("nan")]}, "row 2, column 'weight', symbol 'SYN0002': NaN value"),
    ({"weight": [-0.1]}, "row 2, column 'weight', symbol 'SYN0002': negative weight -0.1"),
    ({"weight": [0.8]}, "column 'weight': weights on 2000-06-07 sum to 1.3 > 1"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_weights_files_are_refused(tmp_path, change, message):
    frame = pl.DataFrame(
        {"ts": [START, START], "symbol": ["SYN0001", "SYN0002"], "weight": [0.5, 0.2]}
    )
    frame = _set_row(frame, 1, change)
    frame.write_parquet(tmp_path / "w.parquet")
    spec = parse_spec(raw_spec({"kind": "weights", "file": "w.parquet"}), spec_dir=tmp_path)
    with pytest.raises(InputError) as err:
        read_file(spec.strategy, SYMBOLS)
    assert str(tmp_path / "w.parquet") in str(err.value) and message in str(err.value)


def _set_row(frame: pl.DataFrame, i: int, change: dict) -> pl.DataFrame:
    rows = frame.rows(named=True)
    rows[i].update({k: v[0] for k, v in change.items()})
    return pl.DataFrame(rows, schema=frame.schema)


def test_bad_signals_and_columns_are_refused(tmp_path):
    path = tmp_path / "s.parquet"
    pl.DataFrame({"ts": [START], "symbol": ["SYN0003"], "signal": [2.0]}).write_parquet(path)
    spec = parse_spec(raw_spec({"kind": "signals", "file": str(path)}))
    with pytest.raises(
        InputError,
        match=r"s\.parquet: row 1, column 'signal', symbol 'SYN0003': signal 2.0 is not -1, 0 or 1",
    ):
        read_file(spec.strategy, SYMBOLS)
    spec = parse_spec(raw_spec({"kind": "signals", "file": str(path), "column": "entry"}))
    with pytest.raises(InputError, match=r"s\.parquet: no column 'entry'"):
        read_file(spec.strategy, SYMBOLS)


def test_spec_section_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for strategy, problem in [
        ({"kind": "weights", "fn": "a:b", "file": "x.parquet"}, "takes fn or file, not both"),
        ({"kind": "signals"}, "needs fn ('pkg.mod:func') or file"),
        ("weights", "needs fn"),
        ({"kind": "decision", "size": 0.1}, "size applies to kind signals or weights"),
        ({"kind": "weights", "fn": "a:b", "size": 0.1}, "size applies to kind signals only"),
        ({"kidn": "weights"}, "unknown key 'strategy.kidn' (did you mean 'kind'?)"),
    ]:
        with pytest.raises(SpecError) as err:
            parse_spec(raw_spec(strategy))
        assert problem in str(err.value), (strategy, str(err.value))
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    with pytest.raises(SpecError) as err:
        parse_spec(raw_spec({"kind": "weights", "file": "w.parquet"}), spec_dir=spec_dir)
    assert (
        f"no such file in {spec_dir} (the spec file's folder) or {tmp_path} (the working directory)"
        in str(err.value)
    )
    assert parse_spec(raw_spec("decision")).strategy.kind == "decision"


def test_decision_chain_spec_hash_unchanged():
    spec = load_spec(ROOT / "backtests" / "sp500_ewma_weekly.yaml")
    assert not spec.strategy.plain
    assert spec_hash(spec) == EWMA_SPEC_HASH
    explicit = load_spec(ROOT / "backtests" / "sp500_ewma_weekly.yaml", ["strategy.kind=decision"])
    assert spec_hash(explicit) == EWMA_SPEC_HASH
    baseline = load_spec(ROOT / "backtests" / "sp500_equal_weight_weekly.yaml")
    assert baseline.strategy.fn == "kronos_example.strategies:equal_weight"
    assert spec_hash(baseline) != EWMA_SPEC_HASH


def test_cli_runs_a_plain_strategy_from_the_example_package(bundled_db, example_plugin, tmp_path):
    env = {
        **os.environ,
        "KRONOS_DB": str(bundled_db),
        "PYTHONPATH": os.pathsep.join([str(example_plugin), os.environ.get("PYTHONPATH", "")]),
    }
    sets = [
        "strategy.kind=weights",
        "strategy.fn=kronos_example.strategies:equal_weight",
        "dates.start=2022-07-01",
    ]
    # the MLflow record is checked in process below (a subprocess pays MLflow's start-up)
    proc = subprocess.run(
        [sys.executable, "-m", "kronos", "backtest", "backtests/sp500_ewma_weekly.yaml", "--json",
         "--no-mlflow", "--out", str(tmp_path), *(a for s in sets for a in ("--set", s))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    report = Path(row["report"])
    assert report.exists() and "no forecaster is used" in report.read_text()
    assert row["stats"]["exposure"] > 0.5 and row["spec_hash"] != EWMA_SPEC_HASH
    assert max(row["parity"].values()) < PARITY_TOLERANCE


def test_mlflow_record_names_the_strategy(weights_fn, run_settings, tmp_path):
    from mlflow.tracking import MlflowClient

    from kronos.backtest.report import write_report
    from kronos.runner.backtest_record import EXPERIMENT, log_backtest
    from kronos.tracking import mlflow_run

    spec = parse_spec(raw_spec({"kind": "weights", "fn": "plain_fixed:fixed"}))
    write_report(weights_fn, tmp_path)
    with mlflow_run(EXPERIMENT, spec.name, settings=run_settings) as recorder:
        log_backtest(recorder, spec, weights_fn, tmp_path)
    run = MlflowClient(run_settings.tracking.tracking_uri()).get_run(recorder.run_id)
    tags, params = run.data.tags, run.data.params
    assert (tags["strategy"], tags["forecaster"]) == ("weights", "none")
    assert (
        tags["strategy_source"] == "plain_fixed:fixed"
        and tags["order_hash"] == weights_fn.order_hash
    )
    assert params["strategy.kind"] == "weights" and params["strategy.fn"] == "plain_fixed:fixed"
    assert run.data.metrics["parity_nav"] < PARITY_TOLERANCE
