"""A notebook's ``parameters`` cell, coercion of values, and secrets kept out of runs."""

from __future__ import annotations

import ast
import io
import json
import os
import tokenize
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from kronos.config import did_you_mean
from kronos.runner.base import (
    MIN_SECRET_LENGTH,
    REDACTED,
    RUN_ID_PARAMETER,
    SECRET_NAME,
    RunnerError,
)

# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Parameter:
    """One assignment of a notebook's ``parameters`` cell."""

    name: str
    type: str  # the annotation if any, else the default's type name; "any" when unknown
    default: Any  # the default's value, or its source text when it is not a literal
    source: str  # the default as written
    help: str = ""


def notebook_parameters(path: Path) -> dict[str, Parameter]:
    """The parameters a notebook declares, in cell order.

    The cell is parsed with :mod:`ast`, which reads the annotations, defaults and
    trailing ``# help`` comments that papermill's inspection reads, but also the
    lines it skips (a help comment holding ``=``); a cell ``ast`` cannot parse
    (IPython magics) falls back to ``papermill.inspect_notebook``.
    """
    import nbformat
    import papermill

    path = Path(path)
    if not path.is_file():
        raise RunnerError("no such notebook", str(path))
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:
        raise RunnerError(f"not a readable notebook ({exc})", str(path)) from None
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise RunnerError(
            "no cell tagged 'parameters' (tag the cell holding the defaults)", str(path)
        )
    try:
        found = _assignments(cells[0].source)  # papermill injects after the first one
    except SyntaxError:
        found = papermill.inspect_notebook(str(path)).values()
    return {p["name"]: _parameter(p) for p in found}


def _assignments(source: str) -> list[dict[str, str]]:
    """``name = value`` and ``name: type = value`` lines, as papermill's inspection reports them."""
    tree = ast.parse(source, type_comments=True)
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    found = []
    for node in tree.body:
        type_comment = None
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, annotation = node.target, ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, type_comment = node.targets[0], node.type_comment
            annotation = type_comment or "None"
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        found.append(
            {
                "name": target.id,
                "inferred_type_name": annotation,
                "default": ast.get_source_segment(source, node.value) or "",
                "help": "" if type_comment else comments.get(node.end_lineno or 0, ""),
            }
        )
    return found


def _parameter(p: Mapping[str, Any]) -> Parameter:
    source = p["default"]
    try:
        default, literal = ast.literal_eval(source), True
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        default, literal = source, False
    annotation = p["inferred_type_name"]
    if annotation and annotation != "None":
        kind = annotation
    elif literal:
        kind = "None" if default is None else type(default).__name__
    else:
        kind = "any"
    return Parameter(p["name"], kind, default, source, p.get("help") or "")


_BASE_TYPES = {"int", "float", "bool", "str", "list", "dict"}
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NULL = {"none", "null", "~"}


def _kind(declared: str) -> tuple[str, bool]:
    """(base type, nullable) of a declared type: ``int``, ``str | None``, ``list[str]``..."""
    text = declared.replace(" ", "")
    nullable = False
    if text.startswith("Optional[") and text.endswith("]"):
        text, nullable = text[9:-1], True
    parts = [t for t in text.split("|") if t]
    if "None" in parts and len(parts) > 1:
        parts.remove("None")
        nullable = True
    if len(parts) != 1:
        return "any", True
    base = parts[0].split("[", 1)[0].removeprefix("typing.")
    base = {"List": "list", "Dict": "dict", "tuple": "list", "Tuple": "list"}.get(base, base)
    if base == "None":
        return "any", True
    return (base, nullable) if base in _BASE_TYPES else ("any", True)


