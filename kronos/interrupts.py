"""Stop signals as interrupts: SIGTERM and SIGHUP end a command as Ctrl-C does.

``timeout``, cron wrappers and systemd stop a process with SIGTERM; a closed
terminal sends SIGHUP. Under :func:`stop_on_signals` both raise
:class:`RunInterrupted` (a ``KeyboardInterrupt``), so the code unwinding it
closes its MLflow run KILLED and keeps what it made. ``kronos`` installs it
around every command.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # exit 128 + n: 130, 143, 129


class RunInterrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) arrived; ``exit_status`` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_status = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def signal_name(exc: BaseException) -> str:
    """The name of the signal behind an interrupt (SIGINT for a plain Ctrl-C)."""
    return signal.Signals(exc.signum).name if isinstance(exc, RunInterrupted) else "SIGINT"


class Caught:
    """The stop signal that arrived under :func:`stop_on_signals`, if any."""

    signum: int | None = None

    @property
    def exit_status(self) -> int | None:
        """128 + the signal's number (143 for SIGTERM), or None when none arrived."""
        return None if self.signum is None else 128 + self.signum


@contextmanager
def stop_on_signals() -> Iterator[Caught]:
    """Within the block, SIGTERM and SIGHUP stop the process as SIGINT does.

    The first such signal raises :class:`RunInterrupted` in the main thread, so
    the code unwinding it can close its run (KILLED) and keep what it made;
    further signals during that clean-up are ignored. Outside the main thread
    it does nothing. The previous handlers come back on exit. The yielded
    :class:`Caught` tells which signal arrived, for callers (such as Click)
    that turn the interrupt into an exit status of their own.
    """
    caught = Caught()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, _frame: object) -> None:
        if caught.signum is not None:
            return
        caught.signum = signum
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
