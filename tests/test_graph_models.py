"""Graph layer: sector-normalised returns, the inter-asset graph, StemGNN and MTGNN.

Synthetic universe: 6 symbols in 3 sectors (one without a sector) x 320
weekdays, returns = market + sector factor + noise. The networks are tiny
(20-day inputs, 4 MTGNN channels, StemGNN multi_layer 1) and trained for a few
steps: these tests check contracts, look-ahead and artifacts, not skill.
"""

from __future__ import annotations

import io
import json
import pickle
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from fakes.calendar_days import weekdays
from neuralforecast.losses.pytorch import MQLoss
from neuralforecast.models import StemGNN
from torch.optim.lr_scheduler import ReduceLROnPlateau

from kronos.bench.forecast import GRAPH, build, run_forecast_bench
from kronos.features.graph import (
    combine_graph,
    inter_asset_graph,
    return_correlation,
    sector_adjacency,
    sector_normalize,
    sector_scales,
)
from kronos.models.artifacts import REQUIRED_FILES, latest_artifact, load_promoted
from kronos.models.base import FORECAST_SCHEMA, QUANTILES, ForecastError, TrainingConfig
from kronos.models.graph_data import read_graph
from kronos.models.graph_train import GraphModule, pinball_loss
from kronos.models.mtgnn import MtgnnForecaster, MtgnnPriorForecaster, read_learned_graph
from kronos.models.registry import forecaster_class
from kronos.models.split import train_valid_split
from kronos.models.stemgnn import StemGnnForecaster, _KronosStemGNN
from kronos.models.training import train_and_gate

SYMBOLS = ["AAA", "AAB", "BBA", "BBB", "CCA", "ZZZ"]
SECTORS = {"AAA": "Alpha", "AAB": "Alpha", "BBA": "Beta", "BBB": "Beta", "CCA": "Gamma"}
N_DAYS = 320
INPUT = 20


DAYS = weekdays(date(2019, 1, 1), N_DAYS)


