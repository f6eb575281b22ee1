"""Backtest specs: a YAML file in ``backtests/`` validated into a frozen config.

Every problem names the file and the dotted key path; unknown keys come with a
"did you mean" suggestion. The decision and calibration settings of a backtest
come from the spec alone (class defaults plus the spec's overrides), never from
environment variables or ``.env`` (settings sections never read them), so a
spec reproduces its run.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kronos.backtest.splits import Retrain, WalkForward
from kronos.backtest.strategy_spec import StrategySpec
from kronos.config import (
    CalibrationSettings,
    ConfigModel,
    DataSettings,
    DecisionSettings,
    PolicySettings,
    PortfolioSettings,
    RiskSettings,
    Settings,
    StrategySettings,
    config_hash,
    did_you_mean,
)
from kronos.errors import ConfigError, KronosError
from kronos.models.registry import FORECASTERS, forecaster_class, override_keys

# a base name, then one ``__key=value`` suffix per sweep assignment
NAME_PATTERN = r"^[a-z0-9_-]+(__[a-z0-9_.-]+=[a-z0-9_.-]+)*$"

DECISION_SETTINGS: dict[str, type[ConfigModel]] = {
    "strategy": StrategySettings,
    "portfolio": PortfolioSettings,
    "policy": PolicySettings,
    "risk": RiskSettings,
    "calibration": CalibrationSettings,
}


class SpecError(ConfigError):
    """An invalid backtest spec; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))

    def __reduce__(self) -> tuple:
        return type(self), (self.source, self.problems)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UniverseSpec(_Section):
    """Which symbols trade, and what the strategy is compared with."""

    source: str | None = Field(None, description="bars.source to read; None: any")
    symbols: list[str] | None = Field(None, description="None: every equity with a profile")
    exclude: list[str] = Field(default_factory=list)
    benchmark: str | None = Field(None, description="None: equal-weight buy-and-hold")


class DatesSpec(_Section):
    """The first and last session tested (inclusive)."""

    start: date = date(2005, 1, 3)
    end: date = date(2022, 12, 28)

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, value: date, info: ValidationInfo) -> date:
        start = info.data.get("start")
        if start is not None and value < start:
            raise ValueError(f"end {value} is before start {start}")
        return value


class ForecasterSpec(_Section):
    """The forecaster, its constructor arguments, and whether to calibrate it online."""

    name: str = "ewma"
    params: dict[str, Any] = Field(default_factory=dict)
    calibrate: bool = True
    artifact: str | None = Field(
        None,
        description="a saved model directory, or a version of MLflow's model registry "
        "(models:/kronos-ewma@champion, models:/kronos-ewma/3; downloaded on the driver before "
        "the folds), to load for every fold instead of refitting (refused when it saw data "
        "after the first fold's training cutoff)",
    )

    @field_validator("artifact")
    @classmethod
    def _artifact_uri(cls, value: str | None) -> str | None:
        # a malformed registry URI fails when the spec is read, not after the data loads
        uri = r"models:/[^/@]+(@[^/@]+|/\d+)"
        if value is not None and value.startswith("models:/") and not re.fullmatch(uri, value):
            raise ValueError(
                f"{value!r}: expected models:/<name>@<alias> or models:/<name>/<version>"
            )
        return value

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        # a built-in name, an import path or an entry point; a custom class is checked here
        if value not in FORECASTERS:
            try:
                forecaster_class(value)
            except KronosError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _known_params(self) -> ForecasterSpec:
        # a misspelt parameter fails when the spec is read, not at the first fold
        valid = override_keys(self.name)
        for key in self.params:
            if key not in valid:
                raise ValueError(
                    f"unknown parameter {key!r} of {self.name}{did_you_mean(key, valid)}"
                )
        # ddp starts its workers by re-running the command: a backtest fits once per
        # fold, so each worker would run the whole backtest again
        p = self.params
        many = p.get("devices", 1) != 1 or p.get("num_nodes", 1) != 1
        if many and p.get("strategy", "auto") not in ("ddp_spawn", "ddp_fork", "ddp_notebook"):
            raise ValueError(
                "several devices in a backtest need strategy: ddp_spawn (or ddp_fork); "
                "ddp re-runs the whole command in every process"
            )
        return self


