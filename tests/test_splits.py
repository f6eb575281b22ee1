"""Walk-forward splits: hand-checked calendars, input errors, and purge/coverage invariants."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kronos.backtest.engine import rebalance_days
from kronos.backtest.splits import Fold, WalkForward
from kronos.calendar import get_calendar
from kronos.errors import ConfigError, InputError
from kronos.models.base import HORIZON


def weekdays(first: date, last: date, drop: set[date] = frozenset()) -> list[date]:
    days = (first + timedelta(days=i) for i in range((last - first).days + 1))
    return [d for d in days if d.weekday() < 5 and d not in drop]


CAL = weekdays(date(2020, 1, 1), date(2021, 12, 31))  # no holidays: every weekday trades


def windows(folds: list[Fold]) -> list[tuple[date, date]]:
    return [(f.test_start, f.test_end) for f in folds]


def test_yearly_expanding_by_hand():
    wf = WalkForward(train="expanding", train_sessions=100, retrain="yearly")
    folds = wf.folds(CAL, date(2020, 12, 1), date(2021, 3, 31))
    assert folds == [
        # 5 sessions purged before Tue 2020-12-01: Nov 24, 25, 26, 27, 30
        Fold(0, date(2020, 1, 1), date(2020, 11, 23), date(2020, 12, 1), date(2020, 12, 31), 5),
        # before Fri 2021-01-01: Dec 25, 28, 29, 30, 31
        Fold(1, date(2020, 1, 1), date(2020, 12, 24), date(2021, 1, 1), date(2021, 3, 31), 5),
    ]


def test_rolling_window_has_train_sessions():
    wf = WalkForward(train="rolling", train_sessions=10, retrain="yearly")
    first = wf.folds(CAL, date(2020, 12, 1), date(2020, 12, 31))[0]
    # ten sessions ending Mon 2020-11-23: Nov 10-13, 16-20, 23
    assert (first.train_start, first.train_end) == (date(2020, 11, 10), date(2020, 11, 23))


def test_monthly_and_quarterly_boundaries():
    monthly = WalkForward(train="expanding", train_sessions=50, retrain="monthly")
    assert windows(monthly.folds(CAL, date(2020, 12, 15), date(2021, 2, 10))) == [
        (date(2020, 12, 15), date(2020, 12, 31)),
        (date(2021, 1, 1), date(2021, 1, 29)),
        (date(2021, 2, 1), date(2021, 2, 10)),
    ]
    quarterly = WalkForward(train="expanding", train_sessions=10, retrain="quarterly")
    assert windows(quarterly.folds(CAL, date(2020, 2, 3), date(2020, 7, 15))) == [
        (date(2020, 2, 3), date(2020, 3, 31)),
        (date(2020, 4, 1), date(2020, 6, 30)),
        (date(2020, 7, 1), date(2020, 7, 15)),
    ]


def test_weekly_retrains_wednesday_night():
    wf = WalkForward(train="expanding", train_sessions=50, retrain="weekly", weekday=2)
    # 2021-01-04 is a Monday; each new window starts the Thursday after a Wednesday
    assert windows(wf.folds(CAL, date(2021, 1, 4), date(2021, 1, 22))) == [
        (date(2021, 1, 4), date(2021, 1, 6)),
        (date(2021, 1, 7), date(2021, 1, 13)),
        (date(2021, 1, 14), date(2021, 1, 20)),
        (date(2021, 1, 21), date(2021, 1, 22)),
    ]


def test_weekly_around_holidays():
    wf = WalkForward(train="expanding", train_sessions=50, retrain="weekly", weekday=2)
    # Thursday 14th closed: the window starts on the next session, Friday
    no_thu = weekdays(date(2020, 1, 1), date(2021, 12, 31), {date(2021, 1, 14)})
    assert windows(wf.folds(no_thu, date(2021, 1, 7), date(2021, 1, 20))) == [
        (date(2021, 1, 7), date(2021, 1, 13)),
        (date(2021, 1, 15), date(2021, 1, 20)),
    ]
    # Wednesday 13th closed: the boundary is still the night of the 13th
    no_wed = weekdays(date(2020, 1, 1), date(2021, 12, 31), {date(2021, 1, 13)})
    assert windows(wf.folds(no_wed, date(2021, 1, 7), date(2021, 1, 20))) == [
        (date(2021, 1, 7), date(2021, 1, 12)),
        (date(2021, 1, 14), date(2021, 1, 20)),
    ]


XNYS = get_calendar().sessions(date(2019, 1, 1), date(2021, 12, 31))


def test_yearly_folds_on_exchange_sessions():
    wf = WalkForward(train="expanding", train_sessions=100, retrain="yearly")
    assert wf.folds(XNYS, date(2020, 12, 1), date(2021, 3, 31)) == [
        # purged before Tue 2020-12-01: Nov 23, 24, 25, 27, 30 (Thanksgiving the 26th closed)
        Fold(0, date(2019, 1, 2), date(2020, 11, 20), date(2020, 12, 1), date(2020, 12, 31), 5),
        # New Year's Day 2021 is closed: the year's first session is Mon Jan 4; purged
        # Dec 24 (an early close, still a session), 28, 29, 30, 31
        Fold(1, date(2019, 1, 2), date(2020, 12, 23), date(2021, 1, 4), date(2021, 3, 31), 5),
    ]


def test_weekly_on_exchange_sessions_around_thanksgiving():
    # retrain Thursday nights; Thanksgiving Thursday (Nov 26 2020) is closed, so the
    # Wednesday before ends that week's window and Friday the 27th opens the next
    wf = WalkForward(train="expanding", train_sessions=50, retrain="weekly", weekday=3)
    assert windows(wf.folds(XNYS, date(2020, 11, 16), date(2020, 12, 4))) == [
        (date(2020, 11, 16), date(2020, 11, 19)),
        (date(2020, 11, 20), date(2020, 11, 25)),
        (date(2020, 11, 27), date(2020, 12, 3)),
        (date(2020, 12, 4), date(2020, 12, 4)),
    ]
    # rebalancing on Thursdays moves to Friday in Thanksgiving week
    weeks = [d for d in XNYS if date(2020, 11, 16) <= d <= date(2020, 12, 4)]
    assert sorted(rebalance_days(weeks, "weekly", 3)) == [
        date(2020, 11, 19),
        date(2020, 11, 27),
        date(2020, 12, 3),
    ]
    # and a month's first rebalance is its first session (Jan 4 2021, not the holiday)
    assert min(rebalance_days([d for d in XNYS if d.year == 2021], "monthly", 0)) == date(
        2021, 1, 4
    )


def test_longer_purge_moves_train_end():
    wf = WalkForward(train="expanding", train_sessions=10, retrain="yearly", purge=10)
    fold = wf.folds(CAL, date(2020, 12, 1), date(2020, 12, 31))[0]
    assert fold.train_end == date(2020, 11, 16) and fold.purge == 10
    assert CAL.index(fold.test_start) - CAL.index(fold.train_end) - 1 == 10


def test_purge_below_horizon_is_refused():
    with pytest.raises(ValueError, match=r"purge=4 is shorter than the forecast horizon \(5"):
        WalkForward(train="expanding", train_sessions=10, retrain="yearly", purge=HORIZON - 1)


def test_short_training_window_names_fold_and_count():
    wf = WalkForward(train="rolling", train_sessions=20, retrain="monthly")
    # 2020-01-15 is the 11th session: 10 before it, 5 of them purged
    with pytest.raises(ConfigError, match=r"test_start 2020-01-15\) has 5 training sessions"):
        wf.folds(CAL, date(2020, 1, 15), date(2020, 3, 31))
    with pytest.raises(ConfigError, match="move start later or shorten train_sessions"):
        wf.folds(CAL, date(2019, 6, 1), date(2020, 3, 31))


@pytest.mark.parametrize(
    ("sessions", "start", "end", "error", "message"),
    [
        ([date(2020, 1, 3), date(2020, 1, 2)], date(2020, 1, 1), date(2020, 1, 9), ValueError,
         "out of order"),
        ([date(2020, 1, 2), date(2020, 1, 2)], date(2020, 1, 1), date(2020, 1, 9), ValueError,
         "duplicated"),
        (CAL, date(2021, 2, 1), date(2021, 1, 1), ConfigError,
         "start 2021-02-01 is after end 2021-01-01"),
        (CAL, date(2021, 1, 2), date(2021, 1, 3), InputError,
         "no sessions between 2021-01-02 and 2021-01-03"),
    ],
)  # fmt: skip
def test_bad_inputs(sessions, start, end, error, message):
    wf = WalkForward(train="expanding", train_sessions=1, retrain="yearly")
    with pytest.raises(error, match=message):
        wf.folds(sessions, start, end)


def crosses_boundary(a: date, b: date, retrain: str, weekday: int) -> bool:
    """Whether a retrain happens between consecutive sessions ``a`` < ``b`` (independent rule)."""
    if retrain == "weekly":  # a retrain night on some date in [a, b)
        return any((a + timedelta(days=i)).weekday() == weekday for i in range((b - a).days))
    if retrain == "monthly":
        return (a.year, a.month) != (b.year, b.month)
    if retrain == "quarterly":
        return (a.year, (a.month - 1) // 3) != (b.year, (b.month - 1) // 3)
    return a.year != b.year


@st.composite
def cases(draw):
    first = date(2018, 1, 1) + timedelta(days=draw(st.integers(0, 365)))
    span = draw(st.integers(5, 500))
    closed = draw(st.sets(st.integers(0, span), max_size=span // 2))  # holidays, gaps
    days = (first + timedelta(days=i) for i in range(span + 1) if i not in closed)
    sessions = [d for d in days if d.weekday() < 5]
    lo = draw(st.integers(-5, span))
    hi = lo + draw(st.integers(0, span))
    wf = WalkForward(
        train=draw(st.sampled_from(["expanding", "rolling"])),
        train_sessions=draw(st.integers(1, 30)),
        retrain=draw(st.sampled_from(["weekly", "monthly", "quarterly", "yearly"])),
        weekday=draw(st.integers(0, 6)),
        purge=draw(st.integers(HORIZON, 10)),
    )
    return sessions, first + timedelta(days=lo), first + timedelta(days=hi), wf


@settings(max_examples=100, deadline=None)
@given(cases())
def test_folds_purge_and_partition(case):
    sessions, start, end, wf = case
    in_range = [d for d in sessions if start <= d <= end]
    if not in_range:
        with pytest.raises(InputError, match="no sessions"):
            wf.folds(sessions, start, end)
        return
    if sessions.index(in_range[0]) - wf.purge < wf.train_sessions:
        with pytest.raises(ConfigError, match="move start later"):
            wf.folds(sessions, start, end)
        return
    folds = wf.folds(sessions, start, end)
    pos = {d: i for i, d in enumerate(sessions)}

    tested = []
    for k, f in enumerate(folds):
        assert f.index == k and f.purge == wf.purge
        assert f.train_start <= f.train_end < f.test_start <= f.test_end
        assert pos[f.test_start] - pos[f.train_end] - 1 == wf.purge
        # nothing tested lies inside training or its purge gap (labels HORIZON ahead)
        gap_end = sessions[pos[f.train_end] + wf.purge]
        assert f.test_start > gap_end >= sessions[pos[f.train_end] + HORIZON]
        n_train = pos[f.train_end] - pos[f.train_start] + 1
        if wf.train == "rolling":
            assert n_train == wf.train_sessions
        else:
            assert f.train_start == sessions[0] and n_train >= wf.train_sessions
        window = sessions[pos[f.test_start] : pos[f.test_end] + 1]
        assert not any(crosses_boundary(a, b, wf.retrain, wf.weekday) for a, b in pairwise(window))
        if k > 0:
            prev = sessions[pos[f.test_start] - 1]
            assert prev == folds[k - 1].test_end
            assert crosses_boundary(prev, f.test_start, wf.retrain, wf.weekday)
        tested += window
    assert tested == in_range  # disjoint, ordered, no gap, all of [start, end]
