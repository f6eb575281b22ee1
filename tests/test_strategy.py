"""Strategist and regime tuner: blend, tilts, filters, regime knobs, point in time, writers.

Hand-made frames set the standardized ``z_*`` columns directly, so each expected
score is whitepaper arithmetic (section 6): 0.5 mom_s + 0.2 mom_m + 0.15 quality
+ 0.10 sentiment + 0.06 revisions + 0.04 ratings, plus the sector tilt.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kronos.config import DataSettings, StrategySettings
from kronos.data import loaders, readers
from kronos.data.ingest import ingest
from kronos.data.readers import PointInTime
from kronos.data.schema import TABLES
from kronos.data.store import Store
from kronos.decision import regime as R
from kronos.decision import strategist as St
from kronos.decision.regime import RegimeKnobs
from kronos.decision.strategist import BLEND, CONTRIBUTIONS
from kronos.features import strategist as F
from kronos.features.strategist import INPUT_SCHEMA

RTOL = 1e-12
ON = RegimeKnobs("on", 10.0, 0.6, 0.1, "test: risk-on")
OFF = RegimeKnobs("off", 20.0, 0.4, -0.1, "test: risk-off")
ASOF = date(2002, 6, 13)  # a Thursday (the next session exists) inside the 2000-01 .. 2003-11 store
Z_COLS = [f"z_{k}" for k in BLEND]


def strat(**kw: object) -> StrategySettings:
    """Settings with every field explicit, so STRAT_* variables in the environment cannot leak."""
    base = {
        "strat_min_market_cap": 10e9,
        "strat_min_dollar_vol": 10e6,
        "strat_reco_topk": 20,
        "strat_enable_turnaround": False,
        "strat_mom_short_days": 5,
        "strat_mom_medium_days": 60,
        "strat_sentiment_days": 5,
        "strat_forecast_in_score": False,
        "strat_forecast_weight": 0.1,
        "strat_tilt": 0.25,
        "strat_breadth_on": 0.5,
        "strat_threshold_bps_on": 10.0,
        "strat_threshold_bps_off": 20.0,
    }
    return StrategySettings(**{**base, **kw})


def features(rows: list[dict]) -> pl.DataFrame:
    """Standardized features: defaults are a large, liquid, neutral Health Care name."""
    default = {
        "sector": "Health Care",
        "market_cap": 50e9,
        "avg_dollar_vol_60d": 100e6,
        "mom_m": 0.05,
        "rev_eps_chg": 0.01,
        **dict.fromkeys(Z_COLS, 0.0),
    }
    schema = {
        "symbol": pl.String(),
        "sector": pl.String(),
        "market_cap": pl.Float64(),
        "avg_dollar_vol_60d": pl.Float64(),
        "mom_m": pl.Float64(),
        "rev_eps_chg": pl.Float64(),
        **dict.fromkeys(Z_COLS, pl.Float64()),
    }
    return pl.DataFrame([{**default, **r} for r in rows], schema=schema)


def by_symbol(frame: pl.DataFrame, col: str) -> dict:
    return dict(zip(frame["symbol"].to_list(), frame[col].to_list(), strict=True))


# ---------------------------------------------------------------- blend and tilts


def test_blend_weights_are_the_whitepaper_weights():
    assert dict(BLEND) == {
        "mom_s": 0.5,
        "mom_m": 0.2,
        "quality": 0.15,
        "sentiment": 0.10,
        "revisions": 0.06,
        "ratings": 0.04,
    }
    assert math.isclose(sum(BLEND.values()), 1.05, rel_tol=RTOL)  # as published, not renormalized


def test_blend_pinned_by_hand():
    f = features(
        [
            # A: only short momentum: 0.5 * 1 = 0.5
            {"symbol": "A", "z_mom_s": 1.0},
            # B: 0.5*1 - 0.2*1 + 0.15*2 + 0.10*0.5 - 0.06*2 + 0.04*3
            #    = 0.5 - 0.2 + 0.3 + 0.05 - 0.12 + 0.12 = 0.65
            {
                "symbol": "B",
                "z_mom_s": 1.0,
                "z_mom_m": -1.0,
                "z_quality": 2.0,
                "z_sentiment": 0.5,
                "z_revisions": -2.0,
                "z_ratings": 3.0,
            },
            # C: every z = 1: 0.5 + 0.2 + 0.15 + 0.10 + 0.06 + 0.04 = 1.05
            {"symbol": "C", **dict.fromkeys(Z_COLS, 1.0)},
            # D: every z = -0.5: -0.525
            {"symbol": "D", **dict.fromkeys(Z_COLS, -0.5)},
        ]
    )
    out = St.score(f, OFF, strat())
    got = by_symbol(out, "score")
    want = {"A": 0.5, "B": 0.65, "C": 1.05, "D": -0.525}
    for sym, value in want.items():
        assert math.isclose(got[sym], value, rel_tol=RTOL), (sym, got[sym], value)
    b = out.filter(pl.col("symbol") == "B").row(0, named=True)
    assert math.isclose(b["c_quality"], 0.3, rel_tol=RTOL)
    assert math.isclose(b["c_revisions"], -0.12, rel_tol=RTOL)
    assert b["c_forecast"] == 0.0 and b["c_tilt"] == 0.0
    assert out["symbol"].to_list() == ["C", "B", "A", "D"]  # sorted by score, descending


@pytest.mark.parametrize(
    ("knobs", "down"),
    [(ON, {"Utilities", "Real Estate"}), (OFF, {"Information Technology", "Industrials"})],
)
def test_tilts_follow_the_regime(knobs: RegimeKnobs, down: set[str]):
    sectors = ["Utilities", "Real Estate", "Information Technology", "Industrials", "Energy"]
    f = features([{"symbol": s[:4], "sector": s, "z_mom_s": 0.4} for s in sectors])
    out = St.score(f, knobs, strat(strat_tilt=0.3))
    for row in out.iter_rows(named=True):
        tilt = -0.3 if row["sector"] in down else 0.0
        assert row["c_tilt"] == tilt, row["sector"]
        assert math.isclose(row["score"], 0.5 * 0.4 + tilt, rel_tol=RTOL)


def test_contributions_sum_to_score():
    f = features(
        [
            {"symbol": "X", "sector": "Utilities", "z_mom_s": 0.3, "z_ratings": -1.0},
            {"symbol": "Y", "sector": "Industrials", "z_quality": 2.2, "z_sentiment": -0.7},
        ]
    )
    for knobs in (ON, OFF):
        out = St.score(f, knobs, strat())
        total = out.select(total=pl.sum_horizontal(CONTRIBUTIONS))["total"]
        assert (total - out["score"]).abs().max() == 0.0
        assert set(CONTRIBUTIONS) <= set(out.columns)


# ---------------------------------------------------------------- filters


def test_universe_filters_keep_excluded_names_with_reasons():
    f = features(
        [
            {"symbol": "OK"},
            {"symbol": "SMALL", "market_cap": 5e9},
            {"symbol": "NOCAP", "market_cap": None},
            {"symbol": "THIN", "avg_dollar_vol_60d": 2e6},
            {"symbol": "NOVOL", "avg_dollar_vol_60d": None, "market_cap": 1e9},
            {"symbol": "EDGE", "market_cap": 10e9, "avg_dollar_vol_60d": 10e6},  # >= passes
        ]
    )
    out = St.score(f, ON, strat())
    assert out.height == 6
    eligible = by_symbol(out, "eligible")
    reason = by_symbol(out, "excluded_reason")
    assert eligible == {
        "OK": True,
        "EDGE": True,
        "SMALL": False,
        "NOCAP": False,
        "THIN": False,
        "NOVOL": False,
    }
    assert reason["OK"] is None and reason["EDGE"] is None
    assert reason["SMALL"] == "market_cap 5000000000.0 < 10000000000.0"
    assert reason["NOCAP"] == "market_cap missing"
    assert reason["THIN"] == "avg_dollar_vol_60d 2000000.0 < 10000000.0"
    assert reason["NOVOL"] == (
        "market_cap 1000000000.0 < 10000000000.0; avg_dollar_vol_60d missing"
    )


def test_turnaround_filter_needs_positive_momentum_and_revisions():
    f = features(
        [
            {"symbol": "BOTH", "mom_m": 0.1, "rev_eps_chg": 0.02},
            {"symbol": "NOMOM", "mom_m": -0.1, "rev_eps_chg": 0.02},
            {"symbol": "NOREV", "mom_m": 0.1, "rev_eps_chg": 0.0},
            {"symbol": "NULLREV", "mom_m": 0.1, "rev_eps_chg": None},
        ]
    )
    off = St.score(f, ON, strat())
    assert off["eligible"].all()
    on = St.score(f, ON, strat(strat_enable_turnaround=True))
    reason = by_symbol(on, "excluded_reason")
    assert by_symbol(on, "eligible") == {
        "BOTH": True,
        "NOMOM": False,
        "NOREV": False,
        "NULLREV": False,
    }
    assert reason["NOMOM"] == "turnaround: mom_m -0.1 <= 0"
    assert reason["NOREV"] == "turnaround: rev_eps_chg 0.0 <= 0"
    assert reason["NULLREV"] == "turnaround: rev_eps_chg missing"


def test_blocked_symbols_are_excluded_with_the_breaker_reason():
    f = features([{"symbol": "A"}, {"symbol": "B"}])
    out = St.score(f, ON, strat(), blocked={"B": "residual z 5.1 > 4"})
    assert by_symbol(out, "eligible") == {"A": True, "B": False}
    assert by_symbol(out, "excluded_reason")["B"] == "breaker: residual z 5.1 > 4"


def test_duplicate_symbols_are_refused():
    with pytest.raises(ValueError, match="more than once"):
        St.score(features([{"symbol": "A"}, {"symbol": "A"}]), ON, strat())


# ---------------------------------------------------------------- forecast


def test_forecast_z_formula_and_optional_entry_into_the_score():
    f = features([{"symbol": s, "z_mom_s": 0.2} for s in ("A", "B", "C", "D", "E")])
    fc = pl.DataFrame(
        {
            "symbol": ["A", "B", "C", "D"],
            # A: sigma = (0.0329 - -0.0329) / 3.29 = 0.02; z = 0.005 / 0.02 = 0.25
            # B: sigma = 0.01; z = -0.012 / 0.01 = -1.2
            # C: z = 0.5 / 0.02 = 25, enters the score clipped to 3
            # D: zero width: no z
            "p05": [-0.0329, -0.0229, -0.0329, 0.01],
            "p50": [0.005, -0.012, 0.5, 0.01],
            "p95": [0.0329, 0.0100, 0.0329, 0.01],
        }
    )
    plain = St.score(f, ON, strat(), fc)
    fz = by_symbol(plain, "forecast_z")
    assert math.isclose(fz["A"], 0.25, rel_tol=1e-9)
    assert math.isclose(fz["B"], -1.2, rel_tol=1e-9)
    assert math.isclose(fz["C"], 25.0, rel_tol=1e-9)
    assert fz["D"] is None and fz["E"] is None
    assert (plain["c_forecast"] == 0.0).all()
    assert all(math.isclose(v, 0.1, rel_tol=RTOL) for v in plain["score"])  # 0.5 * 0.2

    used = St.score(f, ON, strat(strat_forecast_in_score=True, strat_forecast_weight=0.2), fc)
    cf = by_symbol(used, "c_forecast")
    want = {"A": 0.2 * 0.25, "B": 0.2 * -1.2, "C": 0.2 * 3.0, "D": 0.0, "E": 0.0}
    for sym, value in want.items():
        assert math.isclose(cf[sym], value, rel_tol=1e-9, abs_tol=1e-15), sym
        assert math.isclose(by_symbol(used, "score")[sym], 0.1 + value, rel_tol=1e-9), sym


def test_forecasts_use_step_one_and_refuse_duplicates():
    f = features([{"symbol": "A"}])
    fc = pl.DataFrame(
        {"symbol": ["A", "A"], "step": [1, 2], "p05": [-0.02, -0.2], "p50": [0.01, 0.5]}
    ).with_columns(p95=-pl.col("p05"))
    out = St.score(f, ON, strat(), fc)
    assert math.isclose(out["forecast_z"][0], 0.01 / (0.04 / 3.29), rel_tol=1e-12)
    with pytest.raises(ValueError, match="duplicated"):
        St.score(f, ON, strat(), fc.drop("step"))


# ---------------------------------------------------------------- standardize


def inputs(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=dict(INPUT_SCHEMA))


def test_standardize_zscores_nulls_and_missing():
    frame = inputs(
        [
            # mom_s 1, 2, 3, null: mean 2, sample sd 1 -> z -1, 0, 1 and 0 for the null
            {"symbol": "A", "mom_s": 1.0, "z_roe": 1.0, "z_dta": 1.0, "rating": 0.5},
            {"symbol": "B", "mom_s": 2.0, "z_roe": 3.0, "rating": 0.5},
            {"symbol": "C", "mom_s": 3.0, "z_gm": -2.0, "rating": 0.5},
            {"symbol": "D", "mom_s": None, "sentiment": float("nan"), "rating": 0.5},
        ]
    )
    out = St.standardize(frame)
    assert out["z_mom_s"].to_list() == [-1.0, 0.0, 1.0, 0.0]
    # quality_raw: A mean(1, -1) = 0; B 3; C -2; D none.
    assert out["quality_raw"].to_list() == [0.0, 3.0, -2.0, None]
    # z of (0, 3, -2): mean 1/3, sd sqrt(((1/3)^2 + (8/3)^2 + (7/3)^2) / 2) = sqrt(19/3)
    sd = math.sqrt(19 / 3)
    want = [(0 - 1 / 3) / sd, (3 - 1 / 3) / sd, (-2 - 1 / 3) / sd, 0.0]
    for got, w in zip(out["z_quality"].to_list(), want, strict=True):
        assert math.isclose(got, w, rel_tol=RTOL, abs_tol=1e-15)
    assert out["z_ratings"].to_list() == [0.0] * 4  # no spread: neutral
    assert out["z_sentiment"].to_list() == [0.0] * 4  # NaN counts as missing
    assert out["missing"].to_list() == [
        "mom_m,sentiment,revisions",
        "mom_m,sentiment,revisions",
        "mom_m,sentiment,revisions",
        "mom_s,mom_m,quality,sentiment,revisions",
    ]


def test_standardize_clips_at_three():
    # 19 zeros and a one: mean 0.05, sample sd sqrt((19 * 0.0025 + 0.9025) / 19) = sqrt(0.05);
    # the one is (0.95 / 0.2236) = 4.249 sd out, clipped to 3; zeros are -0.05 / 0.2236.
    frame = inputs([{"symbol": f"S{i:02d}", "mom_m": 1.0 if i == 0 else 0.0} for i in range(20)])
    z = St.standardize(frame)["z_mom_m"].to_list()
    assert z[0] == 3.0
    assert all(math.isclose(v, -0.05 / math.sqrt(0.05), rel_tol=RTOL) for v in z[1:])


@hsettings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.sampled_from([0.0, -0.0, 1.0, 1e-300]),
        ),
        max_size=300,
    )
)
def test_zscore_is_the_polars_expression_bit_for_bit(values):
    """The numpy z-score equals ``((x - mean) / sd).clip(-3, 3)`` evaluated by polars, with
    nulls and no spread 0 (the expression this module used before), to the last bit."""
    x = pl.Series("x", values, dtype=pl.Float64)
    col = pl.col("x")
    expected = (
        pl.DataFrame({"x": x})
        .select(
            pl.when(col.std() > 0)
            .then(((col - col.mean()) / col.std()).clip(-3.0, 3.0))
            .otherwise(0.0)
            .fill_null(0.0)
        )
        .to_series()
        .to_numpy()
    )
    assert St._zscore(x).tobytes() == expected.tobytes()


# ---------------------------------------------------------------- regime


def regime_inputs(moms: list[float | None], zrevs: list[float | None], caps: list[float | None]):
    return inputs(
        [
            {"symbol": f"S{i}", "mom_60": m, "z_rev": z, "market_cap": c}
            for i, (m, z, c) in enumerate(zip(moms, zrevs, caps, strict=True))
        ]
    )


def test_regime_risk_on_when_breadth_and_revisions_are_strong():
    big, small = 20e9, 1e9
    # 5 large caps, 3 positive -> breadth 0.6; median z_rev of (-1, 0.2, 0.3, 0.5, 2) = 0.3.
    # The small caps (all negative momentum) do not count.
    frame = regime_inputs(
        [0.1, 0.2, 0.05, -0.1, -0.3, -0.5, -0.5],
        [-1.0, 0.2, 0.3, 0.5, 2.0, -3.0, -3.0],
        [big] * 5 + [small] * 2,
    )
    k = R.regime(frame, strat())
    assert k.risk_regime == "on" and k.threshold_bps == 10.0
    assert math.isclose(k.breadth, 0.6, rel_tol=RTOL)
    assert math.isclose(k.median_z_rev, 0.3, rel_tol=RTOL)
    assert "risk-on" in k.reason and "breadth 0.600" in k.reason
    # The same breadth below a higher bar: risk-off with the off threshold.
    k_off = R.regime(frame, strat(strat_breadth_on=0.61, strat_threshold_bps_off=25))
    assert k_off.risk_regime == "off" and k_off.threshold_bps == 25.0


def test_regime_risk_off_on_weak_breadth_or_negative_revisions():
    big = 20e9
    weak = regime_inputs([0.1, -0.2, -0.1, None], [1.0, 1.0, 1.0, 1.0], [big] * 4)
    k = R.regime(weak, strat())
    assert k.risk_regime == "off" and k.threshold_bps == 20.0
    assert math.isclose(k.breadth, 1 / 3, rel_tol=RTOL)  # the null mom_60 is not counted
    neg = regime_inputs([0.1, 0.2, 0.3], [-0.5, -0.1, 0.4], [big] * 3)
    k = R.regime(neg, strat())
    assert k.breadth == 1.0 and math.isclose(k.median_z_rev, -0.1, rel_tol=RTOL)
    assert k.risk_regime == "off"
    none = regime_inputs([0.1], [1.0], [1e9])
    k = R.regime(none, strat())
    assert k.risk_regime == "off" and k.breadth is None and k.median_z_rev is None


def test_regime_of_a_price_only_universe_follows_breadth():
    # no market caps, no z_rev (skfolio's prices): with the size filter off,
    # every name counts and breadth alone decides
    strong = regime_inputs([0.1, 0.2, -0.1], [None, None, None], [None, None, None])
    k = R.regime(strong, strat(strat_min_market_cap=0))
    assert k.risk_regime == "on" and math.isclose(k.breadth, 2 / 3, rel_tol=RTOL)
    assert k.median_z_rev is None and "median z_rev unknown" in k.reason
    weak = regime_inputs([0.1, -0.2, -0.1], [None, None, None], [None, None, None])
    assert R.regime(weak, strat(strat_min_market_cap=0)).risk_regime == "off"
    # with the filter on, names without a market cap are not large caps
    assert R.regime(strong, strat()).breadth is None


def test_a_turbulent_reading_of_the_regime_encoder_forces_risk_off():
    from kronos.features.regime import RegimeReading

    big = 20e9
    strong = regime_inputs([0.1, 0.2, 0.3], [0.5, 0.1, 0.4], [big] * 3)
    assert R.regime(strong, strat()).risk_regime == "on"

    def reading(p: float) -> RegimeReading:
        return RegimeReading(date(2024, 1, 2), 0.0, 1 - p, p, "regime", "v1")

    calm = R.regime(strong, strat(), reading(0.49))
    assert calm.risk_regime == "on" and calm.p_turbulent == 0.49
    assert "p_turbulent 0.490 on 2024-01-02 (off at >= 0.5)" in calm.reason
    rough = R.regime(strong, strat(), reading(0.5))  # at the threshold: off
    assert rough.risk_regime == "off" and rough.threshold_bps == 20.0
    assert R.regime(strong, strat(strat_turbulent_off=1.01), reading(1.0)).risk_regime == "on"
    # a calm reading never turns a weak market risk-on
    weak = regime_inputs([0.1, -0.2, -0.1], [1.0, 1.0, 1.0], [big] * 3)
    assert R.regime(weak, strat(), reading(0.0)).risk_regime == "off"


def test_knob_rows():
    k = RegimeKnobs("on", 10.0, 0.6, None, "why")
    rows = R.knob_rows(k, date(2024, 1, 2), "run-1", data_settings=DataSettings())
    assert rows["knob"].to_list() == [
        "risk_regime",
        "threshold_bps",
        "breadth",
        "median_z_rev",
        "p_turbulent",
    ]
    assert rows["value"].to_list() == ["on", "10.0", "0.6", "nan", "nan"]
    assert set(rows["reason"]) == {"why"} and set(rows["run_id"]) == {"run-1"}
    # a date is stamped with its market close: 16:00 New York = 21:00 UTC in January
    assert set(rows["asof"]) == {datetime(2024, 1, 2, 21, tzinfo=UTC)}


# ---------------------------------------------------------------- recommendations


def test_recommendations_top_k_order_side_and_json():
    f = features(
        [
            {"symbol": "A", "z_mom_s": 1.0},  # 0.5
            {"symbol": "B", "z_mom_s": 2.0},  # 1.0
            {"symbol": "C", "z_mom_s": 3.0, "market_cap": 1e9},  # 1.5 but excluded
            {"symbol": "D", "z_mom_s": -1.0},  # -0.5
            {"symbol": "E", "z_mom_s": 1.0},  # 0.5, ties with A: symbol order
            {"symbol": "F"},  # 0.0
        ]
    )
    scored = St.score(f, OFF, strat())
    recs = St.recommendations(
        scored, date(2024, 6, 3), strat(strat_reco_topk=5), "run-9", data_settings=DataSettings()
    )
    assert recs["symbol"].to_list() == ["B", "A", "E", "F", "D"]
    assert recs["rank"].to_list() == [1, 2, 3, 4, 5]
    assert recs["side"].to_list() == ["buy", "buy", "buy", "hold", "sell"]
    assert set(recs["asof"]) == {datetime(2024, 6, 3, 20, tzinfo=UTC)}  # 16:00 EDT
    assert set(recs["run_id"]) == {"run-9"}
    for row in recs.iter_rows(named=True):
        c = json.loads(row["contributions"])
        assert list(c) == list(CONTRIBUTIONS)
        src = scored.filter(pl.col("symbol") == row["symbol"]).row(0, named=True)
        assert c == {k: src[k] for k in CONTRIBUTIONS}
        assert math.isclose(sum(c.values()), row["score"], rel_tol=RTOL, abs_tol=1e-15)
    top2 = St.recommendations(
        scored, date(2024, 6, 3), strat(strat_reco_topk=2), data_settings=DataSettings()
    )
    assert top2["symbol"].to_list() == ["B", "A"] and top2["run_id"].to_list() == [None, None]


# ---------------------------------------------------------------- properties

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)
maybe = st.one_of(st.none(), st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False))
row_strategy = st.fixed_dictionaries(
    {
        "sector": st.sampled_from(
            ["Utilities", "Real Estate", "Information Technology", "Industrials", "Energy", None]
        ),
        "market_cap": maybe,
        "avg_dollar_vol_60d": maybe,
        "mom_m": st.one_of(st.none(), finite),
        "rev_eps_chg": st.one_of(st.none(), finite),
        **{c: finite for c in Z_COLS},
        "p50": st.one_of(st.none(), st.floats(-0.2, 0.2)),
        "width": st.floats(0, 0.5),
    }
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(row_strategy, min_size=1, max_size=25),
    regime_on=st.booleans(),
    topk=st.integers(1, 12),
    turnaround=st.booleans(),
    use_forecast=st.booleans(),
    min_cap=st.sampled_from([0.0, 10e9]),
)
def test_properties_contributions_sum_and_excluded_never_recommended(
    rows, regime_on, topk, turnaround, use_forecast, min_cap
):
    f = features(
        [
            {k: v for k, v in r.items() if k not in ("p50", "width")} | {"symbol": f"S{i}"}
            for i, r in enumerate(rows)
        ]
    )
    fc = pl.DataFrame(
        {
            "symbol": [f"S{i}" for i, r in enumerate(rows) if r["p50"] is not None],
            "p50": [r["p50"] for r in rows if r["p50"] is not None],
            "width": [r["width"] for r in rows if r["p50"] is not None],
        },
        schema={"symbol": pl.String(), "p50": pl.Float64(), "width": pl.Float64()},
    ).select("symbol", "p50", p05=-pl.col("width") / 2, p95=pl.col("width") / 2)
    cfg = strat(
        strat_reco_topk=topk,
        strat_enable_turnaround=turnaround,
        strat_forecast_in_score=use_forecast,
        strat_min_market_cap=min_cap,
    )
    scored = St.score(f, ON if regime_on else OFF, cfg, fc)
    c = scored.select(CONTRIBUTIONS).to_numpy()
    assert scored.height == len(rows)
    assert abs(c.sum(axis=1) - scored["score"].to_numpy()).max() <= 1e-12
    assert (scored["eligible"] == scored["excluded_reason"].is_null()).all()
    recs = St.recommendations(scored, date(2024, 1, 2), cfg, data_settings=DataSettings())
    excluded = set(scored.filter(~pl.col("eligible"))["symbol"])
    assert not excluded & set(recs["symbol"])
    n_ok = scored["eligible"].sum()
    assert recs.height == min(topk, n_ok)
    assert recs["rank"].to_list() == list(range(1, recs.height + 1))
    assert recs["score"].is_sorted(descending=True)
    if recs.height:
        rest = scored.filter(pl.col("eligible") & ~pl.col("symbol").is_in(recs["symbol"].implode()))
        assert (rest["score"] <= recs["score"].min()).all()


@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=30))
def test_property_standardized_values_are_bounded_and_never_null(values):
    frame = inputs([{"symbol": f"S{i}", "sentiment": v} for i, v in enumerate(values)])
    z = St.standardize(frame)["z_sentiment"]
    assert z.null_count() == 0 and z.is_finite().all()
    assert z.abs().max() <= 3.0
    assert (z.filter(frame["sentiment"].is_null()) == 0.0).all()


# ---------------------------------------------------------------- revisions fallback


def test_combine_revisions_falls_back_to_local_estimates():
    view = pl.DataFrame(
        {"symbol": ["A", "B"], "rev_eps_chg": [0.1, None], "z_rev_eps": [1.5, None]}
    )
    local = pl.DataFrame(
        {
            "symbol": ["A", "B", "C"],
            "rev_eps_local": [0.2, -0.05, None],
            "z_rev_local": [2.0, -0.7, None],
        }
    )
    out = F.combine_revisions(view, local).sort("symbol")
    assert out.rows() == [
        ("A", 1.5, 0.1, "fmp_revisions_cs"),
        ("B", -0.7, -0.05, "local_estimates"),
        ("C", None, None, None),
    ]


def test_local_revisions_by_hand():
    est = {
        "symbol": pl.String(),
        "period_end": pl.Date(),
        "period": pl.String(),
        "eps_avg": pl.Float64(),
    }
    now = pl.DataFrame(
        [
            ("A", date(2024, 3, 31), "quarter", 1.00),  # past period: ignored
            ("A", date(2024, 6, 30), "quarter", 1.10),  # nearest upcoming
            ("A", date(2024, 9, 30), "quarter", 9.00),
            ("B", date(2024, 6, 30), "quarter", -0.004),
            ("C", date(2024, 6, 30), "quarter", 2.00),  # no snapshot 30 days ago
        ],
        schema=est,
        orient="row",
    )
    prev = pl.DataFrame(
        [("A", date(2024, 6, 30), "quarter", 1.00), ("B", date(2024, 6, 30), "quarter", 0.001)],
        schema=est,
        orient="row",
    )
    out = F.local_revisions(now, prev, date(2024, 5, 15)).sort("symbol")
    # A: (1.10 - 1.00) / 1.00 = 0.1; B: (-0.004 - 0.001) / max(0.001, 0.01) = -0.5
    got = by_symbol(out, "rev_eps_local")
    assert math.isclose(got["A"], 0.1, rel_tol=1e-12)
    assert math.isclose(got["B"], -0.5, rel_tol=1e-12)
    assert got["C"] is None
    # z over (0.1, -0.5): mean -0.2, sd sqrt(0.18) -> +/- 0.3 / 0.42426 = +/- 0.70711
    z = by_symbol(out, "z_rev_local")
    assert math.isclose(z["A"], 0.3 / math.sqrt(0.18), rel_tol=1e-12)
    assert math.isclose(z["B"], -0.3 / math.sqrt(0.18), rel_tol=1e-12)
    assert by_symbol(out, "period_end")["A"] == date(2024, 6, 30)


# ---------------------------------------------------------------- store: reads and writes


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 synthetic symbols over 4 years with all reference data (closed; copy or read-only)."""
    path = tmp_path_factory.mktemp("strategy") / "kronos.duckdb"
    with Store.open(path) as s:
        loaders.load_synthetic(s, n_symbols=30, years=4, seed=1)
    return path