class SplitsSpec(WalkForward):
    """:class:`WalkForward` with the defaults of a backtest spec."""

    train: Literal["expanding", "rolling"] = "expanding"
    train_sessions: int = Field(750, ge=1)
    retrain: Retrain = "yearly"


class RebalanceSpec(_Section):
    """When the decision step runs."""

    every: Literal["daily", "weekly", "monthly"] = "weekly"
    weekday: int = Field(2, ge=0, le=4, description="weekly: this weekday (0=Monday)")


class CostsSpec(_Section):
    """Trading costs and the volume cap."""

    commission_bps: float = Field(1.0, ge=0)
    slippage_bps: float = Field(5.0, ge=0)
    volume_share: float | None = Field(None, gt=0, le=1, description="None: no cap")


class FillsSpec(_Section):
    """Which price fills an order (auto: next open when the source has opens, else next close)."""

    at: Literal["auto", "next_open", "next_close", "close"] = "auto"


class CapitalSpec(_Section):
    """Starting cash."""

    initial_cash: float = Field(1_000_000.0, gt=0)


class DecisionSpec(_Section):
    """Overrides of the decision and calibration settings, by field name."""

    strategy: dict[str, Any] = Field(default_factory=dict)
    portfolio: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
    risk: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)

    @field_validator(*DECISION_SETTINGS)
    @classmethod
    def _overrides_valid(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        settings_cls = DECISION_SETTINGS[str(info.field_name)]
        fields = settings_cls.model_fields
        problems = [(k, "unknown", "") for k in value if k not in fields]
        known = {k: v for k, v in value.items() if k in fields}
        try:
            built = settings_cls(**known)
        except ValidationError as exc:
            problems += [(str(e["loc"][0]), "invalid", _describe(e)) for e in exc.errors()]
        if problems:
            # one error carrying every problem; _problem() spreads them over their paths
            summary = "; ".join(f"{k}: {kind} {text}".strip() for k, kind, text in problems)
            raise PydanticCustomError(
                "decision_override", "{summary}", {"summary": summary, "problems": problems}
            )
        return {k: getattr(built, k) for k in value}


class BacktestSpec(_Section):
    """One backtest, as written in ``backtests/<name>.yaml``."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    seed: int = 7
    universe: UniverseSpec = Field(default_factory=UniverseSpec)
    dates: DatesSpec = Field(default_factory=DatesSpec)
    forecaster: ForecasterSpec = Field(default_factory=ForecasterSpec)
    splits: SplitsSpec = Field(default_factory=SplitsSpec)
    rebalance: RebalanceSpec = Field(default_factory=RebalanceSpec)
    costs: CostsSpec = Field(default_factory=CostsSpec)
    fills: FillsSpec = Field(default_factory=FillsSpec)
    capital: CapitalSpec = Field(default_factory=CapitalSpec)
    decision: DecisionSpec = Field(default_factory=DecisionSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)

    def splitter(self) -> WalkForward:
        """The walk-forward splitter of section ``splits``."""
        return WalkForward(**self.splits.model_dump())

    def decision_settings(self) -> DecisionSettings:
        """Decision settings: class defaults plus ``decision.*`` overrides, no environment."""
        d = self.decision
        return DecisionSettings(
            strategy=StrategySettings(**d.strategy),
            portfolio=PortfolioSettings(**d.portfolio),
            policy=PolicySettings(**d.policy),
            risk=RiskSettings(**d.risk),
            data=DataSettings(),
        )

    def calibration_settings(self) -> CalibrationSettings:
        """Calibration settings: class defaults plus ``decision.calibration``, no environment."""
        return CalibrationSettings(**self.decision.calibration)

    def run_settings(self, base: Settings, db: Path | None = None) -> Settings:
        """The settings a run of this spec uses, for its record.

        ``base``'s tracking, models and Alpaca sections and its store (``db``
        when given); the spec's decision and calibration sections; data rules
        at their defaults, as the backtest reads them (never the environment's).
        """
        d = self.decision_settings()
        return Settings(
            data=DataSettings(db=db or base.data.db, lock_wait_s=base.data.lock_wait_s),
            models=base.models,
            tracking=base.tracking,
            calibration=self.calibration_settings(),
            risk=d.risk,
            strategy=d.strategy,
            portfolio=d.portfolio,
            policy=d.policy,
            alpaca_data=base.alpaca_data,
            alpaca_trading=base.alpaca_trading,
        )


# ------------------------------------------------------------------ loading


def load_spec(path: Path, overrides: Sequence[str] = ()) -> BacktestSpec:
    """The spec in ``path`` with ``--set key=value`` overrides applied, validated."""
    return parse_spec(read_spec_file(path), source=str(path), overrides=overrides)


def read_spec_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a spec file (not yet validated)."""
    source = str(path)
    if not Path(path).is_file():
        raise SpecError(source, ["no such spec file"])
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [f"invalid YAML: {where}{problem}"]) from None
    if not isinstance(raw, dict):
        raise SpecError(source, [f"a spec is a mapping of sections, got {type(raw).__name__}"])
    return raw


