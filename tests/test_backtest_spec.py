"""Backtest specs: loading, defaults, readable errors, overrides, sweeps, hashes, isolation."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from kronos.backtest.spec import (
    BacktestSpec,
    SpecError,
    expand_sweep,
    load_spec,
    parse_spec,
    spec_hash,
    to_yaml,
)
from kronos.backtest.splits import WalkForward
from kronos.config import (
    CalibrationSettings,
    DataSettings,
    StrategySettings,
    load_settings,
)

BACKTESTS = Path(__file__).resolve().parents[1] / "backtests"

FULL = """\
name: demo_ewma
description: a demo
seed: 3
universe:
  source: skfolio.sp500
  symbols: [AAPL, MSFT, JPM]
  exclude: [JPM]
  benchmark: AAPL
dates:
  start: 2010-01-04
  end: 2012-12-31
forecaster:
  name: ewma
  params: {lam: 0.94}
  calibrate: false
splits:
  train: rolling
  train_sessions: 500
  retrain: weekly
  weekday: 3
  purge: 7
rebalance:
  every: monthly
  weekday: 1
costs:
  commission_bps: 0.5
  slippage_bps: 2
  volume_share: 0.1
fills:
  at: next_close
capital:
  initial_cash: 50000
decision:
  strategy: {strat_reco_topk: 5, strat_forecast_in_score: true}
  portfolio: {pt_max_pos_pct: 0.2}
  calibration: {calibration_lambda: 0.05}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors(path: Path, *overrides: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value.problems


def test_full_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, FULL))
    assert spec.name == "demo_ewma" and spec.seed == 3
    assert spec.universe.symbols == ["AAPL", "MSFT", "JPM"] and spec.universe.benchmark == "AAPL"
    assert (spec.dates.start, spec.dates.end) == (date(2010, 1, 4), date(2012, 12, 31))
    assert spec.forecaster.params == {"lam": 0.94} and spec.forecaster.calibrate is False
    assert spec.splitter() == WalkForward(
        train="rolling", train_sessions=500, retrain="weekly", weekday=3, purge=7
    )
    assert type(spec.splitter()) is WalkForward
    assert spec.costs.slippage_bps == 2.0 and spec.costs.volume_share == 0.1
    assert spec.fills.at == "next_close" and spec.capital.initial_cash == 50_000.0
    settings = spec.decision_settings()
    assert type(settings.strategy) is StrategySettings
    assert settings.strategy.strat_reco_topk == 5 and settings.strategy.strat_forecast_in_score
    assert settings.portfolio.pt_max_pos_pct == 0.2
    assert spec.calibration_settings().calibration_lambda == 0.05
    with pytest.raises(ValueError, match="frozen"):
        spec.seed = 4


def test_defaults(tmp_path):
    spec = load_spec(write(tmp_path, "name: minimal\n"))
    assert spec.universe.source is None and spec.universe.symbols is None
    assert spec.universe.exclude == [] and spec.universe.benchmark is None
    assert (spec.dates.start, spec.dates.end) == (date(2005, 1, 3), date(2022, 12, 28))
    assert spec.forecaster.name == "ewma" and spec.forecaster.calibrate
    assert spec.splitter() == WalkForward(
        train="expanding", train_sessions=750, retrain="yearly", weekday=2, purge=5
    )
    assert (spec.rebalance.every, spec.rebalance.weekday) == ("weekly", 2)
    assert (spec.costs.commission_bps, spec.costs.slippage_bps) == (1.0, 5.0)
    assert spec.costs.volume_share is None and spec.fills.at == "auto"
    assert spec.capital.initial_cash == 1_000_000.0
    settings = spec.decision_settings()
    for name in ("strategy", "portfolio", "policy", "risk", "data"):
        section = getattr(settings, name)
        defaults = {
            k: f.get_default(call_default_factory=True)
            for k, f in type(section).model_fields.items()
        }
        assert section.model_dump() == defaults, name
    assert spec.calibration_settings().calibration_lambda == 0.02


