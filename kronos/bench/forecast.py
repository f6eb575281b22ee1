"""``kronos bench forecast``: the forecaster leaderboard on a held-out year.

Every model is fitted once on the data before the holdout (the final
``holdout_days`` calendar days of the panel) and then forecasts steps 1..5
from every trading day of the holdout (rolling origins), each origin seeing
only data up to itself. Neural models take the last 12 months / 20% of the
pre-holdout data for early stopping (the same split as ``kronos train``);
baselines fit on all of it. Scores: p50 MAE, p05-p95 coverage, the quantile
CRPS (mean over the three levels of twice the pinball loss), its ratio to the
GARCH baseline, and the exact CRPS where a model has a full predictive
distribution (EWMA: normal, GARCH: Student-t).

The graph models (StemGNN, MTGNN with a learned graph, MTGNN on the fixed
inter-asset graph) forecast the whole universe at once and take each symbol's
sector (``sectors``); ``graph_max_steps`` caps their optimisation steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta

import numpy as np
import polars as pl

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


def run_forecast_bench(
    panel: pl.DataFrame,
    models: Sequence[registry.ForecasterRef] = MODELS,
    holdout_days: int = 365,
    nbeats_max_steps: int | None = None,
    on_step: Callable[[str], None] | None = None,
    *,
    sectors: Mapping[str, str | None] | None = None,
    graph_max_steps: int | None = None,
) -> dict:
    """Fit, forecast and score every model on the same holdout; a JSON-ready dict.

    ``models``: names, import paths, entry points, classes or instances; rows
    are labelled with each class's ``name``.
    """
    step = on_step or (lambda _s: None)
    end: date = panel["ts"].max()
    start = end - timedelta(days=holdout_days)
    history = panel.filter(pl.col("ts") <= start)
    train, valid = train_valid_split(history)
    symbols = sorted(panel["symbol"].unique().to_list())
    origins = sorted(panel.filter(pl.col("ts") >= history["ts"].max())["ts"].unique().to_list())
    rows = []
    for name in models:
        model = build(name, nbeats_max_steps, sectors=sectors, graph_max_steps=graph_max_steps)
        step(f"fit {model.name}")
        t0 = time.perf_counter()
        if name in NEURAL:
            model.fit(train, valid)
        else:
            model.fit(history)
        fit_s = time.perf_counter() - t0
        step(f"forecast {model.name} from {len(origins)} origins")
        t0 = time.perf_counter()
        forecasts = model.predict_origins(panel, origins, symbols)
        predict_s = time.perf_counter() - t0
        scored = with_realized(forecasts, panel)
        metrics = score(scored)
        rows.append(
            {
                "model": model.name,
                **metrics,
                "crps_exact": exact_crps(model, panel, scored),
                "fit_seconds": fit_s,
                "predict_seconds_per_origin": predict_s / len(origins),
                "config": model.get_config(),
            }
        )
    garch = next((r["crps"] for r in rows if r["model"] == "garch"), None)
    for r in rows:
        r["crps_ratio_garch"] = r["crps"] / garch if garch else None
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
