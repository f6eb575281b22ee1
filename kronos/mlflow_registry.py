"""Promoted models in MLflow's model registry, and loading them back by ``models:/`` URI.

Training never imports mlflow (models sit below this layer); the edges call
this module after the gate has decided:

- :func:`publish_artifact` logs an artifact directory to the training run
  (``artifact/``) and, only when the gate promoted it, registers it as a new
  version of ``kronos-<model>`` and moves the alias ``champion`` to it. A
  candidate that fails the gate is not registered: its files stay in its run
  (and under MODEL_DIR) for inspection, and the registry holds only versions
  that passed the gate, so ``@champion`` and every version number name a model
  that beat the baseline when it was trained. The local ``latest`` symlink
  stays the offline default; the registry is what other machines read.
- :func:`fetch_model` resolves ``models:/kronos-nbeats@champion`` or
  ``models:/kronos-nbeats/3`` on the tracking server to a version, downloads
  that version's artifact directory once into
  ``MODEL_DIR/registry/kronos-<model>/<version>-<source hash>/`` (written
  under a temporary name, renamed when complete, its files checked), and
  :func:`load_registered` loads it through the normal artifact loader.
- :func:`resolve_spec_artifact` does the same for a backtest spec's
  ``forecaster.artifact`` on the driver, before any fold runs: the spec the
  folds (and the run record) see names the downloaded directory of one
  version, so the backtest's look-ahead check reads its METRICS.json as for
  any local artifact, and a moved alias cannot change a run halfway.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kronos.errors import ConfigError, InputError
from kronos.models.artifacts import (
    CUSTOM_REQUIRED_FILES,
    REQUIRED_FILES,
    SOURCE_FILE,
    Loaded,
    load_artifact,
)
from kronos.models.base import ForecastError
from kronos.tracking import MlflowRecorder, TrackingClient

if TYPE_CHECKING:
    from kronos.backtest.spec import BacktestSpec

SCHEME = "models:/"
CHAMPION = "champion"
ARTIFACT_PATH = "artifact"  # where a training run keeps its model directory
CACHE_DIR = "registry"  # under MODEL_DIR
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def registered_name(model: str) -> str:
    """The registry name of model ``model``: ``kronos-<model>``, like its MODEL_DIR folder."""
    return f"kronos-{model}"


def is_model_uri(ref: object) -> bool:
    """Whether ``ref`` is a ``models:/`` URI (not a model name, import path or directory)."""
    return isinstance(ref, str) and ref.startswith(SCHEME)


@dataclass(frozen=True)
class ModelUri:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>``, parsed."""

    name: str
    alias: str | None
    version: str | None


def parse_model_uri(uri: str) -> ModelUri:
    """Split a ``models:/`` URI; a malformed one raises :class:`ConfigError` naming both forms."""
    found = _URI.match(uri)
    if found is None:
        raise ConfigError(
            f"{uri!r} is not a model URI: expected models:/<name>@<alias> "
            "(models:/kronos-nbeats@champion) or models:/<name>/<version>"
        )
    return ModelUri(found["name"], found["alias"], found["version"])


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version in the registry."""

    name: str
    version: str
    alias: str | None  # the alias moved to it (None: none)
    source: str  # where its files lie (the run's artifact URI)
    run_id: str | None

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: this version, whatever the aliases do later."""
        return f"{SCHEME}{self.name}/{self.version}"

    def as_dict(self) -> dict[str, str | None]:
        """JSON-ready fields (for ``--json`` output)."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "uri": self.uri,
            "run_id": self.run_id,
        }


def register(
    client: MlflowClient, run_id: str, model: str, *, alias: str | None = CHAMPION
) -> RegisteredVersion:
    """Register run ``run_id``'s ``artifact/`` directory as a new version of ``kronos-<model>``.

    ``alias`` (``champion``) is moved to the new version; call this only for a
    model the gate promoted.
    """
    name = registered_name(model)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    try:
        client.create_registered_model(name, description="promoted by the kronos gate")
    except MlflowException as exc:  # registered by an earlier run (or another process now)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    made = client.create_model_version(
        name, source, run_id=run_id, tags={"kronos.model": model}, await_creation_for=0
    )
    if alias is not None:
        client.set_registered_model_alias(name, alias, made.version)
    return RegisteredVersion(name, str(made.version), alias, source, run_id)


def publish_artifact(
    recorder: MlflowRecorder, *, model: str, run_dir: Path, version: str, promoted: bool
) -> RegisteredVersion | None:
    """Log ``run_dir`` to the run as ``artifact/``; register it when the gate ``promoted`` it.

    Tags the run ``promoted`` and ``version`` (and ``registered_model``,
    ``registered_version`` when registered). Returns the new version, or None
    for a candidate that failed the gate (not registered; see the module doc).
    """
    recorder.log_artifacts(Path(run_dir), ARTIFACT_PATH)
    recorder.set_tags({"promoted": promoted, "version": version})
    if not promoted:
        return None
    made = register(recorder.client, recorder.run_id, model)
    recorder.set_tags({"registered_model": made.name, "registered_version": made.version})
    return made


# ------------------------------------------------------------------ loading by URI


@dataclass(frozen=True)
class FetchedModel:
    """A registry version's artifact directory, downloaded."""

    uri: str  # as asked (an alias or a version)
    version: RegisteredVersion
    directory: Path


