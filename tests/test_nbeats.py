"""N-BEATS forecaster: contract, no look-ahead, artifacts, batching, training settings.

One tiny network (3 symbols x 400 synthetic days, 2 hidden layers of 16 units,
20 steps) is fitted once per module; a few tests fit another for a few steps.
"""

from __future__ import annotations

import json
import math
import pickle
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from fakes.calendar_days import weekdays
from neuralforecast.losses.pytorch import MQLoss
from neuralforecast.models import NBEATS
from neuralforecast.tsdataset import TimeSeriesDataset
from pytorch_lightning.callbacks import EarlyStopping
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

from kronos.models.base import FORECAST_SCHEMA, ForecastError, TrainingConfig
from kronos.models.lightning import quiet_lightning
from kronos.models.nbeats import (
    VAL_LOSS_KEY,
    NBeatsDefaultForecaster,
    NBeatsForecaster,
    library_default_nbeats,
    lightweight_nbeats,
)
from kronos.models.nbeats_net import KronosNBEATS, to_nixtla

SYMBOLS = ["AAA", "BBB", "CCC"]
N_DAYS = 400
N_VALID = 80
INPUT = 30
TINY = {"mlp_units": ((16, 16), (16, 16)), "val_check_steps": 5, "windows_batch_size": 64}


DAYS = weekdays(date(2015, 1, 1), N_DAYS)
CUT = DAYS[N_DAYS - N_VALID]


def _panel(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    vols = [0.01, 0.02, 0.03]  # different scales per symbol
    return pl.DataFrame(
        {
            "symbol": np.repeat(SYMBOLS, N_DAYS).tolist(),
            "ts": DAYS * len(SYMBOLS),
            "y": np.concatenate([v * rng.standard_normal(N_DAYS) for v in vols]),
        },
        schema={"symbol": pl.String, "ts": pl.Date, "y": pl.Float64},
    )


PANEL = _panel()
TRAIN = PANEL.filter(pl.col("ts") < CUT)
VALID = PANEL.filter(pl.col("ts") >= CUT)


class ListRecorder:
    def __init__(self):
        self.params: list[dict] = []
        self.metrics: list[tuple[int | None, dict]] = []

    def log_params(self, params):
        self.params.append(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, metrics))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny networks run fastest on one thread; two thrash on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**training) -> NBeatsForecaster:
    return NBeatsForecaster(
        input_size=INPUT, training=TrainingConfig(max_steps=20, **training), **TINY
    )


@pytest.fixture(scope="module")
def fitted():
    recorder = ListRecorder()
    model = _tiny().fit(TRAIN, VALID, recorder=recorder)
    return model, recorder


def test_forecast_frame_contract(fitted):
    model, _ = fitted
    asof = DAYS[-1]
    fc = model.predict(PANEL, asof)
    assert fc.schema == pl.Schema(FORECAST_SCHEMA)
    assert fc.height == len(SYMBOLS) * 5
    assert fc.group_by("symbol").agg(pl.col("step").sort()).sort("symbol")["step"].to_list() == [
        [1, 2, 3, 4, 5]
    ] * len(SYMBOLS)
    assert (fc["asof"] == asof).all()
    assert fc["target_ts"].min() > asof
    assert (fc["model"] == "nbeats").all() and (fc["version"] == model.version).all()
    assert ((fc["p05"] <= fc["p50"]) & (fc["p50"] <= fc["p95"])).all()
    assert np.isfinite(fc.select("p05", "p50", "p95").to_numpy()).all()


def test_no_look_ahead(fitted):
    model, _ = fitted
    cutoff = DAYS[300]
    before = model.predict(PANEL, cutoff)
    changed = PANEL.with_columns(
        pl.when(pl.col("ts") > cutoff).then(pl.lit(float("nan"))).otherwise(pl.col("y")).alias("y")
    )
    assert model.predict(changed, cutoff).equals(before)
    shifted = PANEL.with_columns(
        pl.when(pl.col("ts") > cutoff).then(pl.col("y") * 50 + 1).otherwise(pl.col("y")).alias("y")
    )
    assert model.predict_origins(shifted, [cutoff]).equals(before)


def test_save_load_round_trip(fitted, tmp_path: Path):
    model, _ = fitted
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"state.pt", "config.json", "scaler.pkl"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["name"] == "nbeats" and config["feature_version"] == "log_return_v1"
    assert config["training"] == TrainingConfig(max_steps=20).model_dump()
    loaded = NBeatsForecaster.load(tmp_path)
    assert loaded.version == model.version
    assert loaded.get_config() == model.get_config()
    for asof in (DAYS[200], DAYS[-1]):
        assert loaded.predict(PANEL, asof).equals(model.predict(PANEL, asof))


