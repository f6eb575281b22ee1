"""``kronos train``: the whitepaper's retraining commands (section 6.1)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from kronos.cli._common import (
    DbOption,
    JsonOption,
    err,
    fail,
    open_store,
    out,
    parse_day,
    table,
    training_panel,
)
from kronos.config import config_hash, load_settings, resolve_db_path, settings_hash
from kronos.errors import KronosError
from kronos.models.base import Forecaster

app = typer.Typer(
    help="Train a forecaster, gate it, promote it, log it to MLflow.", no_args_is_help=True
)

MaxEpochs = Annotated[int, typer.Option(help="Epochs at most.")]
Patience = Annotated[int, typer.Option(help="Early-stopping patience (validation checks).")]
SchedPatience = Annotated[int, typer.Option(help="ReduceLROnPlateau patience.")]
MaxSteps = Annotated[int | None, typer.Option(help="Cap on optimisation steps.")]
SourceOpt = Annotated[str, typer.Option(help="Train on the symbols of this bars source.")]
SymbolsOpt = Annotated[str | None, typer.Option(help="Comma-separated symbols (else --source).")]
AsofOpt = Annotated[str | None, typer.Option(help="Data cutoff YYYY-MM-DD [default: today].")]
ModelDirOpt = Annotated[Path | None, typer.Option(help="Artifact root [env MODEL_DIR].")]
ExperimentOpt = Annotated[str, typer.Option(help="MLflow experiment.")]
AcceleratorOpt = Annotated[
    str | None, typer.Option(help="Lightning accelerator: cpu, gpu or auto (model default).")
]
DevicesOpt = Annotated[
    str | None,
    typer.Option(help="Devices per node (CPU: processes), or 'auto' [1]."),
]
StrategyOpt = Annotated[
    str | None, typer.Option(help="Lightning strategy: auto, ddp, ddp_spawn, fsdp... (auto).")
]
NumNodesOpt = Annotated[int | None, typer.Option(help="Machines taking part [1].", min=1)]
PLACEMENT = ("accelerator", "devices", "strategy", "num_nodes")


def _placement(options: dict[str, Any]) -> dict[str, Any]:
    """The given ``--accelerator --devices --strategy --num-nodes`` as TrainingConfig fields."""
    given = {k: options[k] for k in PLACEMENT if options.get(k) is not None}
    devices = given.get("devices")
    if devices is not None and devices != "auto":
        if not str(devices).isdigit() or int(devices) < 1:
            fail(f"--devices must be a positive integer or 'auto', not {devices!r}")
        given["devices"] = int(devices)
    return given


def _cutoff(asof: str | None) -> date:
    """``--asof`` as a date (today when not given); exit 2 when it cannot be read."""
    try:
        return parse_day(asof, "--asof") if asof else date.today()
    except KronosError as exc:
        fail(str(exc))


def _run(
    forecaster: Forecaster,
    *,
    db: Path | None,
    source: str,
    symbols: str | None,
    asof: str | None,
    model_dir: Path | None,
    experiment: str,
    as_json: bool,
) -> None:
    from kronos.models.lightning import launched_rank
    from kronos.models.split import train_valid_split
    from kronos.tracking import mlflow_run

    loaded = load_settings()
    settings = loaded.models
    root = model_dir or settings.model_dir
    cutoff = _cutoff(asof)
    panel = training_panel(db, symbols, source, cutoff, loaded.data)
    if launched_rank():  # a worker of a multi-process fit: rank 0 does everything else
        forecaster.fit(*train_valid_split(panel))
        return
    tags = {
        "model": forecaster.name,
        "config_hash": config_hash(forecaster.get_config()),
        "data_cutoff": str(cutoff),
    }
    try:
        with mlflow_run(experiment, f"train-{forecaster.name}", tags, settings=loaded) as recorder:
            outcome, registered = gate_and_publish(forecaster, panel, root, settings, recorder)
    except KronosError as exc:
        fail(str(exc))
    from kronos.models.start_calibration import read_start

    start = read_start(outcome.run_dir)
    result = {
        "model": outcome.name,
        "version": outcome.version,
        "run_dir": str(outcome.run_dir),
        "promoted": outcome.decision.promoted,
        "reason": outcome.decision.reason,
        "validation": outcome.metrics,
        "baseline": outcome.baseline_metrics,
        "fit_seconds": outcome.fit_seconds,
        "data_range": outcome.data_range,
        "mlflow_run_id": recorder.run_id,
        "registered": registered.as_dict() if registered else None,
        "settings_hash": settings_hash(loaded),
        "start_calibration": start.as_dict() if start else None,
    }
    if as_json:
        print(json.dumps(result))
        return
    rows = [
        [k, f"{outcome.metrics[k]:.6g}", f"{outcome.baseline_metrics[k]:.6g}"]
        for k in ("mae", "coverage", "crps")
    ]
    out.print(
        table(
            f"{outcome.name} validation vs {settings.promotion_baseline}",
            ["metric", outcome.name, settings.promotion_baseline],
            rows,
        )
    )
    verdict = "[green]promoted[/]" if outcome.decision.promoted else "[yellow]not promoted[/]"
    out.print(f"{verdict}: {outcome.decision.reason}", highlight=False)
    if start is not None:
        out.print(
            f"starting calibration: bias {start.bias:+.5f}, scale {start.scale:.3f} "
            f"(validation coverage {start.coverage_before:.1%} -> {start.coverage_after:.1%}, "
            f"n={start.n})",
            highlight=False,
        )
    out.print(
        f"artifact: {outcome.run_dir}  (fit {outcome.fit_seconds:.1f}s, "
        f"MLflow run {recorder.run_id}, settings {settings_hash(loaded)})",
        highlight=False,
    )
    if registered is not None:
        out.print(f"registered {registered.uri} (@{registered.alias})", highlight=False)


def gate_and_publish(
    forecaster: Any, panel: Any, root: Path, settings: Any, recorder: Any
) -> tuple[Any, Any]:
    """Fit, gate against the baseline, save and promote (``train_and_gate``); publish to MLflow.

    The artifact goes into ``recorder``'s run and, only when promoted, into the
    registry as ``kronos-<model>`` with the alias ``champion``. Before that, the
    run gets its starting calibration (:func:`start_calibration`). Returns the
    training outcome and the registered version (None when not promoted).
    """
    from kronos.mlflow_registry import publish_artifact
    from kronos.models.training import train_and_gate

    outcome = train_and_gate(
        forecaster,
        panel,
        model_dir=root,
        baseline=settings.promotion_baseline,
        tolerance=settings.promotion_tolerance,
        recorder=recorder,
        on_stage=lambda s: err.print(f"[dim]{s}[/dim]"),
    )
    start_calibration(forecaster, panel, outcome.run_dir, recorder)
    registered = publish_artifact(
        recorder,
        model=outcome.name,
        run_dir=outcome.run_dir,
        version=outcome.version,
        promoted=outcome.decision.promoted,
    )
    return outcome, registered


def start_calibration(forecaster: Any, panel: Any, run_dir: Path, recorder: Any) -> Any:
    """Fit the run's starting calibration on the gate's validation windows; store and log it.

    The windows are ``train_and_gate``'s (default split, rolling origins from
    each symbol's last training day); ``CALIBRATION_START.json`` goes into
    ``run_dir``, its figures into METRICS.json and ``recorder`` (``start_*``).
    A run that already has the file keeps it. Returns the
    :class:`~kronos.models.start_calibration.StartCalibration`, or None when
    validation had too few rows (the calibrator then starts at bias 0, scale 1).
    """
    from kronos.models.artifacts import record_start
    from kronos.models.split import train_valid_split
    from kronos.models.start_calibration import fit_start, read_start
    from kronos.models.training import validation_forecasts

    start = read_start(run_dir)
    if start is None:
        err.print("[dim]starting calibration[/dim]")
        start = fit_start(validation_forecasts(forecaster, panel, *train_valid_split(panel)))
        if start is None:
            err.print("too few validation rows: no starting calibration (bias 0, scale 1)")
            return None
        record_start(run_dir, start)
    recorder.log_metrics(start.metrics())
    return start


_COMMON = ("db", "source", "symbols", "asof", "model_dir", "experiment", "as_json")
_TRAINING = ("max_epochs", "patience", "scheduler_patience", "max_steps")


def _train(name: str, options: dict[str, Any], **overrides: Any) -> None:
    """Build forecaster ``name`` (``registry.build``) from a command's options; train it.

    ``options`` are the command's parameters (``locals()``): the training ones
    given (not None) update the model's own defaults, the rest say where and how
    to run; ``overrides`` are the model's own arguments.
    """
    from kronos.models.registry import build

    given = {k: options[k] for k in _TRAINING if options.get(k) is not None}
    given |= _placement(options)
    try:
        forecaster = build(name, progress=err.is_terminal, **given, **overrides)
    except KronosError as exc:
        fail(str(exc))
    _run(forecaster, **{k: options[k] for k in _COMMON})


@app.command("nbeats")
def train_nbeats(
    max_epochs: MaxEpochs = 60,
    patience: Patience = 8,
    scheduler_patience: SchedPatience = 4,
    max_steps: MaxSteps = None,
    db: DbOption = None,
    source: SourceOpt = "skfolio.sp500",
    symbols: SymbolsOpt = None,
    asof: AsofOpt = None,
    model_dir: ModelDirOpt = None,
    experiment: ExperimentOpt = "kronos-retrain",
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = None,
    as_json: JsonOption = False,
) -> None:
    """N-BEATS through neuralforecast: 90-day input, 5-day horizon, MQLoss(p05, p50, p95)."""
    _train("nbeats", locals())


@app.command("tft")
def train_tft(
    max_epochs: Annotated[
        int | None, typer.Option(help="Epochs at most [model default: 3].")
    ] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience [2].")] = None,
    scheduler_patience: Annotated[
        int | None, typer.Option(help="ReduceLROnPlateau patience [1].")
    ] = None,
    max_steps: MaxSteps = None,
    max_symbols: Annotated[int, typer.Option(help="Train on the top N symbols.")] = 200,
    max_tail: Annotated[int, typer.Option(help="Latest observations per symbol.")] = 400,
    db: DbOption = None,
    source: SourceOpt = "skfolio.sp500",
    symbols: SymbolsOpt = None,
    asof: AsofOpt = None,
    model_dir: ModelDirOpt = None,
    experiment: ExperimentOpt = "kronos-retrain",
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Temporal Fusion Transformer through pytorch-forecasting, same split and metrics."""
    _train("tft", locals(), max_symbols=max_symbols, max_tail=max_tail)


