"""Data-quality rules for daily bars (whitepaper section 9, plus hygiene rules).

Rules, each judged per symbol:

- ``readable``: every value parses as its type;
- ``no_nulls``: no gaps in a column the symbol carries (a column that is null
  throughout, such as ``open`` for close-only sources, is not carried);
- ``positive_prices``: prices strictly positive;
- ``ohlc_consistent``: low <= open, close <= high;
- ``duplicate_keys``: one bar per (symbol, day);
- ``monotonic_dates``: dates increase in file order;
- ``extreme_moves``: fewer than ``qa_max_extreme_frac`` (0.1%) of days move more
  than ``qa_extreme_move`` in absolute log return;
- ``min_span``: at least ``qa_min_span_years`` (5) of history;
- ``off_session``: every bar lies on a session of the exchange calendar (a
  Sunday or a holiday bar is a date shifted by a time zone, or not a bar);
- ``calendar_gaps``: never more than ``qa_max_gap_days`` sessions missing in a
  row (holidays and weekends are not gaps).

The calendar is :mod:`kronos.calendar`'s (``DataSettings.calendar``, XNYS by
default; ``none`` for 24/7 assets, where every day is a session).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from kronos.calendar import Calendar, get_calendar
from kronos.config import DataSettings
from kronos.data.ingest import ROW
from kronos.data.schema import TABLES

RULES = (
    "readable",
    "no_nulls",
    "positive_prices",
    "ohlc_consistent",
    "duplicate_keys",
    "monotonic_dates",
    "extreme_moves",
    "min_span",
    "off_session",
    "calendar_gaps",
)
PRICES = ("open", "high", "low", "close", "adj_close")
VALUES = (*PRICES, "volume")


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict for one symbol: how many rows broke it and where the first is."""

    passed: bool
    count: int = 0
    first: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class SymbolQA:
    """All rule verdicts for one symbol."""

    symbol: str
    rows: int
    start: str | None
    end: str | None
    rules: dict[str, RuleResult] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every rule passed."""
        return all(r.passed for r in self.rules.values())


@dataclass(frozen=True)
class QAReport:
    """The verdicts for every symbol of one input (a file or the store)."""

    origin: str
    symbols: list[SymbolQA]
    settings: dict

    @property
    def passed(self) -> bool:
        """Whether every symbol passed every rule."""
        return all(s.passed for s in self.symbols)

    def failures(self) -> list[tuple[str, str, RuleResult]]:
        """(symbol, rule, result) of every failed rule."""
        return [(s.symbol, k, r) for s in self.symbols for k, r in s.rules.items() if not r.passed]

    def to_dict(self) -> dict:
        """A JSON-ready form."""
        return {
            "origin": self.origin,
            "passed": self.passed,
            "settings": self.settings,
            "symbols": [asdict(s) | {"passed": s.passed} for s in self.symbols],
        }


def _where(row: int | None, ts: object, column: str | None, origin: str, has_rows: bool) -> str:
    place = f"{origin}:{row}" if has_rows and row is not None else f"{ts}"
    return place + (f", column '{column}'" if column else "")


def _lenient(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast values to their types; return the cast frame and the unreadable cells."""
    schema = TABLES["bars"].schema
    bad = []
    cols = []
    for col in VALUES:
        src = frame[col] if col in frame.columns else pl.Series(col, [None] * frame.height)
        out = src.cast(schema[col], strict=False)
        out = out.fill_nan(None)
        mask = (
            out.is_null()
            & src.is_not_null()
            & ~src.cast(pl.String).str.to_lowercase().is_in(["nan", "", "null"])
        )
        bad.append(
            frame.filter(mask)
            .select("symbol", "ts", ROW)
            .with_columns(column=pl.lit(col), value=src.filter(mask).cast(pl.String))
        )
        cols.append(out)
    cast = frame.select("symbol", "ts", ROW).with_columns(cols)
    return cast, pl.concat(bad)


