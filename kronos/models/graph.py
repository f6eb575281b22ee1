"""The graph forecasters' shared base: a universe at once, one training loop (whitepaper 4).

A graph forecaster (:mod:`kronos.models.stemgnn`, :mod:`kronos.models.mtgnn`)
reads the last ``input_size`` sector-normalised returns of *every* symbol of
its universe (the graph's nodes) and emits p05/p50/p95 of each symbol's next
``horizon`` returns. Subclasses supply the network (:meth:`GraphForecaster._network`,
``[batch, input_size, nodes] -> [batch, horizon, nodes, 3]``); this module owns
the data, the graph, training, prediction and artifacts.

Data, all fitted without seeing validation or future rows:

- **Cutoff**: the first validation day (the earliest over symbols), or the day
  after the last training row without validation rows. Training targets lie
  before it; validation targets on or after it.
- **Date grid**: a universe is one multivariate series, so rows are aligned on
  the union of the symbols' trading days. A symbol without a row on a grid day
  enters the network as 0 (its sector mean) and that target is masked out of
  the loss.
- **Sector normalisation** (:func:`kronos.features.graph.sector_scales`):
  ``z = (y - mean_sector) / std_sector`` with the sector's pooled statistics
  before the cutoff; outputs are quantiles of ``z``, mapped back per symbol with
  the same affine map, so forecasts are quantiles of daily log returns like
  every other model's.
- **Inter-asset graph** (:func:`kronos.features.graph.inter_asset_graph`):
  sector membership and the trailing return correlation before the cutoff,
  saved with the artifact (``graph.npz``).

Training (shared settings, :class:`~kronos.models.base.TrainingConfig`), on
Lightning: the pinball loss averaged over the three quantiles (0.05, 0.5,
0.95) and the observed targets; AdamW (``weight_decay``); ReduceLROnPlateau on
the validation loss (factor 0.5, ``scheduler_patience`` checks, ``min_lr``);
gradient clipping by norm (``gradient_clip``); early stopping after
``patience`` validation checks without improvement, the best check's weights
restored. Units as in N-BEATS: an *epoch* is ``ceil(n_windows / batch_size)``
steps, ``max_steps = max_epochs * steps_per_epoch`` capped at
``TrainingConfig.max_steps``, rounded down to whole validation periods of
``val_check_steps`` steps (default: one epoch). A window is a random training
day with all symbols' inputs and targets. Validation uses the first
``max_valid`` grid days from the cutoff (all of them with ``None``). Without
validation rows there is no early stopping and the learning rate stays
constant.

Prediction: the windows of all origins go through a float64 copy of the
network (in float64 a forecast moves by ~1e-15 at most with its batch's other
windows, so ``predict`` equals ``predict_origins`` to that precision; a saved
and loaded model gives identical forecasts); crossed quantiles are sorted (monotone rearrangement,
which never increases the pinball loss). The network needs every node: a
fitted symbol missing from the prediction panel enters as zeros. Symbols the
network was not trained on are refused (a node has no meaning without its
place in the graph).

Artifacts: ``state.pt`` (weights), ``config.json`` (hyper-parameters, symbols,
fit summary, validation history), ``scaler.pkl`` (each symbol's sector mean
and std; read without executing code) and ``graph.npz`` (symbols, sectors,
sector adjacency, correlation and the adjacency used, in symbol order).
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
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

import lightning
import numpy as np
import polars as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, RandomSampler

from kronos.features.graph import InterAssetGraph, inter_asset_graph, sector_scales
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
    read_config,
)

__all__ = [
    "FEATURE_VERSION",
    "FORMAT_VERSION",
    "GraphForecaster",
    "pinball_loss",
    "read_graph",
    "write_graph",
]

FORMAT_VERSION = 1
FEATURE_VERSION = "sector_normalized_log_return_v1"
PLATEAU_FACTOR = 0.5
N_QUANTILES = len(QUANTILES)
_EPOCH = date(1970, 1, 1)
_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)
_NOISE = (
    r".*does not have many workers.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*number of training batches.*is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*defined a `validation_step` but have no `val_dataloader`.*",  # no valid rows: no checks
)


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


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence Lightning's info logs and known-harmless warnings, then restore."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _day(d: date) -> int:
    return (d - _EPOCH).days


# ---------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Grid:
    """The universe on its common trading days."""

    days: np.ndarray  # (T,) days since 1970
    z: np.ndarray  # (T, N) sector-normalised returns, 0 where not observed
    observed: np.ndarray  # (T, N) bool


def _grid(panel: pl.DataFrame, symbols: Sequence[str], mean: np.ndarray, std: np.ndarray) -> _Grid:
    """Align ``symbols``' rows on the union of their days and normalise them."""
    index = {s: i for i, s in enumerate(symbols)}
    rows = panel.filter(pl.col("symbol").is_in(list(symbols))).select(
        "symbol",
        pl.col("ts").cast(pl.Date).cast(pl.Int32).alias("day"),
        pl.col("y").cast(pl.Float64),
    )
    days = np.unique(rows["day"].to_numpy())
    t = np.searchsorted(days, rows["day"].to_numpy())
    n = np.array([index[s] for s in rows["symbol"].to_list()], dtype=np.int64)
    y = rows["y"].to_numpy()
    ok = np.isfinite(y)
    z = np.zeros((len(days), len(symbols)))
    observed = np.zeros((len(days), len(symbols)), dtype=bool)
    z[t[ok], n[ok]] = (y[ok] - mean[n[ok]]) / std[n[ok]]
    observed[t[ok], n[ok]] = True
    return _Grid(days.astype(np.int64), z, observed)


