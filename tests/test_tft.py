"""TFT forecaster: contract, no look-ahead, artifacts, training settings.

Tiny networks on a synthetic panel (3 symbols x 300 weekdays of Gaussian
returns): hidden size 8, one attention head, 3 batches per epoch.
"""

from __future__ import annotations

import json
import math
import pickle
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from polars.testing import assert_frame_equal
from torch.optim.lr_scheduler import ReduceLROnPlateau

from kronos.models import tft
from kronos.models.base import FORECAST_SCHEMA, HORIZON, ForecastError, TrainingConfig
from kronos.models.tft import TftForecaster, select_training_rows

N_DAYS = 300
DAYS = [d for d in (date(2020, 1, 1) + timedelta(days=i) for i in range(450)) if d.weekday() < 5][
    :N_DAYS
]
SPLIT = DAYS[240]
VOLS = {"AAA": 0.01, "BBB": 0.02, "CCC": 0.015}
TINY = dict(
    input_size=20, hidden_size=8, attention_heads=1, hidden_continuous_size=4, limit_train_batches=3
)


def make_panel(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.concat(
        pl.DataFrame({"symbol": [s] * N_DAYS, "ts": DAYS, "y": rng.normal(0.0, vol, N_DAYS)})
        for s, vol in VOLS.items()
    )


def split(panel: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return panel.filter(pl.col("ts") < SPLIT), panel.filter(pl.col("ts") >= SPLIT)


def tiny_training(max_epochs: int = 2) -> TrainingConfig:
    return TrainingConfig(
        max_epochs=max_epochs, patience=2, scheduler_patience=1, batch_size=64, accelerator="cpu"
    )


class ListRecorder:
    def __init__(self) -> None:
        self.params: list[dict] = []
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    def log_params(self, params: dict[str, object]) -> None:
        self.params.append(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, metrics))


@pytest.fixture(scope="module")
def panel() -> pl.DataFrame:
    return make_panel()


@pytest.fixture(scope="module")
def fitted(panel: pl.DataFrame) -> tuple[TftForecaster, ListRecorder]:
    train, valid = split(panel)
    recorder = ListRecorder()
    model = TftForecaster(**TINY, training=tiny_training()).fit(train, valid, recorder)
    return model, recorder


def fitted_scaler(model: TftForecaster, directory: Path) -> pd.DataFrame:
    """The saved normaliser's per-symbol (center, scale), indexed by symbol name."""
    model.save(directory)
    with open(directory / "scaler.pkl", "rb") as fh:
        params = pickle.load(fh)
    classes = params["categorical_encoders"]["symbol"].classes_
    names = {code: name for name, code in classes.items()}
    norm = params["target_normalizer"].norm_
    return norm.set_axis([names[c] for c in norm.index]).sort_index()


def test_forecast_schema_and_quantiles(fitted, panel):
    model, _ = fitted
    forecast = model.predict(panel, DAYS[260])
    assert dict(forecast.schema) == FORECAST_SCHEMA
    assert forecast.group_by("symbol").len().sort("symbol")["len"].to_list() == [HORIZON] * 3
    assert forecast["step"].to_list() == list(range(1, HORIZON + 1)) * 3
    assert (forecast["asof"] == DAYS[260]).all()
    assert (forecast["model"] == "tft").all() and (forecast["version"] == model.version).all()
    q = forecast.select("p05", "p50", "p95").to_numpy()
    assert np.isfinite(q).all()
    assert (q[:, 0] <= q[:, 1]).all() and (q[:, 1] <= q[:, 2]).all()
    assert (q[:, 2] - q[:, 0] > 0).all()


def test_no_look_ahead(fitted, panel):
    model, _ = fitted
    cutoff = DAYS[250]
    before = model.predict(panel, cutoff)
    later = pl.col("ts") > cutoff
    changed = panel.with_columns(
        y=pl.when(later & (pl.col("symbol") == "AAA"))
        .then(None)
        .when(later)
        .then(pl.col("y") * 5 + 0.1)
        .otherwise(pl.col("y"))
    )
    assert_frame_equal(model.predict(changed, cutoff), before)
    assert_frame_equal(model.predict(panel.filter(~later), cutoff), before)


def test_decoder_placeholder_is_not_read(fitted, panel, monkeypatch):
    model, _ = fitted
    before = model.predict(panel, DAYS[260])
    monkeypatch.setattr(tft, "DECODER_PLACEHOLDER", 0.37)
    assert_frame_equal(model.predict(panel, DAYS[260]), before)
    # control: an observed return inside the window does move the forecast
    bumped = panel.with_columns(
        y=pl.when(pl.col("ts") == DAYS[260]).then(pl.col("y") + 0.05).otherwise(pl.col("y"))
    )
    moved = model.predict(bumped, DAYS[260])
    assert not np.allclose(moved["p50"].to_numpy(), before["p50"].to_numpy())


def test_save_load_round_trip(fitted, panel, tmp_path):
    model, _ = fitted
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"state.pt", "config.json", "scaler.pkl"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["name"] == "tft" and config["feature_version"] == "log_return_v1"
    assert config["dataset"]["max_encoder_length"] == 20
    loaded = TftForecaster.load(tmp_path)
    assert loaded.version == model.version
    assert loaded.get_config() == model.get_config()
    origins = DAYS[255:262]
    assert_frame_equal(
        loaded.predict_origins(panel, origins), model.predict_origins(panel, origins)
    )


@pytest.mark.parametrize(
    "edit",
    [
        {"format_version": 999},
        {"name": "nbeats"},
        {"feature_version": "log_return_v0"},
        {"quantiles": [0.1, 0.5, 0.9]},
        {"hyper_parameters": {"input_size": 20, "no_such_knob": 1}},
    ],
)
def test_incompatible_config_is_refused(fitted, tmp_path, edit):
    model, _ = fitted
    model.save(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **edit}))
    with pytest.raises(ForecastError, match=r"config\.json"):
        TftForecaster.load(tmp_path)


