"""The forecast service: every endpoint in process, refusals, point in time, a real server.

Models: the EWMA baseline (its fallback "fit" only fixes lambda), so a service
starts in about a second on the bundled store.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from kronos.calendar import get_calendar
from kronos.config import CalibrationSettings, DataSettings
from kronos.data.store import Store
from kronos.features.returns import returns_panel
from kronos.forecasting import forecast_and_store
from kronos.models.artifacts import promote, write_artifact
from kronos.models.base import ForecastError
from kronos.models.baselines import EwmaNormal
from kronos.nightly import nightly_calibrate
from kronos.serve import ServiceConfig, ServiceError, create_app
from kronos.serve_request import check_request

CALIBRATED_NIGHT = date(2020, 3, 4)
ROW_KEYS = ["symbol", "step", "target_ts", "p05", "p50", "p95"]


@pytest.fixture(scope="module")
def cal_db(bundled_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled store with ewma calibration state for the nights of March 2-4, 2020."""
    path = tmp_path_factory.mktemp("serve") / "k.duckdb"
    shutil.copy(bundled_db, path)
    with Store.open(path) as store:
        panel = returns_panel(
            store, CALIBRATED_NIGHT, ["AAPL", "MSFT", "KO", "XOM"], settings=DataSettings()
        )
        fit = EwmaNormal().fit(panel)
        nights = nightly_calibrate(
            store,
            "ewma",
            CALIBRATED_NIGHT,
            panel,
            lambda: fit,
            since=date(2020, 3, 2),
            settings=CalibrationSettings(),
            data=DataSettings(),
        )
    assert [n.day for n in nights][-1] == CALIBRATED_NIGHT
    return path


def _config(db: Path, tmp: Path, **kw) -> ServiceConfig:
    """The ewma fallback, fitted through the store's last bar: past origins need look-ahead."""
    return ServiceConfig(
        db=db, model="ewma", model_dir=tmp / "no-models", **{"allow_lookahead": True, **kw}
    )


def _metrics(through: date) -> dict:
    """METRICS.json of an artifact whose training and validation data ended ``through``."""
    span = {"train_end": str(through - timedelta(days=365)), "valid_end": str(through)}
    return {"valid_crps": 1.0, "data_range": span}


@pytest.fixture(scope="module")
def client(cal_db: Path) -> TestClient:
    """Calibration enabled; no artifact, so the ewma fallback (look-ahead allowed)."""
    config = _config(cal_db, cal_db.parent, max_symbols=30)
    return TestClient(create_app(config, CalibrationSettings(), DataSettings()))


@pytest.fixture(scope="module")
def raw_client(cal_db: Path) -> TestClient:
    """Calibration disabled."""
    settings = CalibrationSettings(calibration_enabled=False)
    return TestClient(create_app(_config(cal_db, cal_db.parent), settings, DataSettings()))


def _reference(db: Path, symbols: list[str], asof: date, tmp: Path):
    """What ``kronos forecast --no-write`` computes for the same request."""
    with Store.open(db, read_only=True) as store:
        panel = returns_panel(store, asof, symbols, settings=DataSettings())
        return forecast_and_store(
            store,
            "ewma",
            panel,
            tmp / "no-models",
            symbols=symbols,
            settings=CalibrationSettings(),
            data=DataSettings(),
            write=False,
        )


def _rows(frame) -> list[dict]:
    return [
        {**r, "target_ts": r["target_ts"].isoformat()}
        for r in frame.select(ROW_KEYS).iter_rows(named=True)
    ]


# ---------------------------------------------------------------- endpoints


def test_health_names_model_calibration_night_and_store(client: TestClient, cal_db: Path):
    body = client.get("/health").json()
    read_at = datetime.fromisoformat(body["store"].pop("read_at"))
    assert abs(datetime.now(UTC) - read_at) < timedelta(hours=1)
    assert body["status"] == "ok" and body["model"] == "ewma"
    assert body["source"] == "fallback" and "fitted one on the fly" in body["message"]
    assert body["fitted_through"] == "2022-12-28"
    assert body["calibration"] == {"enabled": True, "night": "2020-03-04"}
    assert body["store"] == {
        "path": str(cal_db),
        "first_bar": "1990-01-02",
        "last_bar": "2022-12-28",
        "symbols": 27,
    }


