"""``kronos data``: ingest, validate, inspect the market store."""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kronos.cli._common import DbOption, JsonOption, err, fail, open_store, out, progress
from kronos.config import load_settings, resolve_db_path
from kronos.data import loaders, quality, readers
from kronos.data.ingest import UpsertResult
from kronos.errors import KronosError

app = typer.Typer(help="Market store: ingest, validate, inspect.", no_args_is_help=True)

SHORT = {
    "readable": "read",
    "no_nulls": "nulls",
    "positive_prices": "px>0",
    "ohlc_consistent": "ohlc",
    "duplicate_keys": "dups",
    "monotonic_dates": "order",
    "extreme_moves": "moves",
    "min_span": "span",
    "off_session": "sess",
    "calendar_gaps": "gaps",
}


class Source(StrEnum):
    """Where ``kronos data ingest`` reads from."""

    bundled = "bundled"
    csv = "csv"
    parquet = "parquet"
    fmp = "fmp"
    alpaca = "alpaca"
    synthetic = "synthetic"


def _results_table(results: dict[str, UpsertResult]) -> Table:
    table = Table(title="ingest")
    for col in ("table", "rows in", "inserted", "updated", "unchanged"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for r in results.values():
        table.add_row(
            r.table, f"{r.rows_in:,}", f"{r.inserted:,}", f"{r.updated:,}", f"{r.unchanged:,}"
        )
    return table


@app.command("ingest")
def data_ingest(
    source: Annotated[Source, typer.Option("--source", "-s", help="Which source to read.")],
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files (csv, parquet, fmp), or a dataset folder (parquet)."),
    ] = None,
    db: DbOption = None,
    symbol: Annotated[str | None, typer.Option(help="Symbol of single-symbol files.")] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="Column mapping NAME=COLUMN (repeatable), e.g. --map 'adj_close=Adj Close'.",
        ),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option(
            help="Time zone of naive intraday timestamps in files; dates and midnight "
            "stamps are session dates whatever it says."
        ),
    ] = None,
    date_format: Annotated[
        str | None,
        typer.Option(
            "--date-format",
            help="How to read non-ISO dates in files (strptime), e.g. '%m/%d/%Y' (US) or "
            "'%d/%m/%Y' (European); needed for slash and dot dates.",
        ),
    ] = None,
    calendar_name: Annotated[
        str | None,
        typer.Option(
            "--calendar",
            help="Exchange calendar bars must fall on: XNYS, ... or none for 24/7 "
            "(env KRONOS_CALENDAR; default XNYS).",
        ),
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="FMP endpoint of the files (else from name).")
    ] = None,
    known_at: Annotated[
        datetime | None,
        typer.Option(help="When FMP snapshot files (estimates, profile) were taken, UTC."),
    ] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols (alpaca).")] = None,
    start: Annotated[datetime | None, typer.Option(help="First day (alpaca, synthetic).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Last day (alpaca).")] = None,
    n_symbols: Annotated[int, typer.Option(help="Synthetic universe size.")] = 50,
    years: Annotated[float, typer.Option(help="Synthetic history in years.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Synthetic seed.")] = 0,
    reference: Annotated[bool, typer.Option(help="Synthetic reference data too.")] = True,
    batch_symbols: Annotated[
        int, typer.Option(help="Synthetic symbols per committed batch.")
    ] = 250,
    as_json: JsonOption = False,
) -> None:
    """Ingest a source into the store: idempotent, one transaction per batch.

    Bad input is refused (exit 2) naming file, line, column and symbol; a file
    is stored whole or not at all (files before a refused one stay committed, and
    the error names them). Bars must fall on sessions of the calendar that have
    closed by now: a bar is known only at its session's close.
    """
    from kronos.data.ingest import IngestRules

    loaded = load_settings()
    settings = loaded.data
    files = list(paths or [])
    if source in (Source.csv, Source.parquet, Source.fmp) and not files:
        fail(f"--source {source.value} needs one or more files")
    if source is Source.alpaca and (not symbols or not start):
        fail("--source alpaca needs --symbols and --start")

    def on_note(message: str) -> None:
        err.print(f"note: {message}", highlight=False)

    try:
        rules = IngestRules.from_settings(settings, calendar_name)
        with open_store(db, settings=settings) as store, progress() as bar:
            task = bar.add_task(f"ingest {source.value}", total=None)

            def on_batch(r: UpsertResult) -> None:
                bar.update(task, advance=r.rows_in, description=f"ingest {r.table}")
                if not err.is_terminal:  # a plain log line per committed batch for scripts
                    err.print(
                        f"committed {r.table}: {r.rows_in} rows, {r.inserted} inserted, "
                        f"{r.updated} updated",
                        highlight=False,
                    )

            checks = {"rules": rules, "on_note": on_note}
            if source is Source.bundled:
                results = loaders.load_bundled(store, on_batch, **checks)
            elif source is Source.parquet and any(f.is_dir() for f in files):
                from kronos.data.sources.parquet import load_dataset

                if len(files) != 1:
                    fail("--source parquet takes one dataset folder (kronos data export DIR)")
                results = load_dataset(store, files[0], on_batch, **checks)
            elif source in (Source.csv, Source.parquet):
                from kronos.data.sources.files import parse_mapping

                results = loaders.load_bar_files(
                    store,
                    files,
                    mapping=parse_mapping(map_),
                    symbol=symbol,
                    tz=tz,
                    settings=settings,
                    on_batch=on_batch,
                    source=source.value,
                    date_format=date_format,
                    **checks,
                )
            elif source is Source.fmp:
                from datetime import UTC

                known = known_at.replace(tzinfo=known_at.tzinfo or UTC) if known_at else None
                results = loaders.load_fmp_files(
                    store, files, kind=kind, known_at=known, on_batch=on_batch, **checks
                )
            elif source is Source.alpaca:
                results = loaders.load_alpaca(
                    store,
                    (symbols or "").split(","),
                    start.date() if start else date.today(),
                    end.date() if end else None,  # None: the last session closed by now
                    on_batch,
                    alpaca=loaded.alpaca_data,
                    **checks,
                )
            else:
                results = loaders.load_synthetic(
                    store,
                    n_symbols=n_symbols,
                    years=years,
                    seed=seed,
                    start=start.date() if start else date(2000, 1, 3),
                    reference=reference,
                    batch_symbols=batch_symbols,
                    on_batch=on_batch,
                    **checks,
                )
    except KronosError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({t: vars(r) | {"unchanged": r.unchanged} for t, r in results.items()}))
    else:
        out.print(_results_table(results))


