"""Paper vs backtest fills: modelled prices, backfill, and the slippage report by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime

import polars as pl
import pytest

from kronos.config import DataSettings
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.execution.brokers.base import OrderRequest
from kronos.execution.brokers.sim import SimBroker
from kronos.execution.fills import FillRules
from kronos.execution.parity import ALL, REPORT_SCHEMA, backfill_model_prices, model_prices
from kronos.execution.parity import parity_report as report
from kronos.execution.reconcile import record_fills

MON, TUE, WED = date(2024, 3, 4), date(2024, 3, 5), date(2024, 3, 6)
OPEN_UTC = {
    MON: datetime(2024, 3, 4, 14, 30, tzinfo=UTC),
    TUE: datetime(2024, 3, 5, 14, 30, tzinfo=UTC),
}
RULES = FillRules(at="next_open", slippage_bps=5.0)
SETTINGS = DataSettings()
TOL = 1e-9


def bars(rows: list[tuple]) -> pl.DataFrame:
    """rows: (symbol, day, open, high, low, close); adj_close = close."""
    return pl.DataFrame(
        [
            {"symbol": s, "ts": d, "open": o, "high": h, "low": lo, "close": c, "adj_close": c,
             "volume": 1e6, "source": "test"}
            for s, d, o, h, lo, c in rows
        ]
    )  # fmt: skip


def add_fill(
    store: Store,
    fill_id: str,
    symbol: str,
    side: str,
    qty: float,
    price: float,
    at: datetime,
    *,
    limit: float | None = None,
    account: str = "acct",
) -> None:
    """An order of ``account``'s paper loop and its fill, as the loop records them."""
    cid = f"c-{fill_id}"
    store.con.execute(
        "INSERT INTO orders (client_order_id, run_id, \"asof\", symbol, side, qty, order_type, "
        "limit_price, intent, status, broker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'rebalance', "
        "'filled', 'test')",
        [cid, f"paper-{account}-{at.date()}", at, symbol, side, qty,
         "market" if limit is None else "limit", limit],
    )  # fmt: skip
    store.con.execute(
        "INSERT INTO fills (fill_id, client_order_id, symbol, side, qty, price, filled_at, broker) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'test')",
        [fill_id, cid, symbol, side, qty, price, at],
    )


def row(frame: pl.DataFrame, symbol: str) -> dict:
    [out] = frame.filter(pl.col("symbol") == symbol).to_dicts()
    return out


def stored(store: Store, fill_id: str) -> tuple:
    return store.con.execute(
        "SELECT model_ref, model_price, model_rule, model_note FROM fills WHERE fill_id = ?",
        [fill_id],
    ).fetchall()[0]


@pytest.fixture
def market(store: Store) -> Store:
    ingest(
        store,
        "bars",
        [bars([("AAA", MON, 100.0, 102.0, 98.0, 101.0), ("BBB", MON, 50.0, 51.0, 49.0, 50.5)])],
        source="test",
        origin="parity test bars",
    )
    return store


def test_buy_at_101_on_an_open_of_100_with_5_bps(market: Store) -> None:
    add_fill(market, "f1", "AAA", "buy", 10, 101.0, OPEN_UTC[MON])
    assert backfill_model_prices(market, RULES, settings=SETTINGS) == 1
    ref, model, rule, note = stored(market, "f1")
    assert ref == 100.0 and abs(model - 100.05) < TOL and note is None
    assert rule == "next_open: open +5 bps"
    r = row(report(market, SETTINGS), "AAA")
    assert (r["fills"], r["priced"]) == (1, 1) and abs(r["notional"] - 1010.0) < TOL
    assert abs(r["realized_bps"] - 100.0) < TOL  # (101 - 100) / 100
    assert abs(r["modelled_bps"] - 5.0) < TOL  # (100.05 - 100) / 100
    assert abs(r["gap_bps"] - 95.0) < TOL  # paper did 95 bps worse than the backtest assumed


def test_sells_are_signed_the_other_way(market: Store) -> None:
    add_fill(market, "worse", "AAA", "sell", 10, 99.0, OPEN_UTC[MON])  # 1% under the open
    add_fill(market, "better", "BBB", "sell", 10, 50.1, OPEN_UTC[MON])  # 20 bps over the open
    backfill_model_prices(market, RULES, settings=SETTINGS)
    assert abs(stored(market, "worse")[1] - 99.95) < TOL  # 100 * (1 - 0.0005)
    out = report(market, SETTINGS)
    a, b = row(out, "AAA"), row(out, "BBB")
    assert abs(a["realized_bps"] - 100.0) < TOL and abs(a["modelled_bps"] - 5.0) < TOL
    assert abs(a["gap_bps"] - 95.0) < TOL
    assert abs(b["realized_bps"] + 20.0) < TOL and abs(b["gap_bps"] + 25.0) < TOL  # did better


