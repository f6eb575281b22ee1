"""Real daily prices that ship inside installed packages (no network).

- skfolio ``load_sp500_dataset``: 20 S&P 500 stocks, adjusted closes, 1990-2022;
- skfolio ``load_sp500_index``: the S&P 500 index level (symbol ``SP500``);
- skfolio ``load_factors_dataset``: MTUM, QUAL, SIZE, USMV, VLUE ETFs, 2014-2022;
- backtesting.py ``backtesting.test.GOOG``: GOOG OHLCV 2004-08-19..2013-03-01 (read from
  the CSV it ships, without importing backtesting: see :func:`goog_csv`).

skfolio ships adjusted closes only: they are stored as ``adj_close`` with open,
high, low, raw close and volume left NULL, never invented. GOOG's data predates
its 2014 split and it paid no dividend then, so its close is also its adjusted
close.

Profiles (sector, industry) come from ``resources/profiles.csv``: today's GICS
classification, applied to the whole history (``available_at`` 1970-01-01), a
known survivorship simplification.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from kronos.data.schema import TABLES

if TYPE_CHECKING:  # pandas loads with the datasets, not with the CLI
    import pandas as pd

EPOCH = datetime(1970, 1, 1)


def _close_only(prices: pd.DataFrame, source: str) -> pl.DataFrame:
    wide = pl.from_pandas(prices.rename_axis("ts").reset_index())
    return (
        wide.unpivot(index="ts", variable_name="symbol", value_name="adj_close")
        .drop_nulls("adj_close")
        .with_columns(
            pl.col("ts").cast(pl.Date),
            *(
                pl.lit(None, pl.Float64).alias(c)
                for c in ("open", "high", "low", "close", "volume")
            ),
            source=pl.lit(source),
        )
    )


def goog_csv() -> Path:
    """backtesting.py's ``test/GOOG.csv``, found without importing the package.

    ``import backtesting`` loads its Bokeh plotting module, which in a Jupyter kernel
    switches Bokeh to notebook output (a warning and a "Loading BokehJS" cell that
    needs a CDN); ``find_spec`` of a top-level package only locates it.
    """
    spec = importlib.util.find_spec("backtesting")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("backtesting is not installed: pip install backtesting")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "GOOG.csv"
    if not path.is_file():
        raise FileNotFoundError(f"backtesting ships no GOOG data at {path}")
    return path


def _goog() -> pl.DataFrame:
    import pandas as pd

    # the parsing of backtesting.test._read_file, which defines backtesting.test.GOOG
    goog = pd.read_csv(goog_csv(), index_col=0, parse_dates=True)
    frame = pl.from_pandas(goog.rename_axis("ts").reset_index())
    return frame.rename(str.lower).with_columns(
        pl.col("ts").cast(pl.Date),
        pl.col("volume").cast(pl.Float64),
        adj_close=pl.col("close"),
        symbol=pl.lit("GOOG"),
        source=pl.lit("backtesting.goog"),
    )


def bundled_bars() -> dict[str, pl.DataFrame]:
    """Bars of every bundled dataset, keyed by source label, in the ``bars`` contract."""
    from skfolio import datasets

    frames = {
        "skfolio.sp500": _close_only(datasets.load_sp500_dataset(), "skfolio.sp500"),
        "skfolio.sp500_index": _close_only(datasets.load_sp500_index(), "skfolio.sp500_index"),
        "skfolio.factors": _close_only(datasets.load_factors_dataset(), "skfolio.factors"),
        "backtesting.goog": _goog(),
    }
    columns = TABLES["bars"].columns
    return {k: v.select(columns).sort("symbol", "ts") for k, v in frames.items()}


def bundled_profiles() -> pl.DataFrame:
    """Sector and industry of the bundled symbols, in the ``dim_company_profile`` contract."""
    text = resources.files("kronos.data").joinpath("resources/profiles.csv").read_bytes()
    frame = pl.read_csv(text, infer_schema=False)
    return frame.with_columns(
        available_at=pl.lit(EPOCH).dt.replace_time_zone("UTC"),
        market_cap=pl.lit(None, pl.Float64),
        source=pl.lit("bundled"),
    ).select(TABLES["dim_company_profile"].columns)
