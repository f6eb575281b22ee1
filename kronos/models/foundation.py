"""Time-series foundation models as zero-shot forecasters, from weights on local disk only.

A foundation model is not trained here: it reads each symbol's last
``context_length`` daily log returns and returns quantiles of the next
``horizon`` returns. Two things make it a Kronos forecaster:

- **Local weights only.** ``checkpoint`` must be a directory on this machine
  (``None``: the weights the loader's package ships, as ``fracast`` does). A
  hub id such as ``amazon/chronos-bolt-small`` is refused before any loader
  runs, so nothing is ever downloaded at run time.
- **Honest p05/p95.** Most checkpoints emit the levels 0.1..0.9, not 0.05 and
  0.95. The outer quantiles are extrapolated from the median through the
  outermost emitted levels, ``p95 = p50 + k_hi (q_hi - p50)`` and
  ``p05 = p50 - k_lo (p50 - q_lo)``, with ``k`` fitted by split conformal on a
  validation window before the forecast origins: ``k_hi`` is the
  ``ceil(0.95 (n + 1)) / n`` empirical quantile of ``(y - p50) / (q_hi - p50)``
  over the validation cells, so 95% of them lie under the extrapolated p95.
  The validation window is ``valid`` when given, else the last
  ``tail_sessions`` sessions of the training panel (always before the
  origins). Without enough validation cells the normal ratio
  ``z(0.95) / z(0.90) = 1.2835`` is used and the config says so. A model
  that emits 0.05 and 0.95 itself is used as it is (``k = 1``).

The loader is any ``fn(checkpoint: Path | None) -> model`` (an import path),
where ``model.quantiles`` lists its levels and
``model.forecast_batch(context[batch, time], horizon=h)`` returns
``[batch, h, levels]``; ``fracast.FracastModel`` has that shape natively.
docs/models.md shows a ten-line loader for a local Chronos-Bolt, TimesFM or
TiRex checkpoint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import polars as pl
from scipy import stats

from kronos.models.base import ForecastError, Panel, Recorder
from kronos.models.baselines import SeriesMap, _Baseline, _checked_rows, _panel_series
from kronos.plugins import load_object

GAUSSIAN_K = float(stats.norm.ppf(0.95) / stats.norm.ppf(0.90))
MIN_TAIL_CELLS = 100  # below this the conformal quantile is too noisy: the normal ratio instead
BATCH = 256  # series per forward pass
DEFAULT_LOADER = "kronos.models.foundation:load_fracast"


class QuantileModel(Protocol):
    """What a loader returns: its quantile levels and a batched forecast."""

    quantiles: list[float]

    def forecast_batch(self, context: np.ndarray, *, horizon: int | None = None) -> np.ndarray:
        """``[batch, time]`` contexts to ``[batch, horizon, levels]`` quantiles."""
        ...


def load_fracast(checkpoint: Path | None) -> QuantileModel:
    """Fracast-0 from ``checkpoint``, or the weights its wheel ships when None."""
    from fracast import FracastModel

    return FracastModel.from_pretrained(checkpoint, weights="fp32", device="cpu")


def local_checkpoint(checkpoint: str | None) -> Path | None:
    """``checkpoint`` as an existing local directory; anything else is refused.

    ``None`` stays None (the loader's bundled weights).
    """
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise ForecastError(
            f"checkpoint {checkpoint!r} is not a directory on this machine: foundation-model "
            "weights are read from a local path only, never downloaded at run time "
            "(fetch them once, e.g. `huggingface-cli download REPO --local-dir DIR`, "
            "and pass DIR)"
        )
    return path.resolve()


def weights_digest(directory: Path | None, loader: str) -> str:
    """sha256 over the checkpoint's files (names and bytes).

    With no checkpoint: over the ``fracast`` wheel's weights for the default
    loader, else over the loader's import path (its package owns the weights).
    """
    if directory is None:
        if loader != DEFAULT_LOADER:
            return hashlib.sha256(loader.encode()).hexdigest()
        import fracast

        directory = Path(fracast.__file__).parent / "weights"
    digest = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f.relative_to(directory).as_posix().encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def conformal_k(ratios: np.ndarray, level: float = 0.95) -> float | None:
    """The split-conformal ``level`` quantile of ``ratios``; None below MIN_TAIL_CELLS."""
    r = ratios[np.isfinite(ratios)]
    n = len(r)
    if n < MIN_TAIL_CELLS:
        return None
    q = min(1.0, math.ceil(level * (n + 1)) / n)
    return float(np.quantile(r, q, method="higher"))


class FoundationForecaster(_Baseline):
    """A pretrained quantile model run zero-shot; only its tail factors are fitted."""

    name: ClassVar[str] = "foundation"

    def __init__(
        self,
        loader: str = DEFAULT_LOADER,
        checkpoint: str | None = None,
        context_length: int = 512,
        tail_sessions: int = 250,
        tail_every: int = 5,
    ) -> None:
        self.loader = loader
        self.checkpoint = checkpoint
        self.context_length = context_length
        self.tail_sessions = tail_sessions
        self.tail_every = tail_every

    @property
    def input_size(self) -> int:
        """The context the model reads."""
        return self.context_length

    def get_config(self) -> dict:
        """The hyper-parameters."""
        return {
            "loader": self.loader,
            "checkpoint": self.checkpoint,
            "context_length": self.context_length,
            "tail_sessions": self.tail_sessions,
            "tail_every": self.tail_every,
        }

    def _model(self) -> QuantileModel:
        model = getattr(self, "model_", None)
        if model is None:
            path = local_checkpoint(self.checkpoint)
            load: Callable[[Path | None], QuantileModel] = load_object(
                self.loader, what="foundation-model loader"
            )
            model = load(path)
            levels = [float(q) for q in model.quantiles]
            if 0.5 not in levels or levels != sorted(levels):
                raise ForecastError(
                    f"{self.loader}: quantile levels {levels} must be sorted and include 0.5"
                )
            self.model_ = model
        return model

    def _levels(self) -> tuple[int, int, int, bool]:
        """Indices of the low, median and high levels used; True when they are 0.05/0.95."""
        levels = [float(q) for q in self._model().quantiles]
        exact = 0.05 in levels and 0.95 in levels
        lo = levels.index(0.05) if exact else 0
        hi = levels.index(0.95) if exact else len(levels) - 1
        return lo, levels.index(0.5), hi, exact

    def _raw(self, names: list[str], series: SeriesMap, origins: np.ndarray) -> np.ndarray:
        """The model's (low, median, high) quantiles, ``(n_origins, n_symbols, horizon, 3)``."""
        length = self.context_length
        windows = np.empty((len(origins), len(names), length), dtype=np.float32)
        for j, s in enumerate(names):
            ts, y = series[s]
            rows = _checked_rows(s, ts, y, origins, length)
            windows[:, j] = y[rows[:, None] - length + 1 + np.arange(length)[None, :]]
        flat = windows.reshape(-1, length)
        lo, mid, hi, _ = self._levels()
        model = self._model()
        out = np.empty((len(flat), self.horizon, 3))
        for start in range(0, len(flat), BATCH):
            q = np.asarray(model.forecast_batch(flat[start : start + BATCH], horizon=self.horizon))
            out[start : start + BATCH] = q[:, : self.horizon, [lo, mid, hi]]
        return out.reshape(len(origins), len(names), self.horizon, 3)

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Fit the tail factors on ``valid`` (else the end of ``train``); the weights stay."""
        if self.context_length < 8 or self.tail_every < 1 or self.tail_sessions < 1:
            raise ForecastError(
                f"{self.name}: context_length >= 8, tail_sessions >= 1 and tail_every >= 1 needed"
            )
        self._start_fit(train, recorder)
        panel = train if valid is None else pl.concat([train, valid]).sort("symbol", "ts")
        days = (valid if valid is not None else train)["ts"].unique().sort()
        days = days.tail(self.tail_sessions) if valid is None else days
        # the last `horizon` sessions have no realized steps inside the panel
        origins = days.head(max(len(days) - self.horizon, 0)).gather_every(self.tail_every)
        self.k_lo_, self.k_hi_, self.tail_cells_ = self._tails(panel, origins.to_list())
        self.tails_ = "quantiles" if self._levels()[3] else "conformal"
        if self.k_lo_ is None or self.k_hi_ is None:
            self.k_lo_ = self.k_hi_ = GAUSSIAN_K
            self.tails_ = "gaussian"
        self.weights_ = weights_digest(local_checkpoint(self.checkpoint), self.loader)
        state = {"k_lo": self.k_lo_, "k_hi": self.k_hi_, "weights": self.weights_}
        self.version_ = hashlib.sha256(
            repr((self.name, sorted(self.get_config().items()), sorted(state.items()))).encode()
        ).hexdigest()[:16]
        if recorder is not None:
            recorder.log_params({"tails": self.tails_, "tail_cells": self.tail_cells_})
            recorder.log_metrics({"k_lo": self.k_lo_, "k_hi": self.k_hi_})
        return self

    def _tails(self, panel: pl.DataFrame, origins: list) -> tuple[float | None, float | None, int]:
        """Conformal (k_lo, k_hi) over the validation origins, and the cells they used."""
        if self._levels()[3]:
            return 1.0, 1.0, 0
        names, series = _panel_series(panel, None)
        long_enough = [s for s in names if len(series[s][1]) > self.context_length + self.horizon]
        if not origins or not long_enough:
            return None, None, 0
        days = np.array(origins, dtype="datetime64[D]")
        ok = [s for s in long_enough if series[s][0][self.context_length - 1] <= days[0]]
        if not ok:
            return None, None, 0
        q = self._raw(ok, series, days)
        realized = np.full(q.shape[:3], np.nan)
        for j, s in enumerate(ok):
            ts, y = series[s]
            rows = np.searchsorted(ts, days, side="right") - 1
            for h in range(self.horizon):
                at = rows + h + 1
                realized[:, j, h] = np.where(at < len(y), y[np.minimum(at, len(y) - 1)], np.nan)
        low, mid, high = q[..., 0], q[..., 1], q[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            r_hi = np.where(high > mid, (realized - mid) / (high - mid), np.nan)
            r_lo = np.where(mid > low, (mid - realized) / (mid - low), np.nan)
        cells = int(np.isfinite(r_hi).sum())
        return conformal_k(r_lo.ravel()), conformal_k(r_hi.ravel()), cells

    def _quantiles(self, names: list[str], series: SeriesMap, origins: np.ndarray) -> np.ndarray:
        q = self._raw(names, series, origins)
        mid = q[..., 1]
        out = np.empty_like(q)
        out[..., 1] = mid
        out[..., 0] = mid - self.k_lo_ * np.maximum(mid - q[..., 0], 0.0)
        out[..., 2] = mid + self.k_hi_ * np.maximum(q[..., 2] - mid, 0.0)
        return out

    def _state(self) -> dict[str, Any]:
        return {
            "k_lo": self.k_lo_,
            "k_hi": self.k_hi_,
            "tails": self.tails_,
            "tail_cells": self.tail_cells_,
            "weights": self.weights_,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        found = weights_digest(local_checkpoint(self.checkpoint), self.loader)
        if found != state["weights"]:
            raise ForecastError(
                f"{self.name}: the weights at {self.checkpoint or self.loader} changed since this "
                f"artifact was fitted (sha256 {found[:12]} != {str(state['weights'])[:12]})"
            )
        self.k_lo_, self.k_hi_ = float(state["k_lo"]), float(state["k_hi"])
        self.tails_, self.tail_cells_ = str(state["tails"]), int(state["tail_cells"])
        self.weights_ = found


class Fracast(FoundationForecaster):
    """Fracast-0 (85k parameters, weights in the ``fracast`` wheel), zero-shot."""

    name: ClassVar[str] = "fracast"