@app.command("export")
def data_export(
    target: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    db: DbOption = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an existing dataset at TARGET.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Write every table as a Hive-partitioned Parquet dataset with manifest.json.

    Bars (and other tables that grow with history) get one folder per year, the
    rest one file each. Read-only commands take the folder as --db; 'kronos data
    ingest --source parquet TARGET' reads it back into a DuckDB file.
    """
    from kronos.data.dataset import export_dataset

    try:
        with open_store(db, read_only=True, settings=load_settings().data) as store:
            manifest = export_dataset(store, target, replace=replace)
    except KronosError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(manifest))
        return
    rows = Table(title=f"dataset {target}")
    for col in ("table", "rows", "files", "partitioned by"):
        rows.add_column(col, justify="left" if col in ("table", "partitioned by") else "right")
    for name, entry in manifest["tables"].items():
        rows.add_row(
            name, f"{entry['rows']:,}", str(len(entry["files"])), entry["partition_by"] or ""
        )
    out.print(rows)
    out.print(
        f"schema version {manifest['schema_version']}, content hash {manifest['content_hash']}",
        highlight=False,
    )


@app.command("info")
def data_info(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Symbols, date spans and rows per table."""
    try:
        with open_store(db, read_only=True, settings=load_settings().data) as store:
            info = loaders.store_info(store)
    except KronosError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(info))
        return
    out.print(f"[bold]{info['db']}[/bold]  schema version {info['schema_version']}")
    bars = Table(title="bars by source")
    for col in ("source", "symbols", "first", "last", "rows"):
        bars.add_column(col, justify="right" if col == "rows" else "left")
    for r in info["bars_by_source"]:
        bars.add_row(
            r["source"],
            f"{r['n_symbols']}: {r['symbols']}",
            r["first"],
            r["last"],
            f"{r['rows']:,}",
        )
    out.print(bars)
    rows = Table(title="rows per table")
    rows.add_column("table")
    rows.add_column("rows", justify="right")
    for t, n in info["rows"].items():
        rows.add_row(t, f"{n:,}")
    out.print(rows)


