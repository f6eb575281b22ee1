"""N-BEATS quantile forecaster on neuralforecast (whitepaper sections 3 and 6.1).

A global N-BEATS (neuralforecast's ``NBEATS``) reads the last ``input_size``
daily log returns of a symbol and emits the (p05, p50, p95) quantiles of the
next ``horizon`` returns, trained with ``MQLoss`` on those quantiles.

Training (whitepaper 6.1), all read from :class:`~kronos.models.base.TrainingConfig`:

- AdamW (``weight_decay``), ``ReduceLROnPlateau`` on the validation quantile
  loss (factor 0.5, ``scheduler_patience`` validation checks, ``min_lr``),
  gradient clipping (``gradient_clip``, by norm), early stopping on the
  validation quantile loss after ``patience`` validation checks without
  improvement; the weights of the best check are restored at the end.
- Units: one *epoch* is one pass over the training windows, i.e.
  ``ceil(n_windows / windows_batch_size)`` optimisation steps, where
  ``n_windows`` counts every (symbol, origin) window with a target in the
  training rows. ``max_steps = max_epochs * steps_per_epoch``, capped at
  ``TrainingConfig.max_steps`` when that is set. Validation runs every
  ``val_check_steps`` steps (default: once per epoch), and both ``patience``
  and ``scheduler_patience`` count those validation checks.
- Dropout: neuralforecast 3.3's NBEATS refuses ``dropout_prob_theta > 0``
  (``NotImplementedError``); :class:`_KronosNBEATS` inserts ``nn.Dropout`` after
  each hidden activation of every block, as neuralforecast 1.x had it in a
  comment.
- Without ``valid`` rows there is no early stopping and the learning rate stays
  constant.
- After each validation check the recorder receives ``train_loss`` (mean over
  the steps since the previous check), ``valid_loss`` and ``lr``; both losses
  are neuralforecast's ``MQLoss``, i.e. the *sum* over the three quantiles of
  the mean pinball loss. ``train_loss`` is computed on the per-window
  normalised scale and ``valid_loss`` on the per-symbol-scaled returns, so
  follow each over time rather than comparing one with the other.

Scaling, both fitted without seeing validation or future rows:

1. per symbol, a global scale: the standard deviation of the symbol's
   *training* returns (``scaler.pkl``: ``{symbol: float}``); returns are divided
   by it before the network and quantiles multiplied by it after. Symbols not
   seen at fit take the median of the fitted scales (the network is global, so
   it can forecast any symbol with ``input_size`` returns);
2. inside the network, neuralforecast's temporal scaler (``scaler_type``),
   computed from each input window alone.

Time index: Nixtla's ``ds`` is the integer position of the row within its
symbol (0..n-1), not the date: trading days have holidays, so a business-day
frequency would invent missing rows.

Prediction does not go through ``NeuralForecast.predict``: all (symbol, origin)
input windows are stacked and the torch network runs on them in batches
(:meth:`NBeatsForecaster._quantiles`), with neuralforecast's own normalisation
and inverse normalisation. If the network crosses its quantiles, the three
values of each (symbol, step) are sorted (monotone rearrangement, which never
increases the pinball loss: Chernozhukov, Fernandez-Val and Galichon 2010).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import pickle
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import polars as pl
import torch
from neuralforecast.losses.pytorch import MQLoss
from neuralforecast.models import NBEATS
from neuralforecast.tsdataset import TimeSeriesDataset
from pytorch_lightning import Callback
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from kronos.models.base import (
    FORECAST_SCHEMA,
    HORIZON,
    QUANTILES,
    Forecaster,
    ForecastError,
    NullRecorder,
    Recorder,
    TrainingConfig,
    flatten_params,
    forecast_frame,
    history_until,
)

__all__ = [
    "FEATURE_VERSION",
    "FORMAT_VERSION",
    "VAL_LOSS_KEY",
    "NBeatsDefaultForecaster",
    "NBeatsForecaster",
    "library_default_nbeats",
    "lightweight_nbeats",
]

FORMAT_VERSION = 1
FEATURE_VERSION = "log_return_v1"
VAL_LOSS_KEY = "ptl/val_loss"
"""What neuralforecast logs after each validation check (window-weighted MQLoss)."""
PLATEAU_FACTOR = 0.5
PREDICT_BATCH = 8192
_LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning_fabric",
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
)


class _KronosNBEATS(NBEATS):
    """NBEATS with AdamW, ReduceLROnPlateau stepped once per validation check, and dropout.

    Lightning offers a plateau scheduler a step after every training batch (with
    ``interval="step"``), or per epoch, and neither is a validation check here:
    neuralforecast validates every ``val_check_steps`` global steps. So the
    scheduler is registered with Lightning (monitor ``ptl/val_loss``) and
    :meth:`lr_scheduler_step` takes only the first offer after each check.
    """

    def __init__(
        self,
        *,
        weight_decay: float,
        scheduler_patience: int,
        min_lr: float,
        dropout: float,
        **nbeats_kwargs: Any,
    ):
        super().__init__(dropout_prob_theta=0.0, **nbeats_kwargs)
        self.kronos_weight_decay = weight_decay
        self.kronos_scheduler_patience = scheduler_patience
        self.kronos_min_lr = min_lr
        self._checks_done = 0
        self._checks_stepped = 0
        if dropout > 0:
            for block in self.blocks:
                layers: list[nn.Module] = []
                for layer in block.layers:
                    layers.append(layer)
                    if not isinstance(layer, nn.Linear):
                        layers.append(nn.Dropout(p=dropout))
                block.layers = nn.Sequential(*layers)

    def _create_windows(self, batch, step):
        """Training windows: sample first, then gather only the sampled windows.

        neuralforecast materialises every window of every series in the batch
        (an ``unfold`` then a copy of ``n_series * T * (input_size + h)``
        values) on every step, only to keep ``windows_batch_size`` of them: on
        20 series of 8,000 days that copy is ~80% of a step. This draws the same
        way (uniformly among windows with at least one observed input and one
        observed target; with replacement only when there are fewer windows than
        ``windows_batch_size``) from availability counts, and gathers those.
        Validation and prediction windows, and anything with exogenous or
        sample-weight columns, go to neuralforecast.
        """
        temporal_cols = batch["temporal_cols"]
        if (
            step != "train"
            or self.windows_batch_size is None
            or self.start_padding_enabled
            or batch.get("static") is not None
            or list(temporal_cols) != ["y", "available_mask"]
        ):
            return super()._create_windows(batch, step)
        temporal = batch["temporal"]  # [n_series, C, T]
        cut = self.val_size + self.test_size
        if cut > 0:
            temporal = temporal[:, :, :-cut]
        temporal = self.padder_train(temporal)  # h zeros (mask 0) at the end
        size = self.input_size + self.h
        n_starts = temporal.shape[-1] - size + 1
        if n_starts < 1:
            raise Exception("Time series is too short for training")
        mask = temporal[:, temporal_cols.get_loc("available_mask"), :]
        counts = torch.nn.functional.pad(mask.cumsum(dim=-1), (1, 0))
        starts = torch.arange(n_starts, device=mask.device)
        insample = counts[:, starts + self.input_size] - counts[:, starts]
        outsample = counts[:, starts + size] - counts[:, starts + self.input_size]
        ok = (insample >= max(1, int(self.input_size * self.min_insample_fraction))) & (
            outsample >= max(1, int(self.h * self.min_outsample_fraction))
        )
        candidates = torch.nonzero(ok.flatten()).squeeze(-1)
        if len(candidates) == 0:
            raise Exception("No windows available for training")
        if len(candidates) < self.windows_batch_size:
            pick = torch.randint(0, len(candidates), (self.windows_batch_size,), device=mask.device)
        else:
            pick = torch.randperm(len(candidates), device=mask.device)[: self.windows_batch_size]
        chosen = candidates[pick]
        series, start = chosen // n_starts, chosen % n_starts
        positions = start[:, None] + torch.arange(size, device=mask.device)[None, :]
        windows = temporal[series[:, None], :, positions].unsqueeze(-1)  # [Ws, L + h, C, 1]
        final_condition = torch.arange(len(windows), device=mask.device)
        return windows, None, batch.get("static_cols"), final_condition, None, temporal_cols

    def configure_optimizers(self):
        """AdamW; with validation rows, ReduceLROnPlateau on the validation loss."""
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, weight_decay=self.kronos_weight_decay
        )
        if self.val_size == 0:
            return optimizer
        scheduler = ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=PLATEAU_FACTOR,
            patience=self.kronos_scheduler_patience,
            min_lr=self.kronos_min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": VAL_LOSS_KEY,
                "interval": "step",
                "frequency": 1,
                # the monitor does not exist before the first check: skip, don't fail
                "strict": False,
            },
        }

    def on_validation_epoch_end(self):
        """Log the validation loss (neuralforecast), then count the check."""
        super().on_validation_epoch_end()
        if self.val_size > 0 and not self.trainer.sanity_checking:
            self._checks_done += 1

    def lr_scheduler_step(self, scheduler, metric):
        """Step the plateau scheduler once per validation check, others as usual."""
        if isinstance(scheduler, ReduceLROnPlateau):
            if self._checks_done > self._checks_stepped:
                scheduler.step(metric)
                self._checks_stepped = self._checks_done
            return
        super().lr_scheduler_step(scheduler, metric)


class _CheckRecorder(Callback):
    """After each validation check: record losses, forward them, keep the best weights."""

    def __init__(self, recorder: Recorder, keep_best: bool):
        self.recorder = recorder
        self.keep_best = keep_best
        self.history: list[dict[str, float | int | None]] = []
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.trainer = None
        self._seen = 0

    def on_fit_start(self, trainer, pl_module):
        self.trainer = trainer

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        losses = [loss for _, loss in pl_module.train_trajectories[self._seen :]]
        self._seen = len(pl_module.train_trajectories)
        valid = None
        if pl_module.val_size > 0 and pl_module.valid_trajectories:
            last_step, last_loss = pl_module.valid_trajectories[-1]
            valid = float(last_loss) if last_step == step else None
        lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        row = {
            "step": step,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "valid_loss": valid,
            "lr": lr,
        }
        self.history.append(row)
        self.recorder.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        if self.keep_best and valid is not None and valid < self.best_loss:
            self.best_loss, self.best_step = valid, step
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    """Silence Lightning's info logs and its known-harmless warnings, then restore."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (
                ".*does not have many workers.*",
                ".*ReduceLROnPlateau conditioned on metric.*",
                ".*val_check_steps is greater than max_steps.*",
                ".*number of training batches.*is smaller than the logging interval.*",
                ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _to_nixtla(symbols: np.ndarray, y: np.ndarray, lengths: np.ndarray) -> pd.DataFrame:
    """The one polars/numpy -> pandas conversion: Nixtla's ``unique_id, ds, y`` frame.

    ``ds`` is the row's integer position within its symbol.
    """
    return pd.DataFrame(
        {
            "unique_id": np.repeat(symbols, lengths),
            "ds": np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
            "y": y,
        }
    )


