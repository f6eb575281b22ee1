"""Settings at the edge: frozen sections, unknown names refused, one loader, recorded runs."""

from __future__ import annotations

import ast
import json
import re
import shutil
from datetime import date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from kronos.config import (
    AlpacaTradingSettings,
    DataSettings,
    DecisionSettings,
    ModelSettings,
    Settings,
    StrategySettings,
    env_names,
    load_settings,
    settings_hash,
    settings_record,
)
from kronos.data.readers import PointInTime
from kronos.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kronos"
NO_DOTENV = Path("/nonexistent/.env")

# the modules that may read the process environment, and why
ENVIRONMENT_READERS = {
    "kronos/config.py": "load_settings: the one reader of os.environ and .env",
    "kronos/runner/params.py": "the values of secret variables a notebook's kernel inherits, "
    "to redact them from its outputs",
    "kronos/backtest/executor.py": "the variables Ray workers need to import this checkout, "
    "and Ray's own token variables (RAY_AUTH_MODE, RAY_AUTH_TOKEN[_PATH])",
    "kronos/models/lightning.py": "the rank a ddp launcher gives a re-run process "
    "(RANK, LOCAL_RANK, NODE_RANK): the launch protocol, not a setting",
    "kronos/testing/chaos.py": "the environment of the paper-loop processes it kills",
    "kronos/runner/execute.py": "the environment a notebook's kernel inherits, plus the "
    "executed copy's path (JPY_SESSION_NAME), as JupyterLab gives a kernel its notebook's",
    "kronos/runner/display.py": "the notebook path JupyterLab gives its kernel "
    "(JPY_SESSION_NAME), so a link resolves from the notebook: the Lab's protocol, not a setting",
}


# ------------------------------------------------------------------ sections


def test_a_misspelt_keyword_names_the_key_and_the_nearest_valid_one():
    with pytest.raises(ConfigError) as info:
        StrategySettings(strat_reco_top=5)
    assert "'strat_reco_top'" in str(info.value)
    assert "did you mean 'strat_reco_topk'" in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'market_tz'"):
        DataSettings(market_timezone="Asia/Tokyo")
    with pytest.raises(ConfigError, match="did you mean 'strategy'"):
        Settings(strategie=StrategySettings())


def test_sections_are_frozen_and_validated():
    data = DataSettings()
    with pytest.raises(ValidationError):
        data.market_tz = "Asia/Tokyo"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Settings().strategy = StrategySettings()  # type: ignore[misc]
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        StrategySettings(strat_reco_topk=0)
    # a field with an environment alias takes its field name or the variable name
    assert ModelSettings(promotion_tolerance=0.2).promotion_tolerance == 0.2
    assert ModelSettings(KRONOS_PROMOTION_TOLERANCE=0.3).promotion_tolerance == 0.3


def test_the_alpaca_feeds_are_alpaca_pys():
    from alpaca.data.enums import DataFeed

    from kronos.config_alpaca import ALPACA_FEEDS

    assert set(ALPACA_FEEDS) == {f.value for f in DataFeed}


def test_decision_settings_come_from_the_root():
    settings = Settings(strategy=StrategySettings(strat_reco_topk=3))
    decision = settings.decision()
    assert isinstance(decision, DecisionSettings)
    assert decision.strategy.strat_reco_topk == 3 and decision.data is settings.data
    with pytest.raises(ValidationError):
        decision.strategy = StrategySettings()  # type: ignore[misc]


# ------------------------------------------------------------------ the loader


def test_library_code_never_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KRONOS_MARKET_TZ", "Asia/Tokyo")
    monkeypatch.setenv("STRAT_RECO_TOPK", "3")
    # defaults built in code ignore the environment...
    assert DataSettings().market_tz == "America/New_York"
    assert StrategySettings().strat_reco_topk == 20
    assert DecisionSettings().strategy.strat_reco_topk == 20
    at = datetime.fromisoformat("2024-03-05T08:00:00+09:00")  # 18:00 in New York on the 4th
    assert PointInTime.at(at, DataSettings()).day == date(2024, 3, 4)
    # ...the loader sees it, and a library function given the loaded section follows it
    loaded = load_settings()
    assert loaded.data.market_tz == "Asia/Tokyo" and loaded.strategy.strat_reco_topk == 3
    assert loaded.decision().strategy.strat_reco_topk == 3
    assert PointInTime.at(at, loaded.data).day == date(2024, 3, 5)


def test_every_documented_variable_keeps_its_name():
    names = env_names()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    # names of settings, not of files (CALIBRATION_START.json is an artifact's file)
    ours = r"\b(?:KRONOS|STRAT|PT|POLICY|PLANNER|FAILSAFE|CALIBRATION|HEADLINE)_[A-Z_]+\b(?!\.json)"
    documented = set(re.findall(ours, text))
    assert len(documented) > 50  # the settings tables of docs/configuration.md were read
    documented |= {"MODEL_DIR", "MLFLOW_TRACKING_URI", "ENABLE_PANIC_EXIT", "APCA_API_KEY_ID"}
    assert documented - set(names) == set()
    assert names["KRONOS_DB"] == ("data", "db")
    assert names["KRONOS_MLRUNS_DIR"] == ("tracking", "mlruns_dir")
    assert names["KRONOS_PROMOTION_TOLERANCE"] == ("models", "promotion_tolerance")
    assert names["APCA_PAPER_API_SECRET_KEY"] == ("alpaca_trading", "paper_secret_key")