def _sessions(frame: pl.DataFrame, calendar: Calendar) -> tuple[pl.Series, pl.Series]:
    """Per row: whether ``ts`` is a session, and why not (a closed day, or out of range)."""
    days = frame["ts"].to_numpy().astype("datetime64[D]")
    known = ~np.isnat(days)
    inside = known & calendar.in_range(np.where(known, days, np.datetime64(calendar.first)))
    ok = ~known.copy()
    ok[inside] = calendar.sessions_mask(days[inside])
    why = np.where(
        inside,
        f"not a session of the {calendar.name} calendar",
        f"outside the {calendar.name} calendar ({calendar.first}..{calendar.last})",
    )
    return pl.Series(ok), pl.Series(why)


def _gaps(bars: pl.DataFrame, calendar: Calendar) -> pl.Series:
    """Sessions missing between each bar and the symbol's previous one (null for the first)."""
    prev = bars.select(pl.col("ts").shift(1).over("symbol"))["ts"]
    first = prev.is_null().to_numpy()
    cur = bars["ts"].to_numpy().astype("datetime64[D]")
    before = np.where(first, cur, prev.to_numpy().astype("datetime64[D]"))
    counts = calendar.gaps(before, cur).astype(np.int64)
    return pl.Series("gap", counts).scatter(np.flatnonzero(first), None)


