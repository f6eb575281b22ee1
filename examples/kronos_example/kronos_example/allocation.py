"""An allocator weighting and a reviewer of one's own.

- :func:`inverse_vol` (``PT_WEIGHTING=inverse_vol``): a weighting gets the
  scores of the names in the book, their symbols and the portfolio settings,
  and no volatility reaches it, so this one is the **equal-weight** case of
  inverse volatility (every name's volatility taken as the same): one weight
  per name. The allocator spreads its budget in proportion, then applies the
  name and sector caps, breakers, turnover cap and cash floor as always.
- :class:`DenyList` (``PT_REVIEWER=deny_list``): the whitepaper's allow/deny
  review hook, here a fixed list instead of an LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kronos.config import PortfolioSettings

DEFAULT_DENIED = ("AAPL", "MSFT")


def inverse_vol(scores: np.ndarray, symbols: list[str], settings: PortfolioSettings) -> np.ndarray:
    """Equal weights: inverse volatility with every name's volatility the same."""
    return np.ones(len(symbols))


@dataclass(frozen=True)
class DenyList:
    """Denies the symbols of ``denied`` (default :data:`DEFAULT_DENIED`), allows the rest."""

    denied: frozenset[str] = frozenset(DEFAULT_DENIED)

    @property
    def note(self) -> str:
        """Recorded as the allocation's reviewer note."""
        return f"DenyList: denies {', '.join(sorted(self.denied))}"

    def review(self, symbols: Sequence[str]) -> dict[str, bool]:
        """Symbol -> allowed."""
        return {s: s not in self.denied for s in symbols}
