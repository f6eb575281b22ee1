"""Baseline forecasters: historical quantiles, RiskMetrics EWMA, GARCH(1,1)-t.

All three forecast from any origin with the same code path: ``predict`` cuts
the panel at ``asof`` and runs the batched computation of ``predict_origins``
for that single origin, so the two agree by construction and a forecast can
never see a row after its origin.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
import torch
from arch import arch_model
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal, stats

from kronos.errors import ConfigError
from kronos.models.base import (
    FORECAST_SCHEMA,
    QUANTILES,
    Forecaster,
    ForecastError,
    Panel,
    Recorder,
    forecast_frame,
    history_until,
)
from kronos.models.files import read_hyper_artifact, write_hyper_artifact

__all__ = ["FORMAT_VERSION", "EwmaNormal", "GarchT", "HistoricalQuantiles", "ewma_variance"]

FORMAT_VERSION = 1
_LEVELS = np.asarray(QUANTILES)
SeriesMap = dict[str, tuple[np.ndarray, np.ndarray]]  # symbol -> (ts as datetime64[D], y)


def _panel_series(
    panel: pl.DataFrame, symbols: Sequence[str] | None
) -> tuple[list[str], SeriesMap]:
    """Each wanted symbol's full ``(ts, y)`` arrays; unknown symbols raise."""
    missing = {"symbol", "ts", "y"} - set(panel.columns)
    if missing:
        raise ForecastError(f"panel lacks columns {sorted(missing)}")
    known = set(panel["symbol"].unique().to_list())
    wanted = list(symbols) if symbols is not None else sorted(known)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ForecastError(f"unknown symbols (not in the panel): {unknown}")
    parts = (
        panel.filter(pl.col("symbol").is_in(wanted))
        .sort("symbol", "ts")
        .partition_by("symbol", as_dict=True)
    )
    series = {
        s: (parts[(s,)]["ts"].to_numpy(), parts[(s,)]["y"].to_numpy().astype(np.float64))
        for s in wanted
    }
    return wanted, series


def _checked_rows(
    symbol: str, ts: np.ndarray, y: np.ndarray, origins: np.ndarray, min_length: int
) -> np.ndarray:
    """Row of the last return at or before each origin; the checks of ``history_until``."""
    rows = np.searchsorted(ts, origins, side="right") - 1
    count = rows + 1
    short = np.flatnonzero(count < min_length)
    if short.size:
        i = short[0]
        raise ForecastError(
            f"symbol {symbol}: {count[i]} returns up to {origins[i]}, needs at least {min_length}"
        )
    bad = np.concatenate([[0], np.cumsum(~np.isfinite(y))])
    in_window = bad[rows + 1] - bad[rows + 1 - min_length]
    dirty = np.flatnonzero(in_window > 0)
    if dirty.size:
        raise ForecastError(
            f"symbol {symbol}: NaN/inf in the input window ending {origins[dirty[0]]}"
        )
    return rows


