"""Lightning plumbing shared by every neural model: trainer options, callbacks, quiet logs.

N-BEATS and StemGNN's base come from neuralforecast, which builds its own
``pytorch_lightning`` trainer from keyword arguments: they take
:func:`trainer_options`. The graph models, the TFT and the regime encoder build
a ``lightning`` trainer with :func:`make_trainer`. Either way: the devices,
strategy and nodes of ``TrainingConfig`` (one device by default), no
logger, no sanity validation, and a progress bar and model summary only when
``TrainingConfig.progress`` asks for them. Early stopping and the best
checkpoint monitor the validation loss after each validation run only, so a
step budget that ends mid-epoch never looks for a loss that was not computed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.optim.lr_scheduler import ReduceLROnPlateau

from kronos.models.base import TrainingConfig

__all__ = [
    "best_checkpoint",
    "early_stopping",
    "launched_rank",
    "make_trainer",
    "plateau_schedule",
    "quiet_lightning",
    "relaunches_command",
    "trainer_options",
]

PLATEAU_FACTOR = 0.5
LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)
NOISE = (
    r".*does not have many workers.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*number of training batches.*is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*ReduceLROnPlateau conditioned on metric.*",
    r".*val_check_steps is greater than max_steps.*",
    # without validation rows there are no checks: no val_loss, no LR schedule
    r".*defined a `validation_step` but have no `val_dataloader`.*",
    # pytorch-forecasting stores its loss modules as hyper-parameters
    r"Attribute '(loss|logging_metrics)' is an instance of `nn.Module`",
    # Lightning's metric sync under DDP (torch 2.13 deprecation inside lightning_fabric)
    r".*all_gather is deprecated.*",
)


@contextlib.contextmanager
def quiet_lightning(enabled: bool = True) -> Iterator[None]:
    """Silence Lightning's info logs and its known-harmless warnings, then restore."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def trainer_options(training: TrainingConfig, accelerator: str | None = None) -> dict[str, Any]:
    """Trainer keywords every model shares (neuralforecast takes them as its own).

    Placement (``devices``, ``strategy``, ``num_nodes``) comes from ``training``;
    the defaults (1, ``"auto"``, 1) are Lightning's single-device run.
    """
    return {
        "accelerator": accelerator or training.accelerator,
        "devices": training.devices,
        "strategy": training.strategy,
        "num_nodes": training.num_nodes,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": training.progress,
        "enable_model_summary": training.progress,
        "num_sanity_val_steps": 0,
    }


def launched_rank() -> int:
    """The rank the launcher gave this process: 0 unless it is a worker.

    Lightning's ``ddp`` launcher (and torchrun, or a job scheduler on other
    nodes) starts the same command line again with ``LOCAL_RANK``,
    ``NODE_RANK`` or ``RANK`` set; such a process only takes part in ``fit``:
    rank 0 validates, saves, gates and records. Read from the environment
    because that is the launch protocol, not a setting.
    """
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


# strategies that start their worker processes inside ``fit`` (not by running the command again)
SPAWNING = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def relaunches_command(training: TrainingConfig) -> bool:
    """Whether Lightning would start this training's workers by re-running the command line.

    True for several devices or nodes under ``ddp`` (or ``auto``, which picks it):
    fine for ``kronos train`` (workers only fit, see :func:`launched_rank`), but a
    command that fits many times (backtest, tune) must use a :data:`SPAWNING` strategy.
    """
    many = training.devices != 1 or training.num_nodes != 1
    return many and training.strategy not in SPAWNING


def plateau_schedule(
    optimizer: torch.optim.Optimizer,
    monitor: str,
    *,
    patience: int,
    min_lr: float,
    **schedule: Any,
) -> dict[str, Any]:
    """``configure_optimizers``' answer: ``optimizer`` and ReduceLROnPlateau on ``monitor``.

    Factor 0.5 (``TrainingConfig.scheduler_patience`` and ``min_lr`` are the
    usual ``patience`` and ``min_lr``); stepped once per epoch unless
    ``schedule`` (Lightning's scheduler keys) says otherwise.
    """
    scheduler = ReduceLROnPlateau(
        optimizer, mode="min", factor=PLATEAU_FACTOR, patience=patience, min_lr=min_lr
    )
    config = {"scheduler": scheduler, "monitor": monitor, "interval": "epoch", **schedule}
    return {"optimizer": optimizer, "lr_scheduler": config}


def early_stopping(monitor: str, patience: int, min_delta: float = 0.0) -> EarlyStopping:
    """Stop after ``patience`` validation runs without a strict improvement of ``monitor``."""
    return EarlyStopping(
        monitor=monitor,
        mode="min",
        patience=patience,
        min_delta=min_delta,
        check_on_train_epoch_end=False,
    )


def best_checkpoint(monitor: str, directory: Path) -> ModelCheckpoint:
    """Keep the weights of the validation run with the lowest ``monitor`` (first of ties)."""
    return ModelCheckpoint(
        dirpath=directory,
        monitor=monitor,
        mode="min",
        save_top_k=1,
        save_last=False,
        save_on_train_epoch_end=False,
        save_weights_only=True,
    )


def make_trainer(
    training: TrainingConfig,
    root: Path | str,
    *,
    callbacks: Sequence[lightning.Callback] = (),
    accelerator: str | None = None,
    **limits: Any,
) -> lightning.Trainer:
    """A Trainer with the shared options and gradient clipping by norm.

    ``limits`` are the run's own Trainer keywords (``max_epochs``,
    ``max_steps``, ``limit_train_batches``...). A :class:`ModelCheckpoint`
    among ``callbacks`` turns checkpointing on (into ``root``).
    """
    options = trainer_options(training, accelerator)
    options["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return lightning.Trainer(
        default_root_dir=root,
        gradient_clip_val=training.gradient_clip,
        gradient_clip_algorithm="norm",
        callbacks=list(callbacks),
        **options,
        **limits,
    )