@app.command("forecaster")
def train_forecaster(
    model: Annotated[
        str, typer.Argument(help="A forecaster: built-in name, package.module:Class, entry point.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A constructor argument: key=value (YAML value; repeatable)."),
    ] = None,
    db: DbOption = None,
    source: SourceOpt = "skfolio.sp500",
    symbols: SymbolsOpt = None,
    asof: AsofOpt = None,
    model_dir: ModelDirOpt = None,
    experiment: ExperimentOpt = "kronos-retrain",
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Any forecaster, your own included: split, fit, gate against the baseline, save, promote.

    The artifact lies under MODEL_DIR/kronos-<its class's name>/; a model not
    built in also records its import path and version (SOURCE.json).
    """
    import yaml

    from kronos.models.registry import build, override_keys

    overrides: dict[str, Any] = {}
    for item in set_ or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        placement = _placement(locals())
        if "progress" in override_keys(model):  # the neural models' progress bar
            overrides.setdefault("progress", err.is_terminal)
            overrides |= placement
        elif placement:
            fail(f"{model} does not train with Lightning: it takes no {sorted(placement)}")
        if "sectors" in override_keys(model):  # har_gbm, combination: the store's sectors
            overrides.setdefault("sectors", _sectors(db, asof))
        forecaster = build(model, **overrides)
    except KronosError as exc:
        fail(str(exc))
    _run(
        forecaster,
        db=db,
        source=source,
        symbols=symbols,
        asof=asof,
        model_dir=model_dir,
        experiment=experiment,
        as_json=as_json,
    )


def _sectors(db: Path | None, asof: str | None) -> dict[str, str]:
    """Each symbol's sector known at the data cutoff (profiles without one are left out)."""
    from kronos.data import readers

    cutoff = _cutoff(asof)
    data = load_settings().data
    try:
        with open_store(db, read_only=True, settings=data) as store:
            return readers.sectors(store, cutoff, settings=data)
    except KronosError as exc:
        fail(str(exc))


@app.command("stemgnn")
def train_stemgnn(
    max_epochs: MaxEpochs = 60,
    patience: Patience = 5,
    scheduler_patience: SchedPatience = 2,
    max_steps: MaxSteps = 1000,
    db: DbOption = None,
    source: SourceOpt = "skfolio.sp500",
    symbols: SymbolsOpt = None,
    asof: AsofOpt = None,
    model_dir: ModelDirOpt = None,
    experiment: ExperimentOpt = "kronos-retrain",
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = None,
    as_json: JsonOption = False,
) -> None:
    """StemGNN (neuralforecast) over the universe: sector-normalised returns, prior graph."""
    _train("stemgnn", locals(), sectors=_sectors(db, asof))


@app.command("mtgnn")
def train_mtgnn(
    graph: Annotated[
        str, typer.Option(help="'learned' (MTGNN's graph layer) or 'prior' (sectors + corr).")
    ] = "learned",
    max_epochs: MaxEpochs = 60,
    patience: Patience = 5,
    scheduler_patience: SchedPatience = 2,
    max_steps: MaxSteps = 1000,
    db: DbOption = None,
    source: SourceOpt = "skfolio.sp500",
    symbols: SymbolsOpt = None,
    asof: AsofOpt = None,
    model_dir: ModelDirOpt = None,
    experiment: ExperimentOpt = "kronos-retrain",
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = None,
    as_json: JsonOption = False,
) -> None:
    """MTGNN (torch-geometric-temporal) over the universe; the learned graph is saved and drawn."""
    if graph not in ("learned", "prior"):
        fail(f"--graph must be 'learned' or 'prior', not {graph!r}")
    name = "mtgnn" if graph == "learned" else "mtgnn_prior"
    _train(name, locals(), sectors=_sectors(db, asof))


@app.command("regime")
def train_regime_command(
    max_epochs: MaxEpochs = 300,
    patience: Patience = 30,
    scheduler_patience: SchedPatience = 10,
    db: DbOption = None,
    source: SourceOpt = "skfolio.sp500",
    asof: AsofOpt = None,
    model_dir: ModelDirOpt = None,
    experiment: ExperimentOpt = "kronos-retrain",
    features_only: Annotated[
        bool,
        typer.Option(help="Do not train: write the promoted encoder's features up to --asof."),
    ] = False,
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = None,
    as_json: JsonOption = False,
) -> None:
    """S4D regime encoder on market volatility; writes regime_features (whitepaper 4, 10).

    One epoch is one step over the whole sequence. Promoted when its
    validation log loss beats the persistence baseline. The promoted encoder's
    probabilities for every session up to --asof are then appended to the store
    (run it with --features-only nightly, before ``kronos calibrate``).
    """
    from kronos.features.regime import latest_regime, market_features_at
    from kronos.mlflow_registry import publish_artifact
    from kronos.models.lightning import launched_rank
    from kronos.models.regime import RegimeEncoder, train_regime
    from kronos.nightly import refresh_regime
    from kronos.tracking import mlflow_run

    loaded = load_settings()
    root = model_dir or loaded.models.model_dir
    cutoff = _cutoff(asof)
    path = resolve_db_path(db, loaded.data)
    result: dict = {"asof": str(cutoff), "settings_hash": settings_hash(loaded)}
    if not features_only:
        try:
            with open_store(path, read_only=True, settings=loaded.data) as store:
                features = market_features_at(store, cutoff, source, settings=loaded.data)
        except KronosError as exc:
            fail(str(exc))
        training = RegimeEncoder.default_training().model_copy(
            update={
                "max_epochs": max_epochs,
                "patience": patience,
                "scheduler_patience": scheduler_patience,
                **_placement(locals()),
            }
        )
        encoder = RegimeEncoder(training=training)
        if launched_rank():  # a worker of a multi-process fit: rank 0 saves and records
            encoder.fit(features, cutoff)
            return
        tags = {"model": "regime", "config_hash": config_hash(encoder.get_config())}
        try:
            run_tags = {**tags, "data_cutoff": cutoff}
            with mlflow_run(experiment, "train-regime", run_tags, settings=loaded) as rec:
                outcome = train_regime(
                    encoder, features, model_dir=root, cutoff=cutoff, recorder=rec
                )
                registered = publish_artifact(
                    rec,
                    model="regime",
                    run_dir=outcome.run_dir,
                    version=encoder.version,
                    promoted=outcome.promoted,
                )
        except KronosError as exc:
            fail(str(exc))
        result |= {
            "version": encoder.version,
            "run_dir": str(outcome.run_dir),
            "promoted": outcome.promoted,
            "reason": outcome.reason,
            "validation": outcome.metrics,
            "fit": encoder.fit_info_,
            "mlflow_run_id": rec.run_id,
            "registered": registered.as_dict() if registered else None,
        }
    if not path.exists():
        fail(f"no store at {path}: run kronos data ingest first")
    try:
        with open_store(path, settings=loaded.data) as store:
            refreshed = refresh_regime(store, root, cutoff, source, settings=loaded.data)
            reading = latest_regime(store, cutoff, settings=loaded.data)
    except KronosError as exc:
        fail(str(exc))
    if refreshed is None:
        fail(f"no promoted regime encoder under {root}: no features written")
    promoted, written = refreshed
    result |= {"features_version": promoted.version, "rows_written": written}
    if reading is not None:
        result["latest"] = {
            "ts": str(reading.ts),
            "state": reading.state,
            **{f"p_{s}": getattr(reading, f"p_{s}") for s in ("calm", "normal", "turbulent")},
        }
    if as_json:
        print(json.dumps(result, default=str))
        return
    if not features_only:
        val = result["validation"]
        out.print(
            table(
                f"regime encoder validation (trained until {result['fit']['trained_until']})",
                ["metric", "encoder", "persistence"],
                [
                    [
                        k,
                        f"{val.get(f'valid_{k}', float('nan')):.4f}",
                        f"{val.get(f'baseline_{k}', float('nan')):.4f}",
                    ]
                    for k in ("log_loss", "accuracy")
                ],
            )
        )
        verdict = "[green]promoted[/]" if result["promoted"] else "[yellow]not promoted[/]"
        out.print(f"{verdict}: {result['reason']}", highlight=False)
        out.print(f"artifact: {result['run_dir']}", highlight=False)
    out.print(f"regime_features: {written} new session(s) from {promoted.version}", highlight=False)
    if reading is not None:
        out.print(
            f"{reading.ts}: {reading.state} (p_turbulent {reading.p_turbulent:.3f})",
            highlight=False,
        )
