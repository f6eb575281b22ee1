import json

from kronos.bench.ingest import run_ingest_bench


def test_ingest_bench_reports_every_step_and_is_idempotent():
    result = run_ingest_bench(rows=30_000)
    assert result["rows"] >= 30_000
    assert [s["step"] for s in result["steps"]] == [
        "duckdb raw copy",
        "kronos ingest",
        "kronos re-ingest",
    ]
    assert result["steps"][1]["note"] == f"inserted {result['rows']:,}, updated 0"
    assert result["steps"][2]["note"] == "inserted 0, updated 0"
    assert all(s["rows_per_s"] > 0 for s in result["steps"])
    json.dumps(result)  # the --json output is one serializable object


def test_synthetic_backtest_bench_spec_fits_its_first_year_of_sessions():
    """Synthetic bars start 2000-01-03 on XNYS sessions; trading starts a year later."""
    from datetime import date

    from kronos.backtest.spec import parse_spec
    from kronos.bench.backtest import _synthetic
    from kronos.calendar import get_calendar

    sessions = get_calendar().sessions(date(2000, 1, 3), date(2002, 12, 31))
    spec = parse_spec(_synthetic(date(2001, 1, 2), sessions[-1]), "bench synthetic")
    folds = spec.splitter().folds(sessions, date(2001, 1, 2), sessions[-1])
    assert folds[0].test_start == date(2001, 1, 2)
