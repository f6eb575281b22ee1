"""Source-to-store pipelines: each reads one kind of source and ingests it.

The CLI and notebooks call these; every one returns the per-table totals and
reports each committed batch through ``on_batch``. Every row passes the
:class:`~kronos.data.ingest.IngestRules` (built from ``DataSettings`` when the
caller gives none); notes such as a normalised symbol go to ``on_note``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime
from pathlib import Path

import polars as pl

from kronos.config import DataSettings
from kronos.data.ingest import IngestRules, UpsertResult, ingest
from kronos.data.sources import bundled, fmp, synthetic
from kronos.data.sources.files import read_bars_file
from kronos.data.store import Store

OnBatch = Callable[[UpsertResult], None] | None
OnNote = Callable[[str], None] | None


def _rules(rules: IngestRules | None, settings: DataSettings | None = None) -> IngestRules:
    return rules if rules is not None else IngestRules.from_settings(settings)


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
    results = []
    for path in paths:
        frame = read_bars_file(
            path,
            mapping=mapping,
            symbol=symbol,
            tz=tz,
            source=source,
            calendar=rules.calendar,
            date_format=date_format,
        )
        label = frame["source"][0]
        results.append(
            ingest(
                store,
                "bars",
                [frame],
                source=label,
                origin=str(path),
                on_batch=on_batch,
                rules=rules,
                on_note=on_note,
            )
        )
    return _merge(results)


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
    results = []
    for path in paths:
        kind_, records = fmp.read_fmp_records(path, kind=kind)
        table, frame = _normalize_fmp(
            store, kind_, records, origin=str(path), source="fmp", known_at=known_at
        )
        results.append(
            ingest(
                store,
                table,
                [frame],
                source="fmp",
                origin=str(path),
                on_batch=on_batch,
                rules=rules,
                on_note=on_note,
            )
        )
    return _merge(results)


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
    """
    rules = _rules(rules)
    checks = {"rules": rules, "on_note": on_note}
    symbols = synthetic.synthetic_symbols(n_symbols)
    origin = f"synthetic(n_symbols={n_symbols}, years={years}, seed={seed})"
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
            synthetic.iter_synthetic_bars(
                n_symbols,
                years,
                seed,
                start=start,
                batch_symbols=batch_symbols,
                calendar=rules.calendar,
            ),
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
        ref = synthetic.synthetic_reference(symbols, start, last, seed, calendar=rules.calendar)
        for kind, records in ref.payloads.items():
            table, frame = _normalize_fmp(
                store, kind, records, origin=f"{origin}:{kind}", source="synthetic"
            )
            results.append(
                ingest(
                    store,
                    table,
                    [frame],
                    source="synthetic",
                    origin=f"{origin}:{kind}",
                    on_batch=on_batch,
                    **checks,
                )
            )
        results.append(
            ingest(
                store,
                "social_features",
                [ref.social],
                source="synthetic",
                origin=f"{origin}:social",
                on_batch=on_batch,
                **checks,
            )
        )
    return _merge(results)


def load_alpaca(
    store: Store,
    symbols: list[str],
    start: date,
    end: date,
    on_batch: OnBatch = None,
    *,
    rules: IngestRules | None = None,
    on_note: OnNote = None,
) -> dict[str, UpsertResult]:
    """Ingest daily bars (raw and adjusted) through alpaca-py; keys from the environment."""
    from kronos.data.sources.alpaca import fetch_alpaca_bars, load_alpaca_settings

    wanted = [s.strip().upper() for s in symbols if s.strip()]
    if on_note is not None:
        for raw in symbols:
            if raw.strip() and raw != raw.strip().upper():
                on_note(f"symbol {raw!r} stored as {raw.strip().upper()!r}")
    frame = fetch_alpaca_bars(wanted, start, end, load_alpaca_settings())
    return _merge(
        [
            ingest(
                store,
                "bars",
                [frame],
                source="alpaca",
                origin=f"alpaca({','.join(wanted)})",
                on_batch=on_batch,
                rules=_rules(rules),
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
