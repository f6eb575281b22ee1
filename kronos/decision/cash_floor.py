"""The planner's step 7: the cash floor before submit (see :mod:`kronos.decision.planner`).

Buys are paid from ``cash + sells - PT_CASH_FLOOR_PCT * NAV``. (a) When even
without buys cash would sit below the floor, the lowest-utility holdings are
sold; (b) unfunded buys are bridged by replacement sells while the friction
and the turnover cap allow; (c) the remaining buys are scaled down pro rata.
Arrays are row-aligned over the planner's candidates, sorted by symbol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kronos.config import PortfolioSettings
from kronos.decision.drops import CASH, Ledger

_EPS = 1e-9


@dataclass(frozen=True)
class Funded:
    """What step 7 leaves: the orders' shares and the replacement sells on top."""

    shares: np.ndarray
    replacement: np.ndarray  # shares sold on top of the orders (intent "replacement")
    buys: float  # the buys' notional before (c)
    funds: float  # cash above the floor for them
    scale: float  # (c)'s factor, 1 when not binding


def cash_floor(
    *,
    has_target: np.ndarray,
    priced: np.ndarray,
    target_weight: np.ndarray,
    utility: np.ndarray,
    held: np.ndarray,
    price: np.ndarray,
    buy: np.ndarray,
    ledger: Ledger,
    shares: np.ndarray,
    cooling: np.ndarray,
    cash: float,
    floor_cash: float,
    turnover_cap: float,
    min_buy: float,
    portfolio: PortfolioSettings,
) -> Funded:
    """Steps 7a to 7c: replacement sells, then the buys the cash above the floor allows.

    ``price``: NaN where unpriced; ``cooling``: names in cooldown (no (b) sells);
    ``turnover_cap``: ``PT_TURNOVER_CAP_PCT * NAV``. Buys scaled under ``min_buy``
    are dropped in ``ledger``.
    """
    px, alive = price, ledger.alive
    notional = np.nan_to_num(shares * px)
    avail = cash + float(notional[~buy].sum()) - floor_cash
    held_after = np.where(buy, held, held - shares)
    repl = np.zeros(px.size)
    pool = has_target & priced & (held_after > 0) & ~(alive & buy)
    pool_util = np.where((target_weight <= 0) | np.isnan(utility), -np.inf, utility)
    order = np.lexsort((np.arange(px.size), pool_util))
    order = order[pool[order]]
    minimum = portfolio.pt_min_order_notional
    if avail < 0:  # (a) the floor outranks cooldown and the turnover cap
        avail += _sell_from(order, -avail, held_after, px, repl, minimum, up=True)
    buys_n = float(notional[buy].sum())
    if buys_n > max(avail, 0.0):  # (b) bridge unfunded buys where the friction allows
        order = order[~cooling[order] & (held_after[order] - repl[order] > 0)]
        x = _friction_limit(
            notional[alive & buy],
            np.nan_to_num(utility[alive & buy], nan=-np.inf),
            max(avail, 0.0),
            (held_after - repl)[order] * px[order],
            pool_util[order],
            portfolio.pt_replacement_fric_bps / 1e4,
        )
        room = turnover_cap - float(notional.sum()) - float(np.nansum(repl * px))
        x = min(x, max(room, 0.0), buys_n - max(avail, 0.0))
        if x > 0:
            avail += _sell_from(order, x, held_after, px, repl, minimum, up=False)

    # (c): residual buys pro rata
    h, funds = 1.0, max(avail, 0.0)
    if buys_n > funds:
        h = funds / buys_n
        shares = np.where(buy, np.floor(shares * h + _EPS), shares)
        _trim_to(funds, shares, px, alive & buy)
        ledger.drop(buy & (shares * px < min_buy), CASH, shares * px)
        shares = np.where(ledger.alive, shares, 0.0)
    return Funded(shares, repl, buys_n, funds, h)


def _friction_limit(
    buy_val: np.ndarray,
    buy_util: np.ndarray,
    funded: float,
    hold_val: np.ndarray,
    hold_util: np.ndarray,
    fric: float,
) -> float:
    """How much replacement selling the friction allows.

    Buys are funded best utility first, the first ``funded`` dollars from cash;
    holdings (in the order given, lowest utility first) fund the rest dollar by
    dollar while ``holding utility + fric < utility of the buy funded``. Both
    sides are monotone, so the allowed amount is a prefix: its length is returned.
    """
    if not buy_val.size or not hold_val.size:
        return 0.0
    ob = np.argsort(-buy_util, kind="stable")
    b_end = np.cumsum(buy_val[ob]) - funded
    keep = b_end > 0
    b_end, b_u = b_end[keep], buy_util[ob][keep]
    h_end = np.cumsum(hold_val)
    if not b_end.size:
        return 0.0
    total = min(float(b_end[-1]), float(h_end[-1]))
    starts = np.unique(np.concatenate([[0.0], b_end, h_end]))
    starts = starts[starts < total]
    ib = np.searchsorted(b_end, starts, side="right")
    ih = np.searchsorted(h_end, starts, side="right")
    ok = hold_util[ih] + fric < b_u[ib]
    return total if ok.all() else float(starts[int(np.argmin(ok))])


def _trim_to(funds: float, shares: np.ndarray, px: np.ndarray, rows: np.ndarray) -> None:
    """Take single shares off the largest of ``rows`` while they cost more than ``funds``.

    Pro-rata rounding overshoots only by float error, so this rarely loops.
    """
    while rows.any() and float((shares[rows] * px[rows]).sum()) > funds:
        i = np.flatnonzero(rows)[int(np.argmax(shares[rows] * px[rows]))]
        shares[i] -= 1.0


def _sell_from(
    order: np.ndarray,
    amount: float,
    rem: np.ndarray,
    price: np.ndarray,
    repl: np.ndarray,
    min_notional: float,
    up: bool,
) -> float:
    """Sell ``amount`` dollars from holdings in ``order`` into ``repl``; returns dollars sold.

    ``up``: round shares up (and to the minimum notional) so the amount is
    surely reached; else down, stopping at the first piece under the minimum.
    """
    sold = 0.0
    for i in order:
        if sold >= amount - _EPS:
            break
        left = rem[i] - repl[i]
        need = (amount - sold) / price[i]
        if up:
            k = min(left, max(math.ceil(need - _EPS), math.ceil(min_notional / price[i] - _EPS)))
            if k * price[i] < min_notional:
                continue
        else:
            k = min(left, math.floor(need + _EPS))
            if k <= 0 or k * price[i] < min_notional:
                break
        repl[i] += k
        sold += k * price[i]
    return sold
