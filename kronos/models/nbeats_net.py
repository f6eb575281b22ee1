"""The N-BEATS network and its data plumbing (see :mod:`kronos.models.nbeats`).

:class:`KronosNBEATS` is neuralforecast's ``NBEATS`` with AdamW, a plateau
scheduler stepped once per validation check, dropout and a faster training
window sampler; :class:`CheckRecorder` records each validation check and keeps
the best weights; the rest converts panels to Nixtla's frame and runs the
network on stacked windows at prediction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import torch
from neuralforecast.models import NBEATS
from pytorch_lightning import Callback
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from kronos.models.base import QUANTILES, ForecastError, Recorder
from kronos.models.lightning import plateau_schedule

VAL_LOSS_KEY = "ptl/val_loss"
"""What neuralforecast logs after each validation check (window-weighted MQLoss)."""
PREDICT_BATCH = 8192


class KronosNBEATS(NBEATS):
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
            raise ForecastError(f"time series too short for training: fewer than {size} sessions")
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
            raise ForecastError("no training windows with enough observed sessions")
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
        # the monitor does not exist before the first check: skip, don't fail
        return plateau_schedule(
            optimizer,
            VAL_LOSS_KEY,
            patience=self.kronos_scheduler_patience,
            min_lr=self.kronos_min_lr,
            interval="step",
            strict=False,
        )

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


class CheckRecorder(Callback):
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
        """Keep the trainer (its step count says where training stopped)."""
        self.trainer = trainer

    def on_validation_end(self, trainer, pl_module):
        """Record the check's losses and LR; keep the weights when the loss is the best."""
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


def to_nixtla(symbols: np.ndarray, y: np.ndarray, lengths: np.ndarray) -> pd.DataFrame:
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


def panel_series(frame: pl.DataFrame, what: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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


def symbol_scale(y: np.ndarray) -> float:
    """Standard deviation of a symbol's training returns (nan when unusable)."""
    scale = float(np.std(y, ddof=1)) if len(y) > 1 else math.nan
    return scale if math.isfinite(scale) and scale > 0 else math.nan


@torch.inference_mode()
def network_quantiles(
    net: NBEATS, windows: np.ndarray, scales: np.ndarray, input_size: int, horizon: int
) -> np.ndarray:
    """``(n, input_size)`` windows of returns -> ``(n, horizon, 3)`` sorted quantiles.

    Runs the (float64) network directly with neuralforecast's own window
    normalisation, exactly as its ``predict_step`` does for one window per
    series; ``scales`` divide each window before and multiply its quantiles after.
    """
    temporal_cols = pd.Index(["y", "available_mask"])
    batch = {"y_idx": 0}
    out = []
    for start in range(0, len(windows), PREDICT_BATCH):
        chunk = windows[start : start + PREDICT_BATCH] / scales[start : start + PREDICT_BATCH, None]
        n = len(chunk)
        temporal = torch.zeros((n, input_size + horizon, 2, 1), dtype=torch.float64)
        temporal[:, :input_size, 0, 0] = torch.from_numpy(chunk)
        temporal[:, :input_size, 1, 0] = 1.0
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
        out.append(y_hat.reshape(n, horizon, len(QUANTILES)).numpy())
    q = np.concatenate(out) if out else np.empty((0, horizon, len(QUANTILES)))
    return np.sort(q * scales[:, None, None], axis=-1)


def validation_rows(
    train_series: dict[str, tuple[np.ndarray, np.ndarray]],
    valid: pl.DataFrame | None,
    horizon: int,
) -> tuple[int, dict[str, np.ndarray]]:
    """``val_size`` and each symbol's first ``val_size`` valid returns.

    neuralforecast's ``val_size`` is one number for all series: the smallest
    per-symbol count of valid rows. Every train symbol needs ``horizon`` valid
    rows that follow its train rows.
    """
    if valid is None or valid.height == 0:
        return 0, {}
    valid_series = panel_series(valid, "valid")
    extra = sorted(set(valid_series) - set(train_series))
    if extra:
        raise ForecastError(f"symbols in valid but not in train: {extra}")
    for symbol in sorted(train_series):
        if symbol not in valid_series:
            raise ForecastError(f"symbol {symbol}: no valid rows")
        day, _ = valid_series[symbol]
        if len(day) < horizon:
            raise ForecastError(
                f"symbol {symbol}: {len(day)} valid rows, needs at least horizon = {horizon}"
            )
        if day[0] <= train_series[symbol][0][-1]:
            raise ForecastError(f"symbol {symbol}: valid rows do not follow its train rows")
    val_size = min(len(v[1]) for v in valid_series.values())
    return val_size, {s: y[:val_size] for s, (_, y) in valid_series.items()}
