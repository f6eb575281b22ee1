"""``kronos bench``: measurements that print a table, or one JSON object."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.table import Table

from kronos.cli._common import DbOption, JsonOption, err, fail, open_store, out, progress, table
from kronos.cli.bench_tables import (
    SIGNIFICANCE_COLUMNS,
    print_calibration,
    print_holdouts,
    ratio,
    significance_cells,
)
from kronos.config import Settings, load_settings

app = typer.Typer(help="Benchmarks that print a table (or JSON).", no_args_is_help=True)


def _panel_and_sectors(
    db: Path | None, source: str, settings: Settings
) -> tuple[pl.DataFrame, dict[str, str]]:
    """Today's returns panel of a bars source, and each symbol's sector."""
    from kronos.data import readers
    from kronos.errors import KronosError
    from kronos.features.returns import returns_panel

    data = settings.data
    try:
        with open_store(db, read_only=True, settings=data) as store:
            panel = returns_panel(store, date.today(), source=source, settings=data)
            names = panel["symbol"].unique().to_list()
            sectors = readers.sectors(store, date.today(), names, settings=data)
    except KronosError as exc:
        fail(str(exc))
    return panel, sectors


MODELS_HELP = "Comma-separated forecasters: names, package.module:Class, entry points."


def _forecasters(models: str) -> list[str]:
    """``--models``: comma-separated built-in names, import paths or entry points, resolved.

    A reference that does not resolve (or a model failing the contract) exits 2
    naming it, before any data is read.
    """
    from kronos.errors import KronosError
    from kronos.models.registry import FORECASTERS, forecaster_class

    names = [n.strip() for n in models.split(",") if n.strip()]
    try:
        for name in names:
            if name not in FORECASTERS:  # built-ins are imported when fitted
                forecaster_class(name)
    except KronosError as exc:
        fail(str(exc))
    return names


@app.command("ingest")
def bench_ingest(
    rows: Annotated[int, typer.Option(help="Synthetic bar rows to ingest.")] = 10_000_000,
    as_json: JsonOption = False,
) -> None:
    """Ingest synthetic bars into a fresh store; rows per second vs raw DuckDB."""
    from kronos.bench.ingest import run_ingest_bench

    with progress() as bar:
        task = bar.add_task("bench ingest", total=None)
        result = run_ingest_bench(rows, on_step=lambda s: bar.update(task, description=s))
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"kronos bench ingest ({result['rows']:,} rows)")
    for col in ("step", "seconds", "rows/s", "note"):
        table.add_column(col, justify="left" if col in ("step", "note") else "right")
    for s in result["steps"]:
        table.add_row(s["step"], f"{s['seconds']:.2f}", f"{s['rows_per_s']:,.0f}", s["note"])
    out.print(table)
    out.print(
        f"target >= {result['target_rows_per_s']:,} rows/s: "
        f"{'[green]met' if result['target_met'] else '[red]missed'}[/]"
    )


GraphMaxSteps = Annotated[
    int | None,
    typer.Option(help="Cap on the graph models' (stemgnn, mtgnn, mtgnn_prior) steps."),
]


def _holdout_years(text: str | None) -> list[int] | None:
    """``--holdouts 2008,2020,2022`` as years; exits 2 naming a token that is not a year."""
    if not text:
        return None
    years = []
    for token in (t.strip() for t in text.split(",")):
        if not (token.isdigit() and len(token) == 4):
            fail(f"--holdouts: {token!r} is not a calendar year (expected e.g. 2008,2020,2022)")
        years.append(int(token))
    return years


@app.command("forecast")
def bench_forecast(
    db: DbOption = None,
    source: Annotated[str, typer.Option(help="Evaluate on this bars source.")] = "skfolio.sp500",
    models: Annotated[
        str, typer.Option(help=MODELS_HELP)
    ] = "historical,ewma,garch,nbeats,nbeats_default,tft,stemgnn,mtgnn,mtgnn_prior",
    holdout_days: Annotated[int, typer.Option(help="Held-out final calendar days.")] = 365,
    holdouts: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated holdout years (e.g. 2008,2020,2022): each a calendar year, "
            "models refitted before it, plus the aggregate; replaces --holdout-days."
        ),
    ] = None,
    nbeats_max_steps: Annotated[
        int | None, typer.Option(help="Cap on our N-BEATS's optimisation steps.")
    ] = None,
    graph_max_steps: GraphMaxSteps = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "kronos-bench",
    as_json: JsonOption = False,
) -> None:
    """Leaderboard: every forecaster on the same held-out year(s), rolling origins.

    Each row carries the Diebold-Mariano p-values against EWMA and GARCH and
    the 90% Model Confidence Set on the per-origin losses.
    """
    from kronos.bench.forecast import run_forecast_bench
    from kronos.errors import KronosError
    from kronos.tracking import mlflow_run

    names = _forecasters(models)
    years = _holdout_years(holdouts)
    settings = load_settings()
    panel, sectors = _panel_and_sectors(db, source, settings)
    with (
        mlflow_run(experiment, "bench-forecast", {"source": source}, settings=settings) as recorder,
        progress("steps") as bar,
    ):
        task = bar.add_task("bench forecast", total=2 * len(names) * len(years or [0]))
        try:
            result = run_forecast_bench(
                panel,
                names,
                holdout_days,
                nbeats_max_steps,
                on_step=lambda s: bar.update(task, advance=1, description=s),
                sectors=sectors,
                graph_max_steps=graph_max_steps,
                holdouts=years,
            )
        except KronosError as exc:
            fail(str(exc))
        recorder.log_params(
            {
                "source": source,
                "holdout_days": holdout_days,
                "holdouts": holdouts,
                "models": models,
                "nbeats_max_steps": nbeats_max_steps,
                "graph_max_steps": graph_max_steps,
            }
        )
        if years:
            metrics = {
                f"{r['model']}.{scope}.{k}": part[k]
                for r in result["models"]
                for scope, part in [*r["holdouts"].items(), ("aggregate", r["aggregate"])]
                for k in ("coverage", "crps")
            }
        else:
            metrics = {
                f"{r['model']}.{k}": r[k]
                for r in result["models"]
                for k in ("mae", "coverage", "crps", "fit_seconds")
            }
        recorder.log_metrics(metrics)
        recorder.log_dict(result, "leaderboard.json")
        result["mlflow_run_id"] = recorder.run_id
    if as_json:
        print(json.dumps(result, default=str))
        return
    if years:
        print_holdouts(result)
        out.print(f"MLflow run {result['mlflow_run_id']}", highlight=False)
        return
    h = result["holdout"]
    rows = [
        [
            r["model"],
            f"{r['mae']:.5f}",
            f"{r['coverage']:.1%}",
            f"{r['crps']:.6f}",
            "" if r["crps_exact"] is None else f"{r['crps_exact']:.6f}",
            ratio(r["crps_ratio_garch"]),
            f"{r['fit_seconds']:.1f}",
            f"{r['predict_seconds_per_origin'] * 1000:.1f}",
            *significance_cells(r),
        ]
        for r in result["models"]
    ]
    out.print(
        table(
            f"forecast leaderboard: {len(h['symbols'])} symbols, {h['origins']} origins "
            f"{h['first_origin']}..{h['last_origin']}, steps 1-5",
            [
                "model",
                "MAE",
                "coverage",
                "CRPS",
                "CRPS exact",
                "CRPS/GARCH",
                "fit s",
                "predict ms/origin",
                *SIGNIFICANCE_COLUMNS,
            ],
            rows,
        )
    )
    out.print(f"MLflow run {result['mlflow_run_id']}", highlight=False)


@app.command("models")
def bench_models(
    models: Annotated[str, typer.Option(help=MODELS_HELP)] = "nbeats,tft,ewma,historical,garch",
    n_symbols: Annotated[int, typer.Option(help="Synthetic universe size.")] = 500,
    years: Annotated[float, typer.Option(help="Synthetic history in years.")] = 3.0,
    steps: Annotated[int, typer.Option(help="Training steps for the neural models.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Training throughput and predict latency for 500 symbols x 5 steps."""
    from kronos.bench.models import run_models_bench

    names = tuple(_forecasters(models))
    with progress("steps") as bar:
        task = bar.add_task("bench models", total=2 * len(names) + 1)
        result = run_models_bench(
            names,
            n_symbols,
            years,
            steps,
            on_step=lambda s: bar.update(task, advance=1, description=s),
        )
    if as_json:
        print(json.dumps(result))
        return
    u = result["universe"]
    rows = [
        [
            r["model"],
            f"{r['fit_seconds']:.1f}",
            "" if r["train_windows_per_s"] is None else f"{r['train_windows_per_s']:,.0f}",
            f"{r['predict_seconds'] * 1000:.0f}",
            "[green]yes[/]" if r["target_met"] else "[red]no[/]",
        ]
        for r in result["models"]
    ]
    out.print(
        table(
            f"kronos bench models: {u['symbols']} synthetic symbols x {u['days']} days, "
            f"{u['steps']} training steps",
            ["model", "fit s", "train windows/s", f"predict {u['symbols']}x5 ms", "< 1 s"],
            rows,
        )
    )


