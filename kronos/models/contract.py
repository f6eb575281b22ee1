"""The forecaster contract, checked on a model that is not built in before it is used.

:func:`check_forecaster` refuses, with a message naming the import path and
the problem:

- a missing member: ``fit``, ``predict``, ``input_size``, ``horizon`` and a
  ``name`` class attribute (a string that is not a built-in model's name);
  ``save``/``load`` are needed only when an artifact is written or read
  (:mod:`kronos.models.artifacts` says so then);
- a forecast frame that breaks :data:`~kronos.models.base.FORECAST_SCHEMA`:
  wrong columns or dtypes, steps other than exactly ``1..horizon`` per symbol,
  duplicate (symbol, step) rows, symbols other than those asked for, a wrong
  ``asof``, NaN/inf, or ``p05 <= p50 <= p95`` broken;
- look-ahead: a fitted model's forecast from an origin that moves when the rows
  after the origin change;
- ``get_config()`` that does not return a JSON-ready dict (training, the
  benchmarks and MLflow record it; override ``_hyper_parameters`` to give the
  constructor arguments).

The checks run on a small deterministic synthetic panel (:func:`probe_panel`:
4 symbols x 300 XNYS sessions of seeded normal returns), on a model built with
its default arguments (or a copy of the instance given). :func:`checked` runs
them once per class and process: its cache (a weak set of the classes that
passed) is this module's only state.
"""

from __future__ import annotations

import copy
import inspect
import json
import weakref
from datetime import date
from typing import Any

import numpy as np
import polars as pl

from kronos.calendar import get_calendar
from kronos.errors import ConfigError
from kronos.models.base import FORECAST_SCHEMA, PANEL_SCHEMA, Forecaster, ForecastError

__all__ = ["check_forecaster", "checked", "probe_panel"]

REQUIRED = ("fit", "predict", "input_size", "horizon", "name")
TOLERANCE = 1e-12
N_SYMBOLS, N_SESSIONS, CUTOFF = 4, 300, 270  # GARCH needs 250 training returns
ORIGINS = (275, 285, 295)  # session indices, all before the panel's end


def probe_panel(n_symbols: int = N_SYMBOLS, n_sessions: int = N_SESSIONS) -> pl.DataFrame:
    """Seeded normal daily returns (sd 1%) of ``S0001..`` on XNYS sessions from 2020-01-02."""
    sessions = get_calendar("XNYS").sessions(date(2020, 1, 2), date(2022, 12, 30))
    days = sessions[:n_sessions]
    rng = np.random.default_rng(20260416)
    symbols = [f"S{i + 1:04d}" for i in range(n_symbols)]
    return pl.DataFrame(
        {
            "symbol": np.repeat(symbols, n_sessions).tolist(),
            "ts": days * n_symbols,
            "y": rng.normal(0.0003, 0.01, n_symbols * n_sessions),
        },
        schema=PANEL_SCHEMA,
    )


_PASSED: weakref.WeakSet[type] = weakref.WeakSet()  # the cache: classes that passed


def checked(model: type | Forecaster) -> None:
    """:func:`check_forecaster` on a class (or an instance), once per class and process.

    A refusal is not cached: the next resolution checks again.
    """
    cls = model if isinstance(model, type) else type(model)
    if cls not in _PASSED:
        check_forecaster(model)
        _PASSED.add(cls)


