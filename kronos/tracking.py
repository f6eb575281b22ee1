"""MLflow run records, passed in explicitly (no global active run).

:class:`MlflowRecorder` satisfies :class:`kronos.models.base.Recorder`, so
training can log to it without importing mlflow. Values are sent in batches:
one ``log_batch`` per call, not one request per value.

The same code logs to the embedded SQLite store under ``mlruns/`` or to a
tracking server (``MLFLOW_TRACKING_URI=http://...``): :func:`tracking_client`
creates ``mlruns/`` only for the embedded store, and its run ends send
MLflow's "View run ..." links to stderr so ``--json`` output stays one JSON
document. Runs are tagged with the commit of the checkout the ``kronos``
package runs from, whatever the working directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import kronos
from kronos.config import Settings, TrackingSettings, settings_hash, settings_record
from kronos.interrupts import signal_name

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. :/]")
HOST_TAG, PID_TAG, PID_START_TAG = "kronos.host", "kronos.pid", "kronos.pid_start"
ORPHANED = "process ended without closing the run"


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in keys replaced by ``_``."""
    return _UNSAFE.sub("_", name)


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """The commit the code runs at, and whether the work tree had changes.

    ``cwd``: a directory of the checkout to ask; by default the checkout the
    ``kronos`` package is imported from, so a command run from elsewhere is
    tagged right. An installed (not editable) package has no checkout of its
    own: ``unknown``, even when its environment lies inside some repository.
    """
    package = Path(kronos.__file__).resolve().parent
    where = cwd if cwd is not None else package

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    top, _, commit = git("rev-parse", "--show-toplevel", "HEAD").partition("\n")
    if cwd is None and (not top or Path(top).resolve() != package.parent):
        commit = ""  # site-packages inside a repository's venv: not that repository's code
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else ""
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


class TrackingClient(MlflowClient):
    """An :class:`MlflowClient` whose run ends print MLflow's run links to stderr.

    With a tracking server, MLflow writes "View run ... at: URL" to stdout when
    a run ends (``TrackingServiceClient._log_url`` in ``set_terminated``);
    on stdout it would break the ``--json`` output of the commands.
    """

    def set_terminated(
        self, run_id: str, status: str | None = None, end_time: int | None = None
    ) -> None:
        """End run ``run_id`` (FINISHED by default); MLflow's link goes to stderr."""
        with contextlib.redirect_stdout(sys.stderr):
            super().set_terminated(run_id, status, end_time)


def tracking_client(settings: TrackingSettings) -> TrackingClient:
    """A client of the store ``settings`` name; ``mlruns/`` is created for the embedded one only."""
    if not settings.mlflow_tracking_uri:
        settings.mlruns_dir.mkdir(parents=True, exist_ok=True)
    return TrackingClient(tracking_uri=settings.tracking_uri())


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

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        """Store a JSON document as a run artifact."""
        self.client.log_dict(self.run_id, data, name)


SETTINGS_HASH_TAG = "settings_hash"
SETTINGS_PREFIX = "settings."


def record_settings(recorder: MlflowRecorder, settings: Settings) -> str:
    """Log the resolved ``settings`` (``settings.*`` parameters) and their hash (a tag).

    Secrets are recorded as the names of their variables only
    (:func:`kronos.config.settings_record`). Returns the hash.
    """
    digest = settings_hash(settings)
    record = settings_record(settings)
    recorder.log_params({SETTINGS_PREFIX + k: v for k, v in record.items()})
    recorder.set_tags({SETTINGS_HASH_TAG: digest})
    return digest


# MLflow 3's UI opens the training-runs view (not the GenAI traces one) for this kind
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"
EXPERIMENT_NOTES: dict[str, str] = {
    "kronos-data": "Data ingestion notebook runs (`kronos run 00_data`).",
    "kronos-retrain": "Forecaster training and retraining runs (`kronos train`, `kronos run`).",
    "kronos-backtest": "Walk-forward backtests (`kronos backtest`, sweeps: one run per "
    "variant): statistics, equity and drawdown curves, report artifacts.",
    "kronos-paper": "Paper-trading sessions (`kronos paper`).",
    "kronos-calibration": "Online calibrator fits (`kronos calibrate`).",
    "kronos-compare": "Run comparison notebooks (`kronos run 50_compare_runs`).",
    "kronos-research": "Custom model research notebooks (`kronos run 60_custom_model`).",
}