def _digest(*parts: object) -> str:
    """A short stable hash of JSON-able values and arrays."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:12]


class _Baseline(Forecaster):
    """Shared plumbing: origin batching, checks, save and load."""

    def _start_fit(self, train: pl.DataFrame, recorder: Recorder | None) -> None:
        missing = {"symbol", "ts", "y"} - set(train.columns)
        if missing:
            raise ForecastError(f"training panel lacks columns {sorted(missing)}")
        if recorder is not None:
            recorder.log_params({"model": self.name, **self.get_config()})

    @abstractmethod
    def _quantiles(self, names: list[str], series: SeriesMap, origins: np.ndarray) -> np.ndarray:
        """Quantiles, shape ``(n_origins, n_symbols, horizon, 3)``."""

    def _single(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None
    ) -> tuple[list[str], SeriesMap, np.ndarray]:
        """Checked inputs for one origin, from the rows up to ``asof`` only."""
        self._check_fitted()
        history_until(panel, asof, symbols, self.input_size)
        names, series = _panel_series(panel.filter(pl.col("ts") <= asof), symbols)
        return names, series, np.array([asof], dtype="datetime64[D]")

    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Quantile forecasts for steps 1..horizon from ``asof``, using rows ``ts <= asof``."""
        names, series, origins = self._single(panel, asof, symbols)
        q = self._quantiles(names, series, origins)
        return forecast_frame(names, asof, q[0], self.name, self.version)

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Forecasts from every origin at once; equal to ``predict`` origin by origin."""
        self._check_fitted()
        if len(origins) == 0:
            return pl.DataFrame(schema=FORECAST_SCHEMA)
        names, series = _panel_series(panel, symbols)
        days = np.array(origins, dtype="datetime64[D]")
        q = self._quantiles(names, series, days)
        return pl.concat(
            [
                forecast_frame(names, o, q[i], self.name, self.version)
                for i, o in enumerate(days.astype(object))
            ]
        )

    def _state(self) -> dict[str, Any]:
        """Fitted state as tensors, Python scalars and strings."""
        return {}

    def _set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_state` returned."""

    def save(self, directory: Path) -> None:
        """Write ``state.pt``, ``config.json`` and ``scaler.pkl`` (an empty dict)."""
        self._check_fitted()
        state = {"version": self.version_, **self._state()}
        write_hyper_artifact(directory, self.name, FORMAT_VERSION, self.get_config(), state)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a forecaster saved by :meth:`save`; refuse another model or format."""
        hyper, config_path, state = read_hyper_artifact(directory, cls.name, FORMAT_VERSION)
        model = cls._from_hyper_parameters(hyper, config_path)
        model.version_ = str(state.pop("version"))
        model._set_state(state)
        return model


class HistoricalQuantiles(_Baseline):
    """Zero median; p05/p95 are the empirical quantiles of the last ``window`` returns.

    The same three numbers serve every step. Non-parametric: ``fit`` only checks
    the hyper-parameters and sets ``version_``.
    """

    name: ClassVar[str] = "historical"

    def __init__(self, window: int = 250) -> None:
        self.window = window

    @property
    def input_size(self) -> int:
        """The window length."""
        return self.window

    def get_config(self) -> dict:
        """The hyper-parameters."""
        return {"window": self.window}

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Check the hyper-parameters; nothing is estimated."""
        if not isinstance(self.window, int) or self.window < 2:
            raise ConfigError(f"window must be an integer >= 2, got {self.window!r}")
        self._start_fit(train, recorder)
        self.version_ = _digest(self.name, self.get_config())
        return self

    def _quantiles(self, names: list[str], series: SeriesMap, origins: np.ndarray) -> np.ndarray:
        out = np.zeros((len(origins), len(names), self.horizon, 3))
        for j, s in enumerate(names):
            ts, y = series[s]
            rows = _checked_rows(s, ts, y, origins, self.window)
            windows = sliding_window_view(y, self.window)[rows - self.window + 1]
            lo, hi = np.quantile(windows, [_LEVELS[0], _LEVELS[2]], axis=1)
            out[:, j, :, 0] = lo[:, None]
            out[:, j, :, 2] = hi[:, None]
        return out


def ewma_variance(y: np.ndarray, lam: float, seed_length: int = 30) -> np.ndarray:
    """RiskMetrics variance after each return: ``s2_t = lam s2_{t-1} + (1 - lam) y_t^2``.

    Each run of finite returns starts afresh: ``s2`` at its ``seed_length``-th
    return is the sample variance (ddof 1) of its first ``seed_length``
    returns, and the recursion runs on from the next one. Rows with fewer
    finite returns since the last gap are NaN.
    """
    out = np.full(len(y), np.nan)
    flag = np.concatenate([[0], np.isfinite(y).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flag))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - start < seed_length:
            continue
        seed = np.var(y[start : start + seed_length], ddof=1)
        out[start + seed_length - 1] = seed
        # lfilter is a causal recursion: a prefix of the series gives a prefix of the output
        out[start + seed_length : stop] = signal.lfilter(
            [1.0 - lam], [1.0, -lam], y[start + seed_length : stop] ** 2, zi=[lam * seed]
        )[0]
    return out


