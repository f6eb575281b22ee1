"""What a model writes into its artifact directory and reads back, and its fingerprint.

Every model saves ``state.pt`` (weights or fitted state, read with
``weights_only=True``), ``config.json`` (sorted, indented JSON) and
``scaler.pkl``. Reading checks what can be checked and raises
:class:`~kronos.models.base.ForecastError` naming the file; a scaler of plain
dicts, strings and floats is read without executing code.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kronos.models.base import ForecastError

__all__ = [
    "fingerprint",
    "read_config",
    "read_hyper_artifact",
    "read_plain_pickle",
    "read_state",
    "stamped",
    "write_files",
    "write_hyper_artifact",
]


def write_files(directory: Path, *, state: Mapping[str, Any], scaler: object, config: dict) -> Path:
    """Write ``state.pt``, ``scaler.pkl`` and ``config.json`` into ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), directory / "state.pt")
    with (directory / "scaler.pkl").open("wb") as f:
        pickle.dump(scaler, f)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def write_hyper_artifact(
    directory: Path, name: str, format_version: int, hyper: dict, state: Mapping[str, Any]
) -> Path:
    """Write a model whose ``config.json`` is its name, format and hyper-parameters.

    ``scaler.pkl`` is an empty dict: these models keep everything in ``state``.
    """
    config = {"name": name, "format_version": format_version, "config": hyper}
    return write_files(directory, state=state, scaler={}, config=config)


def read_hyper_artifact(
    directory: Path, name: str, format_version: int
) -> tuple[dict, Path, dict[str, Any]]:
    """(hyper-parameters, config path, state) of an artifact :func:`write_hyper_artifact` wrote.

    Another model's or another format's artifact is a ForecastError naming the file.
    """
    config_path = Path(directory) / "config.json"
    expected = {"name": name, "format_version": format_version}
    meta = read_config(config_path, expected, ("config",))
    return meta["config"], config_path, read_state(Path(directory) / "state.pt")


def read_config(path: Path, expected: Mapping[str, object], required: Sequence[str] = ()) -> dict:
    """An artifact's ``config.json`` with ``expected`` values and ``required`` keys.

    Anything else is a ForecastError naming the file and the key.
    """
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ForecastError(f"{path}: cannot read ({exc})") from exc
    for key, value in expected.items():
        if not isinstance(config, dict) or config.get(key) != value:
            found = config.get(key) if isinstance(config, dict) else None
            raise ForecastError(f"{path}: incompatible {key} {found!r}, expected {value!r}")
    for key in required:
        if key not in config:
            raise ForecastError(f"{path}: missing {key!r}")
    return config


def read_state(path: Path) -> dict[str, Any]:
    """``state.pt`` on the CPU, tensors and plain values only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ForecastError(f"{path}: cannot read ({exc})") from exc


class _NoClasses(pickle.Unpickler):
    def find_class(self, module, name):  # dicts of str and float need no class
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_plain_pickle(path: Path) -> object:
    """A pickle of builtin values (dict, list, str, float...), read without executing code."""
    try:
        return _NoClasses(io.BytesIO(Path(path).read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ForecastError(f"{path}: not a plain mapping ({exc})") from exc


def fingerprint(header: object, module: torch.nn.Module | None, *arrays: np.ndarray) -> str:
    """SHA-256 (hex) of ``header`` as sorted JSON, the module's weights and ``arrays``.

    Weights are hashed by sorted key; arrays as contiguous float64.
    """
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    if module is not None:
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


def stamped(digest: str) -> str:
    """A version that also says when it was fitted: ``<UTC time>-<8 hex digits>``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest[:8]}"
