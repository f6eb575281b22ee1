"""Source-to-store pipelines: each reads one kind of source and ingests it.

The CLI and notebooks call these; every one returns the per-table totals and
reports each committed batch through ``on_batch``. Every row passes the
:class:`~kronos.data.ingest.IngestRules` (built from ``DataSettings`` when the
caller gives none); notes such as a normalised symbol go to ``on_note``.

Several files in one call are ingested one by one, each in its own
transaction: a refused file writes nothing of itself, files before it stay
committed, and the error (:class:`PartialIngest`) says which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from itertools import chain
from pathlib import Path

import polars as pl

from kronos.config import AlpacaDataSettings, DataSettings
from kronos.data.errors import InputError, KronosDataError, Problem
from kronos.data.ingest import IngestRules, UpsertResult, ingest
from kronos.data.schema import TABLES
from kronos.data.sources import bundled, fmp, synthetic, synthetic_reference
from kronos.data.sources.files import read_bars_file
from kronos.data.store import Store
from kronos.errors import KronosError

OnBatch = Callable[[UpsertResult], None] | None
OnNote = Callable[[str], None] | None


class PartialIngest(KronosDataError):
    """A file refused after earlier files of the same call were committed (or with more to read).

    Nothing of ``refused`` was written; ``committed`` lists the files before it
    with what each wrote; ``unread`` the files after it, which were not read.
    """

    def __init__(
        self,
        refused: str,
        cause: Exception,
        committed: list[tuple[str, UpsertResult]],
        unread: list[str],
    ) -> None:
        self.refused, self.cause, self.committed, self.unread = refused, cause, committed, unread
        done = [f"{name} was committed: {_rows(r)}" for name, r in committed]
        if not done:
            done = ["nothing was committed"]
        if unread:
            done.append(f"not read: {', '.join(unread)}")
        if isinstance(cause, InputError):
            shown = cause.problems[: cause.limit]
            more = len(cause.problems) - len(shown)
            detail = "\n".join(f"  {p}" for p in shown)
            detail += f"\n  ... and {more} more" if more > 0 else ""
        else:
            detail = f"  {cause}"
        super().__init__(
            f"{refused} refused, nothing of it was written ({'; '.join(done)}):\n{detail}"
        )

    def __reduce__(self) -> tuple:
        return type(self), (self.refused, self.cause, self.committed, self.unread)


def _rows(result: UpsertResult) -> str:
    """``5 bars``, ``1 bar``, ``3 fmp_news rows``."""
    what = "bar" if result.table == "bars" else f"{result.table} row"
    return f"{result.rows_in:,} {what}{'' if result.rows_in == 1 else 's'}"


def _per_file(paths: list[Path], load: Callable[[Path], UpsertResult]) -> dict[str, UpsertResult]:
    """Run ``load`` on each file in turn; a refusal after the first names what was committed."""
    done: list[tuple[str, UpsertResult]] = []
    for i, path in enumerate(paths):
        try:
            done.append((str(path), load(path)))
        except (KronosError, OSError) as exc:
            if len(paths) == 1:
                raise
            raise PartialIngest(str(path), exc, done, [str(p) for p in paths[i + 1 :]]) from exc
    return _merge(r for _, r in done)


def _rules(rules: IngestRules | None, settings: DataSettings | None = None) -> IngestRules:
    """``rules``, else those of ``settings``, else the default rules (XNYS, default bounds)."""
    if rules is not None:
        return rules
    return IngestRules.from_settings(settings if settings is not None else DataSettings())


def _merge(results: Iterable[UpsertResult]) -> dict[str, UpsertResult]:
    out: dict[str, UpsertResult] = {}
    for r in results:
        prev = out.get(r.table, UpsertResult(r.table, 0, 0, 0))
        out[r.table] = UpsertResult(
            r.table, prev.rows_in + r.rows_in, prev.inserted + r.inserted, prev.updated + r.updated
        )
    return out


def _normalize_fmp(
    store: Store,
    kind: str,
    records: list[dict],
    *,
    origin: str,
    source: str,
    known_at: datetime | None = None,
) -> tuple[str, pl.DataFrame]:
    table, frame = fmp.normalize(kind, records, origin=origin, source=source, known_at=known_at)
    if kind in ("key-metrics", "ratios"):
        filings = store.con.sql(
            "SELECT symbol, period_end, min(available_at) AS filed_at "
            "FROM fmp_income_statement GROUP BY ALL"
        ).pl()
        frame = fmp.align_to_filings(frame, filings)
    return table, frame


def load_bundled(
    store: Store,
    on_batch: OnBatch = None,
    *,
    rules: IngestRules | None = None,
    on_note: OnNote = None,
) -> dict[str, UpsertResult]:
    """Ingest the real prices shipped with skfolio and backtesting.py, and their profiles."""
    rules = _rules(rules)
    checks = {"rules": rules, "on_note": on_note}
    results = [
        ingest(
            store,
            "dim_company_profile",
            [bundled.bundled_profiles()],
            source="bundled",
            origin="kronos/data/resources/profiles.csv",
            on_batch=on_batch,
            **checks,
        )
    ]
    for label, frame in bundled.bundled_bars().items():
        results.append(
            ingest(store, "bars", [frame], source=label, origin=label, on_batch=on_batch, **checks)
        )
    return _merge(results)


def load_bar_files(
    store: Store,
    paths: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    symbol: str | None = None,
    tz: str | None = None,
    settings: DataSettings | None = None,
    on_batch: OnBatch = None,
    source: str | None = None,
    date_format: str | None = None,
    rules: IngestRules | None = None,
    on_note: OnNote = None,
) -> dict[str, UpsertResult]:
    """Ingest CSV/Parquet bar files, one file per atomic batch.

    ``source`` (csv or parquet), when given, must match each file's content;
    ``tz`` places naive intraday timestamps and ``date_format`` reads non-ISO
    dates (see :mod:`kronos.data.sources.files` for which session a bar gets).
    """
    rules = _rules(rules, settings)

    def load(path: Path) -> UpsertResult:
        frame = read_bars_file(
            path,
            mapping=mapping,
            symbol=symbol,
            tz=tz,
            source=source,
            calendar=rules.calendar,
            date_format=date_format,
        )
        return ingest(
            store,
            "bars",
            [frame],
            source=frame["source"][0],
            origin=str(path),
            on_batch=on_batch,
            rules=rules,
            on_note=on_note,
        )

    return _per_file(paths, load)


def load_fmp_files(
    store: Store,
    paths: list[Path],
    *,
    kind: str | None = None,
    known_at: datetime | None = None,
    on_batch: OnBatch = None,
    rules: IngestRules | None = None,
    on_note: OnNote = None,
) -> dict[str, UpsertResult]:
    """Ingest saved FMP JSON payload files, one file per atomic batch."""
    rules = _rules(rules)

    def load(path: Path) -> UpsertResult:
        kind_, records = fmp.read_fmp_records(path, kind=kind)
        table, frame = _normalize_fmp(
            store, kind_, records, origin=str(path), source="fmp", known_at=known_at
        )
        return ingest(
            store,
            table,
            [frame],
            source="fmp",
            origin=str(path),
            on_batch=on_batch,
            rules=rules,
            on_note=on_note,
        )

    return _per_file(paths, load)


def load_synthetic(
    store: Store,
    *,
    n_symbols: int,
    years: float,
    seed: int,
    start: date = date(2000, 1, 3),
    reference: bool = True,
    batch_symbols: int = 250,
    on_batch: OnBatch = None,
    rules: IngestRules | None = None,
    on_note: OnNote = None,
) -> dict[str, UpsertResult]:
    """Ingest a synthetic universe (labelled ``source='synthetic'``) and its reference data.

    Its days are the sessions of the rules' calendar (XNYS unless told otherwise).
    A history that would run past the last session closed at the ingest time
    (``rules.now``) is refused before anything is written: synthetic data is never
    generated into the future. Reference rows the generator dates after the
    ingest time (filings of the last quarters) are left out, with a note, as a
    real source would not have them yet.
    """
    rules = _rules(rules)
    checks = {"rules": rules, "on_note": on_note}
    symbols = synthetic.synthetic_symbols(n_symbols)
    origin = f"synthetic(n_symbols={n_symbols}, years={years}, seed={seed})"
    batches = iter(
        synthetic.iter_synthetic_bars(
            n_symbols,
            years,
            seed,
            start=start,
            batch_symbols=batch_symbols,
            calendar=rules.calendar,
        )
    )
    first = next(batches, None)
    if first is not None and first.height:
        _refuse_future_history(first["ts"].max(), start, years, origin, rules)
    results = [
        ingest(
            store,
            "dim_company_profile",
            [synthetic.synthetic_profiles(symbols, seed)],
            source="synthetic",
            origin=origin,
            on_batch=on_batch,
            **checks,
        ),
        ingest(
            store,
            "bars",
            chain([] if first is None else [first], batches),
            source="synthetic",
            origin=origin,
            on_batch=on_batch,
            **checks,
        ),
    ]
    if reference:
        last = store.con.execute(
            "SELECT max(ts) FROM bars WHERE symbol IN (SELECT unnest(?::VARCHAR[]))", [symbols]
        ).fetchall()[0][0]
        ref = synthetic_reference.synthetic_reference(
            symbols, start, last, seed, calendar=rules.calendar
        )
        for kind, records in ref.payloads.items():
            # one kind at a time: key-metrics take the filing times of the
            # income statements committed just before them
            label = f"{origin}:{kind}"
            table, frame = _normalize_fmp(store, kind, records, origin=label, source="synthetic")
            results.append(
                ingest(
                    store,
                    table,
                    [_known_by_now(frame, table, rules, on_note)],
                    source="synthetic",
                    origin=label,
                    on_batch=on_batch,
                    **checks,
                )
            )
        results.append(
            ingest(
                store,
                "social_features",
                [_known_by_now(ref.social, "social_features", rules, on_note)],
                source="synthetic",
                origin=f"{origin}:social",
                on_batch=on_batch,
                **checks,
            )
        )
    return _merge(results)


def _refuse_future_history(
    last: date, start: date, years: float, origin: str, rules: IngestRules
) -> None:
    closed = rules.last_session
    if closed is None or last > closed:
        raise InputError(
            [
                Problem(
                    f"{years:g} years of sessions from {start} run to {last}, after {closed}, "
                    f"the last session closed at the ingest time {rules.now:%Y-%m-%d %H:%M} UTC: "
                    "synthetic data is never generated into the future; lower --years or "
                    "give an earlier --start",
                    file=origin,
                )
            ]
        )


def _known_by_now(
    frame: pl.DataFrame, table: str, rules: IngestRules, on_note: OnNote
) -> pl.DataFrame:
    """``frame`` without rows that become known after the ingest time."""
    if "available_at" not in TABLES[table].schema:
        return frame
    kept = frame.filter(~(pl.col("available_at") > rules.now).fill_null(False))
    if on_note is not None and kept.height < frame.height:
        on_note(
            f"synthetic {table}: {frame.height - kept.height} of {frame.height} rows become "
            f"known after the ingest time {rules.now:%Y-%m-%d %H:%M} UTC and were left out"
        )
    return kept


def load_alpaca(
    store: Store,
    symbols: list[str],
    start: date,
    end: date | None = None,
    on_batch: OnBatch = None,
    *,
    alpaca: AlpacaDataSettings,
    rules: IngestRules | None = None,
    on_note: OnNote = None,
) -> dict[str, UpsertResult]:
    """Ingest daily bars (raw and adjusted) through alpaca-py with the ``alpaca`` settings.

    Bars end at ``end`` or at the last session closed at the ingest time,
    whichever is earlier (a bar of a session still open is not known yet); a
    given ``end`` moved back that way is reported through ``on_note``.
    """
    from kronos.data.sources.alpaca import fetch_alpaca_bars, load_alpaca_settings

    rules = _rules(rules)
    wanted = [s.strip().upper() for s in symbols if s.strip()]
    origin = f"alpaca({','.join(wanted)})"
    if on_note is not None:
        for raw in symbols:
            if raw.strip() and raw != raw.strip().upper():
                on_note(f"symbol {raw!r} stored as {raw.strip().upper()!r}")
    closed = rules.last_session
    if closed is None or start > closed:
        raise InputError(
            [
                Problem(
                    f"--start {start} is after {closed}, the last session closed at the ingest "
                    f"time {rules.now:%Y-%m-%d %H:%M} UTC: no bar of it is known yet",
                    file=origin,
                )
            ]
        )
    if end is not None and end > closed:
        dropped = rules.calendar.sessions(closed + timedelta(days=1), end)
        if dropped and on_note is not None:
            on_note(
                f"--end {end}: bars end at {closed}, the last session closed at the ingest "
                f"time; {dropped[0]} closes at "
                f"{rules.calendar.session_close(dropped[0]):%Y-%m-%d %H:%M} UTC"
            )
    end = closed if end is None else min(end, closed)
    frame = fetch_alpaca_bars(wanted, start, end, load_alpaca_settings(alpaca))
    return _merge(
        [
            ingest(
                store,
                "bars",
                [frame],
                source="alpaca",
                origin=origin,
                on_batch=on_batch,
                rules=rules,
                on_note=on_note,
            )
        ]
    )


def store_info(store: Store) -> dict:
    """Symbols, spans and row counts: what ``kronos data info`` shows."""
    sources = store.con.sql(
        "SELECT source, count(DISTINCT symbol) AS n_symbols, "
        "string_agg(DISTINCT symbol, ', ' ORDER BY symbol) AS symbols, "
        "min(ts) AS first, max(ts) AS last, count(*) AS rows "
        "FROM bars GROUP BY source ORDER BY source"
    ).pl()
    return {
        "db": str(store.path),
        "schema_version": store.version,
        "bars_by_source": [
            {**r, "first": str(r["first"]), "last": str(r["last"])}
            for r in sources.iter_rows(named=True)
        ],
        "rows": store.row_counts(),
    }
