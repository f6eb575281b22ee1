"""Why the planner dropped a candidate order: rule codes, the ledger, the reasons.

The planner's steps (:mod:`kronos.decision.planner`) drop candidates in order
into one :class:`Ledger`; a candidate keeps the first rule that dropped it and
up to three numbers for its reason. :func:`reasons` formats every dropped
candidate's reason in one vectorised pass (``Plan.dropped``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from kronos.config import PolicySettings, PortfolioSettings

DROPPED_SCHEMA = {"symbol": pl.String(), "side": pl.String(), "reason": pl.String()}

# rule codes, in the order the steps apply them
(
    UNTARGETED,
    NO_PRICE,
    DUST,
    BAND,
    COOLDOWN,
    BREAKER,
    RECO,
    NO_FORECAST,
    ABS_DEV,
    NO_SIGMA,
    SIGMA_Z,
    FRACTION,
    DUST_SELL,
    AUTOSIZE_NAME,
    AUTOSIZE_SECTOR,
    TURNOVER,
    CASH,
) = range(1, 18)


class Ledger:
    """Which candidates are still alive; for each dropped one, its rule and numbers.

    Mutable on purpose: the steps share one ledger and drop rows in order, so a
    row keeps the first rule that dropped it.
    """

    def __init__(self, alive: np.ndarray) -> None:
        n = alive.size
        self.alive = alive.copy()
        self.why = np.zeros(n, dtype=np.int8)
        self.v1, self.v2, self.v3 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)

    def note(self, mask: np.ndarray, rule: int) -> None:
        """Give rows that were never candidates (``mask``, none alive) a reason."""
        self.why[mask] = rule

    def drop(self, mask: np.ndarray, rule: int, *values: np.ndarray) -> None:
        """Drop the alive rows of ``mask`` under ``rule``, keeping ``values`` for the reason."""
        m = self.alive & mask
        self.why[m] = rule
        for out, val in zip((self.v1, self.v2, self.v3), values, strict=False):
            out[m] = val[m]
        self.alive[m] = False

    def drop_row(self, i: int, rule: int, a: float, b: float, c: float) -> None:
        """Drop row ``i`` (alive) under ``rule`` with the numbers ``a``, ``b``, ``c``."""
        self.why[i] = rule
        self.v1[i], self.v2[i], self.v3[i] = a, b, c
        self.alive[i] = False


@dataclass(frozen=True)
class Figures:
    """The plan-wide numbers some reasons quote (dollars; scales as factors)."""

    min_buy: float
    gross: float = 0.0  # orders' notional before the turnover guard
    turnover_cap: float = 0.0  # PT_TURNOVER_CAP_PCT x NAV
    turnover_scale: float = 1.0
    buys: float = 0.0  # buys' notional before the cash step (c)
    buy_funds: float = 0.0  # cash above the floor for them
    buy_scale: float = 1.0


def reasons(
    *,
    symbols: pl.Series,
    ledger: Ledger,
    want: np.ndarray,
    blocked: Mapping[str, str],
    figures: Figures,
    portfolio: PortfolioSettings,
    policy: PolicySettings,
) -> pl.DataFrame:
    """symbol, side, reason of every dropped candidate (:data:`DROPPED_SCHEMA`).

    ``want``: the dollar delta per row (its sign gives the side).
    """
    why = ledger.why
    idx = np.flatnonzero(why > 0)
    if not idx.size:
        return pl.DataFrame(schema=DROPPED_SCHEMA)
    names = symbols.to_list()
    sym = [names[i] for i in idx.tolist()]
    brk = [blocked[s] if w == BREAKER else None for s, w in zip(sym, why[idx], strict=True)]
    frame = pl.DataFrame(
        {
            "symbol": pl.Series(sym, dtype=pl.String),
            "_want": want[idx],
            "_why": why[idx],
            "_v1": ledger.v1[idx],
            "_v2": ledger.v2[idx],
            "_v3": ledger.v3[idx],
            "_brk": pl.Series(brk, dtype=pl.String),
        }
    )
    side = pl.when(pl.col("_want") > 0).then(pl.lit("buy")).when(pl.col("_want") < 0)
    side = side.then(pl.lit("sell"))
    texts = _texts(figures, portfolio, policy)
    expr = pl.when(pl.lit(False)).then(pl.lit(None, dtype=pl.String))
    present = set(why[idx].tolist())  # only the rules that dropped something are formatted
    for rule, text in texts.items():
        if rule in present:
            expr = expr.when(pl.col("_why") == rule).then(text)
    # every column is a string already (no cast: one step less on a small frame)
    return frame.select("symbol", side=side, reason=expr.otherwise(None))


def _texts(k: Figures, pt: PortfolioSettings, policy: PolicySettings) -> dict[int, pl.Expr]:
    """The reason of each rule as an expression over the ledger's columns."""
    a, b, c = (pl.col(name).round(2) for name in ("_v1", "_v2", "_v3"))
    interval_s = policy.policy_min_trade_interval_secs
    cooldown_s = policy.planner_cooldown_mins * 60.0
    return {
        UNTARGETED: pl.lit("not in allocation: held as is"),
        NO_PRICE: pl.lit("no price"),
        DUST: pl.format(
            f"dust: |delta| ${{}} < PT_MIN_ORDER_NOTIONAL ${pt.pt_min_order_notional:g}", a
        ),
        BAND: pl.format(
            f"no-trade band: |delta weight| {{}}% < PT_NO_TRADE_BAND_PCT "
            f"{100 * pt.pt_no_trade_band_pct:g}%",
            (pl.col("_v1") * 100).round(4),
        ),
        COOLDOWN: pl.concat_str(
            pl.format("cooldown: last trade {}s ago, within ", pl.col("_v1").round(0)),
            pl.concat_str(
                pl.when(pl.col("_v1") < interval_s).then(
                    pl.lit(f"POLICY_MIN_TRADE_INTERVAL_SECS={interval_s:g}s")
                ),
                pl.when(pl.col("_v1") < cooldown_s).then(
                    pl.lit(f"PLANNER_COOLDOWN_MINS={policy.planner_cooldown_mins:g}min")
                ),
                separator=" and ",
                ignore_nulls=True,
            ),
        ),
        BREAKER: pl.format("breaker: {} (no buys)", pl.col("_brk")),
        RECO: pl.lit("POLICY_REQUIRE_RECO: not among the recommendations"),
        NO_FORECAST: pl.lit("no step-1 forecast for POLICY_MIN_ABS_DEV / POLICY_MIN_SIGMA_Z"),
        ABS_DEV: pl.format(
            f"POLICY_MIN_ABS_DEV: p50 {{}} < {policy.policy_min_abs_dev:g}",
            pl.col("_v1").round(6),
        ),
        NO_SIGMA: pl.lit("POLICY_MIN_SIGMA_Z: p95 <= p05, no sigma"),
        SIGMA_Z: pl.format(
            f"POLICY_MIN_SIGMA_Z: p50/sigma {{}} < {policy.policy_min_sigma_z:g}",
            pl.col("_v1").round(3),
        ),
        FRACTION: pl.lit("less than one share"),
        DUST_SELL: pl.format(
            f"dust: sell of whole shares ${{}} < PT_MIN_ORDER_NOTIONAL "
            f"${pt.pt_min_order_notional:g}",
            a,
        ),
        AUTOSIZE_NAME: pl.format(
            f"POLICY_MIN_NOTIONAL_USD: ${{}} < ${k.min_buy:g}; autosizing to {{}} shares "
            f"(${{}}) would breach PT_MAX_POS_PCT {100 * pt.pt_max_pos_pct:g}%",
            a,
            pl.col("_v2").cast(pl.Int64),
            c,
        ),
        AUTOSIZE_SECTOR: pl.format(
            f"POLICY_MIN_NOTIONAL_USD: ${{}} < ${k.min_buy:g}; autosizing to {{}} shares "
            f"(${{}}) would breach PT_SECTOR_MAX_PCT {100 * pt.pt_sector_max_pct:g}%",
            a,
            pl.col("_v2").cast(pl.Int64),
            c,
        ),
        TURNOVER: pl.format(
            f"turnover guard: orders ${k.gross:.2f} > PT_TURNOVER_CAP_PCT x NAV "
            f"${k.turnover_cap:.2f}; scaled x{k.turnover_scale:.4f} to ${{}} < minimum ${{}}",
            a,
            b,
        ),
        CASH: pl.format(
            f"cash floor: buys ${k.buys:.2f} > cash above PT_CASH_FLOOR_PCT "
            f"${k.buy_funds:.2f}; scaled x{k.buy_scale:.4f} to ${{}} < minimum ${k.min_buy:g}",
            a,
        ),
    }
