"""The allocator: softmax weights, caps, breakers, reviewer, turnover cap, cash floor.

Hand cases put the book at NAV 100 so that a holding's value is its weight in
percent; reference numbers are worked out in the comments and compared at
rtol 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kronos.config import PortfolioSettings
from kronos.decision.allocator import (
    NO_SECTOR,
    Account,
    _reasons,
    allocate,
    waterfill,
)
from kronos.decision.weighting import AllowAll, softmax

RTOL = 1e-12


def pt(**kw: object) -> PortfolioSettings:
    """Settings with every allocator field explicit (no environment leaks in)."""
    base: dict[str, object] = {
        "pt_score_exp": 1.0,
        "pt_gross_max_pct": 0.95,
        "pt_cash_floor_pct": 0.05,
        "pt_max_pos_pct": 1.0,
        "pt_sector_max_pct": 1.0,
        "pt_turnover_cap_pct": 2.0,
        "pt_replacement_fric_bps": 10.0,
        "pt_block_if_llm_deny": True,
        "pt_min_order_notional": 100.0,
        "pt_no_trade_band_pct": 0.005,
    }
    return PortfolioSettings(**(base | kw))


def scores_frame(rows: list[tuple]) -> pl.DataFrame:
    """rows: (symbol, sector, score, eligible[, utility])."""
    out = pl.DataFrame(
        [r[:4] for r in rows],
        schema={
            "symbol": pl.String,
            "sector": pl.String,
            "score": pl.Float64,
            "eligible": pl.Boolean,
        },
        orient="row",
    )
    if any(len(r) > 4 for r in rows):
        out = out.with_columns(utility=pl.Series([r[4] if len(r) > 4 else None for r in rows]))
    return out


def book(holdings: dict[str, float]) -> pl.DataFrame:
    """Positions at price 1: qty is the value in USD."""
    return pl.DataFrame(
        {"symbol": list(holdings), "qty": list(holdings.values()), "price": [1.0] * len(holdings)},
        schema={"symbol": pl.String, "qty": pl.Float64, "price": pl.Float64},
    )


def sectors_of(scores: pl.DataFrame) -> pl.DataFrame:
    return scores.select("symbol", "sector")


def weights(alloc, col: str = "target_weight") -> dict[str, float]:
    return dict(zip(alloc.targets["symbol"], alloc.targets[col], strict=True))


def reasons(frame: pl.DataFrame) -> dict[str, str]:
    return dict(zip(frame["symbol"], frame["reason"], strict=True))


class Deny:
    """A reviewer that denies the given symbols."""

    note = "test reviewer"

    def __init__(self, denied: set[str]) -> None:
        self.denied = denied
        self.asked: list[list[str]] = []

    def review(self, symbols: Sequence[str]) -> dict[str, bool]:
        self.asked.append(list(symbols))
        return {s: s not in self.denied for s in symbols}


EMPTY = book({})
CASH_ONLY = Account(nav=100.0, cash=100.0)


# --- softmax weights ---------------------------------------------------------------------


def test_softmax_weights_by_hand() -> None:
    # budget 0.95 - 0.05 = 0.9; w_i = 0.9 exp(s_i) / sum exp(s_j) with s = (1, 2, 0.5):
    # exp = 2.718281828459045, 7.38905609893065, 1.6487212707001282; sum 11.756059198089822
    sc = scores_frame([("A", "T", 1.0, True), ("B", "T", 2.0, True), ("C", "E", 0.5, True)])
    a = allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt())
    w = weights(a)
    ref = {"A": 0.20810150785993417, "B": 0.5656785472905863, "C": 0.12621994484947965}
    for s, v in ref.items():
        assert w[s] == pytest.approx(v, rel=RTOL)
    assert a.budget == pytest.approx(0.9, rel=RTOL)
    assert a.turnover == pytest.approx(0.9, rel=RTOL)
    assert set(a.targets["reason"]) == {"softmax"}


def test_score_exp_is_the_inverse_temperature() -> None:
    # k = 2: exp(2 s) = 7.38905609893065, 54.598150033144236, 2.718281828459045;
    # sum 64.70548796121793; w = 0.9 * each / sum
    sc = scores_frame([("A", "T", 1.0, True), ("B", "T", 2.0, True), ("C", "E", 0.5, True)])
    w = weights(allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt(pt_score_exp=2.0)))
    total = 7.38905609893065 + 54.598150033144236 + 2.718281828459045
    assert w["A"] == pytest.approx(0.9 * 7.38905609893065 / total, rel=RTOL)
    assert w["B"] == pytest.approx(0.9 * 54.598150033144236 / total, rel=RTOL)
    assert w["C"] == pytest.approx(0.9 * 2.718281828459045 / total, rel=RTOL)
    # a small exponent flattens toward equal weights
    flat = weights(allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt(pt_score_exp=1e-9)))
    assert all(v == pytest.approx(0.3, rel=1e-8) for v in flat.values())


def test_softmax_is_stable_for_large_scores() -> None:
    p = softmax(np.array([1000.0, 1001.0]), 1.0)
    # exp(-1) / (1 + exp(-1)) and 1 / (1 + exp(-1))
    assert p[0] == pytest.approx(math.exp(-1) / (1 + math.exp(-1)), rel=RTOL)
    assert p.sum() == pytest.approx(1.0, rel=RTOL)


# --- caps ----------------------------------------------------------------------------------


def test_name_cap_redistributes_the_excess() -> None:
    # scores ln 2, 0+, 0+ -> shares 1/2, 1/4, 1/4 of budget 0.8: 0.4, 0.2, 0.2.
    # A is capped at 0.3; its 0.1 excess goes to B and C pro rata: 0.25 each.
    eps = 1e-300  # a positive score that leaves exp() at 1
    sc = scores_frame(
        [("A", "T", math.log(2) + eps, True), ("B", "E", eps, True), ("C", "H", eps, True)]
    )
    s = pt(pt_gross_max_pct=0.85, pt_max_pos_pct=0.3)
    a = allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, s)
    w = weights(a)
    assert w["A"] == pytest.approx(0.3, rel=RTOL)
    assert w["B"] == pytest.approx(0.25, rel=RTOL)
    assert w["C"] == pytest.approx(0.25, rel=RTOL)
    assert reasons(a.targets)["A"] == "name cap"
    assert reasons(a.targets)["B"] == "softmax"


def test_sector_cap_redistributes_to_other_sectors() -> None:
    # four equal scores, budget 0.8: 0.2 each. Sector T (A, B) holds 0.4 > 0.3, so
    # A = B = 0.15 and the other 0.5 goes to C and D: 0.25 each.
    sc = scores_frame(
        [("A", "T", 1.0, True), ("B", "T", 1.0, True), ("C", "E", 1.0, True), ("D", "H", 1.0, True)]
    )
    s = pt(pt_gross_max_pct=0.85, pt_sector_max_pct=0.3)
    a = allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, s)
    w = weights(a)
    assert (w["A"], w["B"]) == (pytest.approx(0.15, rel=RTOL), pytest.approx(0.15, rel=RTOL))
    assert (w["C"], w["D"]) == (pytest.approx(0.25, rel=RTOL), pytest.approx(0.25, rel=RTOL))
    assert reasons(a.targets)["A"] == "sector cap: T"


def test_weight_no_name_can_take_stays_in_cash() -> None:
    # three names, cap 0.2 each: 0.6 placed out of a 0.9 budget
    sc = scores_frame([("A", "T", 1.0, True), ("B", "E", 2.0, True), ("C", "H", 3.0, True)])
    a = allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt(pt_max_pos_pct=0.2))
    assert a.targets["target_weight"].to_list() == pytest.approx([0.2, 0.2, 0.2], rel=RTOL)


def test_waterfill_names_and_sectors_together() -> None:
    # shares .4 .3 .2 .1, budget 1, name cap .3, sector cap .5, sectors (0, 0, 1, 1).
    # Sector 0 wants .7 > .5: A, B get .5 in ratio 4:3 (2/7, 3/14), under the name cap.
    # Sector 1 gets the other .5 in ratio 2:1, so C would have 1/3 > .3: C = .3, D = .2.
    w, bind = waterfill(
        np.array([0.4, 0.3, 0.2, 0.1]), np.full(4, 0.3), np.array([0, 0, 1, 1]), 0.5, 1.0
    )
    assert w == pytest.approx([2 / 7, 3 / 14, 0.3, 0.2], rel=RTOL)
    assert bind.tolist() == [2, 2, 1, 0]


def test_unknown_sector_is_its_own_capped_bucket() -> None:
    sc = scores_frame([("A", None, 1.0, True), ("B", None, 1.0, True), ("C", "E", 1.0, True)])
    a = allocate(
        sc,
        EMPTY,
        CASH_ONLY,
        pl.DataFrame(schema={"symbol": pl.String, "sector": pl.String}),
        {},
        pt(pt_sector_max_pct=0.4),
    )
    w = weights(a)
    assert dict(zip(a.targets["symbol"], a.targets["sector"], strict=True))["A"] == NO_SECTOR
    # 0.3 each; "(none)" holds 0.6 > 0.4 -> A = B = 0.2; C could take 0.5 but its
    # sector E is capped at 0.4 too: 0.1 stays in cash
    assert w["A"] == pytest.approx(0.2, rel=RTOL)
    assert w["C"] == pytest.approx(0.4, rel=RTOL)


def test_sectors_frame_overrides_the_scores_sector() -> None:
    sc = scores_frame([("A", "T", 1.0, True), ("B", "T", 1.0, True)])
    sec = pl.DataFrame({"symbol": ["A", "B"], "sector": ["T", "E"]})
    a = allocate(sc, EMPTY, CASH_ONLY, sec, {}, pt(pt_sector_max_pct=0.3))
    assert weights(a) == {"A": pytest.approx(0.3), "B": pytest.approx(0.3)}
    assert weights(
        allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt(pt_sector_max_pct=0.3))
    ) == {
        "A": pytest.approx(0.15),
        "B": pytest.approx(0.15),
    }


# --- gliding to zero, breakers, reviewer ------------------------------------------------------


def test_names_out_of_the_book_glide_to_zero_with_reasons() -> None:
    sc = scores_frame(
        [
            ("A", "T", 1.0, True),
            ("NEG", "T", -0.5, True),
            ("ZERO", "T", 0.0, True),
            ("INEL", "E", 2.0, False),
            ("DENY", "E", 2.0, True),
        ]
    )
    sc = sc.with_columns(
        ineligible_reason=pl.when(pl.col("symbol") == "INEL").then(pl.lit("market cap < $10B"))
    )
    held = book({"NEG": 5.0, "INEL": 5.0, "DENY": 5.0, "GONE": 5.0})
    acct = Account(nav=100.0, cash=80.0)
    a = allocate(sc, held, acct, sectors_of(sc), {}, pt(), Deny({"DENY"}))
    w, why = weights(a), reasons(a.targets)
    assert w == {"A": pytest.approx(0.9), "NEG": 0.0, "INEL": 0.0, "DENY": 0.0, "GONE": 0.0}
    assert why["NEG"] == "score <= 0"
    assert why["INEL"] == "not eligible: market cap < $10B"
    assert why["DENY"] == "denied by reviewer"
    assert why["GONE"] == "not scored"
    assert reasons(a.excluded) == {
        "NEG": "score <= 0",
        "ZERO": "score <= 0",
        "INEL": "not eligible: market cap < $10B",
        "DENY": "denied by reviewer",
        "GONE": "not scored",
    }
    assert weights(a, "delta_weight")["GONE"] == pytest.approx(-0.05)


def test_reviewer_is_asked_once_about_eligible_positive_ideas() -> None:
    sc = scores_frame(
        [
            ("B", "T", 1.0, True),
            ("A", "T", 2.0, True),
            ("C", "T", -1.0, True),
            ("D", "T", 1.0, False),
        ]
    )
    r = Deny(set())
    allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt(), r)
    assert r.asked == [["A", "B"]]


@pytest.mark.parametrize("block", [True, False])
def test_reviewer_deny_with_block_flag_on_and_off(block: bool) -> None:
    sc = scores_frame([("A", "T", 1.0, True), ("B", "E", 1.0, True)])
    a = allocate(
        sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt(pt_block_if_llm_deny=block), Deny({"B"})
    )
    w = weights(a)
    if block:
        assert w == {"A": pytest.approx(0.9)}
        assert reasons(a.excluded) == {"B": "denied by reviewer"}
    else:
        assert w == {"A": pytest.approx(0.45), "B": pytest.approx(0.45)}
        assert reasons(a.targets)["B"] == (
            "softmax (denied by reviewer; PT_BLOCK_IF_LLM_DENY=false)"
        )
        assert a.excluded.is_empty()
    assert a.reviewer_note == "test reviewer"


def test_unanswered_symbols_count_as_denied() -> None:
    class Silent:
        def review(self, symbols: Sequence[str]) -> dict[str, bool]:
            return {"A": True}

    sc = scores_frame([("A", "T", 1.0, True), ("B", "E", 1.0, True)])
    a = allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt(), Silent())
    assert weights(a) == {"A": pytest.approx(0.9)}
    assert a.reviewer_note == "reviewer Silent"


def test_default_reviewer_is_recorded() -> None:
    sc = scores_frame([("A", "T", 1.0, True)])
    a = allocate(sc, EMPTY, CASH_ONLY, sectors_of(sc), {}, pt())
    assert a.reviewer_note == AllowAll().note
    assert "default reviewer" in a.reviewer_note and "no LLM" in a.reviewer_note


def test_breaker_blocks_buys_but_keeps_or_trims_holdings() -> None:
    # equal scores; N is blocked and not held: out, its share goes to the others.
    # A, B, C at 0.3 each; B is blocked and held at 0.1, so it stays at 0.1 (no buy) and
    # A and C share the rest: 0.4 each. C, blocked and held at 0.5, is trimmed to 0.4.
    sc = scores_frame(
        [("A", "T", 1.0, True), ("B", "E", 1.0, True), ("C", "H", 1.0, True), ("N", "X", 1.0, True)]
    )
    held = book({"B": 10.0, "C": 50.0})
    blocked = {"B": "residual z=+5.0", "C": "headline spike", "N": "sector X"}
    a = allocate(sc, held, Account(100.0, 40.0), sectors_of(sc), blocked, pt())
    w, why = weights(a), reasons(a.targets)
    # A, C share what B leaves: (0.9 - 0.1) / 2 = 0.4 each
    assert w["B"] == pytest.approx(0.1, rel=RTOL)
    assert w["A"] == pytest.approx(0.4, rel=RTOL)
    assert w["C"] == pytest.approx(0.4, rel=RTOL)
    assert "N" not in w
    assert why["B"] == "breaker: residual z=+5.0 (no new buys)"
    assert reasons(a.excluded) == {"N": "breaker: sector X"}


def test_breaker_does_not_flatten_a_full_book() -> None:
    # a global breaker blocks every name: the book stays as it is
    sc = scores_frame([("A", "T", 1.0, True), ("B", "E", 3.0, True)])
    held = book({"A": 40.0, "B": 30.0})
    blocked = {"A": "global", "B": "global"}
    a = allocate(sc, held, Account(100.0, 30.0), sectors_of(sc), blocked, pt())
    assert weights(a) == {"A": pytest.approx(0.4), "B": pytest.approx(0.3)}
    assert a.turnover == pytest.approx(0.0, abs=1e-15)


def test_breaker_on_an_ineligible_holding_sells_it() -> None:
    sc = scores_frame([("A", "T", 1.0, False)])
    a = allocate(sc, book({"A": 20.0}), Account(100.0, 80.0), sectors_of(sc), {"A": "x"}, pt())
    assert weights(a) == {"A": 0.0}
    assert reasons(a.targets)["A"] == "not eligible: filtered by strategist; breaker: x"


# --- turnover cap and cash floor ----------------------------------------------------------


def test_turnover_cap_scales_every_move_equally() -> None:
    # target A 0.9 from current B 0.5: moves +0.9 and -0.5, turnover 1.4 > 0.28 -> x0.2
    sc = scores_frame([("A", "T", 1.0, True)])
    a = allocate(
        sc,
        book({"B": 50.0}),
        Account(100.0, 50.0),
        sectors_of(sc),
        {},
        pt(pt_turnover_cap_pct=0.28),
    )
    w = weights(a)
    assert a.turnover_scale == pytest.approx(0.2, rel=RTOL)
    assert w["A"] == pytest.approx(0.18, rel=RTOL)
    assert w["B"] == pytest.approx(0.4, rel=RTOL)
    assert a.turnover == pytest.approx(0.28, rel=RTOL)


def _floor_case(utility_n: float) -> tuple:
    """H1 0.50 (u 1.0), H2 0.48 (u 0.5), new N; equal scores; cash 2% < 5% floor.

    Raw targets 0.95 / 3 each; moves -0.18333, -0.16333, +0.31667 (sum 0.66333);
    a 0.1 turnover cap scales them by f = 0.1 / 0.66333. The scaled book sums to
    0.98 + f (0.95 - 0.98) > 0.95, so E = 0.03 (1 - f) must be shed.
    """
    sc = scores_frame(
        [("H1", "T", 1.0, True, 1.0), ("H2", "E", 1.0, True, 0.5), ("N", "H", 1.0, True, utility_n)]
    )
    s = pt(pt_gross_max_pct=1.0, pt_turnover_cap_pct=0.1, pt_replacement_fric_bps=10.0)
    a = allocate(sc, book({"H1": 50.0, "H2": 48.0}), Account(100.0, 2.0), sectors_of(sc), {}, s)
    t = 0.95 / 3
    moves = {"H1": t - 0.5, "H2": t - 0.48, "N": t}
    f = 0.1 / sum(abs(m) for m in moves.values())
    scaled = {"H1": 0.5 + f * moves["H1"], "H2": 0.48 + f * moves["H2"], "N": f * moves["N"]}
    excess = 0.03 * (1 - f)
    return a, f, scaled, excess


def test_cash_floor_cuts_a_buy_that_does_not_beat_the_holding_by_the_friction() -> None:
    # N's utility 0.5005 beats H2's 0.5 by 5 bps < 10 bps: cutting N's buy is cheaper
    a, f, scaled, excess = _floor_case(0.5005)
    w = weights(a)
    assert a.turnover_scale == pytest.approx(f, rel=RTOL)
    assert w["N"] == pytest.approx(scaled["N"] - excess, rel=RTOL)
    assert w["H1"] == pytest.approx(scaled["H1"], rel=RTOL)
    assert w["H2"] == pytest.approx(scaled["H2"], rel=RTOL)
    assert sum(w.values()) == pytest.approx(0.95, rel=RTOL)
    assert a.cash_trim == pytest.approx(excess, rel=RTOL)
    assert reasons(a.targets)["N"] == "cash floor trim; softmax"
    assert a.turnover == pytest.approx(0.1 - excess, rel=RTOL)


def test_cash_floor_trims_the_lowest_utility_holding_for_a_better_replacement() -> None:
    # N's utility 0.502 beats H2's by 20 bps > 10 bps: H2 (lowest utility) is trimmed
    a, _, scaled, excess = _floor_case(0.502)
    w = weights(a)
    assert w["H2"] == pytest.approx(scaled["H2"] - excess, rel=RTOL)
    assert w["N"] == pytest.approx(scaled["N"], rel=RTOL)
    assert w["H1"] == pytest.approx(scaled["H1"], rel=RTOL)
    assert sum(w.values()) == pytest.approx(0.95, rel=RTOL)
    assert reasons(a.targets)["H2"] == "cash floor trim; softmax"
    # the floor outranks the turnover cap, by at most what it needs
    assert a.turnover == pytest.approx(0.1 + excess, rel=RTOL)


def test_cash_floor_sells_names_leaving_the_book_first() -> None:
    # OUT (not scored) glides to zero; when the floor needs more it goes before A
    sc = scores_frame([("A", "T", 1.0, True)])
    held = book({"A": 60.0, "OUT": 39.0})
    a = allocate(sc, held, Account(100.0, 1.0), sectors_of(sc), {}, pt(pt_turnover_cap_pct=0.02))
    w = weights(a)
    # moves: A +0.3, OUT -0.39 -> f = 0.02 / 0.69; then trim OUT to reach 0.95
    f = 0.02 / 0.69
    assert w["A"] == pytest.approx(0.6 + f * 0.3, rel=RTOL)
    assert w["A"] + w["OUT"] == pytest.approx(0.95, rel=RTOL)


# --- inputs -----------------------------------------------------------------------------


def test_bad_inputs_are_refused() -> None:
    sc = scores_frame([("A", "T", 1.0, True)])
    with pytest.raises(ValueError, match="duplicate"):
        allocate(pl.concat([sc, sc]), EMPTY, CASH_ONLY, sectors_of(sc), {}, pt())
    with pytest.raises(ValueError, match="long-only"):
        allocate(sc, book({"A": -1.0}), CASH_ONLY, sectors_of(sc), {}, pt())
    no_price = pl.DataFrame(
        {"symbol": ["A"], "qty": [1.0], "price": [None]}, schema=book({}).schema
    )
    with pytest.raises(ValueError, match="no price"):
        allocate(sc, no_price, CASH_ONLY, sectors_of(sc), {}, pt())
    with pytest.raises(ValueError, match="nav"):
        Account(nav=0.0, cash=0.0)


def test_quotes_of_names_not_held_are_ignored() -> None:
    sc = scores_frame([("A", "T", 1.0, True)])
    quotes = pl.DataFrame({"symbol": ["A", "Q"], "qty": [0.0, 0.0], "price": [10.0, None]})
    a = allocate(sc, quotes, CASH_ONLY, sectors_of(sc), {}, pt())
    assert weights(a) == {"A": pytest.approx(0.9)}


# --- properties over random books ------------------------------------------------------------


@st.composite
def random_case(draw: st.DrawFn) -> tuple:
    n = draw(st.integers(1, 60))
    k = draw(st.integers(1, 6))
    syms = [f"S{i:02d}" for i in range(n)]
    sector = [f"sec{draw(st.integers(0, k - 1))}" for _ in syms]
    score = draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=n, max_size=n))
    eligible = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    scores = pl.DataFrame({"symbol": syms, "sector": sector, "score": score, "eligible": eligible})
    held_mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    qty = [float(draw(st.integers(1, 2000))) if h else 0.0 for h in held_mask]
    price = draw(st.lists(st.floats(1, 500, allow_nan=False), min_size=n, max_size=n))
    positions = pl.DataFrame({"symbol": syms, "qty": qty, "price": price})
    value = float(np.dot(qty, price))
    cash = draw(st.floats(0, 2 * value + 10_000, allow_nan=False)) + (0.0 if value else 1.0)
    blocked = {s: f"breaker {s}" for s in syms if draw(st.integers(0, 9)) == 0}
    denied = {s for s in syms if draw(st.integers(0, 9)) == 0}
    s = pt(
        pt_score_exp=draw(st.floats(0.1, 5)),
        pt_gross_max_pct=draw(st.floats(0.3, 1.0)),
        pt_cash_floor_pct=draw(st.floats(0.0, 0.3)),
        pt_max_pos_pct=draw(st.floats(0.02, 0.6)),
        pt_sector_max_pct=draw(st.floats(0.05, 1.0)),
        pt_turnover_cap_pct=draw(st.floats(0.01, 2.0)),
        pt_replacement_fric_bps=draw(st.floats(0, 50)),
        pt_block_if_llm_deny=draw(st.booleans()),
    )
    return scores, positions, Account(nav=value + cash, cash=cash), blocked, denied, s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_case())
def test_allocation_invariants(case: tuple) -> None:
    scores, positions, acct, blocked, denied, s = case
    a = allocate(
        scores, positions, acct, scores.select("symbol", "sector"), blocked, s, Deny(denied)
    )
    t = a.targets
    tw, cw = t["target_weight"].to_numpy(), t["current_weight"].to_numpy()
    tol = 1e-9
    budget = max(0.0, s.pt_gross_max_pct - s.pt_cash_floor_pct)
    limit = min(s.pt_gross_max_pct, 1 - s.pt_cash_floor_pct)
    gross_now = float(cw.sum())

    assert (tw >= 0).all()
    assert tw.sum() <= limit + tol  # the cash floor and the gross cap always hold
    assert tw.sum() <= max(budget, gross_now) + tol  # never above the budget, unless already
    # caps hold, save for holdings already above them that the turnover cap keeps
    assert (tw <= np.maximum(s.pt_max_pos_pct, cw) + tol).all()
    by_sector = t.group_by("sector").agg(
        pl.col("target_weight").sum(), pl.col("current_weight").sum()
    )
    assert (
        by_sector["target_weight"].to_numpy()
        <= np.maximum(s.pt_sector_max_pct, by_sector["current_weight"].to_numpy()) + tol
    ).all()
    if a.turnover_scale == 1.0 and a.cash_trim == 0.0:
        assert (tw <= s.pt_max_pos_pct + tol).all()
        assert (by_sector["target_weight"].to_numpy() <= s.pt_sector_max_pct + tol).all()
    # turnover: within its cap, save what the cash floor needs beyond it
    assert a.turnover == pytest.approx(float(np.abs(t["delta_weight"].to_numpy()).sum()), abs=1e-12)
    assert a.turnover <= s.pt_turnover_cap_pct + max(0.0, gross_now - limit) + tol
    # a breaker's scope gets no buys; names out of the book only shrink
    blocked_rows = t.filter(pl.col("symbol").is_in(list(blocked)))
    assert (blocked_rows["delta_weight"].to_numpy() <= tol).all()
    out = set(a.excluded["symbol"])
    out_rows = t.filter(pl.col("symbol").is_in(list(out)))
    assert (out_rows["delta_weight"].to_numpy() <= tol).all()
    # every row has a reason; excluded names are the scored ones out of the book
    assert t["reason"].null_count() == 0 and a.excluded["reason"].null_count() == 0
    rules = ("not eligible: ", "score <= 0", "breaker: ", "denied by reviewer")
    for why in a.excluded["reason"]:
        assert all(part.startswith(rules) for part in why.split("; ")), why
    ineligible = set(scores.filter(~pl.col("eligible") | (pl.col("score") <= 0))["symbol"])
    assert ineligible <= out


def _polars_reasons(
    flags: Sequence[np.ndarray],
    why: list[str | None],
    brk: list[str | None],
    sector: list[str | None],
    block_if_deny: bool,
) -> tuple[list[str], list[str | None]]:
    """The reasons as the allocator formatted them with polars expressions before
    (kronos e2d8ff5, ``_out_reason`` and ``_reason``): the reference."""
    names = ["scored", "eligible", "positive", "blocked", "denied", "in_book", "nc", "sc", "cut"]
    frame = pl.DataFrame(
        {
            **dict(zip(names, flags, strict=True)),
            "why": pl.Series(why, dtype=pl.String),
            "brk": pl.Series(brk, dtype=pl.String),
            "sector": pl.Series(sector, dtype=pl.String),
        }
    )
    c = pl.col
    out = pl.concat_str(
        pl.when(~c("scored")).then(pl.lit("not scored")),
        pl.when(c("scored") & ~c("eligible")).then(
            pl.format("not eligible: {}", c("why").fill_null("filtered by strategist"))
        ),
        pl.when(c("scored") & ~c("positive")).then(pl.lit("score <= 0")),
        pl.when(c("blocked")).then(pl.format("breaker: {}", c("brk"))),
        pl.when(c("denied")).then(pl.lit("denied by reviewer")),
        separator="; ",
        ignore_nulls=True,
    )
    book = (
        pl.when(c("blocked"))
        .then(pl.format("breaker: {} (no new buys)", c("brk")))
        .when(c("nc"))
        .then(pl.lit("name cap"))
        .when(c("sc"))
        .then(pl.format("sector cap: {}", c("sector")))
        .otherwise(pl.lit("softmax"))
    )
    if not block_if_deny:
        denied = pl.concat_str(book, pl.lit(" (denied by reviewer; PT_BLOCK_IF_LLM_DENY=false)"))
        book = pl.when(c("denied")).then(denied).otherwise(book)
    plain = pl.when(c("in_book")).then(book).otherwise(out)
    reason = pl.when(c("cut")).then(pl.concat_str(pl.lit("cash floor trim; "), plain))
    got = frame.select(out=out, reason=reason.otherwise(plain))
    return got["out"].to_list(), got["reason"].to_list()


@pytest.mark.parametrize("block_if_deny", [True, False])
def test_reasons_match_the_polars_formatting(block_if_deny):
    """Every combination of the nine flags, with and without a strategist reason, a
    breaker reason and a sector, is explained as the polars expressions did."""
    combos = [
        (bits, why, brk, sector)
        for bits in range(1 << 9)
        for why in (None, "market_cap missing")
        for brk in (None, "residual z=+4.2")
        for sector in (None, "Energy")
    ]
    flags = [np.array([bits >> k & 1 for bits, *_ in combos], dtype=bool) for k in range(9)]
    why, brk, sector = ([row[k] for row in combos] for k in (1, 2, 3))
    expected = _polars_reasons(flags, why, brk, sector, block_if_deny)
    assert _reasons(flags, why, brk, sector, block_if_deny) == expected