def test_version_names_package_model_and_commit(client: TestClient):
    body = client.get("/version").json()
    assert body["kronos"] == version("kronos")
    assert (
        body["model"] == "ewma" and body["model_version"] == client.get("/health").json()["version"]
    )
    assert body["source"] == "fallback" and body["artifact"] is None
    commit = body["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)


def test_openapi_documents_every_endpoint(client: TestClient):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/health", "/forecast", "/version"}
    assert set(spec["paths"]["/forecast"]) == {"get", "post"}
    assert {"ForecastRequest", "ForecastResponse", "HealthResponse"} <= set(
        spec["components"]["schemas"]
    )
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_forecast_is_calibrated_and_equals_the_cli_path(client: TestClient, cal_db: Path):
    r = client.get("/forecast", params={"symbols": "KO,AAPL", "asof": "2020-03-04"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["asof"] == body["origin"] == "2020-03-04"
    assert body["model"] == "ewma" and body["source"] == "fallback"
    assert body["calibrated"] is True and body["calibration_night"] == "2020-03-04"
    ref = _reference(cal_db, ["KO", "AAPL"], CALIBRATED_NIGHT, cal_db.parent)
    assert ref.calibration_night == CALIBRATED_NIGHT and ref.calibrated is not None
    assert body["version"] == ref.raw["version"][0]
    # same code path as forecast_and_store: equal to the last bit, in request order
    assert body["forecasts"] == _rows(
        ref.calibrated.sort("symbol", "step", descending=[True, False])
    )
    assert [(f["symbol"], f["step"]) for f in body["forecasts"]] == [
        (s, k) for s in ("KO", "AAPL") for k in range(1, 6)
    ]
    assert body["forecasts"][0]["target_ts"] == "2020-03-05"
    assert body["forecasts"][4]["target_ts"] == "2020-03-11"  # five weekdays on
    assert body["forecasts"] != _rows(ref.raw.sort("symbol", "step", descending=[True, False]))


def test_post_equals_get_and_symbols_may_repeat(client: TestClient):
    got = client.get("/forecast", params=[("symbols", "AAPL"), ("symbols", "KO,AAPL")])
    posted = client.post("/forecast", json={"symbols": ["AAPL", "KO", " aapl "]})  # as stored
    assert got.status_code == posted.status_code == 200
    assert got.json() == posted.json()
    body = got.json()
    assert body["asof"] == body["origin"] == "2022-12-28"  # default: the last bar
    assert len(body["forecasts"]) == 10


def test_raw_request_and_disabled_calibration_give_raw_forecasts(
    client: TestClient, raw_client: TestClient, cal_db: Path
):
    ref = _reference(cal_db, ["AAPL"], CALIBRATED_NIGHT, cal_db.parent)
    asked = client.post("/forecast", json={"symbols": ["AAPL"], "asof": "2020-03-04", "raw": True})
    disabled = raw_client.get("/forecast", params={"symbols": "AAPL", "asof": "2020-03-04"})
    for body in (asked.json(), disabled.json()):
        assert body["calibrated"] is False and body["calibration_night"] is None
        assert body["forecasts"] == _rows(ref.raw)
    assert raw_client.get("/health").json()["calibration"] == {"enabled": False, "night": None}


def test_before_the_first_calibration_night_forecasts_are_raw(client: TestClient, cal_db: Path):
    body = client.get("/forecast", params={"symbols": "XOM", "asof": "2020-02-28"}).json()
    assert body["calibrated"] is False and body["calibration_night"] is None
    assert body["forecasts"] == _rows(
        _reference(cal_db, ["XOM"], date(2020, 2, 28), cal_db.parent).raw
    )


def test_asof_on_a_weekend_forecasts_from_the_friday(client: TestClient):
    body = client.get("/forecast", params={"symbols": "KO", "asof": "2020-03-07"}).json()
    assert body["asof"] == "2020-03-07" and body["origin"] == "2020-03-06"
    assert body["forecasts"][0]["target_ts"] == "2020-03-09"


def test_a_promoted_artifact_is_served_from_its_directory(cal_db: Path, tmp_path: Path):
    with Store.open(cal_db, read_only=True) as store:
        fitted = EwmaNormal(lam=0.9).fit(
            returns_panel(store, CALIBRATED_NIGHT, ["AAPL"], settings=DataSettings())
        )
    run_dir = write_artifact(fitted, tmp_path / "models", _metrics(CALIBRATED_NIGHT))
    promote(run_dir)
    config = ServiceConfig(db=cal_db, model="ewma", model_dir=tmp_path / "models")
    client = TestClient(create_app(config, CalibrationSettings(), DataSettings()))
    health, about = client.get("/health").json(), client.get("/version").json()
    assert health["source"] == about["source"] == "artifact"
    assert health["fitted_through"] == "2020-03-04" and health["lookahead_allowed"] is False
    assert about["artifact"] == str(run_dir) and about["model_version"] == fitted.version
    body = client.get("/forecast", params={"symbols": "AAPL", "asof": "2020-03-04"}).json()
    assert body["source"] == "artifact" and body["version"] == fitted.version
    assert body["fitted_through"] == "2020-03-04" and body["point_in_time"] is True


def test_a_model_without_artifact_or_fallback_refuses_to_start(cal_db: Path, tmp_path: Path):
    config = ServiceConfig(db=cal_db, model="tft", model_dir=tmp_path)
    with pytest.raises(ForecastError, match="no promoted tft artifact"):
        create_app(config, CalibrationSettings(), DataSettings())


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("method", "params", "status", "words"),
    [
        ("get", {"symbols": "FOO"}, 404, ["FOO"]),
        ("get", {"symbols": "AAPL,AAPX,ZZZZ"}, 404, ["AAPX (did you mean AAPL?)", "ZZZZ"]),
        ("post", {"symbols": ["KO", "NOPE"]}, 404, ["NOPE"]),
        ("get", {"symbols": "aaplx"}, 404, ["AAPLX (did you mean AAPL?)"]),
        (
            "get",
            {"symbols": "AAPL", "asof": "2023-01-03"},
            422,
            ["after the last bar", "2022-12-28"],
        ),
        ("get", {"symbols": "AAPL", "asof": "1989-12-29"}, 422, ["before the first bar"]),
        ("get", {"symbols": "AAPL", "asof": "2020-13-01"}, 422, ["asof", "month"]),
        ("get", {"symbols": "AAPL", "asof": "yesterday"}, 422, ["asof", "valid date"]),
        ("post", {"symbols": ["AAPL"], "asof": "2020-02-30"}, 422, ["asof"]),
        ("get", {"symbols": ""}, 422, ["no symbols"]),
        ("get", {"symbols": " , "}, 422, ["no symbols"]),
        ("get", {}, 422, ["symbols", "required"]),
        ("post", {"symbols": []}, 422, ["no symbols"]),
        ("post", {"asof": "2020-03-04"}, 422, ["symbols", "required"]),
        ("post", {"symbols": ["AAPL"], "horizon": 9}, 422, ["horizon", "not permitted"]),
        ("get", {"symbols": ",".join(f"S{i}" for i in range(31))}, 422, ["too many", "31", "30"]),
        ("get", {"symbols": "GOOG", "asof": "2020-03-04"}, 422, ["GOOG", "2013-03-01"]),
        ("get", {"symbols": "MTUM,KO", "asof": "2010-03-04"}, 422, ["no bars up to", "MTUM"]),
        ("get", {"symbols": "MTUM", "asof": "2014-01-10"}, 422, ["MTUM", "needs at least 30"]),
    ],
)
def test_invalid_requests_are_refused_with_a_clear_message(
    client: TestClient, method: str, params: dict, status: int, words: list[str]
):
    if method == "get":
        r = client.get("/forecast", params=params)
    else:
        r = client.post("/forecast", json=params)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    for word in words:
        assert word.lower() in r.text.lower(), (word, r.text)


@pytest.mark.parametrize(
    ("last_bar", "stale"),
    [
        (date(2020, 12, 18), False),  # 21, 22, 23, 24 missing; Christmas is no session
        (date(2020, 12, 17), False),  # five sessions missing: the most allowed
        (date(2020, 12, 16), True),  # six
    ],
)
def test_staleness_counts_exchange_sessions_not_weekdays(store: Store, last_bar: date, stale: bool):
    store.con.execute(
        "INSERT INTO bars (symbol, ts, adj_close, source) VALUES "
        "('A', ?, 1.0, 't'), ('B', DATE '2020-12-28', 1.0, 't')",
        [last_bar],
    )
    data, calendar = DataSettings(qa_max_gap_days=5), get_calendar("XNYS")
    if not stale:
        assert check_request(store, ["A", "B"], date(2020, 12, 28), data, calendar)
        return
    with pytest.raises(ServiceError) as refused:
        check_request(store, ["A", "B"], date(2020, 12, 28), data, calendar)
    assert refused.value.status == 422 and refused.value.symbols == ["A"]
    assert "more than 5 XNYS sessions" in refused.value.detail


def test_unknown_symbols_are_listed_in_the_body(client: TestClient):
    body = client.get("/forecast", params={"symbols": "AAPL,FOO,BAR"}).json()
    assert body["symbols"] == ["FOO", "BAR"]


# ---------------------------------------------------------------- store access


def test_bars_after_asof_do_not_change_the_answer(bundled_db: Path, tmp_path: Path):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    client = TestClient(create_app(_config(path, tmp_path), CalibrationSettings(), DataSettings()))
    params = {"symbols": "AAPL,KO", "asof": "2020-03-04"}
    before = client.get("/forecast", params=params).json()
    with Store.open(path) as store:  # a writer between requests: the service holds no lock
        store.con.execute(  # every return after asof changes
            "UPDATE bars SET adj_close = adj_close * (1.5 + sin(epoch(ts))) WHERE ts > '2020-03-04'"
        )
        store.con.execute("DELETE FROM bars WHERE symbol = 'KO' AND ts = '2020-03-05'")
    assert client.get("/forecast", params=params).json() == before
    with Store.open(path) as store:  # ... while a change up to asof does change it
        store.con.execute(
            "UPDATE bars SET adj_close = adj_close * 1.2 WHERE symbol = ? AND ts = ?",
            ["AAPL", date(2020, 3, 4)],
        )
    after = client.get("/forecast", params=params).json()
    assert after["origin"] == before["origin"] == "2020-03-04"
    assert after["forecasts"][:5] != before["forecasts"][:5]
    assert after["forecasts"][5:] == before["forecasts"][5:]


def _hold(path: Path, sql: str = "SELECT 1") -> subprocess.Popen:
    """A process that opens ``path`` for writing, runs ``sql`` and holds it until stdin closes."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); c.execute({sql!r});"
            " print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_writer_holding_the_store_leaves_the_service_answering_from_its_copy(
    bundled_db: Path, tmp_path: Path
):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    client = TestClient(create_app(_config(path, tmp_path), CalibrationSettings(), DataSettings()))
    params = {"symbols": "KO", "asof": "2020-03-04"}
    before, read_at = client.get("/forecast", params=params), client.get("/health").json()
    assert before.status_code == 200
    # the writer changes the file (its write-ahead log) and keeps holding it
    holder = _hold(path, "UPDATE bars SET adj_close = adj_close * 2 WHERE symbol = 'KO'")
    try:
        during = client.get("/forecast", params=params)
        assert during.status_code == 200, during.text
        assert during.json() == before.json()
        assert client.get("/health").json()["store"]["read_at"] == read_at["store"]["read_at"]
    finally:
        holder.communicate("", timeout=30)
    after = client.get("/health").json()["store"]["read_at"]
    assert after > read_at["store"]["read_at"]  # re-read once the writer let go
    assert client.get("/forecast", params=params).status_code == 200


def test_a_busy_store_before_any_copy_is_503_with_retry_after_and_no_path(
    cal_db: Path, tmp_path: Path
):
    path = tmp_path / "k.duckdb"
    shutil.copy(cal_db, path)
    with Store.open(path, read_only=True) as store:
        fitted = EwmaNormal(lam=0.9).fit(
            returns_panel(store, CALIBRATED_NIGHT, ["KO"], settings=DataSettings())
        )
    promote(write_artifact(fitted, tmp_path / "models", _metrics(CALIBRATED_NIGHT)))
    config = ServiceConfig(
        db=path, model="ewma", model_dir=tmp_path / "models", first_read_wait_s=0.3
    )
    holder = _hold(path)
    try:  # an artifact needs no store to start; the store is read at the first request
        client = TestClient(create_app(config, CalibrationSettings(), DataSettings()))
        for r in (client.get("/health"), client.get("/forecast", params={"symbols": "KO"})):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "2"
            assert "busy" in r.json()["detail"] and "retry" in r.json()["detail"]
            assert "/" not in r.text and "PID" not in r.text
    finally:
        holder.communicate("", timeout=30)
    assert client.get("/forecast", params={"symbols": "KO"}).status_code == 200


def test_an_unreadable_store_is_503_naming_no_path(bundled_db: Path, tmp_path: Path):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    client = TestClient(create_app(_config(path, tmp_path), CalibrationSettings(), DataSettings()))
    path.write_bytes(b"not a duckdb file" * 100)
    r = client.get("/forecast", params={"symbols": "KO"})
    assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
    assert "unavailable" in r.json()["detail"] and "/" not in r.text


# ---------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(
    db: Path,
    tmp_path: Path,
    model: str = "ewma",
    env: dict[str, str] | None = None,
    seen: list[dict] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``kronos serve`` on a free port; yields its base URL once /health says "ok".

    Until then /health answers 503 ``loading``; those bodies are appended to ``seen``.
    Its output goes to ``tmp_path / "serve.log"`` (:func:`_output`), not a pipe: a
    burst's access log would fill a pipe nobody reads and stall the server.
    """
    port = _free_port()
    args = ["serve", "--port", str(port), "--db", str(db), "--model", model]
    args += ["--model-dir", str(tmp_path / "models"), "--allow-lookahead"]  # past asofs
    with (tmp_path / "serve.log").open("w") as log:  # the process keeps its own handle
        server = subprocess.Popen(
            [sys.executable, "-m", "kronos", *args],
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, _output(server, tmp_path)
            try:
                health = httpx.get(f"{base}/health", timeout=5)
                if health.status_code == 200:
                    break
                assert health.status_code == 503 and health.json()["status"] == "loading", (
                    health.text
                )
                if seen is not None:
                    seen.append(health.json())
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start in 60 s"
            time.sleep(0.05)
        yield base, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)


def _output(server: subprocess.Popen, tmp_path: Path) -> str:
    """What :func:`_server`'s process wrote, once it has exited."""
    server.wait(timeout=30)
    return (tmp_path / "serve.log").read_text()


def _burst(base: str, stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            statuses.append(client.get("/forecast", params={"symbols": "AAPL,KO"}).status_code)


def test_kronos_serve_answers_over_http_and_an_ingest_succeeds_during_a_burst(
    bundled_db: Path, tmp_path: Path
):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    seen: list[dict] = []  # /health while loading: observed when the fit outlasts the bind
    with _server(path, tmp_path, seen=seen) as (base, server):
        assert all("fitting the fallback ewma" in s["message"] for s in seen), seen
        health = httpx.get(f"{base}/health", timeout=5)
        assert health.status_code == 200 and health.json()["model"] == "ewma"
        before = health.json()["store"]
        r = httpx.get(f"{base}/forecast", params={"symbols": "MSFT", "asof": "2021-06-30"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["origin"] == "2021-06-30" and len(body["forecasts"]) == 5
        assert httpx.get(f"{base}/forecast", params={"symbols": "FOO"}).status_code == 404

        # a burst of requests from two clients; an ingest into the same file meanwhile
        stop, statuses = threading.Event(), []
        clients = [threading.Thread(target=_burst, args=(base, stop, statuses)) for _ in "ab"]
        for t in clients:
            t.start()
        try:
            time.sleep(0.5)
            args = ["data", "ingest", "--source", "synthetic", "--n-symbols", "2"]
            args += ["--years", "0.2", "--no-reference", "--db", str(path)]
            ingest = subprocess.run(
                [sys.executable, "-m", "kronos", *args],
                cwd=tmp_path,
                # no wait: the service holds the file only while copying it after a change
                env={**os.environ, "KRONOS_LOCK_WAIT_S": "0", "NO_COLOR": "1"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            time.sleep(0.3)
        finally:
            stop.set()
            for t in clients:
                t.join(timeout=60)
        after = httpx.get(f"{base}/health", timeout=5).json()["store"]

        server.send_signal(signal.SIGINT)
        output = _output(server, tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    assert len(statuses) > 10 and set(statuses) == {200}, statuses
    assert after["symbols"] == before["symbols"] + 2  # the service re-read the file
    assert after["read_at"] > before["read_at"]
    assert server.returncode == 0, output
    assert f"serving ewma on {base}" in output
    # stderr says which model loads and when it is ready, in that order
    loading = output.index("loading: fitting the fallback ewma")
    assert loading < output.index("ready: ")


def test_kronos_serve_takes_a_model_by_import_path(
    bundled_db: Path, tmp_path: Path, example_plugin
):
    # the researcher's package is importable (PYTHONPATH), not part of kronos
    path = "kronos_example.forecasters:RollingQuantiles"
    env = {"PYTHONPATH": str(example_plugin)}
    db = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, db)
    with _server(db, tmp_path, model=path, env=env) as (base, server):
        health = httpx.get(f"{base}/health", timeout=5).json()
        assert health["model"] == "rolling_quantiles" and health["source"] == "fallback"
        r = httpx.get(f"{base}/forecast", params={"symbols": "KO", "asof": "2021-06-30"})
        assert r.status_code == 200, r.text
        rows = r.json()["forecasts"]
        assert [x["step"] for x in rows] == [1, 2, 3, 4, 5]
        assert all(x["p05"] < x["p50"] < x["p95"] for x in rows)
        server.send_signal(signal.SIGINT)
        output = _output(server, tmp_path)
    assert server.returncode == 0, output


# ---------------------------------------------------------------- docs offline, start-up


def test_docs_and_redoc_are_served_without_a_cdn(client: TestClient):
    import re

    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], page
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
        urls += re.findall(r"""url:\s*["']([^"']+)["']""", r.text)  # swagger's openapi url
        assets = [u for u in urls if not u.startswith(("#", "data:"))]
        assert assets, f"{page}: no script/link URLs found in {r.text[:500]}"
        assert not [u for u in assets if "://" in u or u.startswith("//")], (page, assets)
        for url in assets:
            assert client.get(url).status_code == 200, (page, url)
        assert "cdn" not in r.text.lower(), page


def test_health_says_loading_and_forecast_is_503_until_the_model_is_ready(cal_db: Path):
    from kronos.serve import load_model

    release, calls = threading.Event(), []

    def slow_loader(config, data):  # a model whose fit takes until released
        assert release.wait(30), "never released"
        return load_model(config, data)

    config = _config(cal_db, cal_db.parent)
    app = create_app(
        config, CalibrationSettings(), DataSettings(), background=True, loader=slow_loader,
        on_done=calls.append,
    )  # fmt: skip
    client = TestClient(app)
    try:
        health = client.get("/health")
        assert health.status_code == 503 and health.headers["Retry-After"] == "2"
        assert health.json()["status"] == "loading"
        assert "fitting the fallback ewma" in health.json()["message"]
        r = client.get("/forecast", params={"symbols": "AAPL"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert "fitting the fallback ewma" in r.json()["detail"]
        assert client.get("/version").status_code == 503
    finally:
        release.set()
    assert app.state.startup.done.wait(30)
    assert calls == [app.state.startup]
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/forecast", params={"symbols": "AAPL"}).status_code == 200


def test_a_failed_background_load_is_reported_not_hidden(cal_db: Path, tmp_path: Path):
    config = ServiceConfig(db=cal_db, model="tft", model_dir=tmp_path)  # no artifact, no fallback
    calls: list = []
    app = create_app(
        config, CalibrationSettings(), DataSettings(), background=True, on_done=calls.append
    )
    assert app.state.startup.done.wait(30)
    client = TestClient(app)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "no promoted tft artifact" in health.json()["message"]
    assert "failed to load" in client.get("/forecast", params={"symbols": "AAPL"}).json()["detail"]
    assert len(calls) == 1 and calls[0].error


def test_kronos_serve_exits_non_zero_when_its_model_cannot_load(bundled_db: Path, tmp_path: Path):
    port = _free_port()
    args = ["serve", "--port", str(port), "--db", str(bundled_db), "--model", "tft"]
    args += ["--model-dir", str(tmp_path / "models")]
    got = subprocess.run(
        [sys.executable, "-m", "kronos", *args],
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 2, got.stderr
    assert "failed to load" in got.stderr and "no promoted tft artifact" in got.stderr


# ---------------------------------------------------------------- point in time, the cache


LOOKAHEAD = "would use the future; pass an artifact trained by then or --allow-lookahead"


def _artifact_app(db: Path, models: Path, through: date | None, **kw) -> TestClient:
    """An EWMA artifact promoted under ``models``, fitted through ``through`` (None: unrecorded)."""
    with Store.open(db, read_only=True) as store:
        panel = returns_panel(store, CALIBRATED_NIGHT, ["AAPL", "KO"], settings=DataSettings())
    metrics = _metrics(through) if through else {"valid_crps": 1.0}
    promote(write_artifact(EwmaNormal(lam=0.9).fit(panel), models, metrics))
    config = ServiceConfig(db=db, model="ewma", model_dir=models, **kw)
    return TestClient(create_app(config, CalibrationSettings(), DataSettings()))


def test_an_asof_before_the_training_cutoff_is_409_unless_lookahead_is_allowed(
    cal_db: Path, tmp_path: Path
):
    strict = _artifact_app(cal_db, tmp_path / "models", CALIBRATED_NIGHT)
    before = strict.get("/forecast", params={"symbols": "AAPL", "asof": "2020-03-03"})
    assert before.status_code == 409, before.text
    assert (
        before.json()["detail"] == f"model fitted through 2020-03-04; asof 2020-03-03 {LOOKAHEAD}"
    )
    # the boundary day: the model saw the bars up to 2020-03-04, the forecast reads as many
    for asof, origin in (("2020-03-04", "2020-03-04"), ("2020-03-07", "2020-03-06")):
        body = strict.get("/forecast", params={"symbols": "AAPL", "asof": asof}).json()
        assert (body["origin"], body["fitted_through"]) == (origin, "2020-03-04"), body
        assert body["point_in_time"] is True
    assert "409" in strict.get("/openapi.json").json()["paths"]["/forecast"]["get"]["responses"]

    allowed = _artifact_app(cal_db, tmp_path / "models", CALIBRATED_NIGHT, allow_lookahead=True)
    assert allowed.get("/health").json()["lookahead_allowed"] is True
    body = allowed.post("/forecast", json={"symbols": ["AAPL"], "asof": "2020-03-03"}).json()
    assert body["origin"] == "2020-03-03" and body["fitted_through"] == "2020-03-04"
    assert body["point_in_time"] is False and len(body["forecasts"]) == 5


def test_the_fallback_is_fitted_through_the_last_bar_and_an_unrecorded_cutoff_is_refused(
    cal_db: Path, tmp_path: Path
):
    strict = TestClient(
        create_app(
            _config(cal_db, tmp_path, allow_lookahead=False), CalibrationSettings(), DataSettings()
        )
    )
    r = strict.get("/forecast", params={"symbols": "KO", "asof": "2020-03-04"})
    assert r.status_code == 409
    assert r.json()["detail"] == f"model fitted through 2022-12-28; asof 2020-03-04 {LOOKAHEAD}"
    body = strict.get("/forecast", params={"symbols": "KO"}).json()  # the last bar
    assert body["origin"] == body["fitted_through"] == "2022-12-28" and body["point_in_time"]

    unknown = _artifact_app(cal_db, tmp_path / "models", None)
    assert unknown.get("/health").json()["fitted_through"] is None
    r = unknown.get("/forecast", params={"symbols": "KO"})
    assert r.status_code == 409 and "records no training cutoff" in r.json()["detail"]


class CountingEwma(EwmaNormal):
    """EWMA that counts its predictions (and can take its time over them)."""

    def __init__(self, lam: float = 0.94, delay_s: float = 0.0) -> None:
        super().__init__(lam)
        self.delay_s, self.calls = delay_s, 0

    def predict(self, *args, **kwargs):
        self.calls += 1
        time.sleep(self.delay_s)
        return super().predict(*args, **kwargs)


def test_a_repeated_request_is_answered_from_the_cache_and_computed_once(
    cal_db: Path, tmp_path: Path
):
    from kronos.models.artifacts import Loaded

    db = tmp_path / "k.duckdb"
    shutil.copy(cal_db, db)
    with Store.open(db, read_only=True) as store:
        panel = returns_panel(store, CALIBRATED_NIGHT, ["AAPL", "KO"], settings=DataSettings())
    model = CountingEwma(delay_s=0.3).fit(panel)

    def loader(config, data):
        return Loaded(model, "artifact", None, "counting ewma"), date(2020, 3, 2)

    app = create_app(
        _config(db, tmp_path, allow_lookahead=False), CalibrationSettings(), DataSettings(),
        loader=loader,
    )  # fmt: skip
    client = TestClient(app)
    params = {"symbols": "KO", "asof": "2020-03-05"}
    first = client.get("/forecast", params=params)
    assert first.status_code == 200 and model.calls == 1
    assert first.json()["calibration_night"] == "2020-03-04"
    again = client.get("/forecast", params=params)
    assert again.content == first.content and model.calls == 1
    assert client.get("/health").json()["cache"]["hits"] == 1
    # raw is another answer; the same request spelled differently is the same one
    assert client.get("/forecast", params={**params, "raw": True}).json()["calibrated"] is False
    assert client.get("/forecast", params={**params, "symbols": " ko,KO"}).content == first.content
    assert model.calls == 2

    # eight requests at once for a new answer: one computes it, seven wait for it
    service, start = app.state.service, threading.Barrier(8)
    bodies: list[bytes] = []

    def ask() -> None:
        start.wait()
        bodies.append(service.forecast_json(["AAPL"], date(2020, 3, 5), False))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(bodies) == 8 and len(set(bodies)) == 1 and model.calls == 3

    # a new calibration night in the store: a new copy, so the answer is computed afresh
    with Store.open(db) as store:
        nightly_calibrate(
            store, "ewma", date(2020, 3, 5),
            returns_panel(store, date(2020, 3, 5), ["KO", "AAPL"], settings=DataSettings()),
            lambda: model, since=date(2020, 3, 5),
            settings=CalibrationSettings(), data=DataSettings(),
        )  # fmt: skip
    calls = model.calls
    after = client.get("/forecast", params=params).json()
    assert after["calibration_night"] == "2020-03-05" and model.calls > calls
    assert after["forecasts"] != first.json()["forecasts"]


def test_kronos_forecast_refuses_an_asof_before_the_cutoff_with_exit_2(
    cal_db: Path, tmp_path: Path
):
    import json

    from typer.testing import CliRunner

    from kronos.cli import app

    db = tmp_path / "k.duckdb"
    shutil.copy(cal_db, db)
    _artifact_app(db, tmp_path / "models", CALIBRATED_NIGHT)
    args = ["forecast", "ewma", "--db", str(db), "--model-dir", str(tmp_path / "models")]
    args += ["--symbols", "AAPL,KO", "--no-write", "--json"]
    runner = CliRunner()
    refused = runner.invoke(app, [*args, "--asof", "2020-03-03"])
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert f"model fitted through 2020-03-04; asof 2020-03-03 {LOOKAHEAD}" in said

    def body(*more: str) -> dict:
        got = runner.invoke(app, [*args, *more])
        assert got.exit_code == 0, got.output
        return json.loads(got.stdout.strip().splitlines()[-1])

    allowed = body("--asof", "2020-03-03", "--allow-lookahead")
    assert allowed["source"] == "artifact" and allowed["point_in_time"] is False
    assert allowed["fitted_through"] == "2020-03-04" and len(allowed["forecasts"]) == 10
    boundary = body("--asof", "2020-03-04")
    assert boundary["point_in_time"] is True and boundary["origin"] == "2020-03-04"
    # no artifact: the fallback is fitted on the bars up to the origin, so point in time
    fallback = body("--asof", "2020-03-03", "--model-dir", str(tmp_path / "none"))
    assert fallback["source"] == "fallback" and fallback["point_in_time"] is True
    assert fallback["fitted_through"] == fallback["origin"] == "2020-03-03"


def test_a_per_symbol_model_forecasts_the_universe_once_per_origin_with_the_same_answers(
    cal_db: Path, tmp_path: Path
):
    from kronos.forecasting import forecast_with
    from kronos.models.artifacts import Loaded

    db = tmp_path / "k.duckdb"
    shutil.copy(cal_db, db)
    with Store.open(db, read_only=True) as store:
        panel = returns_panel(store, CALIBRATED_NIGHT, ["AAPL", "KO"], settings=DataSettings())
    model = EwmaNormal().fit(panel)  # built in: its forecast of a symbol uses that symbol only
    calls: list[object] = []
    predict = model.predict

    def counted(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("symbols"))
        return predict(*args, **kwargs)

    model.predict = counted  # type: ignore[method-assign]
    loaded = Loaded(model, "artifact", None, "ewma")

    def loader(config, data):
        return loaded, date(2020, 3, 2)

    app = create_app(
        _config(db, tmp_path, allow_lookahead=False), CalibrationSettings(), DataSettings(),
        loader=loader,
    )  # fmt: skip
    client = TestClient(app)
    ko = client.get("/forecast", params={"symbols": "KO", "asof": "2020-03-05"}).json()
    aapl = client.get("/forecast", params={"symbols": "AAPL", "asof": "2020-03-05"}).json()
    raw = client.get("/forecast", params={"symbols": "KO", "asof": "2020-03-05", "raw": True})
    assert len(calls) == 1 and len(calls[0]) > 2  # the whole universe, once, for three answers
    assert raw.json()["calibrated"] is False and ko["calibrated"] is True
    # reference: the request computed on its own (forecast_with on KO alone); equal to the bit
    with Store.open(db, read_only=True) as store:
        alone = forecast_with(
            store, loaded, "ewma",
            returns_panel(store, date(2020, 3, 5), ["KO"], settings=DataSettings()),
            symbols=["KO"], settings=CalibrationSettings(), data=DataSettings(),
        ).best  # fmt: skip
    assert [(f["p05"], f["p50"], f["p95"]) for f in ko["forecasts"]] == list(
        zip(alone["p05"], alone["p50"], alone["p95"], strict=True)
    )
    assert aapl["forecasts"][0]["symbol"] == "AAPL"
    assert ko["crossed_rows"] == 0  # EWMA never crosses; the field is always there