def test_missing_config_is_refused(tmp_path):
    with pytest.raises(ForecastError, match=r"config\.json"):
        TftForecaster.load(tmp_path)


def test_predict_origins_matches_predict(fitted, panel):
    model, _ = fitted
    origins = DAYS[240:300:7]
    batched = model.predict_origins(panel, origins)
    one_by_one = pl.concat([model.predict(panel, o) for o in origins])
    quantiles = ["p05", "p50", "p95"]
    assert_frame_equal(batched.drop(quantiles), one_by_one.drop(quantiles))
    np.testing.assert_allclose(
        batched.select(quantiles).to_numpy(), one_by_one.select(quantiles).to_numpy(), rtol=1e-6
    )


def test_normaliser_is_fitted_on_train_only(fitted, panel, tmp_path):
    model, _ = fitted
    train, valid = split(panel)
    shifted = valid.with_columns(y=pl.col("y") * 3 + 0.05)
    other = TftForecaster(**TINY, training=tiny_training(max_epochs=1)).fit(train, shifted)
    norm = fitted_scaler(model, tmp_path / "a")
    pd.testing.assert_frame_equal(norm, fitted_scaler(other, tmp_path / "b"))
    # GroupNormalizer "standard": mean and sample std (+ float16 eps) of the training rows
    for symbol, g in train.group_by("symbol"):
        y = g["y"].to_numpy()
        assert norm.loc[symbol[0], "center"] == pytest.approx(y.mean(), rel=1e-9)
        scale = y.std(ddof=1) + np.finfo(np.float16).eps
        assert norm.loc[symbol[0], "scale"] == pytest.approx(scale, rel=1e-9)


def test_training_settings(fitted):
    model, _ = fitted
    trainer = model.trainer_
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, ReduceLROnPlateau)
    assert config.scheduler.min_lrs == [1e-5]
    assert config.scheduler.patience == 1
    assert config.monitor == "val_loss"
    assert trainer.gradient_clip_val == 1.0
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, torch.optim.AdamW)
    assert 0 < optimizer.param_groups[0]["weight_decay"] <= 1e-4
    (stopper,) = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    assert stopper.patience == 2 and stopper.monitor == "val_loss"
    assert model.network_.hparams.dropout <= 0.1
    assert model.network_.loss.quantiles == [0.05, 0.5, 0.95]
    assert model.network_.hparams.max_encoder_length == model.input_size == 20


