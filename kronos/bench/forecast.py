"""``kronos bench forecast``: the forecaster leaderboard on a held-out year.

Every model is fitted once on the data before the holdout (the final
``holdout_days`` calendar days of the panel) and then forecasts steps 1..5
from every trading day of the holdout (rolling origins), each origin seeing
only data up to itself. Neural models take the last 12 months / 20% of the
pre-holdout data for early stopping (the same split as ``kronos train``);
baselines fit on all of it. Scores: p50 MAE, p05-p95 coverage, the quantile
CRPS (mean over the three levels of twice the pinball loss), its ratio to the
GARCH baseline, and the exact CRPS where a model has a full predictive
distribution (EWMA: normal, GARCH: Student-t). Significance on the per-origin
losses (:mod:`kronos.bench.significance`): Diebold-Mariano against EWMA and
GARCH, and the 90% Model Confidence Set.

``holdouts`` (calendar years, e.g. 2008, 2020, 2022) instead refits every
model before each year, scores it on that year and pools the years into an
aggregate (:func:`run_holdout_years`).

The graph models (StemGNN, MTGNN with a learned graph, MTGNN on the fixed
inter-asset graph) forecast the whole universe at once and take each symbol's
sector (``sectors``); ``graph_max_steps`` caps their optimisation steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from functools import partial

import numpy as np
import polars as pl

from kronos.bench.significance import per_origin_loss, significance
from kronos.errors import InputError
from kronos.metrics import crps_normal_each, crps_student_t_each
from kronos.models import registry
from kronos.models.base import Forecaster
from kronos.models.evaluation import score, with_realized
from kronos.models.split import train_valid_split

GRAPH = ("stemgnn", "mtgnn", "mtgnn_prior")
MODELS = ("historical", "ewma", "garch", "nbeats", "nbeats_default", "tft", *GRAPH)
NEURAL = ("nbeats", "nbeats_default", "tft", *GRAPH)


def build(
    name: registry.ForecasterRef,
    nbeats_max_steps: int | None = None,
    *,
    sectors: Mapping[str, str | None] | None = None,
    graph_max_steps: int | None = None,
) -> Forecaster:
    """The leaderboard's configuration of model ``name``.

    A model not built in (import path, entry point, class) takes its defaults;
    an instance is used as it is.
    """
    if name == "nbeats":
        return registry.build(name, max_steps=nbeats_max_steps)
    if name in GRAPH:
        steps = {} if graph_max_steps is None else {"max_steps": graph_max_steps}
        return registry.build(name, sectors=sectors, **steps)
    if isinstance(name, str | type) and "sectors" in registry.override_keys(name):
        return registry.build(name, sectors=sectors)
    return registry.build(name)


def exact_crps(model: Forecaster, panel: pl.DataFrame, scored: pl.DataFrame) -> float | None:
    """Mean exact CRPS over the scored rows, for models with a full distribution."""
    if not hasattr(model, "distribution"):
        return None
    values = []
    for (asof,), rows in scored.group_by("asof"):
        symbols = sorted(rows["symbol"].unique().to_list())
        params = model.distribution(panel, asof, symbols)
        index = {s: i for i, s in enumerate(symbols)}
        i = np.array([index[s] for s in rows["symbol"]])
        h = rows["step"].to_numpy() - 1
        y = rows["y_true"].to_numpy()
        if len(params) == 2:
            mu, sigma = params
            values.append(crps_normal_each(y, mu[i, h], sigma[i, h]))
        else:
            mu, sigma, nu = params
            scale = sigma[i, h] * np.sqrt((nu[i, h] - 2) / nu[i, h])
            values.append(crps_student_t_each(y, mu[i, h], scale, nu[i, h]))
    return float(np.mean(np.concatenate(values)))


def _fit_and_score(
    name: registry.ForecasterRef,
    panel: pl.DataFrame,
    history: pl.DataFrame,
    origins: list[date],
    step: Callable[[str], None],
    make: Callable[[registry.ForecasterRef], Forecaster],
) -> tuple[dict, pl.DataFrame]:
    """Fit one model on ``history``, forecast from ``origins``: its row and per-origin losses."""
    model = make(name)
    symbols = sorted(panel["symbol"].unique().to_list())
    step(f"fit {model.name}")
    t0 = time.perf_counter()
    if name in NEURAL:
        model.fit(*train_valid_split(history))
    else:
        model.fit(history)
    fit_s = time.perf_counter() - t0
    step(f"forecast {model.name} from {len(origins)} origins")
    t0 = time.perf_counter()
    forecasts = model.predict_origins(panel, origins, symbols)
    predict_s = time.perf_counter() - t0
    scored = with_realized(forecasts, panel)
    row = {
        "model": model.name,
        **score(scored),
        "crps_exact": exact_crps(model, panel, scored),
        "fit_seconds": fit_s,
        "predict_seconds_per_origin": predict_s / len(origins),
        "config": model.get_config(),
    }
    if hasattr(model, "fitted_summary"):
        row["fitted"] = model.fitted_summary()
    return row, per_origin_loss(scored)


def _aligned(losses: Mapping[str, pl.DataFrame]) -> tuple[list[date], dict[str, np.ndarray]]:
    """The origins every model was scored on, and each model's per-origin losses there."""
    frames = iter(losses.items())
    name, first = next(frames)
    joined = first.rename({"loss": name})
    for name, frame in frames:
        joined = joined.join(frame.rename({"loss": name}), on="asof", how="inner")
    joined = joined.sort("asof")
    return joined["asof"].to_list(), {n: joined[n].to_numpy() for n in losses}