def parse_spec(
    raw: Mapping[str, Any],
    source: str = "<spec>",
    overrides: Sequence[str] = (),
    spec_dir: Path | None = None,
) -> BacktestSpec:
    """Validate a raw mapping, after applying ``dotted.key=value`` overrides.

    ``spec_dir`` (default: the folder of ``source`` when it is a file) is where
    a relative ``strategy.file`` is looked up first.
    """
    raw = _copy(raw)
    for item in overrides:
        key, value = _split_assignment(item, source, "--set")
        _assign(raw, key, yaml.safe_load(value), source)
    if spec_dir is None and Path(source).is_file():
        spec_dir = Path(source).resolve().parent
    try:
        return BacktestSpec.model_validate(raw, context={"spec_dir": spec_dir})
    except ValidationError as exc:
        raise SpecError(source, [p for e in exc.errors() for p in _problem(e)]) from None


def expand_sweep(
    spec_or_raw: BacktestSpec | Mapping[str, Any],
    sweeps: Sequence[str],
    source: str = "<spec>",
) -> list[tuple[dict[str, str], BacktestSpec]]:
    """One spec per combination of ``key=v1,v2,...`` values (cartesian, in the order given).

    Each variant is named ``<name>__<key leaf>=<value>...`` and comes with its
    assignments ``{dotted key: value as YAML text}``.
    """
    if isinstance(spec_or_raw, BacktestSpec):
        raw = spec_or_raw.model_dump(mode="json")
    else:
        raw = _copy(spec_or_raw)
    axes: list[tuple[str, list[Any]]] = []
    for item in sweeps:
        key, text = _split_assignment(item, source, "--sweep")
        if key == "name":
            raise SpecError(source, ["--sweep cannot vary 'name' (variants are named for you)"])
        if key in dict(axes):
            raise SpecError(source, [f"--sweep {key!r} given twice"])
        _node(key.split("."), source)  # the key must exist
        values = yaml.safe_load(f"[{text}]")
        if not values:
            raise SpecError(source, [f"--sweep {key!r} has no values"])
        axes.append((key, values))
    if not axes:
        return [({}, parse_spec(raw, source))]
    leaves = [key.rsplit(".", 1)[-1] for key, _ in axes]
    labels = [
        leaf if leaves.count(leaf) == 1 else key
        for leaf, (key, _) in zip(leaves, axes, strict=True)
    ]
    variants = []
    for combo in itertools.product(*(values for _, values in axes)):
        variant = _copy(raw)
        assignment: dict[str, str] = {}
        suffix = ""
        for (key, _), label, value in zip(axes, labels, combo, strict=True):
            _assign(variant, key, value, source)
            assignment[key] = _render(value)
            suffix += f"__{_sanitize(label)}={_sanitize(assignment[key])}"
        variant["name"] = f"{raw.get('name', '')}{suffix}"
        where = f"{source} [{', '.join(f'{k}={v}' for k, v in assignment.items())}]"
        spec_dir = Path(source).resolve().parent if Path(source).is_file() else None
        variants.append((assignment, parse_spec(variant, where, spec_dir=spec_dir)))
    return variants


