"""The order planner: share deltas, dust, policy gates, autosizing, turnover guard,
cash floor with replacement sells, order types, client order ids, orders rows.

Hand cases use NAV $100,000 and build the allocation directly, so each order's
arithmetic is visible in the test.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kronos.config import PolicySettings, PortfolioSettings
from kronos.decision.allocator import Account, Allocation, allocate
from kronos.decision.planner import (
    DROPPED_SCHEMA,
    ORDERS_SCHEMA,
    TABLE_SCHEMA,
    Plan,
    client_order_id,
    orders_table_rows,
    plan_orders,
)

NAV = 100_000.0
NOW = datetime(2024, 3, 1, 21, 0, tzinfo=UTC)
ASOF = date(2024, 3, 1)
RUN = "run-1"
CALM = (-0.02, 0.005, 0.03)  # sigma = 0.05 / 3.29 = 0.0152, z = 0.329


def pt(**kw: object) -> PortfolioSettings:
    base: dict[str, object] = {
        "pt_score_exp": 1.0,
        "pt_gross_max_pct": 0.95,
        "pt_cash_floor_pct": 0.05,
        "pt_max_pos_pct": 0.5,
        "pt_sector_max_pct": 1.0,
        "pt_turnover_cap_pct": 2.0,
        "pt_replacement_fric_bps": 10.0,
        "pt_block_if_llm_deny": True,
        "pt_min_order_notional": 100.0,
        "pt_no_trade_band_pct": 0.005,
    }
    return PortfolioSettings(**(base | kw))


def pol(**kw: object) -> PolicySettings:
    base: dict[str, object] = {
        "policy_require_reco": True,
        "policy_min_abs_dev": 0.001,
        "policy_min_sigma_z": 0.1,
        "policy_min_notional_usd": 200.0,
        "policy_min_trade_interval_secs": 3600.0,
        "planner_z_dev_thresh": 0.5,
        "planner_limit_notional": 25_000.0,
        "planner_bracket_price_max": 0.0,  # brackets off unless a test turns them on
        "planner_cooldown_mins": 60.0,
    }
    return PolicySettings(**(base | kw))


def alloc(rows: list[tuple], turnover: float = 0.1) -> Allocation:
    """rows: (symbol, target_weight[, utility[, sector]])."""
    targets = pl.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "sector": [r[3] if len(r) > 3 else "T" for r in rows],
            "target_weight": [float(r[1]) for r in rows],
            "current_weight": [0.0] * len(rows),
            "delta_weight": [float(r[1]) for r in rows],
            "reason": ["test"] * len(rows),
            "utility": [float(r[2]) if len(r) > 2 else 1.0 for r in rows],
        }
    )
    return Allocation(
        targets,
        pl.DataFrame(schema={"symbol": pl.String, "reason": pl.String}),
        turnover,
        0.9,
        "test",
    )


def book(rows: list[tuple]) -> pl.DataFrame:
    """rows: (symbol, qty, price)."""
    return pl.DataFrame(
        rows, schema={"symbol": pl.String, "qty": pl.Float64, "price": pl.Float64}, orient="row"
    )


def fc(bands: dict[str, tuple[float, float, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(s, 1, *b) for s, b in bands.items()],
        schema={
            "symbol": pl.String,
            "step": pl.Int64,
            "p05": pl.Float64,
            "p50": pl.Float64,
            "p95": pl.Float64,
        },
        orient="row",
    )


def plan(
    allocation: Allocation,
    positions: pl.DataFrame,
    *,
    cash: float = NAV,
    forecasts: pl.DataFrame | None = None,
    recos: set[str] | None = None,
    last: dict[str, datetime] | None = None,
    blocked: dict[str, str] | None = None,
    p: PortfolioSettings | None = None,
    q: PolicySettings | None = None,
) -> Plan:
    syms = set(positions["symbol"])
    return plan_orders(
        allocation=allocation,
        book=positions,
        account=Account(NAV, cash),
        forecasts=forecasts if forecasts is not None else fc(dict.fromkeys(syms, CALM)),
        ideas=recos if recos is not None else syms,
        last_trade_at=last or {},
        blocked=blocked or {},
        now=NOW,
        run_id=RUN,
        asof=ASOF,
        portfolio=p or pt(),
        policy=q or pol(),
    )


def by_symbol(frame: pl.DataFrame) -> dict[str, dict]:
    return {r["symbol"]: r for r in frame.iter_rows(named=True)}


def dropped(pl_: Plan) -> dict[str, str]:
    return dict(zip(pl_.dropped["symbol"], pl_.dropped["reason"], strict=True))


# --- share deltas, dust --------------------------------------------------------------------


def test_orders_are_whole_share_deltas_sells_first() -> None:
    # A: 0.1 x 100k = $10,000 at $33 -> floor(303.03) = 303 shares ($9,999)
    # B: held 100 @ $50 = $5,000, target 2% = $2,000 -> sell 60 shares
    # C: held 10 @ $20 = $200, target 0 -> exit all 10 (inside the band, but an exit)
    a = alloc([("A", 0.1), ("B", 0.02), ("C", 0.0)])
    pos = book([("A", 0.0, 33.0), ("B", 100.0, 50.0), ("C", 10.0, 20.0)])
    out = plan(a, pos, cash=NAV - 5_200.0)
    o = by_symbol(out.orders)
    assert out.orders["symbol"].to_list() == ["B", "C", "A"]
    assert (o["A"]["side"], o["A"]["qty"], o["A"]["notional"]) == ("buy", 303.0, 9_999.0)
    assert (o["B"]["side"], o["B"]["qty"], o["B"]["intent"]) == ("sell", 60.0, "rebalance")
    assert (o["C"]["side"], o["C"]["qty"], o["C"]["intent"]) == ("sell", 10.0, "exit")
    assert o["A"]["target_weight"] == 0.1 and o["A"]["turnover_est"] == 0.1
    assert out.orders.schema == pl.Schema(ORDERS_SCHEMA)
    assert out.cash_after == pytest.approx(NAV - 5_200.0 + 3_000.0 + 200.0 - 9_999.0)


def test_dust_and_no_trade_band_are_dropped_with_numbers() -> None:
    # A: $90 < $100; B: $400 >= $100 but 0.4% < 0.5%
    a = alloc([("A", 0.0009), ("B", 0.004)])
    out = plan(a, book([("A", 0.0, 10.0), ("B", 0.0, 10.0)]))
    assert out.orders.is_empty()
    why = dropped(out)
    assert why["A"] == "dust: |delta| $90.0 < PT_MIN_ORDER_NOTIONAL $100"
    assert why["B"] == "no-trade band: |delta weight| 0.4% < PT_NO_TRADE_BAND_PCT 0.5%"
    assert out.dropped.schema == pl.Schema(DROPPED_SCHEMA)


def test_a_sell_under_one_share_or_the_minimum_after_rounding_is_dropped() -> None:
    # A: sell $600 of $1,000 shares -> 0 shares; B: sell $150 of $140 shares -> 1 share
    # ($140, kept); C: sell $120 of $90 shares -> 1 share, $90 < $100
    a = alloc([("A", 0.01), ("B", 0.0979), ("C", 0.0988)])
    pos = book([("A", 1.6, 1000.0), ("B", 71.0, 140.0), ("C", 111.1111, 90.0)])
    out = plan(a, pos, p=pt(pt_no_trade_band_pct=0.0))
    why = dropped(out)
    assert why["A"] == "less than one share"
    assert why["C"] == "dust: sell of whole shares $90.0 < PT_MIN_ORDER_NOTIONAL $100"
    assert by_symbol(out.orders)["B"]["qty"] == 1.0


# --- policy gates ----------------------------------------------------------------------------


def test_each_buy_gate_drops_with_its_reason() -> None:
    names = ["OK", "R", "F", "D", "N", "Z", "K", "C", "S"]
    a = alloc([(s, 0.05) for s in names[:-1]] + [("S", 0.01)])
    pos = book([(s, 0.0, 10.0) for s in names[:-1]] + [("S", 500.0, 10.0)])  # S: sell $4,000
    bands = dict.fromkeys(names, CALM)
    del bands["F"]
    bands["D"] = (-0.02, 0.0005, 0.03)  # p50 0.0005 < 0.001
    bands["N"] = (-0.05, -0.01, 0.03)  # a falling forecast: p50 -0.01 < 0.001 (directional)
    bands["Z"] = (-0.1, 0.002, 0.1)  # z = 0.002 / (0.2 / 3.29) = 0.0329 < 0.1
    out = plan(
        a,
        pos,
        cash=NAV - 5_000.0,
        forecasts=fc(bands),
        recos=set(names) - {"R"},
        last={"C": NOW - timedelta(minutes=30), "OK": NOW - timedelta(hours=2)},
        blocked={"K": "headline spike", "S": "residual z=+5.0"},
    )
    why = dropped(out)
    assert set(out.orders["symbol"]) == {"OK", "S"}  # a blocked name may still sell
    assert by_symbol(out.orders)["S"]["side"] == "sell"
    assert why["R"] == "POLICY_REQUIRE_RECO: not among the recommendations"
    assert why["F"] == "no step-1 forecast for POLICY_MIN_ABS_DEV / POLICY_MIN_SIGMA_Z"
    assert why["D"] == "POLICY_MIN_ABS_DEV: p50 0.0005 < 0.001"
    assert why["N"] == "POLICY_MIN_ABS_DEV: p50 -0.01 < 0.001"
    assert why["Z"] == "POLICY_MIN_SIGMA_Z: p50/sigma 0.033 < 0.1"
    assert why["K"] == "breaker: headline spike (no buys)"
    assert why["C"] == (
        "cooldown: last trade 1800.0s ago, within POLICY_MIN_TRADE_INTERVAL_SECS=3600s"
        " and PLANNER_COOLDOWN_MINS=60min"
    )
    assert set(out.dropped["side"]) == {"buy"}


def test_cooldown_names_the_rule_that_binds_and_applies_to_sells() -> None:
    a = alloc([("A", 0.0)])
    pos = book([("A", 100.0, 50.0)])
    q = pol(planner_cooldown_mins=10.0)
    out = plan(a, pos, last={"A": NOW - timedelta(minutes=30)}, q=q)
    assert out.orders.is_empty()
    assert dropped(out)["A"] == (
        "cooldown: last trade 1800.0s ago, within POLICY_MIN_TRADE_INTERVAL_SECS=3600s"
    )
    later = plan(a, pos, last={"A": NOW - timedelta(minutes=61)}, q=q)
    assert later.orders["symbol"].to_list() == ["A"]


def test_gates_can_be_switched_off() -> None:
    a = alloc([("A", 0.05)])
    pos = book([("A", 0.0, 10.0)])
    off = pol(policy_require_reco=False, policy_min_abs_dev=0.0, policy_min_sigma_z=0.0)
    out = plan(a, pos, forecasts=fc({}), recos=set(), q=off)
    assert out.orders["qty"].to_list() == [500.0]


def test_naive_times_are_refused() -> None:
    a = alloc([("A", 0.05)])
    with pytest.raises(ValueError, match="time-zone-aware"):
        plan(a, book([("A", 0.0, 10.0)]), last={"A": datetime(2024, 3, 1, 12)})
    with pytest.raises(ValueError, match="naive"):
        plan_orders(
            allocation=a,
            book=book([("A", 0.0, 10.0)]),
            account=Account(NAV, NAV),
            forecasts=fc({}),
            ideas=set(),
            last_trade_at={},
            blocked={},
            now=datetime(2024, 3, 1),
            run_id=RUN,
            asof=ASOF,
            portfolio=pt(),
            policy=pol(),
        )


# --- minimum notional and autosizing ------------------------------------------------------


def test_small_buy_is_autosized_to_the_minimum_notional() -> None:
    # $150 at $40 -> 3 shares ($120) < $200 -> ceil(200 / 40) = 5 shares ($200)
    a = alloc([("A", 0.0015)])
    out = plan(a, book([("A", 0.0, 40.0)]), p=pt(pt_no_trade_band_pct=0.0))
    o = by_symbol(out.orders)["A"]
    assert (o["qty"], o["notional"]) == (5.0, 200.0)


def test_autosizing_that_breaches_a_cap_is_dropped() -> None:
    # $200 would be 0.2% of NAV: above a 0.19% name cap; then above a 0.19% sector cap
    a = alloc([("A", 0.0015)])
    p = pt(pt_no_trade_band_pct=0.0, pt_max_pos_pct=0.0019)
    out = plan(a, book([("A", 0.0, 40.0)]), p=p)
    assert out.orders.is_empty()
    assert dropped(out)["A"] == (
        "POLICY_MIN_NOTIONAL_USD: $120.0 < $200; autosizing to 5 shares ($200.0) would breach "
        "PT_MAX_POS_PCT 0.19%"
    )
    p = pt(pt_no_trade_band_pct=0.0, pt_sector_max_pct=0.0019)
    two = alloc([("A", 0.0015, 1.0, "T"), ("B", 0.0003, 1.0, "T")])
    out = plan(
        two, book([("A", 0.0, 40.0), ("B", 0.0, 1.0)]), p=p, q=pol(policy_min_notional_usd=100.0)
    )
    # A: $120 < max($100, $100)? no: A stays at 3 shares. B: $30 is dust.
    assert by_symbol(out.orders)["A"]["qty"] == 3.0
    out = plan(two, book([("A", 0.0, 40.0), ("B", 0.0, 1.0)]), p=p)
    assert "would breach PT_SECTOR_MAX_PCT 0.19%" in dropped(out)["A"]


# --- turnover guard and cash floor ---------------------------------------------------------


def test_turnover_guard_scales_all_orders() -> None:
    # two buys of $8,000 against a $10,000 cap: x0.625 -> 500 and 250 shares
    a = alloc([("A", 0.08), ("B", 0.08)])
    out = plan(a, book([("A", 0.0, 10.0), ("B", 0.0, 20.0)]), p=pt(pt_turnover_cap_pct=0.1))
    assert out.turnover_scale == pytest.approx(0.625)
    assert out.orders["qty"].to_list() == [500.0, 250.0]
    assert out.orders["notional"].sum() <= 10_000.0


def test_turnover_guard_drops_orders_scaled_under_the_minimum() -> None:
    a = alloc([("A", 0.1), ("B", 0.0025)])
    out = plan(
        a,
        book([("A", 0.0, 10.0), ("B", 0.0, 1.0)]),
        p=pt(pt_turnover_cap_pct=0.05, pt_no_trade_band_pct=0.0),
    )
    # gross $10,250 > $5,000: x0.4878; B: 250 -> 121 shares = $121 < $200
    assert out.orders["symbol"].to_list() == ["A"]
    assert dropped(out)["B"].startswith(
        "turnover guard: orders $10250.00 > PT_TURNOVER_CAP_PCT x NAV $5000.00"
    )
    assert dropped(out)["B"].endswith("to $121.0 < minimum $200.0")


def test_residual_buys_are_scaled_pro_rata_to_keep_the_floor() -> None:
    # cash $10,000, floor $5,000: $5,000 for $8,000 of buys -> x0.625
    a = alloc([("A", 0.04), ("B", 0.04)])
    out = plan(a, book([("A", 0.0, 10.0), ("B", 0.0, 20.0)]), cash=10_000.0)
    assert out.buy_scale == pytest.approx(0.625)
    assert out.orders["qty"].to_list() == [250.0, 125.0]
    assert out.cash_after == pytest.approx(5_000.0)
    assert out.cash_after >= out.cash_floor


def test_cash_floor_drops_buys_scaled_under_the_minimum() -> None:
    a = alloc([("A", 0.04)])
    out = plan(a, book([("A", 0.0, 10.0)]), cash=5_150.0)
    assert out.orders.is_empty()
    assert dropped(out)["A"] == (
        "cash floor: buys $4000.00 > cash above PT_CASH_FLOOR_PCT $150.00; scaled x0.0375 "
        "to $150.0 < minimum $200"
    )


def test_replacement_sells_bridge_the_deficit_when_the_buy_beats_the_friction() -> None:
    # cash sits at the floor; N (utility 0.5) is funded by selling L (utility 0.1),
    # as 0.1 + 10 bps < 0.5
    a = alloc([("N", 0.04, 0.5), ("L", 0.3, 0.1), ("H", 0.3, 0.9)])
    pos = book([("N", 0.0, 10.0), ("L", 3_000.0, 10.0), ("H", 1_500.0, 20.0)])
    out = plan(a, pos, cash=5_000.0)
    o = by_symbol(out.orders)
    assert o["L"]["intent"] == "replacement" and o["L"]["side"] == "sell"
    assert o["L"]["qty"] == 400.0 and o["N"]["qty"] == 400.0
    assert "H" not in o
    assert out.replacement_notional == pytest.approx(4_000.0)
    assert out.cash_after == pytest.approx(5_000.0)


def test_no_replacement_when_the_buy_does_not_beat_the_friction() -> None:
    # N's utility 0.1005 beats L's 0.1 by 5 bps < 10 bps: no sale, the buy is dropped
    a = alloc([("N", 0.04, 0.1005), ("L", 0.3, 0.1)])
    pos = book([("N", 0.0, 10.0), ("L", 3_000.0, 10.0)])
    out = plan(a, pos, cash=5_000.0)
    assert out.orders.is_empty()
    assert dropped(out)["N"].startswith("cash floor: buys $4000.00")


def test_replacement_sells_skip_names_in_cooldown() -> None:
    # G glides to zero but traded 5 minutes ago: its exit is dropped and it is not sold
    # to fund N either; L (utility 0.1) is
    a = alloc([("N", 0.04, 0.5), ("L", 0.3, 0.1), ("G", 0.0, 5.0)])
    pos = book([("N", 0.0, 10.0), ("L", 3_000.0, 10.0), ("G", 1_000.0, 10.0)])
    out = plan(a, pos, cash=5_000.0, last={"G": NOW - timedelta(minutes=5)})
    sells = out.orders.filter(pl.col("side") == "sell")
    assert sells.select("symbol", "intent").rows() == [("L", "replacement")]
    assert dropped(out)["G"].startswith("cooldown")


def test_forced_sells_take_names_gliding_to_zero_first() -> None:
    # cash $1,000 < floor $5,000: G (target 0, utility 5 but leaving the book) goes before
    # L (utility 0.1), cooldown notwithstanding: ceil(4000 / 10) = 400 shares
    a = alloc([("L", 0.3, 0.1), ("G", 0.0, 5.0)])
    pos = book([("L", 3_000.0, 10.0), ("G", 1_000.0, 10.0)])
    out = plan(a, pos, cash=1_000.0, last={"G": NOW - timedelta(minutes=5)})
    assert out.orders.select("symbol", "intent", "qty").rows() == [("G", "replacement", 400.0)]
    assert out.cash_after == pytest.approx(5_000.0)


def test_forced_sells_restore_the_floor_lowest_utility_first() -> None:
    # cash $1,000 < floor $5,000, nothing to buy: sell $4,000 of L (lowest utility),
    # even though L is in cooldown and above the turnover cap
    a = alloc([("L", 0.45, 0.1), ("H", 0.5, 0.9)])
    pos = book([("L", 1_500.0, 30.0), ("H", 1_000.0, 50.0)])
    out = plan(a, pos, cash=1_000.0, last={"L": NOW}, p=pt(pt_turnover_cap_pct=0.01))
    o = by_symbol(out.orders)
    assert list(o) == ["L"]
    assert o["L"]["intent"] == "replacement"
    assert o["L"]["qty"] == math.ceil(4_000.0 / 30.0)  # 134 shares
    assert out.cash_after >= out.cash_floor


# --- order types ------------------------------------------------------------------------------


def test_order_types_limit_bracket_market() -> None:
    bands = {
        "Z": (-0.01, 0.02, 0.05),  # z = 0.02 / (0.06 / 3.29) = 1.097 > 0.5 -> limit
        "BIG": CALM,  # $30,000 > $25,000 -> limit
        "BR": CALM,  # $40 <= $500 with a forecast -> bracket
        "MKT": CALM,  # $600 > $500, small, calm -> market
        "SELL": CALM,  # sell of $30,000 -> limit
    }
    a = alloc([("Z", 0.05), ("BIG", 0.3), ("BR", 0.05), ("MKT", 0.05), ("SELL", 0.0)])
    pos = book(
        [
            ("Z", 0.0, 600.0),
            ("BIG", 0.0, 600.0),
            ("BR", 0.0, 40.0),
            ("MKT", 0.0, 600.0),
            ("SELL", 1_000.0, 30.0),
        ]
    )
    out = plan(a, pos, cash=70_000.0, forecasts=fc(bands), q=pol(planner_bracket_price_max=500.0))
    o = by_symbol(out.orders)
    assert {s: r["order_type"] for s, r in o.items()} == {
        "Z": "limit",
        "BIG": "limit",
        "BR": "bracket",
        "MKT": "market",
        "SELL": "limit",
    }
    assert o["Z"]["limit_price"] == 600.0 and o["MKT"]["limit_price"] is None
    # the bracket's legs: take-profit at price x exp(p95) rounded up to the cent,
    # stop-loss at price x exp(p05) rounded down: 41.2182 -> 41.22, 39.2079 -> 39.20
    assert o["BR"]["take_profit"] == pytest.approx(math.ceil(40 * math.exp(0.03) * 100) / 100)
    assert o["BR"]["stop_loss"] == pytest.approx(math.floor(40 * math.exp(-0.02) * 100) / 100)
    assert (o["BR"]["take_profit"], o["BR"]["stop_loss"]) == (
        pytest.approx(41.22),
        pytest.approx(39.20),
    )
    assert o["BR"]["limit_price"] is None  # market entry: |z| and notional are small
    assert o["Z"]["take_profit"] is None


def test_bracket_needs_a_forecast_band_around_zero() -> None:
    a = alloc([("A", 0.05), ("B", 0.05)])
    # A: p05 > 0 would put the stop-loss above the price; z = 0.005 / (0.099 / 3.29) = 0.166
    bands = {"A": (0.001, 0.005, 0.1), "B": CALM}
    out = plan(
        a,
        book([("A", 0.0, 40.0), ("B", 0.0, 40.0)]),
        forecasts=fc(bands),
        q=pol(planner_bracket_price_max=500.0),
    )
    types = dict(zip(out.orders["symbol"], out.orders["order_type"], strict=True))
    assert types == {"A": "market", "B": "bracket"}


# --- ids and rows -------------------------------------------------------------------------------


def test_client_order_id_is_deterministic() -> None:
    cid = client_order_id(RUN, ASOF, "AAPL", "rebalance")
    assert re.fullmatch(r"kr-[0-9a-f]{24}", cid)
    assert cid == client_order_id(RUN, ASOF, "AAPL", "rebalance")
    assert cid != client_order_id(RUN, ASOF, "AAPL", "exit")
    assert cid != client_order_id("run-2", ASOF, "AAPL", "rebalance")
    # the same instant in two time zones is the same asof
    at = datetime(2024, 3, 1, 21, tzinfo=UTC)
    ny = at.astimezone(timezone(timedelta(hours=-5)))
    assert client_order_id(RUN, at, "A", "exit") == client_order_id(RUN, ny, "A", "exit")
    # fields are encoded, not joined: a separator inside a field cannot collide
    assert client_order_id("a|b", "c", "d", "e") != client_order_id("a", "b|c", "d", "e")


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(
        st.tuples(
            st.text(max_size=6),
            st.dates(),
            st.text(max_size=6),
            st.sampled_from(["rebalance", "replacement", "exit"]),
        ),
        min_size=2,
        max_size=30,
        unique=True,
    )
)
def test_client_order_ids_are_unique_per_key(keys: list[tuple]) -> None:
    ids = [client_order_id(*k) for k in keys]
    assert len(set(ids)) == len(keys)
    assert ids == [client_order_id(*k) for k in keys]


def test_orders_table_rows() -> None:
    a = alloc([("A", 0.1), ("B", 0.0)])
    out = plan(a, book([("A", 0.0, 10.0), ("B", 100.0, 10.0)]))
    rows = orders_table_rows(out, RUN, ASOF, now=NOW)
    assert rows.schema == pl.Schema(TABLE_SCHEMA)
    assert rows["status"].to_list() == ["planned", "planned"]
    assert rows["broker"].to_list() == ["sim", "sim"]
    assert rows["asof"].to_list() == [datetime(2024, 3, 1, tzinfo=UTC)] * 2
    assert rows["updated_at"].to_list() == [NOW] * 2
    assert rows["client_order_id"].to_list() == out.orders["client_order_id"].to_list()
    assert rows["broker_order_id"].null_count() == 2
    with pytest.raises(ValueError, match="not made for run"):
        orders_table_rows(out, "other-run", ASOF, now=NOW)
    with pytest.raises(ValueError, match="naive"):
        orders_table_rows(out, RUN, ASOF, now=datetime(2024, 3, 1))


def test_a_retried_plan_has_the_same_orders_and_ids() -> None:
    a = alloc([("A", 0.1), ("B", 0.0), ("C", 0.05)])
    pos = book([("A", 0.0, 10.0), ("B", 100.0, 10.0), ("C", 10.0, 33.0)])
    first, second = plan(a, pos), plan(a, pos)
    assert first.orders.equals(second.orders)
    assert first.dropped.equals(second.dropped)


# --- properties over random books ------------------------------------------------------------


@st.composite
def random_plan_case(draw: st.DrawFn) -> tuple:
    n = draw(st.integers(1, 60))
    k = draw(st.integers(1, 6))
    syms = [f"S{i:02d}" for i in range(n)]
    sector = [f"sec{draw(st.integers(0, k - 1))}" for _ in syms]
    score = draw(st.lists(st.floats(-2, 3, allow_nan=False), min_size=n, max_size=n))
    eligible = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    scores = pl.DataFrame({"symbol": syms, "sector": sector, "score": score, "eligible": eligible})
    held = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    qty = [float(draw(st.integers(1, 3000))) if h else 0.0 for h in held]
    price = draw(st.lists(st.floats(0.5, 800, allow_nan=False), min_size=n, max_size=n))
    positions = pl.DataFrame({"symbol": syms, "qty": qty, "price": price})
    value = float(np.dot(qty, price))
    cash = draw(st.floats(0, value + 50_000, allow_nan=False)) + (0.0 if value else 1_000.0)
    p50 = draw(st.lists(st.floats(-0.03, 0.03, allow_nan=False), min_size=n, max_size=n))
    width = draw(st.lists(st.floats(0.001, 0.08, allow_nan=False), min_size=n, max_size=n))
    has_fc = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rows = [
        (s, 1, m - w, m, m + w) for s, m, w, h in zip(syms, p50, width, has_fc, strict=True) if h
    ]
    forecasts = pl.DataFrame(
        rows,
        schema={
            "symbol": pl.String,
            "step": pl.Int64,
            "p05": pl.Float64,
            "p50": pl.Float64,
            "p95": pl.Float64,
        },
        orient="row",
    )
    recos = {s for s in syms if draw(st.integers(0, 3)) > 0}
    last = {
        s: NOW - timedelta(minutes=draw(st.integers(0, 180)))
        for s in syms
        if draw(st.integers(0, 4)) == 0
    }
    blocked = {s: f"breaker {s}" for s in syms if draw(st.integers(0, 7)) == 0}
    p = pt(
        pt_score_exp=draw(st.floats(0.1, 4)),
        pt_gross_max_pct=draw(st.floats(0.5, 1.0)),
        pt_cash_floor_pct=draw(st.floats(0.0, 0.2)),
        pt_max_pos_pct=draw(st.floats(0.02, 0.5)),
        pt_sector_max_pct=draw(st.floats(0.1, 1.0)),
        pt_turnover_cap_pct=draw(st.floats(0.02, 1.5)),
        pt_replacement_fric_bps=draw(st.floats(0, 30)),
        pt_min_order_notional=draw(st.floats(0, 500)),
        pt_no_trade_band_pct=draw(st.floats(0, 0.01)),
    )
    gates = draw(st.booleans())  # off: every buy reaches the cash step
    q = pol(
        policy_require_reco=gates and draw(st.booleans()),
        policy_min_abs_dev=0.001 if gates else 0.0,
        policy_min_sigma_z=0.1 if gates else 0.0,
        policy_min_notional_usd=draw(st.floats(0, 1_000)),
        planner_bracket_price_max=draw(st.floats(0, 800)),
    )
    # NAV may hold more than cash and positions (unsettled funds), so cash can be scarcer
    # than the weights say
    other = draw(st.floats(0, 1)) * (value + cash)
    acct = Account(value + cash + other, cash)
    return scores, positions, acct, forecasts, recos, last, blocked, p, q


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_plan_case())
def test_plan_invariants(case: tuple) -> None:
    scores, positions, acct, forecasts, recos, last, blocked, p, q = case
    a = allocate(scores, positions, acct, scores.select("symbol", "sector"), blocked, p)
    out = plan_orders(
        allocation=a,
        book=positions,
        account=acct,
        forecasts=forecasts,
        ideas=recos,
        last_trade_at=last,
        blocked=blocked,
        now=NOW,
        run_id=RUN,
        asof=ASOF,
        portfolio=p,
        policy=q,
    )
    o = out.orders
    nav = acct.nav
    buys, sells = o.filter(pl.col("side") == "buy"), o.filter(pl.col("side") == "sell")
    min_buy = max(p.pt_min_order_notional, q.policy_min_notional_usd)

    # no order under its minimum notional; buys are whole shares
    assert (buys["notional"] >= min_buy - 1e-9).all()
    assert (sells["notional"] >= p.pt_min_order_notional - 1e-9).all()
    assert (buys["qty"] == buys["qty"].floor()).all() and (o["qty"] > 0).all()
    # a breaker's scope, unrecommended names and names in cooldown get no buys
    assert not set(buys["symbol"]) & set(blocked)
    if q.policy_require_reco:
        assert set(buys["symbol"]) <= recos
    cooling = {s for s, t in last.items() if (NOW - t).total_seconds() < 3600}
    assert not set(o.filter(pl.col("intent") != "replacement")["symbol"]) & cooling
    # buys pass the forecast gates
    if q.policy_min_abs_dev > 0 or q.policy_min_sigma_z > 0:
        gated = buys.join(forecasts, on="symbol", how="left")
        assert gated["p50"].null_count() == 0
        sigma = (gated["p95"] - gated["p05"]) / 3.29
        assert (gated["p50"].abs() >= q.policy_min_abs_dev).all()
        assert ((gated["p50"].abs() / sigma) >= q.policy_min_sigma_z).all()
    # sells never exceed the holding
    held = dict(zip(positions["symbol"], positions["qty"], strict=True))
    sold = sells.group_by("symbol").agg(pl.col("qty").sum())
    assert all(qty <= held[s] + 1e-9 for s, qty in sold.iter_rows())
    # cash after the orders stays at or above the floor when it started there
    floor = p.pt_cash_floor_pct * nav
    cash_after = acct.cash + sells["notional"].sum() - buys["notional"].sum()
    assert out.cash_after == pytest.approx(cash_after, abs=1e-6)
    if acct.cash >= floor:
        assert cash_after >= floor - 1e-6
    else:
        assert buys.is_empty() or cash_after >= floor - 1e-6
        assert cash_after >= acct.cash - 1e-6
    # the turnover guard holds for everything but the floor's own repair
    cap = p.pt_turnover_cap_pct * nav
    assert o.filter(pl.col("intent") != "replacement")["notional"].sum() <= cap + 1e-6
    # ids: unique, and the ones client_order_id gives
    assert o["client_order_id"].n_unique() == o.height
    assert o["client_order_id"].to_list() == [
        client_order_id(RUN, ASOF, s, i) for s, i in zip(o["symbol"], o["intent"], strict=True)
    ]
    assert out.dropped["reason"].null_count() == 0
    assert not set(out.dropped["symbol"]) & set(
        o.filter(pl.col("intent") != "replacement")["symbol"]
    )
