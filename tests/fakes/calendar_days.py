"""Weekday calendars for synthetic test panels."""

from __future__ import annotations

from datetime import date, timedelta


def weekdays(start: date, n: int) -> list[date]:
    """The first ``n`` weekdays from ``start`` (inclusive); no holidays."""
    out, day = [], start
    while len(out) < n:
        if day.weekday() < 5:
            out.append(day)
        day += timedelta(days=1)
    return out
