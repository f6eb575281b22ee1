"""The roots of kronos's own errors.

Every error a user can cause derives from :class:`KronosError`; the ``kronos``
command prints its message on one line and exits 2, never a traceback.
"""

from __future__ import annotations


class KronosError(Exception):
    """Base of every error kronos raises on purpose (bad input, busy store, ...)."""


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
