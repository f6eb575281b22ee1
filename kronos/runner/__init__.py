"""Papermill execution of parameterized notebooks, each tracked as one MLflow run.

The contract with ``notebooks/``: every notebook has one cell tagged
``parameters`` whose assignments declare its parameters and defaults, always
including ``mlflow_run_id = None``. :func:`run_notebook` creates the MLflow run,
injects its id, and the notebook logs into that same run through
:func:`kronos.tracking.attach_run`. The runner ends the run FINISHED or FAILED
and keeps the executed (or partial) notebook as an artifact.

Secrets never travel as parameters: parameters are logged to MLflow and written
into the output notebook. Notebooks read them from the environment, and any
secret value a cell prints is redacted from the saved notebook.
"""

from kronos.config import did_you_mean
from kronos.runner.base import WORKFLOWS, RunnerError
from kronos.runner.execute import RunOutcome, ensure_experiments, run_notebook
from kronos.runner.params import (
    Parameter,
    checked_parameters,
    coerce,
    notebook_parameters,
    redact,
    redact_notebook,
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
    "resolve_runs",
    "run_notebook",
    "schedule_lines",
    "secret_values",
    "spec_parameters",
    "validate_cron",
]
