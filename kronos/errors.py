"""The roots of kronos's own errors.

Every error kronos raises on purpose derives from :class:`KronosError`; the
``kronos`` command prints its message on one line and exits 2, never a
traceback. A few subclasses say whose move it is:

- :class:`InputError`: bad input from the user (a file, row, column, symbol,
  date or value); the message names where, and nothing was written.
- :class:`ConfigError`: a bad setting, spec or option value, or an unknown name
  (a model, executor, calendar, run spec).
- :class:`StoreBusy`: another process holds the DuckDB file past the wait.
- :class:`LookAhead`: a read, model or forecast would use data after its asof.

Areas keep a subclass where a caller needs the distinction: ``SpecError`` and
``CalendarError`` (ConfigError), ``BreakerError`` (InputError),
``ForecastError`` (a model cannot be fitted, loaded or asked), ``BrokerError``
and its kinds, ``RunnerError``, ``ServiceError`` (an HTTP refusal) and the data
layer's ``KronosDataError`` family. Every one pickles: a Ray task's error
crosses processes (``tests/test_errors.py`` checks all of this).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class KronosError(Exception):
    """Base of every error kronos raises on purpose (bad input, busy store, ...)."""


@dataclass(frozen=True)
class Problem:
    """One bad value: where it is and what is wrong with it."""

    message: str
    file: str | None = None
    row: int | None = None  # 1-based line number in the file (header is line 1)
    column: str | None = None
    symbol: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file + (f":{self.row}" if self.row is not None else ""))
        elif self.row is not None:
            where.append(f"row {self.row}")
        if self.column:
            where.append(f"column '{self.column}'")
        if self.symbol:
            where.append(f"symbol {self.symbol}")
        return (", ".join(where) + ": " if where else "") + self.message


class InputError(KronosError):
    """Bad user input; nothing was written.

    Built from one message (an option, a date, a value) or from the
    :class:`Problem` list of a file, which the message lists (``limit`` of them).
    """

    def __init__(self, problems: str | list[Problem], *, limit: int = 10) -> None:
        self.plain = isinstance(problems, str)
        self.problems = [Problem(problems)] if isinstance(problems, str) else list(problems)
        self.limit = limit
        super().__init__(problems if isinstance(problems, str) else self.describe())

    def describe(self, outcome: str = "nothing was written") -> str:
        """The message, saying ``outcome`` (``kronos data validate``: "cannot read the file")."""
        shown = "\n".join(f"  {p}" for p in self.problems[: self.limit])
        extra = len(self.problems) - self.limit
        more = f"\n  ... and {extra} more" if extra > 0 else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        return f"{len(self.problems)} {noun} in input, {outcome}:\n{shown}{more}"

    def __reduce__(self) -> tuple:
        # rebuilt from its problems when pickled (a Ray task's error crosses processes)
        given = self.problems[0].message if self.plain else self.problems
        return _input_error, (type(self), given, self.limit)


def _input_error(cls: type[InputError], problems: str | list[Problem], limit: int) -> InputError:
    return cls(problems, limit=limit)


class ConfigError(KronosError):
    """A bad setting, spec or option value, or an unknown name; the message names it."""


class StoreBusy(KronosError):
    """Another process holds the DuckDB file and did not let go within the wait."""

    def __init__(self, path: str, waited_s: float, holder: str | None) -> None:
        self.path = path
        self.waited_s = waited_s
        self.holder = holder
        who = holder or "another process (its PID is unknown)"
        super().__init__(
            f"the store {path} is busy: {who} holds it; waited {waited_s:.1f} s "
            "(KRONOS_LOCK_WAIT_S sets the wait)"
        )

    def __reduce__(self) -> tuple:
        # rebuilt from its fields when pickled (a Ray task's error crosses processes)
        return type(self), (self.path, self.waited_s, self.holder)


class LookAhead(KronosError):
    """A read, model or forecast would use data after its point-in-time cutoff (asof)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint for an unknown name: the closest choice, else the list of choices."""
    names = sorted(choices)
    close = difflib.get_close_matches(word, names, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (one of: {', '.join(names)})" if names else ""