class EwmaNormal(_Baseline):
    """RiskMetrics: mean 0, sd the one-day-ahead EWMA volatility, flat across steps.

    The recursion starts from the sample variance of the first 30 returns of
    the history available (a NaN/inf return restarts it, see :func:`ewma_variance`).
    """

    name: ClassVar[str] = "ewma"
    seed_length: ClassVar[int] = 30

    def __init__(self, lam: float = 0.94) -> None:
        self.lam = lam

    @property
    def input_size(self) -> int:
        """The returns that seed the variance."""
        return self.seed_length

    def get_config(self) -> dict:
        """The hyper-parameters."""
        return {"lam": self.lam}

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Check the hyper-parameters; ``lam`` is fixed, not estimated."""
        if not 0.0 < self.lam < 1.0:
            raise ConfigError(f"lam must lie in (0, 1), got {self.lam!r}")
        self._start_fit(train, recorder)
        self.version_ = _digest(self.name, self.get_config())
        return self

    def _sigma(self, names: list[str], series: SeriesMap, origins: np.ndarray) -> np.ndarray:
        """One-day-ahead sd, shape ``(n_origins, n_symbols)``."""
        out = np.empty((len(origins), len(names)))
        for j, s in enumerate(names):
            ts, y = series[s]
            rows = _checked_rows(s, ts, y, origins, self.seed_length)
            out[:, j] = np.sqrt(ewma_variance(y, self.lam, self.seed_length)[rows])
        return out

    def distribution(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normal predictive ``(mu, sigma)``, each ``(n_symbols, horizon)``."""
        names, series, origins = self._single(panel, asof, symbols)
        sigma = np.repeat(self._sigma(names, series, origins)[0][:, None], self.horizon, axis=1)
        return np.zeros_like(sigma), sigma

    def _quantiles(self, names: list[str], series: SeriesMap, origins: np.ndarray) -> np.ndarray:
        sigma = self._sigma(names, series, origins)
        z = stats.norm.ppf(_LEVELS)
        return np.broadcast_to(
            sigma[:, :, None, None] * z, (len(origins), len(names), self.horizon, 3)
        ).copy()


