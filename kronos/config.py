"""Frozen, typed settings.

Values resolve as: explicit argument > environment variable (or ``.env``) >
default. Each component receives the settings object it needs; nothing reads
the environment at import time.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_COMMON = {"frozen": True, "extra": "ignore", "env_file": ".env", "env_file_encoding": "utf-8"}


class DataSettings(BaseSettings):
    """Where the store lives and the data-quality thresholds (whitepaper section 9)."""

    model_config = SettingsConfigDict(env_prefix="KRONOS_", **_COMMON)

    db: Path = Field(Path("data/kronos.duckdb"), description="DuckDB file (KRONOS_DB)")
    market_tz: str = Field("America/New_York", description="exchange time zone of daily bars")
    calendar: str = Field(
        "XNYS", description="exchange calendar of sessions (KRONOS_CALENDAR; none: 24/7)"
    )
    lock_wait_s: float = Field(
        30.0, ge=0, description="how long to wait for a store another process holds (seconds)"
    )
    market_close: str = Field("16:00", description="local time a daily bar becomes known")
    max_price: float = Field(
        1e6,
        gt=0,
        description="sanity bound: ingest refuses a price above it (KRONOS_MAX_PRICE)",
    )
    symbol_pattern: str = Field(
        r"^[A-Z][A-Z0-9.\-]{0,14}$",
        description="regular expression a symbol must match once stripped and upper-cased "
        "(KRONOS_SYMBOL_PATTERN)",
    )
    qa_extreme_move: float = Field(
        0.30, gt=0, description="|daily log return| above which a move counts as extreme"
    )

    @field_validator("symbol_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    qa_max_extreme_frac: float = Field(
        0.001, ge=0, description="largest allowed share of extreme moves per symbol (0.1%)"
    )
    qa_min_span_years: float = Field(5.0, ge=0, description="shortest allowed history")
    qa_max_gap_days: int = Field(
        5, ge=1, description="most sessions allowed to be missing between two bars"
    )


def resolve_db_path(cli_value: Path | str | None, settings: DataSettings | None = None) -> Path:
    """The store path: ``--db`` > ``KRONOS_DB`` > ``data/kronos.duckdb``."""
    if cli_value is not None:
        return Path(cli_value)
    return (settings or DataSettings()).db


def config_hash(config: BaseSettings | dict) -> str:
    """A stable short hash of a settings object or a config dict, for run records."""
    data = config if isinstance(config, dict) else config.model_dump(mode="json")
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ModelSettings(BaseSettings):
    """Where model artifacts live and when a new one may replace ``latest``."""

    model_config = SettingsConfigDict(**_COMMON)

    model_dir: Path = Field(Path("data/models"), description="artifact root (MODEL_DIR)")
    promotion_tolerance: float = Field(
        0.0,
        ge=0,
        validation_alias="KRONOS_PROMOTION_TOLERANCE",
        description="promote when validation CRPS <= baseline CRPS x (1 + tolerance)",
    )
    promotion_baseline: str = Field(
        "ewma", validation_alias="KRONOS_PROMOTION_BASELINE", description="gate baseline model"
    )


class TrackingSettings(BaseSettings):
    """The MLflow store: any tracking URI, SQLite under ``mlruns/`` by default."""

    model_config = SettingsConfigDict(**_COMMON)

    mlflow_tracking_uri: str | None = Field(None, description="MLFLOW_TRACKING_URI")
    mlruns_dir: Path = Field(Path("mlruns"), validation_alias="KRONOS_MLRUNS_DIR")

    def tracking_uri(self) -> str:
        """The URI to use: ``MLFLOW_TRACKING_URI`` or SQLite in ``mlruns/``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.mlruns_dir / 'mlflow.db').resolve()}"

    def artifact_root(self) -> str:
        """Where a local store keeps run artifacts."""
        return (self.mlruns_dir / "artifacts").resolve().as_uri()


