"""The walk-forward engine on a small synthetic store with reference data.

Checks: vectorbt replays the harness's orders to the same NAV, cash and
positions (relative difference under 1e-9); fills happen at the next session's
open and never on a missing bar; two runs give the same orders; altering every
price after a cut date leaves every decision and fill up to the cut unchanged;
the Ray executor gives the local executor's results.
"""

from __future__ import annotations

import random
import shutil
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from kronos.backtest.engine import _orders_frame, rebalance_days
from kronos.backtest.run import run_backtest
from kronos.backtest.spec import parse_spec
from kronos.data import loaders
from kronos.data.store import Store
from kronos.errors import LookAhead

RAW = {
    "name": "synthetic_ewma",
    "universe": {"source": "synthetic"},
    "dates": {"start": "2002-01-02", "end": "2003-06-30"},
    "forecaster": {"name": "ewma"},
    "splits": {"train_sessions": 250, "retrain": "quarterly"},
    "rebalance": {"every": "weekly", "weekday": 2},
    "costs": {"commission_bps": 2.0, "slippage_bps": 5.0, "volume_share": 0.05},
    "decision": {
        "strategy": {"strat_reco_topk": 6, "strat_min_market_cap": 0, "strat_min_dollar_vol": 0},
        "policy": {"policy_min_abs_dev": 0, "policy_min_sigma_z": 0},
    },
}


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bt") / "k.duckdb"
    with Store.open(path) as s:
        loaders.load_synthetic(s, n_symbols=16, years=3.5, seed=11)
        # a hole in one symbol's bars: it must never fill there
        s.con.execute(
            "DELETE FROM bars WHERE symbol = 'SYN0003' AND ts BETWEEN '2002-03-01' AND '2002-03-20'"
        )
    return path


def _run(path: Path, **changes):
    raw = {**RAW, **changes}
    with Store.open(path, read_only=True) as store:
        return run_backtest(parse_spec(raw), store)


@pytest.fixture(scope="module")
def result(synth_db):
    return _run(synth_db)


def test_harness_agrees_with_vectorbt(result):
    assert result.fills.height > 50
    assert result.parity, "parity figures missing"
    assert max(result.parity.values()) < 1e-9, result.parity


def test_fills_follow_decisions_at_the_next_open(result, synth_db):
    fills = result.fills
    assert (fills["ts"] > fills["asof"]).all()
    with duckdb.connect(str(synth_db), read_only=True) as con:
        bars = pl.from_arrow(
            con.sql("SELECT symbol, ts, open, low, high, adj_close / close AS f FROM bars").arrow()
        )
    limits = result.orders.select("client_order_id", "limit_price")
    joined = fills.join(bars, on=["symbol", "ts"], how="left").join(limits, on="client_order_id")
    assert joined["open"].null_count() == 0  # every fill had a bar
    ref = joined["open"] * joined["f"]
    at_open = ((joined["ref_price"] - ref).abs() / ref) < 1e-12
    # a limit order that the open did not satisfy fills at its limit, inside the bar's range
    at_limit = (joined["ref_price"] == joined["limit_price"]) & (
        joined["limit_price"].is_between(joined["low"] * joined["f"], joined["high"] * joined["f"])
    )
    assert (at_open | at_limit).all()
    assert at_open.sum() > 0 and at_limit.sum() > 0
    buys = joined.filter((pl.col("side") == "buy") & pl.col("limit_price").is_not_null())
    assert (buys["ref_price"] <= buys["limit_price"] + 1e-9).all()
    hole = fills.filter(
        (pl.col("symbol") == "SYN0003")
        & pl.col("ts").is_between(date(2002, 3, 1), date(2002, 3, 20))
    )
    assert hole.is_empty()


def test_book_and_statistics(result):
    eq = result.equity
    assert eq["nav"].min() > 0
    assert (eq["cash"] >= -1e-6).all()
    assert (result.positions["qty"] > 0).all()  # long only
    for name in ("total_return", "sharpe", "max_drawdown", "turnover", "exposure", "hit_rate"):
        assert name in result.stats and f"benchmark_{name}" in result.stats
    assert result.stats["max_drawdown"] <= 0
    assert set(result.fold_metrics["stage"]) == {"raw", "calibrated"}
    assert result.fold_metrics["n"].min() > 0
    assert not result.factor_contrib.is_empty()
    assert set(result.orders["status"]) <= {"filled", "partial", "unfilled"}


def test_two_runs_give_identical_orders(result, synth_db):
    again = _run(synth_db)
    assert again.order_hash == result.order_hash
    assert again.orders.equals(result.orders)
    assert again.equity.equals(result.equity)