def _panel(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    market = 0.008 * rng.standard_normal(N_DAYS)
    sector = {k: 0.01 * rng.standard_normal(N_DAYS) for k in ("Alpha", "Beta", "Gamma")}
    frames = []
    for i, s in enumerate(SYMBOLS):
        y = market + 0.006 * (1 + i % 3) * rng.standard_normal(N_DAYS)
        if s in SECTORS:
            y = y + sector[SECTORS[s]]
        frames.append(pl.DataFrame({"symbol": s, "ts": DAYS, "y": y}))
    return pl.concat(frames)


PANEL = _panel()
TRAIN, VALID = train_valid_split(PANEL, valid_days=60, valid_frac=0.2)
CUTOFF = VALID["ts"].min()
TINY_TRAINING = TrainingConfig(max_steps=6, batch_size=8, patience=2, scheduler_patience=1)
TINY_MTGNN = {
    "layers": 2,
    "conv_channels": 4,
    "residual_channels": 4,
    "skip_channels": 8,
    "end_channels": 8,
    "node_dim": 4,
    "subgraph_size": 3,
}


def _tiny(cls, **kw):
    arch = TINY_MTGNN if issubclass(cls, MtgnnForecaster) else {}
    options = {"sectors": SECTORS, "training": TINY_TRAINING, "val_check_steps": 3, **arch, **kw}
    return cls(input_size=INPUT, **options)


def _after_cutoff_altered(panel: pl.DataFrame, cutoff: date, seed: int = 9) -> pl.DataFrame:
    """Every row on or after ``cutoff`` given other values, plus a new symbol's rows."""
    late = pl.col("ts") >= cutoff
    tail = panel.filter(late)
    noise = np.random.default_rng(seed).standard_normal(tail.height) * 0.05
    changed = pl.concat(
        [
            panel.filter(~late),
            tail.with_columns(y=pl.Series(noise)),
            pl.DataFrame({"symbol": "NEW", "ts": [d for d in DAYS if d >= cutoff], "y": 0.01}),
        ]
    )
    assert not changed.filter(late, pl.col("symbol") != "NEW").equals(tail)
    return changed


# ------------------------------------------------------------------ features


def test_sector_scales_pool_each_sector_before_the_cutoff():
    scales = {r["symbol"]: r for r in sector_scales(PANEL, SECTORS, CUTOFF).iter_rows(named=True)}
    past = PANEL.filter(pl.col("ts") < CUTOFF)
    alpha = past.filter(pl.col("symbol").is_in(["AAA", "AAB"]))["y"].to_numpy()
    # reference: numpy's mean and sample std of the pooled sector returns
    assert scales["AAA"]["mean"] == pytest.approx(alpha.mean(), rel=1e-12)
    assert scales["AAB"]["std"] == pytest.approx(alpha.std(ddof=1), rel=1e-12)
    own = past.filter(pl.col("symbol") == "ZZZ")["y"].to_numpy()  # no sector: its own group
    assert scales["ZZZ"]["std"] == pytest.approx(own.std(ddof=1), rel=1e-12)
    assert scales["ZZZ"]["sector"] is None and scales["CCA"]["group"] == "sector:Gamma"
    z = sector_normalize(PANEL, sector_scales(PANEL, SECTORS, CUTOFF))
    before = z.filter(pl.col("ts") < CUTOFF, pl.col("symbol").is_in(["AAA", "AAB"]))["z"]
    assert before.mean() == pytest.approx(0.0, abs=1e-12)
    assert before.std() == pytest.approx(1.0, rel=1e-12)


def test_return_correlation_matches_numpy_on_the_trailing_window():
    window = 100
    corr = return_correlation(PANEL, SYMBOLS, CUTOFF, window=window, min_periods=10)
    wide = (
        PANEL.filter(pl.col("ts") < CUTOFF)
        .pivot(on="symbol", index="ts", values="y")
        .sort("ts")
        .tail(window)
        .select(SYMBOLS)
        .to_numpy()
    )
    np.testing.assert_allclose(corr, np.corrcoef(wide, rowvar=False), rtol=0, atol=1e-12)
    # pairwise over common days: drop 30 days of one symbol
    gappy = PANEL.filter(~((pl.col("symbol") == "AAA") & pl.col("ts").is_in(DAYS[150:180])))
    corr = return_correlation(gappy, ["AAA", "AAB"], CUTOFF, window=window, min_periods=10)
    days = [d for d in DAYS if d < CUTOFF][-window:]
    both = [d for d in days if not DAYS[150] <= d < DAYS[180]]
    pair = (
        PANEL.filter(pl.col("ts").is_in(both))
        .pivot(on="symbol", index="ts", values="y")
        .select("AAA", "AAB")
        .to_numpy()
    )
    assert corr[0, 1] == pytest.approx(np.corrcoef(pair, rowvar=False)[0, 1], abs=1e-12)
    too_few = return_correlation(gappy, ["AAA", "AAB"], CUTOFF, window=window, min_periods=99)
    assert too_few[0, 1] == 0.0 and too_few[0, 0] == 1.0


def test_combined_graph_is_sectors_plus_strong_correlations():
    sector = sector_adjacency(SYMBOLS, SECTORS)
    assert sector[0, 1] == sector[1, 0] == 1.0 and sector[0, 2] == 0.0
    assert sector[5].sum() == 0.0 and np.trace(sector) == 0.0  # ZZZ: no sector, no edge
    corr = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, -0.6], [0.1, -0.6, 1.0]])
    adj = combine_graph(np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]]), corr, 0.25, 0.3)
    np.testing.assert_allclose(adj, [[0, 0.375, 0.25], [0.375, 0, 0], [0.25, 0, 0]])
    graph = inter_asset_graph(PANEL, SYMBOLS, SECTORS, CUTOFF, min_correlation=0.2)
    assert (graph.adjacency >= 0).all() and np.allclose(graph.adjacency, graph.adjacency.T)
    edges = graph.edges()
    assert edges.height == np.count_nonzero(graph.adjacency)
    # same-sector names share a factor: their correlation clears the threshold
    assert graph.correlation[0, 1] > 0.2 and graph.adjacency[0, 1] > 0.5