def spec_hash(spec: BacktestSpec) -> str:
    """sha256 (16 hex digits) of the canonical JSON of the validated spec.

    A default ``strategy`` section (the decision chain) is left out, so specs
    written before it existed keep their hash.
    """
    return config_hash(_dump(spec))


def to_yaml(spec: BacktestSpec) -> str:
    """The resolved spec as YAML (defaults filled in), for run records."""
    return yaml.safe_dump(_dump(spec), sort_keys=False, allow_unicode=True)


def _dump(spec: BacktestSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    if data["strategy"] == StrategySpec().model_dump(mode="json"):
        del data["strategy"]
    return data


# ------------------------------------------------------------------ key paths


_LEAF = object()  # a value, not a section
_FREE = object()  # a free-form mapping: any key, any depth


def _children(node: Any) -> dict[str, Any]:
    """Keys allowed under a section, each with what lies beneath it."""
    out: dict[str, Any] = {}
    for key, info in node.model_fields.items():
        ann = info.annotation
        if node is DecisionSpec:
            out[key] = DECISION_SETTINGS[key]
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out[key] = ann
        elif getattr(ann, "__origin__", None) is dict:
            out[key] = _FREE
        else:
            out[key] = _LEAF
    return out


def _node(keys: Sequence[str], source: str) -> Any:
    """What lies at the key path ``keys``; an unknown key is a :class:`SpecError`."""
    node: Any = BacktestSpec
    for depth, key in enumerate(keys):
        if node is _FREE:
            return _FREE
        where = ".".join(keys[:depth])
        if node is _LEAF:
            raise SpecError(source, [f"{where!r} is a value, not a section"])
        children = _children(node)
        if key not in children:
            raise SpecError(source, [_unknown(keys[: depth + 1], children)])
        node = children[key]
    return node


def _unknown(path: Sequence[Any], allowed: Sequence[str] | Mapping[str, Any]) -> str:
    dotted = _dotted(path)
    return f"unknown key {dotted!r}{did_you_mean(str(path[-1]), allowed)}"


def _dotted(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Mapping[str, Any]) -> str:
    return f"{error['msg']} (got {error['input']!r})"


def _problem(error: Mapping[str, Any]) -> list[str]:
    """Readable problems of one pydantic error, each naming its dotted key path."""
    loc = list(error["loc"])
    if error["type"] == "extra_forbidden":
        parent = _node([str(p) for p in loc[:-1]], "<spec>")
        return [_unknown(loc, _children(parent))]
    if error["type"] == "decision_override":
        fields = DECISION_SETTINGS[str(loc[-1])].model_fields
        return [
            _unknown([*loc, k], fields) if kind == "unknown" else f"{_dotted([*loc, k])}: {text}"
            for k, kind, text in error["ctx"]["problems"]
        ]
    if error["type"] == "missing":
        return [f"{_dotted(loc)}: required key is missing"]
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":
        return [f"{_dotted(loc)}: {msg}"]
    return [f"{_dotted(loc)}: {msg} (got {error['input']!r})"]


# ------------------------------------------------------------------ overrides


def _split_assignment(item: str, source: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(source, [f"{flag} {item!r}: expected dotted.key=value"])
    return key, value


def _assign(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``raw[a][b][c] = value`` for ``key`` ``a.b.c``, once the key is known to exist."""
    parts = key.split(".")
    _node(parts, source)
    target = raw
    for depth, part in enumerate(parts[:-1]):
        child = target.get(part)
        if child is None:
            child = target[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise SpecError(source, [f"cannot set {key!r}: {where!r} is not a mapping"])
        target = child
    target[parts[-1]] = value


def _copy(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_copy(v) for v in raw]
    return raw


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def _sanitize(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_") or "_"
