"""Execute a notebook with papermill as one MLflow run (see :mod:`kronos.runner`)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from kronos.config import DataSettings, Settings, TrackingSettings, config_hash, resolve_db_path
from kronos.runner.base import DEFAULT_EXPERIMENT, KERNEL, RUN_ID_PARAMETER, WORKFLOWS, RunnerError
from kronos.runner.params import checked_parameters, redact, redact_notebook, secret_values
from kronos.tracking import (
    ORPHANED,
    MlflowRecorder,
    close_orphaned_runs,
    experiment_id,
    git_state,
    process_tags,
    record_settings,
    tracking_client,
)

NOTEBOOK_PATH_TAG = "kronos.notebook_path"  # absolute: a later command logs it if orphaned
# names (never values) of the secret variables the run's kernel could print: a later
# command logs an orphaned notebook only where it can redact every one of them
SECRET_NAMES_TAG = "kronos.secret_names"

# ------------------------------------------------------------------ execution


@dataclass(frozen=True)
class RunOutcome:
    """What one notebook execution produced."""

    status: Literal["FINISHED", "FAILED"]
    output: Path  # the executed (or partial) notebook
    run_id: str
    experiment: str
    error: str | None
    seconds: float


def ensure_experiments(settings: TrackingSettings) -> dict[str, str]:
    """Create every workflow experiment now, so parallel runs never race to create one."""
    client = tracking_client(settings)  # mlruns/ only for the embedded store
    return {name: experiment_id(client, name, settings) for name in WORKFLOWS.values()}


def _reserve(directory: Path) -> Path:
    """A new ``<UTC stamp>.ipynb`` in ``directory``, created empty so no other run takes it."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        path = directory / (f"{stamp}.ipynb" if n == 0 else f"{stamp}-{n}.ipynb")
        try:
            path.open("x").close()
            return path
        except FileExistsError:
            continue
    raise RunnerError(f"too many runs in {directory} at {stamp}")


def _data_tags(params: Mapping[str, Any], data: DataSettings) -> dict[str, str]:
    """The store a notebook reads (its ``db`` parameter, else ``data.db``) and its bars' span."""
    if "db" not in params:
        return {}
    value = params["db"]
    db = resolve_db_path(value if isinstance(value, str) and value else None, data)
    tags = {"db": str(db)}
    if not db.is_file():
        return tags
    import duckdb

    try:  # read-only and best effort: another process may hold the file for writing
        with duckdb.connect(str(db), read_only=True) as con:
            first, last, symbols = con.execute(
                "SELECT min(ts), max(ts), count(DISTINCT symbol) FROM bars"
            ).fetchone()
    except duckdb.Error:
        return tags
    if first is not None:
        tags.update(data_range=f"{first}..{last}", data_symbols=str(symbols))
    return tags


def _describe_failure(exc: BaseException, timeout: int | None) -> str:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"{exc.ename}: {exc.evalue} (cell In [{exc.exec_count}]: {_first_line(exc.source)})"
    if isinstance(exc, CellTimeoutError):
        return f"CellTimeoutError: a cell ran past the timeout of {timeout} s"
    if isinstance(exc, DeadKernelError):
        return "DeadKernelError: the kernel died while running a cell (killed, out of memory?)"
    return f"{type(exc).__name__}: {exc}"


def _first_line(source: str) -> str:
    return next((ln.strip() for ln in source.splitlines() if ln.strip()), "")[:80]


