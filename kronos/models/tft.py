"""Temporal Fusion Transformer forecaster (pytorch-forecasting), whitepaper 6.1.

The network is pytorch-forecasting's :class:`TemporalFusionTransformer` trained
with ``QuantileLoss`` on (p05, p50, p95), AdamW, ReduceLROnPlateau (min LR from
:class:`TrainingConfig`, 1e-5 by default), gradient clipping and early stopping
on the validation quantile loss. Choices made here:

- **Subset** (whitepaper: "top 200 symbols x latest 400 observations"): the
  ``max_symbols`` symbols with the most finite training returns (ties broken by
  name), each cut to its latest ``max_tail`` training returns. Symbols with
  fewer than ``input_size + horizon`` returns cannot form one training window
  and are left out before ranking. Validation uses each symbol's first
  ``max_valid`` validation rows (252 by default: the 12 months right after
  its training rows, the whitepaper's minimum hold-out); ``None`` uses all of
  them. On the 20 bundled stocks a 20 % hold-out is 6.6 years per symbol:
  33k validation windows against 6k training windows, and a validation pass
  three times as long as the training epoch.
- **Time index**: ``time_idx`` is the integer position of a row within its
  symbol (trading days, so holidays and exchange closures leave no gaps; rows
  with a non-finite return are dropped before counting). pytorch-forecasting
  takes a single ``min_prediction_idx`` for validation, so each symbol's index
  is shifted such that its first validation row has the same index in every
  symbol; validation windows are exactly those whose 5 targets are all
  validation rows (their encoders may reach back into the training rows).
- **Normaliser**: ``GroupNormalizer(groups=["symbol"])`` is fitted on the
  training rows only; the validation and prediction datasets are built from the
  training dataset's parameters (``TimeSeriesDataSet.get_parameters()``), which
  ``scaler.pkl`` holds.
- **Unknown symbols are refused**: a symbol the network was not trained on has
  no embedding and no fitted scale, so :meth:`TftForecaster.predict` raises
  :class:`ForecastError` naming it instead of guessing.
- **Decoder rows**: a prediction window is ``input_size`` observed returns plus
  ``horizon`` placeholder rows (``y = DECODER_PLACEHOLDER``). ``y`` is an
  unknown real, so the decoder never reads it; the decoder sees only
  ``relative_time_idx`` (a known real) and the static symbol embedding.
- **Quantile crossing**: quantiles are sorted per step, so p05 <= p50 <= p95.
- **Best epoch**: the weights of the epoch with the lowest validation loss are
  kept. Without validation rows there is no early stopping and no LR schedule.
- After fitting, the network lives on the CPU in float64: predictions are
  identical before and after :meth:`TftForecaster.save` /
  :meth:`TftForecaster.load`, and a forecast does not depend on which other
  windows share its batch (in float32 it moves by ~1e-6 relative with the
  batch composition), so :meth:`TftForecaster.predict_origins` equals
  per-origin :meth:`TftForecaster.predict`. Training runs in float32.

Polars frames become pandas in :func:`_to_pandas` only; results come back as
tensors and leave through :func:`~kronos.models.base.forecast_frame`.
``scaler.pkl`` is a pickle: load artifacts only from directories you trust.
"""

from __future__ import annotations

import math
import pickle
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, Self

import lightning
import numpy as np
import pandas as pd
import polars as pl
import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.data import GroupNormalizer, NaNLabelEncoder
from pytorch_forecasting.metrics import MAE, QuantileLoss
from torch import nn

from kronos.models.base import (
    FORECAST_SCHEMA,
    QUANTILES,
    Forecaster,
    ForecastError,
    NullRecorder,
    Panel,
    Recorder,
    TrainingConfig,
    forecast_frame,
    history_until,
)
from kronos.models.files import fingerprint, read_config, read_state, write_files
from kronos.models.lightning import early_stopping, make_trainer, quiet_lightning

FORMAT_VERSION = 1
FEATURE_VERSION = "log_return_v1"
DECODER_PLACEHOLDER = 0.0
"""Return written into the ``horizon`` decoder rows of a prediction window (never read)."""