def test_a_misspelt_kronos_variable_fails_naming_the_nearest(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KRONOS_MARKET_TIMEZONE", "Asia/Tokyo")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "KRONOS_MARKET_TIMEZONE" in str(info.value)
    assert "did you mean 'KRONOS_MARKET_TZ'" in str(info.value)
    assert "in the environment" in str(info.value)
    # other tools' variables are theirs, whatever they look like
    ok = load_settings(NO_DOTENV, {"PT_HPU_LAZY_MODE": "1", "MLFLOW_EXPERIMENT_NAME": "x"})
    assert ok == Settings()


def test_the_loader_reads_dotenv_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STRAT_RECO_TOPK", raising=False)
    monkeypatch.setenv("KRONOS_MARKET_TZ", "Asia/Tokyo")
    (tmp_path / ".env").write_text(
        "KRONOS_MARKET_TZ=Europe/London\nSTRAT_RECO_TOPK=7\nFMP_API_KEY=other\n"
        "APCA_API_BASE_URL=https://paper-api.alpaca.markets\n"
    )
    loaded = load_settings()
    assert loaded.strategy.strat_reco_topk == 7  # from .env
    assert loaded.data.market_tz == "Asia/Tokyo"  # the environment beats .env
    (tmp_path / ".env").write_text("STRAT_RECO_TOP=7\n")
    with pytest.raises(ConfigError, match=r"STRAT_RECO_TOP \(did you mean 'STRAT_RECO_TOPK'\?\)"):
        load_settings()


def test_a_bad_value_names_its_variable_and_never_a_secret():
    with pytest.raises(ConfigError) as info:
        load_settings(NO_DOTENV, {"KRONOS_LOCK_WAIT_S": "abc", "KRONOS_ALPACA_TIMEOUT_S": "-1"})
    assert str(info.value).startswith("invalid KRONOS_LOCK_WAIT_S 'abc': Input should be")
    assert "invalid KRONOS_ALPACA_TIMEOUT_S '-1'" in str(info.value)


# ------------------------------------------------------------------ records


def test_the_record_is_flat_json_and_names_secrets_only():
    secret = "sk-very-secret-0123456789"
    loaded = load_settings(
        NO_DOTENV,
        {"APCA_PAPER_API_SECRET_KEY": secret, "APCA_API_KEY_ID": "AKID", "STRAT_RECO_TOPK": "3"},
    )
    record = settings_record(loaded)
    text = json.dumps(record)
    assert secret not in text and "AKID" not in text
    assert record["alpaca_trading.paper_secret_key"] == "$APCA_PAPER_API_SECRET_KEY"
    assert record["alpaca_data.api_key"] == "$APCA_API_KEY_ID"
    assert record["alpaca_trading.live_secret_key"] is None  # not set
    assert record["strategy.strat_reco_topk"] == 3 and record["data.db"] == "data/kronos.duckdb"
    sections = {k.split(".")[0] for k in record}
    assert sections == set(Settings.model_fields)
    assert len(record) == sum(len(type(getattr(loaded, s)).model_fields) for s in sections)
    assert len(record) <= 100  # one MLflow log_batch of parameters
    # the hash follows the values, not the secrets' values
    digest = settings_hash(loaded)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    other = AlpacaTradingSettings(APCA_PAPER_API_SECRET_KEY="another")
    same = Settings(**{**dict(loaded), "alpaca_trading": other})
    assert settings_hash(same) == digest
    assert settings_hash(Settings()) != digest


def test_a_paper_cycle_has_a_settings_hash_column(tmp_path):
    from kronos.data.store import Store

    with Store.open(tmp_path / "k.duckdb") as store:
        columns = {r[0] for r in store.con.execute("DESCRIBE paper_cycles").fetchall()}
    assert "settings_hash" in columns


def test_kronos_calibrate_records_the_settings_and_prints_their_hash(
    bundled_db, tmp_path, mlflow_settings, monkeypatch
):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from kronos.cli import app

    monkeypatch.chdir(tmp_path)
    shutil.copy(bundled_db, tmp_path / "k.duckdb")
    monkeypatch.setenv("KRONOS_MLRUNS_DIR", str(mlflow_settings.mlruns_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CALIBRATION_LAMBDA", "0.05")
    args = ["calibrate", "--model", "ewma", "--asof", "2020-03-03", "--since", "2020-03-03"]
    args += ["--db", "k.duckdb", "--model-dir", "models", "--json"]
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    assert row["settings_hash"] == settings_hash(load_settings())
    run = MlflowClient(mlflow_settings.tracking_uri()).get_run(row["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["settings_hash"] == row["settings_hash"]
    assert run.data.params["settings.calibration.calibration_lambda"] == "0.05"


# ------------------------------------------------------------------ the edges only


def _environment_reads(path: Path) -> list[str]:
    """Lines of ``path`` that read the environment or build environment-reading settings."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        what = None
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            what = f"os.{node.attr}"
        elif isinstance(node, ast.Name) and node.id in ("BaseSettings", "getenv", "environ"):
            what = node.id
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in ("pydantic_settings", "dotenv") or (
                root == "os" and {a.name for a in node.names} & {"environ", "getenv"}
            ):
                what = f"from {node.module} import ..."
        elif isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
            if names & {"pydantic_settings", "dotenv"}:
                what = "import " + ", ".join(sorted(names))
        if what:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {what}")
    return found


def test_only_the_edges_read_the_environment():
    reads = [hit for p in sorted(PACKAGE.rglob("*.py")) for hit in _environment_reads(p)]
    outside = [hit for hit in reads if hit.split(":")[0] not in ENVIRONMENT_READERS]
    assert not outside, "environment read outside the edges:\n" + "\n".join(outside)
    # the scan finds what it looks for
    assert any(hit.startswith("kronos/config.py") for hit in reads)