@pytest.fixture(scope="module")
def asof_inputs(synthetic_db: Path) -> pl.DataFrame:
    with Store.open(synthetic_db, read_only=True) as s:
        return F.strategist_inputs(s, ASOF, None, settings=strat(), data_settings=DataSettings())


def test_inputs_on_the_synthetic_store(synthetic_db: Path, asof_inputs: pl.DataFrame):
    inp = asof_inputs
    assert inp.schema == pl.Schema(INPUT_SCHEMA)
    assert inp.height == 30 and inp["symbol"].is_unique().all()
    assert inp.null_count().row(0) == (0,) * inp.width  # every input known for every symbol
    assert set(inp["rating"]) <= {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert set(inp["rev_source"]) == {"fmp_revisions_cs"}
    with Store.open(synthetic_db, read_only=True) as s:
        rets = readers.returns(s, ASOF, ["SYN0007"], settings=DataSettings()).sort("ts")
        cutoff = PointInTime.at(ASOF, settings=DataSettings()).cutoff
        soc = readers.social(
            s, ASOF, ["SYN0007"], start=ASOF - timedelta(days=10), settings=DataSettings()
        ).filter(pl.col("ts") > cutoff - timedelta(days=5))
        rev = readers.revisions(s, ASOF, ["SYN0007"], settings=DataSettings())
        rating = readers.ratings(s, ASOF, ["SYN0007"], settings=DataSettings())["rating_score"][0]
        liq = readers.liquidity(s, ASOF, ["SYN0007"], settings=DataSettings())
    row = inp.filter(pl.col("symbol") == "SYN0007").row(0, named=True)
    assert rets["ts"][-1] == ASOF
    assert math.isclose(row["mom_s"], rets["log_ret"].tail(5).sum(), rel_tol=1e-12)
    assert math.isclose(row["mom_m"], rets["log_ret"].tail(60).sum(), rel_tol=1e-12)
    assert math.isclose(row["sentiment"], soc["senti_mean"].mean(), rel_tol=1e-12)
    assert soc.height == 4  # Mon..Thu 21:00 UTC: the window is (Jun 9 04:00, Jun 14 04:00] UTC
    # DuckDB's window sums may differ in the last bits between two reads: compare to 1e-12
    assert math.isclose(row["revisions"], rev["z_rev_eps"][0], rel_tol=1e-12)
    assert row["rating"] == (rating - 3) / 2
    assert row["avg_dollar_vol_60d"] == liq["avg_dollar_vol_60d"][0]
    assert liq["ts"][0] == ASOF


def test_local_revisions_reproduce_fmp_revisions_cs(synthetic_db: Path):
    with Store.open(synthetic_db, read_only=True) as s:
        cutoff = PointInTime.at(ASOF, settings=DataSettings()).cutoff
        local = F.local_revisions(
            readers.estimates(s, ASOF, settings=DataSettings()),
            readers.estimates(s, cutoff - timedelta(days=30), settings=DataSettings()),
            ASOF,
        )
        view = readers.revisions(s, ASOF, settings=DataSettings())
    j = view.join(local, on="symbol", how="inner")
    assert j.height == 30
    assert (j["period_end"] == j["period_end_right"]).all()
    assert (j["rev_eps_chg"] - j["rev_eps_local"]).abs().max() < 1e-12
    assert (j["z_rev_eps"] - j["z_rev_local"]).abs().max() < 1e-12


def test_inputs_are_point_in_time(synthetic_db: Path, tmp_path: Path, asof_inputs: pl.DataFrame):
    path = tmp_path / "copy.duckdb"
    shutil.copy(synthetic_db, path)
    later = datetime(2002, 6, 17, 14, tzinfo=UTC)  # the Monday after ASOF
    with Store.open(path) as s:
        assert_frame_equal(
            F.strategist_inputs(s, ASOF, None, settings=strat(), data_settings=DataSettings()),
            asof_inputs,
        )

        def reingest(table: str, sql: str) -> None:
            ingest(s, table, [s.con.sql(sql).pl()], source="test", origin="test")

        newest = "QUALIFY row_number() OVER (PARTITION BY symbol ORDER BY {} DESC) = 1"
        # Bars after ASOF change (prices and volumes); returns and liquidity views follow.
        reingest(
            "bars",
            "SELECT * REPLACE (adj_close * 3 AS adj_close, close * 3 AS close, "
            "open * 3 AS open, high * 3 AS high, low * 3 AS low, volume * 9 AS volume) "
            f"FROM bars WHERE ts > DATE '{ASOF}'",
        )
        # A restatement of the latest quarter, and new key metrics, known only later.
        for table in ("fmp_income_statement", "fmp_key_metrics"):
            reingest(
                table,
                f"SELECT * REPLACE (TIMESTAMPTZ '{later}' AS available_at, "
                '\'{"netIncome": 1e12, "revenue": 1, "grossProfit": 1, '
                '"marketCap": 1}\' AS payload) '
                f"FROM {table} WHERE available_at <= TIMESTAMPTZ '{ASOF}' "
                + newest.format("period_end"),
            )
        # A new profile, a late rating dated before ASOF, new estimate snapshots.
        reingest(
            "dim_company_profile",
            f"SELECT * REPLACE (TIMESTAMPTZ '{later}' AS available_at, 'Utilities' AS sector, "
            "1.0 AS market_cap) FROM dim_company_profile",
        )
        reingest(
            "fmp_rating",
            f"SELECT * REPLACE (DATE '{ASOF - timedelta(days=1)}' AS rating_date, "
            f"TIMESTAMPTZ '{later}' AS available_at, 1.0 AS rating_score) FROM fmp_rating "
            + newest.format("rating_date"),
        )
        reingest(
            "fmp_analyst_estimates",
            f"SELECT * REPLACE (TIMESTAMPTZ '{later}' AS available_at, eps_avg * 5 + 1 AS eps_avg) "
            f"FROM fmp_analyst_estimates WHERE period_end > DATE '{ASOF}' "
            "QUALIFY row_number() OVER (PARTITION BY symbol, period_end ORDER BY available_at "
            "DESC) = 1",
        )
        # Social rows after the cutoff (ASOF's 21:00 UTC row is known at ASOF) flip sign.
        reingest(
            "social_features",
            "SELECT * REPLACE (-senti_mean AS senti_mean) FROM social_features "
            f"WHERE ts > TIMESTAMPTZ '{PointInTime.at(ASOF, settings=DataSettings()).cutoff}'",
        )
        after = F.strategist_inputs(s, ASOF, None, settings=strat(), data_settings=DataSettings())
        seen_later = F.strategist_inputs(
            s, date(2002, 6, 18), None, settings=strat(), data_settings=DataSettings()
        )
    assert_frame_equal(after, asof_inputs)
    # The changes are real: a day later they show.
    assert set(seen_later["sector"]) == {"Utilities"}
    assert set(seen_later["rating"]) == {-1.0}
    assert (seen_later["market_cap"] == 1.0).all()


def test_writers_are_idempotent_per_asof(store: Store):
    f = features([{"symbol": s, "z_mom_s": v} for s, v in (("A", 1.0), ("B", -1.0), ("C", 0.5))])
    cfg = strat(strat_reco_topk=3)
    day1, day2 = date(2024, 6, 3), date(2024, 6, 4)
    recos1 = St.recommendations(St.score(f, ON, cfg), day1, cfg, "r1", data_settings=DataSettings())
    recos2 = St.recommendations(St.score(f, ON, cfg), day2, cfg, "r2", data_settings=DataSettings())

    def stored(table: str) -> pl.DataFrame:
        return store.con.sql(f'SELECT * FROM {table} ORDER BY "asof", 2').pl()

    assert St.write_recos(store, recos1, data_settings=DataSettings()) == 3
    assert St.write_recos(store, recos2, data_settings=DataSettings()) == 3
    first = stored("strategist_recos")
    assert (
        St.write_recos(store, recos1, data_settings=DataSettings()) == 3
    )  # same day again: replaced, not duplicated
    assert_frame_equal(stored("strategist_recos"), first)
    assert first.height == 6
    assert json.loads(first["contributions"][0])["c_mom_s"] == 0.5

    # A re-run of day 1 with fewer names replaces all of day 1 and leaves day 2 alone.
    one = strat(strat_reco_topk=1)
    fewer = St.recommendations(St.score(f, ON, one), day1, one, "r3", data_settings=DataSettings())
    St.write_recos(store, fewer, data_settings=DataSettings())
    now = stored("strategist_recos")
    assert now.filter(pl.col("run_id") == "r3")["symbol"].to_list() == ["A"]
    assert set(now["run_id"]) == {"r2", "r3"} and now.height == 4
    # An empty re-run clears its day when told which day it is.
    assert St.write_recos(store, fewer.clear(), asof=day2, data_settings=DataSettings()) == 0
    assert stored("strategist_recos")["run_id"].to_list() == ["r3"]

    knobs = R.knob_rows(ON, day1, "r1", data_settings=DataSettings())
    R.write_knobs(store, knobs, data_settings=DataSettings())
    R.write_knobs(store, knobs, data_settings=DataSettings())
    assert stored("policy_knobs").height == 5
    R.write_knobs(
        store,
        R.knob_rows(OFF, day1, "r2", data_settings=DataSettings()),
        data_settings=DataSettings(),
    )
    k = stored("policy_knobs")
    assert dict(zip(k["knob"], k["value"], strict=True))["risk_regime"] == "off"
    assert set(k["run_id"]) == {"r2"} and k.height == 5


def test_writer_rolls_back_on_error(store: Store):
    cfg = strat()
    recos = St.recommendations(
        St.score(features([{"symbol": "A"}]), ON, cfg), ASOF, cfg, data_settings=DataSettings()
    )
    St.write_recos(store, recos, data_settings=DataSettings())
    bad = recos.with_columns(contributions=pl.lit("{not json"))
    with pytest.raises(Exception, match=r"(?i)json"):
        St.write_recos(store, bad, data_settings=DataSettings())
    assert store.con.sql("SELECT count(*) FROM strategist_recos").fetchall() == [(1,)]


def test_empty_store_gives_empty_frames_all_the_way(store: Store):
    inp = F.strategist_inputs(store, ASOF, None, settings=strat(), data_settings=DataSettings())
    assert inp.height == 0 and inp.schema == pl.Schema(INPUT_SCHEMA)
    k = R.regime(inp, strat())
    assert k.risk_regime == "off" and k.breadth is None
    scored = St.score(St.standardize(inp), k, strat())
    recs = St.recommendations(scored, ASOF, strat(), data_settings=DataSettings())
    assert recs.height == 0 and recs.schema == pl.Schema(St.RECO_SCHEMA)
    assert St.write_recos(store, recs, data_settings=DataSettings()) == 0


def test_inputs_on_a_hand_made_store(store: Store):
    """Momentum windows, sentiment window, rating scale and profile fallbacks, by hand."""
    asof = date(2024, 6, 10)  # Monday; known until 2024-06-11 03:59:59 UTC (16:00 EDT close)

    def put(table: str, rows: list[dict]) -> None:
        schema = TABLES[table].schema  # columns a row leaves out are null
        frame = pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)
        ingest(store, table, [frame], source="test", origin="test")

    at = datetime(2024, 1, 2, tzinfo=UTC)
    put(
        "dim_company_profile",
        [
            {
                "symbol": s,
                "available_at": at,
                "asset_type": "equity",
                "sector": "Utilities",
                "market_cap": 20e9,
                "source": "test",
            }
            for s in ("AAA", "OLD")
        ],
    )
    # AAA: 9 weekday closes up to asof (8 returns); OLD stopped trading in April.
    days = [date(2024, 5, 29) + timedelta(days=i) for i in range(13)]
    days = [d for d in days if d.weekday() < 5]
    assert len(days) == 9 and days[-1] == asof
    closes = [100.0, 101.0, 99.0, 102.0, 104.0, 103.0, 105.0, 107.0, 110.0]
    old = [date(2024, 4, 1) + timedelta(days=i) for i in range(10)]
    put(
        "bars",
        [
            {"symbol": "AAA", "ts": d, "adj_close": c, "source": "test"}
            for d, c in zip(days, closes, strict=True)
        ]
        + [
            {"symbol": "OLD", "ts": d, "adj_close": 50.0 + i, "source": "test"}
            for i, d in enumerate(old)
        ],
    )
    # Sentiment window: (2024-06-06 03:59:59, 2024-06-11 03:59:59] UTC for 5 days.
    senti = [
        (datetime(2024, 6, 6, 1, tzinfo=UTC), 1.0),  # read (same UTC date) but before the window
        (datetime(2024, 6, 6, 21, tzinfo=UTC), 0.2),
        (datetime(2024, 6, 7, 21, tzinfo=UTC), None),  # no posts: ignored
        (datetime(2024, 6, 10, 21, tzinfo=UTC), 0.4),
        (datetime(2024, 6, 11, 2, tzinfo=UTC), 0.6),  # before the cutoff
        (datetime(2024, 6, 11, 5, tzinfo=UTC), -1.0),  # after it: not yet known
    ]
    put(
        "social_features",
        [
            {"symbol": "AAA", "ts": t, "available_at": t, "senti_mean": v, "source": "test"}
            for t, v in senti
        ],
    )
    put(
        "fmp_rating",
        [
            {
                "symbol": "AAA",
                "rating_date": date(2024, 6, 3),
                "payload": "{}",
                "source": "test",
                "available_at": datetime(2024, 6, 4, tzinfo=UTC),
                "rating_score": 5.0,
            },
            {
                "symbol": "AAA",
                "rating_date": date(2024, 6, 10),
                "payload": "{}",
                "source": "test",
                "available_at": datetime(2024, 6, 12, tzinfo=UTC),
                "rating_score": 1.0,
            },  # later
            {
                "symbol": "OLD",
                "rating_date": date(2024, 6, 3),
                "payload": "{}",
                "source": "test",
                "available_at": datetime(2024, 6, 4, tzinfo=UTC),
                "rating_score": 2.0,
            },
        ],
    )
    inp = F.strategist_inputs(
        store, asof, None, settings=strat(strat_mom_short_days=5), data_settings=DataSettings()
    )
    aaa = inp.filter(pl.col("symbol") == "AAA").row(0, named=True)
    stale = inp.filter(pl.col("symbol") == "OLD").row(0, named=True)
    assert inp["symbol"].to_list() == ["AAA", "OLD"]
    assert math.isclose(aaa["mom_s"], math.log(110.0 / 102.0), rel_tol=1e-12)  # last 5 returns
    assert aaa["mom_m"] is None and aaa["mom_60"] is None  # 8 returns < 60
    assert stale["mom_s"] is None  # no return in the last 2 * 5 + 10 days
    assert math.isclose(aaa["sentiment"], (0.2 + 0.4 + 0.6) / 3, rel_tol=1e-12)
    assert aaa["rating"] == 1.0 and stale["rating"] == -0.5
    assert aaa["market_cap"] == 20e9 and aaa["sector"] == "Utilities"  # profile fallbacks
    assert aaa["z_roe"] is None and aaa["revisions"] is None and aaa["avg_dollar_vol_60d"] is None
    assert St.standardize(inp)["missing"][0] == "mom_m,quality,revisions"


