"""``har_gbm``: one LightGBM quantile model for every symbol, on volatility features.

The target is the ``h``-step-ahead return divided by the symbol's EWMA
volatility at the origin (λ 0.94, the RiskMetrics baseline's own ``sigma``):
standardized, returns of every symbol and every era share one distribution,
so a single global model can learn when EWMA is too wide or too narrow (after
a spike volatility mean-reverts faster than λ 0.94 assumes; in a calm spell
it is too narrow). Features: :mod:`kronos.models.har_features`, plus the step
``h``. One booster per level (0.05, 0.5, 0.95) with LightGBM's quantile
objective; a forecast is ``sigma_t`` times its three quantiles, sorted.

Everything is chosen on the validation window only (the last 12 months / 20%
of the fitting data, :func:`~kronos.models.split.train_valid_split` with
``valid_days``, unless ``fit`` is given one): the number of boosting rounds per level by early
stopping, and whether the median is the model's or zero (the one with the
lower validation pinball loss). The boosters are then refitted on all the data
with those rounds. The tree size (15 leaves, at least 5,000 rows a leaf) is
the one of six configurations with the lowest mean validation CRPS over the
validation years 2007, 2019 and 2021 (docs/models.md). Training rows are
origins whose ``h``-th return lies inside the rows being fitted, so no target
crosses into the validation window.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from kronos.errors import ConfigError
from kronos.metrics import pinball_loss
from kronos.models.base import (
    FORECAST_SCHEMA,
    QUANTILES,
    Forecaster,
    ForecastError,
    Panel,
    Recorder,
    forecast_frame,
)
from kronos.models.files import read_hyper_artifact, write_hyper_artifact
from kronos.models.har_features import FEATURES, VolFeatures, volatility_features
from kronos.models.split import fit_split

__all__ = ["HarGbm"]

FORMAT_VERSION = 1


def _lightgbm() -> Any:
    import lightgbm

    return lightgbm


class HarGbm(Forecaster):
    """Global LightGBM quantile regression of EWMA-standardized returns on HAR features."""

    name: ClassVar[str] = "har_gbm"
    feature_version: ClassVar[str] = "har_vol_v1"

    def __init__(
        self,
        sectors: Mapping[str, str | None] | None = None,
        lam: float = 0.94,
        num_leaves: int = 15,
        min_data_in_leaf: int = 5000,
        learning_rate: float = 0.05,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.5,
        lambda_l2: float = 1.0,
        max_rounds: int = 800,
        early_stopping: int = 50,
        valid_days: int = 365,
        seed: int = 0,
        threads: int = 2,
    ) -> None:
        self.sectors = dict(sectors) if sectors else None
        self.lam = lam
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.learning_rate = learning_rate
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.max_rounds = max_rounds
        self.early_stopping = early_stopping
        self.valid_days = valid_days
        self.seed = seed
        self.threads = threads

    @property
    def input_size(self) -> int:
        """Returns that seed the EWMA volatility (longer windows are NaN until full)."""
        return 30

    def _hyper_parameters(self) -> dict[str, Any]:
        return {
            "sectors": self.sectors,
            "lam": self.lam,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "learning_rate": self.learning_rate,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "lambda_l2": self.lambda_l2,
            "max_rounds": self.max_rounds,
            "early_stopping": self.early_stopping,
            "valid_days": self.valid_days,
            "seed": self.seed,
            "threads": self.threads,
        }

    def get_config(self) -> dict:
        """The header and the hyper-parameters (``threads`` is placement, left out)."""
        config = {**self.header(horizon=True), **self._hyper_parameters()}
        config.pop("threads")
        return config

    # ------------------------------------------------------------------ fit

    def _params(self, tau: float) -> dict[str, Any]:
        return {
            "objective": "quantile",
            "alpha": tau,
            "metric": "quantile",
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "learning_rate": self.learning_rate,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.threads,
            "verbose": -1,
        }

    def _rows(self, feats: VolFeatures, first: np.datetime64 | None) -> tuple[np.ndarray, ...]:
        """Training rows ``(X, z)`` of origins from ``first`` on whose targets are in the grid."""
        n_symbols = feats.values.shape[1]
        xs, zs = [], []
        for j in range(n_symbols):
            own = np.flatnonzero(np.isfinite(feats.returns[:, j]))
            keep = feats.dates[own] >= first if first is not None else np.ones(len(own), bool)
            for h in range(1, self.horizon + 1):
                origin, target = own[:-h], own[h:]
                sel = keep[:-h]
                with np.errstate(invalid="ignore", divide="ignore"):
                    z = feats.returns[target[sel], j] / feats.sigma[origin[sel], j]
                x = feats.values[origin[sel], j]
                ok = np.isfinite(z)
                xs.append(np.column_stack([x[ok], np.full(ok.sum(), float(h))]))
                zs.append(z[ok])
        return np.concatenate(xs).astype(np.float32), np.concatenate(zs)

    def _check(self) -> None:
        if not 0.0 < self.lam < 1.0:
            raise ConfigError(f"har_gbm: lam must lie in (0, 1), got {self.lam!r}")
        for key in ("num_leaves", "min_data_in_leaf", "max_rounds", "early_stopping", "valid_days"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"har_gbm: {key} must be a positive integer, got {value!r}")

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Choose rounds and the median on validation; refit on all rows if ``valid`` was not given.

        Given ``valid`` (``kronos train``'s split), it steers the choices only, as the
        contract says, so the gate's validation scores stay out of sample; without it
        the last ``valid_days`` of ``train`` are split off, and the boosters are then
        refitted on all of ``train`` with the chosen rounds.
        """
        self._check()
        refit = valid is None
        missing = {"symbol", "ts", "y"} - set(train.columns)
        if missing:
            raise ForecastError(f"training panel lacks columns {sorted(missing)}")
        train, valid, both = fit_split(self.name, train, valid, self.valid_days)
        if recorder is not None:
            recorder.log_params({"model": self.name, **self.get_config()})
        lgb = _lightgbm()
        fit_feats = volatility_features(train, self.sectors, self.lam)
        all_feats = volatility_features(both, self.sectors, self.lam)
        x_fit, z_fit = self._rows(fit_feats, None)
        x_val, z_val = self._rows(all_feats, np.datetime64(valid["ts"].min(), "D"))
        rounds, val_pred, early = [], [], []
        for tau in QUANTILES:
            booster = lgb.train(
                self._params(tau),
                lgb.Dataset(x_fit, z_fit, feature_name=[*FEATURES, "step"]),
                num_boost_round=self.max_rounds,
                valid_sets=[lgb.Dataset(x_val, z_val)],
                callbacks=[lgb.early_stopping(self.early_stopping, verbose=False)],
            )
            best = max(int(booster.best_iteration), 1)
            rounds.append(best)
            val_pred.append(booster.predict(x_val, num_iteration=best))
            early.append(lgb.Booster(model_str=booster.model_to_string(num_iteration=best)))
        model_loss = pinball_loss(z_val, val_pred[1], 0.5)
        zero_loss = pinball_loss(z_val, np.zeros_like(z_val), 0.5)
        self.boosters_ = early
        if refit:
            x_all, z_all = self._rows(all_feats, None)
            self.boosters_ = [
                lgb.train(self._params(tau), lgb.Dataset(x_all, z_all), num_boost_round=r)
                for tau, r in zip(QUANTILES, rounds, strict=True)
            ]
        self.rounds_ = rounds
        self.zero_median_ = bool(zero_loss <= model_loss)
        self.version_ = self._digest()
        if recorder is not None:
            recorder.log_metrics(
                {
                    **{
                        f"rounds_p{round(t * 100):02d}": float(r)
                        for t, r in zip(QUANTILES, rounds, strict=True)
                    },
                    "valid_pinball_p50_model": model_loss,
                    "valid_pinball_p50_zero": zero_loss,
                }
            )
        return self

    def _digest(self) -> str:
        h = hashlib.sha256(json.dumps(self.get_config(), sort_keys=True).encode())
        h.update(json.dumps([self.rounds_, self.zero_median_]).encode())
        for booster in self.boosters_:
            h.update(booster.model_to_string().encode())
        return h.hexdigest()[:12]

    # -------------------------------------------------------------- predict

    def _quantiles(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None
    ) -> tuple[list[str], np.ndarray]:
        """``(names, q)`` with ``q`` of shape ``(n_origins, n_symbols, horizon, 3)``."""
        self._check_fitted()
        known = set(panel["symbol"].unique().to_list())
        names = list(symbols) if symbols is not None else sorted(known)
        unknown = [s for s in names if s not in known]
        if unknown:
            raise ForecastError(f"unknown symbols (not in the panel): {unknown}")
        last = max(origins)
        feats = volatility_features(
            panel.filter(pl.col("ts") <= last), self.sectors, self.lam, names
        )
        days = np.array(origins, dtype="datetime64[D]")
        # each symbol's last row at or before the origin (a stale symbol uses its last bar)
        seen = np.where(np.isfinite(feats.returns), np.arange(len(feats.dates))[:, None], -1)
        latest = np.maximum.accumulate(seen, axis=0)
        at = np.searchsorted(feats.dates, days, side="right") - 1
        rows = np.where(at[:, None] >= 0, latest[np.maximum(at, 0)], -1)
        cols = np.arange(len(names))[None, :]
        sigma = np.where(rows >= 0, feats.sigma[rows, cols], np.nan)
        bad = np.argwhere(~np.isfinite(sigma))
        if bad.size:
            i, j = bad[0]
            raise ForecastError(
                f"symbol {names[j]}: fewer than {self.input_size} finite returns up to "
                f"{days[i]} (its EWMA volatility is not seeded)"
            )
        x = feats.values[rows, cols]  # (n_origins, n_symbols, n_features)
        out = np.empty((len(days), len(names), self.horizon, 3))
        flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
        for h in range(1, self.horizon + 1):
            xh = np.column_stack([flat, np.full(len(flat), float(h), np.float32)])
            for k, booster in enumerate(self.boosters_):
                z = booster.predict(xh).reshape(len(days), len(names))
                out[:, :, h - 1, k] = z * sigma
        if self.zero_median_:
            out[..., 1] = 0.0
        return names, np.sort(out, axis=-1)

    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Quantile forecasts for steps 1..horizon from ``asof``, using rows ``ts <= asof``."""
        names, q = self._quantiles(panel.filter(pl.col("ts") <= asof), [asof], symbols)
        return forecast_frame(names, asof, q[0], self.name, self.version)

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Forecasts from every origin at once; equal to ``predict`` origin by origin."""
        if len(origins) == 0:
            return pl.DataFrame(schema=FORECAST_SCHEMA)
        names, q = self._quantiles(panel, origins, symbols)
        return pl.concat(
            [forecast_frame(names, o, q[i], self.name, self.version) for i, o in enumerate(origins)]
        )

    # ---------------------------------------------------------- save / load

    def save(self, directory: Path) -> None:
        """Write the boosters (LightGBM's text format) and the choices into ``directory``."""
        self._check_fitted()
        state = {
            "version": self.version_,
            "rounds": list(self.rounds_),
            "zero_median": self.zero_median_,
            "boosters": [b.model_to_string() for b in self.boosters_],
        }
        write_hyper_artifact(directory, self.name, FORMAT_VERSION, self._hyper_parameters(), state)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a model saved by :meth:`save`; refuse another model or format."""
        hyper, config_path, state = read_hyper_artifact(directory, cls.name, FORMAT_VERSION)
        model = cls._from_hyper_parameters(hyper, config_path)
        lgb = _lightgbm()
        model.boosters_ = [lgb.Booster(model_str=s) for s in state["boosters"]]
        model.rounds_ = [int(r) for r in state["rounds"]]
        model.zero_median_ = bool(state["zero_median"])
        model.version_ = str(state["version"])
        return model
