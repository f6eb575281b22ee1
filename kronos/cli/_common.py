"""What every ``kronos`` sub-command shares: consoles, options, progress."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kronos.config import DataSettings, resolve_db_path
from kronos.errors import InputError

if TYPE_CHECKING:
    import polars as pl

    from kronos.data.store import Store

out = Console()
if not out.is_terminal:  # pipes and logs: wide enough for wide tables
    out = Console(width=160)
err = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="DuckDB file, or a dataset folder from 'kronos data export' (read-only "
        "commands) [env KRONOS_DB; default data/kronos.duckdb]",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object instead of tables.")
]


def progress(unit: str = "rows") -> Progress:
    """A progress display on stderr that disappears when done."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} " + unit),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def fail(message: str) -> NoReturn:
    """Print an error and exit with status 2."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def parse_day(text: str, option: str) -> date:
    """``text`` as a YYYY-MM-DD date; an :class:`InputError` naming ``option`` if it is not."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"cannot read {option} {text!r} as YYYY-MM-DD") from None


def parse_moment(text: str, option: str) -> datetime:
    """``text`` as an ISO date or datetime (naive means UTC); an :class:`InputError` if not."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"cannot read {option} {text!r} as an ISO date or datetime") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def open_store(db: Path | None, *, settings: DataSettings, read_only: bool = False) -> Store:
    """The store at ``--db`` (> ``KRONOS_DB`` > default), waiting ``KRONOS_LOCK_WAIT_S``.

    A store another process holds past the wait raises
    :class:`~kronos.errors.StoreBusy`, which ``kronos`` prints as one line, exit 2.
    """
    from kronos.data.store import Store

    path = resolve_db_path(db, settings)
    return Store.open(path, read_only=read_only, lock_wait_s=settings.lock_wait_s)


def training_panel(
    db: Path | None, symbols: str | None, source: str, cutoff: date, settings: DataSettings
) -> pl.DataFrame:
    """The returns panel ``kronos train`` and ``kronos tune`` fit on; exits 2 on a store error.

    ``symbols`` (comma-separated) overrides ``source``; rows up to ``cutoff``.
    """
    from kronos.errors import KronosError
    from kronos.features.returns import returns_panel

    try:
        with open_store(db, read_only=True, settings=settings) as store:
            return returns_panel(
                store,
                cutoff,
                symbols.split(",") if symbols else None,
                source=None if symbols else source,
                settings=settings,
            )
    except KronosError as exc:
        fail(str(exc))


def table(title: str, columns: list[str], rows: list[list[str]], left: int = 1) -> Table:
    """A rich table whose first ``left`` columns are left-aligned, the rest right."""
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right")
    for row in rows:
        t.add_row(*row)
    return t
