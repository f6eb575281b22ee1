"""A fold's task (fit + forecast), in a module light enough for a Ray worker to import.

A Ray worker imports the module that holds the function it runs; this one
imports the forecasters only, not the trading loop or vectorbt.
"""

from __future__ import annotations

import socket
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from kronos.backtest.forecasts import FoldForecasts, fold_forecasts
from kronos.errors import InputError


def fold_task(
    name: str,
    params: dict[str, Any],
    seed: int,
    fold: Any,
    origins: list[date],
    artifact: str | None,
    panel: pl.DataFrame,
) -> FoldForecasts:
    """Fit (or load ``artifact``) and forecast one fold; a missing artifact names this host."""
    if artifact is not None and ":/" not in artifact and not Path(artifact).exists():
        raise InputError(
            f"no model artifact at {artifact} on host {socket.gethostname()} "
            "(forecaster.artifact must be reachable at the same path on every Ray node)"
        )
    return fold_forecasts(name, params, seed, panel, fold, origins, artifact)
