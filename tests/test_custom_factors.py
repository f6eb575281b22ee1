"""The researcher's factors, allocator weighting and reviewer, named in settings.

Reference for the blend: the whitepaper weights (``BLEND``) on a fixed frame;
a custom factor must move each score by exactly ``weight x z`` (1e-12
absolute). The example package (``examples/kronos_example``, fixture
``example_plugin``) supplies ``reversal_5d``, ``inverse_vol`` (equal weights)
and ``DenyList``. A factor that peeks after ``asof`` is not detected: it is
handed ``asof`` and must read through the store's point-in-time readers.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from kronos.config import (
    DataSettings,
    DecisionSettings,
    PortfolioSettings,
    StrategySettings,
    load_settings,
)
from kronos.data.store import Store
from kronos.decision import strategist as St
from kronos.decision.allocator import Account, allocate
from kronos.decision.regime import RegimeKnobs
from kronos.decision.weighting import REVIEWERS, WEIGHTINGS, AllowAll
from kronos.errors import ConfigError, InputError
from kronos.features.strategist import INPUT_SCHEMA, custom_factor, strategist_inputs
from kronos.plugins import (
    BUILTIN_FACTORS,
    BUILTIN_REVIEWERS,
    BUILTIN_WEIGHTINGS,
    RESERVED_FACTOR_NAMES,
)
from kronos.risk import session_close

ATOL = 1e-12
ON = RegimeKnobs("on", 10.0, 0.6, 0.1, "test: risk-on")
REVERSAL = "kronos_example.factors:reversal_5d"
ASOF = date(2020, 3, 18)  # a Wednesday inside the bundled data (2005..2022)


def raw_inputs(n: int = 12, seed: int = 3) -> pl.DataFrame:
    """Strategist inputs of ``n`` made-up names (a few nulls), plus a custom column ``rev5``."""
    rng = np.random.default_rng(seed)
    frame = {"symbol": [f"S{i:02d}" for i in range(n)]}
    for col, dtype in INPUT_SCHEMA.items():
        if col == "symbol":
            continue
        if dtype == pl.String():
            frame[col] = ["Utilities" if i % 4 == 0 else "Health Care" for i in range(n)]
        else:
            values = rng.normal(0.0, 1.0, n)
            values[rng.integers(0, n)] = np.nan
            frame[col] = values
    out = pl.DataFrame(frame).with_columns(market_cap=pl.lit(50e9), avg_dollar_vol_60d=pl.lit(1e8))
    out = out.with_columns(pl.col(pl.Float64).fill_nan(None))
    return out.with_columns(rev5=pl.Series(rng.normal(0.0, 0.02, n)))


def scored(settings: StrategySettings, inputs: pl.DataFrame | None = None) -> pl.DataFrame:
    frame = raw_inputs() if inputs is None else inputs
    return St.score(St.standardize(frame, settings), ON, settings).sort("symbol")


# ------------------------------------------------------------------ the blend


def test_the_default_blend_is_the_whitepapers():
    assert tuple(St.BLEND) == BUILTIN_FACTORS
    assert St.contributions(StrategySettings()) == St.CONTRIBUTIONS
    inputs = raw_inputs()
    plain = St.score(St.standardize(inputs), ON, StrategySettings()).sort("symbol")
    assert plain.equals(scored(StrategySettings(), inputs))
    # the published weights on the z-scores, forecast off, tilt in risk-on
    z = {k: plain[f"z_{k}"].to_numpy() for k in St.BLEND}
    tilt = np.where(plain["sector"].to_numpy() == "Utilities", -0.25, 0.0)
    expected = (
        (0.50 * z["mom_s"] + 0.20 * z["mom_m"] + 0.15 * z["quality"] + 0.10 * z["sentiment"])
        + 0.06 * z["revisions"]
        + 0.04 * z["ratings"]
        + tilt
    )
    np.testing.assert_allclose(plain["score"].to_numpy(), expected, rtol=0, atol=ATOL)
    assert "z_rev5" not in plain.columns and "c_rev5" not in plain.columns  # not a factor


def test_a_custom_factor_moves_scores_by_weight_times_z():
    base = scored(StrategySettings())
    cfg = StrategySettings(factors={"rev5": {"fn": REVERSAL, "weight": 0.1}})
    out = scored(cfg)
    z = out["z_rev5"].to_numpy()
    raw = raw_inputs().sort("symbol")["rev5"].to_numpy()
    # standardized like the built-ins: sample sd, clipped to +/-3
    np.testing.assert_allclose(z, (raw - raw.mean()) / raw.std(ddof=1), rtol=0, atol=ATOL)
    np.testing.assert_allclose(out["c_rev5"].to_numpy(), 0.1 * z, rtol=0, atol=0)
    diff = out["score"].to_numpy() - base["score"].to_numpy()
    np.testing.assert_allclose(diff, 0.1 * z, rtol=0, atol=ATOL)
    assert St.contributions(cfg) == (*St.CONTRIBUTIONS, "c_rev5")
    # a missing value is 0 and listed, after the built-ins
    holed = raw_inputs().with_columns(
        rev5=pl.when(pl.col("symbol") == "S03").then(None).otherwise("rev5")
    )
    got = scored(cfg, holed)
    row = got.filter(pl.col("symbol") == "S03")
    assert row["z_rev5"][0] == 0.0 and row["missing"][0].endswith("rev5")


def test_weight_zero_removes_a_builtin_and_a_weight_replaces_it():
    base = scored(StrategySettings())
    cfg = StrategySettings(factors={"mom_s": {"weight": 0}, "ratings": {"weight": 0.5}})
    out = scored(cfg)
    assert (out["c_mom_s"] == 0.0).all()
    assert "c_mom_s" not in St.contributions(cfg)
    assert not any("mom_s" in m.split(",") for m in out["missing"].to_list())
    expected = (
        base["score"].to_numpy()
        - base["c_mom_s"].to_numpy()
        + (0.5 - 0.04) * base["z_ratings"].to_numpy()
    )
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=0, atol=ATOL)


def test_recommendations_carry_the_custom_contribution():
    cfg = StrategySettings(
        strat_min_market_cap=0,
        strat_min_dollar_vol=0,
        factors={"rev5": {"fn": REVERSAL, "weight": 0.1}, "sentiment": {"weight": 0}},
    )
    recos = St.recommendations(scored(cfg), ASOF, cfg, "r", data_settings=DataSettings())
    assert recos.height > 0
    parts = json.loads(recos["contributions"][0])
    assert list(parts) == list(St.contributions(cfg))
    assert "c_rev5" in parts and "c_sentiment" not in parts
    row = scored(cfg).filter(pl.col("symbol") == recos["symbol"][0])
    assert parts["c_rev5"] == row["c_rev5"][0]


def test_factor_settings_refuse_what_would_be_wrong():
    cases = {
        "'mom_ss' needs fn": {"mom_ss": {"weight": 0.1}},
        "did you mean 'mom_s'": {"mom_ss": {"weight": 0.1}},
        "is built in": {"quality": {"fn": REVERSAL, "weight": 0.1}},
        "taken by a strategist column": {"rev": {"fn": REVERSAL, "weight": 0.1}},
        "unknown factor 'reversal_5": {"x": {"fn": "reversal_5", "weight": 0.1}},
        "lower-case": {"Bad-Name": {"fn": REVERSAL, "weight": 0.1}},
    }
    for needle, factors in cases.items():
        with pytest.raises(ValueError, match=needle):
            StrategySettings(factors=factors)
    for name in INPUT_SCHEMA:  # a custom column never overwrites an input
        assert name in RESERVED_FACTOR_NAMES or name in BUILTIN_FACTORS or name.startswith("z_")
    with pytest.raises(ConfigError, match=r"invalid STRAT_FACTORS.*not JSON"):
        load_settings(None, {"STRAT_FACTORS": "{reversal: 1}"})
    with pytest.raises(ConfigError, match="did you mean 'softmax'"):
        load_settings(None, {"PT_WEIGHTING": "sofmax"})
    with pytest.raises(ConfigError, match="did you mean 'allow_all'"):
        load_settings(None, {"PT_REVIEWER": "allow_al"})
    assert set(BUILTIN_WEIGHTINGS) == set(WEIGHTINGS) and set(BUILTIN_REVIEWERS) == set(REVIEWERS)


# ------------------------------------------------------------------ the factor function


def _fake(frame):
    return lambda store, asof, symbols: frame


def test_bad_factor_outputs_are_refused_naming_factor_path_and_asof(monkeypatch, example_plugin):
    import kronos_example.factors as mod

    spec = StrategySettings(factors={"rev5": {"fn": REVERSAL, "weight": 0.1}}).factors["rev5"]
    bad = {
        "returned a dict": {"symbol": ["A"]},
        "no column 'value'": pl.DataFrame({"symbol": ["A"], "val": [1.0]}),
        "value a number": pl.DataFrame({"symbol": ["A"], "value": ["high"]}),
        "more than one row for A": pl.DataFrame({"symbol": ["A", "A"], "value": [1.0, 2.0]}),
        "not asked for: ZZZ": pl.DataFrame({"symbol": ["A", "ZZZ"], "value": [1.0, 2.0]}),
        "without a symbol": pl.DataFrame({"symbol": [None], "value": [1.0]}),
    }
    for needle, frame in bad.items():
        monkeypatch.setattr(mod, "reversal_5d", _fake(frame))
        with pytest.raises(InputError) as info:
            custom_factor(None, ASOF, ["A", "B"], "rev5", spec)
        text = str(info.value)
        assert needle in text, text
        assert f"factor 'rev5' ({REVERSAL}) at asof {ASOF}" in text

    def boom(store, asof, symbols):
        raise KeyError("no such table")

    monkeypatch.setattr(mod, "reversal_5d", boom)
    with pytest.raises(InputError, match="raised KeyError"):
        custom_factor(None, ASOF, ["A"], "rev5", spec)
    # integers and a missing name are fine: cast to float, null for B
    seen = {}

    def ints(store, asof, symbols):
        seen.update(asof=asof, symbols=symbols)
        return pl.DataFrame({"symbol": ["A"], "value": [3]})

    monkeypatch.setattr(mod, "reversal_5d", ints)
    got = custom_factor(None, ASOF, ["A", "B"], "rev5", spec)
    assert got.schema == {"symbol": pl.String(), "rev5": pl.Float64()}
    assert seen == {"asof": ASOF, "symbols": ["A", "B"]}  # the function is handed asof


def test_reversal_reads_the_store_point_in_time(bundled_db, example_plugin):
    from kronos_example.factors import reversal_5d

    with Store.open(bundled_db, read_only=True) as store:
        got = reversal_5d(store, ASOF, ["AAPL", "XOM"]).sort("symbol")
        bars = store.con.execute(
            "SELECT symbol, adj_close FROM bars WHERE symbol IN ('AAPL', 'XOM') AND ts <= ? "
            "QUALIFY row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) IN (1, 6) "
            "ORDER BY symbol, ts",
            [ASOF],
        ).fetchall()
        inputs = strategist_inputs(
            store,
            ASOF,
            ["AAPL", "XOM"],
            settings=StrategySettings(factors={"reversal": {"fn": "reversal_5d", "weight": 1}}),
            data_settings=DataSettings(),
        )
    # minus log(close now / close 5 sessions earlier)
    expected = [-np.log(bars[i + 1][1] / bars[i][1]) for i in (0, 2)]
    np.testing.assert_allclose(got["value"].to_numpy(), expected, rtol=1e-12)
    assert inputs["reversal"].to_list() == got["value"].to_list()  # by entry-point name


# ------------------------------------------------------------------ allocator


def _scores() -> pl.DataFrame:
    names = [f"N{i}" for i in range(12)]
    return pl.DataFrame(
        {
            "symbol": names,
            "sector": ["Tech" if i < 6 else f"S{i}" for i in range(12)],
            "score": np.linspace(2.0, 0.2, 12),
            "eligible": [True] * 12,
        }
    )


def _empty_book() -> pl.DataFrame:
    return pl.DataFrame(schema={"symbol": pl.String, "qty": pl.Float64, "price": pl.Float64})


def test_a_weighting_plugin_still_meets_the_caps_and_cash_floor(example_plugin):
    sc = _scores()
    pt = PortfolioSettings(
        pt_weighting="inverse_vol",
        pt_max_pos_pct=0.12,
        pt_sector_max_pct=0.3,
        pt_cash_floor_pct=0.1,
        pt_turnover_cap_pct=2.0,  # from cash: no turnover scaling
    )
    a = allocate(sc, _empty_book(), Account(100.0, 100.0), sc.select("symbol", "sector"), {}, pt)
    w = dict(zip(a.targets["symbol"], a.targets["target_weight"], strict=True))
    assert max(w.values()) <= 0.12 + 1e-12
    tech = sum(v for k, v in w.items() if int(k[1:]) < 6)
    assert tech == pytest.approx(0.3, abs=1e-12)  # 6 equal names, sector capped
    assert sum(w.values()) <= 0.95 - 0.1 + 1e-12  # budget B = gross max - cash floor
    # equal weights (not softmax): every uncapped non-tech name gets the same
    others = [w[f"N{i}"] for i in range(6, 12)]
    assert max(others) - min(others) < 1e-12 and others[0] > 0.05
    assert set(a.targets["reason"].to_list()) == {"inverse_vol", "sector cap: Tech"}
    tight = PortfolioSettings(**{**pt.model_dump(), "pt_max_pos_pct": 0.04})
    b = allocate(sc, _empty_book(), Account(100.0, 100.0), sc.select("symbol", "sector"), {}, tight)
    assert b.targets["target_weight"].max() == pytest.approx(0.04, abs=1e-12)
    assert set(b.targets["reason"].to_list()) == {"name cap"}


def test_bad_weights_are_refused_naming_the_weighting(monkeypatch, example_plugin):
    import kronos_example.allocation as mod

    sc = _scores()
    pt = PortfolioSettings(pt_weighting="kronos_example.allocation:inverse_vol")
    for needle, out in {
        "weight -1.0": lambda s, n, p: -np.ones(len(n)),
        "weight nan": lambda s, n, p: np.full(len(n), np.nan),
        "shape (3,)": lambda s, n, p: np.ones(3),
    }.items():
        monkeypatch.setattr(mod, "inverse_vol", out)
        with pytest.raises(InputError, match=r"weighting 'kronos_example\.allocation:inverse_vol'"):
            allocate(
                sc, _empty_book(), Account(100.0, 100.0), sc.select("symbol", "sector"), {}, pt
            )
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            allocate(
                sc, _empty_book(), Account(100.0, 100.0), sc.select("symbol", "sector"), {}, pt
            )


def test_the_reviewer_comes_from_the_settings(example_plugin):
    sc = _scores().with_columns(
        symbol=pl.Series(["AAPL", "MSFT", *(f"N{i}" for i in range(2, 12))])
    )
    book, acct, sectors = _empty_book(), Account(100.0, 100.0), sc.select("symbol", "sector")
    plain = allocate(sc, book, acct, sectors, {}, PortfolioSettings())
    assert plain.reviewer_note == AllowAll().note  # the default, as before
    a = allocate(sc, book, acct, sectors, {}, PortfolioSettings(pt_reviewer="deny_list"))
    assert "DenyList" in a.reviewer_note
    why = dict(zip(a.excluded["symbol"], a.excluded["reason"], strict=True))
    assert why["AAPL"] == why["MSFT"] == "denied by reviewer"
    # a reviewer passed in still wins over the settings'
    b = allocate(
        sc, book, acct, sectors, {}, PortfolioSettings(pt_reviewer="deny_list"), AllowAll()
    )
    assert "AAPL" in b.targets["symbol"].to_list()


# ------------------------------------------------------------------ the chain, end to end


def test_store_and_replay_snapshots_carry_the_same_custom_column(bundled_db, example_plugin):
    from kronos.backtest.market import load_market
    from kronos.backtest.monitor import Quantiles
    from kronos.backtest.replay import ReplaySource
    from kronos.decision.snapshot import StoreSource

    settings = DecisionSettings(
        strategy=StrategySettings(factors={"reversal": {"fn": "reversal_5d", "weight": 0.1}})
    )
    symbols = ["AAPL", "JNJ", "JPM", "XOM"]
    with Store.open(bundled_db, read_only=True) as store:
        market = load_market(store, symbols, ASOF, settings.data)
        nan = np.full(market.close.shape, np.nan)
        replay = ReplaySource(store, market, Quantiles(nan, nan, nan), [], settings)
        live = StoreSource(store, "none", settings, market.symbols)
        now = session_close(ASOF, settings.data).astimezone(UTC)
        a, b = live.snapshot(ASOF, now).inputs, replay.snapshot(ASOF, now).inputs
    assert a["reversal"].null_count() == 0
    assert a.select("symbol", "reversal").equals(b.select("symbol", "reversal"))


SHORT = {
    "name": "bundled_short",
    "universe": {
        "source": "skfolio.sp500",
        "exclude": ["SP500", "MTUM", "QUAL", "SIZE", "USMV", "VLUE", "GOOG"],
    },
    "dates": {"start": "2021-01-04", "end": "2021-03-31"},
    "forecaster": {"name": "ewma"},
    "splits": {"train_sessions": 250, "retrain": "yearly"},
    "decision": {
        "strategy": {"strat_reco_topk": 5},
        "policy": {"policy_min_abs_dev": 0, "policy_min_sigma_z": 0},
    },
}


def test_a_cli_backtest_adds_the_factor_to_its_contributions(bundled_db, example_plugin, tmp_path):
    from typer.testing import CliRunner

    from kronos.cli import app

    spec = tmp_path / "bundled_short.yaml"
    spec.write_text(yaml.safe_dump(SHORT))
    args = ["backtest", str(spec), "--db", str(bundled_db), "--out", str(tmp_path / "out")]
    args.append("--no-mlflow")  # the MLflow record is the CLI's own test's (test_backtest.py)
    sets = [
        "decision.strategy.factors.reversal.fn=kronos_example.factors:reversal_5d",
        "decision.strategy.factors.reversal.weight=0.1",
        "decision.strategy.factors.ratings.weight=0",
        "decision.portfolio.pt_weighting=inverse_vol",
    ]
    got = CliRunner().invoke(app, [*args, *(x for v in sets for x in ("--set", v)), "--json"])
    assert got.exit_code == 0, got.output
    report = Path(json.loads(got.stdout)["report"])
    factors = pl.read_parquet(report.parent / "factor_contrib.parquet")
    names = set(factors["factor"].to_list())
    assert "reversal" in names and "ratings" not in names and "mom_s" in names
    # reversal_5d is minus the 5-session momentum: its contribution is -0.1/0.5 of mom_s's
    wide = factors.pivot(on="factor", index="ts", values="contribution")
    np.testing.assert_allclose(wide["reversal"], -0.2 * wide["mom_s"], rtol=1e-9, atol=1e-15)
    assert wide["reversal"].abs().max() > 0
    bad = CliRunner().invoke(app, [*args, "--set", "decision.strategy.factors.mom_ss.weight=1"])
    assert bad.exit_code == 2 and "did you mean 'mom_s'" in bad.output


def test_the_paper_loop_records_the_factor_from_its_environment(
    bundled_db, example_plugin, tmp_path
):
    from kronos.config import CalibrationSettings
    from kronos.execution.brokers.sim import SimBroker
    from kronos.execution.fills import FillRules
    from kronos.execution.paper import PaperConfig, PaperLoop

    env = {
        "STRAT_FACTORS": json.dumps({"reversal": {"fn": "reversal_5d", "weight": 0.1}}),
        "PT_REVIEWER": "deny_list",
        "STRAT_RECO_TOPK": "5",
        "POLICY_MIN_ABS_DEV": "0",
        "POLICY_MIN_SIGMA_Z": "0",
    }
    settings = load_settings(None, env)
    path = tmp_path / "paper.duckdb"
    shutil.copy(bundled_db, path)
    with Store.open(path) as store:
        symbols = tuple(
            r[0]
            for r in store.con.execute(
                "SELECT DISTINCT symbol FROM bars WHERE source = 'skfolio.sp500' ORDER BY 1"
            ).fetchall()
        )
        sim = SimBroker(store, "acct", FillRules(), symbols, data_settings=DataSettings())
        sim.start(date(2022, 6, 1), 100_000.0)
        config = PaperConfig(
            account="acct",
            model="ewma",
            symbols=symbols,
            settings=settings.decision(),
            calibration=CalibrationSettings(),
        )
        (report,) = PaperLoop(store, sim, config).run(cycles=1, wait=lambda _c: sim.advance())
        assert report.decided
        rows = store.con.execute("SELECT symbol, contributions FROM strategist_recos").fetchall()
        held = {r[0] for r in store.con.execute("SELECT symbol FROM orders").fetchall()}
    assert len(rows) == 5
    assert all("c_reversal" in json.loads(c) for _, c in rows)
    assert not held & {"AAPL", "MSFT"}  # DenyList's names are never bought
