"""Time-ordered train/validation split per symbol (whitepaper 6.1)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from kronos.models.base import ForecastError


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


def fit_split(
    name: str, train: pl.DataFrame, valid: pl.DataFrame | None, valid_days: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``(fit rows, validation rows, both)`` for a model that chooses on validation.

    Without ``valid`` the last ``valid_days`` of ``train`` are split off
    (:func:`train_valid_split`); ``both`` is every row, sorted, for a refit and
    for features that need history before the validation window.
    """
    if valid is None:
        train, valid = train_valid_split(train, valid_days=valid_days)
    if valid.is_empty() or train.is_empty():
        raise ForecastError(f"{name}: needs rows both before and inside the validation window")
    both = pl.concat([train, valid.select(train.columns)]).sort("symbol", "ts")
    return train, valid, both
