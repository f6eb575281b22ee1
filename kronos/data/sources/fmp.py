"""FMP JSON payloads (as saved from its API) into the point-in-time tables.

Each record keeps its whole payload as JSON beside typed key columns. When a
row became known (``available_at``) is taken, most exact first, from:

- statements: ``acceptedDate`` (US Eastern), else the end of ``filingDate``
  (or the v3 spelling ``fillingDate``), else the latest SEC deadline: period end
  + 45 days for Q1-Q3 (10-Q), + 90 days for Q4 and fiscal years (10-K);
- key-metrics and ratios (FMP gives no filing time): the filing time of the
  same period's income statement when the store has it (see
  :func:`align_to_filings`), else the same deadline;
- analyst estimates and profiles are snapshots with no date of their own: the
  record's ``knownAt`` (a kronos extension) or the ``known_at`` the caller
  gives (when the file was downloaded); with neither, they are refused;
- ratings: the end of the rating's ``date``; news: ``publishedDate`` (US Eastern).

An error payload saved in place of data (``{"Error Message": "Invalid API
KEY..."}``, also wrapped in a list) is refused with FMP's own message, as is a
file with no records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

from kronos.data.errors import InputError, Problem
from kronos.data.ingest import ROW
from kronos.data.schema import TABLES
from kronos.data.sources.files import sniff, wrong_source

EASTERN = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")

KINDS: dict[str, str] = {
    "income-statement": "fmp_income_statement",
    "balance-sheet-statement": "fmp_balance_sheet",
    "cash-flow-statement": "fmp_cash_flow",
    "key-metrics": "fmp_key_metrics",
    "ratios": "fmp_ratios",
    "analyst-estimates": "fmp_analyst_estimates",
    "rating": "fmp_rating",
    "news": "fmp_news",
    "profile": "dim_company_profile",
}
_STATEMENTS = ("income-statement", "balance-sheet-statement", "cash-flow-statement")


class _Record:
    """Field access that names the record and field in every error."""

    def __init__(self, rec: dict, index: int, origin: str) -> None:
        if not isinstance(rec, dict):
            raise InputError([Problem(f"record {index} is not a JSON object", file=origin)])
        self.rec, self.index, self.origin = rec, index, origin

    def fail(self, field: str, msg: str) -> InputError:
        return InputError(
            [
                Problem(
                    f"record {self.index}: {msg}",
                    file=self.origin,
                    column=field,
                    symbol=self.rec.get("symbol"),
                )
            ]
        )

    def get(self, *fields: str, required: bool = False):
        for f in fields:
            if self.rec.get(f) not in (None, ""):
                return self.rec[f]
        if required:
            raise self.fail(fields[0], "missing field")
        return None

    def day(self, *fields: str, required: bool = False) -> date | None:
        value = self.get(*fields, required=required)
        if value is None:
            return None
        try:
            return date.fromisoformat(str(value)[:10])
        except ValueError:
            raise self.fail(fields[0], f"cannot read {value!r} as a date") from None

    def instant(self, *fields: str, zone: ZoneInfo = EASTERN) -> datetime | None:
        """A timestamp field; naive values are in ``zone`` (FMP uses US Eastern)."""
        value = self.get(*fields)
        if value is None:
            return None
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise self.fail(fields[0], f"cannot read {value!r} as a timestamp") from None
        return (ts if ts.tzinfo else ts.replace(tzinfo=zone)).astimezone(UTC)


def _end_of_day(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59), EASTERN).astimezone(UTC)


def _deadline(period_end: date, period: str) -> datetime:
    return _end_of_day(period_end + timedelta(days=90 if period in ("FY", "Q4") else 45))


def _snapshot_time(r: _Record, known_at: datetime | None) -> datetime:
    ts = r.instant("knownAt", zone=UTC) or known_at
    if ts is None:
        raise r.fail("knownAt", "snapshot without a time: give known_at (--known-at)")
    return ts


def _statement(r: _Record, kind: str, known_at: datetime | None) -> dict:
    period_end = r.day("date", required=True)
    period = str(r.get("period", required=True))
    filing = r.day("filingDate", "fillingDate")
    accepted = r.instant("acceptedDate")
    available = accepted or (_end_of_day(filing) if filing else _deadline(period_end, period))
    year = r.get("fiscalYear", "calendarYear")
    return {
        "symbol": r.get("symbol", required=True),
        "period_end": period_end,
        "period": period,
        "fiscal_year": int(year) if year is not None else None,
        "reported_currency": r.get("reportedCurrency"),
        "filing_date": filing,
        "available_at": available,
    }


def _estimate(r: _Record, kind: str, known_at: datetime | None) -> dict:
    return {
        "symbol": r.get("symbol", required=True),
        "period_end": r.day("date", required=True),
        "period": str(r.get("period") or "annual"),
        "available_at": _snapshot_time(r, known_at),
        "eps_avg": r.get("epsAvg", "estimatedEpsAvg"),
        "revenue_avg": r.get("revenueAvg", "estimatedRevenueAvg"),
        "num_analysts_eps": r.get("numAnalystsEps", "numberAnalystsEstimatedEps"),
    }


def _rating(r: _Record, kind: str, known_at: datetime | None) -> dict:
    day = r.day("date", required=True)
    return {
        "symbol": r.get("symbol", required=True),
        "rating_date": day,
        "available_at": _end_of_day(day),
        "rating": r.get("rating"),
        "rating_score": r.get("ratingScore", "overallScore"),
        "recommendation": r.get("ratingRecommendation"),
    }


def _news(r: _Record, kind: str, known_at: datetime | None) -> dict:
    symbol = r.get("symbol", required=True)
    published = r.instant("publishedDate")
    if published is None:
        raise r.fail("publishedDate", "missing field")
    title, url = str(r.get("title", required=True)), r.get("url")
    digest = hashlib.md5(f"{symbol}|{published.isoformat()}|{title}|{url}".encode()).hexdigest()
    return {
        "news_id": digest,
        "symbol": symbol,
        "published_at": published,
        "available_at": published,
        "title": title,
        "site": r.get("site", "publisher"),
        "url": url,
        "text": r.get("text"),
    }


def _profile(r: _Record, kind: str, known_at: datetime | None) -> dict:
    etf = r.get("isEtf")
    return {
        "symbol": r.get("symbol", required=True),
        "available_at": _snapshot_time(r, known_at),
        "name": r.get("companyName"),
        "asset_type": "etf" if etf else "equity",
        "sector": r.get("sector"),
        "industry": r.get("industry"),
        "exchange": r.get("exchangeShortName", "exchange"),
        "currency": r.get("currency"),
        "market_cap": r.get("marketCap", "mktCap"),
    }


_PARSERS: dict[str, Callable[[_Record, str, datetime | None], dict]] = {
    **{k: _statement for k in (*_STATEMENTS, "key-metrics", "ratios")},
    "analyst-estimates": _estimate,
    "rating": _rating,
    "news": _news,
    "profile": _profile,
}


def normalize(
    kind: str,
    records: list[dict],
    *,
    origin: str,
    source: str = "fmp",
    known_at: datetime | None = None,
) -> tuple[str, pl.DataFrame]:
    """Turn FMP records of one endpoint into ``(table, frame)`` in that table's contract.

    ``_row`` holds each record's 1-based index in the file, for error messages.
    """
    if kind not in KINDS:
        raise InputError(
            [Problem(f"unknown FMP kind {kind!r} (--kind); one of {sorted(KINDS)}", file=origin)]
        )
    if known_at is not None and known_at.tzinfo is None:
        raise ValueError("known_at must be time-zone aware")
    table = KINDS[kind]
    parse = _PARSERS[kind]
    rows = []
    for i, rec in enumerate(records, start=1):
        r = _Record(rec, i, origin)
        row = parse(r, kind, known_at)
        if "payload" in TABLES[table].schema:
            row["payload"] = json.dumps(rec, sort_keys=True, default=str)
        row["source"] = source
        row[ROW] = i
        rows.append(row)
    schema = {**TABLES[table].schema, ROW: pl.Int64()}
    columns = []
    for col, dtype in schema.items():
        values = [row.get(col) for row in rows]
        if dtype.is_numeric() and col != ROW:
            # as text, so conform() can name a value that is not a number
            values = [None if v is None else str(v) for v in values]
            dtype = pl.String()
        columns.append(pl.Series(col, values, dtype=dtype))
    return table, pl.DataFrame(columns)


def align_to_filings(frame: pl.DataFrame, filings: pl.DataFrame) -> pl.DataFrame:
    """Date key-metrics/ratios rows by their period's filing where it is known.

    ``filings`` holds ``symbol, period_end, filed_at`` (the first time the
    period's income statement became known); rows without one keep their
    deadline-based ``available_at``.
    """
    joined = frame.join(filings, on=["symbol", "period_end"], how="left")
    return joined.with_columns(available_at=pl.coalesce("filed_at", "available_at")).select(
        frame.columns
    )


def infer_kind(path: Path) -> str:
    """The FMP endpoint a file holds, from its name (e.g. ``AAPL_income-statement.json``)."""
    name = path.name.lower()
    for kind in sorted(KINDS, key=len, reverse=True):
        if kind in name:
            return kind
    if "stock_news" in name or "stock-news" in name:
        return "news"
    raise InputError(
        [
            Problem(
                f"cannot tell the FMP endpoint from the file name; pass --kind (one of "
                f"{sorted(KINDS)})",
                file=str(path),
            )
        ]
    )


def read_fmp_records(path: Path | str, *, kind: str | None = None) -> tuple[str, list[dict]]:
    """Read one saved FMP JSON file (a list of records, or one record) and its kind."""
    path = Path(path)
    if not path.is_file():
        raise InputError([Problem("no such file", file=str(path))])
    refusal = wrong_source(sniff(path), "fmp")
    if refusal:
        raise InputError([Problem(refusal, file=str(path))])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(
            [
                Problem(
                    f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                    file=str(path),
                )
            ]
        ) from exc
    error = _error_message(data)
    if error is not None:
        raise InputError([Problem(f"FMP returned an error: {error}", file=str(path))])
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputError([Problem("expected a JSON list of records", file=str(path))])
    kind = kind or infer_kind(path)
    if not data:
        raise InputError([Problem("no records (an empty JSON list)", file=str(path))])
    return kind, data


def _error_message(data: object) -> str | None:
    """The message of an FMP error payload, else None.

    FMP answers an error with ``{"Error Message": ...}`` (bad or missing key,
    limit reached), ``{"error": ...}`` or a lone ``{"message": ...}``, sometimes
    wrapped in a list (``[{"Error Message": ...}]``).
    """
    if isinstance(data, list) and data and all(_error_message(d) for d in data):
        return _error_message(data[0])
    if not isinstance(data, dict):
        return None
    for key in ("Error Message", "error", "Error", "errorMessage"):
        if isinstance(data.get(key), str):
            return " ".join(data[key].split())
    if set(data) <= {"message", "status", "code"} and isinstance(data.get("message"), str):
        return " ".join(data["message"].split())
    return None
