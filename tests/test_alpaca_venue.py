"""What Alpaca enforces, enforced by the local fake and respected by the broker and the loop.

One test per venue rule of issue 14 point 9, each against the fake over loopback
through the real alpaca-py client: the live-trading switch, sessions and auction
windows from the exchange calendar, wash-trade cancels, pattern-day-trader
protection, order listings past 500, 429 with ``Retry-After``, partial fills
from per-fill quantities, and each refusal recorded on the loop's order.
Prices are binary fractions so cash arithmetic compares with ``==``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from kronos.calendar import get_calendar
from kronos.config import CalibrationSettings, DecisionSettings, load_settings
from kronos.data.sources.alpaca import AlpacaConfigError
from kronos.data.store import Store
from kronos.execution.brokers.alpaca import (
    AlpacaBroker,
    AlpacaTradingSettings,
    load_alpaca_trading_settings,
)
from kronos.execution.brokers.base import BrokerUnavailable, OrderRejected, OrderRequest
from kronos.execution.brokers.venue import auction_cutoff, retry_after_s
from kronos.execution.paper import PaperConfig, PaperLoop
from kronos.execution.reconcile import positions_from_fills, reconcile, run_prefix
from kronos.testing.fake_alpaca import FakeAlpacaServer, FakeMarket, FaultConfig

KEY, SECRET = "PKVENUEKEY", "venue-secret-not-logged"
XNYS = get_calendar("XNYS")
GOOD_FRIDAY = date(2024, 3, 29)  # an XNYS holiday on a weekday
SESSIONS = XNYS.sessions(date(2024, 3, 25), date(2024, 4, 10))
ACCOUNT = "venue"
RUN_ID = f"{run_prefix(ACCOUNT)}2024-03-25"


def _frame() -> pl.DataFrame:
    rows = []
    for k, day in enumerate(SESSIONS):
        for symbol, base in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 20.0)):
            o = base + 0.5 * k
            rows.append((symbol, day, o, o + 2.0, o - 2.0, o + 0.25))
    cols = list(zip(*rows, strict=True))
    names = ("symbol", "ts", "open", "high", "low", "close")
    return pl.DataFrame(dict(zip(names, cols, strict=True)))


def _market(cash: float = 100_000.0, **kw: object) -> FakeMarket:
    return FakeMarket.from_bars(_frame(), cash=cash, calendar=XNYS, **kw)  # type: ignore[arg-type]


def _settings(url: str, **extra: object) -> AlpacaTradingSettings:
    values: dict[str, object] = {
        "APCA_PAPER_API_KEY_ID": KEY,
        "APCA_PAPER_API_SECRET_KEY": SECRET,
        "KRONOS_ALPACA_TRADING_URL": url,
        "KRONOS_ALPACA_TIMEOUT_S": 0.5,
        **extra,
    }
    return AlpacaTradingSettings(**values)  # type: ignore[call-arg]


def _broker(server: FakeAlpacaServer, waits: list[float] | None = None, **kw) -> AlpacaBroker:
    sleep = waits.append if waits is not None else (lambda _s: None)
    return AlpacaBroker(_settings(server.url), attempts=3, backoff_s=0.01, sleep=sleep, **kw)


def _order(coid: str, symbol: str = "AAA", qty: float = 10, side: str = "buy", **kw):
    return OrderRequest(client_order_id=coid, symbol=symbol, side=side, qty=qty, **kw)  # type: ignore[arg-type]


def _client(server: FakeAlpacaServer) -> TradingClient:
    return TradingClient(KEY, SECRET, url_override=server.url)


def _posts(server: FakeAlpacaServer) -> int:
    return sum(r.method == "POST" for r in server.requests_to("/v2/orders"))


@pytest.fixture
def server() -> Iterator[FakeAlpacaServer]:
    with FakeAlpacaServer(None, KEY, SECRET, market=_market()) as fake:
        yield fake


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("KRONOS_ALPACA_MODE", "KRONOS_ALLOW_LIVE_TRADING", "APCA_LIVE_API_KEY_ID",
                 "APCA_LIVE_API_SECRET_KEY", "APCA_PAPER_API_KEY_ID",
                 "APCA_PAPER_API_SECRET_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the user


# --- point 8: the live-trading switch ---------------------------------------------


@pytest.mark.parametrize(
    ("flag", "unlocked"),
    [("true", True), ("TRUE", True), ("  True\t", True), ("1", False), ("yes", False),
     ("on", False), ("True1", False), ("t", False), ("false", False), ("", False)],
)  # fmt: skip
def test_only_true_unlocks_live_trading(
    monkeypatch: pytest.MonkeyPatch, flag: str, unlocked: bool
) -> None:
    monkeypatch.setenv("KRONOS_ALPACA_MODE", "live")
    monkeypatch.setenv("APCA_LIVE_API_KEY_ID", "AKLIVE")
    monkeypatch.setenv("APCA_LIVE_API_SECRET_KEY", "live-secret")
    monkeypatch.setenv("KRONOS_ALLOW_LIVE_TRADING", flag)
    if unlocked:
        assert load_alpaca_trading_settings(load_settings().alpaca_trading).mode == "live"
        return
    with pytest.raises(AlpacaConfigError) as info:
        load_alpaca_trading_settings(load_settings().alpaca_trading)
    message = str(info.value)
    assert "KRONOS_ALLOW_LIVE_TRADING" in message and repr(flag) in message
    assert "live-secret" not in message


def test_unset_live_flag_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONOS_ALPACA_MODE", "live")
    with pytest.raises(AlpacaConfigError, match="KRONOS_ALLOW_LIVE_TRADING is unset"):
        load_alpaca_trading_settings(load_settings().alpaca_trading)
    monkeypatch.setenv("KRONOS_ALPACA_MODE", "paper")  # paper mode ignores the flag
    monkeypatch.setenv("KRONOS_ALLOW_LIVE_TRADING", "yes")
    monkeypatch.setenv("APCA_PAPER_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_PAPER_API_SECRET_KEY", SECRET)
    assert load_alpaca_trading_settings(load_settings().alpaca_trading).mode == "paper"


# --- point 9: the clock and the calendar --------------------------------------------


def test_fake_sessions_come_from_the_exchange_calendar() -> None:
    market = _market()
    assert GOOD_FRIDAY not in market.sessions
    assert market.sessions == tuple(SESSIONS)
    while market.session != date(2024, 3, 28):
        market.advance()
    clock = market.clock()  # open, Thursday before Good Friday (EDT: 9:30 = 13:30Z)
    assert (clock.now, clock.is_open) == (datetime(2024, 3, 28, 14, 0, tzinfo=UTC), True)
    assert clock.next_close == datetime(2024, 3, 28, 20, 0, tzinfo=UTC)
    market.advance()
    clock = market.clock()  # 8:00pm ET; the next open skips the holiday and the weekend
    assert clock.now == datetime(2024, 3, 29, 0, 0, tzinfo=UTC) and not clock.is_open
    assert clock.next_open == datetime(2024, 4, 1, 13, 30, tzinfo=UTC)
    market.advance()
    assert market.session == date(2024, 4, 1)
    holiday = _frame().with_columns(pl.lit(GOOD_FRIDAY).alias("ts")).head(1)
    with pytest.raises(ValueError, match="2024-03-29"):
        FakeMarket.from_bars(pl.concat([_frame(), holiday]), calendar=XNYS)
    # an early close (the day after Thanksgiving closes at 1:00pm ET)
    early = FakeMarket([date(2024, 11, 29)], {}, phase="open", calendar=XNYS)
    assert early.clock().next_close == datetime(2024, 11, 29, 18, 0, tzinfo=UTC)


def test_auction_orders_only_in_their_window(server: FakeAlpacaServer) -> None:
    broker, market, client = _broker(server), server.market, _client(server)
    assert market is not None and market.phase == "closed"  # 8:00pm ET: opg/cls accepted
    day = broker.submit(_order("day-queued", qty=1))
    assert day.status == "accepted"  # a day order after hours queues for the next open
    moo = broker.submit(_order("moo", qty=2, time_in_force="opg"))
    loo = broker.submit(
        _order("loo", qty=2, order_type="limit", limit_price=90.0, time_in_force="opg")
    )
    assert moo.time_in_force == loo.time_in_force == "opg"
    server.advance()  # the open of 2024-03-26 at 100.5: the auction fills moo, cancels loo
    assert (broker.order("moo").status, broker.order("moo").filled_avg_price) == ("filled", 100.5)  # type: ignore[union-attr]
    assert broker.order("loo").status == "canceled"  # type: ignore[union-attr]
    assert broker.order("day-queued").status == "filled"  # type: ignore[union-attr]

    posts = _posts(server)  # 10:00am ET: after the 9:28 cut-off
    with pytest.raises(OrderRejected, match="opg orders from 09:28 to 19:00") as info:
        broker.submit(_order("late-moo", qty=1, time_in_force="opg"))
    assert info.value.kind == "market_closed" and _posts(server) == posts  # never sent
    with pytest.raises(APIError) as venue:  # and the fake refuses what a client sends anyway
        client.submit_order(
            MarketOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, time_in_force="opg")
        )
    assert venue.value.status_code == 422 and "opg" in venue.value.message
    moc = broker.submit(_order("moc", qty=1, time_in_force="cls"))  # before 3:50pm: accepted
    server.advance()  # the close at 100.75
    assert broker.order(moc.client_order_id).filled_avg_price == 100.75  # type: ignore[union-attr]
    assert (
        client.submit_order(  # 8:00pm ET: a cls order queues for the next close
            MarketOrderRequest(
                symbol="AAA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.CLS
            )
        ).status.value
        == "accepted"
    )


def test_auction_cutoffs_follow_alpaca_times() -> None:
    from zoneinfo import ZoneInfo

    def at(day: date, hh: int, mm: int) -> datetime:
        return datetime(day.year, day.month, day.day, hh, mm, tzinfo=ZoneInfo("America/New_York"))

    thu, fri_early = date(2024, 3, 28), date(2024, 11, 29)  # a full day; a 1:00pm close
    assert auction_cutoff("opg", at(thu, 9, 27), XNYS) is None
    assert "09:28" in (auction_cutoff("opg", at(thu, 9, 28), XNYS) or "")
    assert auction_cutoff("opg", at(thu, 19, 0), XNYS) is None  # queued for the next open
    assert auction_cutoff("cls", at(thu, 15, 49), XNYS) is None
    assert "15:50" in (auction_cutoff("cls", at(thu, 15, 50), XNYS) or "")
    assert "12:50" in (auction_cutoff("cls", at(fri_early, 12, 55), XNYS) or "")
    assert auction_cutoff("opg", at(GOOD_FRIDAY, 12, 0), XNYS) is None  # no session: queued
    assert auction_cutoff("day", at(thu, 12, 0), XNYS) is None


# --- point 9: wash trades -----------------------------------------------------------


def test_opposite_order_is_cancelled_before_a_new_one(server: FakeAlpacaServer) -> None:
    broker, client = _broker(server), _client(server)
    broker.submit(_order("own", qty=10))
    server.advance()  # bought 10 at the open
    broker.submit(
        _order("take-profit", side="sell", qty=10, order_type="limit", limit_price=150.0,
               time_in_force="gtc")
    )  # fmt: skip
    # the venue refuses a buy that could trade against the open sell
    with pytest.raises(APIError) as venue:
        client.submit_order(
            MarketOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, time_in_force="day")
        )
    assert venue.value.status_code == 403
    body = venue.value.response.json()
    assert body["message"] == "potential wash trade detected. use complex orders"
    assert body["existing_order_id"] == broker.order("take-profit").broker_order_id  # type: ignore[union-attr]
    strict = _broker(server, cancel_opposite=False)
    with pytest.raises(OrderRejected, match="wash trade") as info:
        strict.submit(_order("more", qty=1))
    assert info.value.kind == "wash_trade"
    # a limit buy that cannot reach the sell's price is no wash trade: nothing cancelled
    broker.submit(_order("dip", qty=1, order_type="limit", limit_price=95.0))
    assert broker.order("take-profit").status == "new"  # type: ignore[union-attr]
    # the broker cancels the crossing sell first, then places the buy
    placed = broker.submit(_order("more", qty=1))
    assert placed.status == "new"
    assert broker.order("take-profit").status == "canceled"  # type: ignore[union-attr]
    kinds = [(r.method, r.path.split("/")[-1]) for r in server.requests if r.method != "GET"]
    assert kinds[-2:] == [
        ("DELETE", broker.order("take-profit").broker_order_id),
        ("POST", "orders"),
    ]  # type: ignore[union-attr]


# --- point 9: pattern-day-trader protection -----------------------------------------


def _day_trade(broker: AlpacaBroker, server: FakeAlpacaServer, n: int) -> None:
    broker.submit(_order(f"b{n}", qty=10))
    server.advance()  # open: bought
    broker.submit(_order(f"s{n}", side="sell", qty=10))
    server.advance()  # close: sold the same session


def test_fourth_day_trade_under_25k_is_refused() -> None:
    with FakeAlpacaServer(None, KEY, SECRET, market=_market(cash=20_000.0)) as server:
        broker, client, market = _broker(server), _client(server), server.market
        assert market is not None
        for n in range(3):
            _day_trade(broker, server, n)
        assert client.get_account().daytrade_count == 3
        broker.submit(_order("b3", qty=10))
        server.advance()  # bought again today
        posts = _posts(server)
        with pytest.raises(OrderRejected, match="pattern day trading") as info:
            broker.submit(_order("s3", side="sell", qty=10))
        assert info.value.kind == "pattern_day_trader" and _posts(server) == posts
        with pytest.raises(APIError) as venue:  # the fake refuses it too
            client.submit_order(
                MarketOrderRequest(symbol="AAA", qty=10, side=OrderSide.SELL, time_in_force="day")
            )
        assert venue.value.status_code == 403
        assert venue.value.message == "trade denied due to pattern day trading protection"
        broker.submit(_order("other", symbol="BBB", qty=1))  # no day trade: allowed
        server.advance()
        broker.submit(_order("s3-next-day", side="sell", qty=10))  # after the close: allowed
        for _ in range(5):  # day trades of sessions 1 and 2 leave the 5-session window
            server.advance()
        assert (market.session_index, client.get_account().daytrade_count) == (7, 1)
        server.advance()
        server.advance()
        assert (market.session_index, client.get_account().daytrade_count) == (8, 0)


def test_day_trades_are_free_at_25k_or_more() -> None:
    with FakeAlpacaServer(None, KEY, SECRET, market=_market(cash=30_000.0)) as server:
        broker = _broker(server)
        for n in range(4):
            _day_trade(broker, server, n)
        assert _client(server).get_account().daytrade_count == 4


# --- point 9: listings past 500 -----------------------------------------------------


def test_open_orders_are_read_past_500(server: FakeAlpacaServer) -> None:
    market = server.market
    assert market is not None
    for i in range(520):  # booked straight into the fake: fast
        market.submit(symbol="BBB", side="buy", qty=1, order_type="limit", limit_price=40.0,
                      time_in_force="gtc", client_order_id=f"o{i:03d}")  # fmt: skip
    broker = _broker(server)
    listed = broker.open_orders()
    assert [o.client_order_id for o in listed] == [f"o{i:03d}" for i in range(520)]
    pages = [r for r in server.requests_to("/v2/orders") if r.method == "GET"]
    assert len(pages) == 2 and all(r.query["limit"] == "500" for r in pages)
    raw = requests.get(
        f"{server.url}/v2/orders",
        params={"status": "open", "limit": 1000},
        headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET},
        timeout=5,
    )
    assert raw.status_code == 200 and len(raw.json()) == 500  # the venue's page cap


# --- point 9: HTTP 429 --------------------------------------------------------------


def test_429_waits_what_retry_after_says_and_is_bounded() -> None:
    waits: list[float] = []
    faults = FaultConfig(retry_after_s=1.5)
    with FakeAlpacaServer(None, KEY, SECRET, market=_market(), faults=faults) as server:
        broker = AlpacaBroker(_settings(server.url), attempts=3, max_wait_s=2.0, sleep=waits.append)
        server.inject("429", path="/v2/account", times=2)
        assert broker.account().cash == 100_000.0
        assert waits == [1.5, 1.5]  # Retry-After, not alpaca-py's fixed 3 s
        assert len(server.requests_to("/v2/account")) == 3  # alpaca-py did not retry on its own
        server.faults.config = FaultConfig(retry_after_s=3600)
        server.inject("429", method="POST", path="/v2/orders", times=3)
        with pytest.raises(BrokerUnavailable, match="rate limited"):
            broker.submit(_order("limited", qty=1))
        assert waits[2:] == [2.0, 2.0]  # capped: at most (attempts - 1) x max_wait_s
        assert server.market is not None and server.market.orders() == []
    now = datetime(2024, 3, 26, 15, 0, tzinfo=UTC)
    reset = {"X-RateLimit-Reset": str(int((now + timedelta(seconds=7)).timestamp()))}
    assert retry_after_s(reset, now) == 7.0  # Alpaca's reset header when Retry-After is absent
    assert retry_after_s({"Retry-After": "Tue, 26 Mar 2024 15:00:04 GMT"}, now) == 4.0
    assert retry_after_s({}, now) is None


# --- point 9: partial fills and rejections, through the loop ------------------------


def _plan(store: Store, *orders: tuple[str, str, str, float, str, float | None]) -> None:
    """Planned orders of one run: (client_order_id, symbol, side, qty, type, limit)."""
    store.con.executemany(
        'INSERT INTO orders (client_order_id, run_id, "asof", symbol, side, qty, order_type, '
        "limit_price, intent, status, broker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'rebalance', "
        "'planned', 'alpaca')",
        [(c, RUN_ID, datetime(2024, 3, 25, tzinfo=UTC), s, side, q, t, lim)
         for c, s, side, q, t, lim in orders],
    )  # fmt: skip


def _loop(store: Store, broker: AlpacaBroker) -> PaperLoop:
    return PaperLoop(
        store,
        broker,
        PaperConfig(
            account=ACCOUNT,
            symbols=("AAA", "BBB", "CCC"),
            calibration=CalibrationSettings(),
            settings=DecisionSettings(),
        ),
    )


def _record(store: Store, cid: str) -> tuple[str, str | None]:
    return store.con.execute(
        "SELECT status, reason FROM orders WHERE client_order_id = ?", [cid]
    ).fetchall()[0]


def test_partial_fills_are_booked_per_fill(store: Store, server: FakeAlpacaServer) -> None:
    broker, market = _broker(server), server.market
    assert market is not None
    _plan(store, ("p-aaa", "AAA", "buy", 10, "market", None),
          ("p-bbb", "BBB", "buy", 8, "market", None))  # fmt: skip
    assert _loop(store, broker)._submit(RUN_ID, market.now)[:2] == (2, 0)
    server.inject("partial", times=3)
    server.advance()  # open: AAA 5 of 10 at 100.5, BBB 4 of 8 at 50.5
    server.advance()  # close: AAA 2 of 5 at 100.75 (the rest expires), BBB 4 at 50.75
    rec = reconcile(store, broker, ACCOUNT, SESSIONS[1], market.now)
    fills = store.con.execute(
        "SELECT symbol, qty, price FROM fills ORDER BY filled_at, symbol"
    ).fetchall()
    assert fills == [("AAA", 5.0, 100.5), ("BBB", 4.0, 50.5), ("AAA", 2.0, 100.75),
                     ("BBB", 4.0, 50.75)]  # fmt: skip
    assert positions_from_fills(store, ACCOUNT) == {"AAA": 7.0, "BBB": 8.0}
    assert {p.symbol: p.qty for p in broker.positions()} == {"AAA": 7.0, "BBB": 8.0}
    spent = sum(q * p for _s, q, p in fills)
    assert broker.account().cash == 100_000.0 - spent == rec.account.cash
    assert rec.mismatches == 0
    assert _record(store, "p-aaa") == ("expired", None)
    assert _record(store, "p-bbb") == ("filled", None)


REJECTIONS = {  # case: (venue rule, the refused planned order, words of the reason)
    "buying_power": ("buying_power", ("r", "AAA", "buy", 5000, "market", None),
                     "insufficient buying power"),
    "not_tradable": ("not_tradable", ("r", "CCC", "buy", 1, "market", None), "not tradable"),
    "sub_penny": ("invalid", ("r", "AAA", "buy", 1, "limit", 100.123), "HTTP 422"),
    "zero_qty": ("invalid", ("r", "AAA", "buy", 0, "market", None), "qty must be positive"),
    "fractional_limit": ("invalid", ("r", "AAA", "buy", 1.5, "limit", 100.0), "fractional"),
    "wash_trade": ("wash_trade", ("r", "AAA", "sell", 1, "market", None), "potential wash trade"),
    "pattern_day_trader": ("pattern_day_trader", ("r", "AAA", "sell", 5, "market", None),
                           "pattern day trading"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_each_refusal_is_recorded_on_the_order(store: Store, case: str) -> None:
    kind, order, words = REJECTIONS[case]
    cash = 20_000.0 if case == "pattern_day_trader" else 100_000.0
    daytrades = [SESSIONS[1]] * 3 if case == "pattern_day_trader" else []
    market = _market(cash=cash, not_tradable=("CCC",), daytrades=daytrades)
    with FakeAlpacaServer(None, KEY, SECRET, market=market) as server:
        if case == "wash_trade":  # an open buy the sell would trade against
            market.submit(
                symbol="AAA", side="buy", qty=1, order_type="limit", limit_price=90.0,
                time_in_force="gtc",
            )  # fmt: skip
        if case == "pattern_day_trader":  # bought today
            market.submit(symbol="AAA", side="buy", qty=5)
        server.advance()  # the market opens
        broker = _broker(server, cancel_opposite=case != "wash_trade")
        _plan(store, order, ("ok", "BBB", "buy", 1, "market", None))
        submitted, rejected, notes = _loop(store, broker)._submit(RUN_ID, market.now)
    assert (submitted, rejected) == (1, 1)  # the loop went on to the next order
    status, reason = _record(store, "r")
    assert status == "rejected" and reason is not None
    assert reason.startswith(f"{kind}: ") and words in reason
    assert _record(store, "ok")[0] == "new"
    assert any(words in n for n in notes)


def test_rate_limited_order_stays_planned_with_its_reason(
    store: Store, server: FakeAlpacaServer
) -> None:
    broker, market = _broker(server), server.market
    assert market is not None
    _plan(store, ("later", "AAA", "buy", 1, "market", None))
    server.inject("429", method="POST", path="/v2/orders", times=3)
    loop = _loop(store, broker)
    assert loop._submit(RUN_ID, market.now)[:2] == (0, 0)
    status, reason = _record(store, "later")
    assert status == "planned" and reason is not None and "rate limited" in reason
    assert loop._submit(RUN_ID, market.now)[:2] == (1, 0)  # sent by the next cycle
    assert _record(store, "later") == ("accepted", None)
