"""The store's and the replay's snapshot sources give the same snapshot, frame for frame.

Reference: :class:`kronos.decision.snapshot.StoreSource` (the paper loop's);
the replay (the backtest's) must equal it exactly (strategist inputs to
1e-12 relative: see the comment in ``_compare``) on the
bundled data (adjusted closes only) and on a store with raw and adjusted
closes, a 2:1 split, dividends and a name whose bars stop.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos.backtest.market import load_market, resolve_universe
from kronos.backtest.monitor import Quantiles
from kronos.backtest.replay import ReplaySource
from kronos.config import DataSettings, DecisionSettings, RiskSettings
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.decision.snapshot import StoreSource
from kronos.risk import Breaker, session_close, trip

MODEL = "replay"


def _forecast_rows(market, days, q: Quantiles) -> pl.DataFrame:
    rows = []
    for d in days:
        i = market.index_of(d)
        for j, s in enumerate(market.symbols):
            if np.isnan(q.p50[i, j]):
                continue
            rows.append((s, d, 1, d + timedelta(days=1), q.p05[i, j], q.p50[i, j], q.p95[i, j]))
    frame = pl.DataFrame(
        rows, schema=["symbol", "asof", "step", "target_ts", "p05", "p50", "p95"], orient="row"
    )
    return frame.with_columns(model=pl.lit(MODEL), version=pl.lit("v1"), calibrated=pl.lit(True))


def _compare(path, symbols, days) -> int:
    """Build both sources over ``days``; assert equal snapshots; how many were compared."""
    settings = DecisionSettings()
    with Store.open(path) as store:
        end = days[-1]
        market = load_market(store, symbols, end, settings.data)
        rng = np.random.default_rng(5)
        mid = rng.normal(0, 0.01, market.close.shape)
        width = rng.uniform(0.01, 0.05, market.close.shape)
        mid[: market.index_of(days[0])] = np.nan  # forecasts only from the first compared day
        q = Quantiles(mid - width, mid, mid + width)
        ingest(store, "forecasts", [_forecast_rows(market, days, q)], source="t", origin="t")
        risk = RiskSettings()
        trips = [
            Breaker.new(
                "symbol", symbols[0], "test trip", session_close(days[1], DataSettings()), risk
            ),
            Breaker.new("global", "*", "test global", session_close(days[2], DataSettings()), risk),
        ]
        trip(store, trips)
        traded_at = session_close(days[0], DataSettings()).astimezone(UTC)
        store.con.execute(
            "INSERT INTO fills (fill_id, client_order_id, symbol, side, qty, price, filled_at, "
            "broker) VALUES ('f1', 'c1', ?, 'buy', 1, 1, ?, 'sim')",
            [symbols[1], traded_at],
        )
        replay = ReplaySource(store, market, q, trips, settings)
        replay.last_trade_at[symbols[1]] = traded_at
        live = StoreSource(store, MODEL, settings, market.symbols)
        for d in days:
            now = session_close(d, DataSettings()).astimezone(UTC)
            a, b = live.snapshot(d, now), replay.snapshot(d, now)
            assert a.asof == b.asof and a.calibrated == b.calibrated
            assert a.basis == b.basis
            # inputs: DuckDB's parallel aggregates sum in no fixed order, so two
            # identical reads of the store differ in the last bits (4.4e-16 measured)
            assert_frame_equal(
                a.inputs.sort("symbol"), b.inputs.sort("symbol"), rel_tol=1e-12, abs_tol=1e-15
            )
            for name in ("forecasts", "prices"):
                left, right = getattr(a, name).sort("symbol"), getattr(b, name).sort("symbol")
                assert_frame_equal(left, right, check_exact=True)
            assert sorted(x.breaker_id for x in a.breakers) == sorted(
                x.breaker_id for x in b.breakers
            )
            assert dict(a.last_trade_at) == dict(b.last_trade_at)
            assert a.regime == b.regime
    return len(days)


def test_sources_agree_on_the_bundled_data(bundled_db, tmp_path):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    with Store.open(path, read_only=True) as store:
        end = datetime(2022, 12, 28).date()
        symbols = resolve_universe(store, end, "skfolio.sp500", None, [], DataSettings())[:8]
        sessions = [
            r[0]
            for r in store.con.execute(
                "SELECT DISTINCT ts FROM bars WHERE ts BETWEEN '2020-03-02' AND '2020-03-31' "
                "ORDER BY 1"
            ).fetchall()
        ]
    assert _compare(path, symbols, sessions[::4]) >= 5


@pytest.mark.parametrize("window", [(195, 205), (236, 246), (296, 306)])
def test_sources_agree_on_raw_closes_with_actions(raw_db, tmp_path, window):
    """Around the dividend (200), the split (241) and the name whose bars stop (300)."""
    path = tmp_path / "k.duckdb"
    shutil.copy(raw_db, path)
    with Store.open(path, read_only=True) as store:
        sessions = [
            r[0] for r in store.con.execute("SELECT DISTINCT ts FROM bars ORDER BY 1").fetchall()
        ]
        symbols = [
            r[0]
            for r in store.con.execute("SELECT DISTINCT symbol FROM bars ORDER BY 1").fetchall()
        ]
    lo, hi = window
    assert _compare(path, symbols, sessions[lo:hi:2]) == 5