def test_a_fill_before_its_bar_is_null_then_backfilled(market: Store) -> None:
    add_fill(market, "early", "AAA", "buy", 10, 104.0, OPEN_UTC[TUE])
    assert backfill_model_prices(market, RULES, settings=SETTINGS) == 0
    ref, model, _, note = stored(market, "early")
    assert ref is None and model is None and note == "no 2024-03-05 bar of AAA in the store yet"
    r = row(report(market, SETTINGS), "AAA")
    assert (r["fills"], r["priced"], r["notional"], r["gap_bps"]) == (1, 0, 0.0, None)
    # the session's bar arrives: the next backfill prices the fill
    ingest(market, "bars", [bars([("AAA", TUE, 103.0, 105.0, 102.0, 104.0)])], source="test",
           origin="parity test bars")  # fmt: skip
    assert backfill_model_prices(market, RULES, settings=SETTINGS) == 1
    ref, model, _, note = stored(market, "early")
    assert ref == 103.0 and abs(model - 103.0 * 1.0005) < TOL and note is None
    assert backfill_model_prices(market, RULES, settings=SETTINGS) == 0  # priced once
    r = row(report(market, SETTINGS), "AAA")
    assert abs(r["realized_bps"] - 1e4 / 103.0) < TOL  # (104 - 103) / 103
    assert abs(r["gap_bps"] - (1e4 / 103.0 - 5.0)) < 1e-9


def test_overall_row_weights_by_notional(market: Store) -> None:
    add_fill(market, "a", "AAA", "buy", 10, 101.0, OPEN_UTC[MON])  # $1,010: gap 95 bps
    add_fill(market, "b", "BBB", "buy", 100, 50.25, OPEN_UTC[MON])  # $5,025: 50 - 5 = 45 bps
    backfill_model_prices(market, RULES, settings=SETTINGS)
    out = report(market, SETTINGS)
    assert out.schema == pl.Schema(REPORT_SCHEMA)
    assert out["symbol"].to_list() == ["AAA", "BBB", ALL]
    b, total = row(out, "BBB"), row(out, ALL)
    assert abs(b["realized_bps"] - 50.0) < TOL and abs(b["gap_bps"] - 45.0) < TOL
    assert (total["fills"], total["priced"]) == (2, 2)
    assert abs(total["notional"] - 6035.0) < TOL
    assert abs(total["gap_bps"] - (1010 * 95 + 5025 * 45) / 6035) < TOL  # 53.37, not 70
    assert abs(total["realized_bps"] - (1010 * 100 + 5025 * 50) / 6035) < TOL
    assert abs(total["modelled_bps"] - 5.0) < TOL


def test_limits_fill_in_the_backtest_only_inside_the_bar(market: Store) -> None:
    add_fill(market, "far", "AAA", "buy", 10, 97.0, OPEN_UTC[MON], limit=97.0)  # low is 98
    add_fill(market, "touch", "BBB", "buy", 10, 49.5, OPEN_UTC[MON], limit=49.5)  # low is 49
    add_fill(market, "inside", "AAA", "sell", 10, 100.0, OPEN_UTC[MON], limit=99.0)
    assert backfill_model_prices(market, RULES, settings=SETTINGS) == 2
    ref, model, _, note = stored(market, "far")
    assert ref == 100.0 and model is None
    assert note == "the backtest would not fill this buy limit 97: open 100, low 98"
    assert abs(stored(market, "touch")[1] - 49.5 * 1.0005) < TOL  # at the limit, plus slippage
    assert abs(stored(market, "inside")[1] - 100.0 * 0.9995) < TOL  # at the open
    assert backfill_model_prices(market, RULES, settings=SETTINGS) == 0
    assert stored(market, "far")[3] is not None  # retried, still not fillable
    # at the close a limit is never "touched": only the reference price counts
    at_close = model_prices(
        pl.DataFrame(
            {"symbol": ["BBB"], "side": ["buy"], "qty": [10.0], "price": [49.5],
             "filled_at": [OPEN_UTC[MON]], "limit_price": [49.5]}
        ),
        market.con.sql("SELECT * FROM bars").pl(),
        FillRules(at="close"),
        tz=SETTINGS.market_tz,
    )  # fmt: skip
    assert at_close["model_price"].to_list() == [None]
    assert (
        at_close["model_note"][0]
        == "the backtest would not fill this buy limit 49.5: close 50.5, low 49"
    )


def test_close_only_bars_and_rules_at_the_close(store: Store) -> None:
    ingest(store, "bars", [bars([("AAA", MON, None, None, None, 100.0)])], source="test",
           origin="closes only")  # fmt: skip
    fills = pl.DataFrame(
        {"symbol": ["AAA"], "side": ["sell"], "qty": [5.0], "price": [99.0],
         "filled_at": [datetime(2024, 3, 4, 21, 0, tzinfo=UTC)]}
    )  # fmt: skip
    out = model_prices(
        fills, store.con.sql("SELECT * FROM bars").pl(), RULES, tz="America/New_York"
    )
    assert out["model_rule"].to_list() == ["next_open: close (no open) +5 bps"]
    assert out["session"].to_list() == [MON] and abs(out["model_price"][0] - 99.95) < TOL
    # a fill late in the evening (UTC next day) still belongs to the New York session
    late = fills.with_columns(filled_at=pl.lit(datetime(2024, 3, 5, 1, 0, tzinfo=UTC)))
    bars_ = store.con.sql("SELECT * FROM bars").pl()
    assert model_prices(late, bars_, RULES, tz="America/New_York")["session"].to_list() == [MON]
    with pytest.raises(ValueError, match="time-zone-aware"):
        model_prices(fills.with_columns(pl.col("filled_at").dt.replace_time_zone(None)), bars_,
                     RULES, tz="UTC")  # fmt: skip


