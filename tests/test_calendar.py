"""The one exchange calendar: sessions, holidays, early closes, forecast steps, the guard.

Expected sessions, holidays and close times are NYSE's published calendars
(2023: New Year's Day observed Mon Jan 2, Good Friday Apr 7, Juneteenth Jun 19,
Thanksgiving Nov 23 with a 13:00 close on Fri Nov 24, Christmas Dec 25).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kronos.calendar import CalendarError, get_calendar, period_key, step_sessions
from kronos.config import DataSettings
from kronos.models.base import forecast_frame, retarget, target_dates

XNYS = get_calendar()
ALWAYS = get_calendar("none")
NY = ZoneInfo("America/New_York")
HOLIDAYS_2023 = [
    date(2023, 1, 2),
    date(2023, 1, 16),
    date(2023, 2, 20),
    date(2023, 4, 7),
    date(2023, 5, 29),
    date(2023, 6, 19),
    date(2023, 7, 4),
    date(2023, 9, 4),
    date(2023, 11, 23),
    date(2023, 12, 25),
]


def test_xnys_2023_holidays_and_session_count():
    assert XNYS.holidays(date(2023, 1, 1), date(2023, 12, 31)) == HOLIDAYS_2023
    assert len(XNYS.sessions(date(2023, 1, 1), date(2023, 12, 31))) == 250
    assert not XNYS.is_session(date(2023, 1, 1))  # a Sunday
    assert XNYS.is_session(date(2023, 1, 3))


def test_early_close_is_13_00_new_york():
    close = XNYS.session_close(date(2023, 11, 24))
    assert close == datetime(2023, 11, 24, 13, 0, tzinfo=NY).astimezone(UTC)
    assert XNYS.is_early_close(date(2023, 11, 24))
    assert XNYS.session_close(date(2023, 11, 22)) == datetime(2023, 11, 22, 16, tzinfo=NY)
    assert not XNYS.is_early_close(date(2023, 11, 22))
    assert XNYS.session_open(date(2023, 11, 24)) == datetime(2023, 11, 24, 9, 30, tzinfo=NY)


def test_closed_day_has_no_open_or_close():
    with pytest.raises(CalendarError, match="2023-12-25 is not a XNYS session"):
        XNYS.session_close(date(2023, 12, 25))
    with pytest.raises(CalendarError, match="outside the XNYS calendar's range"):
        XNYS.is_session(date(2099, 1, 2))


@pytest.mark.parametrize(
    ("asof", "expected"),
    [
        # Friday before New Year's weekend: Mon Jan 2 2023 is the observed holiday
        (
            date(2022, 12, 30),
            ["2023-01-03", "2023-01-04", "2023-01-05", "2023-01-06", "2023-01-09"],
        ),
        # Thursday before Good Friday (Apr 7 2023)
        (date(2023, 4, 6), ["2023-04-10", "2023-04-11", "2023-04-12", "2023-04-13", "2023-04-14"]),
        # a Saturday origin: the first step is Monday
        (
            date(2023, 11, 18),
            ["2023-11-20", "2023-11-21", "2023-11-22", "2023-11-24", "2023-11-27"],
        ),
    ],
)
def test_target_dates_are_sessions(asof, expected):
    assert [d.isoformat() for d in target_dates(asof)] == expected


@settings(max_examples=200, deadline=None)
@given(st.dates(date(1990, 1, 1), date(2030, 12, 31)))
def test_target_ts_never_lands_on_a_closed_day(asof):
    q = np.zeros((2, 5, 3))
    frame = forecast_frame(["A", "B"], asof, q, "m", "v")
    targets = frame["target_ts"].to_list()
    assert all(XNYS.is_session(d) and d.weekday() < 5 for d in targets)
    steps = targets[:5]
    assert steps == sorted(set(steps)) and steps[0] > asof
    # no session is skipped between the origin and the last step
    assert XNYS.sessions_between(asof, steps[-1]) == 4


def test_forecast_frame_takes_a_calendar():
    q = np.zeros((1, 3, 3))
    always = forecast_frame(["BTC"], date(2022, 12, 30), q, "m", "v", calendar=ALWAYS)
    assert always["target_ts"].to_list() == [date(2022, 12, 31), date(2023, 1, 1), date(2023, 1, 2)]
    assert step_sessions(date(2022, 12, 30), 3, ALWAYS) == always["target_ts"].to_list()


def test_retarget_restamps_steps_with_the_configured_calendar():
    q = np.zeros((2, 5, 3))
    frame = forecast_frame(["KO", "PG"], date(2022, 12, 30), q, "ewma", "v1")
    assert frame["target_ts"][:5].to_list()[0] == date(2023, 1, 3)  # XNYS: skips the holiday
    always = retarget(frame, get_calendar("none"))
    assert always.columns == frame.columns
    days = [date(2022, 12, 31) + timedelta(days=i) for i in range(5)]
    assert always.filter(symbol="PG")["target_ts"].to_list() == days
    assert retarget(frame, get_calendar()).equals(frame)


def test_holiday_is_not_a_gap_and_24_7_counts_weekends():
    prev = np.array(["2022-12-23", "2023-04-06", "2023-01-06"], dtype="datetime64[D]")
    cur = np.array(["2022-12-27", "2023-04-10", "2023-01-10"], dtype="datetime64[D]")
    # Christmas (observed Mon Dec 26) and Good Friday are holidays: nothing is missing;
    # Fri Jan 6 -> Tue Jan 10 misses Monday Jan 9
    assert XNYS.gaps(prev, cur).tolist() == [0, 0, 1]
    # every day trades on the 24/7 calendar: the weekend days are missing
    assert ALWAYS.gaps(prev, cur).tolist() == [3, 3, 3]
    assert (
        ALWAYS.is_session(date(2023, 1, 1))
        and ALWAYS.holidays(date(2023, 1, 1), date(2023, 12, 31)) == []
    )


def test_unknown_calendar_is_one_clear_error():
    with pytest.raises(CalendarError, match=r"unknown calendar 'NYSEE'.*none for 24/7"):
        get_calendar("NYSEE")
    assert get_calendar("xnys") is XNYS  # built once per process
    assert get_calendar("24/7") is ALWAYS


def test_sessions_on_or_after_rolls_holidays_forward():
    days = np.array(["2023-01-01", "2023-01-02", "2023-01-03"], dtype="datetime64[D]")
    rolled = XNYS.sessions_on_or_after(days)
    assert rolled.astype(str).tolist() == ["2023-01-03", "2023-01-03", "2023-01-03"]


def test_period_keys():
    wed, thu = date(2023, 1, 11), date(2023, 1, 12)
    assert period_key(wed, "week") == period_key(thu, "week") == (2023, 2)
    # weeks after Wednesday: Wednesday closes one week, Thursday opens the next
    assert period_key(wed, "week_after", 2) != period_key(thu, "week_after", 2)
    assert period_key(thu, "week_after", 2) == period_key(date(2023, 1, 18), "week_after", 2)
    assert period_key(thu, "quarter") == (2023, 0)
    with pytest.raises(ValueError, match="unknown period 'fortnight'"):
        period_key(thu, "fortnight")


# Weekday arithmetic belongs in kronos/calendar.py alone. The files named here are
# owned by other work on issue 14 and are switched to the calendar there (serve's
# stale-bar count, the fake market's next session, ingest's "Saturday"/"holiday" wording).
NOT_YET: set[str] = set()
WEEKDAY_MATH = re.compile(r"\.weekday\(\)|busday|business_day|bdate_range|isocalendar|BDay\b")


def test_no_weekday_arithmetic_outside_the_calendar():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted((root / "kronos").rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name == "kronos/calendar.py" or name in NOT_YET:
            continue
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if WEEKDAY_MATH.search(line):
                offenders.append(f"{name}:{n}: {line.strip()}")
    assert offenders == []


def test_sessions_match_a_plain_weekday_walk_minus_holidays():
    """An independent rule: weekdays of 2023 minus NYSE's published holidays."""
    day, expected = date(2023, 1, 1), []
    while day.year == 2023:
        if day.weekday() < 5 and day not in HOLIDAYS_2023:
            expected.append(day)
        day += timedelta(days=1)
    assert XNYS.sessions(date(2023, 1, 1), date(2023, 12, 31)) == expected


