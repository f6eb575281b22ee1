"""Hyper-parameter search for a forecaster, scored on the validation year only.

The search runs on optuna (the backend of neuralforecast's ``Auto*`` models):
locally, trials run one after another in this process (an optuna study with a
seeded TPE sampler); with the ``ray`` executor, Ray Tune runs the same
objective as trials on a Ray cluster, steered by the same optuna sampler
(``ray.tune.search.optuna.OptunaSearch``). neuralforecast's ``AutoNBEATS``
itself is not used: it tunes the library's plain ``NBEATS`` on its own
validation loss, while a trial here is the kronos forecaster (per-symbol
scaling, dropout, best-check weights) scored like the training gate.

Every trial fits on the training rows of :func:`~kronos.models.split.train_valid_split`
(its validation rows steer early stopping) and is scored by the CRPS of its
rolling-origin forecasts over those validation rows: the same year the gate
reads. Nothing after the data cutoff is in the panel, so no trial sees the
period a backtest later trades. The best parameters are then refitted and
gated by :func:`~kronos.models.training.train_and_gate`, as ``kronos train``
does.

Recording: each trial gets a recorder from ``trial_recorder`` (the CLI opens an
MLflow child run of the search's parent run); this module never imports mlflow.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kronos.errors import ConfigError
from kronos.models.base import NullRecorder, Recorder
from kronos.models.evaluation import score
from kronos.models.registry import build
from kronos.models.split import train_valid_split
from kronos.models.training import validation_forecasts

__all__ = ["SPACES", "TrialResult", "TuneResult", "search", "trial_score"]

EXECUTORS = ("local", "ray")
# A search space is (name, kind, choices or bounds): "log" and "float" are
# (low, high), "choice" a tuple of values. Kept as data so optuna and Ray Tune
# read the same space.
Space = tuple[tuple[str, str, tuple[Any, ...]], ...]
SPACES: dict[str, Space] = {
    "nbeats": (
        ("learning_rate", "log", (1e-4, 3e-3)),
        ("dropout", "float", (0.0, 0.1)),
        ("width", "choice", (32, 64, 128)),
        ("input_size", "choice", (30, 60, 90)),
    ),
    "tft": (
        ("learning_rate", "log", (1e-4, 3e-3)),
        ("dropout", "float", (0.0, 0.1)),
        ("hidden_size", "choice", (8, 16, 32)),
    ),
}


@dataclass(frozen=True)
class TrialResult:
    """One trial: its sampled parameters and validation scores."""

    number: int
    params: dict[str, Any]
    metrics: dict[str, float]
    seconds: float

    @property
    def crps(self) -> float:
        """The score minimised (validation CRPS; inf when the trial failed)."""
        return self.metrics.get("crps", math.inf)


@dataclass(frozen=True)
class TuneResult:
    """All trials of a search and the best one."""

    model: str
    executor: str
    trials: list[TrialResult] = field(default_factory=list)

    @property
    def best(self) -> TrialResult:
        """The trial with the lowest validation CRPS (the first of ties)."""
        return min(self.trials, key=lambda t: (t.crps, t.number))


def model_options(model: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled ``params`` as :func:`~kronos.models.registry.build` overrides of ``model``.

    ``width`` is the hidden units of every N-BEATS block (two layers per block,
    as in :func:`~kronos.models.nbeats.lightweight_nbeats`).
    """
    options = dict(params)
    if "width" in options:
        width = int(options.pop("width"))
        options["mlp_units"] = ((width, width), (width, width))
    return options


def trial_score(
    model: str,
    panel: pl.DataFrame,
    params: Mapping[str, Any],
    base: Mapping[str, Any],
    *,
    seed: int = 0,
    recorder: Recorder | None = None,
) -> dict[str, float]:
    """Fit ``model`` with ``base`` and ``params`` on the training rows; score the validation rows.

    Returns :func:`~kronos.models.evaluation.score`'s metrics (``crps`` among them).
    """
    forecaster = build(model, seed=seed, **{**base, **model_options(model, params)})
    train, valid = train_valid_split(panel)
    forecaster.fit(train, valid, recorder or NullRecorder())
    return score(validation_forecasts(forecaster, panel, train, valid))


def _space_of(model: str, space: Space | None) -> Space:
    if space is not None:
        return space
    if model not in SPACES:
        raise ConfigError(f"no search space for {model!r}: built-in spaces are {sorted(SPACES)}")
    return SPACES[model]


