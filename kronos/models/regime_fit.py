"""Training of the regime encoder's network on Lightning.

Training is one optimisation step per epoch over the whole sequence (one
market, a few thousand sessions, one sample): AdamW without weight decay on
the state-space parameters, gradient clipping by norm, and with validation
labels ReduceLROnPlateau (factor 0.5, once per epoch) on the validation log
loss, early stopping after ``patience`` epochs without a strict improvement,
and the best epoch's weights restored from its checkpoint. The network runs
in float64 on the CPU (the sequence is small; more devices or threads only
add synchronisation).
"""

from __future__ import annotations

import math
import tempfile

import lightning
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kronos.models.base import Recorder, TrainingConfig
from kronos.models.lightning import (
    best_checkpoint,
    early_stopping,
    make_trainer,
    plateau_schedule,
    quiet_lightning,
)
from kronos.models.regime_net import RegimeNet

__all__ = ["RegimeModule", "train_network"]

MONITOR = "valid_loss"


class RegimeModule(lightning.LightningModule):
    """The network, its loss on the training or validation labels, AdamW and the plateau LR."""

    def __init__(
        self, net: RegimeNet, training: TrainingConfig, train: np.ndarray, valid: np.ndarray
    ) -> None:
        super().__init__()
        self.net = net
        self.training_config = training
        self.register_buffer("train_idx", torch.as_tensor(train), persistent=False)
        self.register_buffer("valid_idx", torch.as_tensor(valid), persistent=False)
        self.loss_fn = nn.CrossEntropyLoss()
        self.last_train_loss = math.nan

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        inputs, target = batch
        return self.loss_fn(self.net(inputs)[0][rows], target[rows])

    def training_step(self, batch, batch_idx):
        """Cross-entropy over every training label of the sequence."""
        loss = self._loss(batch, self.train_idx)
        self.last_train_loss = loss.item()
        return loss

    def validation_step(self, batch, batch_idx):
        """Cross-entropy over the validation labels (logged in float64 as ``valid_loss``)."""
        self.log(MONITOR, self._loss(batch, self.valid_idx), batch_size=1)

    def configure_optimizers(self):
        """AdamW (no weight decay on the state-space parameters); plateau LR with validation."""
        t = self.training_config
        ssm = {id(p) for p in self.net.ssm_parameters()}
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in self.net.parameters() if id(p) not in ssm]},
                {"params": self.net.ssm_parameters(), "weight_decay": 0.0},
            ],
            lr=t.learning_rate,
            weight_decay=t.weight_decay,
        )
        if not len(self.valid_idx):
            return optimizer
        return plateau_schedule(optimizer, MONITOR, patience=t.scheduler_patience, min_lr=t.min_lr)


class _History(lightning.Callback):
    """Per epoch: the training loss, the LR it was taken with and the validation loss."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        """Record the epoch (before the plateau scheduler sees its validation loss)."""
        row = {
            "train_loss": pl_module.last_train_loss,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        if MONITOR in trainer.callback_metrics:
            row["valid_loss"] = float(trainer.callback_metrics[MONITOR])
        self.rows.append(row)
        self.recorder.log_metrics(row, step=trainer.current_epoch)


def train_network(
    net: RegimeNet,
    inputs: torch.Tensor,
    labels: np.ndarray,
    train: np.ndarray,
    valid: np.ndarray,
    training: TrainingConfig,
    recorder: Recorder,
) -> tuple[list[dict[str, float]], int]:
    """Train ``net`` on the sequence; the per-epoch history and the epoch of its final weights.

    ``max_epochs`` is capped at ``training.max_steps`` (one step per epoch).
    """
    module = RegimeModule(net, training, train, valid)
    # the whole sequence is the one batch; the loader's own generator leaves the global
    # RNG (dropout's) as it was, so a seed gives the same run
    sequence = [(inputs, torch.as_tensor(labels, dtype=torch.long))]
    batch = DataLoader(sequence, batch_size=None, generator=torch.Generator())
    history = _History(recorder)
    max_epochs = min(training.max_epochs, training.max_steps or training.max_epochs)
    with quiet_lightning(), tempfile.TemporaryDirectory(prefix="kronos-regime-") as root:
        callbacks: list[lightning.Callback] = [history]
        checkpoint = None
        if len(valid):
            checkpoint = best_checkpoint(MONITOR, root)
            callbacks += [early_stopping(MONITOR, training.patience), checkpoint]
        trainer = make_trainer(
            training, root, callbacks=callbacks, accelerator="cpu", max_epochs=max_epochs
        )
        trainer.fit(module, batch, batch if len(valid) else None)
        best_epoch = len(history.rows) - 1
        if checkpoint is not None and checkpoint.best_model_path:
            saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
            module.load_state_dict(saved["state_dict"])
            best_epoch = int(saved["epoch"])
    net.eval()
    return history.rows, best_epoch