# -- the calendar's users: known-at times and the simulated broker's clock -----


def test_a_bar_is_known_at_its_session_close_early_closes_included():
    from kronos.data.readers import PointInTime
    from kronos.risk import session_close

    data = DataSettings(calendar="XNYS", market_tz="America/New_York", market_close="16:00")
    half_past_one = datetime(2023, 11, 24, 13, 30, tzinfo=NY)
    # the day after Thanksgiving closes at 13:00: its bar is known by 13:30
    assert PointInTime.at(half_past_one, data).bar_date == date(2023, 11, 24)
    assert PointInTime.at(datetime(2023, 11, 22, 15, 59, tzinfo=NY), data).bar_date == date(
        2023, 11, 21
    )
    assert session_close(date(2023, 11, 24), data) == datetime(2023, 11, 24, 18, tzinfo=UTC)
    assert session_close(date(2023, 11, 22), data) == datetime(2023, 11, 22, 21, tzinfo=UTC)
    # a closed day keeps the configured close (no bar is stamped there)
    assert session_close(date(2023, 11, 23), data) == datetime(2023, 11, 23, 21, tzinfo=UTC)


def test_sim_broker_clock_follows_the_calendar(store):
    import polars as pl

    from kronos.data.ingest import ingest
    from kronos.execution.brokers.sim import SimBroker

    days = [date(2023, 11, 22), date(2023, 11, 24), date(2023, 11, 27)]
    bars = pl.DataFrame(
        {"symbol": "AAA", "ts": days, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5,
         "adj_close": 10.5, "volume": 1e4, "source": "test"}
    )  # fmt: skip
    ingest(store, "bars", [bars], source="test", origin="test")
    # a Sunday bar written behind ingest's back is no session of the broker
    store.con.execute(
        "INSERT INTO bars SELECT symbol, DATE '2023-11-26' AS ts, * EXCLUDE (symbol, ts) "
        "FROM bars WHERE ts = DATE '2023-11-24'"
    )
    sim = SimBroker(store, "acct", data_settings=DataSettings())
    assert sim.sessions == days
    assert sim.start(days[0], 1_000.0)
    closed = sim.clock()
    # after Wednesday's close the next session is Friday (Thanksgiving closed), 09:30-13:00
    assert closed.next_open == datetime(2023, 11, 24, 9, 30, tzinfo=NY)
    assert closed.next_close == datetime(2023, 11, 24, 13, 0, tzinfo=NY)
    sim.advance()  # open on Friday
    sim.advance()  # its early close
    assert sim.clock().now == datetime(2023, 11, 24, 18, 0, tzinfo=UTC)
    assert sim.clock().next_open == datetime(2023, 11, 27, 9, 30, tzinfo=NY)
