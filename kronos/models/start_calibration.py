"""Starting calibration of a promoted model: a bias and an interval scale fitted at promotion.

The nightly calibrator (:mod:`kronos.calibration`) corrects drift within a
fixed clamp (scale in [0.8, 1.8], bias +/-0.3%); it is not meant to repair a
model that is mis-scaled from the start. So at promotion, on the same
validation windows the gate scores (every origin from each symbol's last
training day through its validation rows, steps 1-5 pooled), two numbers are
fitted and stored beside the artifact as ``CALIBRATION_START.json``:

- **Bias** ``b0``: the median of the residuals ``y - p50``.
- **Scale** ``s0``, by split conformal prediction. Each validation row gets the
  conformity score ``e = max((m - y) / (p50 - p05), (y - m) / (p95 - p50))``
  with ``m = p50 + b0``: the smallest factor by which the p05..p95 band,
  re-centred on ``m`` and each half-width scaled about it, still covers ``y``.
  ``s0`` is the ``k``-th smallest score with ``k = ceil((n + 1) 0.90)``, the
  finite-sample conformal quantile: were the rows exchangeable, a new row
  would be covered with probability at least 90%. They are not quite (steps
  overlap, stocks move together), so the guarantee is approximate; with
  thousands of rows the ``+1`` hardly matters. Rows whose band has a zero
  half-width are left out (their score is undefined).
- **Step factors** ``f_h``: the same conformal quantile on step ``h``'s rows
  alone, divided by ``s0``, so step ``h``'s band is scaled by ``s0 f_h``. A
  model whose later steps are too narrow relative to step 1 (one scale cannot
  fix that: the nightly controller sees step 1 only) starts right at every
  step. Fitted when every step has ``MIN_ROWS`` usable rows; a file without
  them (written before they existed) means ``f_h = 1``.

The nightly calibrator starts from ``(b0, s0)`` and clamps relative to it;
an artifact without the file behaves as before (``b0 = 0``, ``s0 = 1``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from kronos.errors import InputError

START_FILE = "CALIBRATION_START.json"
TARGET_COVERAGE = 0.90
MIN_ROWS = 50  # fewer validation rows: no starting calibration (too noisy to trust)


@dataclass(frozen=True)
class StartCalibration:
    """A bias and interval scale fitted on validation, and what they did there."""

    bias: float
    scale: float
    n: int
    valid_start: str | None = None
    valid_end: str | None = None
    coverage_before: float | None = None
    coverage_after: float | None = None
    target_coverage: float = TARGET_COVERAGE
    rank: int = 0  # k of the k-th smallest conformity score
    step_factors: list[float] | None = None  # step h's scale is scale * step_factors[h - 1]
    method: str = "split-conformal: median residual bias, k-th smallest score, k=ceil((n+1)q)"

    def as_dict(self) -> dict:
        """A JSON-ready dict (the file's content)."""
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The numbers as flat metrics (MLflow)."""
        found = {
            "start_bias": self.bias,
            "start_scale": self.scale,
            "start_n": float(self.n),
            "start_coverage_before": self.coverage_before,
            "start_coverage_after": self.coverage_after,
        }
        for h, f in enumerate(self.step_factors or (), start=1):
            found[f"start_step{h}_factor"] = f
        return {k: float(v) for k, v in found.items() if v is not None}

    @classmethod
    def from_dict(cls, document: object, where: str) -> StartCalibration:
        """Rebuild from :meth:`as_dict`; InputError naming ``where`` and the field if malformed."""
        if not isinstance(document, dict):
            raise InputError(f"{where}: a starting calibration is a JSON object")
        for field in ("bias", "scale", "n"):
            if field not in document:
                raise InputError(f"{where}: starting calibration lacks '{field}'")
        known = set(cls.__dataclass_fields__)
        start = cls(**{k: v for k, v in document.items() if k in known})
        if not (math.isfinite(start.bias) and math.isfinite(start.scale) and start.scale > 0):
            raise InputError(
                f"{where}: starting calibration needs a finite bias and a positive scale, "
                f"got bias={start.bias!r} scale={start.scale!r}"
            )
        factors = start.step_factors
        if factors is not None and not (
            isinstance(factors, list)
            and factors
            and all(isinstance(f, int | float) and math.isfinite(f) and f > 0 for f in factors)
        ):
            raise InputError(f"{where}: step_factors must be positive numbers, got {factors!r}")
        return start


def conformity_scores(
    p05: np.ndarray, p50: np.ndarray, p95: np.ndarray, y: np.ndarray, bias: float
) -> np.ndarray:
    """Per row, the smallest scale of the band about ``p50 + bias`` that covers ``y``."""
    mid = p50 + bias
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum((mid - y) / (p50 - p05), (y - mid) / (p95 - p50))


def _rank(n: int, target: float) -> int:
    """The finite-sample conformal rank: the k-th smallest of ``n`` scores, ``k = ceil((n+1)q)``."""
    return min(math.ceil((n + 1) * target), n)


def fit_start(
    scored: pl.DataFrame, target: float = TARGET_COVERAGE, min_rows: int = MIN_ROWS
) -> StartCalibration | None:
    """Fit ``(b0, s0)`` on validation forecasts joined to outcomes (``p05, p50, p95, y_true``).

    None when fewer than ``min_rows`` usable rows (finite, positive half-widths).
    """
    cols = {c: scored[c].cast(pl.Float64).to_numpy() for c in ("p05", "p50", "p95", "y_true")}
    p05, p50, p95, y = cols["p05"], cols["p50"], cols["p95"], cols["y_true"]
    ok = np.isfinite(p05) & np.isfinite(p50) & np.isfinite(p95) & np.isfinite(y)
    ok &= (p50 - p05 > 0) & (p95 - p50 > 0)
    n = int(ok.sum())
    if n < min_rows:
        return None
    p05, p50, p95, y = p05[ok], p50[ok], p95[ok], y[ok]
    bias = float(np.median(y - p50))
    scores = conformity_scores(p05, p50, p95, y, bias)
    rank = _rank(n, target)
    scale = float(np.sort(scores)[rank - 1])
    factors, each = None, np.full(n, scale)
    if "step" in scored.columns:
        steps = scored["step"].to_numpy()[ok]
        levels = np.unique(steps)
        counts = [int((steps == h).sum()) for h in levels]
        if min(counts) >= min_rows and np.array_equal(levels, np.arange(1, len(levels) + 1)):
            factors = []
            for h, m in zip(levels, counts, strict=True):
                own = np.sort(scores[steps == h])[_rank(m, target) - 1]
                factors.append(float(own / scale))
                each[steps == h] = own
    mid = p50 + bias
    after = (y >= mid - (p50 - p05) * each) & (y <= mid + (p95 - p50) * each)
    days = scored.filter(pl.Series(ok))["asof"] if "asof" in scored.columns else None
    return StartCalibration(
        bias=bias,
        scale=scale,
        n=n,
        valid_start=None if days is None else str(days.min()),
        valid_end=None if days is None else str(days.max()),
        coverage_before=float(((y >= p05) & (y <= p95)).mean()),
        coverage_after=float(after.mean()),
        target_coverage=target,
        rank=rank,
        step_factors=factors,
    )


def write_start(directory: Path, start: StartCalibration) -> Path:
    """Write ``CALIBRATION_START.json`` into ``directory`` atomically; its path."""
    path = Path(directory) / START_FILE
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(start.as_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_start(directory: Path | None) -> StartCalibration | None:
    """The starting calibration stored in an artifact directory; None when it has none."""
    if directory is None:
        return None
    path = Path(directory) / START_FILE
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the starting calibration ({exc})") from None
    return StartCalibration.from_dict(document, str(path))
