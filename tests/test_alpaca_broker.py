"""kronos.execution.brokers.alpaca through the real alpaca-py client against the fake.

The fake (kronos.testing.fake_alpaca) serves Alpaca's trading API over a small
market of hand-made daily bars; prices are binary fractions so that cash and
position arithmetic can be compared with ``==``.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from alpaca.trading.client import TradingClient

from kronos.config import load_settings
from kronos.errors import ConfigError
from kronos.execution.brokers import alpaca as alpaca_broker
from kronos.execution.brokers.alpaca import (
    AlpacaBroker,
    AlpacaConfigError,
    AlpacaTradingSettings,
    load_alpaca_trading_settings,
)
from kronos.execution.brokers.base import (
    AmbiguousOutcome,
    Broker,
    BrokerError,
    BrokerUnavailable,
    DuplicateOrder,
    OrderRejected,
    OrderRequest,
)
from kronos.testing.fake_alpaca import FakeAlpacaServer, FakeMarket, FaultConfig

KEY = "PKREDACTME0123456789"
SECRET = "sEcReT-trading-do-not-leak-77"
LIVE_KEY = "AKLIVEKEY9876543210"
LIVE_SECRET = "LiVe-SeCrEt-never-print-55"
ENV_VARS = (
    "APCA_PAPER_API_KEY_ID",
    "APCA_PAPER_API_SECRET_KEY",
    "APCA_LIVE_API_KEY_ID",
    "APCA_LIVE_API_SECRET_KEY",
    "KRONOS_ALPACA_MODE",
    "KRONOS_ALLOW_LIVE_TRADING",
    "KRONOS_ALPACA_TRADING_URL",
    "KRONOS_ALPACA_TIMEOUT_S",
)
D0, D1, D2, D3 = date(2024, 3, 4), date(2024, 3, 5), date(2024, 3, 6), date(2024, 3, 7)
# (symbol, day, open, high, low, close); BBB does not trade on D2.
BARS = [
    ("AAA", D0, 100.0, 101.0, 99.0, 100.5),
    ("AAA", D1, 101.25, 103.0, 100.0, 102.5),
    ("AAA", D2, 102.0, 104.0, 101.0, 103.75),
    ("AAA", D3, 104.0, 105.0, 103.0, 104.5),
    ("BBB", D0, 50.0, 51.0, 49.0, 50.5),
    ("BBB", D1, 50.5, 52.0, 49.5, 51.25),
    ("BBB", D3, 52.0, 53.0, 51.0, 52.5),
]
CLIENT_TIMEOUT_S = 0.3


def _frame() -> pl.DataFrame:
    cols = list(zip(*BARS, strict=True))
    return pl.DataFrame(
        {
            "symbol": cols[0],
            "ts": cols[1],
            "open": cols[2],
            "high": cols[3],
            "low": cols[4],
            "close": cols[5],
            "volume": [1000.0] * len(BARS),
        }
    )


def _settings(url: str, **extra: object) -> AlpacaTradingSettings:
    values: dict[str, object] = {
        "APCA_PAPER_API_KEY_ID": KEY,
        "APCA_PAPER_API_SECRET_KEY": SECRET,
        "KRONOS_ALPACA_TRADING_URL": url,
        "KRONOS_ALPACA_TIMEOUT_S": CLIENT_TIMEOUT_S,
        **extra,
    }
    return AlpacaTradingSettings(**values)  # type: ignore[call-arg]


def _order(
    coid: str, symbol: str = "AAA", qty: float = 10, side: str = "buy", **kw
) -> OrderRequest:
    return OrderRequest(client_order_id=coid, symbol=symbol, side=side, qty=qty, **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Alpaca variables, and a cwd whose .env the test controls."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def market() -> FakeMarket:
    return FakeMarket.from_bars(_frame(), cash=100_000.0)


def _serve(market: FakeMarket, **kw) -> FakeAlpacaServer:
    kw.setdefault("faults", FaultConfig(timeout_s=2.0))
    return FakeAlpacaServer(None, KEY, SECRET, market=market, **kw)


@pytest.fixture
def server(market: FakeMarket) -> Iterator[FakeAlpacaServer]:
    with _serve(market, faults=FaultConfig(retry_after_s=2, timeout_s=2.0)) as fake:
        yield fake


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def broker(server: FakeAlpacaServer, waits: list[float]) -> AlpacaBroker:
    return AlpacaBroker(
        _settings(server.url), attempts=3, backoff_s=0.25, max_wait_s=5.0, sleep=waits.append
    )


# --- the contract ------------------------------------------------------------------


def test_broker_satisfies_the_contract(broker: AlpacaBroker) -> None:
    assert isinstance(broker, Broker)
    assert broker.name == "alpaca"


def test_initial_account_positions_clock(broker: AlpacaBroker) -> None:
    acct = broker.account()
    assert (acct.nav, acct.cash, acct.buying_power) == (100_000.0, 100_000.0, 100_000.0)
    assert broker.positions() == []
    assert broker.open_orders() == []
    clock = broker.clock()
    assert clock.now == datetime(2024, 3, 5, 1, 0, tzinfo=UTC)  # 8:00pm ET on D0
    assert not clock.is_open
    assert clock.next_open == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
    assert clock.next_close == datetime(2024, 3, 5, 21, 0, tzinfo=UTC)
    assert clock.now.tzinfo is not None and clock.now.utcoffset() == timedelta(0)


def test_market_buy_fills_at_next_open_with_exact_cash(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    placed = broker.submit(_order("buy-aaa"))
    assert (placed.status, placed.order_type, placed.qty, placed.filled_qty) == (
        "accepted",
        "market",
        10.0,
        0.0,
    )
    assert placed.submitted_at == datetime(2024, 3, 5, 1, 0, tzinfo=UTC)
    assert [o.client_order_id for o in broker.open_orders()] == ["buy-aaa"]
    assert broker.account().buying_power == 100_000.0 - 10 * 100.5  # committed at the last price

    server.advance()  # open of D1: fills at its open, 101.25
    done = broker.order("buy-aaa")
    assert done is not None and done.is_terminal
    assert (done.status, done.filled_qty, done.filled_avg_price) == ("filled", 10.0, 101.25)
    assert broker.open_orders() == []
    [position] = broker.positions()
    assert (position.symbol, position.qty, position.avg_price) == ("AAA", 10.0, 101.25)
    assert position.market_value == 1012.5  # marked at the open
    acct = broker.account()
    assert acct.cash == 100_000.0 - 1012.5 == acct.buying_power
    assert acct.nav == 100_000.0

    server.advance()  # close of D1: marked at 102.5
    assert broker.positions()[0].market_value == 1025.0
    assert broker.account().nav == 100_000.0 - 1012.5 + 1025.0

    [fill] = broker.fills_since(datetime(2024, 3, 1, tzinfo=UTC))
    assert (fill.client_order_id, fill.broker_order_id) == ("buy-aaa", placed.broker_order_id)
    assert (fill.symbol, fill.side, fill.qty, fill.price, fill.commission) == (
        "AAA",
        "buy",
        10.0,
        101.25,
        0.0,
    )
    assert fill.filled_at == datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
    assert broker.fills_since(fill.filled_at) == [fill]  # "at or after"; the id is stable
    assert broker.fills_since(fill.filled_at + timedelta(microseconds=1)) == []


def test_market_order_placed_while_open_fills_at_the_close(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    server.advance()
    assert broker.clock().is_open
    assert broker.submit(_order("m", symbol="BBB", qty=4)).status == "new"
    server.advance()
    done = broker.order("m")
    assert done is not None and (done.status, done.filled_avg_price) == ("filled", 51.25)
    assert broker.account().cash == 100_000.0 - 4 * 51.25


def test_limit_orders_fill_expire_or_stay(broker: AlpacaBroker, server: FakeAlpacaServer) -> None:
    broker.submit(_order("at-open", qty=2, order_type="limit", limit_price=101.5))
    broker.submit(_order("in-session", qty=2, order_type="limit", limit_price=100.5))
    broker.submit(_order("too-low-day", qty=2, order_type="limit", limit_price=99.0))
    broker.submit(
        _order("too-low-gtc", qty=2, order_type="limit", limit_price=99.0, time_in_force="gtc")
    )
    assert broker.account().buying_power == 100_000.0 - 2 * (101.5 + 100.5 + 99.0 + 99.0)
    server.advance()  # open D1 at 101.25
    assert broker.order("at-open").filled_avg_price == 101.25  # type: ignore[union-attr]
    assert broker.order("in-session").status == "new"  # type: ignore[union-attr]
    server.advance()  # close D1: low 100 touches 100.5
    statuses = {
        coid: (o.status, o.filled_avg_price)
        for coid in ("at-open", "in-session", "too-low-day", "too-low-gtc")
        if (o := broker.order(coid)) is not None
    }
    assert statuses == {
        "at-open": ("filled", 101.25),
        "in-session": ("filled", 100.5),
        "too-low-day": ("expired", None),
        "too-low-gtc": ("new", None),
    }
    assert [o.client_order_id for o in broker.open_orders()] == ["too-low-gtc"]
    [position] = broker.positions()
    assert (position.qty, position.avg_price) == (4.0, (2 * 101.25 + 2 * 100.5) / 4)
    assert broker.account().cash == 100_000.0 - 2 * 101.25 - 2 * 100.5


def test_limit_sells_and_position_arithmetic(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    broker.submit(_order("b1", qty=6))
    server.advance()  # bought 6 at 101.25
    broker.submit(_order("b2", qty=2))
    server.advance()  # bought 2 at the close, 102.5
    [position] = broker.positions()
    assert (position.qty, position.avg_price) == (8.0, (6 * 101.25 + 2 * 102.5) / 8)
    broker.submit(_order("s-high", side="sell", qty=3, order_type="limit", limit_price=104.5))
    broker.submit(_order("s-mid", side="sell", qty=5, order_type="limit", limit_price=103.0))
    server.advance()  # open D2 at 102: neither
    server.advance()  # close D2: high 104 reaches 103 (fills at 103), not 104.5 (expires)
    assert broker.order("s-mid").filled_avg_price == 103.0  # type: ignore[union-attr]
    assert broker.order("s-high").status == "expired"  # type: ignore[union-attr]
    [position] = broker.positions()
    assert (position.qty, position.avg_price) == (3.0, (6 * 101.25 + 2 * 102.5) / 8)
    assert broker.account().cash == 100_000.0 - 6 * 101.25 - 2 * 102.5 + 5 * 103.0
    broker.submit(_order("s-rest", side="sell", qty=3))
    server.advance()
    assert broker.positions() == []
    sides = [
        (f.client_order_id, f.side) for f in broker.fills_since(datetime(2024, 3, 4, tzinfo=UTC))
    ]
    assert sides == [("b1", "buy"), ("b2", "buy"), ("s-mid", "sell"), ("s-rest", "sell")]


def test_symbol_without_a_bar_does_not_trade_and_day_order_expires(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    server.advance()
    server.advance()  # closed D1
    broker.submit(_order("bbb", symbol="BBB", qty=1))
    server.advance()
    server.advance()  # D2 has no BBB bar
    order = broker.order("bbb")
    assert order is not None and (order.status, order.filled_qty) == ("expired", 0.0)


def test_bracket_is_sent_as_an_alpaca_bracket(
    broker: AlpacaBroker, server: FakeAlpacaServer, market: FakeMarket
) -> None:
    placed = broker.submit(
        _order(
            "br",
            qty=3,
            order_type="bracket",
            limit_price=101.5,
            take_profit=110.0,
            stop_loss=95.0,
        )
    )
    assert (placed.order_type, placed.limit_price) == ("bracket", 101.5)
    [sent] = [r.body for r in server.requests_to("/v2/orders") if r.method == "POST"]
    assert sent["order_class"] == "bracket" and sent["type"] == "limit"
    assert sent["take_profit"] == {"limit_price": 110.0}
    assert sent["stop_loss"] == {"stop_price": 95.0}
    assert sent["qty"] == 3  # whole shares go out as an integer
    booked = market.order_by_client_id("br")
    assert booked is not None and (booked.take_profit, booked.stop_loss) == (110.0, 95.0)
    server.advance()
    assert broker.order("br").filled_avg_price == 101.25  # type: ignore[union-attr]


def test_bad_bracket_is_refused_by_the_fake(broker: AlpacaBroker) -> None:
    with pytest.raises(OrderRejected, match="take_profit"):
        broker.submit(
            _order("br", order_type="bracket", limit_price=101.5, take_profit=101.5, stop_loss=95.0)
        )


def test_cancel(broker: AlpacaBroker, server: FakeAlpacaServer) -> None:
    broker.submit(_order("c", order_type="limit", limit_price=90.0, time_in_force="gtc"))
    broker.cancel("c")
    assert broker.order("c").status == "canceled"  # type: ignore[union-attr]
    assert broker.open_orders() == []
    broker.cancel("c")  # already terminal: no error
    broker.cancel("never-placed")  # unknown: nothing to cancel
    broker.submit(_order("f", qty=1))
    server.advance()
    broker.cancel("f")  # filled meanwhile
    assert broker.order("f").status == "filled"  # type: ignore[union-attr]
    assert len(server.requests_to(f"/v2/orders/{broker.order('f').broker_order_id}")) == 0  # type: ignore[union-attr]


def test_cancel_faults(broker: AlpacaBroker, server: FakeAlpacaServer) -> None:
    broker.submit(_order("c", order_type="limit", limit_price=90.0, time_in_force="gtc"))
    server.inject("500", method="DELETE")
    with pytest.raises(AmbiguousOutcome):
        broker.cancel("c")
    assert broker.order("c").status == "accepted"  # type: ignore[union-attr]  # 500: not done
    server.inject("timeout", method="DELETE")
    with pytest.raises(AmbiguousOutcome):
        broker.cancel("c")
    assert broker.order("c").status == "canceled"  # type: ignore[union-attr]  # done, unseen


def test_unknown_order_is_none(broker: AlpacaBroker) -> None:
    assert broker.order("no-such-order") is None


def test_open_orders_paginates(
    broker: AlpacaBroker, monkeypatch: pytest.MonkeyPatch, server: FakeAlpacaServer
) -> None:
    monkeypatch.setattr(alpaca_broker, "_PAGE", 2)
    for i in range(5):
        broker.submit(_order(f"o{i}", qty=1, order_type="limit", limit_price=90.0))
    before = len(server.requests_to("/v2/orders"))
    assert [o.client_order_id for o in broker.open_orders()] == [f"o{i}" for i in range(5)]
    pages = server.requests_to("/v2/orders")[before:]
    assert len(pages) > 2  # pages overlap by one order (ties at the boundary are kept)
    assert all(r.method == "GET" and r.query["limit"] == "2" for r in pages)


def test_fills_since_paginates(
    broker: AlpacaBroker, monkeypatch: pytest.MonkeyPatch, server: FakeAlpacaServer
) -> None:
    monkeypatch.setattr(alpaca_broker, "_FILL_PAGE", 2)
    for i in range(5):
        broker.submit(_order(f"o{i}", qty=1))
    server.advance()
    fills = broker.fills_since(datetime(2024, 3, 5, 15, tzinfo=UTC))
    assert [f.client_order_id for f in fills] == [f"o{i}" for i in range(5)]
    assert len({f.fill_id for f in fills}) == 5
    assert len(server.requests_to("/v2/account/activities/FILL")) == 3


def test_fills_since_refuses_naive_datetimes(broker: AlpacaBroker) -> None:
    with pytest.raises(ValueError, match="naive"):
        broker.fills_since(datetime(2024, 3, 5))


# --- refusals ----------------------------------------------------------------------


def test_insufficient_buying_power_is_rejected(broker: AlpacaBroker) -> None:
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        broker.submit(_order("big", qty=1000))  # 1000 x 100.5 > 100,000
    assert broker.order("big") is None
    broker.submit(_order("fits", qty=995))  # 99,997.5
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        broker.submit(_order("more", symbol="BBB", qty=1))  # open buys count


def test_selling_more_than_held_is_rejected(broker: AlpacaBroker, server: FakeAlpacaServer) -> None:
    with pytest.raises(OrderRejected, match="insufficient qty available"):
        broker.submit(_order("short", side="sell", qty=1))
    broker.submit(_order("b", qty=5))
    server.advance()
    broker.submit(_order("s1", side="sell", qty=3, order_type="limit", limit_price=200.0))
    with pytest.raises(OrderRejected, match=r"requested: 3, available: 2"):
        broker.submit(_order("s2", side="sell", qty=3))


def test_unknown_symbol_and_sub_penny_price_are_rejected(broker: AlpacaBroker) -> None:
    with pytest.raises(OrderRejected, match="ZZZ"):
        broker.submit(_order("z", symbol="ZZZ"))
    with pytest.raises(OrderRejected, match="sub-penny"):
        broker.submit(_order("p", order_type="limit", limit_price=100.123))


def test_fractional_limit_is_refused_before_sending(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    with pytest.raises(OrderRejected, match="fractional"):
        broker.submit(_order("frac", qty=1.5, order_type="limit", limit_price=100.0))
    assert server.requests_to("/v2/orders") == []
    assert broker.submit(_order("frac-mkt", qty=1.5)).qty == 1.5  # market day: allowed


def test_duplicate_client_order_id(
    broker: AlpacaBroker, server: FakeAlpacaServer, market: FakeMarket
) -> None:
    broker.submit(_order("dup", qty=1))
    with pytest.raises(DuplicateOrder, match="client_order_id must be unique"):
        broker.submit(_order("dup", qty=1))
    assert [o.client_order_id for o in market.orders()].count("dup") == 1
    stats = server.stats
    assert (stats.orders_accepted, stats.duplicates_refused) == (1, 1)


def test_wrong_secret_is_a_broker_error(server: FakeAlpacaServer) -> None:
    bad = AlpacaBroker(
        _settings(server.url, APCA_PAPER_API_SECRET_KEY="wrong"), sleep=lambda s: None
    )
    with pytest.raises(BrokerError, match="401"):
        bad.account()
    with pytest.raises(BrokerError, match="401"):  # the venue checks read the account first
        bad.submit(_order("x"))


# --- faults ------------------------------------------------------------------------


def test_429_waits_retry_after_then_succeeds(
    broker: AlpacaBroker, server: FakeAlpacaServer, waits: list[float]
) -> None:
    server.inject("429", path="/v2/account", times=2)
    assert broker.account().cash == 100_000.0
    assert waits == [2.0, 2.0]  # the server's Retry-After, not alpaca-py's fixed 3 s
    server.inject("429", method="POST", path="/v2/orders")
    broker.submit(_order("after-429"))
    assert waits == [2.0, 2.0, 2.0]
    assert server.stats.faults == {"429": 3}
    assert server.stats.orders_accepted == 1


def test_429_forever_is_broker_unavailable(
    broker: AlpacaBroker, server: FakeAlpacaServer, waits: list[float], market: FakeMarket
) -> None:
    server.inject("429", times=3)
    with pytest.raises(BrokerUnavailable, match="429"):
        broker.positions()
    assert waits == [2.0, 2.0]
    server.inject("429", times=3)
    with pytest.raises(BrokerUnavailable):
        broker.submit(_order("limited"))
    assert market.orders() == []


def test_retry_after_is_capped(market: FakeMarket) -> None:
    waits: list[float] = []
    with _serve(market, faults=FaultConfig(retry_after_s=3600)) as server:
        broker = AlpacaBroker(_settings(server.url), max_wait_s=5.0, sleep=waits.append)
        server.inject("429")
        broker.clock()
    assert waits == [5.0]


def test_5xx_on_reads_is_retried_with_backoff(
    broker: AlpacaBroker, server: FakeAlpacaServer, waits: list[float]
) -> None:
    server.inject("500", path="/v2/positions")
    server.inject("503", path="/v2/positions")
    assert broker.positions() == []
    assert waits == [0.25, 0.5]
    server.inject("503", times=3)
    with pytest.raises(BrokerUnavailable, match="503"):
        broker.open_orders()


def test_500_on_submit_is_ambiguous_and_nothing_was_placed(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    server.inject("500", method="POST")
    with pytest.raises(AmbiguousOutcome):
        broker.submit(_order("maybe"))
    assert broker.order("maybe") is None
    assert broker.submit(_order("maybe")).client_order_id == "maybe"  # now safe to resubmit


def test_504_after_accept_is_ambiguous_and_the_order_exists(
    broker: AlpacaBroker, server: FakeAlpacaServer, market: FakeMarket
) -> None:
    server.inject("504_after_accept")
    with pytest.raises(AmbiguousOutcome, match="504"):
        broker.submit(_order("gw"))
    found = broker.order("gw")
    assert found is not None and found.status == "accepted"
    with pytest.raises(DuplicateOrder):  # a blind resubmission cannot double the order
        broker.submit(_order("gw"))
    assert len(market.orders()) == 1


def test_timeout_after_accept_is_ambiguous_and_the_order_exists(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    server.inject("timeout", method="POST")
    with pytest.raises(AmbiguousOutcome, match="Timeout"):
        broker.submit(_order("slow"))
    found = broker.order("slow")
    assert found is not None and found.qty == 10.0


def test_timeout_on_a_read_is_retried(
    broker: AlpacaBroker, server: FakeAlpacaServer, waits: list[float]
) -> None:
    server.inject("timeout", path="/v2/account")
    assert broker.account().nav == 100_000.0
    assert waits == [0.25]
    assert len(server.requests_to("/v2/account")) == 2


def test_reject_fault_is_order_rejected(broker: AlpacaBroker, server: FakeAlpacaServer) -> None:
    server.inject("reject")
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        broker.submit(_order("unlucky", qty=1))
    assert broker.order("unlucky") is None
    assert server.stats.faults == {"reject": 1}


def test_partial_fill_then_fill_at_the_close(
    broker: AlpacaBroker, server: FakeAlpacaServer
) -> None:
    broker.submit(_order("part", qty=10))
    server.inject("partial")
    server.advance()  # open D1: 5 of 10 at 101.25
    order = broker.order("part")
    assert order is not None and (order.status, order.filled_qty) == ("partially_filled", 5.0)
    assert [o.client_order_id for o in broker.open_orders()] == ["part"]
    assert broker.positions()[0].qty == 5.0
    server.advance()  # close D1: the other 5 at 102.5
    order = broker.order("part")
    assert order is not None and (order.status, order.filled_qty) == ("filled", 10.0)
    assert order.filled_avg_price == (5 * 101.25 + 5 * 102.5) / 10
    fills = broker.fills_since(datetime(2024, 3, 5, tzinfo=UTC))
    assert [(f.qty, f.price) for f in fills] == [(5.0, 101.25), (5.0, 102.5)]
    assert broker.account().cash == 100_000.0 - 5 * 101.25 - 5 * 102.5
    assert (server.stats.fills, server.stats.partial_fills) == (2, 1)


def test_partial_fills_then_expiry(broker: AlpacaBroker, server: FakeAlpacaServer) -> None:
    broker.submit(_order("part", qty=10, order_type="limit", limit_price=101.5))
    server.inject("partial", times=2)
    server.advance()  # 5 at the open
    server.advance()  # 2 more (floor(5 x 0.5)) in the session, then the day order expires
    order = broker.order("part")
    assert order is not None and (order.status, order.filled_qty) == ("expired", 7.0)
    assert order.filled_avg_price == (5 * 101.25 + 2 * 101.25) / 7
    assert broker.positions()[0].qty == 7.0
    assert broker.account().buying_power == broker.account().cash  # nothing committed


def test_connection_refused_is_unavailable(waits: list[float]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = AlpacaBroker(_settings(f"http://127.0.0.1:{port}"), attempts=2, sleep=waits.append)
    with pytest.raises(BrokerUnavailable):
        broker.clock()
    with pytest.raises(BrokerUnavailable):  # never reached a server: surely not placed
        broker.submit(_order("nowhere"))


def test_faulted_clock_requests_do_not_advance(market: FakeMarket) -> None:
    with _serve(market, advance_on_clock=True) as server:
        broker = AlpacaBroker(_settings(server.url), sleep=lambda s: None)
        server.inject("503", path="/v2/clock")
        server.inject("429", path="/v2/clock")
        first = broker.clock()
        assert (first.now, first.is_open) == (datetime(2024, 3, 5, 15, tzinfo=UTC), True)
        assert (market.session, market.phase) == (D1, "open")
        et = ZoneInfo("America/New_York")
        clocks = [broker.clock() for _ in range(5)]
        seen = [(c.now.astimezone(et).date(), c.is_open) for c in clocks]
    assert seen == [(D1, False), (D2, True), (D2, False), (D3, True), (D3, False)]
    assert market.finished
    assert not market.advance()


def test_random_faults_are_seeded(market: FakeMarket) -> None:
    def run() -> tuple[dict[str, int], list[str]]:
        fresh = FakeMarket.from_bars(_frame())
        rates = {"429": 0.2, "500": 0.2, "503": 0.1}
        with _serve(fresh, faults=FaultConfig(rates=rates, seed=11)) as server:
            broker = AlpacaBroker(_settings(server.url), attempts=10, sleep=lambda s: None)
            outcomes = []
            for _ in range(15):
                outcomes.append(str(broker.account().cash))
            return server.stats.faults, outcomes

    first, second = run(), run()
    assert first == second
    assert sum(first[0].values()) > 0
    assert set(first[1]) == {"100000.0"}


# --- settings and secrets ----------------------------------------------------------


def test_live_mode_is_refused_without_the_flag(server: FakeAlpacaServer) -> None:
    live = {
        "KRONOS_ALPACA_MODE": "live",
        "APCA_LIVE_API_KEY_ID": KEY,
        "APCA_LIVE_API_SECRET_KEY": SECRET,
    }
    with pytest.raises(AlpacaConfigError, match="KRONOS_ALLOW_LIVE_TRADING=true"):
        AlpacaBroker(_settings(server.url, **live))
    allowed = AlpacaBroker(_settings(server.url, KRONOS_ALLOW_LIVE_TRADING="true", **live))
    assert allowed.mode == "live" and allowed.account().cash == 100_000.0


def test_live_mode_uses_the_live_keys(server: FakeAlpacaServer) -> None:
    settings = _settings(
        server.url,
        KRONOS_ALPACA_MODE="live",
        KRONOS_ALLOW_LIVE_TRADING=" TRUE ",
        APCA_LIVE_API_KEY_ID=LIVE_KEY,
        APCA_LIVE_API_SECRET_KEY=LIVE_SECRET,
    )
    with pytest.raises(BrokerError, match="401"):  # the fake knows the paper keys only
        AlpacaBroker(settings, sleep=lambda s: None).account()


def test_missing_keys_name_the_variables() -> None:
    with pytest.raises(AlpacaConfigError, match="APCA_PAPER_API_KEY_ID, APCA_PAPER_API_SECRET_KEY"):
        AlpacaBroker(AlpacaTradingSettings())  # type: ignore[call-arg]
    live = AlpacaTradingSettings(  # type: ignore[call-arg]
        KRONOS_ALPACA_MODE="live",
        KRONOS_ALLOW_LIVE_TRADING=True,
        APCA_LIVE_API_KEY_ID=LIVE_KEY,
    )
    with pytest.raises(AlpacaConfigError, match=r"set APCA_LIVE_API_SECRET_KEY \("):
        AlpacaBroker(live)


def test_load_settings_from_env_file_beside_other_keys(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text(
        f"APCA_PAPER_API_KEY_ID={KEY}\nAPCA_PAPER_API_SECRET_KEY={SECRET}\n"
        "APCA_API_KEY_ID=data-key\nFMP_API_KEY=other\nKRONOS_ALPACA_TIMEOUT_S=2.5\n"
    )
    settings = load_alpaca_trading_settings(load_settings().alpaca_trading)
    assert settings.paper_key_id is not None and settings.paper_key_id.get_secret_value() == KEY
    assert (settings.mode, settings.timeout_s, settings.trading_url) == ("paper", 2.5, None)
    monkeypatch.setenv("KRONOS_ALPACA_MODE", "LIVE")  # environment beats .env
    with pytest.raises(AlpacaConfigError, match="KRONOS_ALLOW_LIVE_TRADING"):
        load_alpaca_trading_settings(load_settings().alpaca_trading)


def test_load_settings_names_invalid_values(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_PAPER_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_PAPER_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("KRONOS_ALPACA_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match="invalid KRONOS_ALPACA_TIMEOUT_S '-1'") as info:
        load_alpaca_trading_settings(load_settings().alpaca_trading)
    assert SECRET not in str(info.value)
    monkeypatch.delenv("APCA_PAPER_API_SECRET_KEY")
    monkeypatch.delenv("KRONOS_ALPACA_TIMEOUT_S")
    with pytest.raises(AlpacaConfigError, match="set APCA_PAPER_API_SECRET_KEY"):
        load_alpaca_trading_settings(load_settings().alpaca_trading)


def test_keys_never_leak(
    market: FakeMarket,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with _serve(market, faults=FaultConfig(timeout_s=1.0)) as server:
        settings = _settings(server.url)
        broker = AlpacaBroker(settings, attempts=2, backoff_s=0.0)
        texts += [repr(settings), str(settings), repr(broker), str(settings.model_dump())]
        server.inject("429")
        server.inject("500", path="/v2/positions")
        broker.account()
        broker.positions()
        errors: list[BaseException] = []
        for fault in ("504_after_accept", "reject", "timeout"):
            server.inject(fault, method="POST")
            try:
                broker.submit(_order(f"leak-{fault}"))
            except BrokerError as exc:
                errors.append(exc)
        server.inject("503", times=2)
        try:
            broker.clock()
        except BrokerError as exc:
            errors.append(exc)
        wrong = AlpacaBroker(_settings(server.url, APCA_PAPER_API_SECRET_KEY="nope"), attempts=1)
        try:
            wrong.account()
        except BrokerError as exc:
            errors.append(exc)
        for bad in (AlpacaTradingSettings(APCA_PAPER_API_KEY_ID=KEY),):  # type: ignore[call-arg]
            try:
                AlpacaBroker(bad)
            except AlpacaConfigError as exc:
                errors.append(exc)
    assert len(errors) == 6
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    texts += [caplog.text, *capsys.readouterr()]
    assert "retrying" in caplog.text  # the retries were logged
    for text in texts:
        assert KEY not in text and SECRET not in text


# --- the fake on its own -----------------------------------------------------------


def test_fake_market_from_close_only_bars() -> None:
    frame = pl.DataFrame(
        {
            "symbol": ["X", "X", "X", "Y"],
            "ts": [D0, D1, D2, D0],
            "open": [None, None, None, 7.0],
            "close": [None, 11.0, 12.0, 8.0],
            "adj_close": [10.0, 11.5, 12.5, 8.0],
        },
        schema_overrides={"open": pl.Float64, "close": pl.Float64},
    )
    fake = FakeMarket.from_bars(frame, start=D1, cash=1000.0)
    assert fake.sessions == (D1, D2)
    assert fake.mark("X") == 11.0
    assert fake.mark("Y") == 8.0  # seeded from before the start; Y never trades after
    assert fake.symbols == {"X", "Y"}
    order = fake.submit(symbol="X", side="buy", qty=2)
    fake.advance()
    assert fake.order(order.id).filled_avg_price == 12.0  # type: ignore[union-attr]  # o = c
    before = FakeMarket.from_bars(frame, start=D1, phase="open")
    assert before.mark("X") == 11.0 and before.now == datetime(2024, 3, 5, 15, tzinfo=UTC)


def test_fake_refuses_unknown_fault_kinds() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultConfig(rates={"boom": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        FaultConfig(rates={"429": 0.6, "500": 0.6})


def test_trading_client_parses_every_fake_answer(
    server: FakeAlpacaServer, broker: AlpacaBroker
) -> None:
    broker.submit(_order("p", qty=2))
    server.advance()
    client = TradingClient(KEY, SECRET, url_override=server.url)
    assert client.get_account().status == "ACTIVE"
    assert client.get_open_position("AAA").qty == "2"
    assert client.get_clock().is_open
    order = client.get_order_by_client_id("p")
    assert client.get_order_by_id(order.id).client_order_id == "p"
    assert [p.symbol for p in client.get_all_positions()] == ["AAA"]


def test_fake_order_listing_filters(server: FakeAlpacaServer, broker: AlpacaBroker) -> None:
    from alpaca.trading.enums import QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest

    for i in range(3):
        broker.submit(_order(f"o{i}", qty=1, order_type="limit", limit_price=90.0 + i))
    broker.cancel("o1")
    client = TradingClient(KEY, SECRET, url_override=server.url)

    def coids(**kw: object) -> list[str]:
        return [o.client_order_id for o in client.get_orders(GetOrdersRequest(**kw))]

    assert coids() == ["o2", "o0"]  # open, newest first by default
    assert coids(status=QueryOrderStatus.CLOSED) == ["o1"]
    assert coids(status=QueryOrderStatus.ALL, direction="asc", limit=2) == ["o0", "o1"]
    placed = broker.order("o1")
    assert placed is not None
    assert coids(status=QueryOrderStatus.ALL, after=placed.submitted_at) == ["o2"]
    assert coids(status=QueryOrderStatus.ALL, until=placed.submitted_at) == ["o0"]
