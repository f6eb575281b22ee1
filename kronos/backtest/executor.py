"""Where independent pieces of a backtest run: in this process, or as Ray tasks.

Folds (fit + forecast) and sweep variants are independent and run through
:func:`map_calls`. The local executor calls them in order; the Ray executor
submits them to a local Ray (started on demand) or to the cluster at
``ray_address`` and returns the results in the submission order, so both give
the same list. Large shared arguments go to the object store once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

from kronos.errors import ConfigError

Executor = Literal["local", "ray"]


def map_calls(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    executor: Executor = "local",
    ray_address: str | None = None,
    shared: dict[str, Any] | None = None,
) -> list[Any]:
    """``[fn(*args, **shared) for args in calls]``, locally or as Ray tasks."""
    shared = shared or {}
    if executor == "local":
        return [fn(*args, **shared) for args in calls]
    if executor != "ray":
        raise ConfigError(f"unknown executor {executor!r}: local or ray")
    import ray  # imported only when asked for: it is slow to import

    if not ray.is_initialized():
        try:
            ray.init(
                address=ray_address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                # workers import kronos from this checkout, and see the same settings
                runtime_env={"env_vars": _worker_env()},
            )
        except (OSError, RuntimeError) as exc:  # unreachable address, no local cluster
            where = ray_address or "a local Ray"
            raise ConfigError(f"cannot start or reach {where} (--ray-address): {exc}") from exc
    refs = {k: ray.put(v) for k, v in shared.items()}
    task = ray.remote(fn)
    return ray.get([task.remote(*args, **refs) for args in calls])


def _worker_env() -> dict[str, str]:
    keep = ("PYTHONPATH", "NUMBA_CACHE_DIR", "OMP_WAIT_POLICY", "KRONOS_DB", "MLFLOW_TRACKING_URI")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env