def test_default_training_follows_the_whitepaper():
    config = TftForecaster.default_training()
    assert (config.max_epochs, config.patience, config.scheduler_patience) == (3, 2, 1)
    assert config.min_lr == 1e-5 and config.gradient_clip == 1.0 and config.weight_decay <= 1e-4
    model = TftForecaster()
    assert (model.input_size, model.max_symbols, model.max_tail) == (90, 200, 400)


def test_recorder_gets_per_epoch_losses(fitted):
    model, recorder = fitted
    assert [step for step, _ in recorder.metrics] == [0, 1]
    for _, metrics in recorder.metrics:
        assert {"train_loss", "valid_loss", "lr"} <= metrics.keys()
        assert all(math.isfinite(v) for v in metrics.values())
    assert [row["epoch"] for row in model.history_] == [0, 1]


def test_select_training_rows_ranks_by_count_then_name():
    panel = make_panel().filter(~((pl.col("symbol") == "AAA") & (pl.col("ts") < DAYS[50])))
    rows = select_training_rows(panel, max_symbols=2, max_tail=60, min_length=25)
    # AAA has 250 rows, BBB and CCC 300 each
    assert rows.group_by("symbol").len().sort("symbol").rows() == [("BBB", 60), ("CCC", 60)]
    assert rows.filter(pl.col("symbol") == "BBB")["ts"].to_list() == DAYS[-60:]
    # the BBB/CCC tie goes by name
    assert select_training_rows(panel, 1, 60, min_length=25)["symbol"].unique().to_list() == ["BBB"]
    assert select_training_rows(panel, 5, 400, min_length=260)[
        "symbol"
    ].unique().sort().to_list() == [
        "BBB",
        "CCC",
    ]


def test_max_symbols_and_max_tail_are_honoured(panel, tmp_path):
    train = split(panel)[0].filter(~((pl.col("symbol") == "BBB") & (pl.col("ts") < DAYS[30])))
    model = TftForecaster(
        **{**TINY, "limit_train_batches": 1},
        max_symbols=2,
        max_tail=60,
        training=tiny_training(max_epochs=1),
    ).fit(train)  # no validation rows: no early stopping, no LR schedule
    assert model.symbols_ == ["AAA", "CCC"]
    norm = fitted_scaler(model, tmp_path)
    assert list(norm.index) == ["AAA", "CCC"]
    tail = train.filter(pl.col("symbol") == "AAA")["y"].to_numpy()[-60:]
    assert norm.loc["AAA", "center"] == pytest.approx(tail.mean(), rel=1e-9)
    assert model.predict(panel, DAYS[260], ["AAA", "CCC"]).height == 2 * HORIZON
    assert set(model.predict(panel, DAYS[260])["symbol"]) == {"AAA", "CCC"}
    with pytest.raises(ForecastError, match="BBB"):
        model.predict(panel, DAYS[260], ["AAA", "BBB"])


def test_bad_input_names_the_symbol(fitted, panel):
    model, _ = fitted
    with pytest.raises(ForecastError, match="AAA"):
        model.predict(panel, DAYS[10], ["AAA"])  # 11 returns, needs 20
    holed = panel.with_columns(
        y=pl.when((pl.col("symbol") == "BBB") & (pl.col("ts") == DAYS[255]))
        .then(float("nan"))
        .otherwise(pl.col("y"))
    )
    with pytest.raises(ForecastError, match="BBB"):
        model.predict(holed, DAYS[258])
    with pytest.raises(ForecastError, match="ZZZ"):
        model.predict(panel, DAYS[260], ["AAA", "ZZZ"])  # not in the panel
    stranger = pl.concat(
        [panel, panel.filter(pl.col("symbol") == "AAA").with_columns(symbol=pl.lit("ZZZ"))]
    )
    with pytest.raises(ForecastError, match="ZZZ"):
        model.predict(stranger, DAYS[260], ["ZZZ"])  # in the panel, never trained on


def test_validation_rows_must_follow_training_rows(panel):
    train, _ = split(panel)
    with pytest.raises(ForecastError, match="AAA"):
        TftForecaster(**TINY, training=tiny_training(1)).fit(
            train, train.filter(pl.col("symbol") == "AAA")
        )
