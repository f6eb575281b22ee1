"""Imports go one way: down the layer list of ARCHITECTURE.md (docs/layout.md).

A module may import modules of its own layer or of any layer listed before
its own; never one listed after (an "upward" import). Lazy imports inside
functions count too: they are the same dependency, only later.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kronos"

# lowest first; each entry is a module or a package prefix
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kronos",),
    (
        "kronos.errors",
        "kronos.interrupts",
        "kronos.config",
        "kronos.config_base",
        "kronos.config_alpaca",
        "kronos.calendar",
        "kronos.plugins",
    ),
    ("kronos.data",),
    ("kronos.features",),
    ("kronos.metrics", "kronos.forecast_quality"),
    ("kronos.models",),
    ("kronos.calibration", "kronos.nightly", "kronos.forecasting"),
    ("kronos.risk",),
    ("kronos.decision",),
    ("kronos.execution",),
    ("kronos.backtest",),
    ("kronos.tracking", "kronos.mlflow_registry"),
    ("kronos.runner",),
    ("kronos.testing",),
    (
        "kronos.bench",
        "kronos.cli",
        "kronos.serve",
        "kronos.serve_docs",
        "kronos.serve_models",
        "kronos.serve_request",
        "kronos.serve_store",
        "kronos.__main__",
    ),
)


def layer_of(module: str) -> int:
    """The index of the layer holding ``module`` (longest matching prefix)."""
    best, found = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    assert found >= 0, f"{module} is in no layer: add it to LAYERS and docs/layout.md"
    return found


def module_name(path: Path) -> str:
    """``kronos/decision/step.py`` -> ``kronos.decision.step``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kronos_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``kronos`` import in a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "kronos":  # from kronos import risk
                names = [f"kronos.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names if n.split(".")[0] == "kronos"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "kronos"]
    return out


def test_no_module_imports_upward() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        mine = layer_of(here)
        for line, target in kronos_imports(path):
            if layer_of(target) > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {here} -> {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_layer_of_finds_the_longest_prefix() -> None:
    assert layer_of("kronos.decision.step") == layer_of("kronos.decision")
    assert layer_of("kronos.data.sources.files") < layer_of("kronos.decision.planner")
    assert layer_of("kronos.cli.paper") > layer_of("kronos.testing.fake_alpaca")