def test_unknown_keys_suggest(tmp_path):
    text = FULL.replace("description:", "descripton:").replace("slippage_bps:", "slipage_bps:")
    path = write(tmp_path, text)
    assert set(errors(path)) == {
        "unknown key 'descripton' (did you mean 'description'?)",
        "unknown key 'costs.slipage_bps' (did you mean 'slippage_bps'?)",
    }
    path = write(tmp_path, "name: x\ncosts: {comission_bps: 2}\n", "x.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (
        str(info.value)
        == f"{path}: unknown key 'costs.comission_bps' (did you mean 'commission_bps'?)"
    )


def test_unknown_key_without_close_match_lists_keys(tmp_path):
    (problem,) = errors(write(tmp_path, "name: x\nfills: {zzz: 1}\n"))
    assert problem == "unknown key 'fills.zzz' (one of: at)"


def test_unknown_decision_keys(tmp_path):
    text = "name: x\ndecision:\n  strategy: {strat_reco_top: 5, strat_tilt: -1}\n  risks: {}\n"
    problems = errors(write(tmp_path, text))
    assert "unknown key 'decision.risks' (did you mean 'risk'?)" in problems
    assert (
        "unknown key 'decision.strategy.strat_reco_top' (did you mean 'strat_reco_topk'?)"
        in problems
    )
    assert any(
        p.startswith("decision.strategy.strat_tilt: Input should be greater") for p in problems
    )
    assert len(problems) == 3


def test_bad_types_name_their_path(tmp_path):
    text = (
        "name: Bad Name\n"
        "costs: {slippage_bps: abc}\n"
        "splits: {purge: 3, train: sliding}\n"
        "forecaster: {name: ewmaa}\n"
        "dates: {start: 2020-01-01, end: 2019-01-01}\n"
        "universe: {symbols: AAPL}\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    assert len(problems) == 7
    expected = [
        "name: String should match pattern",
        "costs.slippage_bps: Input should be a valid number",
        "splits.train: Input should be 'expanding' or 'rolling'",
        "splits.purge: purge=3 is shorter than the forecast horizon",
        "forecaster.name: unknown forecaster 'ewmaa' (did you mean 'ewma'?)",
        "dates.end: end 2019-01-01 is before start 2020-01-01",
        "universe.symbols: Input should be a valid list",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert all(line.startswith(f"{path}: ") for line in str(info.value).splitlines())


def test_missing_name(tmp_path):
    assert errors(write(tmp_path, "seed: 1\n")) == ["name: required key is missing"]


def test_set_overrides(tmp_path):
    path = write(tmp_path, FULL)
    spec = load_spec(
        path,
        [
            "costs.slippage_bps=2.5",
            "forecaster.calibrate=true",
            "decision.strategy.strat_reco_topk=7",
            "decision.risk.enable_panic_exit=yes",
            "forecaster.params.lam=0.9",
            "universe.symbols=[KO, PEP]",
            "dates.end=2011-06-30",
            "description='a: colon'",  # values are YAML: quote a colon
        ],
    )
    assert spec.costs.slippage_bps == 2.5 and spec.forecaster.calibrate is True
    assert spec.decision_settings().strategy.strat_reco_topk == 7
    assert spec.decision_settings().risk.enable_panic_exit is True
    assert spec.forecaster.params == {"lam": 0.9}
    assert spec.universe.symbols == ["KO", "PEP"] and spec.dates.end == date(2011, 6, 30)
    assert spec.description == "a: colon"
    # a section the file left out is created
    minimal = load_spec(
        write(tmp_path, "name: m\n", "m.yaml"), ["decision.policy.policy_require_reco=false"]
    )
    assert minimal.decision_settings().policy.policy_require_reco is False


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("costs.slipage_bps=1", "unknown key 'costs.slipage_bps' (did you mean 'slippage_bps'?)"),
        ("splitz.purge=9", "unknown key 'splitz' (did you mean 'splits'?)"),
        (
            "decision.strategy.strat_reco_tpk=5",
            "unknown key 'decision.strategy.strat_reco_tpk' (did you mean 'strat_reco_topk'?)",
        ),
        ("universe.symbols.first=AAPL", "'universe.symbols' is a value, not a section"),
        ("costs.slippage_bps", "--set 'costs.slippage_bps': expected dotted.key=value"),
        ("splits.purge=2", "splits.purge: purge=2 is shorter than the forecast horizon"),
    ],
)
def test_set_errors(tmp_path, override, problem):
    (found,) = errors(write(tmp_path, FULL), override)
    assert found.startswith(problem)


