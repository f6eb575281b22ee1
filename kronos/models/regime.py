"""State-space regime encoder: S4D over market volatility features (whitepaper sections 4, 10).

The encoder reads the daily market features of :mod:`kronos.features.regime`
and returns, for every session, the probabilities of three volatility states
(calm, normal, turbulent). They are stored in ``regime_features``, read by the
risk layer, and drive the calibrator's dynamic lambda.

Architecture (written on torch, no external S4 package): a linear input
projection, ``n_layers`` S4D blocks, a linear head to the three states. An S4D
layer (Gu, Gupta, Goel and Re, "On the Parameterization and Initialization of
Diagonal State Space Models", 2022) is, per channel, the linear state space
``x' = A x + B u, y = Re(C x) + D u`` with a diagonal complex ``A``
(S4D-Lin initialisation ``A_n = -1/2 + i pi n``), discretized with a
zero-order hold of learned step ``dt``. Its output is the causal convolution
of the input with the kernel ``K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n
exp(l dt A_n))``, computed by FFT over the whole sequence. Steps ``dt`` start
log-uniform in [0.001, 0.1], i.e. memories of about 20 to 2,000 sessions. Each
block is ``LayerNorm(u + Dropout(GLU(Conv1x1(GELU(S4D(u))))))``: every
operation is either per session or the causal convolution, so the output of
session ``t`` depends on inputs up to ``t`` only. The network runs in float64
so that the FFT's round-off, the only way later inputs touch earlier outputs,
stays near 1e-16.

Training, without look-ahead (everything is cut at the fit ``cutoff``):

- Label of session ``t``: the state of the index's realized volatility over
  the *next* ``horizon`` sessions, by thresholds at ``state_quantiles`` of that
  volatility over the training labels only. A session whose next ``horizon``
  sessions are not all at or before the cutoff has no label.
- Validation: labels of the last ``valid_days`` calendar days; training labels
  end ``horizon`` sessions before the first validation session (purge), so no
  training label reads a validation-period return.
- Inputs: logs of the volatility features, the others as they are, standardised
  with means and deviations of the sessions before validation, clipped at
  +/-6.
- Optimisation (shared :class:`~kronos.models.base.TrainingConfig`): AdamW
  (no weight decay on the state-space parameters, as in S4D), gradient
  clipping by norm, ReduceLROnPlateau and early stopping on the validation log
  loss, best weights restored. The whole sequence is one sample: an epoch is
  one optimisation step over every training label (the series is one market,
  a few thousand sessions).

Promotion gate: the validation log loss must not exceed that of the
persistence baseline, the empirical transition from the state of the trailing
``horizon``-session volatility to the next one's (Laplace-smoothed, fitted on
the training labels).
"""

from __future__ import annotations

import contextlib
import math
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import polars as pl
import torch

from kronos.errors import ConfigError, InputError
from kronos.features.regime import PROBABILITY_COLUMNS, STATES, VOL_FLOOR, forward_vol
from kronos.models.artifacts import latest_artifact, promote, write_artifact
from kronos.models.base import ForecastError, NullRecorder, Recorder, TrainingConfig, flatten_params
from kronos.models.files import fingerprint, read_config, read_state, stamped, write_files
from kronos.models.regime_labels import (
    accuracy,
    label_split,
    log_loss,
    persistence_baseline,
    states_of,
    trailing_vol,
)
from kronos.models.regime_net import RegimeNet, S4DLayer

__all__ = [
    "FORMAT_VERSION",
    "INPUTS",
    "RegimeEncoder",
    "RegimeNet",
    "RegimeOutcome",
    "S4DLayer",
    "label_split",
    "load_promoted_regime",
    "model_inputs",
    "persistence_baseline",
    "train_regime",
]

FORMAT_VERSION = 1
LOG_INPUTS = ("rv_5", "rv_20", "rv_60", "abs_ret", "dispersion")
PLAIN_INPUTS = ("vol_of_vol", "correlation", "drawdown")
INPUTS = (*(f"log_{c}" for c in LOG_INPUTS), *PLAIN_INPUTS, "index_ret_z")
_CLIP = 6.0
DTYPE = torch.float64