def _plain(value: Any) -> Any:
    """YAML values as notebook literals: dates become ISO strings, tuples lists."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _convert(value: Any, base: str, nullable: bool) -> Any:
    """``value`` as ``base``; raises ValueError when it cannot be."""
    text = value.strip() if isinstance(value, str) else None
    if value is None or (nullable and text is not None and text.lower() in _NULL):
        if nullable:
            return None
        raise ValueError
    if base == "any":
        return _plain(yaml.safe_load(value) if text is not None else value)
    if base == "str":
        if isinstance(value, str | os.PathLike):
            return str(value)
        if isinstance(value, int | float | date) and not isinstance(value, bool):
            return _plain(value) if isinstance(value, date) else str(value)
        raise ValueError
    if base == "bool":
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError
    if base == "int":
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if text is not None:
            return int(text)
        raise ValueError
    if base == "float":
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            return float(value)
        if text is not None:
            return float(text)
        raise ValueError
    # list or dict: YAML text (a flow sequence or mapping) or an already parsed value
    parsed = _plain(yaml.safe_load(value) if text is not None else value)
    if not isinstance(parsed, list if base == "list" else dict):
        raise ValueError
    return parsed


def secret_values(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Values of secret-looking environment variables (``*KEY*``, ``*TOKEN*``...) -> name."""
    env = os.environ if env is None else env
    return {
        value: name
        for name, value in env.items()
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH
    }


