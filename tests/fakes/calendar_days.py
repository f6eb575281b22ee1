"""Session calendars for synthetic test panels: XNYS sessions, holidays skipped."""

from __future__ import annotations

from datetime import date

from kronos.calendar import get_calendar


def sessions(start: date, n: int) -> list[date]:
    """The first ``n`` XNYS sessions on or after ``start``."""
    return get_calendar().first_sessions(start, n).astype(date).tolist()


# the panels' old name: every panel day is a session, so forecast targets
# (sessions after the origin) are days of the panel
weekdays = sessions
