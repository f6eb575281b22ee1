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
(:func:`kronos.models.nbeats_net.network_quantiles`), with neuralforecast's own normalisation
and inverse normalisation. If the network crosses its quantiles, the three
values of each (symbol, step) are sorted (monotone rearrangement, which never
increases the pinball loss: Chernozhukov, Fernandez-Val and Galichon 2010).

The network class, the per-check recorder and the data plumbing live in
:mod:`kronos.models.nbeats_net`; Lightning options in :mod:`kronos.models.lightning`.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
from neuralforecast.losses.pytorch import MQLoss
from neuralforecast.models import NBEATS
from neuralforecast.tsdataset import TimeSeriesDataset

from kronos.models.base import (
    FORECAST_SCHEMA,
    HORIZON,
    QUANTILES,
    Forecaster,
    ForecastError,
    NullRecorder,
    Panel,
    Recorder,
    TrainingConfig,
    flatten_params,
    forecast_frame,
    history_until,
    origin_windows,
)
from kronos.models.files import (
    fingerprint,
    read_config,
    read_plain_pickle,
    read_state,
    stamped,
    write_files,
)
from kronos.models.lightning import quiet_lightning, trainer_options
from kronos.models.nbeats_net import (
    VAL_LOSS_KEY,
    CheckRecorder,
    KronosNBEATS,
    network_quantiles,
    panel_series,
    symbol_scale,
    to_nixtla,
    validation_rows,
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
    format_version: ClassVar[int] = FORMAT_VERSION
    feature_version: ClassVar[str] = FEATURE_VERSION
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

    def _make_network(self, has_valid: bool, n_windows: int) -> tuple[NBEATS, dict[str, int]]:
        """The Lightning module and the resolved step counts (see the module docstring)."""
        t = self._training()
        windows_batch = self.windows_batch_size or t.batch_size
        steps_per_epoch = max(1, math.ceil(n_windows / windows_batch))
        max_steps = t.max_epochs * steps_per_epoch
        if t.max_steps is not None:
            max_steps = min(max_steps, t.max_steps)
        val_check = min(self.val_check_steps or steps_per_epoch, max_steps)
        net = KronosNBEATS(
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
            **trainer_options(t),
        )
        info = {
            "steps_per_epoch": steps_per_epoch,
            "max_steps": max_steps,
            "val_check_steps": val_check,
            "windows_batch_size": windows_batch,
        }
        return net, info

    # --------------------------------------------------------------------- fit

    def fit(
        self, train: Panel, valid: Panel | None = None, recorder: Recorder | None = None
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
        train_series = panel_series(train, "train")
        if not train_series:
            raise ForecastError("train panel is empty")
        for symbol, (_, y) in train_series.items():
            if len(y) < self.input_size + self.horizon:
                raise ForecastError(
                    f"symbol {symbol}: {len(y)} train returns, "
                    f"needs at least input_size + horizon = {self.input_size + self.horizon}"
                )
        val_size, valid_y = validation_rows(train_series, valid, self.horizon)

        symbols = sorted(train_series)
        if self._symbol_scaling:
            fitted = {s: symbol_scale(train_series[s][1]) for s in symbols}
            median = float(np.nanmedian(list(fitted.values()))) if fitted else 1.0
            median = median if math.isfinite(median) else 1.0
            scales = {s: (v if math.isfinite(v) else median) for s, v in fitted.items()}
        else:
            scales = dict.fromkeys(symbols, 1.0)

        ys = [np.concatenate([train_series[s][1], valid_y.get(s, np.empty(0))]) for s in symbols]
        lengths = np.array([len(y) for y in ys])
        scaled = np.concatenate([y / scales[s] for s, y in zip(symbols, ys, strict=True)])
        frame = to_nixtla(np.array(symbols, dtype=object), scaled, lengths)
        dataset, *_ = TimeSeriesDataset.from_df(frame, id_col="unique_id", time_col="ds")

        n_windows = int(sum(len(train_series[s][1]) - self.input_size for s in symbols))
        with tempfile.TemporaryDirectory() as root, quiet_lightning(self._quiet()):
            net, info = self._make_network(val_size > 0, n_windows)
            checks = CheckRecorder(recorder, keep_best=self._keep_best and val_size > 0)
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
        return stamped(fingerprint(self.get_config(), self.network_))

    # ----------------------------------------------------------------- predict

    def _scale_of(self, symbols: Sequence[str]) -> np.ndarray:
        """Fitted per-symbol scales; unseen symbols get the median fitted scale."""
        median = float(np.median(list(self.scales_.values()))) if self.scales_ else 1.0
        return np.array([self.scales_.get(s, median) for s in symbols], dtype=np.float64)

    def _quantiles(self, windows: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return network_quantiles(self.predictor_, windows, scales, self.input_size, self.horizon)

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
        L = self.input_size
        windows = origin_windows(panel, names, origins, L)
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
        write_files(
            directory,
            state=self.network_.state_dict(),
            scaler={s: float(v) for s, v in self.scales_.items()},
            config={**self.get_config(), "version": self.version_, "fit": self.fit_info_},
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a fitted forecaster from :meth:`save`'s files, without refitting."""
        directory = Path(directory)
        config_path = directory / "config.json"
        config = read_config(config_path, cls.header())
        params = {k: v for k, v in config.items() if k not in {*cls.header(), "version", "fit"}}
        for key in ("input_size", "horizon"):
            if not isinstance(params.get(key), int) or params[key] < 1:
                raise ForecastError(f"{config_path}: {key} must be a positive integer")
        model = cls._from_hyper_parameters(params, config_path)
        state_path = directory / "state.pt"
        state = read_state(state_path)
        try:
            with quiet_lightning(model._quiet()):
                net, _ = model._make_network(has_valid=False, n_windows=1)
            net.load_state_dict(state)
        except Exception as e:  # neuralforecast raises bare Exceptions on bad arguments
            raise ForecastError(
                f"{config_path}: hyper-parameters do not match the weights in {state_path}: {e}"
            ) from e
        scales = read_plain_pickle(directory / "scaler.pkl")
        if not isinstance(scales, dict) or not all(
            isinstance(k, str) and isinstance(v, float) and v > 0 for k, v in scales.items()
        ):
            raise ForecastError(
                f"{directory / 'scaler.pkl'}: not a symbol -> positive scale mapping"
            )

        model._set_network(net)
        model.scales_ = scales
        model.history_ = []
        model.fit_info_ = config.get("fit", {})
        model.version_ = str(config.get("version", "unknown"))
        return model


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

    def _quiet(self) -> bool:
        return True

    def _make_network(self, has_valid: bool, n_windows: int) -> tuple[NBEATS, dict[str, int]]:
        net = NBEATS(
            h=self.horizon,
            input_size=self.input_size,
            loss=MQLoss(quantiles=list(QUANTILES)),
            **{**trainer_options(TrainingConfig()), **(self.overrides or {})},
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