def test_sweep_is_cartesian_and_named(tmp_path):
    base = load_spec(write(tmp_path, FULL))
    variants = expand_sweep(base, ["costs.slippage_bps=1,5", "forecaster.params.lam=0.9,0.94,0.97"])
    assert [a for a, _ in variants] == [
        {"costs.slippage_bps": s, "forecaster.params.lam": lam}
        for s in ("1", "5")
        for lam in ("0.9", "0.94", "0.97")
    ]
    assert [s.name for _, s in variants][:2] == [
        "demo_ewma__slippage_bps=1__lam=0.9",
        "demo_ewma__slippage_bps=1__lam=0.94",
    ]
    last = variants[-1][1]
    assert last.costs.slippage_bps == 5.0 and last.forecaster.params == {"lam": 0.97}
    assert last.splits == base.splits and last.decision == base.decision
    assert len({spec_hash(s) for _, s in variants}) == 6


def test_sweep_names_are_sanitized_and_disambiguated():
    raw = {"name": "base"}
    variants = expand_sweep(
        raw, ["splits.weekday=1,3", "rebalance.weekday=0", "universe.symbols=[AAPL, KO]"]
    )
    assert [s.name for _, s in variants] == [
        "base__splits.weekday=1__rebalance.weekday=0__symbols=aapl_ko",
        "base__splits.weekday=3__rebalance.weekday=0__symbols=aapl_ko",
    ]
    assert variants[0][0]["universe.symbols"] == "[AAPL, KO]"
    assert variants[0][1].universe.symbols == ["AAPL", "KO"]
    assert expand_sweep(raw, []) == [({}, parse_spec(raw))]


@pytest.mark.parametrize(
    ("sweep", "problem"),
    [
        ("costs.slipage_bps=1,2", "unknown key 'costs.slipage_bps' (did you mean 'slippage_bps'?)"),
        ("name=a,b", "--sweep cannot vary 'name'"),
        ("costs.slippage_bps=", "--sweep 'costs.slippage_bps' has no values"),
        ("splits.purge=5,3", "splits.purge: purge=3 is shorter"),
    ],
)
def test_sweep_errors(sweep, problem):
    with pytest.raises(SpecError) as info:
        expand_sweep({"name": "base"}, [sweep])
    assert info.value.problems[0].startswith(problem)


def test_hash_is_stable_and_sensitive(tmp_path):
    spec = load_spec(write(tmp_path, FULL))
    assert spec_hash(spec) == spec_hash(load_spec(write(tmp_path, FULL, "again.yaml")))
    # the same content written differently: key order, 2 vs 2.0
    reordered = FULL.replace(
        "  commission_bps: 0.5\n  slippage_bps: 2\n", "  slippage_bps: 2.0\n  commission_bps: 0.5\n"
    )
    assert reordered != FULL
    assert spec_hash(load_spec(write(tmp_path, reordered, "reordered.yaml"))) == spec_hash(spec)
    assert spec_hash(load_spec(write(tmp_path, FULL), ["costs.slippage_bps=2.5"])) != spec_hash(
        spec
    )
    assert spec_hash(
        load_spec(write(tmp_path, FULL), ["decision.risk.enable_panic_exit=true"])
    ) != spec_hash(spec)
    assert len(spec_hash(spec)) == 16
    # the logged YAML reloads to the same spec
    logged = load_spec(write(tmp_path, to_yaml(spec), "logged.yaml"))
    assert logged == spec and spec_hash(logged) == spec_hash(spec)