def _mark_stopped_cell(path: Path, message: str, *, running_only: bool = False) -> str:
    """Mark a timeout, dead kernel or stop on the cell that was running; returns its description.

    papermill leaves that cell looking completed, with no error output. With
    ``running_only`` (a notebook whose process died) only a cell papermill saved
    as still running is marked.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    started = [c for c in nb.cells if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return ""
    cell = started[-1]
    if running_only and cell.metadata.papermill.get("status") != "running":
        return ""
    cell.outputs.append(
        nbformat.v4.new_output("error", ename="RunnerError", evalue=message, traceback=[message])
    )
    cell.metadata.papermill.update(exception=True, status="failed")
    nb.metadata.setdefault("papermill", {})["exception"] = True
    nbformat.write(nb, str(path))
    return f" (cell In [{cell.get('execution_count')}]: {_first_line(cell.source)})"


def run_notebook(
    notebook: Path,
    params: Mapping[str, Any],
    *,
    name: str | None = None,
    experiment: str | None = None,
    timeout: int | None = None,
    out_root: Path = Path("experiments/runs"),
    settings: Settings,
    tags: Mapping[str, object] | None = None,
    progress: bool = False,
    on_start: Callable[[str, Path], None] | None = None,
) -> RunOutcome:
    """Execute ``notebook`` with ``params`` as one MLflow run, in the current directory.

    Bad parameters raise :class:`RunnerError` before anything runs. A failing
    cell, a timeout (``timeout`` seconds per cell) or a dead kernel returns a
    FAILED outcome with the partial notebook saved and logged. An interrupt
    (Ctrl-C, or SIGTERM/SIGHUP under :func:`kronos.interrupts.stop_on_signals`)
    stops the kernel, logs the partial notebook, marks the run KILLED and is
    raised again. Runs of this host whose process ended without closing them
    are marked FAILED first (:func:`close_orphaned`). ``on_start`` receives the
    run id and output path once the run exists. The run records ``settings``
    (``settings.*`` parameters, tag ``settings_hash``): the kernel inherits the
    same environment and ``.env``, so its own :func:`~kronos.config.load_settings`
    resolves the same values.
    """
    import papermill

    started = time.monotonic()
    notebook = Path(notebook)
    declared, values = checked_parameters(notebook, params)
    # what the notebook runs with, defaults included, so runs compare and hash alike
    effective = {k: p.default for k, p in declared.items() if k != RUN_ID_PARAMETER} | values
    name = name or notebook.stem
    experiment = experiment or WORKFLOWS.get(notebook.stem, DEFAULT_EXPERIMENT)
    tracking = settings.tracking
    repo = Path.cwd()
    try:
        shown = notebook.resolve().relative_to(repo).as_posix()
    except ValueError:
        shown = str(notebook)

    ensure_experiments(tracking)  # every workflow's, up front: parallel runs never race
    client = tracking_client(tracking)  # run ends print MLflow's links to stderr, not stdout
    close_orphaned(client)
    secrets = sorted(secret_values(), key=len, reverse=True)
    run = client.create_run(
        experiment_id(client, experiment, tracking),
        run_name=name,
        tags={
            **git_state(),  # the checkout kronos runs from, whatever the cwd
            **process_tags(),
            "notebook": shown,
            "spec_hash": config_hash({"notebook": shown, "parameters": effective}),
            "argv": redact(" ".join(sys.argv), secrets)[:5000],
            **{k: str(v) for k, v in (tags or {}).items()},
        },
    )
    run_id = run.info.run_id
    recorder = MlflowRecorder(client, run_id)
    output: Path | None = None
    error: str | None = None
    status: Literal["FINISHED", "FAILED"] = "FINISHED"
    try:
        recorder.log_params(effective)
        record_settings(recorder, settings)
        output = _reserve(Path(out_root) / name)
        recorder.set_tags(
            {
                "output_notebook": str(output),
                NOTEBOOK_PATH_TAG: output.resolve(),
                SECRET_NAMES_TAG: ",".join(sorted(set(secret_values().values()))),
            }
        )
        if on_start is not None:
            on_start(run_id, output)
        try:
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters={**values, RUN_ID_PARAMETER: run_id},
                kernel_name=KERNEL,
                execution_timeout=timeout,
                cwd=str(repo),
                progress_bar=progress,
                log_output=False,
                # the kernel process logs its plumbing (TCP warning, shutdown races): noise here
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                km=kernel_at(output),
            )
        except Exception as exc:
            status, error = "FAILED", _describe_failure(exc, timeout)
            if not isinstance(exc, papermill.PapermillExecutionError) and _saved(output):
                error += _mark_stopped_cell(output, error)
            error = redact(error, secrets)
        end_tags = _data_tags(effective, settings.data)
        if error is not None:
            end_tags["error"] = error[:5000]
        recorder.set_tags(end_tags)
        _keep_notebook(client, run_id, output)
    except BaseException as exc:
        # a stop signal or a broken store: redact and keep what ran, never leave the run RUNNING
        interrupted = isinstance(exc, KeyboardInterrupt)  # SIGINT, or RunInterrupted
        why = (str(exc) or "stopped by SIGINT") if interrupted else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            if interrupted and output is not None and _saved(output):
                _mark_stopped_cell(output, why)
            client.set_tag(run_id, "error", redact(why, secrets)[:5000])
        if output is not None:
            with contextlib.suppress(Exception):
                _keep_notebook(client, run_id, output)
        client.set_terminated(run_id, status="KILLED" if interrupted else "FAILED")
        raise
    client.set_terminated(run_id, status=status)
    return RunOutcome(
        status=status,
        output=output,
        run_id=run_id,
        experiment=experiment,
        error=error,
        seconds=round(time.monotonic() - started, 3),
    )


def close_orphaned(client: MlflowClient) -> list[Run]:
    """Mark FAILED the RUNNING runs of this host whose process ended; log their notebooks.

    The partial notebook a run recorded (tag ``kronos.notebook_path``) is
    redacted and logged when it is still on disk and every secret variable the
    run had (tag ``kronos.secret_names``) is set here too; otherwise it stays
    local, with a tag saying why. Runs of other hosts are left alone (see
    :func:`kronos.tracking.close_orphaned_runs`).
    """

    def keep(run: Run) -> None:
        path = run.data.tags.get(NOTEBOOK_PATH_TAG)
        if not path or not _saved(Path(path)):
            return
        _mark_stopped_cell(Path(path), ORPHANED, running_only=True)
        recorded = {n for n in run.data.tags.get(SECRET_NAMES_TAG, "").split(",") if n}
        unknown = sorted(recorded - set(secret_values().values()))
        if unknown:
            # their values are not here to redact with: the notebook stays local
            redact_notebook(Path(path))
            client.set_tag(
                run.info.run_id,
                "notebook_not_logged",
                f"{', '.join(unknown)} not set where the run was closed, so the partial "
                f"notebook could not be redacted; it stays at {path}",
            )
            return
        _keep_notebook(client, run.info.run_id, Path(path))

    return close_orphaned_runs(client, keep)


def _saved(output: Path) -> bool:
    return output.is_file() and output.stat().st_size > 0


def _keep_notebook(client: MlflowClient, run_id: str, output: Path) -> None:
    """Redact the output notebook and log it as an artifact of the run."""
    if not _saved(output):
        output.unlink(missing_ok=True)  # the kernel never started: nothing was written
        return
    if redact_notebook(output):
        client.set_tag(run_id, "secrets_redacted", "true")
    client.log_artifact(run_id, str(output), "notebook")
    try:
        html = notebook_html(output)
    except Exception as exc:  # a partial notebook nbconvert cannot read: the .ipynb is kept
        client.set_tag(run_id, "notebook_html_error", f"{type(exc).__name__}: {exc}"[:5000])
        return
    client.log_artifact(run_id, str(html), "notebook")


def notebook_html(notebook: Path) -> Path:
    """Render ``notebook`` (already redacted) to a self-contained ``.html`` beside it.

    Images are embedded; the require.js, MathJax and mermaid CDN scripts are
    left out (a rendered notebook needs none of them to show its outputs), so
    the page works offline. LaTeX in markdown shows as source text.
    """
    from nbconvert import HTMLExporter  # slow import: only when a run ends

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    exporter.require_js_url = exporter.mathjax_url = ""
    exporter.mermaid_js_url = exporter.mermaid_layout_elk_js_url = ""
    body, _ = exporter.from_filename(str(notebook))
    html = notebook.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def kernel_at(notebook: Path) -> Any:
    """A kernel manager whose kernel knows the notebook it runs as (``JPY_SESSION_NAME``).

    JupyterLab tells a kernel its notebook's path that way; the executed copy
    lives in ``experiments/runs/<name>/``, so links a notebook shows
    (:func:`kronos.runner.display.file_link`) resolve from there, in the copy and
    in the HTML beside it. The rest of the kernel's environment is this process's.
    """
    import os

    from jupyter_client.manager import AsyncKernelManager

    path = str(Path(notebook).resolve())

    class NotebookKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            kw["env"] = {**kw.get("env", os.environ), "JPY_SESSION_NAME": path}
            await super()._async_start_kernel(**kw)

    return NotebookKernelManager(kernel_name=KERNEL)