def _suggest(trial: Any, space: Space) -> dict[str, Any]:
    """One sample of ``space`` from an optuna trial."""
    out: dict[str, Any] = {}
    for name, kind, values in space:
        if kind == "log":
            out[name] = trial.suggest_float(name, *values, log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, *values)
        else:
            out[name] = trial.suggest_categorical(name, list(values))
    return out


def _local(
    model: str,
    panel: pl.DataFrame,
    space: Space,
    base: Mapping[str, Any],
    trials: int,
    seed: int,
    trial_recorder: Callable[[int], AbstractContextManager[Recorder]],
) -> list[TrialResult]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    results: list[TrialResult] = []

    def objective(trial: Any) -> float:
        params = _suggest(trial, space)
        t0 = time.perf_counter()
        with trial_recorder(trial.number) as recorder:
            recorder.log_params({f"trial.{k}": v for k, v in params.items()})
            metrics = trial_score(model, panel, params, base, seed=seed, recorder=recorder)
            recorder.log_metrics({f"valid_{k}": v for k, v in metrics.items()})
        results.append(TrialResult(trial.number, params, metrics, time.perf_counter() - t0))
        return metrics["crps"]

    study.optimize(objective, n_trials=trials)
    return results


def _ray(
    model: str,
    panel: pl.DataFrame,
    space: Space,
    base: Mapping[str, Any],
    trials: int,
    seed: int,
    trial_recorder: Callable[[int], AbstractContextManager[Recorder]],
    address: str | None,
) -> list[TrialResult]:
    """Ray Tune trials (one CPU each) sampled by optuna; recorded on the driver afterwards."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    param_space: dict[str, Any] = {}
    for name, kind, values in space:
        if kind == "log":
            param_space[name] = tune.loguniform(*values)
        elif kind == "float":
            param_space[name] = tune.uniform(*values)
        else:
            param_space[name] = tune.choice(list(values))
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        panel_ref = ray.put(panel)

        def trainable(config: dict[str, Any]) -> dict[str, float]:
            t0 = time.perf_counter()
            metrics = trial_score(model, ray.get(panel_ref), config, base, seed=seed)
            return {**metrics, "seconds": time.perf_counter() - t0}

        with tempfile.TemporaryDirectory(prefix="kronos-tune-") as storage:
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": 1}),
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric="crps",
                    mode="min",
                    num_samples=trials,
                    search_alg=OptunaSearch(seed=seed),
                ),
                # results come back in memory: nothing under ~/ray_results
                run_config=tune.RunConfig(name="kronos-tune", storage_path=storage, verbose=0),
            )
            # Ray Tune prints its tables on stdout, where --json answers
            with contextlib.redirect_stdout(sys.stderr):
                grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    results = []
    for number, row in enumerate(grid):
        if row.error is not None:
            raise ConfigError(f"tune trial {number} failed on Ray: {row.error}")
        params = {name: row.config[name] for name, _, _ in space}
        metrics = {k: float(v) for k, v in row.metrics.items() if k in _METRIC_KEYS}
        with trial_recorder(number) as recorder:
            recorder.log_params({f"trial.{k}": v for k, v in params.items()})
            recorder.log_metrics({f"valid_{k}": v for k, v in metrics.items()})
        results.append(TrialResult(number, params, metrics, float(row.metrics["seconds"])))
    return results


_METRIC_KEYS = ("mae", "coverage", "crps", "pinball_p05", "pinball_p50", "pinball_p95", "n")


@contextlib.contextmanager
def _null_trial(_number: int) -> Iterator[Recorder]:
    yield NullRecorder()


def search(
    model: str,
    panel: pl.DataFrame,
    *,
    trials: int,
    base: Mapping[str, Any] | None = None,
    executor: str = "local",
    seed: int = 0,
    space: Space | None = None,
    trial_recorder: Callable[[int], AbstractContextManager[Recorder]] | None = None,
    ray_address: str | None = None,
) -> TuneResult:
    """Run ``trials`` trials of ``model`` over ``space`` (default :data:`SPACES`).

    ``base``: fixed overrides of every trial (e.g. ``max_steps``);
    ``trial_recorder(number)`` opens the recorder of one trial.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {EXECUTORS}, not {executor!r}")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, not {trials}")
    chosen = _space_of(model, space)
    clash = sorted({name for name, _, _ in chosen} & set(base or {}))
    if clash:
        raise ConfigError(f"{clash} are searched: do not also fix them")
    opener = trial_recorder or _null_trial
    fixed = dict(base or {})
    if executor == "local":
        results = _local(model, panel, chosen, fixed, trials, seed, opener)
    else:
        results = _ray(model, panel, chosen, fixed, trials, seed, opener, ray_address)
    return TuneResult(model, executor, results)
