"""``kronos backtest SPEC``: a walk-forward backtest, its report and its MLflow run."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from kronos.cli._common import DbOption, JsonOption, err, fail, open_store, out, table
from kronos.config import load_settings, resolve_db_path, settings_hash
from kronos.errors import KronosError

ExecutorOption = Annotated[
    str, typer.Option("--executor", help="Where folds and sweep variants run: local or ray.")
]


def _fmt(name: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if name in ("sharpe", "sortino"):
        return f"{value:.2f}"
    if name == "turnover":
        return f"{value:.2f}x"
    return f"{value:.2%}"


def backtest(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="A backtests/*.yaml spec.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a spec key: dotted.key=value (repeatable)."),
    ] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep", help="Run one variant per value: dotted.key=v1,v2,... (repeatable)."
        ),
    ] = None,
    executor: ExecutorOption = "local",
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster address (ray://host:10001).")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Reports go to OUT/<spec name>/<UTC stamp>/.")
    ] = Path("data/backtests"),
    mlflow: Annotated[bool, typer.Option(help="Log each run to MLflow (kronos-backtest).")] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a walk-forward backtest spec: report, frames and an MLflow run per variant."""
    from kronos.backtest.executor import map_calls
    from kronos.backtest.report import write_frames, write_report
    from kronos.backtest.result import STAT_NAMES
    from kronos.backtest.run import run_on_db
    from kronos.backtest.spec import expand_sweep, parse_spec, read_spec_file, to_yaml
    from kronos.runner.backtest_record import EXPERIMENT, log_backtest
    from kronos.tracking import mlflow_run

    if executor not in ("local", "ray"):
        fail(f"--executor must be local or ray, not {executor!r}")
    base = load_settings()
    settings = base.data
    path = resolve_db_path(db, settings)
    if not path.exists():
        fail(f"no kronos database at {path}; run 'kronos data ingest' first")
    try:
        raw = read_spec_file(spec_path)
        base_spec = parse_spec(raw, str(spec_path), set_ or [])
        variants = expand_sweep(base_spec, sweep or [], str(spec_path))
    except KronosError as exc:
        fail(str(exc))

    many = len(variants) > 1
    if many:
        err.print(f"{len(variants)} variants on the {executor} executor", highlight=False)
        # variants in parallel; each runs its own folds in order
        calls = [(spec, path, "local", None) for _, spec in variants]
        try:
            shared = {"lock_wait_s": settings.lock_wait_s}
            results = map_calls(run_on_db, calls, executor, ray_address, shared)
        except KronosError as exc:
            fail(str(exc))
    else:
        from kronos.backtest.run import run_backtest

        spec = variants[0][1]
        try:
            with open_store(path, read_only=True, settings=settings) as store:
                results = [
                    run_backtest(
                        spec,
                        store,
                        executor=executor,
                        ray_address=ray_address,
                        progress=lambda m: err.print(f"  {m}", highlight=False),
                    )
                ]
        except KronosError as exc:
            fail(str(exc))

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    summary = []
    for (assignment, spec), result in zip(variants, results, strict=True):
        target = out_dir / spec.name / stamp
        files = write_report(result, target, to_yaml(spec))
        files.update(write_frames(result, target))
        run_id = None
        used = spec.run_settings(base, path)
        if mlflow:
            tags = {f"sweep.{k}": v for k, v in assignment.items()}
            with mlflow_run(EXPERIMENT, spec.name, tags, settings=used) as recorder:
                log_backtest(recorder, spec, result, target, tags)
                run_id = recorder.run_id
        summary.append(
            {
                "name": spec.name,
                "sweep": assignment,
                "spec_hash": result.spec_hash,
                "order_hash": result.order_hash,
                "settings_hash": settings_hash(used),
                "start": str(result.start),
                "end": str(result.end),
                "stats": result.stats,
                "parity": result.parity,
                "notes": list(result.notes),
                "timings": result.timings,
                "report": str(files["report.html"]),
                "mlflow_run_id": run_id,
            }
        )
    if as_json:
        out.print_json(json.dumps(summary if many else summary[0], default=str))
        return
    for row in summary:
        s = row["stats"]
        out.print(
            table(
                f"{row['name']}  {row['start']}..{row['end']}  spec {row['spec_hash']}",
                ["statistic", "strategy", "buy-and-hold"],
                [[n, _fmt(n, s.get(n)), _fmt(n, s.get(f"benchmark_{n}"))] for n in STAT_NAMES],
            )
        )
        worst = max(row["parity"].values()) if row["parity"] else float("nan")
        for note in row["notes"]:
            out.print(f"note: {note}")
        out.print(
            f"order hash {row['order_hash'][:16]}  settings {row['settings_hash']}  "
            f"vectorbt parity (max rel diff) {worst:.1e}\n"
            f"report {row['report']}"
            + (
                f"\nMLflow run {row['mlflow_run_id']} (experiment kronos-backtest)"
                if row["mlflow_run_id"]
                else ""
            )
        )