def store_artifact_location(settings: TrackingSettings, name: str) -> str | None:
    """Where experiment ``name`` keeps artifacts: beside a local (SQLite/file) store.

    ``None`` for a tracking server, which has its own artifact root. Without an
    explicit location MLflow puts a SQLite store's artifacts under the working
    directory's ``mlruns/``.
    """
    uri = settings.tracking_uri()
    if not settings.mlflow_tracking_uri:
        return f"{settings.artifact_root()}/{name}"
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    elif uri.startswith("file:"):
        folder = Path(uri.removeprefix("file://").removeprefix("file:"))
    elif "://" not in uri:
        folder = Path(uri)  # a plain path is a file store
    else:
        return None
    return (folder.resolve() / "artifacts" / name).as_uri()


def experiment_id(client: MlflowClient, name: str, settings: TrackingSettings) -> str:
    """The id of experiment ``name``, created on first use.

    A new experiment gets a description (``mlflow.note.content``), the kind that
    opens MLflow 3's training-runs view, and for a local store an artifact
    location beside the store (:func:`store_artifact_location`).
    """
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    tags = {
        EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
        NOTE_TAG: EXPERIMENT_NOTES.get(name, f"Kronos runs ({name})."),
    }
    try:
        return client.create_experiment(
            name, artifact_location=store_artifact_location(settings, name), tags=tags
        )
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
    *,
    settings: Settings,
    start_time: float | None = None,
) -> Iterator[MlflowRecorder]:
    """Open an MLflow run in ``settings.tracking``'s store, yield its recorder, close it.

    ``start_time`` (epoch seconds) backdates the run to when its work began, for
    work done before the run is opened (a backtest's run is opened once it is
    over). The run ends FINISHED, FAILED or KILLED. Tags always include the git commit,
    the command line and ``settings_hash``; the resolved ``settings`` are its
    ``settings.*`` parameters (:func:`record_settings`).
    """
    tracking = settings.tracking
    client = tracking_client(tracking)
    run = client.create_run(
        experiment_id(client, experiment, tracking),
        run_name=run_name,
        start_time=None if start_time is None else int(start_time * 1000),
        tags={
            **git_state(),
            **process_tags(),
            "argv": " ".join(sys.argv)[:5000],
            **(tags or {}),
        },
    )
    recorder = MlflowRecorder(client, run.info.run_id)
    record_settings(recorder, settings)
    try:
        yield recorder
    except KeyboardInterrupt as exc:  # Ctrl-C, or a stop signal under stop_on_signals()
        client.set_tag(run.info.run_id, "error", f"stopped by {signal_name(exc)}")
        client.set_terminated(run.info.run_id, status="KILLED")
        raise
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def attach_run(run_id: str, settings: TrackingSettings) -> MlflowRecorder:
    """A recorder for an existing run (``kronos run`` passes its id to a notebook).

    The run stays open: whoever created it (the runner) ends it.
    """
    client = TrackingClient(tracking_uri=settings.tracking_uri())
    client.get_run(run_id)  # fails clearly on an unknown id
    return MlflowRecorder(client, run_id)


# ------------------------------------------------------------------ interrupted runs


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _started(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux; None elsewhere).

    Tells the process apart from a later one given the same PID.
    """
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def process_tags() -> dict[str, str]:
    """Host, PID and start time of this process, so a later command can tell it ended."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _started(pid) or ""}


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (and is the one that started at ``started``).

    A zombie (ended, not yet reaped by its parent) counts as ended.
    """
    if pid <= 0:
        return False
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return not started or _started(pid) == started
    try:  # no /proc: ask the kernel whether the PID exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_orphaned_runs(
    client: MlflowClient, on_orphan: Callable[[Run], None] | None = None
) -> list[Run]:
    """Mark FAILED each RUNNING run of this host whose process is gone; returns those runs.

    A run is orphaned when its ``kronos.pid`` is not alive here, or belongs to a
    process started at another time. Runs of other hosts (or without the tags)
    are left alone: their processes cannot be checked from here. ``on_orphan``
    is called before a run is closed (the runner logs its partial notebook).
    """
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    host = socket.gethostname().replace("'", "")
    found = client.search_runs(
        ids,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    closed = []
    for run in found:
        tags = run.data.tags
        try:
            pid = int(tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if pid == os.getpid() or process_alive(pid, tags.get(PID_START_TAG) or None):
            continue
        if on_orphan is not None:
            try:
                on_orphan(run)
            except Exception as exc:  # the run is closed regardless
                client.set_tag(run.info.run_id, "orphan_note", f"{type(exc).__name__}: {exc}")
        client.set_tag(run.info.run_id, "error", ORPHANED)
        with contextlib.redirect_stdout(sys.stderr):  # a plain client prints the run's link
            client.set_terminated(run.info.run_id, status="FAILED")
        closed.append(run)
    return closed
