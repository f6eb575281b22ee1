"""Walk-forward splits: which sessions each fold trains on and which it tests.

A fold's test window runs from one retrain boundary to the session before the
next; its training window ends ``purge`` sessions before the test window
starts, so no training label (``HORIZON`` sessions ahead) reaches into the test
window. The splitter only computes dates; the simulator only simulates.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kronos.calendar import period_key
from kronos.errors import ConfigError, InputError
from kronos.models.base import HORIZON

Retrain = Literal["weekly", "monthly", "quarterly", "yearly"]


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold; every date is an inclusive session date."""

    index: int
    train_start: date
    train_end: date
    test_start: date
    test_end: date
    purge: int  # sessions strictly between train_end and test_start


class WalkForward(BaseModel):
    """Expanding or rolling training windows, refitted at a calendar cadence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: Literal["expanding", "rolling"]
    train_sessions: int = Field(
        ge=1, description="expanding: shortest training window; rolling: its length"
    )
    retrain: Retrain
    weekday: int = Field(
        2, ge=0, le=6, description="weekly: retrain the night of this weekday (0=Monday)"
    )
    purge: int = Field(HORIZON, description="sessions between train_end and test_start")

    @field_validator("purge")
    @classmethod
    def _purge_covers_horizon(cls, value: int) -> int:
        if value < HORIZON:
            raise ValueError(
                f"purge={value} is shorter than the forecast horizon ({HORIZON} sessions): "
                "training labels would overlap the test window"
            )
        return value

    def folds(self, sessions: Sequence[date], start: date, end: date) -> list[Fold]:
        """Folds whose test windows partition the sessions in ``[start, end]``, in order."""
        _check_sessions(sessions)
        if start > end:
            raise ConfigError(f"start {start} is after end {end}")
        lo, hi = bisect_left(sessions, start), bisect_right(sessions, end)
        if lo == hi:
            raise InputError(f"no sessions between {start} and {end}")
        key = _period_key(self.retrain, self.weekday)
        firsts = [i for i in range(lo, hi) if i == lo or key(sessions[i]) != key(sessions[i - 1])]
        folds = []
        for index, (first, stop) in enumerate(zip(firsts, [*firsts[1:], hi], strict=True)):
            train_end = first - self.purge - 1
            available = max(train_end + 1, 0)
            if available < self.train_sessions:
                raise ConfigError(
                    f"fold {index} (test_start {sessions[first]}) has {available} training "
                    f"sessions before its {self.purge}-session purge gap, fewer than "
                    f"train_sessions={self.train_sessions}: move start later or shorten "
                    "train_sessions"
                )
            train_start = 0 if self.train == "expanding" else train_end - self.train_sessions + 1
            folds.append(
                Fold(
                    index=index,
                    train_start=sessions[train_start],
                    train_end=sessions[train_end],
                    test_start=sessions[first],
                    test_end=sessions[stop - 1],
                    purge=self.purge,
                )
            )
        return folds


def _check_sessions(sessions: Sequence[date]) -> None:
    for i in range(1, len(sessions)):
        if sessions[i] <= sessions[i - 1]:
            problem = "duplicated" if sessions[i] == sessions[i - 1] else "out of order"
            raise ValueError(
                f"sessions must be sorted and unique: {sessions[i]} at position {i} is {problem}"
            )


def _period_key(retrain: Retrain, weekday: int) -> Callable[[date], Hashable]:
    """A function equal on two sessions exactly when they fall in the same retrain period."""
    # weekly: a period starts the day after ``weekday``; a session on ``weekday``
    # itself closes the previous period (the model is refitted that night)
    period = {"yearly": "year", "quarterly": "quarter", "monthly": "month"}.get(
        retrain, "week_after"
    )
    return lambda d: period_key(d, period, weekday)