@pytest.mark.parametrize(
    ("key", "value"),
    [("name", "tft"), ("format_version", 99), ("input_size", INPUT + 1), ("input_size", "90")],
)
def test_incompatible_config_refused(fitted, tmp_path: Path, key, value):
    model, _ = fitted
    model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ForecastError, match=r"config\.json"):
        NBeatsForecaster.load(tmp_path)


def test_scaler_pkl_is_read_without_running_code(fitted, tmp_path: Path):
    model, _ = fitted
    model.save(tmp_path)
    with (tmp_path / "scaler.pkl").open("wb") as f:
        pickle.dump({"AAA": np.float64(0.01)}, f)  # needs numpy's reconstructor: refused
    with pytest.raises(ForecastError, match=r"scaler\.pkl"):
        NBeatsForecaster.load(tmp_path)
    (tmp_path / "scaler.pkl").unlink()
    with pytest.raises(ForecastError, match=r"scaler\.pkl"):
        NBeatsForecaster.load(tmp_path)


def test_default_artifact_is_not_an_nbeats_artifact(tmp_path: Path):
    model = NBeatsDefaultForecaster(input_size=INPUT, overrides={"max_steps": 2})
    model.fit(TRAIN).save(tmp_path)
    with pytest.raises(ForecastError, match=r"config.json.*nbeats_default"):
        NBeatsForecaster.load(tmp_path)


def test_predict_origins_equals_predict(fitted):
    model, _ = fitted
    origins = [DAYS[i] for i in (120, 200, 250, 321, N_DAYS - 1)]
    batched = model.predict_origins(PANEL, origins, symbols=["CCC", "AAA"])
    one_by_one = pl.concat([model.predict(PANEL, o, symbols=["CCC", "AAA"]) for o in origins])
    keys = ["symbol", "asof", "step", "target_ts", "model", "version"]
    assert batched.select(keys).equals(one_by_one.select(keys))
    np.testing.assert_allclose(
        batched.select("p05", "p50", "p95").to_numpy(),
        one_by_one.select("p05", "p50", "p95").to_numpy(),
        rtol=1e-6,
    )


def test_fast_path_equals_neuralforecast_predict(fitted):
    """The batched torch path gives what neuralforecast's own predict gives."""
    model, _ = fitted
    asof = DAYS[350]
    past = PANEL.filter(pl.col("ts") <= asof).sort("symbol", "ts")
    ys = [past.filter(pl.col("symbol") == s)["y"].to_numpy() / model.scales_[s] for s in SYMBOLS]
    frame = to_nixtla(
        np.array(SYMBOLS, dtype=object), np.concatenate(ys), np.array([len(y) for y in ys])
    )
    dataset, *_ = TimeSeriesDataset.from_df(frame, id_col="unique_id", time_col="ds")
    with quiet_lightning(True):
        reference = model.network_.predict(dataset).reshape(len(SYMBOLS), 5, 3)
    reference = np.sort(reference * np.array([model.scales_[s] for s in SYMBOLS])[:, None, None])
    ours = model.predict(PANEL, asof).select("p05", "p50", "p95").to_numpy()
    # neuralforecast computes in float32, we in float64: float32 rounding of ~1% returns
    np.testing.assert_allclose(ours.reshape(len(SYMBOLS), 5, 3), reference, rtol=1e-5, atol=1e-8)


def test_symbol_scale_fitted_on_train_only(fitted, tmp_path: Path):
    model, _ = fitted
    expected = {
        s: float(np.std(TRAIN.filter(pl.col("symbol") == s)["y"].to_numpy(), ddof=1))
        for s in SYMBOLS
    }
    assert model.scales_ == pytest.approx(expected, rel=1e-12)

    noisy_valid = VALID.with_columns(pl.col("y") * 100)
    other = _tiny().fit(TRAIN, noisy_valid)
    other.save(tmp_path)
    with (tmp_path / "scaler.pkl").open("rb") as f:
        assert pickle.load(f) == model.scales_


def test_unseen_symbol_takes_median_scale(fitted):
    model, _ = fitted
    new = PANEL.filter(pl.col("symbol") == "BBB").with_columns(pl.lit("NEW").alias("symbol"))
    fc = model.predict(pl.concat([PANEL, new]), DAYS[-1], symbols=["NEW", "BBB"])
    np.testing.assert_allclose(  # BBB's scale is the median of (0.01, 0.02, 0.03)-ish scales
        fc.filter(pl.col("symbol") == "NEW").select("p05", "p50", "p95").to_numpy(),
        fc.filter(pl.col("symbol") == "BBB").select("p05", "p50", "p95").to_numpy(),
    )


