"""Frozen, typed settings, and the one loader that reads the environment.

Every section is a frozen pydantic model that refuses unknown keys: a misspelt
keyword (``StrategySettings(strat_reco_top=5)``) raises :class:`ConfigError`
naming the key and the nearest valid one. Building a section in code gives its
defaults plus the keywords, never the environment.

:func:`load_settings` is the one reader of ``os.environ`` and ``.env``; only the
edges call it (the CLI, notebook setup cells, the service), once, and pass the
sections on: ``settings = load_settings()``, then ``settings.data``,
``settings.decision()``... Values resolve as: environment > ``.env`` > default.
Every field keeps the environment name it always had (``KRONOS_DB``,
``STRAT_RECO_TOPK``, ``MODEL_DIR``, ...): a section's ``env_prefix`` plus the
field name, upper-cased, or the field's ``validation_alias``. An unknown
``KRONOS_*`` variable, or an unknown ``.env`` key with one of our prefixes, is
refused naming the nearest valid name, so a typo is never silently ignored.

Runs record :func:`settings_record` (flat, JSON-safe, secrets as the names of
their variables only) and :func:`settings_hash`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from kronos.config_alpaca import AlpacaDataSettings, AlpacaTradingSettings
from kronos.config_base import ConfigModel
from kronos.errors import ConfigError, did_you_mean
from kronos.plugins import (
    BUILTIN_FACTORS,
    BUILTIN_REVIEWERS,
    BUILTIN_WEIGHTINGS,
    FACTOR_NAME,
    RESERVED_FACTOR_NAMES,
    check_part_name,
)

# where an unknown name is refused: any KRONOS_* variable of the environment, and in
# .env any key with one of these prefixes (MLFLOW_*, APCA_* and the like also belong
# to other tools, so they are never refused)
ENV_STRICT_PREFIXES = ("KRONOS_",)
DOTENV_STRICT_PREFIXES = (
    "KRONOS_",
    "STRAT_",
    "PT_",
    "POLICY_",
    "PLANNER_",
    "FAILSAFE_",
    "HEADLINE_",
    "CALIBRATION_",
)


class DataSettings(ConfigModel):
    """Where the store lives and the data-quality thresholds (whitepaper section 9)."""

    env_prefix: ClassVar[str] = "KRONOS_"

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


def resolve_db_path(cli_value: Path | str | None, settings: DataSettings) -> Path:
    """The store path: ``--db`` > ``settings.db`` (``KRONOS_DB`` > ``data/kronos.duckdb``)."""
    if cli_value is not None:
        return Path(cli_value)
    return settings.db


def config_hash(config: BaseModel | Mapping[str, Any]) -> str:
    """A stable short hash of a settings object or a config dict, for run records."""
    data = dict(config) if isinstance(config, Mapping) else config.model_dump(mode="json")
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ModelSettings(ConfigModel):
    """Where model artifacts live and when a new one may replace ``latest``."""

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


class TrackingSettings(ConfigModel):
    """The MLflow store: any tracking URI, SQLite under ``mlruns/`` by default."""

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


class CalibrationSettings(ConfigModel):
    """The online calibrator (whitepaper section 5)."""

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
        0.05, gt=0, description="step of the log-scale coverage controller"
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


class RiskSettings(ConfigModel):
    """Fail-safe controller thresholds and breaker lifetimes (whitepaper sections 1, 7, 11)."""

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


class FactorSpec(ConfigModel):
    """One factor of the strategist's blend (``STRAT_FACTORS``, ``decision.strategy.factors``).

    A built-in factor (:data:`BUILTIN_FACTORS`) takes only ``weight`` (0 removes
    it); any other factor needs ``fn``: an import path ``package.module:function``
    or an entry-point name of group ``kronos.factors``, called as
    ``fn(store, asof, symbols) -> frame[symbol, value]``.
    """

    fn: str | None = Field(None, description="import path or entry point of kronos.factors")
    weight: float = Field(allow_inf_nan=False, description="blend weight of its z-score")

    @field_validator("fn")
    @classmethod
    def _known_fn(cls, value: str | None) -> str | None:
        return None if value is None else check_part_name(value, (), "kronos.factors")


class StrategySettings(ConfigModel):
    """Strategist and regime tuner (whitepaper section 6)."""

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
    factors: dict[str, FactorSpec] = Field(
        default_factory=dict,
        validation_alias="STRAT_FACTORS",
        description="blend changes, JSON: {name: {fn, weight}}; empty: the whitepaper blend",
    )

    def __hash__(self) -> int:
        # frozen sections hash by value; ``factors`` is a dict, so hash its JSON
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))

    def custom_factors(self) -> dict[str, FactorSpec]:
        """The factors of ``factors`` that are not built in and weigh something, in order."""
        return {k: v for k, v in self.factors.items() if k not in BUILTIN_FACTORS and v.weight != 0}

    @field_validator("factors", mode="before")
    @classmethod
    def _factors_json(cls, value: Any) -> Any:
        if isinstance(value, str):  # STRAT_FACTORS as JSON
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc}); expected {{name: {{fn, weight}}}}") from None
        return value

    @field_validator("factors")
    @classmethod
    def _factor_names(cls, value: dict[str, FactorSpec]) -> dict[str, FactorSpec]:
        for name, spec in value.items():
            if name in BUILTIN_FACTORS:
                if spec.fn is not None:
                    raise ValueError(
                        f"factor {name!r} is built in: give only its weight "
                        f"(or name your factor otherwise)"
                    )
                continue
            if not FACTOR_NAME.match(name) or name.startswith(("z_", "c_")):
                raise ValueError(
                    f"factor name {name!r}: lower-case letters, digits and '_', "
                    "starting with a letter, at most 40 characters, not z_/c_..."
                )
            if name in RESERVED_FACTOR_NAMES:
                raise ValueError(
                    f"factor name {name!r} is taken by a strategist column "
                    f"({name}, z_{name} or c_{name}); choose another name"
                )
            if spec.fn is None:
                raise ValueError(
                    f"factor {name!r} needs fn (an import path or a kronos.factors entry "
                    f"point); built-in factors{did_you_mean(name, BUILTIN_FACTORS)}"
                )
        return value


class PortfolioSettings(ConfigModel):
    """Allocator (``PT_*``, whitepaper section 7)."""

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
    pt_weighting: str = Field(
        "softmax",
        description="weights of the names in the book: a built-in name, an import path or "
        "a kronos.weightings entry point, called as fn(scores, symbols, settings)",
    )
    pt_reviewer: str = Field(
        "allow_all",
        description="allow/deny review of the ideas: a built-in name, an import path or a "
        "kronos.reviewers entry point (a class built with no arguments, or a callable "
        "returning a reviewer)",
    )

    @field_validator("pt_weighting")
    @classmethod
    def _known_weighting(cls, value: str) -> str:
        return check_part_name(value, BUILTIN_WEIGHTINGS, "kronos.weightings")

    @field_validator("pt_reviewer")
    @classmethod
    def _known_reviewer(cls, value: str) -> str:
        return check_part_name(value, BUILTIN_REVIEWERS, "kronos.reviewers")


class PolicySettings(ConfigModel):
    """Policy gates and planner (``POLICY_*``, ``PLANNER_*``, whitepaper sections 8, 11)."""

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


class DecisionSettings(ConfigModel):
    """Every setting the decision step reads; build it with :meth:`Settings.decision`."""

    strategy: StrategySettings = Field(default_factory=StrategySettings)
    portfolio: PortfolioSettings = Field(default_factory=PortfolioSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    data: DataSettings = Field(default_factory=DataSettings)


def setting_errors(exc: ValidationError) -> str:
    """A settings validation error as one line per bad value, naming its variable.

    ``KRONOS_LOCK_WAIT_S='abc'`` reads ``invalid KRONOS_LOCK_WAIT_S 'abc': Input
    should be a valid number``, never a traceback.
    """
    model = SECTIONS.get(exc.title)
    names = model.env_names() if model is not None else {}
    by_alias = {env: f for f, env in names.items()}
    parts = []
    for e in exc.errors():
        field = str(e["loc"][0]) if e["loc"] else "?"
        name = names.get(field, field if field.isupper() else field.upper())
        message = str(e["msg"]).removeprefix("Value error, ")
        info = model.model_fields.get(by_alias.get(field, field)) if model is not None else None
        if info is not None and "SecretStr" in str(info.annotation):  # never show a key
            parts.append(f"invalid {name}: {message}")
        else:
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


# ------------------------------------------------------------------ the root and its loader


class Settings(ConfigModel):
    """Every section, resolved once at an edge by :func:`load_settings` and passed on."""

    data: DataSettings = Field(default_factory=DataSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    strategy: StrategySettings = Field(default_factory=StrategySettings)
    portfolio: PortfolioSettings = Field(default_factory=PortfolioSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    alpaca_data: AlpacaDataSettings = Field(default_factory=AlpacaDataSettings)
    alpaca_trading: AlpacaTradingSettings = Field(default_factory=AlpacaTradingSettings)

    def decision(self) -> DecisionSettings:
        """The sections the decision step reads."""
        return DecisionSettings(
            strategy=self.strategy,
            portfolio=self.portfolio,
            policy=self.policy,
            risk=self.risk,
            data=self.data,
        )


# section classes by name (the title of their validation errors)
SECTIONS: dict[str, type[ConfigModel]] = {
    info.annotation.__name__: info.annotation  # type: ignore[union-attr]
    for info in Settings.model_fields.values()
}


def env_names() -> dict[str, tuple[str, str]]:
    """Every environment name we read -> (section, field)."""
    return {
        env: (section, field)
        for section, info in Settings.model_fields.items()
        for field, env in info.annotation.env_names().items()  # type: ignore[union-attr]
    }


def load_settings(
    env_file: Path | str | None = ".env", environ: Mapping[str, str] | None = None
) -> Settings:
    """Every section from the environment (``environ``, default ``os.environ``) and ``env_file``.

    Called only at the edges: the CLI, notebook setup cells, the service. The
    environment beats ``.env``, which beats the defaults; names match in any case.

    Raises:
        ConfigError: a value is invalid (naming its variable), or a ``KRONOS_*``
            variable or an ``.env`` key with one of our prefixes is unknown (naming
            the nearest valid name).

    """
    from dotenv import dotenv_values

    environ = os.environ if environ is None else environ
    env = {k.upper(): v for k, v in environ.items()}
    path = Path(env_file) if env_file is not None else None
    dotenv: dict[str, str] = {}
    if path is not None and path.is_file():
        dotenv = {k.upper(): v for k, v in dotenv_values(path).items() if v is not None}
    known = env_names()
    _refuse_unknown(env, ENV_STRICT_PREFIXES, known, "in the environment")
    _refuse_unknown(dotenv, DOTENV_STRICT_PREFIXES, known, f"in {path}")
    values: dict[str, dict[str, str]] = {section: {} for section in Settings.model_fields}
    for name, (section, field) in known.items():
        if name in env:
            values[section][field] = env[name]
        elif name in dotenv:
            values[section][field] = dotenv[name]
    sections: dict[str, Any] = {}
    problems = []
    for section, info in Settings.model_fields.items():
        try:
            sections[section] = info.annotation.model_validate(values[section])  # type: ignore[union-attr]
        except ValidationError as exc:
            problems.append(setting_errors(exc))
    if problems:
        raise ConfigError("; ".join(problems))
    return Settings(**sections)


def _refuse_unknown(
    source: Mapping[str, str], prefixes: tuple[str, ...], known: Mapping[str, Any], where: str
) -> None:
    hints = []
    for name in sorted(source):
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is not None and name not in known:
            hints.append(name + did_you_mean(name, [n for n in known if n.startswith(prefix)]))
    if hints:
        raise ConfigError(f"unknown setting {'; '.join(hints)} {where}")


def settings_record(settings: Settings) -> dict[str, Any]:
    """The resolved settings, flat (``data.db``, ``strategy.strat_reco_topk``...) and JSON-safe.

    A secret is recorded as the name of its variable when set (``$APCA_API_KEY_ID``),
    ``None`` when not: never its value.
    """
    out: dict[str, Any] = {}
    for section in Settings.model_fields:
        part: ConfigModel = getattr(settings, section)
        names = part.env_names()
        dumped = part.model_dump(mode="json")
        for field in type(part).model_fields:
            value = getattr(part, field)
            if isinstance(value, SecretStr):
                out[f"{section}.{field}"] = f"${names[field]}"
            elif isinstance(dumped[field], dict):  # one JSON text, as its variable holds it
                out[f"{section}.{field}"] = json.dumps(dumped[field], sort_keys=True)
            else:
                out[f"{section}.{field}"] = dumped[field]
    return out


def settings_hash(settings: Settings) -> str:
    """A stable short hash of the resolved settings (of :func:`settings_record`)."""
    return config_hash(settings_record(settings))