def _ratios(rows: list[dict], key: str = "crps") -> None:
    """Add ``crps_ratio_garch`` and ``crps_ratio_ewma`` (None without that baseline)."""
    for base in ("garch", "ewma"):
        ref = next((r[key] for r in rows if r["model"] == base), None)
        for r in rows:
            r[f"crps_ratio_{base}"] = r[key] / ref if ref else None


def run_forecast_bench(
    panel: pl.DataFrame,
    models: Sequence[registry.ForecasterRef] = MODELS,
    holdout_days: int = 365,
    nbeats_max_steps: int | None = None,
    on_step: Callable[[str], None] | None = None,
    *,
    sectors: Mapping[str, str | None] | None = None,
    graph_max_steps: int | None = None,
    holdouts: Sequence[int] | None = None,
) -> dict:
    """Fit, forecast and score every model on the same holdout; a JSON-ready dict.

    ``models``: names, import paths, entry points, classes or instances; rows
    are labelled with each class's ``name``. Each row carries the DM tests
    against EWMA and GARCH and the MCS membership (:mod:`kronos.bench.significance`).
    ``holdouts`` (calendar years) replaces the final ``holdout_days`` by
    :func:`run_holdout_years` over those years.
    """
    step = on_step or (lambda _s: None)
    make = partial(
        build,
        nbeats_max_steps=nbeats_max_steps,
        sectors=sectors,
        graph_max_steps=graph_max_steps,
    )
    if holdouts:
        return run_holdout_years(panel, models, holdouts, step, make)
    end: date = panel["ts"].max()
    start = end - timedelta(days=holdout_days)
    history = panel.filter(pl.col("ts") <= start)
    symbols = sorted(panel["symbol"].unique().to_list())
    origins = sorted(panel.filter(pl.col("ts") >= history["ts"].max())["ts"].unique().to_list())
    rows, losses = [], {}
    for name in models:
        row, loss = _fit_and_score(name, panel, history, origins, step, make)
        rows.append(row)
        losses[row["model"]] = loss
    _ratios(rows)
    tests = significance(_aligned(losses)[1])
    for r in rows:
        r.update(tests[r["model"]])
    return {
        "holdout": {
            "first_origin": str(origins[0]),
            "last_origin": str(origins[-1]),
            "origins": len(origins),
            "symbols": symbols,
            "train_end": str(history["ts"].max()),
            "holdout_days": holdout_days,
        },
        "models": rows,
    }


