"""One exception root: every kronos error is a KronosError, pickles, and is all the CLI catches."""

from __future__ import annotations

import ast
import builtins
import importlib
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

import kronos
from kronos.cli import app
from kronos.data.ingest import UpsertResult
from kronos.errors import ConfigError, InputError, KronosError, LookAhead, Problem, StoreBusy

PACKAGE = Path(kronos.__file__).parent
CLI = [*sorted((PACKAGE / "cli").glob("*.py")), PACKAGE / "serve.py"]

# (file, exception) a command may catch besides the KronosError family, and why
ALLOWED_CATCHES = {
    ("cli/__init__.py", "KeyboardInterrupt"): "Ctrl-C and stop signals: exit 130/143/129",
    ("cli/__init__.py", "SystemExit"): "Click's exit 130 mapped to the signal that stopped",
    ("cli/__init__.py", "ValidationError"): "a bad setting in the environment: one line, exit 2",
    ("cli/run.py", "KeyboardInterrupt"): "the notebook's MLflow run ends KILLED",
    ("cli/paper.py", "KeyboardInterrupt"): "the paper run ends KILLED",
    ("cli/_common.py", "ValueError"): "parse_day/parse_moment turn it into an InputError",
    ("serve_store.py", "OSError"): "a store file that is not there has no stamp",
    ("serve_store.py", "duckdb.Error"): "an unreadable store is a 503",
    ("serve.py", "PackageNotFoundError"): "no installed version: 'unknown'",
    ("serve.py", "Exception"): "the model loads in a thread: any failure is shown on /health "
    "and ends `kronos serve` with exit 2 instead of dying unseen",
}
# exception classes that are not errors
NOT_ERRORS = {"kronos.interrupts.RunInterrupted": "a stop signal, raised as KeyboardInterrupt"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    raise AssertionError(f"unexpected except clause {ast.dump(node)}")


def _caught(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every type an ``except`` clause of ``path`` names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ExceptHandler):
            if node.type is None:
                found.append((node.lineno, "<bare except>"))
                continue
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            found += [(node.lineno, _dotted(t)) for t in types]
    return found


def _imported(path: Path) -> dict[str, str]:
    """Names bound by ``from X import Y`` anywhere in ``path`` (function bodies too) -> X."""
    names = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update({a.asname or a.name: node.module for a in node.names})
    return names


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("kronos", *parts[: -1 if parts[-1] == "__init__" else None]))


