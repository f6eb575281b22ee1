"""``registry.build``: forecasters by name with overrides, and clear refusals."""

from __future__ import annotations

import pytest

from kronos.backtest.forecasts import build_forecaster
from kronos.errors import ConfigError
from kronos.models.base import TrainingConfig
from kronos.models.registry import FORECASTERS, build, forecaster_class, override_keys


def test_every_registered_name_builds_with_its_defaults():
    for name in FORECASTERS:
        model = build(name)
        assert isinstance(model, forecaster_class(name)) and model.name == name


def test_training_fields_update_the_class_defaults():
    tft = build("tft", max_steps=7, seed=3)
    # the TFT's own defaults (whitepaper 6.1: 3 epochs, patience 2, scheduler 1) stay
    assert tft.training == TrainingConfig(
        max_epochs=3, patience=2, scheduler_patience=1, max_steps=7, seed=3
    )
    assert build("nbeats", max_steps=300, seed=7).training == TrainingConfig(max_steps=300, seed=7)
    graph = build("mtgnn", max_steps=9, sectors={"A": "X"}, layers=2)
    assert graph.training == forecaster_class("mtgnn").default_training().model_copy(
        update={"max_steps": 9}
    )
    assert (graph.sectors, graph.layers) == ({"A": "X"}, 2)
    # a spec's seed among its params wins over the run's seed; models without training ignore it
    assert build_forecaster("nbeats", {"seed": 2}, seed=1).training.seed == 2
    assert build("ewma", seed=5, lam=0.97).lam == 0.97
    start = TrainingConfig(max_epochs=4)
    assert build("tft", training=start, patience=1).training == TrainingConfig(
        max_epochs=4, patience=1
    )


def test_unknown_name_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown forecaster 'nbeat'.*did you mean 'nbeats'"):
        build("nbeat")
    with pytest.raises(ConfigError, match="unknown forecaster"):
        forecaster_class("prophet")


def test_unknown_override_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'nbeats': unknown option 'max_step'.*'max_steps'"):
        build("nbeats", max_step=10)
    with pytest.raises(ConfigError, match=r"'ewma': unknown option 'max_steps'.*lam"):
        build("ewma", max_steps=10)  # baselines do not train: no TrainingConfig fields
    with pytest.raises(ConfigError, match="bad training option"):
        build("nbeats", max_steps=0)
    assert "max_steps" in override_keys("tft") and "max_symbols" in override_keys("tft")
    assert override_keys("garch") == {"mean", "min_train"}


def test_backtest_builds_through_the_registry():
    model = build_forecaster("nbeats", {"max_steps": 300}, seed=7)
    assert model.get_config() == build("nbeats", max_steps=300, seed=7).get_config()
    with pytest.raises(ConfigError, match="unknown option 'max_epoch'"):
        build_forecaster("tft", {"max_epoch": 1}, seed=0)
