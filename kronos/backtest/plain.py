"""Plain strategies of a backtest spec: target weights or entry/exit signals, turned into orders.

A spec's ``strategy`` section (:class:`~kronos.backtest.strategy_spec.StrategySpec`)
replaces the decision chain with one of two simple rules; the engine
(:func:`kronos.backtest.engine.trade`, keyword ``plan``) still fills the
orders, applies corporate actions and delistings, marks the book and records
every order, so a plain run is comparable with a decision-chain run.

Where the values come from (point in time):

- ``fn(store, asof, symbols) -> frame[symbol, value]`` (polars, or pandas), an
  import path ``"pkg.mod:func"`` or a name in the entry-point group
  ``kronos.strategies``; called at the close of ``asof`` and must read only
  what was known then (:mod:`kronos.data.readers` with ``asof``). ``weights``:
  on the spec's rebalance sessions; ``signals``: on every session.
- a parquet file with columns ``ts`` (date), ``symbol`` and the value column.
  A row dated ``ts`` is known at the close of ``ts`` (a date that is not a
  session: at the next session's close). ``weights``: a date's rows replace
  the whole target book (names absent: 0) and the book rebalances on each
  session that has rows; rows dated before the first session are not lost:
  the latest such book is traded at the first session's close. ``signals``:
  each row acts on its own symbol; rows dated before the first session are
  ignored (an entry there would have filled before the window).

How values become orders (market orders, whole shares, sized at the decision
close on the run's price basis, as the planner sizes them): ``weights``: a
target of ``floor(weight x NAV / price)`` shares, an order for the difference
with the shares held (a zero target sells the whole holding); ``signals``: +1
when flat buys ``floor(size x NAV / price)`` shares (``size`` default 1/N of
the universe), -1 when held sells everything, 0 or null does nothing, and a
held name is never resized. Names with no price at the decision close, or whose
bars have ended, get no order (the run's notes count them).

Checks, each naming the file (or the function and date), row, column and
symbol: a symbol outside the universe, a duplicate ``(ts, symbol)``, a NaN or
null value (signals: null is "nothing"), a negative weight, a date's weights
summing over ``1 + 1e-9``, a signal not in {-1, 0, 1}.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kronos.backtest.engine import rebalance_days
from kronos.backtest.market import Market
from kronos.backtest.spec import BacktestSpec
from kronos.backtest.strategy_spec import StrategySpec
from kronos.config import DecisionSettings
from kronos.data.store import Store
from kronos.decision.orders import client_order_id
from kronos.decision.step import run_id_for
from kronos.errors import ConfigError, InputError
from kronos.plugins import resolve

__all__ = ["WEIGHT_TOLERANCE", "PlainStrategy", "check_values", "plain_strategy", "read_file"]

GROUP = "kronos.strategies"
WEIGHT_TOLERANCE = 1e-9  # a book's weights may sum to 1 + this (float noise)
StrategyFn = Callable[[Store, date, list[str]], Any]


def check_values(
    frame: pl.DataFrame, kind: str, universe: Sequence[str], where: str, column: str
) -> None:
    """Refuse bad rows of ``frame`` (``row, symbol, value`` and maybe ``ts``).

    ``where`` names the source (a file, or a function and its date); ``row`` is
    the row number shown in errors (or null). Raises :class:`InputError`.
    """

    def fail(row: int | None, symbol: object, what: str) -> None:
        at = f"row {row}, " if row is not None else ""
        raise InputError(f"{where}: {at}column {column!r}, symbol {symbol!r}: {what}")

    known = set(universe)
    for row, symbol in frame.filter(pl.col("symbol").is_null() | ~pl.col("symbol").is_in(known))[
        ["row", "symbol"]
    ].iter_rows():
        if symbol is None:
            at = f"row {row}, " if row is not None else ""
            raise InputError(f"{where}: {at}column 'symbol': missing symbol")
        fail(row, symbol, f"unknown symbol (not in the backtest's {len(known)}-name universe)")
    keys = ["ts", "symbol"] if "ts" in frame.columns else ["symbol"]
    dup = frame.filter(~pl.struct(keys).is_first_distinct())
    if dup.height:
        r = dup.row(0, named=True)
        when = f" on {r['ts']}" if "ts" in r else ""
        fail(r["row"], r["symbol"], f"duplicate {'(ts, symbol)' if 'ts' in r else 'symbol'}{when}")
    value = pl.col("value")
    bad_null = value.is_nan() | (value.is_null() if kind == "weights" else pl.lit(False))
    for r in frame.filter(bad_null).head(1).iter_rows(named=True):
        fail(r["row"], r["symbol"], f"{'NaN' if r['value'] is not None else 'null'} value")
    if kind == "weights":
        for r in frame.filter(value < 0).head(1).iter_rows(named=True):
            fail(r["row"], r["symbol"], f"negative weight {r['value']}")
        by = ["ts"] if "ts" in frame.columns else []
        sums = (
            frame.group_by(by, maintain_order=True).agg(value.sum(), pl.col("row").first())
            if by
            else frame.select(value.sum(), pl.col("row").first())
        )
        for r in sums.filter(pl.col("value") > 1 + WEIGHT_TOLERANCE).head(1).iter_rows(named=True):
            when = f" on {r['ts']}" if by else ""
            raise InputError(
                f"{where}: column {column!r}: weights{when} sum to {r['value']:.12g} > 1 "
                f"(rows from {r['row']}; long-only books of at most the NAV)"
            )
    else:
        odd = frame.filter(value.is_not_null() & ~value.is_in([-1.0, 0.0, 1.0]))
        for r in odd.head(1).iter_rows(named=True):
            fail(r["row"], r["symbol"], f"signal {r['value']} is not -1, 0 or 1")


def read_file(spec: StrategySpec, universe: Sequence[str]) -> pl.DataFrame:
    """The checked rows of ``spec``'s file: ``ts`` (date), ``symbol``, ``value``, sorted."""
    path, column = spec.path, spec.value_column
    assert path is not None
    try:
        raw = pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds on a bad file
        raise InputError(f"{path}: cannot read as parquet: {type(exc).__name__}: {exc}") from None
    missing = [c for c in ("ts", "symbol", column) if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (columns: {raw.columns})")
    ts = raw["ts"]
    if ts.dtype == pl.String:
        ts = ts.str.to_date(strict=False)
    elif ts.dtype.is_temporal():
        ts = ts.cast(pl.Date)
    else:
        raise InputError(f"{path}: column 'ts' holds {ts.dtype}, not dates")
    frame = pl.DataFrame(
        {
            "row": pl.int_range(1, raw.height + 1, eager=True),
            "ts": ts,
            "symbol": raw["symbol"].cast(pl.String),
            "value": _floats(raw[column], f"{path}: column {column!r}"),
        }
    )
    for (row,) in frame.filter(pl.col("ts").is_null()).select("row").head(1).iter_rows():
        raise InputError(f"{path}: row {row}, column 'ts': not a date ({raw['ts'][row - 1]!r})")
    check_values(frame, spec.kind, universe, str(path), column)
    return frame.sort("ts", "symbol", maintain_order=True).drop("row")


def _floats(series: pl.Series, where: str) -> pl.Series:
    if series.dtype.is_numeric() or series.dtype == pl.Null:
        return series.cast(pl.Float64)
    raise InputError(f"{where} holds {series.dtype}, not numbers")


@dataclass
class PlainStrategy:
    """A plain strategy bound to one run: the engine's ``plan`` and its rebalance sessions.

    ``by_session`` maps a session index to the file's values then (file
    strategies); ``fn`` is called otherwise. ``skipped`` lists the targets that
    got no order (``day, symbol, why``).
    """

    kind: str
    label: str  # "fn pkg.mod:func" or "file /path (sha256 ...)"
    universe: list[str]
    size: float
    rebalance: set[date]
    fn: StrategyFn | None = None
    by_session: dict[int, dict[str, float | None]] = field(default_factory=dict)
    skipped: list[tuple[date, str, str]] = field(default_factory=list)

    def notes(self) -> tuple[str, ...]:
        """What the result says of the strategy (no forecaster, skipped targets)."""
        out = [f"plain {self.kind} strategy ({self.label}): no forecaster is used"]
        if self.skipped:
            day, sym, why = self.skipped[0]
            out.append(
                f"{len(self.skipped)} {self.kind} got no order (first: {sym} on {day}, {why})"
            )
        return tuple(out)

    def values(self, store: Store, day: date, i: int) -> dict[str, float | None]:
        """The strategy's values known at the close of ``day`` (session ``i``)."""
        if self.fn is None:
            return self.by_session.get(i, {})
        where = f"strategy {self.label} at {day}"
        try:
            out = self.fn(store, day, list(self.universe))
        except Exception as exc:
            raise InputError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, pl.DataFrame):
            if type(out).__module__.startswith("pandas"):
                out = pl.from_pandas(out)
            else:
                raise InputError(f"{where} returned {type(out).__name__}, not a frame")
        if not {"symbol", "value"} <= set(out.columns):
            raise InputError(f"{where} returned columns {out.columns}, not symbol and value")
        frame = pl.DataFrame(
            {
                "row": pl.Series([None] * out.height, dtype=pl.Int64),
                "symbol": out["symbol"].cast(pl.String),
                "value": _floats(out["value"], f"{where}: column 'value'"),
            }
        )
        check_values(frame, self.kind, self.universe, where, "value")
        return dict(zip(frame["symbol"].to_list(), frame["value"].to_list(), strict=True))

    def __call__(
        self, *, run: Any, market: Market, i: int, nav: float, settings: DecisionSettings,
        label: str,
    ) -> pl.DataFrame:  # fmt: skip
        """Step 5 of the engine: this session's orders (``decide_on``'s frame)."""
        day = market.sessions[i]
        run.decisions += 1
        held = run.book.positions
        values = self.values(run.source.store, day, i)
        if self.kind == "weights":
            # absent or zero: a held name's target is 0
            wanted = {s: w for s, w in values.items() if w} | {
                s: 0.0 for s in held if not values.get(s)
            }
        else:
            wanted = {s: v for s, v in values.items() if v in (1.0, -1.0)}
        col = {s: j for j, s in enumerate(market.symbols)}
        rows = []
        for s in sorted(wanted):
            j, have, v = col[s], held.get(s, 0.0), float(wanted[s] or 0.0)
            if self.kind == "signals" and (v > 0) == (have != 0):
                continue  # an entry while held or an exit while flat does nothing
            if v <= 0 and self.kind == "weights" and have == 0:
                continue
            if v < 0 or (v == 0 and have):
                rows.append((s, -have, "exit"))
                continue
            price = float(market.mark[i, j])
            if market.last_bar[j] < i or market.marked_at[i, j] < 0 or not price > 0:
                why = "bars ended" if market.last_bar[j] < i else "no price at the decision close"
                self.skipped.append((day, s, why))
                continue
            share = v if self.kind == "weights" else self.size
            qty = math.floor(share * nav / price) - have
            if qty:
                rows.append((s, float(qty), "rebalance" if have else "entry"))
        run_id = run_id_for(day, label)
        rows.sort(key=lambda r: (r[1] > 0, r[0]))  # sells first, then buys, by symbol
        return pl.DataFrame(
            {
                "asof": [day] * len(rows),
                "symbol": [r[0] for r in rows],
                "side": ["buy" if r[1] > 0 else "sell" for r in rows],
                "client_order_id": [client_order_id(run_id, day, r[0], r[2]) for r in rows],
                "qty": [r[1] for r in rows],
                "limit_price": [None] * len(rows),
            },
            schema={
                "asof": pl.Date,
                "symbol": pl.String,
                "side": pl.String,
                "client_order_id": pl.String,
                "qty": pl.Float64,
                "limit_price": pl.Float64,
            },
        )