def _clean(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    """``symbol, ts, y`` typed and sorted; duplicate (symbol, ts) refused."""
    missing = {"symbol", "ts", "y"} - set(frame.columns)
    if missing:
        raise ForecastError(f"{what} panel lacks columns {sorted(missing)}")
    out = frame.select(
        pl.col("symbol").cast(pl.String), pl.col("ts").cast(pl.Date), pl.col("y").cast(pl.Float64)
    ).sort("symbol", "ts")
    dup = out.filter(pl.struct("symbol", "ts").is_duplicated())
    if dup.height:
        raise ForecastError(f"symbol {dup['symbol'][0]}: duplicate ts in the {what} rows")
    return out


class _Windows(Dataset):
    """Windows of the grid: inputs ``[L, N]``, targets ``[h, N]`` and their mask."""

    def __init__(
        self, z: torch.Tensor, mask: torch.Tensor, starts: np.ndarray, input_size: int, horizon: int
    ):
        self.z, self.mask, self.starts = z, mask, starts
        self.input_size, self.horizon = input_size, horizon

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        e = s + self.input_size
        return self.z[s:e], self.z[e : e + self.horizon], self.mask[e : e + self.horizon]


def _starts(target_ok: np.ndarray, first: int, last: int, input_size: int, horizon: int):
    """Window starts whose targets lie in rows ``[first, last)`` with one observed at least."""
    lo = max(0, first - input_size)
    hi = last - input_size - horizon  # inclusive
    if hi < lo:
        return np.empty(0, dtype=np.int64)
    counts = np.concatenate([[0], np.cumsum(target_ok.any(axis=1))])
    starts = np.arange(lo, hi + 1)
    seen = counts[starts + input_size + horizon] - counts[starts + input_size]
    return starts[seen > 0]


# ------------------------------------------------------------------ training


class _GraphModule(lightning.LightningModule):
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
        x, y, mask = batch
        total, count = pinball_loss(self.net(x), y, mask, self.levels)
        loss = total / count.clamp(min=1)
        self._train_sum += float(loss.detach())
        self._train_n += 1
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, mask = batch
        total, count = pinball_loss(self.net(x), y, mask, self.levels)
        self._valid_sum += float(total)
        self._valid_n += float(count)

    def on_validation_epoch_end(self):
        loss = self._valid_sum / max(self._valid_n, 1.0)
        self._valid_sum = self._valid_n = 0.0
        self.log("valid_loss", loss, prog_bar=True)

    def take_train_loss(self) -> float:
        """Mean training loss since the last call."""
        loss = self._train_sum / self._train_n if self._train_n else math.nan
        self._train_sum = self._train_n = 0.0
        return loss

    def configure_optimizers(self):
        t = self.training_config
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        if not self.has_valid:
            return optimizer
        scheduler = ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=PLATEAU_FACTOR,
            patience=t.scheduler_patience,
            min_lr=t.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "valid_loss", "interval": "epoch"},
        }


