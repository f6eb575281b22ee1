"""``kronos tune``: hyper-parameter search, each trial an MLflow child run, the best gated."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from kronos.cli._common import (
    DbOption,
    JsonOption,
    err,
    fail,
    out,
    table,
    training_panel,
)
from kronos.cli.train import AsofOpt, ModelDirOpt, SourceOpt, SymbolsOpt, _cutoff, gate_and_publish
from kronos.config import load_settings, settings_hash
from kronos.errors import KronosError


def tune(
    model: Annotated[str, typer.Argument(help="A forecaster with a search space: nbeats, tft.")],
    trials: Annotated[int, typer.Option(help="Trials to run.", min=1)] = 10,
    executor: Annotated[
        str, typer.Option(help="local (one trial after another) or ray (Ray Tune).")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (else a local Ray starts).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Fixed for every trial: key=value (YAML value; repeatable)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the sampler and every trial's training.")] = 0,
    db: DbOption = None,
    source: SourceOpt = "skfolio.sp500",
    symbols: SymbolsOpt = None,
    asof: AsofOpt = None,
    model_dir: ModelDirOpt = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "kronos-tune",
    as_json: JsonOption = False,
) -> None:
    """Search MODEL's hyper-parameters (optuna's TPE), scored by validation CRPS.

    Every trial fits on the training rows and is scored on the validation year
    (the rows the training gate reads; nothing after --asof is read), as a child
    run of one MLflow parent run. The best parameters are refitted, gated
    against the baseline and promoted (and registered) as ``kronos train`` does.
    """
    import yaml

    from kronos.models.base import TrainingConfig
    from kronos.models.lightning import SPAWNING, relaunches_command
    from kronos.models.registry import build
    from kronos.models.tune import model_options, search
    from kronos.tracking import mlflow_run

    base: dict[str, Any] = {}
    for item in set_ or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r}: expected key=value")
        base[key.strip()] = yaml.safe_load(value)
    try:
        probe = build(model, **base)
    except KronosError as exc:
        fail(str(exc))
    training = getattr(probe, "training", None)
    if isinstance(training, TrainingConfig) and relaunches_command(training):
        # Lightning's ddp launcher would run this command again per process: the whole search
        fail(f"kronos tune on several devices needs --set strategy= one of {SPAWNING}")
    loaded = load_settings()
    root = model_dir or loaded.models.model_dir
    cutoff = _cutoff(asof)
    panel = training_panel(db, symbols, source, cutoff, loaded.data)
    tags = {"model": model, "executor": executor, "data_cutoff": str(cutoff)}
    try:
        with mlflow_run(experiment, f"tune-{model}", tags, settings=loaded) as parent:
            parent.log_params(
                {"tune.trials": trials, "tune.executor": executor, "tune.seed": seed}
                | {f"tune.fixed.{k}": v for k, v in base.items()}
            )

            @contextlib.contextmanager
            def child(number: int) -> Iterator[Any]:
                child_tags = {"mlflow.parentRunId": parent.run_id, "trial": number, **tags}
                with mlflow_run(
                    experiment, f"tune-{model}-trial-{number}", child_tags, settings=loaded
                ) as rec:
                    yield rec

            err.print(f"[dim]{trials} trial(s) of {model} ({executor})[/dim]")
            result = search(
                model,
                panel,
                trials=trials,
                base=base,
                executor=executor,
                seed=seed,
                trial_recorder=child,
                ray_address=ray_address,
            )
            best = result.best
            parent.log_metrics({"best_valid_crps": best.crps, "best_trial": float(best.number)})
            parent.set_tags({f"best.{k}": v for k, v in best.params.items()})
            err.print(f"[dim]refit trial {best.number}'s parameters and gate[/dim]")
            forecaster = build(model, seed=seed, **{**base, **model_options(model, best.params)})
            settings = loaded.models
            outcome, registered = gate_and_publish(forecaster, panel, root, settings, parent)
    except KronosError as exc:
        fail(str(exc))
    answer = {
        "model": model,
        "executor": executor,
        "mlflow_run_id": parent.run_id,
        "trials": [
            {"number": t.number, "params": t.params, "crps": t.crps, "seconds": t.seconds}
            for t in result.trials
        ],
        "best": {"number": best.number, "params": best.params, "crps": best.crps},
        "version": outcome.version,
        "run_dir": str(outcome.run_dir),
        "promoted": outcome.decision.promoted,
        "reason": outcome.decision.reason,
        "validation": outcome.metrics,
        "registered": registered.as_dict() if registered else None,
        "settings_hash": settings_hash(loaded),
    }
    if as_json:
        print(json.dumps(answer, default=str))
        return
    rows = [
        [str(t.number), f"{t.crps:.6g}", ", ".join(f"{k}={v:.4g}" for k, v in t.params.items())]
        for t in result.trials
    ]
    out.print(table(f"{model}: validation CRPS by trial", ["trial", "crps", "params"], rows))
    verdict = "[green]promoted[/]" if outcome.decision.promoted else "[yellow]not promoted[/]"
    out.print(f"best trial {best.number}, refitted: {verdict}: {outcome.decision.reason}")
    out.print(f"artifact: {Path(outcome.run_dir)}  (MLflow parent run {parent.run_id})")
