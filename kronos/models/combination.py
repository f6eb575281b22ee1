"""``combination``: a forecast combination whose weights are fitted on the validation year.

Members (default: EWMA, GARCH-t and ``har_gbm``) are forecasters by name.
``fit`` splits the data it is given into fitting rows and a validation window
(the last 12 months / 20%, :func:`~kronos.models.split.train_valid_split`,
unless it is passed one), fits every member on the fitting rows, forecasts
every validation day, and for each quantile level separately chooses the
weights on the simplex (non-negative, summing to one) that minimise the
pinball loss of the weighted quantile over the validation cells: a linear
programme, solved exactly by HiGHS (:func:`simplex_quantile_weights`).
Quantile averaging per level, not a mixture of distributions: a weighted
average of quantiles is the quantile of the weighted "Vincentized"
distribution, so the combination stays a proper quantile forecast.
Every member is then refitted on all the data, and the weights are kept
(unless ``fit`` was given the validation rows: then they only steer).
Members that take ``sectors`` or ``valid_days`` get the combination's;
``member_options`` adds keyword overrides per member (``max_steps``...).
The three combined quantiles are sorted (they cannot cross when the members'
do not, but a custom member might).
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
import torch
from scipy import optimize, sparse

from kronos.errors import ConfigError
from kronos.models.base import (
    FORECAST_SCHEMA,
    QUANTILE_COLUMNS,
    QUANTILES,
    Forecaster,
    ForecastError,
    Panel,
    Recorder,
)
from kronos.models.evaluation import with_realized
from kronos.models.files import read_hyper_artifact, write_hyper_artifact
from kronos.models.split import fit_split

__all__ = ["Combination", "simplex_quantile_weights"]

FORMAT_VERSION = 1
KEYS = ("asof", "symbol", "step")


def simplex_quantile_weights(forecasts: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    """Weights ``w >= 0, sum(w) = 1`` minimising the mean pinball loss of ``forecasts @ w``.

    ``forecasts``: ``(n, members)`` quantile forecasts at level ``tau`` of the
    ``n`` outcomes ``y``. Solved as the linear programme
    ``min sum(tau u+ + (1 - tau) u-)`` subject to ``forecasts w + u+ - u- = y``.
    """
    n, m = forecasts.shape
    if n == 0:
        raise ForecastError("combination: no validation cells to fit the weights on")
    cost = np.concatenate([np.zeros(m), np.full(n, tau), np.full(n, 1.0 - tau)]) / n
    eye = sparse.identity(n, format="csr")
    a_eq = sparse.vstack(
        [
            sparse.hstack([sparse.csr_matrix(forecasts), eye, -eye]),
            sparse.hstack([sparse.csr_matrix(np.ones((1, m))), sparse.csr_matrix((1, 2 * n))]),
        ],
        format="csr",
    )
    result = optimize.linprog(
        cost, A_eq=a_eq, b_eq=np.concatenate([y, [1.0]]), bounds=(0, None), method="highs"
    )
    if result.status != 0:
        raise ForecastError(f"combination: the weight LP at level {tau} failed ({result.message})")
    w = np.clip(result.x[:m], 0.0, None)
    return w / w.sum()


class Combination(Forecaster):
    """Per-level simplex weights over member forecasters, fitted on the validation window."""

    name: ClassVar[str] = "combination"

    def __init__(
        self,
        members: Sequence[str] = ("ewma", "garch", "har_gbm"),
        sectors: Mapping[str, str | None] | None = None,
        valid_days: int = 365,
        member_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.members = list(members)
        self.sectors = dict(sectors) if sectors else None
        self.valid_days = valid_days
        # keyword overrides per member name, e.g. {"mtgnn_prior": {"max_steps": 200}}
        self.member_options = {m: dict(o) for m, o in (member_options or {}).items()}

    def _hyper_parameters(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "sectors": self.sectors,
            "valid_days": self.valid_days,
            "member_options": self.member_options,
        }

    @property
    def input_size(self) -> int:
        """The longest input any member needs (members are built to ask)."""
        return max(self._build(m).input_size for m in self.members)

    def _build(self, member: str) -> Forecaster:
        from kronos.models import registry

        keys = registry.override_keys(member)
        passed = {"sectors": self.sectors, "valid_days": self.valid_days}
        options = {k: v for k, v in passed.items() if k in keys}
        return registry.build(member, **{**options, **self.member_options.get(member, {})})

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Fit members on the fitting rows and the weights on validation.

        Without ``valid`` (the last ``valid_days`` of ``train`` are split off),
        the members are then refitted on all of ``train``; given ``valid``
        (``kronos train``'s split), it steers the weights only, as the contract
        says, and the members stay fitted on ``train``.
        """
        refit = valid is None
        if len(self.members) < 2 or len(set(self.members)) != len(self.members):
            raise ConfigError(
                f"combination: needs two or more distinct members, got {self.members}"
            )
        if unknown := sorted(set(self.member_options) - set(self.members)):
            raise ConfigError(f"combination: member_options for {unknown}, not members")
        train, valid, both = fit_split(self.name, train, valid, self.valid_days)
        if recorder is not None:
            recorder.log_params({"model": self.name, **self.get_config()})
        origins = sorted(valid["ts"].unique().to_list())
        fitted = [self._build(m).fit(train) for m in self.members]
        cells = with_realized(self._stack(fitted, both, origins, None), both)
        if cells.is_empty():
            raise ForecastError("combination: no validation forecast has a realized return")
        y = cells["y_true"].to_numpy()
        weights = np.empty((len(QUANTILES), len(self.members)))
        for k, (tau, col) in enumerate(zip(QUANTILES, QUANTILE_COLUMNS, strict=True)):
            x = np.column_stack([cells[f"{col}_{i}"].to_numpy() for i in range(len(fitted))])
            weights[k] = simplex_quantile_weights(x, y, tau)
        self.weights_ = weights
        self.valid_cells_ = cells.height
        self.members_ = [self._build(m).fit(both) for m in self.members] if refit else fitted
        self.version_ = self._digest()
        if recorder is not None:
            recorder.log_metrics(
                {
                    f"weight_{col}_{member}": float(weights[k, i])
                    for k, col in enumerate(QUANTILE_COLUMNS)
                    for i, member in enumerate(self.members)
                }
            )
        return self

    def _stack(
        self,
        members: Sequence[Forecaster],
        panel: pl.DataFrame,
        origins: Sequence[date],
        symbols: Sequence[str] | None,
    ) -> pl.DataFrame:
        """Members' forecasts side by side: ``p05_0, p50_0, p95_0, p05_1, ...`` per cell."""
        joined = None
        for i, member in enumerate(members):
            frame = member.predict_origins(panel, origins, symbols).select(
                *KEYS, "target_ts", *[pl.col(c).alias(f"{c}_{i}") for c in QUANTILE_COLUMNS]
            )
            if joined is None:
                joined = frame
                continue
            before = joined.height
            joined = joined.join(frame.drop("target_ts"), on=list(KEYS), how="inner")
            if joined.height != before or frame.height != before:
                raise ForecastError(
                    f"combination: member {self.members[i]!r} forecast other cells "
                    f"({frame.height} rows, the first member {before})"
                )
        assert joined is not None
        return joined.sort(*KEYS)

    def fitted_summary(self) -> dict[str, Any]:
        """The weights per level and member, and how many validation cells chose them."""
        self._check_fitted()
        return {
            "weights": {
                col: dict(zip(self.members, map(float, self.weights_[k]), strict=True))
                for k, col in enumerate(QUANTILE_COLUMNS)
            },
            "valid_cells": self.valid_cells_,
        }

    def _digest(self) -> str:
        h = hashlib.sha256(json.dumps(self._hyper_parameters(), sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.weights_).tobytes())
        for member in self.members_:
            h.update(member.version.encode())
        return h.hexdigest()[:12]

    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Quantile forecasts for steps 1..horizon from ``asof``, using rows ``ts <= asof``."""
        return self.predict_origins(panel.filter(pl.col("ts") <= asof), [asof], symbols)

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """The weighted quantiles of the members' forecasts from every origin."""
        self._check_fitted()
        if len(origins) == 0:
            return pl.DataFrame(schema=FORECAST_SCHEMA)
        cells = self._stack(self.members_, panel, origins, symbols)
        q = np.empty((cells.height, 3))
        for k, col in enumerate(QUANTILE_COLUMNS):
            x = np.column_stack([cells[f"{col}_{i}"].to_numpy() for i in range(len(self.members))])
            q[:, k] = x @ self.weights_[k]
        q.sort(axis=1)
        order = {s: i for i, s in enumerate(symbols)} if symbols is not None else None
        out = cells.select(*KEYS, "target_ts").with_columns(
            p05=q[:, 0],
            p50=q[:, 1],
            p95=q[:, 2],
            model=pl.lit(self.name),
            version=pl.lit(self.version),
        )
        if order is not None:
            out = out.sort(pl.col("asof"), pl.col("symbol").replace_strict(order), pl.col("step"))
        return out.select(list(FORECAST_SCHEMA)).cast(FORECAST_SCHEMA)

    def save(self, directory: Path) -> None:
        """Write the weights, and each member's artifact under ``members/<i>_<name>/``."""
        self._check_fitted()
        directory = Path(directory)
        state = {
            "version": self.version_,
            "weights": torch.from_numpy(self.weights_.copy()),
            "valid_cells": self.valid_cells_,
        }
        write_hyper_artifact(directory, self.name, FORMAT_VERSION, self._hyper_parameters(), state)
        for i, (name, member) in enumerate(zip(self.members, self.members_, strict=True)):
            member.save(directory / "members" / f"{i}_{name}")

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a combination saved by :meth:`save`, members included."""
        from kronos.models import registry

        directory = Path(directory)
        hyper, config_path, state = read_hyper_artifact(directory, cls.name, FORMAT_VERSION)
        model = cls._from_hyper_parameters(hyper, config_path)
        model.weights_ = state["weights"].numpy()
        model.valid_cells_ = int(state["valid_cells"])
        model.members_ = [
            registry.forecaster_class(name).load(directory / "members" / f"{i}_{name}")
            for i, name in enumerate(model.members)
        ]
        model.version_ = str(state["version"])
        return model
