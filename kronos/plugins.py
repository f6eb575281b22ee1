"""The researcher's own parts, found by import path or entry point.

A part is named in one of three ways, everywhere a built-in name is accepted:

- a built-in name (``"ewma"``), looked up in the caller's table;
- an import path ``"package.module:Attribute"`` (``Attribute`` may be dotted:
  ``"pkg.mod:Outer.Inner"``), imported on the spot;
- a name an installed package registers in an entry-point group
  (:data:`GROUPS`), e.g. in its ``pyproject.toml``::

      [project.entry-points."kronos.forecasters"]
      my_model = "my_pkg.models:MyModel"

Built-in names win over entry points of the same name (a package cannot
silently replace ``ewma``). Every failure is a :class:`~kronos.errors.ConfigError`
naming the reference and what went wrong (no such module, no such attribute,
an import that raised), never a bare ``ImportError``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kronos.errors import ConfigError, did_you_mean

__all__ = [
    "GROUPS",
    "entry_points",
    "is_import_path",
    "load_object",
    "reference_of",
    "resolve",
]

# what a part is, by entry-point group
GROUPS: Mapping[str, str] = {
    "kronos.forecasters": "forecaster",
    "kronos.factors": "factor",
    "kronos.weightings": "weighting",
    "kronos.reviewers": "reviewer",
    "kronos.strategies": "strategy",
}


def is_import_path(ref: str) -> bool:
    """Whether ``ref`` reads as ``package.module:Attribute``."""
    module, sep, attr = ref.partition(":")
    return bool(sep and module and attr) and " " not in ref


def load_object(ref: str, *, what: str = "object") -> Any:
    """The attribute an import path ``"package.module:Attribute"`` names.

    ``what`` names the kind of part in errors ("forecaster", "factor").
    """
    if not is_import_path(ref):
        raise ConfigError(f"{what} {ref!r}: expected 'package.module:Name'")
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        raise ConfigError(
            f"{what} {ref!r}: cannot import module {missing!r} (is it installed or on PYTHONPATH?)"
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(
            f"{what} {ref!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attr.split(".")[:i]])
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                f"{what} {ref!r}: {where} has no attribute {part!r}{did_you_mean(part, names)}"
            )
        obj = getattr(obj, part)
    return obj


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed entry points of ``group`` by name (first one wins on a clash)."""
    out: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        out.setdefault(ep.name, ep)
    return out


def resolve(ref: str, builtins: Mapping[str, str], group: str) -> tuple[Any, str]:
    """The object ``ref`` names and its canonical reference (an import path).

    ``builtins`` maps built-in names to import paths; ``group`` is the
    entry-point group searched after them. An unknown name lists the nearest
    built-in or registered one.
    """
    what = GROUPS.get(group, "object")
    if ref in builtins:
        return load_object(builtins[ref], what=what), builtins[ref]
    if is_import_path(ref):
        return load_object(ref, what=what), ref
    registered = entry_points(group)
    if ref in registered:
        ep = registered[ref]
        try:
            return ep.load(), ep.value
        except Exception as exc:
            raise ConfigError(
                f"{what} {ref!r} (entry point {ep.value!r} of group {group!r}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    known = [*builtins, *registered]
    raise ConfigError(
        f"unknown {what} {ref!r}{did_you_mean(ref, known)}; "
        f"or give an import path 'package.module:Name'"
    )


def reference_of(obj: Any) -> str:
    """The import path ``"module:QualName"`` of a class or function (to record and reload)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname:
        raise ConfigError(f"{obj!r} has no import path (define it at a module's top level)")
    return f"{module}:{qualname}"


# ------------------------------------------------------------------ names in settings

# the whitepaper blend's factors (kronos.decision.strategist.BLEND has these keys)
BUILTIN_FACTORS = ("mom_s", "mom_m", "quality", "sentiment", "revisions", "ratings")
# names a custom factor cannot take: its columns (``<name>``, ``z_<name>``,
# ``c_<name>``) would overwrite the strategist's own inputs and outputs
RESERVED_FACTOR_NAMES = frozenset(
    {
        "symbol", "sector", "market_cap", "avg_dollar_vol_60d", "mom_60", "rev_eps_chg",
        "rev_source", "rating", "quality_raw", "missing", "forecast_z", "score",
        "excluded_reason", "eligible", "utility", "ineligible_reason",
        "roe", "roa", "gm", "dta", "rev",  # z_<name>: the fundamentals inputs z_roe .. z_rev
        "forecast", "tilt",  # c_<name>: c_forecast, c_tilt
    }
)  # fmt: skip
FACTOR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
BUILTIN_WEIGHTINGS = ("softmax",)  # kronos.decision.weighting.WEIGHTINGS
BUILTIN_REVIEWERS = ("allow_all",)  # kronos.decision.weighting.REVIEWERS


def check_part_name(ref: str, builtins: Iterable[str], group: str) -> str:
    """``ref`` if it names a built-in, an import path or an entry point of ``group``.

    Only the form is checked (nothing is imported): a misspelt built-in or
    entry-point name fails here, naming the nearest; an import path is loaded
    where it is used (:func:`kronos.plugins.resolve`).
    """
    if ref in builtins or is_import_path(ref):
        return ref
    registered = entry_points(group)
    if ref in registered:
        return ref
    what = GROUPS.get(group, "object")
    raise ValueError(
        f"unknown {what} {ref!r}{did_you_mean(ref, [*builtins, *registered])}; "
        "or give an import path 'package.module:Name'"
    )
