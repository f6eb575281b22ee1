"""The market a backtest trades: its universe, calendar, bars as arrays, returns panel.

Read once from the store for the whole run (the simulator needs every bar to
fill and mark); the decision itself reads the store point in time at each
rebalance, so nothing here reaches a decision except through the simulated
book (fills at or after the decision) and the forecasts (fitted per fold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from kronos.config import DataSettings
from kronos.data import readers
from kronos.data.errors import InputError
from kronos.data.prices import (
    ACTIONS_SCHEMA,
    PriceBasis,
    basis_bars,
    corporate_actions,
    price_basis,
)
from kronos.data.store import Store
from kronos.features.strategist import Prefetched, prefetch

# reference dataset of the strategist -> (table, column that must be present)
_REFERENCE_TABLES = {
    "factors": ("fmp_income_statement", None),
    "revisions": ("fmp_analyst_estimates", None),
    "estimates": ("fmp_analyst_estimates", None),
    "ratings": ("fmp_rating", None),
    "social": ("social_features", None),
    "liquidity": ("bars", "volume"),
    "news": ("fmp_news", None),
}


@dataclass(frozen=True)
class Market:
    """Bars of the universe on one session calendar, ``[session, symbol]`` arrays.

    Prices are on one basis (:mod:`kronos.data.prices`): raw, with ``split``
    (new shares per old, 1 when none) and ``dividend`` (cash per share, 0 when
    none) on each ex-date; or adjusted, where both stay neutral. ``mark`` is
    ``close`` carried forward (for valuing a book on a day a symbol has no
    bar) and ``marked_at`` the session index of the bar it comes from (-1
    before the first); ``last_bar`` is each symbol's last session index; ``y``
    is the log return of the session (NaN when missing).
    """

    sessions: list[date]
    symbols: list[str]
    sectors: dict[str, str | None]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    mark: np.ndarray
    marked_at: np.ndarray
    last_bar: np.ndarray
    split: np.ndarray
    dividend: np.ndarray
    basis: PriceBasis
    y: np.ndarray
    panel: pl.DataFrame  # symbol, ts, y: the forecasters' input
    has_open: bool
    absent: tuple[str, ...]  # reference datasets with no row for the universe
    prefetched: Prefetched  # profile and return histories the decisions slice

    def index_of(self, day: date) -> int:
        """Position of session ``day`` in :attr:`sessions`."""
        i = int(np.searchsorted(np.array(self.sessions, dtype="datetime64[D]"), np.datetime64(day)))
        if i >= len(self.sessions) or self.sessions[i] != day:
            raise KeyError(f"{day} is not a session of this backtest")
        return i


def resolve_universe(
    store: Store,
    end: date,
    source: str | None,
    symbols: list[str] | None,
    exclude: list[str],
    settings: DataSettings,
) -> list[str]:
    """The symbols to trade: the given list, else every equity with a profile and bars.

    ``source`` keeps symbols whose bars come from that source (exact name, or a
    prefix before a dot: ``skfolio`` matches ``skfolio.sp500``).
    """
    if symbols is None:
        prof = readers.profiles(store, end, settings=settings)
        symbols = prof.filter(pl.col("asset_type") == "equity")["symbol"].to_list()
    if source is not None:
        rows = store.con.execute(
            "SELECT DISTINCT symbol FROM bars WHERE source = ? OR source LIKE ? || '.%'",
            [source, source],
        ).fetchall()
        sourced = {r[0] for r in rows}
        if not sourced:
            raise InputError(f"no bars with source {source!r} in {store.path}")
        symbols = [s for s in symbols if s in sourced]
    out = sorted(set(symbols) - set(exclude))
    if not out:
        raise InputError("the universe is empty after the source filter and exclusions")
    known = {r[0] for r in store.con.execute("SELECT DISTINCT symbol FROM bars").fetchall()}
    missing = [s for s in out if s not in known]
    if missing:
        raise InputError(f"no bars in {store.path} for symbols {missing}")
    return out


def absent_reference(store: Store, symbols: list[str], end: date) -> tuple[str, ...]:
    """Reference datasets holding no row for ``symbols`` up to ``end`` (checked once)."""
    out = []
    for name, (table, column) in _REFERENCE_TABLES.items():
        present = f"{column} IS NOT NULL" if column else "true"
        n = store.con.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE symbol IN "
            f"(SELECT unnest(?::VARCHAR[])) AND {present} LIMIT 1)",
            [symbols],
        ).fetchall()[0][0]
        if n == 0:
            out.append(name)
    return tuple(out)


def wide(
    frame: pl.DataFrame, column: str, sessions: Sequence[date], symbols: Sequence[str]
) -> np.ndarray:
    """``frame`` (``ts, symbol, column``) as a sessions x symbols array, NaN where absent.

    Rows of other sessions or symbols are ignored.
    """
    out = np.full((len(sessions), len(symbols)), np.nan)
    if frame.height == 0:
        return out
    ts_idx = {d: i for i, d in enumerate(sessions)}
    sym_idx = {s: j for j, s in enumerate(symbols)}
    # one chunk: ``replace_strict`` rebuilds its mapping per chunk, and a concat of
    # per-origin forecasts has thousands of them
    frame = frame.select("ts", "symbol", column).rechunk()
    rows = frame.select(
        pl.col("ts").replace_strict(ts_idx, return_dtype=pl.Int64, default=None).alias("i"),
        pl.col("symbol").replace_strict(sym_idx, return_dtype=pl.Int64, default=None).alias("j"),
        pl.col(column).cast(pl.Float64),
    ).drop_nulls(["i", "j"])
    out[rows["i"].to_numpy(), rows["j"].to_numpy()] = rows[column].fill_null(np.nan).to_numpy()
    return out


def carry_forward(values: np.ndarray) -> np.ndarray:
    """Each column's last finite value carried forward (NaN before the first)."""
    finite = np.isfinite(values)
    idx = np.where(finite, np.arange(values.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = values[idx, np.arange(values.shape[1])]
    started = np.maximum.accumulate(finite, axis=0)
    return np.where(started, out, np.nan)


def last_index(values: np.ndarray) -> np.ndarray:
    """Per cell, the row index of its column's last finite value so far (-1 before any)."""
    finite = np.isfinite(values)
    idx = np.where(finite, np.arange(values.shape[0])[:, None], -1)
    return np.maximum.accumulate(idx, axis=0)


def load_market(store: Store, symbols: list[str], end: date, settings: DataSettings) -> Market:
    """Every bar and return of ``symbols`` up to ``end``, on the union calendar."""
    basis = price_basis(store, symbols, end, settings)
    bars = basis_bars(store, end, symbols, basis, settings)
    if bars.is_empty():
        raise InputError(f"no bars up to {end} for {symbols}")
    sessions = sorted(bars["ts"].unique().to_list())
    rets = readers.returns(store, end, symbols, settings=settings).select(
        "symbol", "ts", y="log_ret"
    )
    close = wide(bars, "close", sessions, symbols)
    actions = (
        corporate_actions(store, end, symbols, settings)
        if basis.raw
        else pl.DataFrame(schema=ACTIONS_SCHEMA)
    )
    split = np.nan_to_num(wide(actions, "split_ratio", sessions, symbols), nan=1.0)
    dividend = np.nan_to_num(wide(actions, "dividend", sessions, symbols), nan=0.0)
    marked_at = last_index(close)
    profiles = readers.profiles(store, end, symbols, settings=settings)
    sectors = dict(zip(profiles["symbol"].to_list(), profiles["sector"].to_list(), strict=True))
    return Market(
        sessions=sessions,
        symbols=symbols,
        sectors={s: sectors.get(s) for s in symbols},
        open=wide(bars, "open", sessions, symbols),
        high=wide(bars, "high", sessions, symbols),
        low=wide(bars, "low", sessions, symbols),
        close=close,
        volume=wide(bars, "volume", sessions, symbols),
        mark=carry_forward(close),
        marked_at=marked_at,
        last_bar=marked_at[-1],
        split=split,
        dividend=dividend,
        basis=basis,
        y=wide(rets, "y", sessions, symbols),
        panel=rets.filter(pl.col("y").is_not_null()).sort("symbol", "ts"),
        has_open=bool(bars["open"].is_not_null().any()),
        absent=absent_reference(store, symbols, end),
        prefetched=prefetch(store, symbols, end, data_settings=settings),
    )
