"""The ``kronos`` command: one Typer app with a sub-app per area."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

from kronos.cli import bench, breakers, data, paper, train
from kronos.cli.backtest import backtest
from kronos.cli.calibrate import calibrate
from kronos.cli.forecast import forecast
from kronos.cli.run import run, runs_app, schedule
from kronos.cli.serve import serve
from kronos.cli.tune import tune
from kronos.config import setting_errors
from kronos.errors import KronosError
from kronos.interrupts import Caught, stop_on_signals

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
app.command("tune")(tune)


def main() -> None:
    """Entry point of the ``kronos`` console script.

    A :class:`KronosError` (bad input, a busy store, ...) that no command caught
    ends as one line ``error: <message>`` on stderr and exit status 2, never a
    traceback. SIGTERM and SIGHUP stop a command as Ctrl-C does, so an MLflow
    run it holds ends KILLED.
    """
    caught = Caught()
    try:
        with stop_on_signals() as caught:
            app()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: 130, 143, 129
        sys.exit(caught.exit_status or 130)
    except SystemExit as exc:
        # Click turns an interrupt into exit 130 whatever the signal was
        if caught.exit_status is not None and exc.code == 130:
            sys.exit(caught.exit_status)
        raise
    except KronosError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except ValidationError as exc:  # a bad setting in the environment or .env
        print(f"error: {setting_errors(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)