def _lookup(client: MlflowClient, uri: str, tracking_uri: str) -> RegisteredVersion:
    ref = parse_model_uri(uri)
    try:
        if ref.alias is not None:
            found = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            found = client.get_model_version(ref.name, ref.version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            what = f"alias {ref.alias!r}" if ref.alias else f"version {ref.version}"
            raise InputError(
                f"{uri}: the model registry at {tracking_uri} has no {ref.name} {what} "
                f"({exc.message.splitlines()[0]}); promote one with 'kronos train'"
            ) from None
        raise InputError(f"{uri}: cannot ask the model registry at {tracking_uri}: {exc}") from exc
    except OSError as exc:  # connection refused, DNS
        raise InputError(
            f"{uri}: cannot reach the model registry at {tracking_uri}: {exc}"
        ) from exc
    return RegisteredVersion(ref.name, str(found.version), ref.alias, found.source, found.run_id)


def missing_files(directory: Path) -> list[str]:
    """The files a complete artifact needs that ``directory`` lacks (as ``promote`` checks)."""
    required = CUSTOM_REQUIRED_FILES if (directory / SOURCE_FILE).exists() else REQUIRED_FILES
    return [f for f in required if not (directory / f).is_file()]


def fetch_model(uri: str, *, tracking_uri: str, model_dir: Path) -> FetchedModel:
    """Resolve ``uri`` on the registry at ``tracking_uri``; download its files once; check them.

    The download lands in ``MODEL_DIR/registry/<name>/<version>-<hash of its
    source>/``, renamed into place only when complete, so a later call (or
    another process) reuses it and never sees half a download. An alias is
    resolved anew on every call: moving ``champion`` takes effect at the next
    load.
    """
    client = TrackingClient(tracking_uri=tracking_uri)
    found = _lookup(client, uri, tracking_uri)
    digest = hashlib.sha256(found.source.encode()).hexdigest()[:12]
    final = Path(model_dir) / CACHE_DIR / found.name / f"{found.version}-{digest}"
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".download-") as tmp:
            try:
                local = Path(_download(found.source, tmp, tracking_uri))
            except (MlflowException, OSError) as exc:
                raise InputError(
                    f"{uri}: cannot download {found.name} version {found.version} "
                    f"from {found.source}: {exc}"
                ) from exc
            try:
                os.replace(local, final)
            except OSError:  # another process renamed its complete copy first
                if not final.is_dir():
                    raise
    missing = missing_files(final)
    if missing:
        shutil.rmtree(final, ignore_errors=True)  # not a usable cache entry
        raise ForecastError(
            f"{uri}: {found.name} version {found.version} ({found.source}) is not a complete "
            f"artifact: missing {missing}"
        )
    return FetchedModel(uri, found, final)


def _download(source: str, into: str, tracking_uri: str) -> str:
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=source, dst_path=into, tracking_uri=tracking_uri)


def load_registered(
    uri: str, *, tracking_uri: str, model_dir: Path, expected: type | None = None
) -> Loaded:
    """The forecaster registered at ``uri`` (downloaded by :func:`fetch_model`), ready to predict.

    ``expected``: the class, when the caller names one (a backtest spec);
    otherwise the artifact says (``SOURCE.json``, else the ``kronos-<model>``
    registry name).
    """
    fetched = fetch_model(uri, tracking_uri=tracking_uri, model_dir=model_dir)
    forecaster, note = load_artifact(fetched.directory, expected)
    found = fetched.version
    message = (
        f"loaded {uri} ({found.name} version {found.version}, run {found.run_id}) "
        f"from {fetched.directory}{note}"
    )
    return Loaded(forecaster, "artifact", fetched.directory, message)


def resolve_spec_artifact(
    spec: BacktestSpec, *, tracking_uri: str, model_dir: Path
) -> BacktestSpec:
    """``spec`` with a ``models:/`` ``forecaster.artifact`` replaced by its downloaded directory.

    Runs on the driver before any fold: the folds (local or Ray) read the
    directory, its METRICS.json decides the look-ahead check, and the run
    records which version it used. A spec without such an artifact is
    returned as it is.
    """
    artifact = spec.forecaster.artifact
    if not is_model_uri(artifact):
        return spec
    fetched = fetch_model(artifact, tracking_uri=tracking_uri, model_dir=model_dir)
    # absolute: nothing relative may reach a Ray worker
    forecaster = spec.forecaster.model_copy(update={"artifact": str(fetched.directory.resolve())})
    return spec.model_copy(update={"forecaster": forecaster})