def test_recorder_gets_losses_per_validation_check(fitted):
    model, recorder = fitted
    assert len(recorder.params) == 1
    assert recorder.params[0]["training.weight_decay"] == 1e-4
    steps = [step for step, _ in recorder.metrics]
    assert steps == [5, 10, 15, 20]
    for _, metrics in recorder.metrics:
        assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["valid_loss"])
        assert metrics["lr"] > 0
    assert [h["step"] for h in model.history_] == steps
    assert model.fit_info_["val_size"] == N_VALID


def test_training_settings_reach_lightning(fitted):
    model, _ = fitted
    trainer = model.trainer_
    assert trainer.gradient_clip_val == 1.0
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, ReduceLROnPlateau)
    assert config.scheduler.min_lrs == [1e-5]
    assert config.scheduler.patience == TrainingConfig().scheduler_patience
    assert config.monitor == VAL_LOSS_KEY
    # stepped once per validation check, not once per training step
    assert config.scheduler.last_epoch == len(model.history_) == 4
    stopper = trainer.early_stopping_callback
    assert isinstance(stopper, EarlyStopping)
    assert stopper.monitor == VAL_LOSS_KEY and stopper.patience == TrainingConfig().patience
    net = model.network_
    assert isinstance(net.loss, MQLoss) and isinstance(net.valid_loss, MQLoss)
    assert net.loss.quantiles.tolist() == pytest.approx([0.05, 0.5, 0.95])
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == TrainingConfig().dropout for m in dropouts)


def test_without_valid_no_early_stopping_constant_lr():
    recorder = ListRecorder()
    model = _tiny().fit(TRAIN, recorder=recorder)
    assert model.trainer_.lr_scheduler_configs == []
    assert model.trainer_.early_stopping_callback is None
    assert all(m["valid_loss"] is None for _, m in recorder.metrics)


def test_patience_counts_validation_checks():
    """A learning rate too small to move float32 weights keeps the valid loss flat."""
    model = _tiny(learning_rate=1e-12, min_lr=1e-15, patience=2, scheduler_patience=1)
    model.fit(TRAIN, VALID)
    assert len({h["valid_loss"] for h in model.history_}) == 1
    # checks at steps 5, 10, 15: best at the first, two without improvement -> stop
    assert model.fit_info_["stopped_step"] == 15 and model.fit_info_["best_step"] == 5
    # ReduceLROnPlateau: 2 checks without improvement > scheduler_patience 1 -> halved once
    assert model.trainer_.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5e-12)


def test_best_weights_are_restored():
    """Seeded run whose valid loss is best at step 15 of 20 (found by trying seeds)."""
    training = {"learning_rate": 0.1, "patience": 3, "seed": 1}
    full = _tiny(**training).fit(TRAIN, VALID)
    losses = [h["valid_loss"] for h in full.history_]
    assert [h["step"] for h in full.history_] == [5, 10, 15, 20]
    assert full.fit_info_["best_step"] == 15 and losses[3] > losses[2], losses
    # the same seeded run stopped at step 15 ends with the weights that were restored
    same = NBeatsForecaster(
        input_size=INPUT, training=TrainingConfig(max_steps=15, **training), **TINY
    ).fit(TRAIN, VALID)
    assert same.history_ == full.history_[:3]
    assert (
        full.predict(PANEL, DAYS[-1])
        .drop("version")
        .equals(same.predict(PANEL, DAYS[-1]).drop("version"))
    )


def test_sampler_draws_neuralforecast_windows():
    """The fast training-window sampler draws from exactly neuralforecast's windows."""
    rng = np.random.default_rng(3)
    lengths = np.array([60, 45, 52])
    frame = to_nixtla(np.array(SYMBOLS, dtype=object), rng.standard_normal(lengths.sum()), lengths)
    dataset, *_ = TimeSeriesDataset.from_df(frame, id_col="unique_id", time_col="ds")
    with quiet_lightning(True):
        net = KronosNBEATS(
            h=5, input_size=10, loss=MQLoss(quantiles=[0.05, 0.5, 0.95]), windows_batch_size=4000,
            mlp_units=[[4, 4]], weight_decay=0.0, scheduler_patience=1, min_lr=1e-5, dropout=0.0,
        )  # fmt: skip
    net.val_size = 7
    batch = {  # what neuralforecast's loader yields: series left-padded to one length
        "temporal": torch.stack([dataset[i]["temporal"] for i in range(len(SYMBOLS))]),
        "temporal_cols": dataset.temporal_cols,
        "y_idx": 0,
        "static": None,
        "static_cols": None,
    }
    ours, *_ = net._create_windows(batch, "train")
    theirs, _, _, keep, _, _ = NBEATS._create_windows(net, batch, "train")  # the library's
    reference = {tuple(w.flatten().tolist()) for w in theirs[keep]}
    drawn = {tuple(w.flatten().tolist()) for w in ours}
    assert ours.shape[1:] == theirs.shape[1:] and len(ours) == 4000
    assert drawn == reference  # 4000 draws with replacement cover all ~130 windows


