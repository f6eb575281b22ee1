"""Forecasters by name, imported only when asked for (torch and friends are slow to load)."""

from __future__ import annotations

import importlib

from kronos.models.base import Forecaster

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


def forecaster_class(name: str) -> type[Forecaster]:
    """The class registered as ``name``."""
    if name not in FORECASTERS:
        raise ValueError(f"unknown forecaster {name!r}; one of {sorted(FORECASTERS)}")
    module, _, attr = FORECASTERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