class _Checks(lightning.Callback):
    """Per validation period: record the losses and LR, keep the best weights."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.history: list[dict[str, float | int | None]] = []
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_step = 0

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or "valid_loss" not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics["valid_loss"])
        if loss < self.best_loss:
            self.best_loss, self.best_step = loss, int(trainer.global_step)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()
            }

    def on_train_epoch_end(self, trainer, pl_module):
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


# --------------------------------------------------------------- forecaster


class GraphForecaster(Forecaster):
    """Base of the graph forecasters: one network over a universe of symbols.

    Common hyper-parameters: ``input_size``, ``horizon``; ``sectors`` (symbol
    -> sector; ``None`` or a missing symbol: no sector, its own normalisation
    group and no sector edges); ``training`` (``None``: :meth:`default_training`);
    ``val_check_steps`` (steps between validation checks, ``None``: one
    epoch); ``max_valid`` (validation grid days, ``None``: all);
    ``correlation_window``, ``correlation_min_periods``, ``min_correlation``,
    ``sector_weight`` (the graph, :func:`kronos.features.graph.inter_asset_graph`);
    ``predict_batch_size`` (windows per forward pass at prediction).
    """

    name: ClassVar[str]
    input_size: int = 90
    _batch_independent: ClassVar[bool] = True
    """False where a forecast depends on its batch's other windows: predict one at a time."""

    def __init__(
        self,
        *,
        input_size: int,
        horizon: int,
        sectors: Mapping[str, str | None] | None,
        training: TrainingConfig | None,
        val_check_steps: int | None,
        max_valid: int | None,
        correlation_window: int,
        correlation_min_periods: int,
        min_correlation: float,
        sector_weight: float,
        predict_batch_size: int,
    ):
        self.input_size = input_size
        self.horizon = horizon
        self.sectors = sectors
        self.training = training
        self.val_check_steps = val_check_steps
        self.max_valid = max_valid
        self.correlation_window = correlation_window
        self.correlation_min_periods = correlation_min_periods
        self.min_correlation = min_correlation
        self.sector_weight = sector_weight
        self.predict_batch_size = predict_batch_size

    # ------------------------------------------------------------ subclass

    @abstractmethod
    def _architecture(self) -> dict[str, Any]:
        """The subclass's own hyper-parameters, JSON-ready (constructor keywords)."""

    @abstractmethod
    def _network(self, n_nodes: int, prior: np.ndarray, training: TrainingConfig) -> nn.Module:
        """A fresh network: ``[B, input_size, n_nodes] -> [B, horizon, n_nodes, 3]``."""

    def _artifact_extras(self, directory: Path) -> dict[str, Any]:
        """Write model-specific files into ``directory``; what to add to config.json."""
        return {}

    # -------------------------------------------------------------- config

    @staticmethod
    def default_training() -> TrainingConfig:
        """1,000 steps of 32 windows (each holds every symbol), patience 5, scheduler 2."""
        return TrainingConfig(max_steps=1000, batch_size=32, patience=5, scheduler_patience=2)

    def _training(self) -> TrainingConfig:
        return self.training if self.training is not None else self.default_training()

    def _hyper_parameters(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "horizon": self.horizon,
            "sectors": None if self.sectors is None else dict(sorted(self.sectors.items())),
            "training": self._training().model_dump(),
            "val_check_steps": self.val_check_steps,
            "max_valid": self.max_valid,
            "correlation_window": self.correlation_window,
            "correlation_min_periods": self.correlation_min_periods,
            "min_correlation": self.min_correlation,
            "sector_weight": self.sector_weight,
            "predict_batch_size": self.predict_batch_size,
            **self._architecture(),
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

    def _quiet(self) -> bool:
        return not self._training().progress

    # ----------------------------------------------------------------- fit

    def fit(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame | None = None,
        recorder: Recorder | None = None,
    ) -> Self:
        """Fit on ``train``; ``valid`` rows (after each symbol's train rows) steer stopping only.

        Every symbol needs ``input_size + horizon`` finite training returns;
        otherwise :class:`ForecastError` names it.
        """
        recorder = recorder if recorder is not None else NullRecorder()
        config = self._training()
        train = _clean(train, "train")
        if train.is_empty():
            raise ForecastError("train panel is empty")
        symbols = sorted(train["symbol"].unique().to_list())
        cutoff, rows = self._cutoff(train, valid, symbols)
        counts = (
            rows.filter(pl.col("ts") < cutoff, pl.col("y").is_finite()).group_by("symbol").len()
        )
        have = dict(zip(counts["symbol"], counts["len"], strict=True))
        need = self.input_size + self.horizon
        for s in symbols:
            if have.get(s, 0) < need:
                raise ForecastError(
                    f"symbol {s}: {have.get(s, 0)} finite train returns, "
                    f"needs at least input_size + horizon = {need}"
                )
        sectors = dict(self.sectors or {})
        scales = sector_scales(rows, sectors, cutoff, symbols)
        graph = inter_asset_graph(
            rows,
            symbols,
            sectors,
            cutoff,
            window=self.correlation_window,
            min_periods=self.correlation_min_periods,
            sector_weight=self.sector_weight,
            min_correlation=self.min_correlation,
        )
        mean, std = scales["mean"].to_numpy(), scales["std"].to_numpy()
        grid = _grid(rows, symbols, mean, std)
        n_train = int(np.searchsorted(grid.days, _day(cutoff)))
        v_end = (
            len(grid.days)
            if self.max_valid is None
            else min(len(grid.days), n_train + self.max_valid)
        )
        L, h = self.input_size, self.horizon
        train_starts = _starts(grid.observed, 0, n_train, L, h)
        valid_starts = _starts(grid.observed, n_train, v_end, L, h) if v_end > n_train else []
        if len(train_starts) == 0:
            raise ForecastError(f"no training window of {L} + {h} days before {cutoff}")
        has_valid = len(valid_starts) > 0

        batch = config.batch_size
        steps_per_epoch = max(1, math.ceil(len(train_starts) / batch))
        max_steps = config.max_epochs * steps_per_epoch
        if config.max_steps is not None:
            max_steps = min(max_steps, config.max_steps)
        val_check = min(self.val_check_steps or steps_per_epoch, max_steps)
        periods = max_steps // val_check
        info = {
            "cutoff": str(cutoff),
            "steps_per_epoch": steps_per_epoch,
            "max_steps": periods * val_check,
            "val_check_steps": val_check,
            "windows_batch_size": batch,
            "n_windows": len(train_starts),
            "n_valid_windows": len(valid_starts),
        }
        recorder.log_params(flatten_params({**self.get_config(), "fit": info}))

        z = torch.tensor(grid.z, dtype=torch.float32)
        mask = torch.tensor(grid.observed, dtype=torch.float32)
        train_ds = _Windows(z, mask, train_starts, L, h)
        lightning.seed_everything(config.seed, workers=True, verbose=False)
        with _quiet(self._quiet()), tempfile.TemporaryDirectory(prefix="kronos-graph-") as root:
            net = self._network(len(symbols), graph.adjacency, config)
            module = _GraphModule(net, config, has_valid)
            checks = _Checks(recorder)
            callbacks: list[lightning.Callback] = [checks]
            if has_valid:
                callbacks.append(
                    lightning.pytorch.callbacks.EarlyStopping(
                        monitor="valid_loss",
                        mode="min",
                        patience=config.patience,
                        check_on_train_epoch_end=False,
                    )
                )
            trainer = lightning.Trainer(
                default_root_dir=root,
                accelerator=config.accelerator,
                devices=1,
                max_epochs=periods,
                gradient_clip_val=config.gradient_clip,
                gradient_clip_algorithm="norm",
                callbacks=callbacks,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=config.progress,
                enable_model_summary=False,
                num_sanity_val_steps=0,
            )
            sampler = RandomSampler(train_ds, replacement=False, num_samples=val_check * batch)
            train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler)
            valid_loader = None
            if has_valid:
                valid_ds = _Windows(z, mask, np.asarray(valid_starts), L, h)
                valid_loader = DataLoader(valid_ds, batch_size=self.predict_batch_size)
            trainer.fit(module, train_loader, valid_loader)
        if checks.best_state is not None:
            net.load_state_dict(checks.best_state)
        info.update(stopped_step=checks.last_step, best_step=checks.best_step)

        self._set_fitted(net, symbols, scales, graph)
        self.history_ = checks.history
        self.fit_info_ = info
        self.version_ = self._fingerprint()
        return self

    def _cutoff(
        self, train: pl.DataFrame, valid: pl.DataFrame | None, symbols: list[str]
    ) -> tuple[date, pl.DataFrame]:
        """The training cutoff and the rows (train, then valid) the fit may read."""
        if valid is None or valid.height == 0:
            return train["ts"].max() + timedelta(days=1), train
        valid = _clean(valid, "valid")
        extra = sorted(set(valid["symbol"].unique().to_list()) - set(symbols))
        if extra:
            raise ForecastError(f"symbols in valid but not in train: {extra}")
        last = train.group_by("symbol").agg(pl.col("ts").max().alias("last"))
        early = valid.join(last, on="symbol").filter(pl.col("ts") <= pl.col("last"))
        if early.height:
            raise ForecastError(
                f"symbol {early['symbol'][0]}: valid rows do not follow its train rows"
            )
        return valid["ts"].min(), pl.concat([train, valid]).sort("symbol", "ts")

    def _set_fitted(
        self, net: nn.Module, symbols: list[str], scales: pl.DataFrame, graph: InterAssetGraph
    ) -> None:
        """Keep the trained network (float32) and a float64 copy that predicts."""
        self.network_ = net.cpu().eval()
        to_float64 = getattr(net, "float64", None)
        self.predictor_ = to_float64() if to_float64 else copy.deepcopy(net).double().eval()
        self.symbols_ = list(symbols)
        self.scales_ = scales
        self.graph_ = graph

    def _fingerprint(self) -> str:
        """Version: a hash of hyper-parameters, symbols, weights, scales and graph."""
        digest = hashlib.sha256(
            json.dumps([self.get_config(), self.symbols_], sort_keys=True).encode()
        )
        for key, tensor in sorted(self.network_.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        for array in (
            self.scales_["mean"].to_numpy(),
            self.scales_["std"].to_numpy(),
            self.graph_.adjacency,
        ):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        return digest.hexdigest()[:12]

    # ------------------------------------------------------------- predict

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise ForecastError(f"{self.name}: not fitted (call fit or load first)")

    def _wanted(self, panel: pl.DataFrame, symbols: Sequence[str] | None) -> list[str]:
        """The symbols to forecast, checked against the panel and the graph's nodes."""
        known = set(panel["symbol"].unique().to_list())
        fitted = set(self.symbols_)
        if symbols is None:
            wanted = sorted(fitted & known)
            if not wanted:
                raise ForecastError(
                    f"no symbol of the panel is a node of the {self.name} graph: "
                    f"{sorted(fitted)[:10]}"
                )
            return wanted
        wanted = list(dict.fromkeys(symbols))
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise ForecastError(f"unknown symbols (not in the panel): {unknown}")
        untrained = [s for s in wanted if s not in fitted]
        if untrained:
            shown = ", ".join(untrained[:10]) + (
                f" and {len(untrained) - 10} more" if len(untrained) > 10 else ""
            )
            raise ForecastError(f"symbols the {self.name} network was not trained on: {shown}")
        return wanted

    def _check_history(self, panel: pl.DataFrame, names: list[str], origins: list[date]) -> None:
        """Each wanted symbol has ``input_size`` returns up to each origin, the last finite."""
        L = self.input_size
        origin_days = np.array([_day(o) for o in origins])
        data = (
            panel.filter(pl.col("symbol").is_in(names))
            .select("symbol", pl.col("ts").cast(pl.Date).cast(pl.Int32).alias("day"), "y")
            .sort("symbol", "day")
        )
        grouped = {
            s: (g["day"].to_numpy(), g["y"].to_numpy()) for (s,), g in data.group_by("symbol")
        }
        for s in names:
            day, y = grouped[s]
            ends = np.searchsorted(day, origin_days, side="right")
            short = np.flatnonzero(ends < L)
            if len(short):
                i = int(short[0])
                raise ForecastError(
                    f"symbol {s}: {int(ends[i])} returns up to {origins[i]}, needs at least {L}"
                )
            w = y[ends[:, None] - L + np.arange(L)[None, :]]
            bad = ~np.isfinite(w)
            if bad.any():
                i, k = np.argwhere(bad)[0]
                raise ForecastError(
                    f"symbol {s}: NaN/inf in the input window ending {origins[i]} "
                    f"(position {k - L} from the end)"
                )

    @torch.inference_mode()
    def _quantiles_z(self, windows: np.ndarray) -> np.ndarray:
        """``(n, input_size, N)`` windows -> ``(n, horizon, N, 3)`` sorted quantiles of z."""
        size = self.predict_batch_size if self._batch_independent else 1
        out = [
            self.predictor_(torch.from_numpy(windows[i : i + size])).numpy()
            for i in range(0, len(windows), size)
        ]
        q = np.concatenate(out) if out else np.empty((0, self.horizon, windows.shape[2], 3))
        return np.sort(q, axis=-1)

    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """p05/p50/p95 for steps 1..horizon after ``asof`` from rows ``ts <= asof``."""
        return self.predict_origins(panel, [asof], symbols)

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Forecasts from every origin; each reads only rows up to itself."""
        self._check_fitted()
        origins = list(origins)
        names = self._wanted(panel, symbols)
        if not origins:
            return pl.DataFrame(schema=FORECAST_SCHEMA)
        self._check_history(panel, names, origins)
        mean = self.scales_["mean"].to_numpy()
        std = self.scales_["std"].to_numpy()
        grid = _grid(panel, self.symbols_, mean, std)
        L = self.input_size
        ends = np.searchsorted(grid.days, [_day(o) for o in origins], side="right")
        windows = np.zeros((len(origins), L, len(self.symbols_)))
        for i, e in enumerate(ends):
            take = grid.z[max(0, e - L) : e]
            windows[i, L - len(take) :] = take
        qz = self._quantiles_z(windows)  # (n_origins, h, N, 3)
        q = mean[None, None, :, None] + std[None, None, :, None] * qz
        col = np.array([self.symbols_.index(s) for s in names])
        return pl.concat(
            [
                forecast_frame(names, o, q[i][:, col].transpose(1, 0, 2), self.name, self.version)
                for i, o in enumerate(origins)
            ]
        )

    # ----------------------------------------------------------- artifacts

    def save(self, directory: Path) -> None:
        """Write ``state.pt``, ``config.json``, ``scaler.pkl``, ``graph.npz`` (and extras)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.network_.state_dict(), directory / "state.pt")
        scales = {
            r["symbol"]: {"group": r["group"], "mean": float(r["mean"]), "std": float(r["std"])}
            for r in self.scales_.iter_rows(named=True)
        }
        with (directory / "scaler.pkl").open("wb") as f:
            pickle.dump(scales, f)
        write_graph(self.graph_, directory / "graph.npz")
        config = {
            "name": self.name,
            "format_version": FORMAT_VERSION,
            "feature_version": FEATURE_VERSION,
            "horizon": self.horizon,
            "quantiles": list(QUANTILES),
            "version": self.version_,
            "hyper_parameters": self._hyper_parameters(),
            "symbols": self.symbols_,
            "fit": self.fit_info_,
            "history": self.history_,
            "graph": {
                "file": "graph.npz",
                "cutoff": str(self.graph_.cutoff),
                "edges": int(np.count_nonzero(self.graph_.adjacency)),
            },
            **self._artifact_extras(directory),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild the fitted forecaster from :meth:`save`'s files, without refitting."""
        directory = Path(directory)
        config = cls._read_config(directory / "config.json")
        try:
            model = cls._from_hyper_parameters(config["hyper_parameters"])
        except (TypeError, ValueError) as exc:
            raise ForecastError(
                f"{directory / 'config.json'}: bad hyper-parameters ({exc})"
            ) from exc
        symbols = [str(s) for s in config["symbols"]]
        scales = _read_scales(directory / "scaler.pkl", symbols)
        graph = read_graph(directory / "graph.npz")
        if list(graph.symbols) != symbols:
            raise ForecastError(f"{directory / 'graph.npz'}: symbols differ from config.json")
        state_path = directory / "state.pt"
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            with _quiet(model._quiet()):
                net = model._network(len(symbols), graph.adjacency, model._training())
            net.load_state_dict(state)
        except Exception as exc:  # neuralforecast raises bare Exceptions on bad arguments
            raise ForecastError(f"{state_path}: cannot load the network state ({exc})") from exc
        model._set_fitted(net, symbols, scales, graph)
        model.history_ = config.get("history", [])
        model.fit_info_ = config.get("fit", {})
        model.version_ = model._fingerprint()
        if model.version_ != config["version"]:
            raise ForecastError(f"{state_path}: files do not match version {config['version']}")
        return model

    @classmethod
    def _read_config(cls, path: Path) -> dict:
        """``config.json``, checked against this class; ForecastError naming the file otherwise."""
        expected = {
            "name": cls.name,
            "format_version": FORMAT_VERSION,
            "feature_version": FEATURE_VERSION,
            "horizon": HORIZON,
            "quantiles": list(QUANTILES),
        }
        return read_config(path, expected, ("hyper_parameters", "symbols", "version"))


# ------------------------------------------------------------- file formats


class _NoClasses(pickle.Unpickler):
    def find_class(self, module, name):  # dicts of str and float need no class
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_scales(path: Path, symbols: list[str]) -> pl.DataFrame:
    """``scaler.pkl`` read without executing code: ``{symbol: {group, mean, std}}``."""
    try:
        raw = _NoClasses(io.BytesIO(path.read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ForecastError(f"{path}: not a symbol -> scale mapping ({exc})") from exc
    ok = isinstance(raw, dict) and sorted(raw) == sorted(symbols)
    ok = ok and all(
        isinstance(v, dict)
        and isinstance(v.get("group"), str)
        and isinstance(v.get("mean"), float)
        and isinstance(v.get("std"), float)
        and v["std"] > 0
        for v in raw.values()
    )
    if not ok:
        raise ForecastError(f"{path}: not a scale (group, mean, std > 0) for each of the symbols")
    return pl.DataFrame(
        {
            "symbol": symbols,
            "group": [raw[s]["group"] for s in symbols],
            "mean": [raw[s]["mean"] for s in symbols],
            "std": [raw[s]["std"] for s in symbols],
        }
    )


def write_graph(graph: InterAssetGraph, path: Path) -> None:
    """The inter-asset graph as ``.npz`` arrays in symbol order (no pickled objects)."""
    np.savez(
        path,
        symbols=np.asarray(graph.symbols, dtype=str),
        sectors=np.asarray([s or "" for s in graph.sectors], dtype=str),
        sector=graph.sector,
        correlation=graph.correlation,
        adjacency=graph.adjacency,
        cutoff=np.asarray(str(graph.cutoff)),
        window=np.asarray(graph.window),
        min_periods=np.asarray(graph.min_periods),
        sector_weight=np.asarray(graph.sector_weight),
        min_correlation=np.asarray(graph.min_correlation),
    )


def read_graph(path: Path) -> InterAssetGraph:
    """Read :func:`write_graph`'s file (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            symbols = tuple(str(s) for s in f["symbols"])
            n = len(symbols)
            graph = InterAssetGraph(
                symbols=symbols,
                sectors=tuple(str(s) or None for s in f["sectors"]),
                cutoff=date.fromisoformat(str(f["cutoff"])),
                window=int(f["window"]),
                min_periods=int(f["min_periods"]),
                sector_weight=float(f["sector_weight"]),
                min_correlation=float(f["min_correlation"]),
                sector=np.asarray(f["sector"], dtype=np.float64),
                correlation=np.asarray(f["correlation"], dtype=np.float64),
                adjacency=np.asarray(f["adjacency"], dtype=np.float64),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ForecastError(f"{path}: not a graph file ({exc})") from exc
    if any(a.shape != (n, n) for a in (graph.sector, graph.correlation, graph.adjacency)):
        raise ForecastError(f"{path}: matrices are not {n} x {n}")
    return graph
