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
