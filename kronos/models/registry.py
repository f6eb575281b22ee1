"""Forecasters by name, imported only when asked for (torch and friends are slow to load).

:func:`build` is the one place a forecaster is made from a name and keyword
overrides: the backtest, the benchmarks, training and the forecasting fallback
call it (``kronos train`` and the retrain notebook should too). Overrides are
the class's constructor keywords and, for the neural models, the fields of
:class:`~kronos.models.base.TrainingConfig` (applied over the class's
:meth:`~kronos.models.base.Forecaster.default_training`); anything else is
refused by name.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from kronos.config import did_you_mean
from kronos.errors import ConfigError
from kronos.models.base import Forecaster, TrainingConfig

__all__ = ["FORECASTERS", "build", "forecaster_class", "override_keys"]

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
}
TRAINING_FIELDS = frozenset(TrainingConfig.model_fields)


def forecaster_class(name: str) -> type[Forecaster]:
    """The class registered as ``name``; an unknown name names the nearest valid one."""
    if name not in FORECASTERS:
        raise ConfigError(f"unknown forecaster {name!r}{did_you_mean(name, FORECASTERS)}")
    module, _, attr = FORECASTERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _constructor_keys(cls: type[Forecaster]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def override_keys(name: str) -> frozenset[str]:
    """The override keys :func:`build` accepts for ``name``."""
    keys = _constructor_keys(forecaster_class(name))
    return frozenset(keys | TRAINING_FIELDS if "training" in keys else keys)


def build(name: str, seed: int | None = None, **overrides: Any) -> Forecaster:
    """Forecaster ``name`` with ``overrides``; ``seed`` seeds training where the model trains.

    For a model with a ``training`` argument, ``TrainingConfig`` fields among
    the overrides (and ``seed``, unless the overrides set one) update the
    class's default training settings; ``training`` itself may be given as a
    :class:`TrainingConfig` or a dict to start from instead. An unknown key is
    a :class:`ConfigError` naming it and the valid ones.
    """
    cls = forecaster_class(name)
    valid = override_keys(name)
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
            params["training"] = TrainingConfig(**{**start.model_dump(), **update})
        except ValueError as exc:  # pydantic's ValidationError
            raise ConfigError(f"forecaster {name!r}: bad training option: {exc}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"forecaster {name!r}: bad options {sorted(params)}: {exc}") from None