def test_settings_ignore_environment_and_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PT_MAX_POS_PCT", "0.5")
    monkeypatch.setenv("CALIBRATION_LAMBDA", "0.3")
    monkeypatch.setenv("KRONOS_QA_MIN_SPAN_YEARS", "1")
    (tmp_path / ".env").write_text("STRAT_RECO_TOPK=3\nSTRAT_TILT=0.9\n")
    # the environment does reach the settings an edge loads...
    loaded = load_settings()
    assert loaded.portfolio.pt_max_pos_pct == 0.5 and loaded.strategy.strat_reco_topk == 3
    # ...but not those of a spec
    spec = load_spec(write(tmp_path, "name: iso\ndecision: {strategy: {strat_reco_topk: 8}}\n"))
    settings = spec.decision_settings()
    assert settings.portfolio.pt_max_pos_pct == 0.10
    assert settings.strategy.strat_reco_topk == 8 and settings.strategy.strat_tilt == 0.25
    assert settings.data == DataSettings() and settings.data.qa_min_span_years == 5.0
    assert spec.calibration_settings() == CalibrationSettings()
    # its record keeps the edge's store and tracking, never the environment's decision values
    used = spec.run_settings(loaded)
    assert used.portfolio.pt_max_pos_pct == 0.10 and used.calibration.calibration_lambda == 0.02
    assert used.strategy.strat_reco_topk == 8 and used.tracking == loaded.tracking


def test_yaml_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\ncosts:\n  commission_bps: [1\n  slippage_bps: 2\nfills: {}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: invalid YAML: line ")
    assert "line 4" in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "a spec is a mapping of sections, got NoneType"), ("- a\n", "got list")],
)
def test_not_a_mapping(tmp_path, text, problem):
    assert problem in errors(write(tmp_path, text))[0]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=f"{path}: no such spec file"):
        load_spec(path)


def test_bundled_backtests_load():
    paths = sorted(BACKTESTS.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"sp500_ewma_weekly", "sp500_nbeats_weekly"}
    for path in paths:
        spec = load_spec(path)
        assert spec.name == path.stem
        assert isinstance(spec, BacktestSpec)


def test_sp500_specs_match_their_brief():
    ewma = load_spec(BACKTESTS / "sp500_ewma_weekly.yaml")
    nbeats = load_spec(BACKTESTS / "sp500_nbeats_weekly.yaml")
    assert set(ewma.universe.exclude) == {"SP500", "MTUM", "QUAL", "SIZE", "USMV", "VLUE", "GOOG"}
    assert (ewma.dates.start, ewma.dates.end) == (date(2005, 1, 3), date(2022, 12, 28))
    strategy = ewma.decision_settings().strategy
    # the size and liquidity filters stay at their defaults: the decision switches
    # them off itself where the data has no market cap or volume (tests/test_decision.py)
    assert "strat_min_market_cap" not in ewma.decision.strategy
    assert strategy.strat_forecast_in_score and strategy.strat_reco_topk == 10
    assert nbeats.forecaster.name == "nbeats" and nbeats.forecaster.params == {"max_steps": 300}
    # EWMA's median is 0: its spec turns the directional buy gates off, N-BEATS keeps them
    assert ewma.decision.policy == {"policy_min_abs_dev": 0.0, "policy_min_sigma_z": 0.0}
    assert nbeats.decision.policy == {}
    same = {"forecaster", "name", "description", "decision"}
    assert ewma.model_dump(exclude=same) == nbeats.model_dump(exclude=same)
    assert ewma.decision.strategy == nbeats.decision.strategy


def test_a_misspelt_forecaster_parameter_fails_when_the_spec_is_read(tmp_path):
    from kronos.backtest.spec import SpecError

    text = (BACKTESTS / "sp500_nbeats_weekly.yaml").read_text()
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace("max_steps: 300", "max_step: 300"))
    with pytest.raises(SpecError, match=r"unknown parameter 'max_step' of nbeats.*max_steps"):
        load_spec(path)
