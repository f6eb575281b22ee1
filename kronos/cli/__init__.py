"""The ``kronos`` command: one Typer app with a sub-app per area."""

from __future__ import annotations

import sys

import typer

from kronos.cli import bench, breakers, data, paper, train
from kronos.cli.backtest import backtest
from kronos.cli.calibrate import calibrate
from kronos.cli.forecast import forecast
from kronos.cli.run import run, runs_app, schedule
from kronos.cli.serve import serve

app = typer.Typer(
    help="Kronos research workbench.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.add_typer(bench.app, name="bench")
app.add_typer(breakers.app, name="breakers")
app.add_typer(paper.app, name="paper")
app.command("forecast")(forecast)
app.command("calibrate")(calibrate)
app.command("backtest")(backtest)
app.command("run")(run)
app.add_typer(runs_app, name="runs")
app.command("schedule")(schedule)
app.command("serve")(serve)


def main() -> None:
    """Entry point of the ``kronos`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
