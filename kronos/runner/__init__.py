"""Papermill execution of parameterized notebooks, each tracked as one MLflow run.

The contract with ``notebooks/``: every notebook has one cell tagged
``parameters`` whose assignments declare its parameters and defaults, always
including ``mlflow_run_id = None``. :func:`run_notebook` creates the MLflow run,
injects its id, and the notebook logs into that same run through
:func:`kronos.tracking.attach_run`. The runner ends the run FINISHED or FAILED
and keeps the executed (or partial) notebook as an artifact.

Secrets never travel as parameters: parameters are logged to MLflow and written
into the output notebook. Notebooks read them from the environment, and any
secret value a cell prints is redacted from the saved notebook: in sources, in
each cell's joined stream output (a key flushed a character at a time is
found) and in every rich output, before the notebook is logged.

A run records its host, PID and the PID's start time (tags ``kronos.host``,
``kronos.pid``, ``kronos.pid_start``) and the absolute path of its output
notebook (``kronos.notebook_path``). SIGINT, SIGTERM and SIGHUP under
:func:`kronos.interrupts.stop_on_signals` end it KILLED with the partial notebook
logged; a run whose process died (``kill -9``, power loss) is marked FAILED by
the next ``kronos run`` or ``kronos runs list`` on the same host
(:func:`close_orphaned`), with whatever partial notebook is on disk.
"""

from kronos.config import did_you_mean
from kronos.runner.base import WORKFLOWS, RunnerError
from kronos.runner.execute import RunOutcome, close_orphaned, ensure_experiments, run_notebook
from kronos.runner.params import (
    Parameter,
    checked_parameters,
    coerce,
    notebook_parameters,
    redact,
    redact_notebook,
    redact_outputs,
    secret_values,
)
from kronos.runner.query import (
    Comparison,
    compare_runs,
    metric_direction,
    recent_runs,
    resolve_runs,
)
from kronos.runner.specs import (
    RunSpec,
    load_run_spec,
    schedule_lines,
    spec_parameters,
    validate_cron,
)

__all__ = [
    "WORKFLOWS",
    "Comparison",
    "Parameter",
    "RunOutcome",
    "RunSpec",
    "RunnerError",
    "checked_parameters",
    "close_orphaned",
    "coerce",
    "compare_runs",
    "did_you_mean",
    "ensure_experiments",
    "load_run_spec",
    "metric_direction",
    "notebook_parameters",
    "recent_runs",
    "redact",
    "redact_notebook",
    "redact_outputs",
    "resolve_runs",
    "run_notebook",
    "schedule_lines",
    "secret_values",
    "spec_parameters",
    "validate_cron",
]
