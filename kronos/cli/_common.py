"""What every ``kronos`` sub-command shares: consoles, options, progress."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kronos.config import DataSettings, resolve_db_path

if TYPE_CHECKING:
    from kronos.data.store import Store

out = Console()
if not out.is_terminal:  # pipes and logs: wide enough for wide tables
    out = Console(width=160)
err = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB file [env KRONOS_DB; default data/kronos.duckdb]"),
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


def open_store(
    db: Path | None, *, read_only: bool = False, settings: DataSettings | None = None
) -> Store:
    """The store at ``--db`` (> ``KRONOS_DB`` > default), waiting ``KRONOS_LOCK_WAIT_S``.

    A store another process holds past the wait raises
    :class:`~kronos.errors.StoreBusy`, which ``kronos`` prints as one line, exit 2.
    """
    from kronos.data.store import Store

    settings = settings or DataSettings()
    path = resolve_db_path(db, settings)
    return Store.open(path, read_only=read_only, lock_wait_s=settings.lock_wait_s)


def table(title: str, columns: list[str], rows: list[list[str]], left: int = 1) -> Table:
    """A rich table whose first ``left`` columns are left-aligned, the rest right."""
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right")
    for row in rows:
        t.add_row(*row)
    return t