def coerce(
    params: Mapping[str, Any],
    declared: Mapping[str, Parameter],
    *,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``params`` checked against the declared parameters and converted to their types.

    Strings (``-p key=value``) convert to the type of the declared default (or its
    annotation); a ``None`` default takes any YAML value. Every problem is
    reported at once; a secret's value is never echoed.
    """
    secrets = secret_values(env)
    problems: list[str] = []
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name == RUN_ID_PARAMETER:
            problems.append(f"{name!r} is set by the runner (the MLflow run it creates)")
            continue
        if SECRET_NAME.search(name):
            problems.append(
                f"parameter {name!r} looks like a secret: parameters are logged and saved "
                "with the notebook; let the notebook read it from the environment"
            )
            continue
        if name not in declared:
            problems.append(f"unknown parameter {name!r}{did_you_mean(name, declared)}")
            continue
        texts = list(_texts(value))
        leaked = [var for secret, var in secrets.items() if any(secret in t for t in texts)]
        if leaked:
            problems.append(
                f"parameter {name!r}: its value holds the secret in ${leaked[0]}; "
                "let the notebook read it from the environment"
            )
            continue
        p = declared[name]
        base, nullable = _kind(p.type)
        try:
            out[name] = _convert(value, base, nullable)
        except (ValueError, TypeError, yaml.YAMLError):
            expected = f"{base} or None" if nullable and base != "any" else base
            if base in ("list", "dict"):
                expected += " in YAML, e.g. " + ("[a, b]" if base == "list" else "{a: 1}")
            default = " ".join(p.source.split())  # a multi-line default on one line
            problems.append(
                f"parameter {name!r}: cannot use {value!r} "
                f"(expected {expected}; the default is {default})"
            )
    if problems:
        raise RunnerError(problems)
    return out


def _texts(value: Any) -> Iterable[str]:
    """Every string in a parameter value (keys and items at any depth), scalars as text."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _texts(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _texts(v)
    else:
        yield str(value)


def checked_parameters(
    notebook: Path, params: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> tuple[dict[str, Parameter], dict[str, Any]]:
    """The notebook's declared parameters and ``params`` coerced to them.

    The notebook must declare ``mlflow_run_id``; problems name the notebook.
    """
    declared = notebook_parameters(notebook)
    if RUN_ID_PARAMETER not in declared:
        raise RunnerError(
            f"the parameters cell must declare {RUN_ID_PARAMETER} = None "
            "(the runner injects the id of the MLflow run it creates)",
            str(notebook),
        )
    try:
        return declared, coerce(params, declared, env=env)
    except RunnerError as exc:
        raise exc.at(str(notebook)) from None


# ------------------------------------------------------------------ secrets


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (strings, lists, dicts at any depth) with every secret replaced by ``***``."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    """A notebook text field (a string or a list of lines) as one string."""
    return "".join(value) if isinstance(value, list) else str(value)


def _redact_pieces(pieces: list[str], secrets: Sequence[str]) -> list[str]:
    """``pieces`` with every secret found in their concatenation masked.

    A secret split over several pieces (a key printed a character at a time)
    becomes ``***`` in the piece where it starts and vanishes from the others,
    so the pieces keep their order and the text between them.
    """
    joined = "".join(pieces)
    spans: list[tuple[int, int]] = []
    taken = [False] * len(joined) if any(s in joined for s in secrets) else []
    for secret in secrets:  # longest first
        start = joined.find(secret)
        while start >= 0:
            end = start + len(secret)
            if not any(taken[start:end]):
                spans.append((start, end))
                taken[start:end] = [True] * (end - start)
            start = joined.find(secret, start + 1)
    if not spans:
        return pieces
    spans.sort()
    out, offset = [], 0
    for piece in pieces:
        lo, hi = offset, offset + len(piece)
        kept, at = [], lo
        for start, end in spans:
            if end <= lo or start >= hi:
                continue
            kept.append(piece[at - lo : max(start, lo) - lo])
            if start >= lo:
                kept.append(REDACTED)
            at = min(end, hi)
        kept.append(piece[at - lo :])
        out.append("".join(kept))
        offset = hi
    return out


def redact_outputs(outputs: list[dict[str, Any]], secrets: Sequence[str]) -> list[dict[str, Any]]:
    """A cell's outputs with secrets masked in each stream's joined text and every rich output.

    Stream outputs are checked per stream name (stdout, stderr) over their joined
    text, so a secret flushed in small pieces is found; rich outputs
    (``text/plain``, ``text/html``, ``application/json``...) are checked whole.
    """
    outputs = [dict(o) for o in outputs]
    by_name: dict[str, list[int]] = {}
    for i, output in enumerate(outputs):
        if output.get("output_type") == "stream":
            by_name.setdefault(str(output.get("name")), []).append(i)
            output["text"] = _text(output.get("text", ""))
        elif isinstance(output.get("data"), dict):
            output["data"] = {
                mime: redact(_text(v) if isinstance(v, list) else v, secrets)
                for mime, v in output["data"].items()
            }
    for indices in by_name.values():
        pieces = _redact_pieces([outputs[i]["text"] for i in indices], secrets)
        for i, piece in zip(indices, pieces, strict=True):
            outputs[i]["text"] = piece
    return redact(outputs, secrets)  # tracebacks, metadata and anything else


def redact_notebook(path: Path, env: Mapping[str, str] | None = None) -> bool:
    """Redact secret environment values from a saved notebook; True when any was found.

    Covers cell sources, each cell's joined stream output, every rich output and
    the metadata, so the notebook can be kept and logged.
    """
    import nbformat

    secrets = sorted(secret_values(env), key=len, reverse=True)  # longest first
    if not secrets:
        return False
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    clean = redact({k: v for k, v in raw.items() if k != "cells"}, secrets)
    clean["cells"] = []
    for cell in raw.get("cells", []):
        cell = redact({k: v for k, v in cell.items() if k != "outputs"}, secrets) | (
            {"outputs": redact_outputs(cell["outputs"], secrets)} if "outputs" in cell else {}
        )
        clean["cells"].append(cell)
    if _normal(clean) == _normal(raw):
        return False
    nbformat.write(nbformat.from_dict(clean), str(path))
    return True


def _normal(nb: dict[str, Any]) -> dict[str, Any]:
    """``nb`` with its multi-line text fields joined, so equal notebooks compare equal."""
    cells = []
    for cell in nb.get("cells", []):
        cell = dict(cell)
        if "source" in cell:
            cell["source"] = _text(cell["source"])
        outputs = []
        for output in cell.get("outputs", []):
            output = dict(output)
            if "text" in output:
                output["text"] = _text(output["text"])
            if isinstance(output.get("data"), dict):
                output["data"] = {
                    k: _text(v) if isinstance(v, list) else v for k, v in output["data"].items()
                }
            outputs.append(output)
        if "outputs" in cell:
            cell["outputs"] = outputs
        cells.append(cell)
    return {**nb, "cells": cells}