@pytest.mark.parametrize("seed", [1, 2])
def test_no_look_ahead(result, synth_db, tmp_path, seed):
    """Alter every price after a random cut: nothing decided or filled up to it changes."""
    rng = random.Random(seed)
    cut = date(2002, 2, 1) + timedelta(days=rng.randrange(0, 420))
    altered = tmp_path / "altered.duckdb"
    shutil.copy(synth_db, altered)
    with duckdb.connect(str(altered)) as con:
        con.execute(
            "UPDATE bars SET open = open * (1 + 0.3 * sin(hash(symbol, ts) % 1000)), "
            "close = close * 1.7, adj_close = adj_close * (1.2 + 0.5 * cos(hash(ts) % 1000)), "
            "high = high * 1.7, low = low * 0.5, volume = volume * 3 WHERE ts > ?",
            [cut],
        )
    other = _run(altered)

    def upto(frame: pl.DataFrame, col: str) -> pl.DataFrame:
        return frame.filter(pl.col(col) <= cut).sort(col, "client_order_id")

    decided = ["asof", "symbol", "side", "qty", "limit_price", "client_order_id"]
    assert (
        upto(other.orders, "asof")
        .select(decided)
        .equals(upto(result.orders, "asof").select(decided))
    )
    # an order's outcome is known once its fill session (the next one) is at or before the cut
    last = result.equity.filter(pl.col("ts") <= cut)["ts"].max()
    settled = pl.col("asof") < last
    assert other.orders.filter(settled).equals(result.orders.filter(settled))
    assert upto(other.fills, "ts").equals(upto(result.fills, "ts"))
    before = result.equity.filter(pl.col("ts") <= cut)
    assert (
        other.equity.filter(pl.col("ts") <= cut)
        .select("nav", "cash")
        .equals(before.select("nav", "cash"))
    )
    # and the alteration does reach later decisions (the test would catch a leak)
    assert not other.orders.filter(pl.col("asof") > cut).equals(
        result.orders.filter(pl.col("asof") > cut)
    )


def test_rebalance_days_weekly_wednesday_or_next():
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(21)]
    sessions = [d for d in days if d.weekday() < 5 and d != date(2024, 1, 10)]
    picked = sorted(rebalance_days(sessions, "weekly", 2))
    # Wednesday 3rd, Thursday 11th (the 10th is a holiday), Wednesday 17th
    assert picked == [date(2024, 1, 3), date(2024, 1, 11), date(2024, 1, 17)]
    assert sorted(rebalance_days(sessions, "monthly", 2)) == [date(2024, 1, 1)]


def test_ray_executor_gives_the_local_results(synth_db, result):
    """Folds as Ray tasks on a local Ray (no address); a cluster: tests/test_ray_cluster.py."""
    ray = pytest.importorskip("ray")
    from kronos.backtest.run import run_on_db

    try:
        folds_on_ray = run_on_db(parse_spec(RAW), synth_db, executor="ray")
    finally:
        ray.shutdown()
    assert folds_on_ray.order_hash == result.order_hash
    assert folds_on_ray.equity.equals(result.equity)


def test_cli_backtest_writes_report_frames_and_mlflow_run(
    synth_db, tmp_path, mlflow_settings, monkeypatch
):
    import json

    import yaml
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from kronos.cli import app

    spec = tmp_path / "synthetic_ewma.yaml"
    spec.write_text(yaml.safe_dump(RAW))
    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["backtest", str(spec), "--db", str(synth_db), "--out", str(tmp_path / "out")]
    got = CliRunner().invoke(app, [*args, "--set", "costs.commission_bps=3", "--json"])
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    report = Path(row["report"])
    assert report.name == "report.html" and report.exists()
    assert (report.parent / "equity.parquet").exists() and (report.parent / "equity.png").exists()
    client = MlflowClient(mlflow_settings.tracking_uri())
    run = client.get_run(row["mlflow_run_id"])
    assert run.data.tags["backtest_spec_hash"] == row["spec_hash"]
    assert run.data.tags["order_hash"] == row["order_hash"]
    assert run.data.tags["data_start"] == row["start"] and "git_commit" in run.data.tags
    assert run.data.params["costs.commission_bps"] == "3.0"
    # the settings the run used (the spec's decision sections, the store it read) and their hash
    assert run.data.tags["settings_hash"] == row["settings_hash"]
    assert run.data.params["settings.data.db"] == str(synth_db)
    assert run.data.params["settings.tracking.mlruns_dir"] == str(mlflow_settings.mlruns_dir)
    assert abs(run.data.metrics["sharpe"] - row["stats"]["sharpe"]) < 1e-12
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/report.html" in names
    assert "spec.json" in {a.path for a in client.list_artifacts(run.info.run_id)}

    bad = CliRunner().invoke(app, [*args, "--set", "costs.comission_bps=3"])
    assert bad.exit_code == 2
    assert "did you mean 'commission_bps'" in bad.output