def _resolve(path: Path, name: str) -> type:
    module = importlib.import_module(_module(path))
    head, _, rest = name.partition(".")
    obj = getattr(module, head, None) or getattr(builtins, head, None)
    if obj is None:  # imported inside a function
        obj = getattr(importlib.import_module(_imported(path)[head]), head)
    for part in filter(None, rest.split(".")):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("path", CLI, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_the_cli_catches_only_kronos_errors(path: Path):
    where = path.relative_to(PACKAGE).as_posix()
    stray = []
    for line, name in _caught(path):
        if (where, name) in ALLOWED_CATCHES:
            continue
        if name == "<bare except>" or not issubclass(_resolve(path, name), KronosError):
            stray.append(f"{where}:{line}: except {name}")
    assert not stray, "convert these to a KronosError where raised:\n" + "\n".join(stray)


def _exception_modules() -> list[str]:
    """Modules of kronos (not kronos.testing) whose classes derive from something error-like.

    An AST pass, so only those modules are imported: a class counts when a base
    is named ``*Error``, ``*Exception``, ``*Interrupt*`` or is such a class of ours.
    """
    classes: dict[str, tuple[str, list[str]]] = {}
    for file in PACKAGE.rglob("*.py"):
        module = _module(file)
        if module.startswith("kronos.testing") or module.endswith("__main__"):
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [
                    _dotted(b).rpartition(".")[2]
                    for b in node.bases
                    if isinstance(b, ast.Name | ast.Attribute)
                ]
                classes[f"{module}.{node.name}"] = (module, bases)
    looks = ("Error", "Exception", "Exit")
    errors = {
        n.rpartition(".")[2]
        for n, (_, bases) in classes.items()
        if any(b.endswith(looks) or "Interrupt" in b for b in bases)
    }
    while True:  # subclasses of our own exceptions, whatever their names
        more = {n.rpartition(".")[2] for n, (_, bases) in classes.items() if set(bases) & errors}
        if more <= errors:
            break
        errors |= more
    return sorted({m for n, (m, _) in classes.items() if n.rpartition(".")[2] in errors})


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in _exception_modules():
        for obj in vars(importlib.import_module(name)).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == name:
                found.append(obj)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


CLASSES = _exception_classes()


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_scan_finds_the_known_errors():
    names = {_name(c) for c in CLASSES}
    assert {
        "kronos.errors.InputError",
        "kronos.errors.LookAhead",
        "kronos.backtest.spec.SpecError",
        "kronos.execution.brokers.base.OrderRejected",
        "kronos.serve_store.ServiceError",
        "kronos.interrupts.RunInterrupted",
    } <= names


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_every_error_is_a_kronos_error(cls: type[BaseException]):
    if _name(cls) in NOT_ERRORS:
        assert not issubclass(cls, Exception)  # an interrupt, not an error
        return
    assert issubclass(cls, KronosError), f"{_name(cls)} derives from {cls.__mro__[1].__name__}"


def _examples() -> dict[str, BaseException]:
    from kronos.backtest.spec import SpecError
    from kronos.data.loaders import PartialIngest
    from kronos.execution.brokers.base import OrderRejected
    from kronos.risk import BreakerError
    from kronos.runner.base import RunnerError
    from kronos.serve import ServiceError

    problems = [Problem("cannot read 'x'", "a.csv", 3, "close", "ACME"), Problem("no rows")]
    done = UpsertResult("bars", 5, 5, 0)
    return {
        "kronos.errors.InputError": InputError(problems, limit=1),
        "kronos.errors.StoreBusy": StoreBusy("k.duckdb", 1.5, "kronos (PID 7)"),
        "kronos.backtest.spec.SpecError": SpecError("a.yaml", ["dates.end: bad", "name: bad"]),
        "kronos.runner.base.RunnerError": RunnerError(["no such notebook"], "nb.ipynb"),
        "kronos.risk.BreakerError": BreakerError("no circuit breaker with id 'x'"),
        "kronos.execution.brokers.base.OrderRejected": OrderRejected("no cash", "buying_power"),
        "kronos.serve_store.ServiceError": ServiceError(503, "busy", ["ACME"], 5),
        "kronos.data.loaders.PartialIngest": PartialIngest(
            "b.csv", InputError(problems), [("a.csv", done)], ["c.csv"]
        ),
    }


def _state(error: BaseException) -> tuple:
    fields = {
        k: (type(v), str(v)) if isinstance(v, BaseException) else v for k, v in vars(error).items()
    }
    return type(error), str(error), fields


@pytest.mark.parametrize("cls", [c for c in CLASSES if issubclass(c, KronosError)], ids=_name)
def test_every_error_pickles(cls: type[KronosError]):
    error = _examples().get(_name(cls)) or cls("what went wrong, and where")
    assert type(error) is cls
    back = pickle.loads(pickle.dumps(error))
    assert _state(back) == _state(error)


def test_input_error_from_a_message_or_from_problems():
    assert str(InputError("cannot read --asof 'x' as YYYY-MM-DD")) == (
        "cannot read --asof 'x' as YYYY-MM-DD"
    )
    many = InputError([Problem("bad close", "a.csv", row) for row in (2, 3, 4)], limit=2)
    assert str(many) == (
        "3 problems in input, nothing was written:\n"
        "  a.csv:2: bad close\n  a.csv:3: bad close\n  ... and 1 more"
    )
    assert issubclass(LookAhead, KronosError) and not issubclass(LookAhead, InputError)
    assert not issubclass(ConfigError, ValueError)  # never caught as a bug's ValueError


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["forecast", "ewma", "--asof", "2024-13-01"], "cannot read --asof '2024-13-01' as YYYY"),
        (["breakers", "list", "--at", "noon"], "cannot read --at 'noon' as an ISO date or"),
        (["breakers", "check", "--asof", "yesterday"], "cannot read --asof 'yesterday'"),
        (["train", "regime", "--asof", "2024-02-30"], "cannot read --asof '2024-02-30'"),
        (["calibrate", "--asof", "2024-01-02", "--import", "no.json"], "no.json: cannot read a"),
    ],
)  # fmt: skip
def test_a_bad_argument_is_one_line_and_exit_2(tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(app, [*args, "--db", str(tmp_path / "k.duckdb")])
    assert got.exit_code == 2, got.output
    assert "Traceback" not in got.output
    assert says in " ".join(got.output.split())
