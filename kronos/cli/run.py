"""``kronos run``, ``kronos runs`` and ``kronos schedule``: notebooks executed and tracked."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from kronos.cli._common import JsonOption, err, fail, out, table
from kronos.config import TrackingSettings, load_settings, settings_hash

NOTEBOOKS = Path("notebooks")
SPECS = Path("experiments")
KEY_METRICS = ("sharpe", "total_return", "max_drawdown", "crps", "coverage", "mae")

runs_app = typer.Typer(help="List and compare tracked notebook runs.", no_args_is_help=True)


def _assignments(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"-p {item!r}: expected key=value")
        params[key.strip()] = value
    return params


def _target(target: str) -> tuple[Path, Path | None]:
    """(notebook, run spec or None) named by TARGET: a notebook, a spec, or a bare name."""
    from kronos.runner import did_you_mean

    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        return path, path
    if path.suffix == ".ipynb" or path.exists():
        return path, None
    for candidate, is_spec in (
        (NOTEBOOKS / f"{target}.ipynb", False),
        (SPECS / f"{target}.yaml", True),
    ):
        if candidate.is_file():
            return candidate, candidate if is_spec else None
    known = [p.stem for p in NOTEBOOKS.glob("*.ipynb")] + [p.stem for p in SPECS.glob("*.yaml")]
    fail(f"no notebook or run spec named {target!r}{did_you_mean(target, known)}")


def run(
    target: Annotated[
        str,
        typer.Argument(
            help="A notebook (notebooks/10_retrain.ipynb or 10_retrain) or a run spec "
            "(experiments/weekly_retrain.yaml)."
        ),
    ],
    param: Annotated[
        list[str] | None,
        typer.Option("-p", "--param", help="Set a notebook parameter: key=value (repeatable)."),
    ] = None,
    timeout: Annotated[
        int | None,
        typer.Option(help="Seconds each cell may run (default: the spec's, else 3600)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Run name (default: the spec's name, else the notebook's stem)."),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(help="MLflow experiment (default: the spec's, else the notebook's workflow)."),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Executed notebooks go to OUT/<name>/<UTC stamp>.ipynb.")
    ] = Path("experiments/runs"),
    as_json: JsonOption = False,
) -> None:
    """Execute a notebook with papermill as one MLflow run; exit 1 if a cell failed.

    SIGINT, SIGTERM and SIGHUP stop the kernel, log the partial notebook and
    mark the run KILLED (exit 130, 143, 129). Before starting, RUNNING runs of
    this host whose process has ended are marked FAILED.
    """
    from kronos.interrupts import RunInterrupted, stop_on_signals
    from kronos.runner import RunnerError, load_run_spec, run_notebook
    from kronos.runner.base import DEFAULT_CELL_TIMEOUT

    settings = load_settings()
    notebook, spec_path = _target(target)
    params: dict[str, Any] = {}
    tags: dict[str, str] = {}
    try:
        if spec_path is not None:
            spec = load_run_spec(spec_path)
            notebook = spec.notebook
            params = dict(spec.parameters)
            name = name or spec.name
            timeout = timeout or spec.timeout
            experiment = experiment or spec.experiment
            tags["run_spec"] = str(spec_path)
            if spec.description:
                tags["mlflow.note.content"] = spec.description  # the run's description in the UI
        params.update(_assignments(param or []))

        _close_orphans(_client(settings.tracking))

        def started(run_id: str, output: Path) -> None:
            err.print(f"running {notebook} as MLflow run {run_id}\n  -> {output}", highlight=False)

        with stop_on_signals():
            outcome = run_notebook(
                notebook,
                params,
                name=name,
                experiment=experiment,
                timeout=timeout or DEFAULT_CELL_TIMEOUT,
                out_root=out_dir,
                tags=tags,
                settings=settings,
                progress=err.is_terminal,
                on_start=started,
            )
    except RunnerError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:
        why = str(exc) if isinstance(exc, RunInterrupted) else "stopped by SIGINT"
        err.print(f"[red]{why}:[/red] the run is KILLED; its partial notebook is logged")
        raise typer.Exit(exc.exit_status if isinstance(exc, RunInterrupted) else 130) from None

    if as_json:
        data = {
            "status": outcome.status,
            "notebook": str(notebook),
            "output": str(outcome.output),
            "mlflow_run_id": outcome.run_id,
            "experiment": outcome.experiment,
            "error": outcome.error,
            "seconds": outcome.seconds,
            "settings_hash": settings_hash(settings),
        }
        out.print_json(json.dumps(data))
    else:
        colour = "green" if outcome.status == "FINISHED" else "red"
        out.print(
            f"[{colour}]{outcome.status}[/{colour}] in {outcome.seconds:.1f} s\n"
            f"notebook    {outcome.output}\n"
            f"MLflow run  {outcome.run_id} (experiment {outcome.experiment})\n"
            f"settings    {settings_hash(settings)}",
            highlight=False,
        )
    if outcome.status != "FINISHED":
        err.print(f"[red]failed:[/red] {outcome.error}", highlight=False)
        err.print(f"the partial notebook is {outcome.output}", highlight=False)
        raise typer.Exit(1)


# ------------------------------------------------------------------ runs


def _client(tracking: TrackingSettings | None = None):
    """A client of the tracking store (``tracking``, else the one the settings name)."""
    from mlflow.tracking import MlflowClient

    tracking = tracking or load_settings().tracking
    return MlflowClient(tracking_uri=tracking.tracking_uri())


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M") if ms else ""


def _duration(start: int | None, end: int | None) -> str:
    if not start or not end:
        return "running" if start else ""
    seconds = (end - start) / 1000
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _param(value: str | None) -> str:
    return "-" if value is None else (value or '""')


def _key_metrics(metrics: dict[str, float], n: int = 3) -> str:
    ranked = sorted(
        metrics,
        key=lambda m: (
            min(
                (i for i, k in enumerate(KEY_METRICS) if m == k or m.endswith("_" + k)), default=99
            ),
            m,
        ),
    )
    return " ".join(f"{m}={_number(metrics[m])}" for m in ranked[:n])


def _close_orphans(client) -> None:
    """Mark FAILED this host's RUNNING runs whose process ended, saying which."""
    from kronos.runner import close_orphaned
    from kronos.tracking import ORPHANED, PID_TAG

    for run in close_orphaned(client):
        err.print(
            f"run {run.info.run_id[:8]} ({run.info.run_name}, PID {run.data.tags.get(PID_TAG)}): "
            f"{ORPHANED}; marked FAILED",
            highlight=False,
        )


