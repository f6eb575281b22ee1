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
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from kronos.config import CalibrationSettings
from kronos.data.store import Store
from kronos.features.returns import returns_panel
from kronos.forecasting import forecast_and_store
from kronos.models.artifacts import promote, write_artifact
from kronos.models.baselines import EwmaNormal
from kronos.nightly import nightly_calibrate
from kronos.serve import ServiceConfig, create_app

CALIBRATED_NIGHT = date(2020, 3, 4)
ROW_KEYS = ["symbol", "step", "target_ts", "p05", "p50", "p95"]


@pytest.fixture(scope="module")
def cal_db(bundled_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled store with ewma calibration state for the nights of March 2-4, 2020."""
    path = tmp_path_factory.mktemp("serve") / "k.duckdb"
    shutil.copy(bundled_db, path)
    with Store.open(path) as store:
        panel = returns_panel(store, CALIBRATED_NIGHT, ["AAPL", "MSFT", "KO", "XOM"])
        fit = EwmaNormal().fit(panel)
        nights = nightly_calibrate(
            store, "ewma", CALIBRATED_NIGHT, panel, lambda: fit, since=date(2020, 3, 2)
        )
    assert [n.day for n in nights][-1] == CALIBRATED_NIGHT
    return path


def _config(db: Path, tmp: Path, **kw) -> ServiceConfig:
    return ServiceConfig(db=db, model="ewma", model_dir=tmp / "no-models", **kw)


@pytest.fixture(scope="module")
def client(cal_db: Path) -> TestClient:
    """Calibration enabled; no artifact, so the ewma fallback."""
    return TestClient(create_app(_config(cal_db, cal_db.parent, max_symbols=30)))


@pytest.fixture(scope="module")
def raw_client(cal_db: Path) -> TestClient:
    """Calibration disabled."""
    settings = CalibrationSettings(calibration_enabled=False)
    return TestClient(create_app(_config(cal_db, cal_db.parent), calibration=settings))


def _reference(db: Path, symbols: list[str], asof: date, tmp: Path):
    """What ``kronos forecast --no-write`` computes for the same request."""
    with Store.open(db, read_only=True) as store:
        panel = returns_panel(store, asof, symbols)
        return forecast_and_store(
            store, "ewma", panel, tmp / "no-models", symbols=symbols, write=False
        )


def _rows(frame) -> list[dict]:
    return [
        {**r, "target_ts": r["target_ts"].isoformat()}
        for r in frame.select(ROW_KEYS).iter_rows(named=True)
    ]


# ---------------------------------------------------------------- endpoints


def test_health_names_model_calibration_night_and_store(client: TestClient, cal_db: Path):
    body = client.get("/health").json()
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
    posted = client.post("/forecast", json={"symbols": ["AAPL", "KO", " AAPL "]})
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
        fitted = EwmaNormal(lam=0.9).fit(returns_panel(store, CALIBRATED_NIGHT, ["AAPL"]))
    run_dir = write_artifact(fitted, tmp_path / "models", {"valid_crps": 1.0})
    promote(run_dir)
    config = ServiceConfig(db=cal_db, model="ewma", model_dir=tmp_path / "models")
    client = TestClient(create_app(config))
    health, about = client.get("/health").json(), client.get("/version").json()
    assert health["source"] == about["source"] == "artifact" and health["fitted_through"] is None
    assert about["artifact"] == str(run_dir) and about["model_version"] == fitted.version
    body = client.get("/forecast", params={"symbols": "AAPL", "asof": "2020-03-04"}).json()
    assert body["source"] == "artifact" and body["version"] == fitted.version


def test_a_model_without_artifact_or_fallback_refuses_to_start(cal_db: Path, tmp_path: Path):
    config = ServiceConfig(db=cal_db, model="tft", model_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no promoted tft artifact"):
        create_app(config)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("method", "params", "status", "words"),
    [
        ("get", {"symbols": "FOO"}, 404, ["FOO"]),
        ("get", {"symbols": "AAPL,AAPX,ZZZZ"}, 404, ["AAPX (did you mean AAPL?)", "ZZZZ"]),
        ("post", {"symbols": ["KO", "NOPE"]}, 404, ["NOPE"]),
        ("get", {"symbols": "aapl"}, 404, ["aapl (did you mean AAPL?)"]),
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


def test_unknown_symbols_are_listed_in_the_body(client: TestClient):
    body = client.get("/forecast", params={"symbols": "AAPL,FOO,BAR"}).json()
    assert body["symbols"] == ["FOO", "BAR"]


# ---------------------------------------------------------------- store access


def test_bars_after_asof_do_not_change_the_answer(bundled_db: Path, tmp_path: Path):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    client = TestClient(create_app(_config(path, tmp_path)))
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


def test_a_writer_holding_the_store_gives_503_then_service_resumes(
    bundled_db: Path, tmp_path: Path
):
    path = tmp_path / "k.duckdb"
    shutil.copy(bundled_db, path)
    client = TestClient(create_app(_config(path, tmp_path)))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('held', flush=True);"
            " sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for r in (client.get("/health"), client.get("/forecast", params={"symbols": "KO"})):
            assert r.status_code == 503, r.text
            assert "retry" in r.json()["detail"] and "lock" in r.json()["detail"]
    finally:
        holder.communicate("", timeout=30)
    assert client.get("/forecast", params={"symbols": "KO"}).status_code == 200


# ---------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kronos_serve_answers_over_http(bundled_db: Path, tmp_path: Path):
    port = _free_port()
    args = ["serve", "--port", str(port), "--db", str(bundled_db), "--model", "ewma"]
    args += ["--model-dir", str(tmp_path / "models")]
    server = subprocess.Popen(
        [sys.executable, "-m", "kronos", *args],
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                health = httpx.get(f"{base}/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start in 60 s"
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["model"] == "ewma"
        r = httpx.get(f"{base}/forecast", params={"symbols": "MSFT", "asof": "2021-06-30"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["origin"] == "2021-06-30" and len(body["forecasts"]) == 5
        assert httpx.get(f"{base}/forecast", params={"symbols": "FOO"}).status_code == 404
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
    assert f"serving ewma on http://127.0.0.1:{port}" in output
