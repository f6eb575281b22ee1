"""The combination with the neural models among its members, on the three holdout years.

``kronos bench forecast --holdouts 2008,2020,2022`` scores the default
``combination`` (EWMA, GARCH-t, ``har_gbm``). This runs the same protocol with
MTGNN on the inter-asset graph and N-BEATS added as members (each at
``--steps`` training steps, fitted twice per holdout: on the rows before the
validation year to choose the weights, then on all rows before the holdout),
beside EWMA, GARCH and ``har_gbm`` in the same run. The row named
``combination`` in the tables is the five-member one.

    KRONOS_DB=... .venv/bin/python examples/combination_with_neural.py   # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from datetime import date

from kronos.bench.forecast import run_forecast_bench
from kronos.cli._common import open_store
from kronos.cli.bench_tables import print_holdouts
from kronos.config import load_settings
from kronos.data import readers
from kronos.features.returns import returns_panel
from kronos.models.combination import Combination

MEMBERS = ("ewma", "garch", "har_gbm", "mtgnn_prior", "nbeats")


def main() -> None:
    """Print the holdout tables and the weights the validation years chose."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdouts", default="2008,2020,2022")
    parser.add_argument("--steps", type=int, default=200, help="MTGNN and N-BEATS max steps")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    settings = load_settings()
    with open_store(None, read_only=True, settings=settings.data) as store:
        panel = returns_panel(store, date.today(), source="skfolio.sp500", settings=settings.data)
        names = panel["symbol"].unique().to_list()
        sectors = readers.sectors(store, date.today(), names, settings=settings.data)
    steps = {"max_steps": args.steps}
    combination = Combination(
        members=MEMBERS,
        sectors=sectors,
        member_options={"mtgnn_prior": steps, "nbeats": steps},
    )
    result = run_forecast_bench(
        panel,
        ["ewma", "garch", "har_gbm", combination],
        sectors=sectors,
        holdouts=[int(y) for y in args.holdouts.split(",")],
    )
    if args.json:
        print(json.dumps(result, default=str))
        return
    print_holdouts(result)


if __name__ == "__main__":
    main()
