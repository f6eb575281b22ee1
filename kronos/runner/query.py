"""Runs in MLflow: recent ones, resolving id prefixes, side-by-side comparison."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kronos.config import did_you_mean
from kronos.runner.base import RunnerError

# ------------------------------------------------------------------ querying runs

HIGHER_BETTER = ("sharpe", "sortino", "total_return", "cagr", "calmar", "hit_rate")
LOWER_BETTER = ("crps", "mae", "rmse", "pinball", "loss")
SMALLER_MAGNITUDE = ("max_drawdown",)  # drawdowns are logged negative or positive
TARGETS = {"coverage": 0.90}  # the p05..p95 interval should hold 90% of outcomes


def metric_direction(name: str) -> tuple[str, float | None] | None:
    """How to rank a metric, by its last name part (``val_crps`` ranks like ``crps``).

    Returns ``("higher", None)``, ``("lower", None)``, ``("magnitude", None)``,
    ``("target", value)``, or None when no direction is known.
    """
    leaf = re.split(r"[/.]", name)[-1].lower()

    def is_(key: str) -> bool:
        return leaf == key or leaf.endswith("_" + key)

    if any(is_(k) for k in HIGHER_BETTER):
        return "higher", None
    if any(is_(k) for k in LOWER_BETTER):
        return "lower", None
    if any(is_(k) for k in SMALLER_MAGNITUDE):
        return "magnitude", None
    for key, target in TARGETS.items():
        if is_(key):
            return "target", target
    return None


def _experiments(client: MlflowClient) -> dict[str, str]:
    return {e.experiment_id: e.name for e in client.search_experiments()}


def recent_runs(
    client: MlflowClient, experiment: str | None = None, max_runs: int = 20
) -> tuple[list[Run], dict[str, str]]:
    """The newest runs (of one experiment, or all), and experiment names by id."""
    names = _experiments(client)
    if experiment is not None:
        ids = [i for i, n in names.items() if n == experiment]
        if not ids:
            raise RunnerError(
                f"no experiment {experiment!r}{did_you_mean(experiment, names.values())}"
            )
    else:
        ids = list(names)
    if not ids:
        return [], names
    runs = client.search_runs(ids, max_results=max_runs, order_by=["attributes.start_time DESC"])
    return list(runs), names


def resolve_runs(client: MlflowClient, refs: Sequence[str]) -> list[Run]:
    """Runs by full id or unique id prefix, searched across all experiments."""
    by_ref: dict[str, list[Run]] = {r: [] for r in refs}
    pending = []
    for ref in refs:
        if re.fullmatch(r"[0-9a-f]{32}", ref):
            try:
                by_ref[ref].append(client.get_run(ref))
                continue
            except MlflowException:
                pass
        pending.append(ref)
    if pending:
        ids = list(_experiments(client))
        token = None
        while ids:
            page = client.search_runs(ids, max_results=1000, page_token=token)
            for run in page:
                for ref in pending:
                    if run.info.run_id.startswith(ref):
                        by_ref[ref].append(run)
            token = page.token
            if not token:
                break
    problems = []
    for ref, found in by_ref.items():
        if not found:
            problems.append(f"no run with id or prefix {ref!r}")
        elif len(found) > 1:
            ids_ = ", ".join(r.info.run_id[:12] for r in found[:5])
            problems.append(f"run prefix {ref!r} is ambiguous: {ids_}")
    if problems:
        raise RunnerError(problems)
    return [by_ref[ref][0] for ref in refs]


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: the parameters that differ, every metric, the best per metric."""

    run_ids: list[str]
    params: dict[str, dict[str, str | None]]
    metrics: dict[str, dict[str, float | None]]
    best: dict[str, list[str]] = field(default_factory=dict)  # metric -> best run ids


def compare_runs(runs: Sequence[Run]) -> Comparison:
    """Compare runs; ``best`` marks the winners of metrics with a known direction.

    A metric gets no winner when fewer than two runs have it or all values tie.
    """
    ids = [r.info.run_id for r in runs]
    keys = sorted({k for r in runs for k in r.data.params})
    params = {
        k: {r.info.run_id: r.data.params.get(k) for r in runs}
        for k in keys
        if len({r.data.params.get(k) for r in runs}) > 1
    }
    metric_names = sorted({k for r in runs for k in r.data.metrics})
    metrics = {m: {r.info.run_id: r.data.metrics.get(m) for r in runs} for m in metric_names}
    best = {}
    for m, values in metrics.items():
        rule = metric_direction(m)
        have = {i: v for i, v in values.items() if v is not None and math.isfinite(v)}
        if rule is None or len(have) < 2 or len(set(have.values())) == 1:
            continue
        kind, target = rule
        score = {
            "higher": lambda v: -v,
            "lower": lambda v: v,
            "magnitude": abs,
            "target": lambda v, t=target: abs(v - t),
        }[kind]
        top = min(score(v) for v in have.values())
        best[m] = [i for i, v in have.items() if score(v) == top]
    return Comparison(ids, params, metrics, best)
