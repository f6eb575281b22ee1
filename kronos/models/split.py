"""Time-ordered train/validation split per symbol (whitepaper 6.1)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl


def train_valid_split(
    panel: pl.DataFrame, valid_days: int = 365, valid_frac: float = 0.2
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split each symbol into its earlier training and later validation rows.

    Validation holds the most recent ``valid_days`` calendar days or
    ``valid_frac`` of the symbol's rows, whichever is more rows. Strictly
    time-ordered: every validation row of a symbol is later than every training
    row of that symbol.
    """
    ranked = panel.sort("symbol", "ts").with_columns(
        pos=pl.int_range(pl.len()).over("symbol"),
        n=pl.len().over("symbol"),
        last=pl.col("ts").max().over("symbol"),
    )
    ranked = ranked.with_columns(
        in_window=(pl.col("ts") > pl.col("last") - timedelta(days=valid_days))
    ).with_columns(
        n_valid=pl.max_horizontal(
            pl.col("in_window").sum().over("symbol"),
            (pl.col("n") * valid_frac).ceil().cast(pl.Int64),
        )
    )
    is_valid = pl.col("pos") >= pl.col("n") - pl.col("n_valid")
    cols = panel.columns
    return ranked.filter(~is_valid).select(cols), ranked.filter(is_valid).select(cols)