def _load_fn(ref: str) -> tuple[StrategyFn, str]:
    obj, path = resolve(ref, {}, GROUP)
    if not callable(obj):
        raise ConfigError(f"strategy {ref!r} ({path}) is a {type(obj).__name__}, not a function")
    return obj, path


def plain_strategy(spec: BacktestSpec, market: Market, first: int, last: int) -> PlainStrategy:
    """``spec``'s plain strategy on sessions ``first..last`` of ``market``, inputs checked."""
    s = spec.strategy
    if not s.plain:
        raise ValueError(f"spec {spec.name!r} runs the decision chain, not a plain strategy")
    sessions = market.sessions[first : last + 1]
    universe = list(market.symbols)
    size = s.size if s.size is not None else 1.0 / len(universe)
    if s.fn is not None:
        fn, ref = _load_fn(s.fn)
        rebalance = (
            set(sessions)
            if s.kind == "signals"
            else rebalance_days(sessions, spec.rebalance.every, spec.rebalance.weekday)
        )
        return PlainStrategy(s.kind, f"fn {ref}", universe, size, rebalance, fn=fn)
    frame = read_file(s, universe)
    path = s.path
    assert path is not None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    days = np.array(market.sessions, dtype="datetime64[D]")
    # the first session on or after each date: where a row is known at the close
    at = np.searchsorted(days, frame["ts"].to_numpy().astype("datetime64[D]"))
    frame = frame.with_columns(i=pl.Series(at, dtype=pl.Int64))
    if s.kind == "weights":
        frame = frame.with_columns(pl.max_horizontal("i", pl.lit(first)).alias("i"))
    frame = frame.filter((pl.col("i") >= first) & (pl.col("i") <= last))
    by_session: dict[int, dict[str, float | None]] = {}
    for (i, _ts), rows in frame.group_by("i", "ts", maintain_order=True):
        values = dict(zip(rows["symbol"].to_list(), rows["value"].to_list(), strict=True))
        if s.kind == "weights":  # a later date's book replaces an earlier one
            by_session[int(i)] = values
        else:
            by_session.setdefault(int(i), {}).update(values)
    rebalance = {market.sessions[i] for i in by_session}
    label = f"file {path} (sha256 {digest}, column {s.value_column!r})"
    return PlainStrategy(s.kind, label, universe, size, rebalance, by_session=by_session)
