"""``kronos bench serve`` end to end: a trained artifact, the real service, the reference.

Small (60 requests, 5 at a time) so it stays quick; the figures themselves are
not asserted against the targets (the machine running the suite is busy), only
that both endpoints were measured in this run and every request was answered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

try:
    from kronos.bench.serve import client_name

    CLIENT = client_name()
except Exception as exc:  # no async HTTP client installed: say which error
    pytest.skip(f"kronos bench serve cannot run here: {exc}", allow_module_level=True)

KEYS = {"rps", "p50_ms", "p95_ms", "p99_ms", "requests", "errors", "started_at", "run"}


def test_bench_serve_measures_the_service_and_the_reference_in_one_run(
    bundled_db: Path, tmp_path: Path
):
    db = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, db)
    args = ["bench", "serve", "--requests", "60", "--concurrency", "5", "--json"]
    args += ["--db", str(db), "--model-dir", str(tmp_path / "no-models")]
    got = subprocess.run(
        [sys.executable, "-m", "kronos", *args],
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "KRONOS_MLRUNS_DIR": str(tmp_path / "mlruns")},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    body = json.loads(got.stdout)
    assert body["artifact_trained_for_run"] is True and body["model"] == "ewma"
    assert "trained for this run" in got.stderr
    assert not (tmp_path / "no-models").exists()  # trained into a temporary MODEL_DIR
    assert body["requests"] == 60 and body["concurrency"] == 5 and body["asof"] == "2022-12-28"
    start, end = (datetime.fromisoformat(body[k]) for k in ("started_at", "finished_at"))
    for name in ("service", "reference"):
        run = body[name]
        assert set(run) >= KEYS, (name, sorted(run))
        assert run["run"] == body["run"] and start < datetime.fromisoformat(run["started_at"]) < end
        assert run["requests"] == 60 and run["errors"] == {}, run
        assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] and run["rps"] > 0
    # the reference after the service, on the service's own answer
    assert body["service"]["started_at"] < body["reference"]["started_at"]
    assert body["payload_bytes"] > 500
    # 10 distinct queries: each computed once (the sample, then 9), the rest from memory
    assert body["service"]["cache"]["computed"] == 10
    assert body["service"]["cache"]["hits"] == 60 + 5 + 1 - 10
    assert set(body["target"]) == {"p99_ms", "rps"} and isinstance(body["target_met"], bool)
    assert body["client"] == CLIENT