@pytest.mark.parametrize("where", ["predict", "predict_origins"])
def test_bad_input_names_the_symbol(fitted, where):
    model, _ = fitted

    def run(panel, asof, symbols):
        if where == "predict":
            return model.predict(panel, asof, symbols)
        return model.predict_origins(panel, [DAYS[-1], asof], symbols)

    with pytest.raises(ForecastError, match="ZZZ"):
        run(PANEL, DAYS[-1], ["AAA", "ZZZ"])
    with pytest.raises(ForecastError, match="symbol BBB: 20 returns"):
        run(PANEL, DAYS[19], ["BBB"])
    holed = PANEL.with_columns(
        pl.when((pl.col("symbol") == "CCC") & (pl.col("ts") == DAYS[250]))
        .then(float("nan"))
        .otherwise(pl.col("y"))
        .alias("y")
    )
    with pytest.raises(ForecastError, match="symbol CCC: NaN"):
        run(holed, DAYS[260], None)
    assert run(holed, DAYS[250 + INPUT], None).height > 0  # hole just left the window


def test_fit_refuses_bad_panels():
    model = _tiny()
    with pytest.raises(ForecastError, match="symbol BBB: no valid rows"):
        model.fit(TRAIN, VALID.filter(pl.col("symbol") != "BBB"))
    with pytest.raises(ForecastError, match="symbol AAA: valid rows do not follow"):
        model.fit(TRAIN, PANEL.filter(pl.col("ts") >= DAYS[100]))
    short = TRAIN.filter((pl.col("symbol") != "CCC") | (pl.col("ts") < DAYS[20]))
    with pytest.raises(ForecastError, match="symbol CCC: 20 train returns"):
        model.fit(short)
    holed = TRAIN.with_columns(
        pl.when(pl.col("ts") == DAYS[5]).then(float("nan")).otherwise(pl.col("y")).alias("y")
    )
    with pytest.raises(ForecastError, match="symbol AAA: NaN"):
        model.fit(holed)


def test_unequal_valid_lengths_use_the_shortest():
    recorder = ListRecorder()
    valid = VALID.filter((pl.col("symbol") != "AAA") | (pl.col("ts") < DAYS[N_DAYS - 30]))
    model = _tiny(max_epochs=1).fit(TRAIN, valid, recorder=recorder)
    assert model.fit_info_["val_size"] == N_VALID - 30


def test_library_default_is_neuralforecast_defaults_with_mqloss():
    model = library_default_nbeats()
    assert isinstance(model, NBeatsDefaultForecaster) and model.name == "nbeats_default"
    assert model.get_config()["overrides"] == {}
    with quiet_lightning(True):
        net, info = model._make_network(has_valid=True, n_windows=1000)
    assert isinstance(net.loss, MQLoss) and isinstance(net.valid_loss, MQLoss)
    assert (info["max_steps"], net.learning_rate, net.scaler.scaler_type) == (
        1000,
        1e-3,
        "identity",
    )
    assert net.early_stop_patience_steps == -1 and net.windows_batch_size == 1024

    tiny = NBeatsDefaultForecaster(
        input_size=INPUT, overrides={"max_steps": 10, "val_check_steps": 5, "mlp_units": [[8, 8]]}
    ).fit(TRAIN, VALID)
    assert isinstance(tiny.trainer_.lr_scheduler_configs[0].scheduler, StepLR)
    assert tiny.scales_ == dict.fromkeys(SYMBOLS, 1.0)
    fc = tiny.predict(PANEL, DAYS[-1])
    assert fc.schema == pl.Schema(FORECAST_SCHEMA) and (fc["model"] == "nbeats_default").all()
    assert ((fc["p05"] <= fc["p50"]) & (fc["p50"] <= fc["p95"])).all()


def test_lightweight_is_small():
    model = lightweight_nbeats()
    assert model.name == "nbeats" and model.input_size == 90 and model.horizon == 5
    with quiet_lightning(True):
        net, _ = model._make_network(has_valid=True, n_windows=100_000)
    assert sum(p.numel() for p in net.parameters()) < 100_000
