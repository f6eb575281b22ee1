"""Model artifacts on disk, the promotion gate, and loading the promoted model.

Layout (whitepaper section 3): ``MODEL_DIR/kronos-<model>/<timestamp>/`` with
``state.pt``, ``config.json``, ``scaler.pkl`` (written by the forecaster),
``VERSION`` and ``METRICS.json``, and a ``latest`` symlink beside them that
only a run passing the gate moves. A run directory is written under a
``.partial`` name and renamed when complete, and ``latest`` is replaced with an
atomic rename, so an interrupted run never leaves ``latest`` pointing at a
half-written artifact.

A forecaster that is not built in also gets ``SOURCE.json``: its import path
(``import_path``), the distribution that provides it and that distribution's
version (``distribution``, ``version``; from :mod:`importlib.metadata`, else
the top-level module's ``__version__``, else null). Loading such an artifact
imports the class through the recorded path (checked against the contract) and
says when the installed version differs from the recorded one. Its own
``save`` decides its files: ``VERSION``, ``METRICS.json`` and ``SOURCE.json``
are what ``promote`` requires of it.

A run may also carry ``CALIBRATION_START.json`` (:mod:`kronos.models.start_calibration`):
the bias and interval scale fitted on the gate's validation windows, from which
the nightly calibrator starts; its figures are copied into ``METRICS.json``
under ``start_calibration``. It is optional: artifacts without it calibrate as
before.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from kronos.errors import ConfigError
from kronos.models.base import Forecaster, ForecastError
from kronos.models.registry import (
    ForecasterRef,
    forecaster_class,
    is_builtin,
    model_name,
)
from kronos.models.start_calibration import StartCalibration, write_start
from kronos.plugins import reference_of

REQUIRED_FILES = ("state.pt", "config.json", "scaler.pkl", "VERSION", "METRICS.json")
SOURCE_FILE = "SOURCE.json"
CUSTOM_REQUIRED_FILES = ("VERSION", "METRICS.json", SOURCE_FILE)


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may become ``latest``, and why."""

    promoted: bool
    reason: str
    candidate_crps: float
    baseline: str
    baseline_crps: float
    tolerance: float


def gate(
    candidate_crps: float, baseline_crps: float, *, baseline: str, tolerance: float = 0.0
) -> GateDecision:
    """Promote when the candidate's validation CRPS is no worse than the baseline's."""
    limit = baseline_crps * (1 + tolerance)
    ok = bool(candidate_crps <= limit)
    verdict = "<=" if ok else ">"
    reason = (
        f"validation CRPS {candidate_crps:.6g} {verdict} {baseline} baseline "
        f"{baseline_crps:.6g} x (1 + {tolerance:g})"
    )
    return GateDecision(ok, reason, candidate_crps, baseline, baseline_crps, tolerance)


def model_root(model_dir: Path, name: str) -> Path:
    """``MODEL_DIR/kronos-<name>``."""
    return Path(model_dir) / f"kronos-{name}"


def source_of(cls: type) -> dict[str, str | None]:
    """Where a class comes from: its import path, distribution and that distribution's version."""
    top = cls.__module__.partition(".")[0]
    # a package's distribution, else one named like it (metadata without a RECORD)
    dists = importlib.metadata.packages_distributions().get(top, [top])
    distribution: str | None = dists[0]
    version = None
    try:
        version = importlib.metadata.version(dists[0])
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if version is None:
        module = sys.modules.get(top)
        found = getattr(module, "__version__", None)
        version = str(found) if found is not None else None
    try:
        path: str | None = reference_of(cls)
    except ConfigError:  # a class defined inside a function: recorded, but not loadable
        path = None
    return {"import_path": path, "distribution": distribution, "version": version}


