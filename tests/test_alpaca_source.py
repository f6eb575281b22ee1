"""kronos.data.sources.alpaca against a local fake of Alpaca's bars endpoint."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from fakes.alpaca_server import FakeAlpacaServer, FakeBar, run_alpaca_data_server
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from kronos.config import load_settings
from kronos.data.errors import InputError, SourceError, SourceUnreachable
from kronos.data.schema import TABLES
from kronos.data.sources.alpaca import (
    AlpacaConfigError,
    AlpacaDataSettings,
    fetch_alpaca_bars,
    load_alpaca_settings,
)
from kronos.errors import ConfigError

KEY = "PKTESTKEY0123456789"
SECRET = "sEcReT-do-not-leak-42"
BARS_PATH = "/v2/stocks/bars"
ENV_VARS = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "APCA_DATA_URL", "APCA_DATA_FEED")

# (symbol, Alpaca bar timestamp, New York trading day, raw close, adjusted close, raw volume)
# AAA splits 2:1 on 2024-03-12: raw close halves, adjusted close is continuous.
# BBB goes ex-dividend on 2024-03-12: adjusted close is 1% under raw before it.
# US DST starts 2024-03-10: bars move from 05:00Z to 04:00Z, so subtracting a fixed 5 h
# puts the 04:00Z bars on the previous day. Two BBB bars carry off-midnight stamps whose
# UTC date is the day after their New York date: 04:30Z in EST (a fixed -4 h gets it
# wrong) and 03:30Z in EDT (taking the UTC date gets it wrong).
ROWS = [
    ("AAA", "2024-03-06T05:00:00Z", date(2024, 3, 6), 100.0, 50.0, 1000.0),
    ("AAA", "2024-03-07T05:00:00Z", date(2024, 3, 7), 102.0, 51.0, 1100.0),
    ("AAA", "2024-03-08T05:00:00Z", date(2024, 3, 8), 104.0, 52.0, 1200.0),
    ("AAA", "2024-03-11T04:00:00Z", date(2024, 3, 11), 106.0, 53.0, 1300.0),
    ("AAA", "2024-03-12T04:00:00Z", date(2024, 3, 12), 54.0, 54.0, 2800.0),
    ("AAA", "2024-03-13T04:00:00Z", date(2024, 3, 13), 55.0, 55.0, 2900.0),
    ("AAA", "2024-03-14T04:00:00Z", date(2024, 3, 14), 56.0, 56.0, 3000.0),
    ("BBB", "2024-03-08T04:30:00Z", date(2024, 3, 7), 20.0, 19.8, 500.0),
    ("BBB", "2024-03-11T04:00:00Z", date(2024, 3, 11), 21.0, 20.79, 510.0),
    ("BBB", "2024-03-13T03:30:00Z", date(2024, 3, 12), 22.0, 22.0, 520.0),
    ("BBB", "2024-03-13T04:00:00Z", date(2024, 3, 13), 23.0, 23.0, 530.0),
]


def _ohl(close: float) -> tuple[float, float, float]:
    return close * 0.99, close * 1.01, close * 0.98


def _fake_bar(t: str, close: float, adj_close: float, volume: float) -> FakeBar:
    o, h, low = _ohl(close)
    f = adj_close / close
    # Under adjustment=all every price scales by f and volume by 1/f; raw and split/dividend
    # views keep the raw values, so asking for the wrong adjustment shows up.
    adjusted = {"all": {"o": o * f, "h": h * f, "l": low * f, "c": adj_close, "v": volume / f}}
    return FakeBar(t=t, o=o, h=h, l=low, c=close, v=volume, n=42, vw=close, adjusted=adjusted)


def _server_bars() -> dict[str, list[FakeBar]]:
    bars: dict[str, list[FakeBar]] = {}
    for symbol, t, _, close, adj, volume in ROWS:
        bars.setdefault(symbol, []).append(_fake_bar(t, close, adj, volume))
    return bars


def _expected(first: date, last: date) -> pl.DataFrame:
    rows = [
        {
            "symbol": symbol,
            "ts": day,
            **dict(zip(("open", "high", "low"), _ohl(close), strict=True)),
            "close": close,
            "adj_close": adj,
            "volume": volume,
            "source": "alpaca",
        }
        for symbol, _, day, close, adj, volume in ROWS
        if first <= day <= last
    ]
    return pl.DataFrame(rows, schema=TABLES["bars"].schema).sort("symbol", "ts")


def _settings(url: str, key: str = KEY, secret: str = SECRET) -> AlpacaDataSettings:
    return AlpacaDataSettings(  # type: ignore[call-arg]  # populated by env-var name
        APCA_API_KEY_ID=key,
        APCA_API_SECRET_KEY=secret,
        APCA_DATA_URL=url,
        APCA_DATA_FEED="iex",
    )


def _loaded() -> AlpacaDataSettings:
    """The data settings as the CLI reads them (environment and ./.env), keys checked."""
    return load_alpaca_settings(load_settings().alpaca_data)


@pytest.fixture
def server() -> Iterator[FakeAlpacaServer]:
    with run_alpaca_data_server(_server_bars(), KEY, SECRET) as fake:
        yield fake


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No APCA_* variables, and a cwd whose .env the test controls."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- fetch_alpaca_bars -------------------------------------------------------------


def test_fetch_matches_server_in_bars_schema(server: FakeAlpacaServer) -> None:
    frame = fetch_alpaca_bars(
        ["BBB", "AAA"], date(2024, 3, 1), date(2024, 3, 15), _settings(server.url)
    )

    assert frame.schema == pl.Schema(TABLES["bars"].schema)
    assert_frame_equal(frame, _expected(date(2024, 3, 1), date(2024, 3, 15)), check_exact=True)


def test_ts_is_the_new_york_trading_day(server: FakeAlpacaServer) -> None:
    frame = fetch_alpaca_bars(
        ["AAA", "BBB"], date(2024, 3, 1), date(2024, 3, 15), _settings(server.url)
    )
    days = {(s, d) for s, d in frame.select("symbol", "ts").iter_rows()}

    assert ("AAA", date(2024, 3, 11)) in days  # 04:00Z after DST, not 03-10
    assert ("AAA", date(2024, 3, 10)) not in days
    assert ("BBB", date(2024, 3, 7)) in days  # 2024-03-08T04:30Z is 03-07 23:30 EST
    assert ("BBB", date(2024, 3, 12)) in days  # 2024-03-13T03:30Z is 03-12 23:30 EDT
    assert frame.filter(symbol="BBB")["ts"].to_list() == [
        date(2024, 3, 7),
        date(2024, 3, 11),
        date(2024, 3, 12),
        date(2024, 3, 13),
    ]


def test_close_is_raw_and_adj_close_is_split_adjusted(server: FakeAlpacaServer) -> None:
    aaa = fetch_alpaca_bars(["AAA"], date(2024, 3, 8), date(2024, 3, 13), _settings(server.url))
    closes = dict(zip(aaa["ts"].to_list(), aaa["close"].to_list(), strict=True))
    adj = dict(zip(aaa["ts"].to_list(), aaa["adj_close"].to_list(), strict=True))

    assert closes[date(2024, 3, 12)] / closes[date(2024, 3, 11)] == pytest.approx(54 / 106)
    assert adj[date(2024, 3, 12)] / adj[date(2024, 3, 11)] == pytest.approx(54 / 53)
    assert aaa.filter(ts=date(2024, 3, 11))["volume"].item() == 1300.0  # raw, not 2600


def test_range_is_inclusive_in_new_york_days(server: FakeAlpacaServer) -> None:
    frame = fetch_alpaca_bars(
        ["AAA", "BBB"], date(2024, 3, 11), date(2024, 3, 12), _settings(server.url)
    )

    assert_frame_equal(frame, _expected(date(2024, 3, 11), date(2024, 3, 12)))
    assert frame.height == 4


def test_requests_both_adjustments_and_paginates(server: FakeAlpacaServer) -> None:
    fetch_alpaca_bars(["BBB", "AAA"], date(2024, 3, 1), date(2024, 3, 15), _settings(server.url))
    requests = server.requests_to(BARS_PATH)
    by_adjustment: dict[str, list[dict[str, str]]] = {}
    for request in requests:
        assert request.method == "GET"
        by_adjustment.setdefault(request.query["adjustment"], []).append(request.query)

    assert set(by_adjustment) == {"raw", "all"}
    assert len(requests) == len(server.requests)  # nothing else was called
    for queries in by_adjustment.values():
        assert len(queries) == 4  # 11 bars in pages of 3
        assert "page_token" not in queries[0]
        assert all("page_token" in q for q in queries[1:])
        for q in queries:
            assert set(q["symbols"].split(",")) == {"AAA", "BBB"}
            assert q["timeframe"] == "1Day"
            assert q["feed"] == "iex"
            assert q["start"] == "2024-03-01T05:00:00+00:00"  # midnight EST
            assert q["end"] == "2024-03-16T03:59:59+00:00"  # 23:59:59 EDT


def test_symbol_without_bars_raises_naming_it(server: FakeAlpacaServer) -> None:
    with pytest.raises(SourceError, match=r"no bars for ZZZ\b") as info:
        fetch_alpaca_bars(
            ["AAA", "ZZZ"], date(2024, 3, 1), date(2024, 3, 15), _settings(server.url)
        )
    assert "AAA" not in str(info.value)


def test_symbol_without_bars_in_the_range_raises(server: FakeAlpacaServer) -> None:
    # AAA trades on 2024-03-06, BBB has no bar that day.
    with pytest.raises(SourceError, match=r"no bars for BBB\b"):
        fetch_alpaca_bars(["AAA", "BBB"], date(2024, 3, 6), date(2024, 3, 6), _settings(server.url))


def test_two_bars_on_one_new_york_day_are_refused() -> None:
    # 05:00Z and the next day's 03:00Z are both 2024-03-06 in New York (EST).
    bars = {
        "CCC": [
            _fake_bar("2024-03-06T05:00:00Z", 10.0, 10.0, 1.0),
            _fake_bar("2024-03-07T03:00:00Z", 11.0, 11.0, 1.0),
        ]
    }
    with (
        run_alpaca_data_server(bars, KEY, SECRET) as fake,
        pytest.raises(SourceError, match=r"more than one daily bar per day: CCC 2024-03-06"),
    ):
        fetch_alpaca_bars(["CCC"], date(2024, 3, 1), date(2024, 3, 15), _settings(fake.url))


def test_wrong_key_is_refused(server: FakeAlpacaServer) -> None:
    with pytest.raises(SourceError, match=r"refused the request: HTTP 401") as info:
        fetch_alpaca_bars(
            ["AAA"], date(2024, 3, 1), date(2024, 3, 15), _settings(server.url, key="nope")
        )
    message = str(info.value)
    assert not isinstance(info.value, SourceUnreachable)
    assert "APCA_API_KEY_ID" in message and "127.0.0.1" in message and "\n" not in message
    assert SECRET not in message
    assert len(server.requests_to(BARS_PATH)) == 1  # it reached the server, and was not retried


def test_fake_server_checks_the_secret_too(server: FakeAlpacaServer) -> None:
    with pytest.raises(SourceError, match="not authorized"):
        fetch_alpaca_bars(
            ["AAA"], date(2024, 3, 1), date(2024, 3, 15), _settings(server.url, secret="x")
        )


def test_rejects_bad_arguments_before_calling(server: FakeAlpacaServer) -> None:
    settings = _settings(server.url)
    with pytest.raises(InputError, match="no symbols"):
        fetch_alpaca_bars([], date(2024, 3, 1), date(2024, 3, 15), settings)
    with pytest.raises(InputError, match="before start"):
        fetch_alpaca_bars(["AAA"], date(2024, 3, 15), date(2024, 3, 1), settings)
    with pytest.raises(TypeError, match="not one string"):
        fetch_alpaca_bars("AAA", date(2024, 3, 1), date(2024, 3, 15), settings)  # type: ignore[arg-type]
    assert server.requests == []


def _closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_host_is_one_clear_line() -> None:
    port = _closed_port()
    with pytest.raises(SourceUnreachable) as info:
        fetch_alpaca_bars(
            ["AAA"], date(2024, 3, 1), date(2024, 3, 15), _settings(f"http://127.0.0.1:{port}")
        )
    message = str(info.value)
    assert message == (
        f"cannot reach Alpaca market data at 127.0.0.1:{port} (connection refused); "
        "check the network connection and APCA_DATA_URL"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_silent_host_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        settings = _settings(f"http://127.0.0.1:{port}").model_copy(update={"timeout_s": 0.5})
        started = time.monotonic()
        with pytest.raises(SourceUnreachable, match=r"no answer within 0.5 s"):
            fetch_alpaca_bars(["AAA"], date(2024, 3, 1), date(2024, 3, 15), settings)
    assert time.monotonic() - started < 5


# --- settings ----------------------------------------------------------------------


def test_settings_never_show_secrets() -> None:
    settings = _settings("http://127.0.0.1:1/")

    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert KEY not in text
        assert SECRET not in text
    assert settings.api_key.get_secret_value() == KEY
    assert settings.secret_key.get_secret_value() == SECRET
    assert settings.data_url == "http://127.0.0.1:1"  # trailing slash dropped
    with pytest.raises(ValidationError):
        settings.feed = "sip"  # type: ignore[misc]  # frozen


def test_load_settings_names_missing_variables(clean_env: Path) -> None:
    with pytest.raises(AlpacaConfigError, match="APCA_API_KEY_ID") as info:
        _loaded()
    assert isinstance(info.value, ConfigError)
    assert "APCA_API_SECRET_KEY" in str(info.value)


def test_load_settings_names_only_the_missing_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", "")  # empty counts as missing
    with pytest.raises(AlpacaConfigError, match="APCA_API_SECRET_KEY") as info:
        _loaded()
    assert "APCA_API_KEY_ID" not in str(info.value)
    assert KEY not in str(info.value)


def test_load_settings_reads_env_file_beside_other_keys(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        f"FMP_API_KEY=unrelated\nAPCA_API_KEY_ID={KEY}\nAPCA_API_SECRET_KEY={SECRET}\n"
        "APCA_DATA_FEED=sip\n",
        encoding="utf-8",
    )
    settings = _loaded()

    assert settings.api_key.get_secret_value() == KEY
    assert settings.secret_key.get_secret_value() == SECRET
    assert settings.feed == "sip"
    assert settings.data_url is None


def test_environment_overrides_env_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text(
        f"APCA_API_KEY_ID=from-file\nAPCA_API_SECRET_KEY={SECRET}\n", encoding="utf-8"
    )
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)

    assert _loaded().api_key.get_secret_value() == KEY


def test_load_settings_rejects_unknown_feed(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("APCA_DATA_FEED", "bogus")
    with pytest.raises(ConfigError, match="invalid APCA_DATA_FEED 'bogus'"):
        _loaded()


# --- the CLI end to end --------------------------------------------------------------


def test_cli_ingests_alpaca_bars_with_keys_from_dotenv(server: FakeAlpacaServer, clean_env: Path):
    import json
    import os
    import subprocess
    import sys

    (clean_env / ".env").write_text(
        f"APCA_API_KEY_ID={KEY}\nAPCA_API_SECRET_KEY={SECRET}\nAPCA_DATA_URL={server.url}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    args = ["data", "ingest", "-s", "alpaca", "--symbols", "AAA,BBB"]
    args += ["--start", "2024-03-06", "--end", "2024-03-14", "--db", "k.duckdb", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "kronos", *args],
        cwd=clean_env,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["bars"]["inserted"] == len(ROWS)
    assert KEY not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr
    info = subprocess.run(
        [sys.executable, "-m", "kronos", "data", "info", "--db", "k.duckdb", "--json"],
        cwd=clean_env,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    sources = json.loads(info.stdout)["bars_by_source"]
    assert [(s["source"], s["symbols"], s["rows"]) for s in sources] == [
        ("alpaca", "AAA, BBB", len(ROWS))
    ]


def test_cli_without_network_exits_2_with_one_line(clean_env: Path):
    import os
    import subprocess
    import sys

    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env |= {"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET}
    env["APCA_DATA_URL"] = f"http://127.0.0.1:{port}"
    args = ["data", "ingest", "-s", "alpaca", "--symbols", "AAA", "--start", "2024-03-06"]
    proc = subprocess.run(
        [sys.executable, "-m", "kronos", *args, "--db", "k.duckdb"],
        cwd=clean_env,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: cannot reach Alpaca market data at 127.0.0.1:{port} (connection refused); "
        "check the network connection and APCA_DATA_URL"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr and SECRET not in proc.stderr