def test_graph_and_normalised_inputs_ignore_every_row_after_the_cutoff():
    altered = _after_cutoff_altered(PANEL, CUTOFF)
    for frame in (PANEL, altered):
        assert frame["ts"].max() > CUTOFF
    a = inter_asset_graph(PANEL, SYMBOLS, SECTORS, CUTOFF)
    b = inter_asset_graph(altered, SYMBOLS, SECTORS, CUTOFF)
    for name in ("sector", "correlation", "adjacency"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    scales_a = sector_scales(PANEL, SECTORS, CUTOFF, SYMBOLS)
    scales_b = sector_scales(altered, SECTORS, CUTOFF, SYMBOLS)
    assert scales_a.equals(scales_b)
    before = pl.col("ts") < CUTOFF
    assert (
        sector_normalize(PANEL, scales_a)
        .filter(before)
        .equals(sector_normalize(altered, scales_b).filter(before))
    )


def test_pinball_loss_matches_the_definition():
    q = torch.tensor([[-1.0, 0.0, 2.0]])
    y = torch.tensor([0.5])
    total, count = pinball_loss(q, y, torch.ones(1), torch.tensor(QUANTILES))
    # 0.05 * 1.5, 0.5 * 0.5, (1 - 0.95) * 1.5: averaged over the levels
    assert float(total / count) == pytest.approx((0.075 + 0.25 + 0.075) / 3)
    total, count = pinball_loss(q, y, torch.zeros(1), torch.tensor(QUANTILES))
    assert float(total) == 0.0 and float(count) == 0.0


# -------------------------------------------------------------------- models

MODELS = [StemGnnForecaster, MtgnnForecaster]


@pytest.fixture(scope="module")
def fitted() -> dict[str, object]:
    return {cls.name: _tiny(cls).fit(TRAIN, VALID) for cls in MODELS}


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.name)
def test_forecast_frame_contract(fitted, cls):
    model = fitted[cls.name]
    out = model.predict(PANEL, DAYS[-1])
    assert out.schema == pl.Schema(FORECAST_SCHEMA)
    assert out.height == len(SYMBOLS) * 5 and set(out["symbol"]) == set(SYMBOLS)
    assert (out["model"] == cls.name).all() and (out["version"] == model.version).all()
    assert (out["p05"] <= out["p50"]).all() and (out["p50"] <= out["p95"]).all()
    assert out.select(pl.col("p05", "p50", "p95").is_finite().all()).row(0) == (True,) * 3
    # outputs are on each symbol's return scale: intervals of the volatile names are wider
    width = out.group_by("symbol").agg((pl.col("p95") - pl.col("p05")).mean().alias("w"))
    assert width["w"].min() > 0 and width["w"].max() < 1.0
    fit = model.fit_info_
    assert fit["cutoff"] == str(CUTOFF) and fit["stopped_step"] == 6
    assert [h["step"] for h in model.history_] == [3, 6]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.name)
def test_predictions_do_not_see_later_bars(fitted, cls):
    model = fitted[cls.name]
    origin = DAYS[250]
    altered = _after_cutoff_altered(PANEL, DAYS[251], seed=3)
    a = model.predict_origins(PANEL, [DAYS[200], origin])
    b = model.predict_origins(altered, [DAYS[200], origin])
    assert a.equals(b)
    # an origin reads its own day: changing the origin's bars does change the forecast
    c = model.predict(_after_cutoff_altered(PANEL, origin, seed=3), origin)
    assert not c.equals(model.predict(PANEL, origin))


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.name)
def test_predict_origins_equals_predict(fitted, cls):
    model = fitted[cls.name]
    origins = DAYS[-12:-2]
    batched = model.predict_origins(PANEL, origins, ["BBB", "AAA"])
    single = pl.concat([model.predict(PANEL, o, ["BBB", "AAA"]) for o in origins])
    assert batched.drop("p05", "p50", "p95").equals(single.drop("p05", "p50", "p95"))
    # float64 convolutions round differently with the batch size (seen: 1e-15)
    q = ["p05", "p50", "p95"]
    np.testing.assert_allclose(batched.select(q), single.select(q), rtol=0, atol=1e-12)
    assert batched["symbol"].unique(maintain_order=True).to_list() == ["BBB", "AAA"]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.name)
def test_save_load_round_trip(fitted, cls, tmp_path: Path):
    model = fitted[cls.name]
    model.save(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"state.pt", "config.json", "scaler.pkl", "graph.npz"} <= files
    loaded = cls.load(tmp_path)
    assert loaded.version == model.version
    origins = DAYS[-30:]
    assert loaded.predict_origins(PANEL, origins).equals(model.predict_origins(PANEL, origins))
    graph = read_graph(tmp_path / "graph.npz")
    assert graph.symbols == tuple(SYMBOLS) and graph.cutoff == CUTOFF
    np.testing.assert_array_equal(graph.adjacency, model.graph_.adjacency)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["hyper_parameters"]["sectors"] == SECTORS and config["symbols"] == SYMBOLS
    assert config["version"] == model.version and config["history"] == model.history_


