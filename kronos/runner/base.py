"""What every part of the runner shares: the workflow table, names, errors."""

from __future__ import annotations

import re
from collections.abc import Sequence

from kronos.errors import KronosError

# notebook stem -> the MLflow experiment its runs land in
WORKFLOWS: dict[str, str] = {
    "00_data": "kronos-data",
    "10_retrain": "kronos-retrain",
    "20_walkforward": "kronos-backtest",
    "30_paper_trading": "kronos-paper",
    "40_calibrate": "kronos-calibration",
    "50_compare_runs": "kronos-compare",
    "60_custom_model": "kronos-research",
}
DEFAULT_EXPERIMENT = "kronos-notebooks"  # notebooks outside the workflow table
RUN_ID_PARAMETER = "mlflow_run_id"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
MIN_SECRET_LENGTH = 8  # shorter values ("1", "true") would match innocent text
REDACTED = "***"
KERNEL = "python3"
DEFAULT_CELL_TIMEOUT = 3600  # seconds a cell may run under `kronos run` unless told otherwise


class RunnerError(KronosError):
    """Bad input to the runner: a notebook, parameter or run spec; names the source."""

    def __init__(self, problems: str | Sequence[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))

    def __reduce__(self) -> tuple:
        return type(self), (self.problems, self.source)

    def at(self, source: str) -> RunnerError:
        """The same problems, attributed to ``source``."""
        return RunnerError(self.problems, source)
