"""Run specs (``experiments/*.yaml``): a notebook, its parameters, an experiment, a cron."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kronos.config import did_you_mean
from kronos.runner.base import WORKFLOWS, RunnerError
from kronos.runner.params import checked_parameters

# ------------------------------------------------------------------ run specs

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELD_BOUNDS = (  # name, low, high, names
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),  # 0 and 7 are Sunday
)
_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def validate_cron(expr: str) -> str:
    """A five-field cron expression (or ``@daily``-style macro), whitespace normalised.

    Fields take ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``,
    lists ``a,b`` and, for months and weekdays, names (``jan``, ``mon``).
    """
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text.lower() in _MACROS:
            return text.lower()
        raise ValueError(f"unknown cron macro {text!r}{did_you_mean(text.lower(), _MACROS)}")
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"cron {text!r} has {len(fields)} fields; expected 5: minute hour day month weekday"
        )
    for value, (label, low, high, names) in zip(fields, _FIELD_BOUNDS, strict=True):
        for item in value.split(","):
            problem = _cron_item(item, low, high, names)
            if problem:
                raise ValueError(f"cron {text!r}: {label} {item!r}: {problem}")
    return text


def _cron_item(item: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    """What is wrong with one list item of a cron field, or None."""
    span, _, step = item.partition("/")
    if _ and not (step.isdigit() and int(step) >= 1):
        return f"step {step!r} is not a positive number"
    if span == "*":
        return None

    def number(token: str) -> int | None:
        if token.isdigit():
            return int(token)
        if token.lower() in names:
            return names.index(token.lower()) + (1 if low == 1 else 0)
        return None

    ends = span.split("-")
    if len(ends) > 2 or not all(ends):
        return "expected *, a number, a name or a range a-b"
    values = [number(e) for e in ends]
    if any(v is None for v in values):
        return "expected *, a number, a name or a range a-b"
    if any(not low <= v <= high for v in values):  # type: ignore[operator]
        return f"out of range {low}-{high}"
    if len(values) == 2 and values[0] > values[1]:  # type: ignore[operator]
        return "range runs backwards"
    return None


class RunSpec(BaseModel):
    """A scheduled or repeatable notebook run, as written in ``experiments/<name>.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    notebook: Path = Field(description="relative to the repository root")
    parameters: dict[str, Any] = Field(default_factory=dict)
    experiment: str | None = Field(None, description="default: the notebook's workflow")
    cron: str | None = Field(None, description="five-field cron, in the machine's time zone")
    timeout: int | None = Field(None, gt=0, description="seconds per cell; None: no limit")
    description: str = ""

    @field_validator("notebook")
    @classmethod
    def _relative_notebook(cls, value: Path) -> Path:
        if value.is_absolute() or value.suffix != ".ipynb":
            raise ValueError(f"expected a .ipynb path relative to the repository, got {value}")
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return None if value is None else validate_cron(value)

    @model_validator(mode="before")
    @classmethod
    def _workflow_experiment(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("experiment") is None and data.get("notebook"):
            stem = Path(str(data["notebook"])).stem
            if stem in WORKFLOWS:
                data = {**data, "experiment": WORKFLOWS[stem]}
        return data


def load_run_spec(path: Path) -> RunSpec:
    """The run spec in ``path``, validated; problems name the file and the key."""
    source = str(path)
    if not Path(path).is_file():
        raise RunnerError("no such run spec", source)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise RunnerError(f"invalid YAML: {where}{getattr(exc, 'problem', exc)}", source) from None
    if not isinstance(raw, dict):
        raise RunnerError(f"a run spec is a mapping, got {type(raw).__name__}", source)
    try:
        return RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise RunnerError([_spec_problem(e) for e in exc.errors()], source) from None


def _spec_problem(error: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}{did_you_mean(key, RunSpec.model_fields)}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":
        return f"{key}: {msg}"
    return f"{key}: {msg} (got {error['input']!r})"


def spec_parameters(
    spec: RunSpec, repo: Path, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The spec's parameters plus ``overrides``, checked against its notebook under ``repo``."""
    return checked_parameters(repo / spec.notebook, {**spec.parameters, **(overrides or {})})[1]


def schedule_lines(spec_paths: Iterable[Path], repo: Path, kronos_bin: str) -> list[str]:
    """Crontab lines (a comment naming each spec, then its entry) for specs with a cron.

    ``kronos_bin`` goes in as written, so it may be ``/path/python -m kronos``.
    """
    lines = []
    for path in spec_paths:
        spec = load_run_spec(path)
        if spec.cron is None:
            continue
        try:
            shown = Path(path).resolve().relative_to(repo.resolve())
        except ValueError:
            shown = Path(path).resolve()
        command = (
            f"cd {shlex.quote(str(repo.resolve()))} && {kronos_bin} run "
            f"{shlex.quote(str(shown))} >> experiments/runs/cron.log 2>&1"
        )
        about = f": {spec.description.splitlines()[0]}" if spec.description else ""
        lines.append(f"# {spec.name} ({shown}){about}")
        lines.append(f"{spec.cron} {command.replace('%', chr(92) + '%')}")  # cron: % is newline
    return lines