class GarchT(_Baseline):
    """GARCH(1,1) with standardized Student-t errors, one fit per symbol (``arch``).

    ``fit`` estimates ``(mu, omega, alpha, beta, nu)`` on 100x the returns and
    keeps the variance forecast for the day after training. ``predict`` keeps
    the parameters fixed and filters the variance forward through the panel's
    returns after the training end up to ``asof``; step ``h`` uses
    ``omega + (alpha + beta) * s2_{h-1}``. The panel given to ``predict`` must
    contain each symbol's last training day.
    """

    name: ClassVar[str] = "garch"
    scale: ClassVar[float] = 100.0

    def __init__(self, mean: str = "Constant", min_train: int = 250) -> None:
        self.mean = mean
        self.min_train = min_train

    @property
    def input_size(self) -> int:
        """Only the filtered state is needed."""
        return 1

    def get_config(self) -> dict:
        """The hyper-parameters."""
        return {"mean": self.mean, "min_train": self.min_train}

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Maximum likelihood per symbol on ``train`` (``valid`` is not used)."""
        if self.mean not in ("Constant", "Zero"):
            raise ConfigError(f"mean must be 'Constant' or 'Zero', got {self.mean!r}")
        self._start_fit(train, recorder)
        names, series = _panel_series(train, None)
        params = np.empty((len(names), 5))  # mu, omega, alpha, beta, nu (scaled units)
        var_next = np.empty(len(names))
        train_end = np.empty(len(names), dtype="datetime64[D]")
        for k, s in enumerate(names):
            ts, y = series[s]
            if len(y) < self.min_train:
                raise ForecastError(
                    f"symbol {s}: {len(y)} training returns, GarchT needs at least {self.min_train}"
                )
            if not np.all(np.isfinite(y)):
                first = ts[np.flatnonzero(~np.isfinite(y))[0]]
                raise ForecastError(f"symbol {s}: NaN/inf in the training returns at {first}")
            x = self.scale * y
            model = arch_model(x, mean=self.mean, vol="GARCH", p=1, q=1, dist="t", rescale=False)
            res = model.fit(disp="off", show_warning=False)
            if res.convergence_flag != 0:
                warnings.warn(
                    f"symbol {s}: GARCH-t optimiser did not converge "
                    f"({res.optimization_result.message})",
                    RuntimeWarning,
                    stacklevel=2,
                )
            p = dict(res.params)
            mu = p.get("mu", 0.0)
            params[k] = (mu, p["omega"], p["alpha[1]"], p["beta[1]"], p["nu"])
            var_next[k] = (
                p["omega"]
                + p["alpha[1]"] * (x[-1] - mu) ** 2
                + p["beta[1]"] * res.conditional_volatility[-1] ** 2
            )
            train_end[k] = ts[-1]
        self.symbols_ = names
        self.params_ = params
        self.var_next_ = var_next
        self.train_end_ = train_end
        self.version_ = self._version()
        if recorder is not None:
            recorder.log_metrics(
                {
                    "mean_nu": float(params[:, 4].mean()),
                    "mean_persistence": float((params[:, 2] + params[:, 3]).mean()),
                }
            )
        return self

    def _version(self) -> str:
        return _digest(
            self.name,
            self.get_config(),
            self.symbols_,
            self.params_,
            self.var_next_,
            self.train_end_.astype(np.int64),
        )

    def _params(
        self, names: list[str], series: SeriesMap, origins: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mu, sigma, nu)`` of returns, each ``(n_origins, n_symbols, horizon)``."""
        index = {s: k for k, s in enumerate(self.symbols_)}
        shape = (len(origins), len(names), self.horizon)
        mu_out, sigma_out, nu_out = np.empty(shape), np.empty(shape), np.empty(shape)
        for j, s in enumerate(names):
            if s not in index:
                raise ForecastError(f"symbol {s}: not fitted by {self.name} (absent from training)")
            k = index[s]
            mu, omega, alpha, beta, nu = self.params_[k]
            end = self.train_end_[k]
            ts, y = series[s]
            rows = _checked_rows(s, ts, y, origins, self.input_size)
            early = np.flatnonzero(origins < end)
            if early.size:
                raise ForecastError(
                    f"symbol {s}: origin {origins[early[0]]} is before the training end "
                    f"{end}; {self.name} forecasts from the training end on"
                )
            start = int(np.searchsorted(ts, end))
            if start == len(ts) or ts[start] != end:
                raise ForecastError(
                    f"symbol {s}: the panel lacks the last training day {end}, "
                    "from which the variance is filtered forward"
                )
            x = self.scale * y[start + 1 : rows.max() + 1]
            bad = np.concatenate([[0], np.cumsum(~np.isfinite(x))])[rows - start]
            dirty = np.flatnonzero(bad > 0)
            if dirty.size:
                raise ForecastError(
                    f"symbol {s}: NaN/inf among the returns between the training end {end} "
                    f"and {origins[dirty[0]]}"
                )
            # v[i] is the variance of the day after row start + i:
            # v[i + 1] = (omega + alpha * eps_i^2) + beta * v[i], as arch computes it
            filtered = signal.lfilter(
                [1.0], [1.0, -beta], omega + alpha * (x - mu) ** 2, zi=[beta * self.var_next_[k]]
            )[0]
            v = np.concatenate([[self.var_next_[k]], filtered])[rows - start]
            var = np.empty((len(origins), self.horizon))
            var[:, 0] = v
            for h in range(1, self.horizon):
                var[:, h] = omega + (alpha + beta) * var[:, h - 1]
            mu_out[:, j] = mu / self.scale
            sigma_out[:, j] = np.sqrt(var) / self.scale
            nu_out[:, j] = nu
        return mu_out, sigma_out, nu_out

    def distribution(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictive ``(mu, sigma, nu)`` per (symbol, step); sigma is the sd.

        The Student-t scale for :func:`kronos.metrics.crps_student_t` is
        ``sigma * sqrt((nu - 2) / nu)``.
        """
        names, series, origins = self._single(panel, asof, symbols)
        mu, sigma, nu = self._params(names, series, origins)
        return mu[0], sigma[0], nu[0]

    def _quantiles(self, names: list[str], series: SeriesMap, origins: np.ndarray) -> np.ndarray:
        mu, sigma, nu = self._params(names, series, origins)
        z = stats.t.ppf(_LEVELS, nu[..., None]) * np.sqrt((nu[..., None] - 2) / nu[..., None])
        return mu[..., None] + z * sigma[..., None]

    def _state(self) -> dict[str, Any]:
        return {
            "symbols": list(self.symbols_),
            "params": torch.from_numpy(self.params_.copy()),
            "var_next": torch.from_numpy(self.var_next_.copy()),
            "train_end": torch.from_numpy(self.train_end_.astype(np.int64)),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.symbols_ = [str(s) for s in state["symbols"]]
        self.params_ = state["params"].numpy()
        self.var_next_ = state["var_next"].numpy()
        self.train_end_ = state["train_end"].numpy().astype("datetime64[D]")