@runs_app.command("list")
def list_runs(
    experiment: Annotated[
        str | None, typer.Option(help="Only this MLflow experiment (default: all).")
    ] = None,
    max_runs: Annotated[int, typer.Option("--max", min=1, help="Newest runs at most.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recent runs, newest first, with a few key metrics.

    A RUNNING run of this host whose process has ended is first marked FAILED
    ("process ended without closing the run") with its partial notebook logged;
    runs started on other hosts are left as they are.
    """
    from kronos.runner import RunnerError, recent_runs

    client = _client()
    _close_orphans(client)
    try:
        runs, names = recent_runs(client, experiment, max_runs)
    except RunnerError as exc:
        fail(str(exc))
    if as_json:
        rows = [
            {
                "run_id": r.info.run_id,
                "experiment": names.get(r.info.experiment_id, r.info.experiment_id),
                "name": r.info.run_name,
                "status": r.info.status,
                "start": _when(r.info.start_time),
                "seconds": (r.info.end_time - r.info.start_time) / 1000
                if r.info.end_time and r.info.start_time
                else None,
                "metrics": r.data.metrics,
                "params": r.data.params,
            }
            for r in runs
        ]
        out.print_json(json.dumps(rows))
        return
    rows = [
        [
            r.info.run_id[:8],
            names.get(r.info.experiment_id, r.info.experiment_id),
            r.info.run_name or "",
            r.info.status,
            _when(r.info.start_time),
            _duration(r.info.start_time, r.info.end_time),
            _key_metrics(r.data.metrics),
        ]
        for r in runs
    ]
    title = f"{len(rows)} newest runs" + (f" of {experiment}" if experiment else "")
    t = table(
        title,
        ["run", "experiment", "name", "status", "start (UTC)", "duration", "metrics"],
        rows,
        left=7,
    )
    t.columns[5].justify = "right"
    out.print(t)


@runs_app.command("compare")
def compare(
    runs: Annotated[
        list[str], typer.Argument(metavar="RUN", help="Run ids or unique id prefixes.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Runs side by side: differing parameters, then every metric (best marked *).

    Higher is best: sharpe, sortino, total_return, cagr, calmar, hit_rate.
    Lower is best: crps, mae, rmse, pinball, loss. Smallest |max_drawdown| and
    coverage nearest 0.90 are best. Names match by suffix (val_crps is a crps).
    """
    from kronos.runner import RunnerError, compare_runs, resolve_runs

    client = _client()
    try:
        found = resolve_runs(client, runs)
    except RunnerError as exc:
        fail(str(exc))
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    result = compare_runs(found)
    if as_json:
        data = {
            "runs": [
                {
                    "run_id": r.info.run_id,
                    "name": r.info.run_name,
                    "experiment": names.get(r.info.experiment_id),
                    "status": r.info.status,
                }
                for r in found
            ],
            "params": result.params,
            "metrics": result.metrics,
            "best": result.best,
        }
        out.print_json(json.dumps(data))
        return
    columns = ["", *(f"{r.info.run_id[:8]}\n{r.info.run_name or ''}" for r in found)]
    head = [
        ["experiment", *(names.get(r.info.experiment_id, "") for r in found)],
        ["status", *(r.info.status for r in found)],
    ]
    t = table("runs compared (* best)", columns, head)
    t.add_section()
    for key, values in result.params.items():
        t.add_row(key, *(_param(values[i]) for i in result.run_ids))
    t.add_section()
    for metric, values in result.metrics.items():
        best = result.best.get(metric, [])
        t.add_row(
            metric,
            *(
                f"[bold green]{_number(values[i])} *[/bold green]"
                if i in best
                else _number(values[i])
                for i in result.run_ids
            ),
        )
    out.print(t)
    if not result.params:
        err.print("(the runs' parameters are identical)")


# ------------------------------------------------------------------ schedule


def _kronos_bin() -> str:
    script = Path(sys.executable).absolute().parent / "kronos"
    return str(script) if script.is_file() else f"{Path(sys.executable).absolute()} -m kronos"


def schedule(
    specs: Annotated[
        list[Path] | None,
        typer.Argument(metavar="SPEC", help="Run specs (default: experiments/*.yaml)."),
    ] = None,
    kronos_bin: Annotated[
        str | None, typer.Option("--bin", help="The kronos command cron runs (default: this one).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print crontab lines for the run specs that have a cron.

    Install with: (crontab -l; kronos schedule) | crontab -
    Also creates the workflows' MLflow experiments now, so that runs cron starts
    at the same minute never race to create one.
    """
    from kronos.runner import (
        RunnerError,
        ensure_experiments,
        load_run_spec,
        schedule_lines,
        spec_parameters,
    )

    paths = specs or sorted(SPECS.glob("*.yaml"))
    if not paths:
        fail(f"no run specs in {SPECS}/")
    repo = Path.cwd()
    problems, loaded = [], []
    for path in paths:
        try:
            spec = load_run_spec(path)
        except RunnerError as exc:
            problems.append(str(exc))
            continue
        try:  # a typo in a spec should fail now, not at 22:00 on Wednesday
            spec_parameters(spec, repo)
            loaded.append((path, spec))
        except RunnerError as exc:
            problems.append(str(exc.at(str(path))) + f" (notebook {spec.notebook})")
    if problems:
        fail("\n".join(problems))
    binary = kronos_bin or _kronos_bin()
    lines = schedule_lines(paths, repo, binary)
    ensure_experiments(load_settings().tracking)
    for path, spec in loaded:
        if spec.cron is None:
            err.print(f"{path}: no cron; run it with: kronos run {path}", highlight=False)
    if as_json:
        entries = [
            {"spec": str(p), "name": s.name, "cron": s.cron, "line": line}
            for (p, s), line in zip([(p, s) for p, s in loaded if s.cron], lines[1::2], strict=True)
        ]
        out.print_json(json.dumps(entries))
        return
    zone = datetime.now().astimezone().tzname()
    typer.echo(f"# kronos schedule for {repo}; times are in this machine's time zone ({zone})")
    for line in lines:
        typer.echo(line)
