"""Where independent pieces of a backtest run: in this process, or as Ray tasks.

Folds (fit + forecast) and sweep variants are independent and run through
:func:`map_calls`. The local executor calls them in order; the Ray executor
submits them to a local Ray (started on demand) or to the cluster at
``ray_address`` (``ray://host:port`` through Ray Client, or a GCS address
``host:port``) and returns the results in the submission order, so both give
the same list. Large shared arguments go to the object store once.

Nothing relative reaches a worker: a relative :class:`~pathlib.Path` argument
is refused before submission (a worker would resolve it against its own
working directory, on another host). A task's :class:`KronosError` comes back
as itself; any other error comes back as a :class:`RemoteTaskError` carrying
the host and the last lines of the remote traceback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from kronos.errors import ConfigError, KronosError

Executor = Literal["local", "ray"]

# never shipped with --ray-working-dir: environments, stores, runs, caches
WORKING_DIR_EXCLUDES = (
    ".venv",
    "data",
    "mlruns",
    "experiments/runs",
    ".git",
    ".cache",
    "**/__pycache__",
    "*.egg-info",
)
AUTH_HELP = (
    "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, or in a file named "
    "by RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token; `ray get-auth-token` on the head prints it)"
)
TRACEBACK_LINES = 12


class RemoteTaskError(KronosError):
    """A Ray task failed with an error kronos did not raise on purpose."""


def map_calls(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    executor: Executor = "local",
    ray_address: str | None = None,
    shared: dict[str, Any] | None = None,
    working_dir: Path | None = None,
) -> list[Any]:
    """``[fn(*args, **shared) for args in calls]``, locally or as Ray tasks."""
    shared = shared or {}
    if executor == "local":
        return [fn(*args, **shared) for args in calls]
    if executor != "ray":
        raise ConfigError(f"unknown executor {executor!r}: local or ray")
    ray = connect(ray_address, working_dir)
    for args in calls:
        refuse_relative(args, fn)
    refuse_relative(shared.values(), fn)
    refs = {k: ray.put(v) for k, v in shared.items()}
    task = ray.remote(fn)
    return gather([task.remote(*args, **refs) for args in calls])


def connect(ray_address: str | None, working_dir: Path | None = None) -> Any:
    """The ``ray`` module, initialised: a local Ray, or the cluster at ``ray_address``."""
    import ray  # imported only when asked for: it is slow to import

    if ray.is_initialized():
        return ray
    check_address(ray_address)
    check_auth(ray_address)
    runtime_env: dict[str, Any] = {"env_vars": worker_env(shipped=working_dir is not None)}
    if working_dir is not None:
        root = Path(working_dir).resolve()
        if not root.is_dir():
            raise ConfigError(f"--ray-working-dir {working_dir}: no such directory")
        runtime_env.update(working_dir=str(root), excludes=list(WORKING_DIR_EXCLUDES))
    kwargs: dict[str, Any] = {"log_to_driver": False, "runtime_env": runtime_env}
    if not (ray_address or "").startswith("ray://"):
        # Ray Client forwards its kwargs to the server, which takes neither
        kwargs.update(include_dashboard=False, configure_logging=False)
    where = ray_address or "a local Ray"
    from ray.exceptions import AuthenticationError

    try:
        try:
            ray.init(address=ray_address, **kwargs)
        except (OSError, RuntimeError) as exc:
            # the head starts one server per client session; on a loaded node that
            # start can time out once (Ray: "Starting Ray client server failed")
            if "Starting Ray client server failed" not in str(exc):
                raise
            time.sleep(2.0)
            ray.init(address=ray_address, **kwargs)
    except AuthenticationError as exc:
        raise ConfigError(f"Ray at {where} refused the token: {AUTH_HELP} ({exc})") from None
    except (OSError, RuntimeError, ValueError) as exc:  # unreachable, refused, malformed
        hint = ""
        if ray_address and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = f"; if the cluster runs with token authentication, {AUTH_HELP}"
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        said = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # the cause is last
        raise ConfigError(f"cannot start or reach {where} (--ray-address): {said}{hint}") from None
    return ray


def check_address(ray_address: str | None) -> None:
    """Refuse an address that is neither ``ray://host:port``, ``host:port`` nor ``auto``."""
    if ray_address is None or ray_address == "auto":
        return
    rest = ray_address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if "://" in rest or not host or not port.isdigit():
        raise ConfigError(
            f"--ray-address {ray_address!r}: give ray://HOST:PORT (Ray Client, port 10001 by "
            "default) or HOST:PORT (the head's GCS, port 6379 by default)"
        )


def check_auth(ray_address: str | None) -> None:
    """With ``RAY_AUTH_MODE=token``, a token must be at hand before Ray is asked to connect."""
    if ray_address is None or os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if not os.environ.get("RAY_AUTH_TOKEN", "").strip():
        named = os.environ.get("RAY_AUTH_TOKEN_PATH")
        path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
        if not path.is_file() or not path.read_text().strip():
            raise ConfigError(
                f"RAY_AUTH_MODE=token but no token: RAY_AUTH_TOKEN is unset and {path} is "
                f"missing or empty; {AUTH_HELP}"
            )
    # Ray caches the mode and the token on first use: re-read what is set now
    _refresh_ray_auth()


def _refresh_ray_auth() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def refuse_relative(values: Iterable[Any], fn: Callable[..., Any]) -> None:
    """A relative path would be resolved against a worker's working directory: refuse it."""
    for value in values:
        if isinstance(value, Path) and not value.is_absolute():
            raise ConfigError(
                f"relative path {value} given to the Ray task {fn.__name__}: a worker would "
                "resolve it against its own working directory; resolve it on the driver"
            )


def gather(refs: list[Any]) -> list[Any]:
    """``ray.get(refs)``, a task's kronos error raised as itself, any other one explained."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as exc:
        raise remote_error(exc) from None


def remote_error(exc: Any) -> KronosError:
    """The error to raise on the driver for a failed Ray task ``exc`` (a RayTaskError)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, KronosError):
        return cause
    # the first line names the task, its pid and its node's address: ray::fn() (pid=.., ip=..)
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    kind = type(cause).__name__ if cause is not None else "error"
    head = lines[0].strip() if lines else "a Ray task"
    tail = "\n".join(lines[1:][-TRACEBACK_LINES:])
    return RemoteTaskError(f"{head} failed ({kind}); its traceback ends:\n{tail}")


def worker_env(*, shipped: bool = False) -> dict[str, str]:
    """Environment for Ray workers: this process's settings that they read.

    Without a shipped working directory, workers import kronos from this
    checkout's path (a shared file system); with one, from the shipped copy.
    """
    keep = ("PYTHONPATH", "NUMBA_CACHE_DIR", "OMP_WAIT_POLICY", "KRONOS_DB", "MLFLOW_TRACKING_URI")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    for key in ("KRONOS_DB", "NUMBA_CACHE_DIR"):
        if key in env:  # a relative setting means the driver's directory, not the worker's
            env[key] = str(Path(env[key]).resolve())
    if not shipped:
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env
