"""How har_gbm's tree size was chosen: validation years only, never a holdout.

For each holdout year of ``kronos bench forecast --holdouts 2008,2020,2022``
the validation window is the last 12 months before it (2007, 2019, 2021).
Each configuration is fitted on the rows before that window and scored on its
rolling origins; the printed ratio is its CRPS over EWMA's on the same
origins. The default (15 leaves, 5,000 rows a leaf) has the lowest mean.

    KRONOS_DB=... .venv/bin/python examples/har_gbm_tree_size.py   # ~6 min on 2 cores
"""

from __future__ import annotations

from datetime import date

import polars as pl

from kronos.cli._common import open_store
from kronos.config import load_settings
from kronos.data import readers
from kronos.features.returns import returns_panel
from kronos.models.baselines import EwmaNormal
from kronos.models.evaluation import score, with_realized
from kronos.models.har_gbm import HarGbm
from kronos.models.split import train_valid_split

GRID = [(15, 1000), (7, 1000), (31, 1000), (15, 5000), (31, 5000), (63, 5000)]
YEARS = (2008, 2020, 2022)


def main() -> None:
    """Print the validation CRPS ratio to EWMA of every configuration and year."""
    settings = load_settings()
    with open_store(None, read_only=True, settings=settings.data) as store:
        panel = returns_panel(store, date.today(), source="skfolio.sp500", settings=settings.data)
        names = panel["symbol"].unique().to_list()
        sectors = readers.sectors(store, date.today(), names, settings=settings.data)
    ratios: dict[tuple[int, int], list[float]] = {g: [] for g in GRID}
    for year in YEARS:
        history = panel.filter(pl.col("ts") < date(year, 1, 1))
        train, valid = train_valid_split(history)
        origins = sorted(valid["ts"].unique().to_list())
        base = score(
            with_realized(EwmaNormal().fit(train).predict_origins(history, origins), history)
        )
        for leaves, rows in GRID:
            model = HarGbm(sectors=sectors, num_leaves=leaves, min_data_in_leaf=rows).fit(train)
            got = score(with_realized(model.predict_origins(history, origins), history))
            ratios[(leaves, rows)].append(got["crps"] / base["crps"])
            print(
                f"validation {year - 1}: leaves {leaves:2d}, rows/leaf {rows}: "
                f"{ratios[(leaves, rows)][-1]:.4f} x EWMA",
                flush=True,
            )
    for (leaves, rows), values in sorted(ratios.items(), key=lambda kv: sum(kv[1])):
        print(
            f"mean over {len(YEARS)} validation years: leaves {leaves:2d}, rows/leaf {rows}: "
            f"{sum(values) / len(values):.5f}"
        )


if __name__ == "__main__":
    main()
