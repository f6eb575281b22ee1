"""The user's own bars from CSV or Parquet files.

Columns are matched by name (case-insensitive, common aliases such as ``Date``
and ``Adj Close``) or by an explicit mapping ``{our_name: file_column}``.
Timestamps become the exchange-local trading day: plain dates are taken as they
are, time-zone-aware timestamps are converted to the market time zone, and
naive timestamps are refused unless the caller says which zone they are in.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kronos.data.errors import InputError, Problem
from kronos.data.ingest import ROW
from kronos.data.schema import TABLES

ALIASES = {
    "ts": ("ts", "date", "datetime", "timestamp", "time", "day"),
    "symbol": ("symbol", "ticker", "sym"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c", "raw_close"),
    "adj_close": ("adj_close", "adj close", "adjclose", "adjusted_close", "adjusted close"),
    "volume": ("volume", "vol", "v"),
}


def parse_mapping(items: list[str] | None) -> dict[str, str]:
    """Parse ``["ts=Date", "adj_close=Adj Close"]`` into a mapping, checking our names."""
    mapping = {}
    for item in items or []:
        ours, sep, theirs = item.partition("=")
        if not sep or ours not in ALIASES:
            raise ValueError(
                f"bad column mapping {item!r}: expected NAME=COLUMN, NAME in {list(ALIASES)}"
            )
        mapping[ours] = theirs
    return mapping


def _read(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema=False, truncate_ragged_lines=False)
    except FileNotFoundError:
        raise
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError([Problem(f"malformed file: {first}", file=str(path))]) from exc


def _rename(frame: pl.DataFrame, mapping: dict[str, str], origin: str) -> pl.DataFrame:
    lower = {c.lower().strip(): c for c in frame.columns}
    chosen: dict[str, str] = {}
    for ours, aliases in ALIASES.items():
        if ours in mapping:
            if mapping[ours] not in frame.columns:
                raise InputError(
                    [
                        Problem(
                            f"mapped column {mapping[ours]!r} not in {frame.columns}", file=origin
                        )
                    ]
                )
            chosen[mapping[ours]] = ours
            continue
        for alias in aliases:
            if alias in lower and lower[alias] not in chosen:
                chosen[lower[alias]] = ours
                break
    return frame.select([pl.col(src).alias(dst) for src, dst in chosen.items()])


def _to_trading_day(
    frame: pl.DataFrame, origin: str, tz: str | None, market_tz: str
) -> pl.DataFrame:
    ts = frame["ts"]
    if ts.dtype == pl.Date:
        return frame
    if ts.dtype == pl.String:
        text = ts.str.strip_chars()
        as_date = text.str.to_date("%Y-%m-%d", strict=False)
        if as_date.is_null().sum() == text.is_null().sum():
            return frame.with_columns(ts=as_date)
        has_zone = text.str.contains(r"(Z|[+-]\d\d:?\d\d)$")
        if bool(has_zone.all()):
            ts = text.str.to_datetime(time_zone="UTC", strict=False)
        else:
            ts = text.str.to_datetime(strict=False)
        bad = ts.is_null() & text.is_not_null()
        if bad.any():
            i = bad.arg_true()[0]
            raise InputError(
                [
                    Problem(
                        f"cannot read {text[i]!r} as a date or timestamp",
                        file=origin,
                        row=frame[ROW][i],
                        column="ts",
                    )
                ]
            )
    if ts.dtype.time_zone is None:  # type: ignore[union-attr]
        if tz is None:
            raise InputError(
                [
                    Problem(
                        "naive timestamps (no time zone); pass the zone they are in (--tz)",
                        file=origin,
                        row=frame[ROW][0],
                        column="ts",
                    )
                ]
            )
        ts = ts.dt.replace_time_zone(tz, ambiguous="raise", non_existent="raise")
    return frame.with_columns(ts=ts.dt.convert_time_zone(market_tz).dt.date())


def read_bars_file(
    path: Path | str,
    *,
    mapping: dict[str, str] | None = None,
    symbol: str | None = None,
    tz: str | None = None,
    market_tz: str = "America/New_York",
    source: str | None = None,
) -> pl.DataFrame:
    """Read one CSV/Parquet file into the ``bars`` contract plus a ``_row`` line number.

    Values are not yet validated (see :func:`kronos.data.ingest.conform`). A file
    without an adjusted close is taken as already adjusted (``adj_close = close``).
    """
    path = Path(path)
    origin = str(path)
    raw = _read(path)
    frame = _rename(raw, mapping or {}, origin).with_row_index(ROW, offset=2)
    if "symbol" not in frame.columns:
        if symbol is None:
            raise InputError(
                [
                    Problem(
                        "no symbol column; map one or pass --symbol", file=origin, column="symbol"
                    )
                ]
            )
        frame = frame.with_columns(symbol=pl.lit(symbol))
    if "ts" not in frame.columns:
        raise InputError([Problem("no date column (ts/date/timestamp)", file=origin, column="ts")])
    if "adj_close" not in frame.columns:
        if "close" not in frame.columns:
            raise InputError(
                [Problem("neither adj_close nor close present", file=origin, column="adj_close")]
            )
        frame = frame.with_columns(adj_close=pl.col("close"))
    frame = _to_trading_day(frame, origin, tz, market_tz)
    label = source or f"{'parquet' if path.suffix.lower() in ('.parquet', '.pq') else 'csv'}"
    schema = TABLES["bars"].schema
    return frame.with_columns(
        *(
            pl.lit(None, dtype).alias(c)
            for c, dtype in schema.items()
            if c not in frame.columns and c != "source"
        ),
        source=pl.lit(label),
    ).select([*schema, ROW])