def select_training_rows(
    train: pl.DataFrame, max_symbols: int, max_tail: int, min_length: int
) -> pl.DataFrame:
    """The training subset: top ``max_symbols`` symbols x latest ``max_tail`` returns.

    Symbols are ranked by their number of finite returns (descending, ties by
    name); those with fewer than ``min_length`` are left out first.
    """
    finite = train.filter(pl.col("y").is_finite()).sort("symbol", "ts")
    ranked = (
        finite.group_by("symbol")
        .len()
        .filter(pl.col("len") >= min_length)
        .sort(["len", "symbol"], descending=[True, False])
        .head(max_symbols)
    )
    chosen = ranked["symbol"].to_list()
    return (
        finite.filter(pl.col("symbol").is_in(chosen))
        .group_by("symbol", maintain_order=True)
        .tail(max_tail)
        .sort("symbol", "ts")
    )


def _to_pandas(frame: pl.DataFrame) -> pd.DataFrame:
    """The one polars -> pandas crossing: ``symbol (str), time_idx (int), y (float)``."""
    return frame.select(
        pl.col("symbol").cast(pl.String),
        pl.col("time_idx").cast(pl.Int64),
        pl.col("y").cast(pl.Float64),
    ).to_pandas()


def _new_dataset(data: pd.DataFrame, input_size: int, horizon: int) -> TimeSeriesDataSet:
    """The training dataset; its parameters (encoders, normaliser) serve every later dataset."""
    return TimeSeriesDataSet(
        data,
        time_idx="time_idx",
        target="y",
        group_ids=["symbol"],
        max_encoder_length=input_size,
        max_prediction_length=horizon,
        static_categoricals=["symbol"],
        time_varying_unknown_reals=["y"],
        add_relative_time_idx=True,
        add_target_scales=False,
        add_encoder_length=False,
        target_normalizer=GroupNormalizer(groups=["symbol"]),
        categorical_encoders={"symbol": NaNLabelEncoder(add_nan=False)},
    )