def test_learned_graph_is_saved_listed_and_plotted(fitted, tmp_path: Path):
    model = fitted["mtgnn"]
    model.save(tmp_path)
    symbols, matrix = read_learned_graph(tmp_path / "learned_graph.npz")
    assert symbols == SYMBOLS
    np.testing.assert_array_equal(matrix, model.adjacency())
    assert (matrix >= 0).all() and np.count_nonzero(matrix) > 0
    assert (np.count_nonzero(matrix, axis=1) <= 3).all()  # subgraph_size neighbours per node
    assert (tmp_path / "learned_graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    learned = json.loads((tmp_path / "config.json").read_text())["learned_graph"]
    pairs = learned["top_pairs"]
    weights = [p["weight"] for p in pairs]
    assert pairs and weights == sorted(weights, reverse=True)
    a, b = (SYMBOLS.index(s) for s in pairs[0]["pair"])
    assert weights[0] == pytest.approx(matrix[a, b] + matrix[b, a])
    assert pairs[0]["same_sector"] == (SECTORS.get(SYMBOLS[a]) == SECTORS.get(SYMBOLS[b]))
    assert learned["top_pairs_same_sector"] == sum(p["same_sector"] for p in pairs)
    hub = learned["hubs"][0]  # the name the most nodes draw on: the largest column sum
    column = SYMBOLS.index(hub["symbol"])
    assert hub["weight"] == pytest.approx(matrix.sum(axis=0).max())
    assert hub["drawn_on_by"] == np.count_nonzero(matrix[:, column])
    # 2 same-sector ordered pairs of the 30 (Alpha x2, Beta x2; Gamma and ZZZ alone) = 4/30
    assert learned["same_sector_base_rate"] == pytest.approx(4 / 30)
    rows, cols = np.nonzero(matrix)
    same = [
        SECTORS.get(SYMBOLS[i]) == SECTORS.get(SYMBOLS[j]) for i, j in zip(rows, cols, strict=True)
    ]
    assert learned["same_sector_share"] == pytest.approx(np.mean(same))
    edges = model.learned_graph()
    assert edges.height == np.count_nonzero(matrix)


def test_mtgnn_prior_propagates_along_the_inter_asset_graph(tmp_path: Path):
    model = _tiny(MtgnnPriorForecaster).fit(TRAIN, VALID)
    assert model.name == "mtgnn_prior" and model.get_config()["graph"] == "prior"
    np.testing.assert_allclose(model.adjacency(), model.graph_.adjacency, rtol=1e-7)
    model.save(tmp_path)
    assert not (tmp_path / "learned_graph.npz").exists()
    loaded = MtgnnPriorForecaster.load(tmp_path)
    assert loaded.predict(PANEL, DAYS[-1]).equals(model.predict(PANEL, DAYS[-1]))


def test_fitted_graph_and_scales_ignore_rows_after_the_cutoff():
    altered_valid = _after_cutoff_altered(PANEL, CUTOFF).filter(
        pl.col("ts") >= CUTOFF, pl.col("symbol") != "NEW"
    )
    training = TINY_TRAINING.model_copy(update={"max_steps": 2})
    a = _tiny(StemGnnForecaster, training=training, val_check_steps=1).fit(TRAIN, VALID)
    b = _tiny(StemGnnForecaster, training=training, val_check_steps=1).fit(TRAIN, altered_valid)
    assert a.graph_.cutoff == b.graph_.cutoff == CUTOFF
    np.testing.assert_array_equal(a.graph_.adjacency, b.graph_.adjacency)
    np.testing.assert_array_equal(a.graph_.correlation, b.graph_.correlation)
    assert a.scales_.equals(b.scales_)


def test_stemgnn_quantiles_come_from_their_own_node():
    """Each series' three quantiles depend on its own node's head only.

    neuralforecast's StemGNN lays out ``[B, h, Q * N]`` and ``MQLoss`` reads
    ``[B, h, N * Q]``: with its layout series 0's quantiles come from nodes 0,
    1 and 2 (found by the gradient of the output with respect to the head's
    input).
    """

    def nodes_feeding_series0(net, forward) -> set[int]:
        captured = {}

        def hook(module, args, output):
            leaf = output.detach().requires_grad_()
            captured["leaf"] = leaf
            return leaf

        handle = net.fc.register_forward_hook(hook)
        out = forward(torch.randn(2, INPUT, 4))  # [B, h, N, Q]
        handle.remove()
        out[:, :, 0, :].sum().backward()
        grad = captured["leaf"].grad.abs().sum(dim=(0, 2))  # per node
        return set(np.flatnonzero(grad.numpy()).tolist())

    kw = dict(h=5, input_size=INPUT, n_series=4, loss=MQLoss(quantiles=list(QUANTILES)))
    library = StemGNN(**kw, logger=False)
    ours = _KronosStemGNN(**kw, logger=False)
    ours.set_prior(np.zeros((4, 4)), 0.0)
    mixed = nodes_feeding_series0(
        library, lambda x: library.loss.domain_map(library({"insample_y": x}))
    )
    assert mixed == {0, 1, 2}
    assert nodes_feeding_series0(ours, ours) == {0}


def test_training_settings_reach_lightning(monkeypatch):
    import lightning

    seen = {}
    real = lightning.Trainer

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(lightning, "Trainer", spy)
    training = TrainingConfig(
        max_steps=12,
        batch_size=8,
        patience=3,
        scheduler_patience=1,
        gradient_clip=0.5,
        learning_rate=1e-12,
        min_lr=1e-15,
        weight_decay=1e-4,
    )
    model = _tiny(StemGnnForecaster, training=training, val_check_steps=2).fit(TRAIN, VALID)
    assert seen["gradient_clip_val"] == 0.5 and seen["gradient_clip_algorithm"] == "norm"
    assert seen["max_epochs"] == 6  # 12 steps / validation every 2
    early = [c for c in seen["callbacks"] if type(c).__name__ == "EarlyStopping"]
    assert early and early[0].patience == 3 and early[0].monitor == "valid_loss"
    # a learning rate of 1e-12 leaves the validation loss flat: no check improves on the
    # first, and early stopping (patience 3) ends training at the 4th check of 6
    history = model.history_
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert len({h["valid_loss"] for h in history}) == 1
    assert model.fit_info_["best_step"] == 2 and model.fit_info_["stopped_step"] == 8
    # optimiser and plateau scheduler as configured (ReduceLROnPlateau ignores LR changes
    # below 1e-8, so the flat run above cannot show the halving)
    optim = GraphModule(model.network_, training, has_valid=True).configure_optimizers()
    opt, sched = optim["optimizer"], optim["lr_scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["weight_decay"] == 1e-4 and opt.defaults["lr"] == 1e-12
    assert isinstance(sched["scheduler"], ReduceLROnPlateau)
    assert sched["monitor"] == "valid_loss" and sched["interval"] == "epoch"
    assert sched["scheduler"].factor == 0.5 and sched["scheduler"].patience == 1
    assert sched["scheduler"].min_lrs == [1e-15]
    plain = GraphModule(model.network_, training, has_valid=False).configure_optimizers()
    assert isinstance(plain, torch.optim.AdamW)  # no validation: constant LR


def test_without_valid_rows_constant_lr_and_no_stopping():
    model = _tiny(MtgnnForecaster, training=TINY_TRAINING).fit(TRAIN)
    assert [h["valid_loss"] for h in model.history_] == [None, None]
    assert {h["lr"] for h in model.history_} == {TINY_TRAINING.learning_rate}
    assert model.fit_info_["cutoff"] == str(TRAIN["ts"].max() + timedelta(days=1))


def test_bad_input_names_the_symbol(fitted):
    model = fitted["stemgnn"]
    with pytest.raises(ForecastError, match="not trained on: NEW"):
        model.predict(_after_cutoff_altered(PANEL, DAYS[200]), DAYS[-1], ["AAA", "NEW"])
    with pytest.raises(ForecastError, match="unknown symbols"):
        model.predict(PANEL, DAYS[-1], ["XYZ"])
    with pytest.raises(ForecastError, match="symbol AAB: 10 returns up to"):
        model.predict(PANEL, DAYS[9], ["AAB"])
    holed = PANEL.with_columns(
        y=pl.when((pl.col("symbol") == "BBA") & (pl.col("ts") == DAYS[-3]))
        .then(float("nan"))
        .otherwise(pl.col("y"))
    )
    with pytest.raises(ForecastError, match="symbol BBA: NaN"):
        model.predict(holed, DAYS[-1])
    short = pl.concat(
        [TRAIN, PANEL.filter(pl.col("symbol") == "ZZZ").head(5).with_columns(symbol=pl.lit("TINY"))]
    )
    with pytest.raises(ForecastError, match="symbol TINY: 5 finite train returns"):
        _tiny(StemGnnForecaster).fit(short)
    with pytest.raises(ForecastError, match="not fitted"):
        _tiny(MtgnnForecaster).predict(PANEL, DAYS[-1])


def test_incompatible_or_tampered_artifacts_are_refused(fitted, tmp_path: Path):
    model = fitted["stemgnn"]
    model.save(tmp_path)
    with pytest.raises(ForecastError, match="incompatible name"):
        MtgnnForecaster.load(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ForecastError, match="format_version"):
        StemGnnForecaster.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    buffer = io.BytesIO()
    pickle.dump({"AAA": io.BytesIO()}, buffer)  # any class: refused, never instantiated
    (tmp_path / "scaler.pkl").write_bytes(buffer.getvalue())
    with pytest.raises(ForecastError, match=r"scaler\.pkl"):
        StemGnnForecaster.load(tmp_path)
    model.save(tmp_path)
    np.savez(tmp_path / "graph.npz", symbols=np.array(["X"]))
    with pytest.raises(ForecastError, match=r"graph\.npz"):
        StemGnnForecaster.load(tmp_path)


def test_train_gate_promote_and_load_by_name(tmp_path: Path):
    outcome = train_and_gate(
        _tiny(MtgnnForecaster), PANEL, model_dir=tmp_path, valid_days=60, tolerance=10.0
    )
    assert outcome.decision.promoted  # a 10x tolerance: the gate is exercised, not the skill
    run_dir = latest_artifact(tmp_path, "mtgnn")
    assert run_dir == outcome.run_dir
    assert {*REQUIRED_FILES, "graph.npz", "learned_graph.png"} <= {
        p.name for p in run_dir.iterdir()
    }
    loaded = load_promoted(tmp_path, "mtgnn")
    assert loaded.source == "artifact" and loaded.forecaster.version == outcome.version
    metrics = json.loads((run_dir / "METRICS.json").read_text())
    assert metrics["promotion"]["promoted"] and "crps" in metrics["validation"]


def test_registered_and_selectable_in_the_leaderboard():
    assert forecaster_class("stemgnn") is StemGnnForecaster
    assert forecaster_class("mtgnn") is MtgnnForecaster
    assert forecaster_class("mtgnn_prior") is MtgnnPriorForecaster
    for name in GRAPH:
        model = build(name, None, sectors=SECTORS, graph_max_steps=7)
        assert model.get_config()["training"]["max_steps"] == 7
        assert model.get_config()["sectors"] == SECTORS
    assert build("stemgnn").get_config()["training"]["max_steps"] == 1000


def test_leaderboard_scores_a_graph_model_on_the_same_rows(monkeypatch):
    import kronos.bench.forecast as bench

    def tiny_build(name, nbeats_max_steps=None, *, sectors=None, graph_max_steps=None):
        if name == "stemgnn":
            return _tiny(StemGnnForecaster, sectors=sectors)
        return forecaster_class(name)()

    monkeypatch.setattr(bench, "build", tiny_build)
    result = run_forecast_bench(PANEL, ["ewma", "stemgnn"], holdout_days=30, sectors=SECTORS)
    rows = {r["model"]: r for r in result["models"]}
    assert rows["stemgnn"]["n"] == rows["ewma"]["n"] > 0
    assert rows["stemgnn"]["config"]["sectors"] == SECTORS


def test_a_symbol_listed_later_is_masked_before_its_first_day():
    """LATE trades from day 100 on: before that it enters as 0 and its targets are masked."""
    late = PANEL.filter(pl.col("symbol") == "AAB", pl.col("ts") >= DAYS[100]).with_columns(
        symbol=pl.lit("LATE")
    )
    panel = pl.concat([PANEL, late])
    train, valid = train_valid_split(panel, valid_days=60, valid_frac=0.2)
    sectors = {**SECTORS, "LATE": "Alpha"}
    model = _tiny(StemGnnForecaster, sectors=sectors).fit(train, valid)
    assert model.fit_info_["cutoff"] == str(CUTOFF)  # the earliest first validation day
    out = model.predict(panel, DAYS[-1])
    assert set(out["symbol"]) == {*SYMBOLS, "LATE"}
    assert out.select(pl.col("p05", "p95").is_finite().all()).row(0) == (True, True)
    scales = {r["symbol"]: r for r in model.scales_.iter_rows(named=True)}
    assert scales["LATE"]["std"] == scales["AAA"]["std"]  # the sector's pooled scale
    with pytest.raises(ForecastError, match="symbol LATE: 10 returns up to"):
        model.predict(panel, DAYS[109], ["LATE"])
    # the other symbols forecast from before LATE's listing: it is a node of zeros then
    assert model.predict(panel, DAYS[50], ["AAA"]).height == 5
