"""Training of the graph forecasters on Lightning: the loss, the module, the per-check record.

The pinball loss averaged over the three quantiles and the observed targets;
AdamW; ReduceLROnPlateau on the validation loss (factor 0.5); the trainer,
early stopping and quiet logs are :mod:`kronos.models.lightning`'s.
"""

from __future__ import annotations

import math

import lightning
import torch
from torch import nn

from kronos.models.base import QUANTILES, Recorder, TrainingConfig
from kronos.models.lightning import plateau_schedule

__all__ = ["Checks", "GraphModule", "pinball_loss"]


def pinball_loss(
    q: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the pinball loss over observed targets, averaged over levels.

    ``q``: ``[..., Q]`` quantiles; ``y`` and ``mask``: ``[...]``; returns
    ``(sum, count)`` so batches can be pooled; the loss is ``sum / count``.
    """
    error = y.unsqueeze(-1) - q
    loss = torch.maximum(levels * error, (levels - 1) * error).mean(dim=-1)
    return (loss * mask).sum(), mask.sum()


class GraphModule(lightning.LightningModule):
    """The network with the shared loss, optimiser and plateau scheduler."""

    def __init__(self, net: nn.Module, training: TrainingConfig, has_valid: bool):
        super().__init__()
        self.net = net
        self.training_config = training
        self.has_valid = has_valid
        self.register_buffer("levels", torch.tensor(QUANTILES), persistent=False)
        self._train_sum = self._train_n = 0.0
        self._valid_sum = self._valid_n = 0.0

    def training_step(self, batch, batch_idx):
        """Pinball loss of one batch of windows."""
        x, y, mask = batch
        total, count = pinball_loss(self.net(x), y, mask, self.levels)
        loss = total / count.clamp(min=1)
        self._train_sum += float(loss.detach())
        self._train_n += 1
        return loss

    def validation_step(self, batch, batch_idx):
        """Pool the batch's loss sum and count into this check's total."""
        x, y, mask = batch
        total, count = pinball_loss(self.net(x), y, mask, self.levels)
        self._valid_sum += float(total)
        self._valid_n += float(count)

    def on_validation_epoch_end(self):
        """Log this check's validation loss (pooled over its windows)."""
        loss = self._valid_sum / max(self._valid_n, 1.0)
        self._valid_sum = self._valid_n = 0.0
        self.log("valid_loss", loss, prog_bar=True)

    def take_train_loss(self) -> float:
        """Mean training loss since the last call."""
        loss = self._train_sum / self._train_n if self._train_n else math.nan
        self._train_sum = self._train_n = 0.0
        return loss

    def configure_optimizers(self):
        """AdamW; with validation windows, ReduceLROnPlateau on the validation loss."""
        t = self.training_config
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        if not self.has_valid:
            return optimizer
        return plateau_schedule(
            optimizer, "valid_loss", patience=t.scheduler_patience, min_lr=t.min_lr
        )


class Checks(lightning.Callback):
    """Per validation period: record the losses and LR, keep the best weights."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.history: list[dict[str, float | int | None]] = []
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_step = 0

    def on_validation_end(self, trainer, pl_module):
        """Keep the weights when this check's loss is the best so far."""
        if trainer.sanity_checking or "valid_loss" not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics["valid_loss"])
        if loss < self.best_loss:
            self.best_loss, self.best_step = loss, int(trainer.global_step)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()
            }

    def on_train_epoch_end(self, trainer, pl_module):
        """Record the period's training and validation loss and the LR."""
        step = int(trainer.global_step)
        self.last_step = step
        metrics = trainer.callback_metrics
        row: dict[str, float | int | None] = {
            "step": step,
            "train_loss": pl_module.take_train_loss(),
            "valid_loss": float(metrics["valid_loss"]) if "valid_loss" in metrics else None,
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
        }
        self.history.append(row)
        self.recorder.log_metrics(
            {k: v for k, v in row.items() if k != "step" and v is not None}, step=step
        )