@app.command("validate")
def data_validate(
    files: Annotated[
        list[Path] | None,
        typer.Option("--file", "-f", help="Validate bar files instead of the store (repeatable)."),
    ] = None,
    db: DbOption = None,
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated symbols (store only).")
    ] = None,
    symbol: Annotated[str | None, typer.Option(help="Symbol of single-symbol files.")] = None,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="Column mapping NAME=COLUMN.")
    ] = None,
    tz: Annotated[str | None, typer.Option(help="Time zone of naive timestamps in files.")] = None,
    date_format: Annotated[
        str | None,
        typer.Option(
            "--date-format",
            help="How to read non-ISO dates in files (strptime), as for ingest, e.g. '%m/%d/%Y'.",
        ),
    ] = None,
    calendar_name: Annotated[
        str | None,
        typer.Option(
            "--calendar",
            help="Exchange calendar of the sessions (XNYS, ...; none: 24/7) "
            "[env KRONOS_CALENDAR; default XNYS].",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the JSON report [default data/reports/validate-<time>.json]."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the data-quality rules, exchange sessions included; exit 1 when any rule fails."""
    from kronos.calendar import get_calendar
    from kronos.data.errors import InputError
    from kronos.data.sources.files import parse_mapping, read_bars_file

    settings = load_settings().data
    if calendar_name is not None:
        settings = settings.model_copy(update={"calendar": calendar_name})
    reports = []
    try:
        calendar = get_calendar(settings.calendar)
        if files:
            for f in files:
                try:
                    frame = read_bars_file(
                        f,
                        mapping=parse_mapping(map_),
                        symbol=symbol,
                        tz=tz,
                        calendar=calendar,
                        date_format=date_format,
                    )
                except InputError as exc:
                    fail(exc.describe("cannot read the file"))
                reports.append(quality.run_qa(frame, str(f), settings, calendar))
        else:
            with open_store(db, read_only=True, settings=settings) as store:
                frame = readers.prices(
                    store,
                    asof=date.today(),
                    symbols=symbols.split(",") if symbols else None,
                    settings=settings,
                )
            origin = str(resolve_db_path(db, settings))
            reports.append(quality.run_qa(frame, origin, settings, calendar))
    except KronosError as exc:
        fail(str(exc))
    passed = all(r.passed for r in reports)
    payload = {"passed": passed, "reports": [r.to_dict() for r in reports]}
    path = report or Path("data/reports") / f"validate-{datetime.now():%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    if as_json:
        print(json.dumps(payload))
    else:
        for r in reports:
            out.print(_qa_table(r))
            for sym, rule, res in r.failures():
                out.print(
                    f"[red]FAIL[/red] {sym} {rule}: {res.first or ''} {res.detail or ''}",
                    highlight=False,
                )
            out.print("rules: " + ", ".join(f"{v}={k}" for k, v in SHORT.items()), highlight=False)
        out.print(f"{'[green]passed' if passed else '[red]failed'}[/] - report: {path}")
    raise typer.Exit(0 if passed else 1)


def _qa_table(report: quality.QAReport) -> Table:
    table = Table(title=f"data quality: {report.origin}")
    for col in ("symbol", "rows", "start", "end", *quality.RULES):
        table.add_column(SHORT.get(col, col), justify="right" if col == "rows" else "left")
    for s in report.symbols:
        marks = [
            "[green]ok[/]" if r.passed else f"[red]FAIL{f'({r.count})' if r.count else ''}[/]"
            for r in s.rules.values()
        ]
        table.add_row(s.symbol, f"{s.rows:,}", s.start or "", s.end or "", *marks)
    return table
