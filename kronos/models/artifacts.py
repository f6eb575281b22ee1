"""Model artifacts on disk, the promotion gate, and loading the promoted model.

Layout (whitepaper section 3): ``MODEL_DIR/kronos-<model>/<timestamp>/`` with
``state.pt``, ``config.json``, ``scaler.pkl`` (written by the forecaster),
``VERSION`` and ``METRICS.json``, and a ``latest`` symlink beside them that
only a run passing the gate moves. A run directory is written under a
``.partial`` name and renamed when complete, and ``latest`` is replaced with an
atomic rename, so an interrupted run never leaves ``latest`` pointing at a
half-written artifact.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from kronos.models.base import Forecaster, ForecastError
from kronos.models.registry import forecaster_class

REQUIRED_FILES = ("state.pt", "config.json", "scaler.pkl", "VERSION", "METRICS.json")


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


def write_artifact(
    forecaster: Forecaster, model_dir: Path, metrics: dict, *, now: datetime | None = None
) -> Path:
    """Save a fitted forecaster with its VERSION and METRICS.json; return the run directory."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    root = model_root(model_dir, forecaster.name)
    final = root / stamp
    partial = root / f"{stamp}.partial"
    partial.mkdir(parents=True)
    try:
        forecaster.save(partial)
        (partial / "VERSION").write_text(forecaster.version + "\n")
        (partial / "METRICS.json").write_text(json.dumps(metrics, indent=2, default=str))
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def promote(run_dir: Path) -> None:
    """Point ``latest`` at ``run_dir`` with one atomic rename."""
    run_dir = Path(run_dir)
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).exists()]
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


def load_promoted(
    model_dir: Path, name: str, fallback: Callable[[], Forecaster] | None = None
) -> Loaded:
    """Load the newest promoted artifact of ``name``; else fit ``fallback`` and say so."""
    directory = latest_artifact(model_dir, name)
    if directory is not None:
        forecaster = forecaster_class(name).load(directory)
        return Loaded(forecaster, "artifact", directory, f"loaded {name} from {directory}")
    if fallback is None:
        raise ForecastError(
            f"no promoted {name} artifact under {model_root(model_dir, name)}; "
            "train one with 'kronos train'"
        )
    forecaster = fallback()
    return Loaded(
        forecaster,
        "fallback",
        None,
        f"no promoted {name} artifact under {model_root(model_dir, name)}: fitted one on the fly",
    )
