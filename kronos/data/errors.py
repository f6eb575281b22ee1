"""Errors raised by the data layer. Every message names where the problem is."""

from __future__ import annotations

from dataclasses import dataclass

from kronos.errors import KronosError


class KronosDataError(KronosError):
    """Base class for data-layer errors."""


class SchemaVersionError(KronosDataError):
    """The database was written by a newer kronos, or needs a migration it cannot get."""


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


class InputError(KronosDataError):
    """Bad input; nothing was written."""

    def __init__(self, problems: list[Problem], *, limit: int = 10) -> None:
        self.problems = problems
        self.limit = limit
        super().__init__(self.describe())

    def describe(self, outcome: str = "nothing was written") -> str:
        """The message, saying ``outcome`` (``kronos data validate``: "cannot read the file")."""
        shown = "\n".join(f"  {p}" for p in self.problems[: self.limit])
        extra = len(self.problems) - self.limit
        more = f"\n  ... and {extra} more" if extra > 0 else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        return f"{len(self.problems)} {noun} in input, {outcome}:\n{shown}{more}"

    def __reduce__(self) -> tuple:
        # rebuilt from its problems when pickled (a Ray task's error crosses processes)
        return _input_error, (self.problems, self.limit)


def _input_error(problems: list[Problem], limit: int) -> InputError:
    return InputError(problems, limit=limit)


class SourceError(KronosDataError):
    """A data source (Alpaca, FMP) answered with an error or data we cannot use."""


class SourceUnreachable(SourceError):
    """A data source could not be reached (no connection, no DNS, no answer in time)."""