def test_a_saved_model_is_refused_when_it_saw_the_test_window(synth_db, tmp_path):
    import json

    from kronos.backtest.forecasts import load_for_fold
    from kronos.backtest.splits import Fold
    from kronos.models.baselines import EwmaNormal

    directory = tmp_path / "ewma"
    directory.mkdir()
    EwmaNormal().fit(
        pl.DataFrame(
            {
                "symbol": ["A"] * 40,
                "ts": [date(2001, 1, 1) + timedelta(days=i) for i in range(40)],
                "y": [0.01, -0.01] * 20,
            }
        )
    ).save(directory)
    (directory / "METRICS.json").write_text(
        json.dumps({"data_range": {"train_end": "2001-06-29", "valid_end": "2001-12-31"}})
    )
    fold = Fold(0, date(2001, 1, 2), date(2001, 12, 21), date(2002, 1, 2), date(2002, 3, 29), 5)
    with pytest.raises(LookAhead, match=r"look-ahead: the artifact .* saw data up to 2001-12-31"):
        load_for_fold("ewma", directory, fold)
    ok = Fold(0, date(2001, 1, 2), date(2002, 1, 4), date(2002, 1, 14), date(2002, 3, 29), 5)
    assert isinstance(load_for_fold("ewma", directory, ok), EwmaNormal)
    # and through a spec: the first fold trains up to late December 2001
    with pytest.raises(LookAhead, match="look-ahead"):
        _run(synth_db, forecaster={"name": "ewma", "artifact": str(directory)})


def test_fail_safe_replay_trips_what_the_controller_trips_on_full_windows():
    """The screen and the slimmed frames change nothing: same breakers as judging every
    session with every symbol's whole window (no missing bars here)."""
    import numpy as np

    from kronos.backtest.monitor import Quantiles, _forecasts, _realized, failsafe
    from kronos.config import DataSettings, RiskSettings
    from kronos.risk import FailSafeController

    rng = np.random.default_rng(3)
    n_days, n = 90, 24
    sessions = [date(2021, 1, 4) + timedelta(days=i) for i in range(200)]
    sessions = [d for d in sessions if d.weekday() < 5][:n_days]
    symbols = [f"S{j:02d}" for j in range(n)]
    sectors = {s: ("Energy", "Utilities", "Financials")[j % 3] for j, s in enumerate(symbols)}
    width = np.where(np.arange(n) % 4 == 0, 0.006, 0.02)  # a quarter far too narrow
    p50 = rng.normal(0, 0.001, (n_days, n))
    q = Quantiles(p50 - 1.645 * width, p50, p50 + 1.645 * width)
    y = rng.normal(0, 0.012, (n_days, n))
    y[40] = -0.09  # a crash day: everyone breaches
    y[60, :9] = 0.08  # one sector and more
    settings, data = RiskSettings(), DataSettings()
    got = failsafe(None, sessions, symbols, sectors, q, y, 1, settings, data, with_news=False)
    ctl = FailSafeController(settings, data)
    sector_frame = pl.DataFrame({"symbol": symbols, "sector": [sectors[s] for s in symbols]})
    everything = np.arange(n)
    want = []
    for i in range(1, n_days):
        lo = max(0, i - 2 * settings.failsafe_coverage_window - 2)
        fc = _forecasts(sessions[lo:i], symbols, q, lo, i, everything)
        real = _realized(sessions[lo : i + 1], symbols, y[lo : i + 1], everything)
        want += ctl.evaluate(sessions[i], fc, real, sector_frame)
    assert [b.breaker_id for b in got] == [b.breaker_id for b in want]
    scopes = {b.scope for b in got}
    assert {"global", "sector", "symbol"} <= scopes
    assert any("coverage drift" in b.reason for b in got)


def test_order_records_keep_a_late_limit_price():
    """More than a hundred market orders before the first limit (the synthetic bench's
    10-year run): the limit price column is typed, not inferred from the first rows."""
    market = [
        (date(2020, 1, 2), "A", "buy", 1.0, None, f"m{k}", 1.0, None, 1.0) for k in range(150)
    ]
    late = (date(2020, 1, 3), "B", "sell", -2.0, 169.78, "l", 0.0, "limit not reached", 2.0)
    orders = _orders_frame([*market, late])
    assert orders["limit_price"].to_list()[-2:] == [None, 169.78]
    assert orders.row(-1, named=True)["status"] == "unfilled"