@app.command("calibration")
def bench_calibration(
    db: DbOption = None,
    source: Annotated[str, typer.Option(help="Evaluate on this bars source.")] = "skfolio.sp500",
    models: Annotated[
        str, typer.Option(help=MODELS_HELP)
    ] = "historical,ewma,garch,nbeats,tft,stemgnn,mtgnn,mtgnn_prior",
    holdout_days: Annotated[int, typer.Option(help="Held-out final calendar days.")] = 365,
    warmup_days: Annotated[int, typer.Option(help="Calibrator warm-up before it.")] = 365,
    nbeats_max_steps: Annotated[
        int | None, typer.Option(help="Cap on our N-BEATS's optimisation steps.")
    ] = 1000,
    graph_max_steps: GraphMaxSteps = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "kronos-bench",
    dynamic: Annotated[
        bool, typer.Option(help="Also calibrate with the regime encoder's dynamic lambda.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Raw vs calibrated coverage and CRPS for every forecaster and distorted ones."""
    from kronos.bench.calibration import run_calibration_bench
    from kronos.bench.calibration_quality import headline
    from kronos.tracking import mlflow_run

    names = _forecasters(models)
    settings = load_settings()
    panel, sectors = _panel_and_sectors(db, source, settings)
    with (
        mlflow_run(
            experiment, "bench-calibration", {"source": source}, settings=settings
        ) as recorder,
        progress("steps") as bar,
    ):
        task = bar.add_task("bench calibration", total=2 * len(names) + 3 + int(dynamic))
        result = run_calibration_bench(
            panel,
            sectors,
            names,
            holdout_days,
            warmup_days,
            nbeats_max_steps,
            settings=settings.calibration,
            on_step=lambda s: bar.update(task, advance=1, description=s),
            dynamic=dynamic,
            graph_max_steps=graph_max_steps,
        )
        recorder.log_metrics(
            {
                f"{r['model']}.{k}": r[k]
                for r in result["models"]
                for k in ("raw_coverage", "calibrated_coverage", "raw_crps", "calibrated_crps")
            }
            | {f"{r['model']}.{k}": v for r in result["models"] for k, v in headline(r).items()}
            | {
                f"{r['model']}.{variant}.{k}": v[k]
                for r in result["models"]
                for variant, v in r.get("dynamic", {}).items()
                for k in ("coverage", "crps")
            }
        )
        recorder.log_params(
            {
                "holdout_days": holdout_days,
                "warmup_days": warmup_days,
                "models": models,
                "nbeats_max_steps": nbeats_max_steps,
                "graph_max_steps": graph_max_steps,
                "dynamic": dynamic,
            }
        )
        recorder.log_dict(result, "calibration.json")
        result["mlflow_run_id"] = recorder.run_id
    if as_json:
        print(json.dumps(result))
        return
    print_calibration(result, dynamic)
    out.print(f"MLflow run {result['mlflow_run_id']}", highlight=False)


@app.command("decision")
def bench_decision(
    n_symbols: Annotated[int, typer.Option(help="Synthetic universe size.")] = 3000,
    years: Annotated[float, typer.Option(help="Synthetic history in years.")] = 2.0,
    repeats: Annotated[int, typer.Option(help="Timed runs (median reported).")] = 20,
    as_json: JsonOption = False,
) -> None:
    """The decision step for 3,000 symbols: in memory, and with its store reads."""
    from kronos.bench.decision import run_decision_bench

    with progress("steps") as bar:
        task = bar.add_task("bench decision", total=3)
        result = run_decision_bench(
            n_symbols,
            years,
            repeats,
            on_step=lambda s: bar.update(task, advance=1, description=s),
        )
    if as_json:
        print(json.dumps(result))
        return

    def met(ok: bool) -> str:
        return "[green]yes[/]" if ok else "[red]no[/]"

    rows = [
        [
            "scoring + allocation + planning, in memory",
            f"{result['in_memory_seconds'] * 1000:.1f}",
            "50",
            met(result["in_memory_target_met"]),
        ],
        [
            "whole step with store reads (no inference)",
            f"{result['with_store_seconds'] * 1000:.1f}",
            "500",
            met(result["with_store_target_met"]),
        ],
    ]
    out.print(
        table(
            f"kronos bench decision: {result['symbols']} symbols at {result['asof']} "
            f"({result['recommendations']} recos, {result['orders']} orders)",
            ["step", "median ms", "target ms", "met"],
            rows,
        )
    )


@app.command("backtest")
def bench_backtest(
    n_symbols: Annotated[int, typer.Option(help="Synthetic universe size.")] = 3000,
    years: Annotated[float, typer.Option(help="Synthetic history in years.")] = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Walk-forward speed: bundled 1990-2022 weekly, synthetic 3,000 x 10y, vs vectorbt."""
    from kronos.bench.backtest import run_backtest_bench

    result = run_backtest_bench(
        n_symbols, years, on_step=lambda m: err.print(f"  {m}", highlight=False)
    )
    if as_json:
        print(json.dumps(result, default=str))
        return

    def met(ok: bool) -> str:
        return "[green]yes[/]" if ok else "[red]no[/]"

    b, s = result["bundled"], result["synthetic"]
    rows = [
        [
            f"bundled 20 stocks, {b['sessions']} sessions, {b['decisions']} weekly decisions "
            "(ingest included)",
            f"{b['seconds_all_included']:.1f}",
            f"{b['target_seconds']:.0f}",
            met(b["target_met"]),
        ],
        [
            f"synthetic {s['symbols']:,} symbols x {s['years']:g}y, {s['sessions']} sessions, "
            f"{s['decisions']} weekly decisions",
            f"{s['seconds']:.1f}",
            f"{s['target_seconds']:.0f}",
            met(s["target_met"]),
        ],
    ]
    out.print(
        table("kronos bench backtest (EWMA, yearly refits)", ["run", "s", "target s", "met"], rows)
    )
    phases = ["load", "forecasts", "risk", "trading_decide", "trading_simulate", "vectorbt"]
    out.print(
        table(
            "where the time goes (s)",
            ["run", *phases],
            [
                [name, *(f"{r['timings'].get(p, 0.0):.1f}" for p in phases)]
                for name, r in (("bundled", b), ("synthetic", s))
            ],
        )
    )
    out.print(
        table(
            "harness simulation vs vectorbt's simulation of the same orders",
            ["run", "fills", "harness s", "vectorbt s", "ratio", "parity (max rel diff)"],
            [
                [
                    name,
                    f"{r['fills']:,}",
                    f"{r['harness_simulate_seconds']:.2f}",
                    f"{r['vectorbt_simulate_seconds']:.3f}",
                    f"{r['overhead_ratio']:.1f}x",
                    f"{r['parity']:.1e}",
                ]
                for name, r in (("bundled", b), ("synthetic", s))
            ],
        )
    )


# ---------------------------------------------------------------- serve (kronos bench serve)


@app.command("serve")
def bench_serve(
    requests: Annotated[int, typer.Option(help="GET /forecast requests to send.", min=1)] = 500,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.", min=1)] = 20,
    model: Annotated[str, typer.Option(help="Forecaster whose promoted artifact is served.")] = (
        "ewma"
    ),
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Artifact root [env MODEL_DIR]; none promoted: one is trained."),
    ] = None,
    distinct: Annotated[int, typer.Option(help="Distinct symbol queries cycled.", min=1)] = 10,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Service req/s and p50/p95/p99 vs a plain FastAPI endpoint with the same payload."""
    from kronos.bench.serve import run_serve_bench
    from kronos.config import resolve_db_path
    from kronos.errors import KronosError

    settings = load_settings()
    try:
        result = run_serve_bench(
            resolve_db_path(db, settings.data),
            requests=requests,
            concurrency=concurrency,
            model=model,
            model_dir=model_dir or settings.models.model_dir,
            distinct=distinct,
            data=settings.data,
            on_step=lambda m: err.print(f"  {m}", highlight=False),
        )
    except KronosError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result, default=str))
        return
    rows = [
        [
            name,
            f"{r['rps']:,.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            "-" if r["cpu_ms_per_request"] is None else f"{r['cpu_ms_per_request']:.2f}",
            f"{r['client_cpu_ms_per_request']:.2f}",
            str(sum(r["errors"].values())),
        ]
        for name, r in (
            ("kronos serve", result["service"]),
            ("plain FastAPI, same payload", result["reference"]),
        )
    ]
    made = "trained for this run" if result["artifact_trained_for_run"] else "promoted"
    title = (
        f"kronos bench serve: {result['requests']} requests, {result['concurrency']} at a time, "
        f"{result['distinct_queries']} distinct queries, {result['payload_bytes']} B"
    )
    columns = ["endpoint", "req/s", "p50 ms", "p95 ms", "p99 ms", "server CPU ms/req"]
    out.print(table(title, [*columns, "client CPU ms/req", "errors"], rows))
    out.print(f"model {result['model']}: {result['artifact']} ({made})", highlight=False)
    cache = result["service"]["cache"]
    out.print(
        f"service cache: {cache['computed']} answers computed, {cache['hits']} served from memory; "
        f"load average at the start {result['service']['load_average']:.1f}",
        highlight=False,
    )
    target = result["target"]
    verdict = "[green]met[/]" if result["target_met"] else "[red]not met[/]"
    out.print(f"target p99 < {target['p99_ms']:.0f} ms and >= {target['rps']:.0f} req/s: {verdict}")
