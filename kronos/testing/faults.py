"""Faults of the fake Alpaca: which requests fail, and how, scripted or drawn at seeded rates.

Kinds (trading paths only; see :mod:`kronos.testing.fake_alpaca` for what each does):
``"429"``, ``"500"``, ``"503"``, ``"504_after_accept"``, ``"timeout"``, ``"reject"``
(these two only on ``POST /v2/orders``) and ``"partial"`` (drawn per execution).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["FAULT_KINDS", "FaultConfig", "Faults"]

FAULT_KINDS = ("429", "500", "503", "504_after_accept", "timeout", "reject", "partial")
_REQUEST_FAULTS = FAULT_KINDS[:-1]
_ORDER_FAULTS = frozenset({"504_after_accept", "reject"})
_ORDERS = "/v2/orders"


@dataclass(frozen=True)
class FaultConfig:
    """Random fault rates per kind (probability per eligible request or execution).

    ``retry_after_s`` is the ``Retry-After`` of a 429; ``timeout_s`` how long a
    ``"timeout"`` answer waits; ``partial_fraction`` the share of a partial fill.
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    retry_after_s: float = 0.0
    timeout_s: float = 2.0
    partial_fraction: float = 0.5

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        bad = {k: r for k, r in self.rates.items() if not 0.0 <= r <= 1.0}
        if bad:
            raise ValueError(f"fault rates must lie in [0, 1]: {bad}")
        if sum(r for k, r in self.rates.items() if k != "partial") > 1.0:
            raise ValueError("request fault rates add up to more than 1")
        if self.retry_after_s < 0 or self.timeout_s < 0:
            raise ValueError("retry_after_s and timeout_s must be >= 0")
        if not 0.0 < self.partial_fraction < 1.0:
            raise ValueError("partial_fraction must lie in (0, 1)")


def _eligible(kind: str, method: str, path: str) -> bool:
    if kind == "partial":
        return False
    if kind in _ORDER_FAULTS:
        return method == "POST" and path == _ORDERS
    return True


@dataclass(frozen=True)
class _Scripted:
    kind: str
    method: str | None
    path: str | None

    def matches(self, method: str, path: str) -> bool:
        return (
            _eligible(self.kind, method, path)
            and self.method in (None, method)
            and self.path in (None, path)
        )


class Faults:
    """Decides which faults happen: a scripted queue first, then seeded random draws.

    Thread-safe; counts every fault it hands out by kind.
    """

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._queue: list[_Scripted] = []
        self._counts: Counter[str] = Counter()

    def inject(
        self, kind: str, *, method: str | None = None, path: str | None = None, times: int = 1
    ) -> None:
        """Queue ``times`` faults of ``kind`` for the next matching requests (or executions).

        ``method``/``path`` narrow the match (exact path, e.g. ``"/v2/account"``);
        ``"504_after_accept"`` and ``"reject"`` only ever match ``POST /v2/orders``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._queue += [_Scripted(kind, method, path)] * times

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queue.clear()

    @property
    def pending(self) -> int:
        """How many queued faults have not happened yet."""
        with self._lock:
            return len(self._queue)

    def draw(self, method: str, path: str) -> str | None:
        """The fault for this request, if any."""
        with self._lock:
            for i, scripted in enumerate(self._queue):
                if scripted.matches(method, path):
                    del self._queue[i]
                    return self._count(scripted.kind)
            kinds = [
                k
                for k in _REQUEST_FAULTS
                if self.config.rates.get(k, 0.0) > 0 and _eligible(k, method, path)
            ]
            if not kinds:
                return None
            u, total = self._rng.random(), 0.0
            for kind in kinds:
                total += self.config.rates[kind]
                if u < total:
                    return self._count(kind)
            return None

    def partial(self) -> float | None:
        """The fraction to fill at this execution, or ``None`` for a full fill."""
        with self._lock:
            for i, scripted in enumerate(self._queue):
                if scripted.kind == "partial":
                    del self._queue[i]
                    self._count("partial")
                    return self.config.partial_fraction
            rate = self.config.rates.get("partial", 0.0)
            if rate > 0 and self._rng.random() < rate:
                self._count("partial")
                return self.config.partial_fraction
            return None

    def counts(self) -> dict[str, int]:
        """Faults handed out so far, by kind."""
        with self._lock:
            return dict(self._counts)

    def _count(self, kind: str) -> str:
        self._counts[kind] += 1
        return kind
