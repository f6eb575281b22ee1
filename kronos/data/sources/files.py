"""The user's own bars from CSV or Parquet files.

Columns are matched by name (case-insensitive, common aliases such as ``Date``
and ``Adj Close``) or by an explicit mapping ``{our_name: file_column}``. The
file's content decides how it is read (Parquet starts with ``PAR1``) and must
agree with the ``--source`` the user named.

Which session a daily bar belongs to (the README states the same rule):

- a date-only value (``2021-01-04``, Parquet ``date32``) is that session date,
  whatever ``tz`` says;
- a timestamp at midnight in its own stated zone (``2021-01-04T00:00:00Z``,
  ``...T00:00:00-05:00``, Parquet ``timestamp[ns, UTC]`` at 00:00) is that
  calendar date; so is a naive midnight;
- any other timestamp, once placed in its zone (``tz`` for naive ones), belongs to
  its calendar date in the exchange's zone (America/New_York for XNYS): a
  pre-open 05:00Z and an end-of-day 17:30 or 21:30Z both stay on that day's
  session, never move to the next one. A date that is no session (a Saturday
  10:00) is refused at ingest.

Slash and dot dates (``01/04/2021``, ``04.01.2021``) are ambiguous and need an
explicit ``date_format``; year-first ones (``2021/01/04``) are read as year,
month, day. Whether the resulting day is a session is checked at ingest
(:class:`kronos.data.ingest.IngestRules`), so ``kronos data validate`` can
still read and report such a file. Files that are JSON, ZIP/Excel or delimited
by ``;`` or tabs are refused, naming what they are.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from kronos.calendar import Calendar, get_calendar
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
PARQUET_MAGIC = b"PAR1"
ZIP_MAGIC = b"PK\x03\x04"
_ISO = (
    r"^(\d{4}-\d{2}-\d{2})"  # date
    r"(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?))?"  # optional time
    r"\s*(Z|[+-]\d{2}:?\d{2})?$"  # optional zone
)
_SLASH = r"^\d{1,4}[/.]\d{1,2}[/.]\d{1,4}"
_YEAR_FIRST = r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})(.*)$"  # 2021/01/04: not ambiguous
GENERIC_HINT = "--date-format (strptime), e.g. '%m/%d/%Y' (US) or '%d/%m/%Y' (European)"
_TIME_DIRECTIVES = ("%H", "%I", "%M", "%S", "%T", "%R", "%c", "%p", "%s")


def parse_mapping(items: list[str] | None) -> dict[str, str]:
    """Parse ``["ts=Date", "adj_close=Adj Close"]`` into a mapping, checking our names."""
    mapping = {}
    for item in items or []:
        ours, sep, theirs = item.partition("=")
        if not sep or ours not in ALIASES:
            raise InputError(
                [
                    Problem(
                        f"bad column mapping {item!r} (--map): expected NAME=COLUMN, "
                        f"NAME in {list(ALIASES)}"
                    )
                ]
            )
        mapping[ours] = theirs
    return mapping


def sniff(path: Path) -> str:
    """What the file's first bytes say it is: ``parquet``, ``zip`` (.xlsx), ``json`` or ``csv``.

    ``json`` means the first character after an optional BOM and white space is
    ``{`` or ``[``; anything else is taken for text (``csv``).
    """
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"["):
        return "json"
    return "csv"


def wrong_source(kind: str, source: str | None) -> str | None:
    """Why a file :func:`sniff` calls ``kind`` cannot be read as ``source``, else None.

    ``source`` None stands for ``kronos data validate --file`` (CSV or Parquet bars).
    """
    if kind == "zip":
        return "the file is a ZIP/Excel workbook, not CSV: export it as CSV"
    if kind == "json" and source != "fmp":
        where = "; pass --source fmp" if source else ": bar files are CSV or Parquet"
        return f"the file is JSON (an FMP payload?){where}"
    if kind == "parquet" and source == "fmp":
        return "the file is Parquet, not an FMP JSON payload; pass --source parquet"
    if source in ("csv", "parquet") and kind in ("csv", "parquet") and source != kind:
        what = "Parquet (it starts with PAR1)" if kind == "parquet" else "not Parquet"
        return f"the file is {what} but --source {source} was given; pass --source {kind}"
    return None


def _delimiter(header: list[str], origin: str) -> None:
    """Refuse a header read as one column holding ``;`` or a tab: the file is no comma CSV.

    Such files are refused rather than re-read with their delimiter: the locales
    that write ``;`` also write decimal commas and dot thousands (``1.234``), which
    would be read as other numbers without a word.
    """
    if len(header) != 1:
        return
    name = header[0]
    found = [d for d in (";", "\t") if d in name]
    if found:
        sep = max(found, key=name.count)
        label = "';'" if sep == ";" else "tabs"
        raise _fail(
            f"the header is one column {name!r}: the file seems delimited by {label}, "
            "not commas; save it as CSV with commas",
            origin,
            row=1,
        )


def _fail(
    message: str,
    origin: str,
    row: int | None = None,
    column: str | None = None,
    symbol: str | None = None,
) -> InputError:
    return InputError([Problem(message, file=origin, row=row, column=column, symbol=symbol)])


def _duplicates(names: list[str], origin: str, row: int | None) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        key = name.strip().casefold()
        if key in seen:
            raise _fail(
                f"duplicate column name {name.strip()!r} (columns {seen[key]} and {i}): "
                "rename one or drop it",
                origin,
                row=row,
                column=name.strip(),
            )
        seen[key] = i


def _read(path: Path, source: str | None) -> pl.DataFrame:
    """The file's rows as read, with ``_row``: the CSV line (header = 1) or Parquet row."""
    origin = str(path)
    if not path.is_file():
        raise _fail("no such file", origin)
    kind = sniff(path)
    refusal = wrong_source(kind, source)
    if refusal:
        raise _fail(refusal, origin)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            _duplicates(pq.read_schema(path).names, origin, row=None)
            return pl.read_parquet(path).with_row_index(ROW, offset=1)
        data = path.read_bytes()
        header = data.decode("utf-8-sig", errors="replace").splitlines()[:1]
        names = next(csv.reader(header), [])
        _delimiter(names, origin)
        _duplicates(names, origin, row=1)
        frame = pl.read_csv(data, infer_schema=False, truncate_ragged_lines=False)
    except (InputError, FileNotFoundError):
        raise
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(f"malformed file: {first}", origin) from exc
    except Exception as exc:  # pyarrow's own errors on a damaged Parquet footer
        raise _fail(f"malformed file: {str(exc).strip()[:200]}", origin) from exc
    frame = frame.with_row_index(ROW, offset=2)
    # blank lines (a trailing newline too many) read as rows of nulls: they hold no bar
    blank = pl.all_horizontal(
        pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") for c in frame.columns[1:]
    )
    return frame.filter(~blank) if frame.width > 1 else frame


def _rename(frame: pl.DataFrame, mapping: dict[str, str], origin: str) -> pl.DataFrame:
    lower = {c.lower().strip(): c for c in frame.columns if c != ROW}
    chosen: dict[str, str] = {}
    for ours, aliases in ALIASES.items():
        if ours in mapping:
            if mapping[ours] not in frame.columns:
                columns = [c for c in frame.columns if c != ROW]
                raise _fail(f"mapped column {mapping[ours]!r} (--map) not in {columns}", origin)
            chosen[mapping[ours]] = ours
            continue
        for alias in aliases:
            if alias in lower and lower[alias] not in chosen:
                chosen[lower[alias]] = ours
                break
    return frame.select(ROW, *(pl.col(src).alias(dst) for src, dst in chosen.items()))


def _where(frame: pl.DataFrame, mask: pl.Series) -> dict:
    """The line and symbol of the first row where ``mask`` holds, for :func:`_fail`."""
    i = mask.fill_null(False).arg_true()[0]
    symbol = frame["symbol"][i] if "symbol" in frame.columns else None
    return {"row": int(frame[ROW][i]), "symbol": symbol}


def format_hint(value: str, column: pl.Series) -> str:
    """``--date-format`` options that read ``value`` (a day-month date such as 04/01/2021).

    Only formats that read the whole of ``value`` are offered, each with the date
    it gives; those that also read every other value of ``column`` come first.
    """
    value = value.strip()
    found = re.match(
        r"^(\d{1,2})([/.])(\d{1,2})\2(\d{4}|\d{2})(?:([ T])(\d\d:\d\d(:\d\d)?))?$", value
    )
    if found is None:
        return GENERIC_HINT
    sep, year = found.group(2), "%Y" if len(found.group(4)) == 4 else "%y"
    clock = ""
    if found.group(5):
        clock = found.group(5) + ("%H:%M:%S" if found.group(7) else "%H:%M")
    orders = [("%d", "%m"), ("%m", "%d")] if sep == "." else [("%m", "%d"), ("%d", "%m")]
    labels = {("%m", "%d"): "month first, US", ("%d", "%m"): "day first, European"}
    options = []
    for first, second in orders:
        fmt = f"{first}{sep}{second}{sep}{year}{clock}"
        try:
            day = datetime.strptime(value, fmt).date()
        except ValueError:
            continue
        read = column.str.strip_chars().str.to_datetime(fmt, strict=False)
        partial = read.null_count() > column.null_count()
        text = f"'{fmt}' ({labels[first, second]}: {value} is {day.day} {day:%B %Y})"
        options.append((partial, text))
    if not options:
        return GENERIC_HINT
    return "--date-format " + " or ".join(text for _, text in sorted(options, key=lambda o: o[0]))


def _parse_text(
    frame: pl.DataFrame, origin: str, date_format: str | None
) -> tuple[pl.Series, pl.Series | None]:
    """Text stamps as (wall clock in their own zone, UTC instant where a zone is stated)."""
    text = frame["ts"].str.strip_chars()
    if date_format:
        if "%z" in date_format or "%Z" in date_format:
            raise _fail(
                f"--date-format {date_format!r}: zones in a format are not supported; "
                "write ISO 8601 timestamps (2021-01-04T16:00:00-05:00) instead",
                origin,
                column="ts",
            )
        timed = any(d in date_format for d in _TIME_DIRECTIVES)
        wall = (
            text.str.to_datetime(date_format, strict=False)
            if timed
            else text.str.to_date(date_format, strict=False).cast(pl.Datetime("us"))
        )
        bad = wall.is_null() & text.is_not_null()
        if bad.any():
            i = bad.arg_true()[0]
            raise _fail(
                f"cannot read {text[i]!r} with --date-format {date_format!r}",
                origin,
                **_where(frame, bad),
                column="ts",
            )
        return wall, None
    ymd = text.str.extract_groups(_YEAR_FIRST).struct.unnest()
    iso = (
        ymd.get_column("1")
        + "-"
        + ymd.get_column("2").str.zfill(2)
        + "-"
        + ymd.get_column("3").str.zfill(2)
        + ymd.get_column("4")
    )
    raw, text = text, pl.select(pl.when(iso.is_not_null()).then(iso).otherwise(text)).to_series()
    parts = text.str.extract_groups(_ISO).struct.unnest()
    day, clock, zone = parts.get_column("1"), parts.get_column("2"), parts.get_column("3")
    unread = day.is_null() & text.is_not_null()
    if unread.any():
        i = unread.arg_true()[0]
        if text.str.contains(_SLASH)[i]:
            raise _fail(
                f"date {text[i]!r} is ambiguous (which is the day, which the month?); "
                f"say how to read it with {format_hint(text[i], text)}",
                origin,
                **_where(frame, unread),
                column="ts",
            )
        raise _fail(
            f"cannot read {text[i]!r} as a date or timestamp: expected 2021-01-04, "
            "an ISO 8601 timestamp such as 2021-01-04T16:00:00-05:00, or pass --date-format",
            origin,
            **_where(frame, unread),
            column="ts",
        )
    clock = clock.fill_null("00:00").str.replace(r"^(\d\d:\d\d)$", "${1}:00")
    wall = (day + " " + clock).str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False)
    bad = wall.is_null() & text.is_not_null()
    if bad.any():
        i = bad.arg_true()[0]
        raise _fail(
            f"{raw[i]!r} is no valid date or time", origin, **_where(frame, bad), column="ts"
        )
    if zone.is_null().all():
        return wall, None
    sign = pl.when(zone.str.starts_with("-")).then(-1).otherwise(1)
    digits = zone.str.replace_all(r"[^0-9]", "")
    seconds = pl.select(
        pl.when(zone == "Z")
        .then(0)
        .otherwise(
            sign
            * (
                digits.str.slice(0, 2).cast(pl.Int64, strict=False) * 3600
                + digits.str.slice(2, 2).cast(pl.Int64, strict=False) * 60
            )
        )
    ).to_series()
    instant = pl.select(
        pl.when(zone.is_not_null()).then(
            wall.dt.replace_time_zone("UTC") - pl.duration(seconds=seconds)
        )
    ).to_series()
    return wall, instant


def _to_sessions(
    frame: pl.DataFrame,
    origin: str,
    *,
    tz: str | None,
    calendar: Calendar,
    date_format: str | None,
) -> pl.DataFrame:
    """``ts`` as the session date of each bar, by the rule in the module docstring."""
    ts = frame["ts"]
    if ts.dtype == pl.Date:
        return frame
    if ts.dtype == pl.String:
        wall, instant = _parse_text(frame, origin, date_format)
    elif isinstance(ts.dtype, pl.Datetime):
        zone = ts.dtype.time_zone
        wall = ts.dt.replace_time_zone(None) if zone else ts
        instant = ts.dt.convert_time_zone("UTC") if zone else None
    else:
        raise _fail(f"holds {ts.dtype} values; expected dates or timestamps", origin, column="ts")
    midnight = (
        (wall.dt.hour() == 0)
        & (wall.dt.minute() == 0)
        & (wall.dt.second() == 0)
        & (wall.dt.nanosecond() == 0)
    ).fill_null(True)
    days = wall.dt.date()
    timed = ~midnight
    if not timed.any():
        return frame.with_columns(ts=days)
    if instant is None:
        instant = pl.Series("ts", [None] * len(wall), dtype=pl.Datetime("us", "UTC"))
    naive = timed & instant.is_null()
    if naive.any():
        if tz is None:
            raise _fail(
                f"naive timestamp {str(wall[naive.arg_true()[0]])!r} (no time zone): pass the "
                "zone it is in (--tz), e.g. --tz America/New_York",
                origin,
                **_where(frame, naive),
                column="ts",
            )
        placed = wall.dt.replace_time_zone(tz, ambiguous="null", non_existent="null")
        placed = placed.dt.convert_time_zone("UTC")
        bad = naive & placed.is_null()
        if bad.any():
            raise _fail(
                f"{wall[bad.arg_true()[0]]} does not exist or is ambiguous in {tz} "
                "(a daylight-saving change)",
                origin,
                **_where(frame, bad),
                column="ts",
            )
        instant = pl.select(pl.when(naive).then(placed).otherwise(instant)).to_series()
    # the exchange-local calendar date; whether it is a session is checked at ingest
    local = instant.dt.convert_time_zone(calendar.tz).dt.date()
    return frame.with_columns(ts=pl.select(pl.when(timed).then(local).otherwise(days)).to_series())


def read_bars_file(
    path: Path | str,
    *,
    mapping: dict[str, str] | None = None,
    symbol: str | None = None,
    tz: str | None = None,
    market_tz: str | None = None,
    source: str | None = None,
    calendar: Calendar | None = None,
    date_format: str | None = None,
) -> pl.DataFrame:
    """Read one CSV/Parquet file into the ``bars`` contract plus a ``_row`` line number.

    ``ts`` is each bar's session by the rule above (``calendar``: XNYS when
    None); ``tz`` places naive intraday timestamps, ``date_format`` (strptime,
    e.g. ``%m/%d/%Y``) reads non-ISO dates; ``source`` (csv or parquet), when
    given, must match the file's content. ``market_tz`` is accepted for older
    callers and unused: the calendar's sessions place timestamps. Values are not
    yet validated (see :func:`kronos.data.ingest.conform`). A file without an
    adjusted close is taken as already adjusted (``adj_close = close``).
    """
    del market_tz
    path = Path(path)
    origin = str(path)
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise _fail(
                f"unknown time zone {tz!r} (--tz); use an IANA name such as America/New_York",
                origin,
            ) from None
    raw = _read(path, source)
    if raw.height == 0:
        raise _fail("no data rows (the file holds a header only)", origin)
    frame = _rename(raw, mapping or {}, origin)
    if "symbol" not in frame.columns:
        if symbol is None:
            raise _fail("no symbol column; map one or pass --symbol", origin, column="symbol")
        frame = frame.with_columns(symbol=pl.lit(symbol))
    if "ts" not in frame.columns:
        raise _fail("no date column (ts/date/timestamp)", origin, column="ts")
    if "adj_close" not in frame.columns:
        if "close" not in frame.columns:
            raise _fail("neither adj_close nor close present", origin, column="adj_close")
        frame = frame.with_columns(adj_close=pl.col("close"))
    frame = _to_sessions(
        frame, origin, tz=tz, calendar=calendar or get_calendar(), date_format=date_format
    )
    label = source or sniff(path)
    schema = TABLES["bars"].schema
    return frame.with_columns(
        *(
            pl.lit(None, dtype).alias(c)
            for c, dtype in schema.items()
            if c not in frame.columns and c != "source"
        ),
        source=pl.lit(label),
    ).select([*schema, ROW])
