"""Forecasters of a researcher's own, for kronos to find by import path or entry point.

``kronos_example.forecasters:RollingQuantiles``, or the entry point
``example_quantiles`` once the package is installed.

:class:`RollingQuantiles` is honest: each symbol's p05/p50/p95 for every step
are the empirical quantiles of its last ``window`` daily log returns up to the
origin. :class:`PeekingQuantiles` makes the classic mistake of reading the
panel's last rows whatever the origin: kronos's contract check refuses it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import polars as pl

from kronos.models.base import (
    QUANTILES,
    Forecaster,
    ForecastError,
    Recorder,
    forecast_frame,
    history_until,
    origin_windows,
)


class RollingQuantiles(Forecaster):
    """Empirical quantiles of the last ``window`` returns, the same for steps 1..horizon."""

    name: ClassVar[str] = "rolling_quantiles"

    def __init__(self, window: int = 60) -> None:
        self.window = window

    def _hyper_parameters(self) -> dict[str, int]:
        """The constructor arguments (``get_config`` adds the header)."""
        return {"window": self.window}

    @property
    def input_size(self) -> int:
        """Returns a prediction needs: the window."""
        return self.window

    def fit(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame | None = None,
        recorder: Recorder | None = None,
    ) -> Self:
        """Nothing to learn but the window; the version says which data it saw."""
        seen = f"{self.window}|{train['ts'].max()}|{train.height}"
        self.version_ = f"{self.name}-{hashlib.sha256(seen.encode()).hexdigest()[:8]}"
        return self

    def _windows(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        return history_until(panel, asof, symbols, self.window)

    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """p05/p50/p95 of each symbol's last ``window`` returns up to ``asof``, for every step."""
        self._check_fitted()
        series = self._windows(panel, asof, symbols)
        names = list(series)
        q = np.array([np.quantile(series[s][-self.window :], QUANTILES) for s in names])
        grid = np.repeat(q[:, None, :], self.horizon, axis=1)
        return forecast_frame(names, asof, grid, self.name, self.version)

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """:meth:`predict` from each origin, the windows cut at once (backtests, training)."""
        self._check_fitted()
        names = list(symbols) if symbols is not None else sorted(panel["symbol"].unique())
        q = np.quantile(origin_windows(panel, names, origins, self.window), QUANTILES, axis=-1)
        grids = np.repeat(np.moveaxis(q, 0, -1)[:, :, None, :], self.horizon, axis=2)
        frames = [
            forecast_frame(names, o, g, self.name, self.version)
            for o, g in zip(origins, grids, strict=True)
        ]
        return pl.concat(frames)

    def save(self, directory: Path) -> None:
        """``config.json``: the header, the window and the version."""
        directory.mkdir(parents=True, exist_ok=True)
        config = {**self.get_config(), "version": self.version}
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The model saved by :meth:`save`; another model's or format's file is refused."""
        path = Path(directory) / "config.json"
        config = json.loads(path.read_text())
        for key, value in cls.header().items():
            if config.get(key) != value:
                raise ForecastError(f"{path}: {key} {config.get(key)!r}, expected {value!r}")
        model = cls(window=int(config["window"]))
        model.version_ = config["version"]
        return model


class PeekingQuantiles(RollingQuantiles):
    """The same, but from the panel's last ``window`` rows: it looks ahead of ``asof``."""

    name: ClassVar[str] = "peeking_quantiles"
    predict_origins = Forecaster.predict_origins  # one origin at a time, through _windows

    def _windows(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        return history_until(panel, panel["ts"].max(), symbols, self.window)