class CalibrationSettings(BaseSettings):
    """The online calibrator (whitepaper section 5)."""

    model_config = SettingsConfigDict(**_COMMON)

    calibration_enabled: bool = Field(True, description="apply bias/scale at inference")
    calibration_file: Path | None = Field(None, description="JSON export/import of the state")
    calibration_lambda: float = Field(
        0.02, gt=0, lt=1, description="EWMA weight (~35-day half-life)"
    )
    calibration_max_return: float = Field(0.10, gt=0, description="skip |return| above this")
    calibration_max_resid_sigma: float = Field(
        4.0, gt=0, description="skip |residual| above k sigma"
    )
    calibration_bias_clamp: float = Field(0.003, ge=0, description="|bias| at most (return units)")
    calibration_scale_min: float = Field(0.8, gt=0)
    calibration_scale_max: float = Field(1.8, gt=0)
    calibration_min_samples: int = Field(20, ge=1, description="below: borrow sector, then global")
    calibration_target_coverage: float = Field(0.90, gt=0, lt=1)
    calibration_scale_gain: float = Field(
        0.03, gt=0, description="step of the log-scale coverage controller"
    )
    calibration_dynamic_lambda: bool = Field(
        False, description="lambda grows with the regime encoder's p_turbulent (whitepaper 10)"
    )
    calibration_lambda_turbulent: float = Field(
        0.06, gt=0, lt=1, description="lambda when p_turbulent = 1 (calibration_lambda at 0)"
    )
    calibration_dynamic_gain: bool = Field(
        False, description="with dynamic lambda, scale the coverage gain by lambda_t / lambda too"
    )


class RiskSettings(BaseSettings):
    """Fail-safe controller thresholds and breaker lifetimes (whitepaper sections 1, 7, 11)."""

    model_config = SettingsConfigDict(**_COMMON)

    failsafe_resid_z: float = Field(4.0, gt=0, description="|residual|/sigma that is a breach")
    failsafe_coverage_window: int = Field(20, ge=2, description="sessions of rolling coverage")
    failsafe_coverage_min: float = Field(0.70, gt=0, lt=1, description="rolling coverage floor")
    failsafe_sector_breach_frac: float = Field(0.5, gt=0, le=1)
    failsafe_global_breach_frac: float = Field(0.3, gt=0, le=1)
    failsafe_min_sector_size: int = Field(3, ge=1)
    failsafe_symbol_cooldown_hours: float = Field(24, gt=0)
    failsafe_sector_cooldown_hours: float = Field(48, gt=0)
    failsafe_global_cooldown_hours: float = Field(72, gt=0)
    headline_spike_mult: float = Field(5.0, gt=1, description="news count vs own baseline")
    headline_baseline_days: int = Field(20, ge=2)
    headline_min_count: int = Field(5, ge=1)
    headline_cooldown_hours: float = Field(24, gt=0)
    enable_panic_exit: bool = Field(False, description="flatten the book on a global trip")


class StrategySettings(BaseSettings):
    """Strategist and regime tuner (whitepaper section 6)."""

    model_config = SettingsConfigDict(**_COMMON)

    strat_min_market_cap: float = Field(10e9, ge=0, description="universe filter, USD")
    strat_min_dollar_vol: float = Field(10e6, ge=0, description="60-day avg dollar volume, USD")
    strat_reco_topk: int = Field(20, ge=1, description="recommendations written per day")
    strat_enable_turnaround: bool = Field(False, description="require mom > 0 and revisions > 0")
    strat_mom_short_days: int = Field(5, ge=1, description="short momentum lookback (sessions)")
    strat_mom_medium_days: int = Field(60, ge=2, description="medium momentum lookback")
    strat_sentiment_days: int = Field(5, ge=1, description="window of recent senti_mean")
    strat_forecast_in_score: bool = Field(
        False, description="add the calibrated forecast z-score to the blend"
    )
    strat_forecast_weight: float = Field(0.1, ge=0, description="its weight when enabled")
    strat_tilt: float = Field(0.25, ge=0, description="score tilt of favoured/disfavoured sectors")
    strat_breadth_on: float = Field(0.5, ge=0, le=1, description="breadth at or above: risk-on")
    strat_threshold_bps_on: float = Field(10, ge=0, description="threshold_bps in risk-on")
    strat_threshold_bps_off: float = Field(20, ge=0, description="threshold_bps in risk-off")
    strat_turbulent_off: float = Field(
        0.5,
        gt=0,
        description="risk-off when the regime encoder's p_turbulent is at or above (> 1: never)",
    )