def run_qa(
    frame: pl.DataFrame,
    origin: str,
    settings: DataSettings,
    calendar: Calendar | None = None,
) -> QAReport:
    """Judge every rule for every symbol of a bars frame.

    ``frame`` has the ``bars`` columns (values may still be text) and optionally
    ``_row``, the file line of each row; without it, rows are named by date.
    Sessions are those of ``calendar`` (else the one ``settings.calendar`` names).
    """
    calendar = calendar or get_calendar(settings.calendar)
    has_rows = ROW in frame.columns
    if not has_rows:
        frame = frame.with_row_index(ROW, offset=1)
    frame, unreadable = _lenient(frame)
    viol: dict[str, pl.DataFrame] = {}

    def hits(rule: str, mask: pl.Expr, column: str | None, detail: pl.Expr) -> None:
        got = frame.filter(mask).select("symbol", "ts", ROW, detail.cast(pl.String).alias("value"))
        viol[rule] = pl.concat(
            [viol.get(rule, got.clear()), got.with_columns(column=pl.lit(column))],
            how="diagonal",
        )

    viol["readable"] = unreadable.select("symbol", "ts", ROW, "value", "column")
    carried = frame.group_by("symbol").agg([pl.col(c).is_not_null().any().alias(c) for c in VALUES])
    framec = frame.join(carried, on="symbol", suffix="_carried")
    for col in VALUES:
        mask = pl.col(col).is_null() & (pl.col(f"{col}_carried") | pl.lit(col == "adj_close"))
        got = framec.filter(mask).select(
            "symbol", "ts", ROW, pl.lit("missing").alias("value"), pl.lit(col).alias("column")
        )
        viol["no_nulls"] = pl.concat([viol.get("no_nulls", got.clear()), got])
    for col in PRICES:
        hits("positive_prices", pl.col(col) <= 0, col, pl.col(col))
    hi = pl.max_horizontal("open", "close", "low")
    lo = pl.min_horizontal("open", "close")
    hits("ohlc_consistent", pl.col("high") < hi, "high", pl.col("high"))
    hits("ohlc_consistent", pl.col("low") > lo, "low", pl.col("low"))
    hits(
        "duplicate_keys",
        pl.struct("symbol", "ts").is_duplicated()
        & (pl.col(ROW) != pl.col(ROW).min().over("symbol", "ts")),
        "ts",
        pl.col("ts"),
    )
    in_order = frame.sort(ROW)
    prev_ts = pl.col("ts").shift(1).over("symbol")
    back = in_order.filter(pl.col("ts") < prev_ts).select(
        "symbol",
        "ts",
        ROW,
        pl.col("ts").cast(pl.String).alias("value"),
        pl.lit("ts").alias("column"),
    )
    viol["monotonic_dates"] = back
    on_session, why = _sessions(frame, calendar)
    viol["off_session"] = (
        frame.select("symbol", "ts", ROW)
        .with_columns(on=on_session, why=why)
        .filter(~pl.col("on"))
        .select(
            "symbol",
            "ts",
            ROW,
            pl.concat_str(pl.col("ts").dt.strftime("%a %Y-%m-%d"), pl.lit(" is "), "why").alias(
                "value"
            ),
            pl.lit("ts").alias("column"),
        )
    )

    bars = frame.filter(pl.col("ts").is_not_null() & pl.col("adj_close").is_not_null())
    bars = bars.sort("symbol", "ts", ROW).unique(
        ["symbol", "ts"], keep="first", maintain_order=True
    )
    bars = bars.with_columns(
        log_ret=(pl.col("adj_close") / pl.col("adj_close").shift(1).over("symbol")).log(),
        gap=_gaps(bars, calendar),
    )
    extreme = bars.filter(pl.col("log_ret").abs() > settings.qa_extreme_move).select(
        "symbol",
        "ts",
        ROW,
        pl.col("log_ret").round(4).cast(pl.String).alias("value"),
        pl.lit("adj_close").alias("column"),
    )
    gaps = bars.filter(pl.col("gap") > settings.qa_max_gap_days).select(
        "symbol",
        "ts",
        ROW,
        (pl.col("gap").cast(pl.String) + f" sessions missing ({calendar.name})").alias("value"),
        pl.lit("ts").alias("column"),
    )
    viol["calendar_gaps"] = gaps
    stats = {
        r["symbol"]: r
        for r in bars.group_by("symbol")
        .agg(
            rows=pl.len(),
            start=pl.col("ts").min(),
            end=pl.col("ts").max(),
            moves=pl.col("log_ret").is_not_null().sum(),
        )
        .iter_rows(named=True)
    }
    all_viol = {
        rule: {s: g for (s,), g in v.sort(ROW).group_by("symbol", maintain_order=True)}
        for rule, v in viol.items()
    }
    ext = {s: g for (s,), g in extreme.sort("ts").group_by("symbol", maintain_order=True)}

    def describe(g: pl.DataFrame) -> str:
        r = g.row(0, named=True)
        return f"{_where(r[ROW], r['ts'], r['column'], origin, has_rows)}: {r['value']}"

    reports = []
    for symbol in sorted(frame["symbol"].drop_nulls().unique().to_list()):
        st = stats.get(symbol, {"rows": 0, "start": None, "end": None, "moves": 0})
        rules: dict[str, RuleResult] = {}
        for rule in all_viol:
            g = all_viol.get(rule, {}).get(symbol)
            rules[rule] = (
                RuleResult(True)
                if g is None or g.is_empty()
                else RuleResult(False, g.height, describe(g))
            )
        g = ext.get(symbol)
        n_ext = 0 if g is None else g.height
        frac = n_ext / st["moves"] if st["moves"] else 0.0
        rules["extreme_moves"] = RuleResult(
            frac <= settings.qa_max_extreme_frac,
            n_ext,
            describe(g) if g is not None else None,
            f"{frac:.4%} of {st['moves']} moves beyond |log return| {settings.qa_extreme_move}",
        )
        years = (st["end"] - st["start"]).days / 365.25 if st["start"] else 0.0
        rules["min_span"] = RuleResult(
            years >= settings.qa_min_span_years, 0, None, f"{years:.1f} years"
        )
        reports.append(
            SymbolQA(
                symbol,
                frame.filter(pl.col("symbol") == symbol).height,
                str(st["start"]) if st["start"] else None,
                str(st["end"]) if st["end"] else None,
                {k: rules[k] for k in RULES},
            )
        )
    used = settings.model_dump(mode="json") | {"calendar": calendar.name}
    return QAReport(origin, reports, used)
