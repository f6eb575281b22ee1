"""The graph forecasters' shared base: a universe at once, one training loop (whitepaper 4).

A graph forecaster (:mod:`kronos.models.stemgnn`, :mod:`kronos.models.mtgnn`)
reads the last ``input_size`` sector-normalised returns of *every* symbol of
its universe (the graph's nodes) and emits p05/p50/p95 of each symbol's next
``horizon`` returns. Subclasses supply the network (:meth:`GraphForecaster._network`,
``[batch, input_size, nodes] -> [batch, horizon, nodes, 3]``); this module owns
the data, the graph, training, prediction and artifacts, with the date grid,
windows and file formats in :mod:`kronos.models.graph_data` and the Lightning
module in :mod:`kronos.models.graph_train`.

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

import copy
import math
import tempfile
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

import lightning
import numpy as np
import polars as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from kronos.features.graph import InterAssetGraph, inter_asset_graph, sector_scales
from kronos.models.base import (
    FORECAST_SCHEMA,
    QUANTILES,
    Forecaster,
    ForecastError,
    NullRecorder,
    Panel,
    Recorder,
    TrainingConfig,
    flatten_params,
    forecast_frame,
    origin_windows,
)
from kronos.models.files import fingerprint, read_config, read_state, write_files
from kronos.models.graph_data import (
    Windows,
    clean_panel,
    day_number,
    read_graph,
    read_scales,
    window_starts,
    write_graph,
)
from kronos.models.graph_data import grid as make_grid
from kronos.models.graph_train import Checks, GraphModule
from kronos.models.lightning import early_stopping, make_trainer, quiet_lightning

__all__ = [
    "FEATURE_VERSION",
    "FORMAT_VERSION",
    "N_QUANTILES",
    "GraphForecaster",
    "read_graph",
    "write_graph",
]

FORMAT_VERSION = 1
FEATURE_VERSION = "sector_normalized_log_return_v1"
N_QUANTILES = len(QUANTILES)


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
    format_version: ClassVar[int] = FORMAT_VERSION
    feature_version: ClassVar[str] = FEATURE_VERSION
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

    # ----------------------------------------------------------------- fit

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Fit on ``train``; ``valid`` rows (after each symbol's train rows) steer stopping only.

        Every symbol needs ``input_size + horizon`` finite training returns;
        otherwise :class:`ForecastError` names it.
        """
        recorder = recorder if recorder is not None else NullRecorder()
        config = self._training()
        train = clean_panel(train, "train")
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
        grid = make_grid(rows, symbols, mean, std)
        n_train = int(np.searchsorted(grid.days, day_number(cutoff)))
        v_end = (
            len(grid.days)
            if self.max_valid is None
            else min(len(grid.days), n_train + self.max_valid)
        )
        L, h = self.input_size, self.horizon
        train_starts = window_starts(grid.observed, 0, n_train, L, h)
        valid_starts = window_starts(grid.observed, n_train, v_end, L, h) if v_end > n_train else []
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
        train_ds = Windows(z, mask, train_starts, L, h)
        lightning.seed_everything(config.seed, workers=True, verbose=False)
        with (
            quiet_lightning(self._quiet()),
            tempfile.TemporaryDirectory(prefix="kronos-graph-") as root,
        ):
            net = self._network(len(symbols), graph.adjacency, config)
            module = GraphModule(net, config, has_valid)
            checks = Checks(recorder)
            callbacks: list[lightning.Callback] = [checks]
            if has_valid:
                callbacks.append(early_stopping("valid_loss", config.patience))
            trainer = make_trainer(config, root, callbacks=callbacks, max_epochs=periods)
            sampler = RandomSampler(train_ds, replacement=False, num_samples=val_check * batch)
            train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler)
            valid_loader = None
            if has_valid:
                valid_ds = Windows(z, mask, np.asarray(valid_starts), L, h)
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
        valid = clean_panel(valid, "valid")
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
        return fingerprint(
            [self.get_config(), self.symbols_],
            self.network_,
            self.scales_["mean"].to_numpy(),
            self.scales_["std"].to_numpy(),
            self.graph_.adjacency,
        )[:12]

    # ------------------------------------------------------------- predict

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
        origin_windows(panel, names, origins, self.input_size)  # checks the history
        mean = self.scales_["mean"].to_numpy()
        std = self.scales_["std"].to_numpy()
        grid = make_grid(panel, self.symbols_, mean, std)
        L = self.input_size
        ends = np.searchsorted(grid.days, [day_number(o) for o in origins], side="right")
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
        write_graph(self.graph_, directory / "graph.npz")
        config = {
            **self.header(horizon=True),
            "horizon": self.horizon,
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
        scales = {
            r["symbol"]: {"group": r["group"], "mean": float(r["mean"]), "std": float(r["std"])}
            for r in self.scales_.iter_rows(named=True)
        }
        write_files(directory, state=self.network_.state_dict(), scaler=scales, config=config)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild the fitted forecaster from :meth:`save`'s files, without refitting."""
        directory = Path(directory)
        config = cls._read_config(directory / "config.json")
        model = cls._from_hyper_parameters(config["hyper_parameters"], directory / "config.json")
        symbols = [str(s) for s in config["symbols"]]
        scales = read_scales(directory / "scaler.pkl", symbols)
        graph = read_graph(directory / "graph.npz")
        if list(graph.symbols) != symbols:
            raise ForecastError(f"{directory / 'graph.npz'}: symbols differ from config.json")
        state_path = directory / "state.pt"
        state = read_state(state_path)
        try:
            with quiet_lightning(model._quiet()):
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
        return read_config(
            path, cls.header(horizon=True), ("hyper_parameters", "symbols", "version")
        )