class PortfolioSettings(BaseSettings):
    """Allocator (``PT_*``, whitepaper section 7)."""

    model_config = SettingsConfigDict(**_COMMON)

    pt_score_exp: float = Field(1.0, gt=0, description="softmax temperature on positive scores")
    pt_gross_max_pct: float = Field(0.95, gt=0, le=1)
    pt_cash_floor_pct: float = Field(0.05, ge=0, lt=1)
    pt_max_pos_pct: float = Field(0.10, gt=0, le=1)
    pt_sector_max_pct: float = Field(0.30, gt=0, le=1)
    pt_turnover_cap_pct: float = Field(0.25, gt=0, le=2)
    pt_replacement_fric_bps: float = Field(10, ge=0)
    pt_block_if_llm_deny: bool = Field(True)
    pt_min_order_notional: float = Field(100, ge=0, description="dust filter, USD")
    pt_no_trade_band_pct: float = Field(0.005, ge=0, description="skip |target - current| below")


class PolicySettings(BaseSettings):
    """Policy gates and planner (``POLICY_*``, ``PLANNER_*``, whitepaper sections 8, 11)."""

    model_config = SettingsConfigDict(**_COMMON)

    policy_require_reco: bool = Field(True, description="buys only for recommended names")
    policy_min_abs_dev: float = Field(
        0.001, ge=0, description="a buy needs p50 at least this (return units)"
    )
    policy_min_sigma_z: float = Field(
        0.1, ge=0, description="a buy needs p50 / sigma at least this"
    )
    policy_min_notional_usd: float = Field(200, ge=0, description="autosize up to this")
    policy_min_trade_interval_secs: float = Field(3600, ge=0)
    planner_z_dev_thresh: float = Field(0.5, ge=0, description="z above which a limit is used")
    planner_limit_notional: float = Field(25_000, ge=0, description="notional above: limit order")
    planner_bracket_price_max: float = Field(500, ge=0, description="brackets only below price")
    planner_cooldown_mins: float = Field(60, ge=0, description="per-symbol cooldown")


@dataclass(frozen=True)
class DecisionSettings:
    """Every setting the decision step reads, each from its own environment names."""

    strategy: StrategySettings = field(default_factory=StrategySettings)
    portfolio: PortfolioSettings = field(default_factory=PortfolioSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    data: DataSettings = field(default_factory=DataSettings)


def setting_errors(exc: ValidationError) -> str:
    """A settings validation error as one line per bad value, naming its variable.

    ``KRONOS_LOCK_WAIT_S='abc'`` reads ``invalid KRONOS_LOCK_WAIT_S 'abc': Input
    should be a valid number``, never a traceback.
    """
    model = globals().get(exc.title)
    prefix = ""
    if isinstance(model, type) and issubclass(model, BaseSettings):
        prefix = str(model.model_config.get("env_prefix") or "")
    parts = []
    for e in exc.errors():
        field = str(e["loc"][0]) if e["loc"] else "?"
        info = model.model_fields.get(field) if isinstance(model, type) else None
        alias = info.validation_alias if info is not None else None
        name = alias if isinstance(alias, str) else (prefix + field).upper()
        message = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"invalid {name} {e.get('input')!r}: {message}")
    return "; ".join(parts)


def chdir_project(start: Path | None = None) -> Path:
    """Work from the project root (relative paths such as ``data/`` start there).

    JupyterLab starts a notebook's kernel in ``notebooks/``; papermill runs
    start at the root. Walks up from ``start`` (default: the working directory)
    to the first directory holding ``pyproject.toml`` and ``kronos/``; stays
    put when there is none (an installed package used elsewhere).
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "kronos").is_dir():
            os.chdir(candidate)
            return candidate
    return here


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint for an unknown name: the closest choice, else the list of choices."""
    names = sorted(choices)
    close = difflib.get_close_matches(word, names, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (one of: {', '.join(names)})" if names else ""