def model_inputs(features: pl.DataFrame) -> pl.DataFrame:
    """``ts``, ``index_ret`` and the :data:`INPUTS` columns of complete sessions, by ``ts``.

    Sessions with a missing input (the first 60, before every window is full)
    are dropped.
    """
    floor = pl.lit(VOL_FLOOR)
    return (
        features.sort("ts")
        .select(
            "ts",
            "index_ret",
            *(pl.max_horizontal(c, floor).log().alias(f"log_{c}") for c in LOG_INPUTS),
            *PLAIN_INPUTS,
            (pl.col("index_ret") / pl.max_horizontal("rv_20", floor)).alias("index_ret_z"),
        )
        .drop_nulls(INPUTS)
        .filter(pl.all_horizontal(pl.col(c).is_finite() for c in INPUTS))
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the thread count.

    The tensors are small: more threads only add synchronisation (an epoch was
    3x slower with 2 threads on 2 busy cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- the estimator


class RegimeEncoder:
    """S4D encoder: market features -> per-session probabilities of calm/normal/turbulent.

    Hyper-parameters are stored unchanged; fitted state ends in ``_``.

    Parameters
    ----------
    horizon:
        Sessions ahead whose realized volatility defines the label.
    state_quantiles:
        Quantiles of the training labels' forward volatility separating calm
        from normal and normal from turbulent.
    d_model, d_state, n_layers:
        Channels, state size per channel (conjugate pairs: half are stored),
        S4D blocks.
    valid_days:
        Calendar days of labels at the end held out for early stopping (0: none).
    training:
        Shared training settings (default :meth:`default_training`).
    dt_min, dt_max:
        Range of the initial discretization steps.

    """

    name: ClassVar[str] = "regime"

    def __init__(
        self,
        horizon: int = 5,
        state_quantiles: tuple[float, float] = (1 / 3, 2 / 3),
        d_model: int = 16,
        d_state: int = 16,
        n_layers: int = 2,
        valid_days: int = 365,
        training: TrainingConfig | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ) -> None:
        self.horizon = horizon
        self.state_quantiles = tuple(state_quantiles)
        self.d_model = d_model
        self.d_state = d_state
        self.n_layers = n_layers
        self.valid_days = valid_days
        self.training = training
        self.dt_min = dt_min
        self.dt_max = dt_max

    @staticmethod
    def default_training() -> TrainingConfig:
        """One full-sequence step per epoch, so epochs and patience are counted in steps."""
        return TrainingConfig(
            max_epochs=300, patience=30, scheduler_patience=10, learning_rate=3e-3
        )

    def get_config(self) -> dict:
        """The hyper-parameters, JSON-ready (written to ``config.json``)."""
        training = self.training or self.default_training()
        return {
            "name": self.name,
            "format_version": FORMAT_VERSION,
            "inputs": list(INPUTS),
            "states": list(STATES),
            "horizon": self.horizon,
            "state_quantiles": list(self.state_quantiles),
            "d_model": self.d_model,
            "d_state": self.d_state,
            "n_layers": self.n_layers,
            "valid_days": self.valid_days,
            "dt_min": self.dt_min,
            "dt_max": self.dt_max,
            "training": training.model_dump(mode="json"),
        }

    def _check_params(self) -> None:
        q = self.state_quantiles
        if len(q) != len(STATES) - 1 or not 0 < q[0] < q[1] < 1:
            raise ConfigError(f"state_quantiles must be two increasing values in (0, 1), not {q}")
        if self.horizon < 1 or self.d_model < 1 or self.n_layers < 1 or self.d_state < 2:
            raise ConfigError("horizon, d_model, n_layers must be >= 1 and d_state >= 2")

    def _network(self, seed: int) -> RegimeNet:
        torch.manual_seed(seed)
        training = self.training or self.default_training()
        net = RegimeNet(
            len(INPUTS),
            len(STATES),
            self.d_model,
            self.d_state,
            self.n_layers,
            training.dropout,
            self.dt_min,
            self.dt_max,
        )
        return net.to(DTYPE)

    # ------------------------------------------------------------------ fit

    @_one_thread()
    def fit(
        self,
        features: pl.DataFrame,
        cutoff: date | None = None,
        recorder: Recorder | None = None,
    ) -> Self:
        """Fit on the sessions of ``features`` up to ``cutoff`` (default: all); nothing later.

        ``features``: :func:`kronos.features.regime.market_features`.
        """
        self._check_params()
        recorder = recorder or NullRecorder()
        training = self.training or self.default_training()
        frame = features if cutoff is None else features.filter(pl.col("ts") <= cutoff)
        data = model_inputs(frame)
        n = data.height
        vol_next = forward_vol(data, self.horizon).fill_null(np.nan).to_numpy()
        labelled = np.flatnonzero(np.isfinite(vol_next))
        if len(labelled) == 0:
            raise InputError(f"regime encoder: no labelled sessions up to {cutoff}")
        ts = data["ts"].to_list()
        train, valid, first_valid = label_split(ts, labelled, self.valid_days, self.horizon)
        if len(train) < 50:
            raise InputError(
                f"regime encoder: {len(train)} training labels up to {cutoff}, needs 50"
            )
        thresholds = np.quantile(vol_next[train], self.state_quantiles)
        labels = states_of(vol_next, thresholds)
        x = data.select(INPUTS).to_numpy()
        mean = x[:first_valid].mean(axis=0)
        std = x[:first_valid].std(axis=0)
        std = np.where(std > 0, std, 1.0)

        net = self._network(training.seed)
        inputs = torch.as_tensor(np.clip((x - mean) / std, -_CLIP, _CLIP), dtype=DTYPE)[None]
        t0 = time.perf_counter()
        # Lightning loads only to fit: reading a saved encoder (nightly, CLI) stays light
        from kronos.models.regime_fit import train_network

        history, best_epoch = train_network(net, inputs, labels, train, valid, training, recorder)

        self.network_ = net
        self.mean_, self.std_ = mean, std
        self.thresholds_ = thresholds
        self.history_ = history
        self.trained_until_ = ts[-1]
        self.metrics_ = self._validation_metrics(data, inputs, labels, train, valid, thresholds)
        self.fit_info_ = {
            "trained_until": str(ts[-1]),
            "first_session": str(ts[0]),
            "n_sessions": n,
            "n_train_labels": len(train),
            "n_valid_labels": len(valid),
            "valid_start": str(ts[first_valid]) if len(valid) else None,
            "thresholds": [float(t) for t in thresholds],
            "epochs": len(history),
            "best_epoch": best_epoch,
            "fit_seconds": time.perf_counter() - t0,
        }
        self.version_ = self._new_version()
        return self

    def _validation_metrics(
        self,
        data: pl.DataFrame,
        inputs: torch.Tensor,
        labels: np.ndarray,
        train: np.ndarray,
        valid: np.ndarray,
        thresholds: np.ndarray,
    ) -> dict[str, float]:
        """Log loss and accuracy of the encoder and of the persistence baseline."""
        now = states_of(trailing_vol(data["index_ret"].to_numpy(), self.horizon), thresholds)
        transition = persistence_baseline(now, labels, train)
        out = {"train_share_" + s: float(np.mean(labels[train] == i)) for i, s in enumerate(STATES)}
        if not len(valid):
            return out
        with torch.no_grad():
            probs = torch.softmax(self.network_(inputs)[0], dim=-1).numpy()
        scored = valid[now[valid] >= 0]
        base = transition[now[scored]]
        return {
            **out,
            "valid_log_loss": log_loss(probs[scored], labels[scored]),
            "valid_accuracy": accuracy(probs[scored], labels[scored]),
            "baseline_log_loss": log_loss(base, labels[scored]),
            "baseline_accuracy": accuracy(base, labels[scored]),
            "uniform_log_loss": math.log(len(STATES)),
            **{
                "valid_share_" + s: float(np.mean(labels[scored] == i))
                for i, s in enumerate(STATES)
            },
        }

    def _new_version(self) -> str:
        return stamped(fingerprint(self.get_config(), self.network_, self.thresholds_))

    @property
    def version(self) -> str:
        """Identifies the fitted state (set by fit or load)."""
        return getattr(self, "version_", "unfitted")

    # ------------------------------------------------------------------ predict

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise ForecastError(f"{self.name}: not fitted (call fit or load first)")

    def _run(self, features: pl.DataFrame) -> tuple[pl.DataFrame, torch.Tensor]:
        self._check_fitted()
        data = model_inputs(features)
        x = data.select(INPUTS).to_numpy()
        inputs = torch.as_tensor(np.clip((x - self.mean_) / self.std_, -_CLIP, _CLIP), dtype=DTYPE)[
            None
        ]
        return data, inputs

    @_one_thread()
    def predict_proba(self, features: pl.DataFrame) -> pl.DataFrame:
        """``ts`` and :data:`~kronos.features.regime.PROBABILITY_COLUMNS` per complete session.

        The probabilities of session ``t`` depend on the sessions up to ``t``
        only; the sequence starts at the first session of ``features``.
        """
        data, inputs = self._run(features)
        with torch.no_grad():
            probs = torch.softmax(self.network_(inputs)[0], dim=-1).numpy()
        return data.select("ts").with_columns(
            pl.Series(c, probs[:, i]) for i, c in enumerate(PROBABILITY_COLUMNS)
        )

    @_one_thread()
    def embed(self, features: pl.DataFrame) -> pl.DataFrame:
        """``ts`` and the last block's ``d_model`` channels (``e0``...) per complete session."""
        data, inputs = self._run(features)
        with torch.no_grad():
            hidden = self.network_.hidden(inputs)[0].numpy()
        return data.select("ts").with_columns(
            pl.Series(f"e{i}", hidden[:, i]) for i in range(hidden.shape[1])
        )

    # ------------------------------------------------------------------ artifacts

    def save(self, directory: Path) -> None:
        """Write ``state.pt`` (weights), ``config.json`` and ``scaler.pkl`` (input scaler)."""
        self._check_fitted()
        write_files(
            directory,
            state=self.network_.state_dict(),
            scaler={"inputs": list(INPUTS), "mean": self.mean_, "std": self.std_},
            config={
                **self.get_config(),
                "version": self.version_,
                "fit": self.fit_info_,
                "metrics": self.metrics_,
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a fitted encoder from :meth:`save`'s files; refuse incompatible ones."""
        directory = Path(directory)
        expected = {
            "name": cls.name,
            "format_version": FORMAT_VERSION,
            "inputs": list(INPUTS),
            "states": list(STATES),
        }
        config = read_config(directory / "config.json", expected, ("fit", "version"))
        model = cls(
            horizon=config["horizon"],
            state_quantiles=tuple(config["state_quantiles"]),
            d_model=config["d_model"],
            d_state=config["d_state"],
            n_layers=config["n_layers"],
            valid_days=config["valid_days"],
            training=TrainingConfig(**config["training"]),
            dt_min=config["dt_min"],
            dt_max=config["dt_max"],
        )
        with (directory / "scaler.pkl").open("rb") as f:
            scaler = pickle.load(f)  # numpy arrays: a trusted artifact directory only
        if scaler.get("inputs") != list(INPUTS):
            raise ForecastError(f"{directory / 'scaler.pkl'}: inputs {scaler.get('inputs')!r}")
        net = model._network(0)
        net.load_state_dict(read_state(directory / "state.pt"))
        net.eval()
        model.network_ = net
        model.mean_, model.std_ = np.asarray(scaler["mean"]), np.asarray(scaler["std"])
        model.fit_info_ = config["fit"]
        model.metrics_ = config.get("metrics", {})
        model.thresholds_ = np.asarray(config["fit"]["thresholds"])
        model.trained_until_ = date.fromisoformat(config["fit"]["trained_until"])
        model.history_ = []
        model.version_ = config["version"]
        return model


# ---------------------------------------------------------------- one training run


@dataclass(frozen=True)
class RegimeOutcome:
    """What a regime training run produced and decided."""

    encoder: RegimeEncoder
    run_dir: Path
    metrics: dict[str, float]
    promoted: bool
    reason: str


def train_regime(
    encoder: RegimeEncoder,
    features: pl.DataFrame,
    *,
    model_dir: Path,
    cutoff: date | None = None,
    recorder: Recorder | None = None,
) -> RegimeOutcome:
    """Fit, save the artifact (``MODEL_DIR/kronos-regime/<stamp>``), gate, promote.

    Promoted when the validation log loss is no worse than the persistence
    baseline's (always, without validation labels).
    """
    recorder = recorder or NullRecorder()
    recorder.log_params(flatten_params(encoder.get_config(), "model."))
    encoder.fit(features, cutoff, recorder)
    metrics = encoder.metrics_
    if "valid_log_loss" in metrics:
        ok = metrics["valid_log_loss"] <= metrics["baseline_log_loss"]
        reason = (
            f"validation log loss {metrics['valid_log_loss']:.4f} "
            f"{'<=' if ok else '>'} persistence baseline {metrics['baseline_log_loss']:.4f}"
        )
    else:
        ok, reason = True, "no validation labels: promoted without a gate"
    recorder.log_metrics({**metrics, "promoted": float(ok)})
    run_dir = write_artifact(
        encoder,  # type: ignore[arg-type]  # write_artifact uses name, version, save
        model_dir,
        {
            "validation": metrics,
            "fit": encoder.fit_info_,
            "promotion": {"promoted": ok, "reason": reason},
        },
    )
    if ok:
        promote(run_dir)
    return RegimeOutcome(encoder, run_dir, metrics, ok, reason)


def load_promoted_regime(model_dir: Path) -> RegimeEncoder | None:
    """The promoted regime encoder under ``model_dir``, if any."""
    directory = latest_artifact(model_dir, RegimeEncoder.name)
    return None if directory is None else RegimeEncoder.load(directory)