def test_report_by_account_and_priced_on_the_fly_without_writing(market: Store) -> None:
    add_fill(market, "mine", "AAA", "buy", 10, 101.0, OPEN_UTC[MON])
    add_fill(market, "other", "AAA", "buy", 10, 150.0, OPEN_UTC[MON], account="other")
    r = row(report(market, SETTINGS, account="acct"), ALL)
    assert (r["fills"], r["priced"], r["gap_bps"]) == (1, 0, None)  # nothing stored yet
    r = row(report(market, SETTINGS, account="acct", rules=RULES), ALL)
    assert r["priced"] == 1 and abs(r["gap_bps"] - 95.0) < TOL
    assert stored(market, "mine")[1] is None  # the report wrote nothing
    assert row(report(market, SETTINGS), ALL)["fills"] == 2
    # each account's fills are priced by its own rule
    assert backfill_model_prices(market, RULES, settings=SETTINGS, account="acct") == 1
    assert stored(market, "other")[1] is None
    assert backfill_model_prices(market, FillRules(), settings=SETTINGS, account="other") == 1
    assert stored(market, "other")[1:3] == (100.0, "next_open: open +0 bps")


def test_the_simulated_broker_matches_the_backtest_rule(market: Store) -> None:
    """Parity of the sim broker itself: its fills are the backtest's prices (gap 0)."""
    ingest(market, "bars", [bars([("AAA", TUE, 103.0, 105.0, 102.0, 104.0),
                                  ("BBB", TUE, 51.0, 52.0, 49.0, 51.5)])],
           source="test", origin="parity test bars")  # fmt: skip
    rules = FillRules(at="next_open", slippage_bps=20.0, commission_bps=10.0)
    sim = SimBroker(market, "acct", rules, data_settings=DataSettings())
    assert sim.start(MON, 10_000.0)
    orders = [OrderRequest("c-a", "AAA", "buy", 10), OrderRequest("c-b", "BBB", "buy", 3, "limit",
              limit_price=50.0)]  # fmt: skip
    for o in orders:
        sim.submit(o)
        market.con.execute(
            "INSERT INTO orders (client_order_id, run_id, \"asof\", symbol, side, qty, "
            "order_type, limit_price, intent, status, broker) VALUES (?, 'paper-acct-x', ?, ?, "
            "?, ?, ?, ?, 'rebalance', 'new', 'sim')",
            [o.client_order_id, OPEN_UTC[MON], o.symbol, o.side, o.qty, o.order_type,
             o.limit_price],
        )  # fmt: skip
    sim.advance()
    fills = sim.advance()
    assert record_fills(market, fills, "sim") == 2
    assert backfill_model_prices(market, rules, settings=SETTINGS) == 2
    out = report(market, SETTINGS, account="acct")
    a, b = row(out, "AAA"), row(out, "BBB")
    assert abs(a["realized_bps"] - 20.0) < TOL and abs(a["gap_bps"]) < TOL
    # BBB opened at 51 above the limit 50; its low touched it: filled at the limit + 20 bps
    assert abs(b["realized_bps"] - 1e4 * (50.0 * 1.002 - 51.0) / 51.0) < TOL
    assert abs(b["gap_bps"]) < TOL


def test_paper_status_prints_the_report(tmp_path) -> None:
    path = tmp_path / "k.duckdb"
    with Store.open(path) as s:
        ingest(s, "bars", [bars([("AAA", MON, 100.0, 102.0, 98.0, 101.0)])], source="test",
               origin="parity test bars")  # fmt: skip
        add_fill(s, "f1", "AAA", "buy", 10, 101.0, OPEN_UTC[MON])
        backfill_model_prices(s, RULES, settings=SETTINGS)
        s.con.execute(
            "INSERT INTO paper_cycles (account, cycle, broker, started_at, status) "
            "VALUES ('acct', 1, 'sim', ?, 'done')",
            [OPEN_UTC[MON]],
        )
    env = {**os.environ, "KRONOS_DB": str(path)}
    run = [sys.executable, "-m", "kronos", "paper", "status", "--account", "acct"]
    done = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    total = json.loads(done.stdout)["parity"][-1]
    assert total["symbol"] == ALL and abs(total["gap_bps"] - 95.0) < TOL
    text = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "paper vs backtest fill prices" in text.stdout
    assert "+100.0" in text.stdout and "+95.0" in text.stdout