def check_forecaster(model: type | Forecaster, *, name: str | None = None) -> None:
    """Refuse a forecaster class (or instance) that breaks the contract; see the module doc.

    ``name``: how errors name it (default: its import path).
    """
    cls = model if isinstance(model, type) else type(model)
    name = name or f"{cls.__module__}:{cls.__qualname__}"
    _check_members(cls, name)
    if isinstance(model, type):
        try:
            instance = cls()
        except TypeError as exc:
            raise ConfigError(
                f"forecaster {name}: cannot be built with its default arguments ({exc}); "
                "give every constructor keyword a default"
            ) from None
    else:
        instance = copy.deepcopy(model)
    panel = probe_panel()
    cutoff = panel["ts"].unique().sort()[CUTOFF]
    try:
        instance.fit(panel.filter(pl.col("ts") <= cutoff))
    except Exception as exc:
        raise ForecastError(
            f"forecaster {name}: fit failed on the contract's synthetic panel "
            f"({N_SYMBOLS} symbols x {CUTOFF + 1} sessions): {type(exc).__name__}: {exc}"
        ) from exc
    _check_lookahead(instance, panel, name)
    try:
        config = instance.get_config()
        json.dumps(config)
    except Exception as exc:
        raise ForecastError(
            f"forecaster {name}: get_config() must return a JSON-ready dict (training, the "
            f"benchmarks and MLflow record it): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(config, dict):
        raise ForecastError(f"forecaster {name}: get_config() returned {type(config).__name__}")


def _check_members(cls: type, name: str) -> None:
    missing = [m for m in REQUIRED if not hasattr(cls, m)]
    if missing:
        raise ConfigError(
            f"forecaster {name}: missing {', '.join(missing)} (the contract needs "
            f"{', '.join(REQUIRED)})"
        )
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise ConfigError(f"forecaster {name}: does not implement {', '.join(abstract)}")
    label = inspect.getattr_static(cls, "name")
    if not isinstance(label, str) or not label:
        raise ConfigError(f"forecaster {name}: 'name' must be a non-empty str class attribute")
    from kronos.models.registry import FORECASTERS

    if label in FORECASTERS and FORECASTERS[label] != f"{cls.__module__}:{cls.__qualname__}":
        raise ConfigError(f"forecaster {name}: name {label!r} is a built-in model's; pick another")
    for method in ("fit", "predict"):
        if not callable(getattr(cls, method)):
            raise ConfigError(f"forecaster {name}: {method} is not a method")


def _predict(model: Any, panel: pl.DataFrame, origin: date, symbols: list[str], name: str):
    try:
        return model.predict(panel, origin, symbols)
    except Exception as exc:
        raise ForecastError(
            f"forecaster {name}: predict at origin {origin} failed: {type(exc).__name__}: {exc}"
        ) from exc


def check_frame(frame: Any, origin: date, symbols: list[str], horizon: int, name: str) -> None:
    """Refuse a forecast frame that breaks :data:`FORECAST_SCHEMA` and its row rules."""
    at = f"forecaster {name}: predict at origin {origin}"
    if not isinstance(frame, pl.DataFrame):
        raise ForecastError(f"{at} returned a {type(frame).__name__}, not a polars DataFrame")
    if frame.columns != list(FORECAST_SCHEMA):
        raise ForecastError(f"{at}: columns {frame.columns}, expected {list(FORECAST_SCHEMA)}")
    for column, dtype in FORECAST_SCHEMA.items():
        if frame.schema[column] != dtype:
            raise ForecastError(
                f"{at}: column {column!r} is {frame.schema[column]}, expected {dtype}"
            )
    got = sorted(frame["symbol"].unique().to_list())
    if got != sorted(symbols):
        raise ForecastError(f"{at}: symbols {got}, asked for {sorted(symbols)}")
    if frame["asof"].n_unique() != 1 or frame["asof"][0] != origin:
        raise ForecastError(f"{at}: asof {frame['asof'].unique().to_list()}, expected {origin}")
    wanted = list(range(1, horizon + 1))
    for (symbol,), rows in frame.group_by("symbol", maintain_order=True):
        steps = sorted(rows["step"].to_list())
        if steps != wanted:
            raise ForecastError(
                f"{at}: symbol {symbol} has steps {steps}, expected {wanted} "
                "(one row per symbol and step)"
            )
    values = frame.select("p05", "p50", "p95").to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ForecastError(
            f"{at}: {('p05', 'p50', 'p95')[j]} is {values[i, j]} for symbol "
            f"{frame['symbol'][int(i)]}, step {frame['step'][int(i)]}"
        )
    unsorted = (values[:, 0] > values[:, 1]) | (values[:, 1] > values[:, 2])
    if unsorted.any():
        i = int(np.flatnonzero(unsorted)[0])
        p05, p50, p95 = values[i]
        raise ForecastError(
            f"{at}: quantiles not sorted for symbol {frame['symbol'][i]}, step "
            f"{frame['step'][i]} (p05 {p05:.6g}, p50 {p50:.6g}, p95 {p95:.6g}); "
            "p05 <= p50 <= p95 is required"
        )


def _altered(panel: pl.DataFrame, origin: date) -> pl.DataFrame:
    """``panel`` with every row after ``origin`` changed and ten later sessions added."""
    later = get_calendar("XNYS").next_sessions(panel["ts"].max(), 10)
    symbols = panel["symbol"].unique().sort().to_list()
    extra = pl.DataFrame(
        {
            "symbol": np.repeat(symbols, len(later)).tolist(),
            "ts": later * len(symbols),
            "y": [0.07] * (len(later) * len(symbols)),
        },
        schema=PANEL_SCHEMA,
    )
    changed = panel.with_columns(
        y=pl.when(pl.col("ts") > origin).then(pl.col("y") * 5 + 0.05).otherwise(pl.col("y"))
    )
    return pl.concat([changed, extra]).sort("symbol", "ts")


def _check_lookahead(model: Any, panel: pl.DataFrame, name: str) -> None:
    sessions = panel["ts"].unique().sort()
    symbols = panel["symbol"].unique().sort().to_list()[:-1]  # a subset: `symbols` is honoured
    horizon = int(model.horizon)
    for index in ORIGINS:
        origin = sessions[index]
        before = _predict(model, panel, origin, symbols, name)
        check_frame(before, origin, symbols, horizon, name)
        after = _predict(model, _altered(panel, origin), origin, symbols, name)
        check_frame(after, origin, symbols, horizon, name)
        joined = before.join(after, on=["symbol", "step"], suffix="_after").sort("symbol", "step")
        for q in ("p50", "p05", "p95"):
            moved = (joined[q] - joined[f"{q}_after"]).abs() > TOLERANCE
            if moved.any():
                row = joined.filter(moved).row(0, named=True)
                raise ForecastError(
                    f"forecaster {name} looks ahead: its prediction at origin {origin} moved when "
                    f"rows after it changed (symbol {row['symbol']}, step {row['step']}, "
                    f"{q} {row[q]:.4g} -> {row[f'{q}_after']:.4g})"
                )
