"""The regime encoder's labels, their train/validation split and the persistence baseline.

See :mod:`kronos.models.regime`: a session's label is the state of the index's
realized volatility over the next ``horizon`` sessions; validation labels are
the last ``valid_days`` calendar days, with a purge before them; the baseline
is the empirical transition from the trailing volatility's state to the next one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import numpy as np
import polars as pl

__all__ = [
    "accuracy",
    "label_split",
    "log_loss",
    "persistence_baseline",
    "states_of",
    "trailing_vol",
]


def states_of(vol: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """State index of each volatility (0 calm, 1 normal, 2 turbulent); -1 where NaN."""
    out = np.searchsorted(thresholds, vol, side="right")
    return np.where(np.isfinite(vol), out, -1)


def trailing_vol(index_ret: np.ndarray, horizon: int) -> np.ndarray:
    """Root mean square of the last ``horizon`` index returns (NaN before a full window)."""
    sq = pl.Series(index_ret**2).rolling_mean(horizon, min_samples=horizon)
    return np.sqrt(sq.to_numpy())


def label_split(
    ts: Sequence[date], labelled: np.ndarray, valid_days: int, horizon: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Training and validation label positions, and the first validation session's position.

    Validation: the labels of the last ``valid_days`` calendar days (none when
    0). Training: the labels whose ``horizon`` sessions ahead all lie before the
    first validation session (the purge), so no training label reads a
    validation-period return.
    """
    if valid_days > 0 and len(labelled):
        edge = ts[labelled[-1]] - timedelta(days=valid_days)
        valid = labelled[np.array([ts[i] > edge for i in labelled])]
        first_valid = int(valid[0])
    else:
        valid, first_valid = np.empty(0, dtype=np.int64), len(ts)
    return labelled[labelled + horizon < first_valid], valid, first_valid


def persistence_baseline(
    now_state: np.ndarray, next_state: np.ndarray, train: np.ndarray, n_states: int = 3
) -> np.ndarray:
    """Transition probabilities ``P[now, next]`` counted on ``train`` rows, plus one per cell."""
    counts = np.ones((n_states, n_states))
    rows = train[(now_state[train] >= 0) & (next_state[train] >= 0)]
    np.add.at(counts, (now_state[rows], next_state[rows]), 1)
    return counts / counts.sum(axis=1, keepdims=True)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log probability of the true labels (probabilities floored at 1e-12)."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable state is the label."""
    return float(np.mean(probs.argmax(axis=1) == labels))