class _EpochLog(lightning.Callback):
    """Forward per-epoch losses to the recorder and keep the best validation weights."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.history: list[dict[str, float]] = []
        self.best_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: nn.Module) -> None:
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics["val_loss"])
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module: nn.Module) -> None:
        metrics = trainer.callback_metrics
        row = {"train_loss": float(metrics["train_loss_epoch"])}
        if "val_loss" in metrics:
            row["valid_loss"] = float(metrics["val_loss"])
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.recorder.log_metrics(row, step=trainer.current_epoch)
        self.history.append({"epoch": trainer.current_epoch, **row})


class TftForecaster(Forecaster):
    """Temporal Fusion Transformer on daily log returns (p05/p50/p95, 5 steps).

    ``input_size`` is the encoder length (past returns one prediction reads);
    ``hidden_size``, ``attention_heads``, ``hidden_continuous_size`` and
    ``lstm_layers`` size the network; ``max_symbols`` x ``max_tail`` is the
    training subset (:func:`select_training_rows`); ``max_valid`` caps the
    validation rows per symbol (``None``: all); ``training=None`` means
    :meth:`default_training`; ``limit_train_batches`` caps batches per epoch
    (quick runs, tests); ``predict_batch_size`` is windows per forward pass.
    """

    name = "tft"
    format_version = FORMAT_VERSION
    feature_version = FEATURE_VERSION

    def __init__(
        self,
        input_size: int = 90,
        hidden_size: int = 16,
        attention_heads: int = 4,
        hidden_continuous_size: int = 8,
        lstm_layers: int = 1,
        max_symbols: int = 200,
        max_tail: int = 400,
        max_valid: int | None = 252,
        training: TrainingConfig | None = None,
        limit_train_batches: int | None = None,
        predict_batch_size: int = 1024,
    ) -> None:
        self._input_size = input_size
        self.hidden_size = hidden_size
        self.attention_heads = attention_heads
        self.hidden_continuous_size = hidden_continuous_size
        self.lstm_layers = lstm_layers
        self.max_symbols = max_symbols
        self.max_tail = max_tail
        self.max_valid = max_valid
        self.training = training
        self.limit_train_batches = limit_train_batches
        self.predict_batch_size = predict_batch_size

    @property
    def input_size(self) -> int:
        """Encoder length: the past returns a prediction needs."""
        return self._input_size

    @staticmethod
    def default_training() -> TrainingConfig:
        """Whitepaper 6.1 TFT defaults: 3 epochs, early-stopping patience 2, scheduler 1."""
        return TrainingConfig(max_epochs=3, patience=2, scheduler_patience=1)

    def get_config(self) -> dict:
        """The hyper-parameters, JSON-ready."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "attention_heads": self.attention_heads,
            "hidden_continuous_size": self.hidden_continuous_size,
            "lstm_layers": self.lstm_layers,
            "max_symbols": self.max_symbols,
            "max_tail": self.max_tail,
            "max_valid": self.max_valid,
            "training": None if self.training is None else self.training.model_dump(),
            "limit_train_batches": self.limit_train_batches,
            "predict_batch_size": self.predict_batch_size,
        }

    # ------------------------------------------------------------------ fit

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
    ) -> Self:
        """Fit on ``train``; ``valid`` rows (later than each symbol's train rows) steer stopping."""
        min_length = self.input_size + self.horizon
        if self.max_tail < min_length:
            raise ForecastError(f"max_tail={self.max_tail} < input_size + horizon = {min_length}")
        config = self._training()
        rows = select_training_rows(train, self.max_symbols, self.max_tail, min_length)
        if rows.is_empty():
            raise ForecastError(f"no symbol has {min_length} finite training returns")
        rows, valid_rows, first_valid = self._time_index(rows, valid)

        lightning.seed_everything(config.seed, workers=True, verbose=False)
        with (
            quiet_lightning(self._quiet()),
            tempfile.TemporaryDirectory(prefix="kronos-tft-") as root,
        ):
            train_ds = _new_dataset(_to_pandas(rows), self.input_size, self.horizon)
            valid_ds = None
            if valid_rows is not None:
                valid_ds = TimeSeriesDataSet.from_dataset(
                    train_ds,
                    _to_pandas(pl.concat([rows, valid_rows])),
                    min_prediction_idx=first_valid,
                    stop_randomization=True,
                )
            network = self._network(train_ds, config)
            log = _EpochLog(recorder or NullRecorder())
            callbacks: list[lightning.Callback] = [log]
            if valid_ds is not None:
                callbacks.append(early_stopping("val_loss", config.patience))
            trainer = make_trainer(
                config,
                root,
                callbacks=callbacks,
                max_epochs=config.max_epochs,
                max_steps=config.max_steps or -1,
                limit_train_batches=self.limit_train_batches,
            )
            loader = train_ds.to_dataloader(train=True, batch_size=config.batch_size, num_workers=0)
            trainer.fit(
                network,
                train_dataloaders=loader,
                val_dataloaders=None
                if valid_ds is None
                else valid_ds.to_dataloader(
                    train=False, batch_size=config.batch_size, num_workers=0
                ),
            )
        if log.best_state is not None:
            network.load_state_dict(log.best_state)
        self.network_ = network.cpu().double().eval()
        self.trainer_ = trainer
        self.training_ = config
        self.dataset_parameters_ = train_ds.get_parameters()
        self.symbols_ = sorted(rows["symbol"].unique().to_list())
        self.history_ = log.history
        self.version_ = self._fingerprint()
        return self

    def _time_index(
        self, rows: pl.DataFrame, valid: pl.DataFrame | None
    ) -> tuple[pl.DataFrame, pl.DataFrame | None, int]:
        """Add ``time_idx``: each symbol's first validation row gets the same index."""
        first_valid = int(rows.group_by("symbol").len()["len"].max())
        rows = rows.with_columns(
            time_idx=pl.int_range(pl.len()).over("symbol") - pl.len().over("symbol") + first_valid
        )
        if valid is None:
            return rows, None, first_valid
        last_train = rows.group_by("symbol").agg(last_ts=pl.col("ts").max())
        valid_rows = (
            valid.filter(pl.col("y").is_finite())
            .join(last_train, on="symbol", how="inner")
            .sort("symbol", "ts")
        )
        early = valid_rows.filter(pl.col("ts") <= pl.col("last_ts"))["symbol"].unique().sort()
        if len(early):
            raise ForecastError(
                f"symbol {early[0]}: validation rows must be later than its training rows"
            )
        if self.max_valid is not None:
            valid_rows = valid_rows.group_by("symbol", maintain_order=True).head(self.max_valid)
        valid_rows = (
            valid_rows.drop("last_ts")
            .filter(pl.len().over("symbol") >= self.horizon)
            .with_columns(time_idx=pl.int_range(pl.len()).over("symbol") + first_valid)
        )
        return rows, (valid_rows if not valid_rows.is_empty() else None), first_valid

    def _network(
        self, dataset: TimeSeriesDataSet, config: TrainingConfig
    ) -> TemporalFusionTransformer:
        """The TFT for ``dataset``'s variables (the same call rebuilds it in :meth:`load`)."""
        with quiet_lightning():
            return TemporalFusionTransformer.from_dataset(
                dataset,
                hidden_size=self.hidden_size,
                attention_head_size=self.attention_heads,
                hidden_continuous_size=self.hidden_continuous_size,
                lstm_layers=self.lstm_layers,
                dropout=config.dropout,
                loss=QuantileLoss(quantiles=list(QUANTILES)),
                logging_metrics=nn.ModuleList([MAE()]),
                learning_rate=config.learning_rate,
                optimizer="adamw",
                weight_decay=config.weight_decay,
                reduce_on_plateau_patience=config.scheduler_patience,
                reduce_on_plateau_min_lr=config.min_lr,
                log_interval=-1,
            )

    def _fingerprint(self) -> str:
        """Version: a hash of the weights and the hyper-parameters."""
        return fingerprint(self.get_config(), self.network_)[:12]

    # -------------------------------------------------------------- predict

    def predict(
        self, panel: pl.DataFrame, asof: date, symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Quantile forecasts for steps 1..5 from ``asof``, using rows ``ts <= asof``.

        ``symbols=None`` means the panel's symbols the network was trained on.
        """
        return self.predict_origins(panel, [asof], symbols)

    def predict_origins(
        self, panel: pl.DataFrame, origins: Sequence[date], symbols: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Forecasts from every origin, all (symbol, origin) windows in one dataset."""
        self._check_fitted()
        known = set(self.symbols_)
        if symbols is None:
            wanted = sorted(known & set(panel["symbol"].unique().to_list()))
            if not wanted:
                raise ForecastError(
                    f"no symbol of the panel was trained on; trained: {sorted(known)}"
                )
        else:
            wanted = list(dict.fromkeys(symbols))
        untrained = [s for s in wanted if s not in known]
        if untrained:
            shown = ", ".join(untrained[:10]) + (
                f" and {len(untrained) - 10} more" if len(untrained) > 10 else ""
            )
            raise ForecastError(f"symbols the tft network was not trained on: {shown}")
        if not origins or not wanted:
            return pl.DataFrame(schema=FORECAST_SCHEMA)

        panel = panel.filter(pl.col("symbol").is_in(wanted))
        windows = {s: [] for s in wanted}
        for origin in origins:
            history = history_until(panel, origin, wanted, self.input_size)
            for s in wanted:
                windows[s].append(history[s][-self.input_size :])
        quantiles = self._run(windows, len(origins))
        return pl.concat(
            [
                forecast_frame(wanted, origin, quantiles[i], self.name, self.version)
                for i, origin in enumerate(origins)
            ]
        )

    def _run(self, windows: dict[str, list[np.ndarray]], n_origins: int) -> np.ndarray:
        """Quantiles ``(n_origins, n_symbols, horizon, 3)`` for each symbol's windows.

        Window ``k`` of a symbol occupies ``time_idx`` ``k*L .. k*L + L - 1``
        (``L = input_size + horizon``), so each symbol is one gap-free series;
        the dataset slides over every start and keeps the starts at ``k*L``.
        """
        length = self.input_size + self.horizon
        placeholder = np.full(self.horizon, DECODER_PLACEHOLDER)
        symbols = list(windows)
        frame = pl.DataFrame(
            {
                "symbol": np.repeat(symbols, n_origins * length).tolist(),
                "time_idx": np.tile(np.arange(n_origins * length), len(symbols)),
                "y": np.concatenate(
                    [np.concatenate([w, placeholder]) for s in symbols for w in windows[s]]
                ),
            }
        )
        with quiet_lightning():
            dataset = TimeSeriesDataSet.from_parameters(
                self.dataset_parameters_,
                _to_pandas(frame),
                min_prediction_idx=0,
                stop_randomization=True,
            ).filter(lambda index: index["time_idx_first"] % length == 0)
        order = dataset.decoded_index
        position = {s: i for i, s in enumerate(symbols)}
        row = np.array([position[s] for s in order["symbol"]])
        origin = order["time_idx_first"].to_numpy() // length
        loader = dataset.to_dataloader(
            train=False, batch_size=self.predict_batch_size, num_workers=0
        )
        network = self.network_.eval()
        outputs = []
        with torch.no_grad():
            for x, _ in loader:
                x = {
                    k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in x.items()
                }
                outputs.append(network(x)["prediction"].numpy())
        predicted = np.concatenate(outputs)
        if len(predicted) != n_origins * len(symbols):  # one window per (origin, symbol)
            raise RuntimeError(f"tft: {len(predicted)} windows for {n_origins} x {len(symbols)}")
        out = np.empty((n_origins, len(symbols), self.horizon, len(QUANTILES)))
        out[origin, row] = np.sort(predicted, axis=-1)
        return out

    # ----------------------------------------------------------- save/load

    def save(self, directory: Path) -> None:
        """Write ``state.pt``, ``config.json`` and ``scaler.pkl`` into ``directory``."""
        self._check_fitted()
        params = self.dataset_parameters_
        config = {
            **self.header(horizon=True),
            "horizon": self.horizon,
            "version": self.version,
            "hyper_parameters": self.get_config(),
            "training": self.training_.model_dump(),
            "dataset": {
                key: params[key]
                for key in (
                    "time_idx",
                    "target",
                    "group_ids",
                    "max_encoder_length",
                    "max_prediction_length",
                    "static_categoricals",
                    "time_varying_unknown_reals",
                    "add_relative_time_idx",
                )
            }
            | {"target_normalizer": repr(params["target_normalizer"])},
            "symbols": self.symbols_,
            "history": self.history_,
        }
        write_files(directory, state=self.network_.state_dict(), scaler=params, config=config)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild the fitted forecaster from :meth:`save`'s files, without refitting."""
        directory = Path(directory)
        config = cls._read_config(directory / "config.json")
        scaler_path = directory / "scaler.pkl"
        try:
            with open(scaler_path, "rb") as fh:
                params: dict[str, Any] = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise ForecastError(f"{scaler_path}: cannot read ({exc})") from exc
        if (
            not isinstance(params, dict)
            or params.get("max_encoder_length") != (config["hyper_parameters"]["input_size"])
        ):
            raise ForecastError(f"{scaler_path}: does not match config.json")

        model = cls._from_hyper_parameters(config["hyper_parameters"], directory / "config.json")
        try:
            training = TrainingConfig(**config["training"])
        except (TypeError, ValueError) as exc:
            raise ForecastError(f"{directory / 'config.json'}: bad training ({exc})") from exc
        length = model.input_size + model.horizon
        symbols = list(config["symbols"])
        stub = pl.DataFrame(
            {"symbol": [symbols[0]] * length, "time_idx": np.arange(length), "y": np.zeros(length)}
        )
        stub_ds = TimeSeriesDataSet.from_parameters(
            params, _to_pandas(stub), min_prediction_idx=0, stop_randomization=True
        )
        network = model._network(stub_ds, training).double()
        state_path = directory / "state.pt"
        try:
            network.load_state_dict(read_state(state_path))
        except RuntimeError as exc:
            raise ForecastError(f"{state_path}: cannot load the network state ({exc})") from exc
        model.network_ = network.eval()
        model.training_ = training
        model.dataset_parameters_ = params
        model.symbols_ = symbols
        model.history_ = config.get("history", [])
        model.version_ = model._fingerprint()
        if model.version_ != config["version"]:
            raise ForecastError(f"{state_path}: weights do not match version {config['version']}")
        return model

    @classmethod
    def _read_config(cls, path: Path) -> dict:
        """``config.json``, checked against this class; ForecastError naming the file otherwise."""
        required = ("hyper_parameters", "training", "symbols", "version")
        return read_config(path, cls.header(horizon=True), required)
