"""Exchange sessions: the one calendar of the workbench, on ``exchange-calendars``.

A daily bar belongs to one exchange session and is known at that session's
close; forecast steps, data-quality gaps, simulated-broker sessions and
rebalance days all count sessions of this calendar. ``XNYS`` is the default
(``KRONOS_CALENDAR``); ``none`` (alias ``24/7``) makes every calendar day a
session closing at midnight UTC, for assets that trade around the clock. The
calendar data ships inside the package: nothing is downloaded.

No other module does weekday arithmetic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from kronos.config import did_you_mean
from kronos.errors import ConfigError

if TYPE_CHECKING:
    import exchange_calendars as xcals

# exchange_calendars (and the pandas it loads, ~0.35 s) is imported when a
# calendar is first built, not when kronos starts: `kronos --help` needs neither

DEFAULT = "XNYS"
# wide enough for long user histories (exchange-calendars has XNYS from 1885) and
# forecasts a few years ahead
FIRST = date(1900, 1, 2)
LAST = date(2035, 12, 31)
_ALIASES = {"none": "24/7", "24/7": "24/7", "always": "24/7"}


class CalendarError(ConfigError):
    """An unknown calendar name, or a date outside the calendar's range."""


class Calendar:
    """Sessions, holidays, early closes and close times of one exchange.

    Dates are ``datetime.date`` (a session's date); times are time-zone-aware
    UTC ``datetime``. Build one with :func:`get_calendar`.
    """

    def __init__(self, name: str, xcal: xcals.ExchangeCalendar) -> None:
        self.name = name
        self._x = xcal
        self.tz = str(xcal.tz)
        days = xcal.sessions.values.astype("datetime64[D]")
        self._days = days
        self._first, self._last = days[0].astype(date), days[-1].astype(date)
        # UTC instants of each session's open and close, aligned with ``_days``
        self._opens = xcal.opens.values.astype("datetime64[s]")
        self._closes = xcal.closes.values.astype("datetime64[s]")

    def __repr__(self) -> str:
        return f"Calendar({self.name!r})"

    @property
    def always_open(self) -> bool:
        """True for the 24/7 calendar (``--calendar none``)."""
        return self.name == "24/7"

    @property
    def first(self) -> date:
        """The calendar's first session."""
        return self._first

    @property
    def last(self) -> date:
        """The calendar's last session."""
        return self._last

    def in_range(self, days: Sequence[date] | np.ndarray) -> np.ndarray:
        """A boolean array: which of ``days`` lie within :attr:`first`..:attr:`last`."""
        arr = np.asarray(days, dtype="datetime64[D]")
        return (arr >= self._days[0]) & (arr <= self._days[-1])

    def _check(self, day: date) -> None:
        if not self._first <= day <= self._last:
            raise CalendarError(
                f"{day} is outside the {self.name} calendar's range {self._first}..{self._last}"
            )

    def is_session(self, day: date) -> bool:
        """Whether ``day`` is a trading session."""
        self._check(day)
        i = np.searchsorted(self._days, np.datetime64(day, "D"))
        return i < len(self._days) and self._days[i] == np.datetime64(day, "D")

    def sessions_mask(self, days: Sequence[date] | np.ndarray) -> np.ndarray:
        """A boolean array: which of ``days`` are sessions (vectorised :meth:`is_session`)."""
        arr = np.asarray(days, dtype="datetime64[D]")
        if arr.size:
            self._check(arr.min().astype(date))
            self._check(arr.max().astype(date))
        i = np.searchsorted(self._days, arr).clip(0, len(self._days) - 1)
        return self._days[i] == arr

    def sessions(self, start: date, end: date) -> list[date]:
        """Every session from ``start`` to ``end``, both included."""
        lo = np.searchsorted(self._days, np.datetime64(start, "D"))
        hi = np.searchsorted(self._days, np.datetime64(end, "D"), side="right")
        return self._days[lo:hi].astype(date).tolist()

    def sessions_array(self, start: date, end: date) -> np.ndarray:
        """:meth:`sessions` as a ``datetime64[D]`` array."""
        lo = np.searchsorted(self._days, np.datetime64(start, "D"))
        hi = np.searchsorted(self._days, np.datetime64(end, "D"), side="right")
        return self._days[lo:hi]

    def first_sessions(self, start: date, n: int) -> np.ndarray:
        """The first ``n`` sessions on or after ``start`` (``datetime64[D]``)."""
        lo = np.searchsorted(self._days, np.datetime64(start, "D"))
        if lo + n > len(self._days):
            raise CalendarError(f"{n} sessions from {start} run past {self._last}")
        return self._days[lo : lo + n]

    def next_sessions(self, after: date, n: int) -> list[date]:
        """The ``n`` sessions strictly after ``after`` (``after`` need not be a session)."""
        self._check(after)
        lo = np.searchsorted(self._days, np.datetime64(after, "D"), side="right")
        if lo + n > len(self._days):
            raise CalendarError(f"{n} sessions after {after} run past {self._last}")
        return self._days[lo : lo + n].astype(date).tolist()

    def next_session(self, after: date) -> date:
        """The first session strictly after ``after``."""
        return self.next_sessions(after, 1)[0]

    def previous_session(self, before: date) -> date:
        """The last session strictly before ``before``."""
        self._check(before)
        i = np.searchsorted(self._days, np.datetime64(before, "D")) - 1
        if i < 0:
            raise CalendarError(f"no session before {before} in {self.name}")
        return self._days[i].astype(date)

    def sessions_on_or_after(self, days: np.ndarray) -> np.ndarray:
        """Each day if it is a session, else the next session (vectorised, any shape)."""
        arr = np.asarray(days, dtype="datetime64[D]")
        if arr.size:
            self._check(arr.min().astype(date))
            self._check(arr.max().astype(date))
        i = np.searchsorted(self._days, arr)
        if arr.size and int(i.max()) >= len(self._days):
            raise CalendarError(f"no {self.name} session on or after {arr.max()}")
        return self._days[i]

    def sessions_between(self, start: date, end: date) -> int:
        """How many sessions lie strictly between ``start`` and ``end``."""
        lo = np.searchsorted(self._days, np.datetime64(start, "D"), side="right")
        hi = np.searchsorted(self._days, np.datetime64(end, "D"))
        return max(int(hi - lo), 0)

    def gaps(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Sessions missing strictly between each pair (vectorised :meth:`sessions_between`)."""
        lo = np.searchsorted(self._days, np.asarray(previous, dtype="datetime64[D]"), side="right")
        hi = np.searchsorted(self._days, np.asarray(current, dtype="datetime64[D]"))
        return np.maximum(hi - lo, 0)

    def _index(self, day: date) -> int:
        self._check(day)
        i = int(np.searchsorted(self._days, np.datetime64(day, "D")))
        if i >= len(self._days) or self._days[i] != np.datetime64(day, "D"):
            raise CalendarError(f"{day} is not a {self.name} session")
        return i

    def session_open(self, day: date) -> datetime:
        """When the session ``day`` opens (UTC); a non-session is a CalendarError."""
        return self._opens[self._index(day)].astype(datetime).replace(tzinfo=UTC)

    def session_close(self, day: date) -> datetime:
        """When the session ``day`` closes (UTC); early closes included."""
        return self._closes[self._index(day)].astype(datetime).replace(tzinfo=UTC)

    def close_if_session(self, day: date) -> datetime | None:
        """:meth:`session_close` of ``day``, or None when it is no session (or out of range)."""
        key = np.datetime64(day, "D")
        i = int(np.searchsorted(self._days, key))
        if i >= len(self._days) or self._days[i] != key:
            return None
        return self._closes[i].astype(datetime).replace(tzinfo=UTC)

    def is_early_close(self, day: date) -> bool:
        """Whether the session ``day`` closes early (e.g. the day after Thanksgiving)."""
        import pandas as pd

        return bool(pd.Timestamp(day) in self._x.early_closes)

    def closed_reason(self, day: date) -> str:
        """Why ``day`` is no session: its weekday name, and whether it is a holiday."""
        name = day.strftime("%A")
        return name if day.weekday() >= 5 else f"{name}, an exchange holiday"

    def holidays(self, start: date, end: date) -> list[date]:
        """Weekdays from ``start`` to ``end`` that are not sessions (exchange holidays)."""
        import pandas as pd

        days = pd.bdate_range(start, end).values.astype("datetime64[D]")
        return days[~self.sessions_mask(days)].astype(date).tolist()


def calendar_names() -> list[str]:
    """The names :func:`get_calendar` accepts."""
    import exchange_calendars as xcals

    return sorted({*xcals.get_calendar_names(include_aliases=True), *_ALIASES})


def get_calendar(name: str | None = None) -> Calendar:
    """The calendar called ``name`` (``XNYS`` when None; ``none`` for 24/7 assets).

    Building one takes about 0.3 s; each name is built once per process (the
    calendar is read-only, so sharing it is safe).
    """
    import exchange_calendars as xcals

    name = (name or DEFAULT).strip()
    key = _ALIASES.get(name.lower(), name.upper() if name.upper() != "24/7" else "24/7")
    try:
        return _build(key)
    except (xcals.errors.InvalidCalendarName, KeyError) as exc:
        raise CalendarError(
            f"unknown calendar {name!r}{did_you_mean(name.upper(), calendar_names())}; "
            "use an exchange-calendars name such as XNYS, or none for 24/7 assets"
        ) from exc


@cache
def _build(key: str) -> Calendar:
    import exchange_calendars as xcals

    try:
        xcal = xcals.get_calendar(key, start=FIRST.isoformat(), end=LAST.isoformat())
    except ValueError:
        # some calendars start later than FIRST: take their own range
        xcal = xcals.get_calendar(key, end=LAST.isoformat())
    return Calendar(key, xcal)


def step_sessions(asof: date, horizon: int, calendar: Calendar | None = None) -> list[date]:
    """The ``horizon`` sessions after ``asof``: a forecast's ``target_ts`` per step."""
    return (calendar or get_calendar()).next_sessions(asof, horizon)


def day_of_week(day: date) -> int:
    """Monday 0 .. Sunday 6: a label of the day, never a count of sessions."""
    return day.weekday()


def period_key(day: date, period: str, weekday: int = 0) -> Hashable:
    """A key equal for two days exactly when they fall in the same calendar period.

    ``week``: the ISO week; ``week_after``: weeks that start the day after
    ``weekday`` (a day on ``weekday`` closes its week: a retrain that night);
    ``month``, ``quarter``, ``year``. Periods are of calendar days, so they hold
    for any exchange; which sessions fall in one is the caller's list.
    """
    if period == "year":
        return day.year
    if period == "quarter":
        return (day.year, (day.month - 1) // 3)
    if period == "month":
        return (day.year, day.month)
    if period == "week":
        return day.isocalendar()[:2]
    if period == "week_after":
        return day - timedelta(days=(day.weekday() - weekday - 1) % 7)
    raise ValueError(f"unknown period {period!r}: week, week_after, month, quarter or year")