def _series(frame: pl.DataFrame, what: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per symbol: (ts as days since 1970, y), sorted by ts; refuse duplicates and NaN."""
    missing = {"symbol", "ts", "y"} - set(frame.columns)
    if missing:
        raise ForecastError(f"{what} panel lacks columns {sorted(missing)}")
    data = frame.select(
        pl.col("symbol").cast(pl.String),
        pl.col("ts").cast(pl.Date).cast(pl.Int32).alias("day"),
        pl.col("y").cast(pl.Float64),
    ).sort("symbol", "day")
    out = {}
    for (symbol,), g in data.group_by("symbol", maintain_order=True):
        day, y = g["day"].to_numpy(), g["y"].to_numpy()
        if np.any(np.diff(day) == 0):
            raise ForecastError(f"symbol {symbol}: duplicate ts in the {what} rows")
        if not np.all(np.isfinite(y)):
            raise ForecastError(f"symbol {symbol}: NaN/inf in the {what} rows")
        out[symbol] = (day, y)
    return out


def _symbol_scale(y: np.ndarray) -> float:
    """Standard deviation of a symbol's training returns (nan when unusable)."""
    scale = float(np.std(y, ddof=1)) if len(y) > 1 else math.nan
    return scale if math.isfinite(scale) and scale > 0 else math.nan


def _days(d: date) -> int:
    return (d - date(1970, 1, 1)).days


class NBeatsForecaster(Forecaster):
    """N-BEATS (neuralforecast) predicting p05/p50/p95 of the next ``horizon`` log returns.

    Parameters
    ----------
    input_size, horizon:
        Past returns read and future returns predicted (whitepaper: 90 and 5).
    training:
        Shared training settings (default ``TrainingConfig()``).
    stack_types, n_blocks, mlp_units:
        N-BEATS architecture as in neuralforecast (``mlp_units``: the hidden
        layers of every block, e.g. ``((16, 16),) * 3`` for a tiny network).
    scaler_type:
        neuralforecast's per-window temporal scaler (``"robust"``,
        ``"standard"``, ``"identity"``...).
    val_check_steps:
        Optimisation steps between validation checks; ``None``: once per epoch.
    windows_batch_size:
        Training windows per optimisation step; ``None``: ``training.batch_size``.
    series_batch_size:
        Symbols per neuralforecast batch, from which those windows are drawn
        (neuralforecast's ``batch_size``).

    """

    name: ClassVar[str] = "nbeats"
    input_size: int = 90
    _symbol_scaling: ClassVar[bool] = True
    _keep_best: ClassVar[bool] = True

    def __init__(
        self,
        input_size: int = 90,
        horizon: int = HORIZON,
        training: TrainingConfig | None = None,
        stack_types: Sequence[str] = ("identity", "trend", "seasonality"),
        n_blocks: Sequence[int] = (1, 1, 1),
        mlp_units: Sequence[Sequence[int]] = ((512, 512), (512, 512), (512, 512)),
        scaler_type: str = "robust",
        val_check_steps: int | None = None,
        windows_batch_size: int | None = None,
        series_batch_size: int = 32,
    ):
        self.input_size = input_size
        self.horizon = horizon
        self.training = training
        self.stack_types = stack_types
        self.n_blocks = n_blocks
        self.mlp_units = mlp_units
        self.scaler_type = scaler_type
        self.val_check_steps = val_check_steps
        self.windows_batch_size = windows_batch_size
        self.series_batch_size = series_batch_size

    # ------------------------------------------------------------------ config

    def _training(self) -> TrainingConfig:
        return self.training if self.training is not None else TrainingConfig()

    def _hyper_parameters(self) -> dict[str, Any]:
        """Constructor arguments, JSON-ready; ``cls(**...)`` rebuilds the estimator."""
        return {
            "input_size": self.input_size,
            "horizon": self.horizon,
            "training": self._training().model_dump(),
            "stack_types": list(self.stack_types),
            "n_blocks": list(self.n_blocks),
            "mlp_units": [list(u) for u in self.mlp_units],
            "scaler_type": self.scaler_type,
            "val_check_steps": self.val_check_steps,
            "windows_batch_size": self.windows_batch_size,
            "series_batch_size": self.series_batch_size,
        }

    @classmethod
    def _from_hyper_parameters(cls, params: dict[str, Any]) -> Self:
        params = dict(params)
        params["training"] = TrainingConfig(**params["training"])
        return cls(**params)

    def get_config(self) -> dict:
        """Hyper-parameters plus model name, format and feature versions."""
        return {
            "name": self.name,
            "format_version": FORMAT_VERSION,
            "feature_version": FEATURE_VERSION,
            "quantiles": list(QUANTILES),
            **self._hyper_parameters(),
        }

    def _trainer_kwargs(self, training: TrainingConfig) -> dict[str, Any]:
        """Lightning plumbing: one device, no logger/checkpoints, quiet unless asked."""
        return {
            "accelerator": training.accelerator,
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": training.progress,
            "enable_model_summary": training.progress,
            "num_sanity_val_steps": 0,
        }

    def _make_network(self, has_valid: bool, n_windows: int) -> tuple[NBEATS, dict[str, int]]:
        """The Lightning module and the resolved step counts (see the module docstring)."""
        t = self._training()
        windows_batch = self.windows_batch_size or t.batch_size
        steps_per_epoch = max(1, math.ceil(n_windows / windows_batch))
        max_steps = t.max_epochs * steps_per_epoch
        if t.max_steps is not None:
            max_steps = min(max_steps, t.max_steps)
        val_check = min(self.val_check_steps or steps_per_epoch, max_steps)
        net = _KronosNBEATS(
            h=self.horizon,
            input_size=self.input_size,
            stack_types=list(self.stack_types),
            n_blocks=list(self.n_blocks),
            mlp_units=[list(u) for u in self.mlp_units],
            dropout=t.dropout,
            loss=MQLoss(quantiles=list(QUANTILES)),
            valid_loss=MQLoss(quantiles=list(QUANTILES)),
            max_steps=max_steps,
            learning_rate=t.learning_rate,
            early_stop_patience_steps=t.patience if has_valid else -1,
            val_check_steps=val_check,
            batch_size=self.series_batch_size,
            windows_batch_size=windows_batch,
            scaler_type=self.scaler_type,
            random_seed=t.seed,
            weight_decay=t.weight_decay,
            scheduler_patience=t.scheduler_patience,
            min_lr=t.min_lr,
            gradient_clip_val=t.gradient_clip,
            **self._trainer_kwargs(t),
        )
        info = {
            "steps_per_epoch": steps_per_epoch,
            "max_steps": max_steps,
            "val_check_steps": val_check,
            "windows_batch_size": windows_batch,
        }
        return net, info

    def _quiet(self) -> bool:
        return not self._training().progress

    # --------------------------------------------------------------------- fit

    def fit(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame | None = None,
        recorder: Recorder | None = None,
    ) -> Self:
        """Fit on ``train``; ``valid`` rows steer early stopping and the LR schedule only.

        ``valid`` holds, per symbol, the rows that follow its ``train`` rows.
        Validation: neuralforecast's ``val_size`` is one number for all series, so
        it is the *smallest* per-symbol count of valid rows; a symbol's later valid
        rows are dropped (they would otherwise enter training windows). Every train
        symbol needs at least ``horizon`` valid rows, and ``input_size + horizon``
        train rows; otherwise :class:`ForecastError` names the symbol.
        """
        recorder = recorder if recorder is not None else NullRecorder()
        train_series = _series(train, "train")
        if not train_series:
            raise ForecastError("train panel is empty")
        for symbol, (_, y) in train_series.items():
            if len(y) < self.input_size + self.horizon:
                raise ForecastError(
                    f"symbol {symbol}: {len(y)} train returns, "
                    f"needs at least input_size + horizon = {self.input_size + self.horizon}"
                )
        val_size, valid_y = self._validation_rows(train_series, valid)

        symbols = sorted(train_series)
        if self._symbol_scaling:
            fitted = {s: _symbol_scale(train_series[s][1]) for s in symbols}
            median = float(np.nanmedian(list(fitted.values()))) if fitted else 1.0
            median = median if math.isfinite(median) else 1.0
            scales = {s: (v if math.isfinite(v) else median) for s, v in fitted.items()}
        else:
            scales = dict.fromkeys(symbols, 1.0)

        ys = [np.concatenate([train_series[s][1], valid_y.get(s, np.empty(0))]) for s in symbols]
        lengths = np.array([len(y) for y in ys])
        scaled = np.concatenate([y / scales[s] for s, y in zip(symbols, ys, strict=True)])
        frame = _to_nixtla(np.array(symbols, dtype=object), scaled, lengths)
        dataset, *_ = TimeSeriesDataset.from_df(frame, id_col="unique_id", time_col="ds")

        n_windows = int(sum(len(train_series[s][1]) - self.input_size for s in symbols))
        with tempfile.TemporaryDirectory() as root, _quiet_lightning(self._quiet()):
            net, info = self._make_network(val_size > 0, n_windows)
            checks = _CheckRecorder(recorder, keep_best=self._keep_best and val_size > 0)
            net.trainer_kwargs.setdefault("callbacks", []).append(checks)
            recorder.log_params(
                flatten_params({**self.get_config(), "fit": {**info, "val_size": val_size}})
            )
            net.trainer_kwargs["default_root_dir"] = root
            net.fit(dataset, val_size=val_size)
            net.trainer_kwargs.pop("default_root_dir")
        stopped_step = int(checks.trainer.global_step) if checks.trainer else info["max_steps"]
        if checks.best_state is not None:
            net.load_state_dict(checks.best_state)

        self._set_network(net)
        self.scales_ = scales
        self.history_ = checks.history
        self.trainer_ = checks.trainer
        self.fit_info_ = {
            **info,
            "val_size": val_size,
            "n_windows": n_windows,
            "stopped_step": stopped_step,
            "best_step": checks.best_step,
        }
        self.version_ = self._new_version()
        return self

    def _validation_rows(
        self, train_series: dict[str, tuple[np.ndarray, np.ndarray]], valid: pl.DataFrame | None
    ) -> tuple[int, dict[str, np.ndarray]]:
        """``val_size`` and each symbol's first ``val_size`` valid returns."""
        if valid is None or valid.height == 0:
            return 0, {}
        valid_series = _series(valid, "valid")
        extra = sorted(set(valid_series) - set(train_series))
        if extra:
            raise ForecastError(f"symbols in valid but not in train: {extra}")
        for symbol in sorted(train_series):
            if symbol not in valid_series:
                raise ForecastError(f"symbol {symbol}: no valid rows")
            day, _ = valid_series[symbol]
            if len(day) < self.horizon:
                raise ForecastError(
                    f"symbol {symbol}: {len(day)} valid rows, needs at least horizon "
                    f"= {self.horizon}"
                )
            if day[0] <= train_series[symbol][0][-1]:
                raise ForecastError(f"symbol {symbol}: valid rows do not follow its train rows")
        val_size = min(len(v[1]) for v in valid_series.values())
        return val_size, {s: y[:val_size] for s, (_, y) in valid_series.items()}

    def _set_network(self, net: NBEATS) -> None:
        """Keep the trained module (float32) and a float64 copy that predicts.

        In float64 a forecast does not depend on which other windows share its
        batch (float32 matrix products differ in the 7th digit with the batch
        size), so ``predict`` and ``predict_origins`` agree to ~1e-15.
        """
        net.trainer_kwargs["callbacks"] = []  # the recorder and trainer stay out of the model
        self.network_ = net.cpu().eval()
        self.predictor_ = copy.deepcopy(self.network_).double().eval()

    def _new_version(self) -> str:
        digest = hashlib.sha256(json.dumps(self.get_config(), sort_keys=True).encode())
        for key, tensor in sorted(self.network_.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"

    # ----------------------------------------------------------------- predict

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise RuntimeError(f"{self.name}: not fitted (call fit or load)")

    def _scale_of(self, symbols: Sequence[str]) -> np.ndarray:
        """Fitted per-symbol scales; unseen symbols get the median fitted scale."""
        median = float(np.median(list(self.scales_.values()))) if self.scales_ else 1.0
        return np.array([self.scales_.get(s, median) for s in symbols], dtype=np.float64)

    @torch.inference_mode()
    def _quantiles(self, windows: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """``(n, input_size)`` windows of returns -> ``(n, horizon, 3)`` sorted quantiles.

        Runs the network directly with neuralforecast's own window normalisation,
        exactly as its ``predict_step`` does for one window per series.
        """
        net = self.predictor_
        temporal_cols = pd.Index(["y", "available_mask"])
        batch = {"y_idx": 0}
        out = []
        for start in range(0, len(windows), PREDICT_BATCH):
            chunk = (
                windows[start : start + PREDICT_BATCH] / scales[start : start + PREDICT_BATCH, None]
            )
            n = len(chunk)
            temporal = torch.zeros((n, self.input_size + self.horizon, 2, 1), dtype=torch.float64)
            temporal[:, : self.input_size, 0, 0] = torch.from_numpy(chunk)
            temporal[:, : self.input_size, 1, 0] = 1.0
            parsed = net._normalization(
                windows={
                    "temporal": temporal,
                    "temporal_cols": temporal_cols,
                    "static": None,
                    "static_cols": None,
                },
                y_idx=0,
            )
            insample_y, insample_mask, _, _, hist, futr, stat = net._parse_windows(batch, parsed)
            y_hat = net._predict_step_direct_batch(
                insample_y=insample_y,
                insample_mask=insample_mask,
                hist_exog=hist,
                futr_exog=futr,
                stat_exog=stat,
                y_idx=0,
            )
            out.append(y_hat.reshape(n, self.horizon, len(QUANTILES)).numpy())
        q = np.concatenate(out) if out else np.empty((0, self.horizon, len(QUANTILES)))
        return np.sort(q * scales[:, None, None], axis=-1)

    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """p05/p50/p95 for steps 1..horizon after ``asof`` from rows ``ts <= asof``."""
        self._check_fitted()
        history = history_until(panel, asof, symbols, self.input_size)
        names = list(history)
        if not names:
            return pl.DataFrame(schema=FORECAST_SCHEMA)
        windows = np.stack([history[s][-self.input_size :] for s in names])
        q = self._quantiles(windows, self._scale_of(names))
        return forecast_frame(names, asof, q, self.name, self.version)

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Forecasts from every origin, in one batched pass of the network.

        Same forecasts as :meth:`predict` per origin (to float64 rounding) and the
        same checks: unknown symbol, too few returns, NaN in a window raise
        :class:`ForecastError` naming the symbol.
        """
        self._check_fitted()
        origins = list(origins)
        known = set(panel["symbol"].unique().to_list())
        names = list(symbols) if symbols is not None else sorted(known)
        unknown = [s for s in names if s not in known]
        if unknown:
            raise ForecastError(f"unknown symbols (not in the panel): {unknown}")
        if not origins or not names:
            return pl.DataFrame(schema=FORECAST_SCHEMA)
        wanted = set(names)
        data = (
            panel.filter(pl.col("symbol").is_in(wanted))
            .select("symbol", pl.col("ts").cast(pl.Int32).alias("day"), pl.col("y"))
            .sort("symbol", "day")
        )
        grouped = {
            s: (g["day"].to_numpy(), g["y"].to_numpy()) for (s,), g in data.group_by("symbol")
        }
        origin_days = np.array([_days(o) for o in origins])
        L = self.input_size
        windows = np.empty((len(origins), len(names), L))
        for j, s in enumerate(names):
            day, y = grouped[s]
            ends = np.searchsorted(day, origin_days, side="right")
            short = np.flatnonzero(ends < L)
            if len(short):
                i = int(short[0])
                raise ForecastError(
                    f"symbol {s}: {int(ends[i])} returns up to {origins[i]}, needs at least {L}"
                )
            idx = ends[:, None] - L + np.arange(L)[None, :]
            w = y[idx]
            bad = ~np.isfinite(w)
            if bad.any():
                i, k = np.argwhere(bad)[0]
                raise ForecastError(
                    f"symbol {s}: NaN/inf in the input window ending {origins[i]} "
                    f"(position {k - L} from the end)"
                )
            windows[:, j] = w
        scales = np.tile(self._scale_of(names), len(origins))
        q = self._quantiles(windows.reshape(-1, L), scales).reshape(
            len(origins), len(names), self.horizon, len(QUANTILES)
        )
        return pl.concat(
            [forecast_frame(names, o, q[i], self.name, self.version) for i, o in enumerate(origins)]
        )

    # --------------------------------------------------------------- artifacts

    def save(self, directory: Path) -> None:
        """Write ``state.pt`` (weights), ``config.json`` and ``scaler.pkl``."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.network_.state_dict(), directory / "state.pt")
        config = {**self.get_config(), "version": self.version_, "fit": self.fit_info_}
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        with (directory / "scaler.pkl").open("wb") as f:
            pickle.dump({s: float(v) for s, v in self.scales_.items()}, f)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a fitted forecaster from :meth:`save`'s files, without refitting."""
        directory = Path(directory)
        config_path = directory / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise ForecastError(f"{config_path}: cannot read: {e}") from e
        expected = {
            "name": cls.name,
            "format_version": FORMAT_VERSION,
            "feature_version": FEATURE_VERSION,
            "quantiles": list(QUANTILES),
        }
        for key, want in expected.items():
            if config.get(key) != want:
                raise ForecastError(
                    f"{config_path}: {key} is {config.get(key)!r}, {cls.__name__} needs {want!r}"
                )
        params = {k: v for k, v in config.items() if k not in {*expected, "version", "fit"}}
        for key in ("input_size", "horizon"):
            if not isinstance(params.get(key), int) or params[key] < 1:
                raise ForecastError(f"{config_path}: {key} must be a positive integer")
        try:
            model = cls._from_hyper_parameters(params)
        except (TypeError, ValueError) as e:
            raise ForecastError(f"{config_path}: bad hyper-parameters: {e}") from e

        state_path = directory / "state.pt"
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            raise ForecastError(f"{state_path}: cannot read: {e}") from e
        try:
            with _quiet_lightning(model._quiet()):
                net, _ = model._make_network(has_valid=False, n_windows=1)
            net.load_state_dict(state)
        except Exception as e:  # neuralforecast raises bare Exceptions on bad arguments
            raise ForecastError(
                f"{config_path}: hyper-parameters do not match the weights in {state_path}: {e}"
            ) from e
        scales = _restricted_scales(directory / "scaler.pkl")

        model._set_network(net)
        model.scales_ = scales
        model.history_ = []
        model.fit_info_ = config.get("fit", {})
        model.version_ = str(config.get("version", "unknown"))
        return model


class _ScalesUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # a dict of str -> float needs no class
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _restricted_scales(path: Path) -> dict[str, float]:
    """Read ``scaler.pkl`` without executing code: it must be ``{str: float}``."""
    try:
        scales = _ScalesUnpickler(io.BytesIO(path.read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ForecastError(f"{path}: not a symbol -> scale mapping: {e}") from e
    if not isinstance(scales, dict) or not all(
        isinstance(k, str) and isinstance(v, float) and v > 0 for k, v in scales.items()
    ):
        raise ForecastError(f"{path}: not a symbol -> positive float mapping")
    return scales


class NBeatsDefaultForecaster(NBeatsForecaster):
    """neuralforecast's N-BEATS with its library defaults, as a baseline.

    The only change from ``NBEATS(h=horizon, input_size=input_size)`` is the loss:
    ``MQLoss`` on (0.05, 0.5, 0.95) instead of MAE, so it predicts the same
    three quantiles as every forecaster. So: identity scaler, no per-symbol
    scale (``scaler.pkl`` holds 1.0), Adam with StepLR, 1000 steps, validation
    every 100 steps without early stopping, last weights kept. ``overrides``
    (NBEATS keyword arguments, e.g. ``{"max_steps": 10}``) exist for smoke tests.
    Lightning plumbing (one device, no logger, quiet) is ours, as in
    :class:`NBeatsForecaster`.
    """

    name: ClassVar[str] = "nbeats_default"
    _symbol_scaling: ClassVar[bool] = False
    _keep_best: ClassVar[bool] = False

    def __init__(
        self,
        input_size: int = 90,
        horizon: int = HORIZON,
        overrides: dict[str, Any] | None = None,
    ):
        self.input_size = input_size
        self.horizon = horizon
        self.overrides = overrides

    def _hyper_parameters(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "horizon": self.horizon,
            "overrides": dict(self.overrides or {}),
        }

    @classmethod
    def _from_hyper_parameters(cls, params: dict[str, Any]) -> Self:
        return cls(**params)

    def _quiet(self) -> bool:
        return True

    def _make_network(self, has_valid: bool, n_windows: int) -> tuple[NBEATS, dict[str, int]]:
        net = NBEATS(
            h=self.horizon,
            input_size=self.input_size,
            loss=MQLoss(quantiles=list(QUANTILES)),
            **{**self._trainer_kwargs(TrainingConfig()), **(self.overrides or {})},
        )
        info = {
            "max_steps": net.max_steps,
            "val_check_steps": min(net.val_check_steps, net.max_steps),
            "windows_batch_size": net.windows_batch_size,
        }
        return net, info


def library_default_nbeats(horizon: int = HORIZON, input_size: int = 90) -> Forecaster:
    """N-BEATS with neuralforecast's defaults and MQLoss on p05/p50/p95: ``nbeats_default``."""
    return NBeatsDefaultForecaster(input_size=input_size, horizon=horizon)


def lightweight_nbeats(
    horizon: int = HORIZON, input_size: int = 90, training: TrainingConfig | None = None
) -> NBeatsForecaster:
    """A small N-BEATS that fits the 20 bundled stocks in seconds on 2 cores.

    The whitepaper's fallback when no artifact is present: the default three
    stacks of one block, each with two hidden layers of 64 units (~53k weights),
    500 steps of 256 windows, validation every 50 steps.
    """
    return NBeatsForecaster(
        input_size=input_size,
        horizon=horizon,
        training=training or TrainingConfig(max_steps=500, patience=4, scheduler_patience=2),
        mlp_units=((64, 64), (64, 64)),
        val_check_steps=50,
        windows_batch_size=256,
    )
