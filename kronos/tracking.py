"""MLflow run records, passed in explicitly (no global active run).

:class:`MlflowRecorder` satisfies :class:`kronos.models.base.Recorder`, so
training can log to it without importing mlflow. Values are sent in batches:
one ``log_batch`` per call, not one request per value.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kronos.config import TrackingSettings

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. :/]")


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in keys replaced by ``_``."""
    return _UNSAFE.sub("_", name)


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """The commit the code runs at, and whether the work tree had changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower(),
    }


class MlflowRecorder:
    """Logs parameters, metrics, tags and artifacts of one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        """Record parameters (stringified; MLflow caps values at 6000 characters)."""
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values at ``step`` in one batch."""
        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + MAX_BATCH])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        """Record tags."""
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        """Copy a directory's files into the run's artifacts."""
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        """Store a JSON document as a run artifact."""
        self.client.log_dict(self.run_id, data, name)


def experiment_id(client: MlflowClient, name: str, settings: TrackingSettings) -> str:
    """The id of experiment ``name``, created on first use."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if settings.mlflow_tracking_uri else f"{settings.artifact_root()}/{name}"
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # another process created it between our lookup and create
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def mlflow_run(
    experiment: str,
    run_name: str,
    tags: Mapping[str, object] | None = None,
    settings: TrackingSettings | None = None,
) -> Iterator[MlflowRecorder]:
    """Open an MLflow run, yield its recorder, and close it FINISHED or FAILED.

    Tags always include the git commit and the command line.
    """
    settings = settings or TrackingSettings()
    settings.mlruns_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    run = client.create_run(
        experiment_id(client, experiment, settings),
        run_name=run_name,
        tags={**git_state(), "argv": " ".join(sys.argv)[:5000], **(tags or {})},
    )
    recorder = MlflowRecorder(client, run.info.run_id)
    try:
        yield recorder
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def attach_run(run_id: str, settings: TrackingSettings | None = None) -> MlflowRecorder:
    """A recorder for an existing run (``kronos run`` passes its id to a notebook).

    The run stays open: whoever created it (the runner) ends it.
    """
    settings = settings or TrackingSettings()
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    client.get_run(run_id)  # fails clearly on an unknown id
    return MlflowRecorder(client, run_id)
