"""The allocator's replaceable steps: the weighting of the names in the book and the reviewer.

``PT_WEIGHTING`` names a :data:`Weighting` (default ``softmax``) and
``PT_REVIEWER`` a :class:`Reviewer` (default ``allow_all``): a built-in name,
an import path or an entry point (:func:`kronos.plugins.resolve`). The
allocator (:mod:`kronos.decision.allocator`) applies its caps, turnover and
cash floor after them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from kronos.config import PortfolioSettings
from kronos.errors import ConfigError, InputError
from kronos.plugins import resolve


class Reviewer(Protocol):
    """The whitepaper's LLM allow/deny review of trade ideas.

    An optional ``note`` attribute is recorded as ``Allocation.reviewer_note``.
    """

    def review(self, symbols: Sequence[str]) -> dict[str, bool]:
        """Symbol -> allowed; a symbol left out counts as denied."""
        ...


@dataclass(frozen=True)
class AllowAll:
    """The default reviewer: allows every idea; no LLM was asked."""

    note: str = "default reviewer AllowAll: every idea allowed, no LLM review"

    def review(self, symbols: Sequence[str]) -> dict[str, bool]:
        """Every symbol allowed."""
        return dict.fromkeys(symbols, True)


def softmax(score: np.ndarray, k: float) -> np.ndarray:
    """``exp(k * s) / sum exp(k * s)`` (shifted by the maximum for stability)."""
    z = k * score
    e = np.exp(z - z.max())
    return e / e.sum()


# a weighting: (scores of the names in the book, their symbols, settings) -> weights >= 0
Weighting = Callable[[np.ndarray, list[str], PortfolioSettings], np.ndarray]


def softmax_weights(
    scores: np.ndarray, symbols: list[str], settings: PortfolioSettings
) -> np.ndarray:
    """The built-in weighting: :func:`softmax` of the scores at ``PT_SCORE_EXP``."""
    return softmax(scores, settings.pt_score_exp)


# built-in names of PT_WEIGHTING and PT_REVIEWER (kronos.config lists the same names)
WEIGHTINGS: Mapping[str, str] = MappingProxyType(
    {"softmax": "kronos.decision.weighting:softmax_weights"}
)
REVIEWERS: Mapping[str, str] = MappingProxyType({"allow_all": "kronos.decision.weighting:AllowAll"})


def weighting_of(settings: PortfolioSettings) -> tuple[Weighting, str]:
    """The weighting ``PT_WEIGHTING`` names (built-in, import path or entry point) and its path."""
    fn, path = resolve(settings.pt_weighting, WEIGHTINGS, "kronos.weightings")
    if not callable(fn):
        raise ConfigError(f"weighting {path!r} is a {type(fn).__name__}, not a function")
    return fn, path


def reviewer_of(settings: PortfolioSettings) -> Reviewer:
    """The reviewer ``PT_REVIEWER`` names: a class built bare, or a factory's result."""
    made, path = resolve(settings.pt_reviewer, REVIEWERS, "kronos.reviewers")
    if not callable(made):
        raise ConfigError(f"reviewer {path!r} is a {type(made).__name__}, not a class or function")
    try:
        reviewer = made()
    except Exception as exc:
        raise ConfigError(
            f"reviewer {path!r}: building it with no arguments failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(reviewer, "review", None)):
        raise ConfigError(
            f"reviewer {path!r} gave a {type(reviewer).__name__} without a review(symbols) method"
        )
    return reviewer


def weigh(
    weighting: Weighting,
    path: str,
    scores: np.ndarray,
    symbols: list[str],
    settings: PortfolioSettings,
) -> np.ndarray:
    """``weighting``'s weights of ``symbols``, checked: one finite value >= 0 per name."""
    out: Any = weighting(scores, symbols, settings)
    try:
        w = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"weighting {path!r} returned {type(out).__name__}: {exc}") from None
    if w.shape != (len(symbols),):
        raise InputError(
            f"weighting {path!r} returned shape {w.shape} for {len(symbols)} names; "
            "expected one weight per name"
        )
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise InputError(
            f"weighting {path!r} gave {symbols[k]} the weight {float(w[k])!r}; "
            "weights must be finite and >= 0"
        )
    return w