def test_prefetched_histories_give_the_same_inputs(tmp_path):
    """A replay's sliced histories equal the per-decision reads (synthetic store with
    reference data, restated profiles; several dates)."""
    from polars.testing import assert_frame_equal

    from kronos.data import loaders
    from kronos.data.store import Store

    path = tmp_path / "k.duckdb"
    with Store.open(path) as store:
        loaders.load_synthetic(store, n_symbols=12, years=2, seed=8)
        symbols = [r[0] for r in store.con.execute("SELECT DISTINCT symbol FROM bars").fetchall()]
        # a profile restated later: the slice must pick what was known at each date
        store.con.execute(
            "INSERT INTO dim_company_profile SELECT * REPLACE (available_at + INTERVAL 400 DAY "
            "AS available_at, 'Utilities' AS sector) FROM dim_company_profile WHERE symbol = ?",
            [symbols[0]],
        )
        end = store.con.execute("SELECT max(ts) FROM bars").fetchall()[0][0]
        pre = F.prefetch(store, symbols, end, data_settings=DataSettings())
        for asof in (end - timedelta(days=500), end - timedelta(days=200), end):
            for names in (symbols, None):
                a = F.strategist_inputs(
                    store, asof, names, settings=StrategySettings(), data_settings=DataSettings()
                )
                b = F.strategist_inputs(
                    store,
                    asof,
                    names,
                    prefetched=pre,
                    settings=StrategySettings(),
                    data_settings=DataSettings(),
                )
                # the factor z-scores come from DuckDB's parallel sums: equal to ~1 ulp
                assert_frame_equal(a, b, rel_tol=1e-12, abs_tol=1e-15)
        restated = F.strategist_inputs(
            store,
            end,
            symbols[:1],
            prefetched=pre,
            settings=StrategySettings(),
            data_settings=DataSettings(),
        )
        assert restated["sector"].to_list() == ["Utilities"]
