"""``kronos backtest SPEC``: a walk-forward backtest, its report and its MLflow run."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kronos.cli._common import DbOption, JsonOption, err, fail, open_store, out, table
from kronos.config import load_settings, resolve_db_path, settings_hash
from kronos.errors import KronosError

if TYPE_CHECKING:
    from kronos.backtest.result import BacktestResult

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
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster: ray://HEAD:10001 (Ray Client) or HEAD:6379 (the head's GCS); "
            "with token auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN.",
        ),
    ] = None,
    ray_working_dir: Annotated[
        Path | None,
        typer.Option(
            "--ray-working-dir",
            help="Ship this code folder to the Ray workers (runtime_env working_dir; "
            ".venv, data, mlruns, experiments/runs and .git stay behind).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="With --sweep: skip the variants an earlier run of it finished."
        ),
    ] = False,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Reports go to OUT/<spec name>/<UTC stamp>/.")
    ] = Path("data/backtests"),
    mlflow: Annotated[bool, typer.Option(help="Log each run to MLflow (kronos-backtest).")] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a walk-forward backtest spec: report, frames and an MLflow run per variant."""
    from kronos.backtest.executor import connect
    from kronos.backtest.report import write_frames, write_report
    from kronos.backtest.result import STAT_NAMES
    from kronos.backtest.spec import expand_sweep, parse_spec, read_spec_file, to_yaml
    from kronos.backtest.sweep import load_done, record_done, run_sweep
    from kronos.runner.backtest_record import EXPERIMENT, log_backtest, variant_run_name
    from kronos.tracking import mlflow_run

    if executor not in ("local", "ray"):
        fail(f"--executor must be local or ray, not {executor!r}")
    if executor == "local" and (ray_address or ray_working_dir):
        fail("--ray-address and --ray-working-dir need --executor ray")
    base = load_settings()
    settings = base.data
    path = resolve_db_path(db, settings)
    # nothing relative reaches a Ray worker: they resolve against their own directory
    store_path = path.resolve()
    out_dir = out_dir.resolve()
    if not store_path.exists():
        fail(f"no kronos database at {store_path}; run 'kronos data ingest' first")
    try:
        raw = read_spec_file(spec_path)
        base_spec = parse_spec(raw, str(spec_path), set_ or [])
        variants = expand_sweep(base_spec, sweep or [], str(spec_path))
        if any((s.forecaster.artifact or "").startswith("models:/") for _, s in variants):
            from kronos.mlflow_registry import resolve_spec_artifact

            # on the driver, once: the folds (maybe on Ray nodes) read a local directory
            uri, models = base.tracking.tracking_uri(), base.models.model_dir.resolve()
            variants = [
                (a, resolve_spec_artifact(s, tracking_uri=uri, model_dir=models))
                for a, s in variants
            ]
    except KronosError as exc:
        fail(str(exc))

    many = len(variants) > 1
    if resume and not many:
        fail("--resume needs --sweep: it skips the variants of a sweep an earlier run finished")
    records = out_dir / base_spec.name / "sweep"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    rows: dict[int, dict] = {}
    # when each variant's work began, so its MLflow run shows the real duration:
    # locally a variant starts when the one before it ended; on Ray all start at submission
    began = {"next": time.time()}

    def finish(i: int, result: BacktestResult) -> None:
        assignment, spec = variants[i]
        target = out_dir / spec.name / stamp
        files = write_report(result, target, to_yaml(spec))
        files.update(write_frames(result, target))
        run_id = None
        used = spec.run_settings(base, path)
        if mlflow:
            tags = {f"sweep.{k}": v for k, v in assignment.items()}
            name = variant_run_name(base_spec.name, assignment) if many else spec.name
            with mlflow_run(
                EXPERIMENT, name, tags, settings=used, start_time=began["next"]
            ) as recorder:
                log_backtest(recorder, spec, result, target, tags)
                run_id = recorder.run_id
        rows[i] = {
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
            "crossed_rows": result.crossed_rows,
            "timings": result.timings,
            "report": str(files["report.html"]),
            "mlflow_run_id": run_id,
            "skipped": False,
        }
        if executor == "local":
            began["next"] = time.time()
        if many:
            record_done(records, spec, rows[i])
            err.print(f"  done: {spec.name} (order hash {result.order_hash[:16]})", highlight=False)

    todo = []
    for i, (_, spec) in enumerate(variants):
        used = settings_hash(spec.run_settings(base, path))
        row = load_done(records, spec, used) if resume else None
        if row is None:
            todo.append((i, spec))
        else:
            rows[i] = {**row, "skipped": True}
    if many:
        skipped = [variants[i][1].name for i in sorted(rows)]
        err.print(
            f"{len(variants)} variants on the {executor} executor"
            + (f"; skipped (done before): {', '.join(skipped)}" if skipped else ""),
            highlight=False,
        )
    try:
        if executor == "ray" and todo:
            connect(ray_address, ray_working_dir)  # the folds' and variants' tasks use it
        began["next"] = time.time()
        if many:
            run_sweep(
                todo,
                store_path,
                finish,
                executor=executor,
                ray_address=ray_address,
                working_dir=ray_working_dir,
                lock_wait_s=settings.lock_wait_s,
            )
        else:
            from kronos.backtest.run import run_backtest

            with open_store(store_path, read_only=True, settings=settings) as store:
                result = run_backtest(
                    variants[0][1],
                    store,
                    executor=executor,
                    ray_address=ray_address,
                    progress=lambda m: err.print(f"  {m}", highlight=False),
                )
            finish(0, result)
    except KronosError as exc:
        fail(str(exc))
    summary = [rows[i] for i in range(len(variants))]
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
        if row.get("skipped"):
            out.print("skipped: done by an earlier run of this sweep (--resume)")
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
