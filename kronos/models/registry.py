"""Forecasters by name, imported only when asked for (torch and friends are slow to load).

:func:`build` is the one place a forecaster is made from a name and keyword
overrides: the backtest, the benchmarks, training and the forecasting fallback
call it (``kronos train`` and the retrain notebook should too). Overrides are
the class's constructor keywords and, for the neural models, the fields of
:class:`~kronos.models.base.TrainingConfig` (applied over the class's
:meth:`~kronos.models.base.Forecaster.default_training`); anything else is
refused by name.

A forecaster is named by a built-in name (:data:`FORECASTERS`), an import path
``"package.module:Class"`` or an entry-point name of the group
``kronos.forecasters`` (:func:`kronos.plugins.resolve`); Python callers may also
pass the class, or a built instance. A class that is not built in is checked
against the forecaster contract (:mod:`kronos.models.contract`) the first time
it is resolved in a process.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from kronos.config import did_you_mean
from kronos.errors import ConfigError
from kronos.models.base import Forecaster, TrainingConfig
from kronos.plugins import reference_of, resolve

__all__ = [
    "FORECASTERS",
    "ForecasterRef",
    "build",
    "forecaster_class",
    "is_builtin",
    "model_name",
    "override_keys",
    "reference",
]

GROUP = "kronos.forecasters"
ForecasterRef = str | type[Forecaster] | Forecaster
"""A forecaster as callers name it: a name, an import path, an entry point, a class, an instance."""

FORECASTERS: dict[str, str] = {
    "historical": "kronos.models.baselines:HistoricalQuantiles",
    "ewma": "kronos.models.baselines:EwmaNormal",
    "garch": "kronos.models.baselines:GarchT",
    "nbeats": "kronos.models.nbeats:NBeatsForecaster",
    "nbeats_default": "kronos.models.nbeats:NBeatsDefaultForecaster",
    "tft": "kronos.models.tft:TftForecaster",
    "stemgnn": "kronos.models.stemgnn:StemGnnForecaster",
    "mtgnn": "kronos.models.mtgnn:MtgnnForecaster",
    "mtgnn_prior": "kronos.models.mtgnn:MtgnnPriorForecaster",
    "fracast": "kronos.models.foundation:Fracast",
    "har_gbm": "kronos.models.har_gbm:HarGbm",
    "combination": "kronos.models.combination:Combination",
}
TRAINING_FIELDS = frozenset(TrainingConfig.model_fields)


def forecaster_class(ref: ForecasterRef) -> type[Forecaster]:
    """The class ``ref`` names; an unknown name names the nearest valid one.

    A class that is not built in is checked against the contract
    (:func:`kronos.models.contract.check_forecaster`) once per process.
    """
    if isinstance(ref, str) and ref in FORECASTERS:
        module, _, attr = FORECASTERS[ref].partition(":")
        return getattr(importlib.import_module(module), attr)
    if isinstance(ref, Forecaster):  # checked as it is: its class may need arguments
        cls: Any = type(ref)
    elif isinstance(ref, type):
        cls = ref
    elif isinstance(ref, str):
        cls, path = resolve(ref, FORECASTERS, GROUP)
        if not isinstance(cls, type):
            raise ConfigError(f"forecaster {path!r} is a {type(cls).__name__}, not a class")
    else:
        raise ConfigError(f"a forecaster is a name, an import path or a class, not {ref!r}")
    if not is_builtin(cls):
        from kronos.models.contract import checked

        checked(ref if isinstance(ref, Forecaster) else cls)
    return cls


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of kronos's own forecasters (in :data:`FORECASTERS`)."""
    return f"{cls.__module__}:{cls.__qualname__}" in FORECASTERS.values()


def reference(ref: ForecasterRef) -> str:
    """The canonical import path ``"package.module:Class"`` of the forecaster ``ref`` names."""
    if isinstance(ref, str) and ref in FORECASTERS:
        return FORECASTERS[ref]
    return reference_of(forecaster_class(ref))


def model_name(ref: ForecasterRef) -> str:
    """The label of ``ref``'s forecasts and artifacts: the class's ``name``.

    A built-in name is its own label (nothing is imported).
    """
    if isinstance(ref, str) and ref in FORECASTERS:
        return ref
    return forecaster_class(ref).name


def _label(ref: ForecasterRef) -> str:
    if isinstance(ref, str):
        return ref
    cls = ref if isinstance(ref, type) else type(ref)
    return f"{cls.__module__}:{cls.__qualname__}"


def _constructor_keys(cls: type[Forecaster]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def override_keys(ref: ForecasterRef) -> frozenset[str]:
    """The override keys :func:`build` accepts for ``ref`` (its constructor keywords)."""
    keys = _constructor_keys(forecaster_class(ref))
    return frozenset(keys | TRAINING_FIELDS if "training" in keys else keys)


def build(ref: ForecasterRef, seed: int | None = None, **overrides: Any) -> Forecaster:
    """Forecaster ``ref`` with ``overrides``; ``seed`` seeds training where the model trains.

    ``ref``: a name, import path, entry point or class; an instance is returned
    as it is (and refuses overrides).

    For a model with a ``training`` argument, ``TrainingConfig`` fields among
    the overrides (and ``seed``, unless the overrides set one) update the
    class's default training settings; ``training`` itself may be given as a
    :class:`TrainingConfig` or a dict to start from instead. An unknown key is
    a :class:`ConfigError` naming it and the valid ones.
    """
    name = _label(ref)
    if isinstance(ref, Forecaster):
        forecaster_class(ref)  # the contract check
        if overrides:
            raise ConfigError(
                f"forecaster {name!r}: already built, cannot take {sorted(overrides)}"
            )
        return ref
    cls = forecaster_class(ref)
    valid = override_keys(cls)
    for key in overrides:
        if key not in valid:
            raise ConfigError(
                f"forecaster {name!r}: unknown option {key!r}{did_you_mean(key, valid)}"
            )
    params = dict(overrides)
    if "training" in valid:
        start = params.pop("training", None)
        if start is None:
            start = cls.default_training()
        elif isinstance(start, dict):
            start = TrainingConfig(**start)
        update = {k: params.pop(k) for k in list(params) if k in TRAINING_FIELDS}
        if seed is not None:
            update.setdefault("seed", seed)
        try:
            params["training"] = TrainingConfig(**{**dict(start), **update})
        except ValueError as exc:  # pydantic's ValidationError
            raise ConfigError(f"forecaster {name!r}: bad training option: {exc}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"forecaster {name!r}: bad options {sorted(params)}: {exc}") from None