def write_artifact(
    forecaster: Forecaster,
    model_dir: Path,
    metrics: dict,
    *,
    now: datetime | None = None,
    start: StartCalibration | None = None,
) -> Path:
    """Save a fitted forecaster with its VERSION and METRICS.json; return the run directory.

    ``start``: its starting calibration, written as ``CALIBRATION_START.json``
    (and into METRICS.json) before the directory gets its final name.
    """
    if start is not None:
        metrics = {**metrics, "start_calibration": start.as_dict()}
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    root = model_root(model_dir, forecaster.name)
    final = root / stamp
    partial = root / f"{stamp}.partial"
    partial.mkdir(parents=True)
    try:
        forecaster.save(partial)
        if isinstance(forecaster, Forecaster) and not is_builtin(type(forecaster)):
            source = json.dumps(source_of(type(forecaster)), indent=2)
            (partial / SOURCE_FILE).write_text(source + "\n")
        (partial / "VERSION").write_text(forecaster.version + "\n")
        (partial / "METRICS.json").write_text(json.dumps(metrics, indent=2, default=str))
        if start is not None:
            write_start(partial, start)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def promote(run_dir: Path) -> None:
    """Point ``latest`` at ``run_dir`` with one atomic rename."""
    run_dir = Path(run_dir)
    required = CUSTOM_REQUIRED_FILES if (run_dir / SOURCE_FILE).exists() else REQUIRED_FILES
    missing = [f for f in required if not (run_dir / f).exists()]
    if missing:
        raise ForecastError(f"{run_dir} is not a complete artifact: missing {missing}")
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def record_decision(run_dir: Path, decision: GateDecision) -> None:
    """Add the gate's verdict to the run's METRICS.json."""
    path = Path(run_dir) / "METRICS.json"
    metrics = json.loads(path.read_text())
    metrics["promotion"] = asdict(decision)
    path.write_text(json.dumps(metrics, indent=2, default=str))


def record_start(run_dir: Path, start: StartCalibration) -> None:
    """Add a starting calibration to a written run: its file and METRICS.json's copy."""
    write_start(run_dir, start)
    path = Path(run_dir) / "METRICS.json"
    metrics = json.loads(path.read_text())
    metrics["start_calibration"] = start.as_dict()
    path.write_text(json.dumps(metrics, indent=2, default=str))


def latest_artifact(model_dir: Path, name: str) -> Path | None:
    """The promoted run directory of model ``name``, if any."""
    link = model_root(model_dir, name) / "latest"
    return link.resolve() if link.exists() else None


@dataclass(frozen=True)
class Loaded:
    """A forecaster ready to predict, and how it was obtained."""

    forecaster: Forecaster
    source: str  # "artifact" or "fallback"
    directory: Path | None
    message: str


def load_artifact(directory: Path, expected: type | None = None) -> tuple[Forecaster, str]:
    """The forecaster saved in ``directory`` and a note on where its class came from.

    A model not built in is imported through ``SOURCE.json``'s import path, and
    the note says when the installed version differs; without that file the
    class is ``expected``, else the built-in one the ``kronos-<name>`` parent
    directory names.
    """
    directory = Path(directory)
    source_path = directory / SOURCE_FILE
    if not source_path.exists():
        if expected is not None:
            return expected.load(directory), ""
        name = directory.parent.name.removeprefix("kronos-")
        return forecaster_class(name).load(directory), ""
    try:
        recorded = json.loads(source_path.read_text())
        path = recorded["import_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ForecastError(f"{source_path}: cannot read the import path ({exc})") from exc
    if not isinstance(path, str):
        raise ForecastError(
            f"{source_path}: no import path recorded (the class was defined inside a function)"
        )
    cls = forecaster_class(path)
    note = ""
    installed = source_of(cls)["version"]
    if installed != recorded.get("version"):
        note = (
            f"; {path} was saved with version {recorded.get('version')}, {installed} is installed"
        )
    return cls.load(directory), note


def load_promoted(
    model_dir: Path, name: ForecasterRef, fallback: Callable[[], Forecaster] | None = None
) -> Loaded:
    """Load the newest promoted artifact of ``name``; else fit ``fallback`` and say so.

    ``name``: a built-in name, import path, entry point or class; its artifacts
    lie under ``kronos-<class name>``.
    """
    label = model_name(name)
    directory = latest_artifact(model_dir, label)
    if directory is not None:
        expected = forecaster_class(name)
        forecaster, note = load_artifact(directory, expected)
        return Loaded(forecaster, "artifact", directory, f"loaded {label} from {directory}{note}")
    if fallback is None:
        raise ForecastError(
            f"no promoted {label} artifact under {model_root(model_dir, label)}; "
            "train one with 'kronos train'"
        )
    forecaster = fallback()
    return Loaded(
        forecaster,
        "fallback",
        None,
        f"no promoted {label} artifact under {model_root(model_dir, label)}: fitted one on the fly",
    )
