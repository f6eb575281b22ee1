"""A sweep's variants: in order here, or spread over a Ray cluster; resumable.

On Ray every (variant, fold) forecasting step is one task, and each variant's
trading loop is one more task that Ray starts once that variant's folds are
in; variants that share a universe, window and forecaster share their fold
tasks (the same fit gives the same forecasts). The driver plans the folds from
the store, so the store must be at the same absolute path on the driver and
every worker; results come back as each variant finishes, and the caller
records it then, so an interrupted sweep keeps what was done
(:func:`load_done` / :func:`record_done`, keyed by spec hash).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kronos.backtest.executor import Executor, connect, gather, refuse_relative
from kronos.backtest.result import BacktestResult
from kronos.backtest.run import fold_plan, run_on_db
from kronos.backtest.spec import BacktestSpec, spec_hash
from kronos.backtest.tasks import fold_task
from kronos.data.store import DEFAULT_LOCK_WAIT_S, Store

OnResult = Callable[[int, BacktestResult], None]


def run_sweep(
    specs: Sequence[tuple[int, BacktestSpec]],
    db: Path,
    on_result: OnResult,
    *,
    executor: Executor = "local",
    ray_address: str | None = None,
    working_dir: Path | None = None,
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
) -> None:
    """Run each ``(index, spec)`` on the store at ``db``; ``on_result`` as each one finishes.

    Local: one after another, in order. Ray: all fold tasks submitted at once,
    then one trading task per variant; ``on_result`` in the order they finish.
    """
    if executor == "local":
        for i, spec in specs:
            on_result(i, run_on_db(spec, db, lock_wait_s=lock_wait_s))
        return
    ray = connect(ray_address, working_dir)
    refuse_relative([db], run_on_db)
    fit_task = ray.remote(fold_task)
    trade_task = ray.remote(run_on_db)
    panels: dict[tuple[Any, ...], Any] = {}
    fits: dict[tuple[Any, ...], Any] = {}
    trading: dict[Any, int] = {}
    with Store.open(db, read_only=True, lock_wait_s=lock_wait_s) as store:
        for i, spec in specs:
            market, calls = fold_plan(spec, store)
            where = (
                tuple(market.symbols),
                str(spec.dates.end),
                spec.decision_settings().data.model_dump_json(),
            )
            refs = []
            for call in calls:
                key = (where, repr(call))
                if key not in fits:
                    if where not in panels:
                        panels[where] = ray.put(market.panel)
                    fits[key] = fit_task.remote(*call, panel=panels[where])
                refs.append(fits[key])
            # fold refs as positional arguments: Ray starts the task once all are in
            trading[trade_task.remote(spec, db, "local", None, lock_wait_s, *refs)] = i
    pending = list(trading)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            on_result(trading[ready[0]], gather(ready)[0])
    finally:
        for ref in pending:  # an error or an interrupt: leave nothing running for us
            ray.cancel(ref, force=True)


def record_path(folder: Path, spec: BacktestSpec) -> Path:
    """Where a finished variant's record lives: ``folder/<spec hash>.json``."""
    return folder / f"{spec_hash(spec)}.json"


def load_done(folder: Path, spec: BacktestSpec, settings_hash: str) -> dict[str, Any] | None:
    """The summary row of ``spec`` recorded by an earlier run, if its report is still there.

    A record made under other settings (``settings_hash``), or whose report was
    deleted, does not count: the variant runs again.
    """
    path = record_path(folder, spec)
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if row.get("settings_hash") != settings_hash or not Path(row.get("report", "")).is_file():
        return None
    return row


def record_done(folder: Path, spec: BacktestSpec, row: dict[str, Any]) -> Path:
    """Record a finished variant's summary row (written whole, then renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = record_path(folder, spec)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, default=str, indent=1))
    tmp.replace(path)
    return path