HOLDOUT_KEYS = ("mae", "coverage", "crps", "crps_exact", "n", "fit_seconds")


def run_holdout_years(
    panel: pl.DataFrame,
    models: Sequence[registry.ForecasterRef],
    years: Sequence[int],
    step: Callable[[str], None],
    make: Callable[[registry.ForecasterRef], Forecaster] = build,
) -> dict:
    """Every model refitted before each holdout year and scored on it, plus the aggregate.

    Holdout ``Y``: origins are the panel's trading days of calendar year ``Y``
    that have a realized step in the data; every model is fitted on the data
    before January 1 of ``Y`` (neural models: the last 12 months of it for
    validation); ``make`` builds a model from its reference. Aggregate: the
    per-origin losses of all holdouts pooled into one series (``crps`` is its
    mean, each origin weighing the same; DM and MCS run on it), ``coverage``
    over all scored rows, and ``mean_crps_ratio_*`` the mean of the per-holdout
    ratios.
    """
    per_year, pooled, rows_by_model = [], {}, {}
    for year in sorted(set(years)):
        first = date(year, 1, 1)
        history = panel.filter(pl.col("ts") < first)
        origins = sorted(panel.filter(pl.col("ts").dt.year() == year)["ts"].unique().to_list())
        if history.is_empty() or not origins:
            raise InputError(
                f"holdout {year}: the panel spans {panel['ts'].min()}..{panel['ts'].max()}; "
                "need data before and inside that year"
            )
        rows, losses = [], {}
        for name in models:
            row, loss = _fit_and_score(
                name, panel, history, origins, lambda s, y=year: step(f"{y}: {s}"), make
            )
            rows.append(row)
            losses[row["model"]] = loss
        _ratios(rows)
        scored_origins, aligned = _aligned(losses)
        tests = significance(aligned)
        for r in rows:
            m = r["model"]
            rows_by_model.setdefault(m, {"model": m, "config": r["config"], "holdouts": {}})
            rows_by_model[m]["holdouts"][str(year)] = {
                **{k: r[k] for k in HOLDOUT_KEYS},
                "crps_ratio_garch": r["crps_ratio_garch"],
                "crps_ratio_ewma": r["crps_ratio_ewma"],
                **tests[m],
                **({"fitted": r["fitted"]} if "fitted" in r else {}),
            }
            pooled.setdefault(m, []).append(aligned[m])
        per_year.append(
            {
                "year": year,
                "first_origin": str(scored_origins[0]),
                "last_origin": str(scored_origins[-1]),
                "origins": len(scored_origins),
                "train_end": str(history["ts"].max()),
            }
        )
    series = {m: np.concatenate(v) for m, v in pooled.items()}
    tests = significance(series)
    out = []
    for m, row in rows_by_model.items():
        held = row["holdouts"].values()
        n = sum(h["n"] for h in held)
        agg = {
            "crps": float(series[m].mean()),
            "coverage": sum(h["coverage"] * h["n"] for h in held) / n,
            "origins": len(series[m]),
            **{
                f"mean_crps_ratio_{b}": None
                if any(h[f"crps_ratio_{b}"] is None for h in held)
                else float(np.mean([h[f"crps_ratio_{b}"] for h in held]))
                for b in ("garch", "ewma")
            },
            **tests[m],
        }
        out.append({**row, **tests[m], "aggregate": agg})
    for base in ("garch", "ewma"):
        ref = float(series[base].mean()) if base in series else None
        for o in out:
            o["aggregate"][f"crps_ratio_{base}"] = (
                None if ref is None else o["aggregate"]["crps"] / ref
            )
    return {
        "holdouts": per_year,
        "symbols": sorted(panel["symbol"].unique().to_list()),
        "models": out,
    }
