"""Errors raised by the data layer. Every message names where the problem is.

:class:`~kronos.errors.InputError` and :class:`~kronos.errors.Problem` live in
:mod:`kronos.errors` (bad input is not the data layer's alone); they are
importable from here too.
"""

from __future__ import annotations

from kronos.errors import InputError, KronosError, Problem

__all__ = [
    "InputError",
    "KronosDataError",
    "Problem",
    "SchemaVersionError",
    "SourceError",
    "SourceUnreachable",
]


class KronosDataError(KronosError):
    """Base class for data-layer errors: the store, its schema, a data source."""


class SchemaVersionError(KronosDataError):
    """The database was written by a newer kronos, or needs a migration it cannot get."""


class SourceError(KronosDataError):
    """A data source (Alpaca, FMP) answered with an error or data we cannot use."""


class SourceUnreachable(SourceError):
    """A data source could not be reached (no connection, no DNS, no answer in time)."""
