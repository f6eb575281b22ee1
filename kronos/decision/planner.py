"""Order planner and policy gates (whitepaper sections 7, 8 and 11).

Pure: an :class:`~kronos.decision.allocator.Allocation` and the book in, a :class:`Plan`
out; no store, no clock (``now`` is passed in). Settings come from
:class:`kronos.config.PortfolioSettings` (``PT_*``) and
:class:`kronos.config.PolicySettings` (``POLICY_*``, ``PLANNER_*``). Notionals are
valued at the last price of ``positions`` (symbol, qty, price; rows with qty 0
carry quotes of names not held). Each candidate order goes through these steps;
one that is dropped is listed in ``Plan.dropped`` with the rule and the numbers.

1. **Share deltas.** ``delta = target_weight * NAV - qty * price``; a buy or sell
   of ``floor(|delta| / price)`` whole shares (at most the shares held). A sell
   to a zero target is an ``"exit"`` of the whole holding (fractional shares
   included); other orders are ``"rebalance"``.
2. **Dust.** Dropped when ``|delta| < PT_MIN_ORDER_NOTIONAL`` or, except exits,
   ``|delta| / NAV < PT_NO_TRADE_BAND_PCT``; sells under ``PT_MIN_ORDER_NOTIONAL``
   after rounding to whole shares too (checked after steps 3 and 4, so a sell
   in cooldown is reported as such).
3. **Cooldown** (every order but the floor's forced sells, 7a). No order for a
   symbol whose last trade (``last_trade_at``) is less than
   ``POLICY_MIN_TRADE_INTERVAL_SECS`` or ``PLANNER_COOLDOWN_MINS`` before ``now``.
4. **Buy gates.** Breakers: a ``blocked`` name gets no buy (sells are allowed).
   ``POLICY_REQUIRE_RECO``: the symbol must be in ``recos``. With the step-1
   forecast (log returns p05, p50, p95): ``p50 >= POLICY_MIN_ABS_DEV`` and
   ``z = p50 / sigma >= POLICY_MIN_SIGMA_Z``, ``sigma = (p95 - p05) / 3.29``; a
   buy without a forecast is dropped unless both thresholds are 0. The gates
   are directional: a buy needs the forecast to expect a rise of that size.
5. **Minimum buy.** A buy under ``m = max(POLICY_MIN_NOTIONAL_USD,
   PT_MIN_ORDER_NOTIONAL)`` is autosized to ``ceil(m / price)`` shares when the
   name stays within ``PT_MAX_POS_PCT`` and its sector within
   ``PT_SECTOR_MAX_PCT`` (the allocator's targets plus earlier autosizes, in
   symbol order); otherwise it is dropped. Cash is checked in step 7.
6. **Turnover guard.** When the orders' notional exceeds
   ``PT_TURNOVER_CAP_PCT * NAV`` every order's shares are scaled by the same
   factor (rounded down); orders that fall under their minimum are dropped.
7. **Cash floor.** Buys are paid from ``cash + sells - PT_CASH_FLOOR_PCT * NAV``.
   When that is short: (a) if even without buys cash would sit below the floor,
   the lowest-utility holdings are sold (``"replacement"``, rounded up, cooldown
   and turnover cap notwithstanding: the floor outranks them); (b) unfunded buys
   are bridged by ``"replacement"`` sells of the lowest-utility holdings (names
   gliding to zero first) not in cooldown, as long as the holding's utility
   plus ``PT_REPLACEMENT_FRIC_BPS / 1e4`` is below the utility of the buy it funds
   (the best buys are funded first) and the turnover cap has room; (c) the
   remaining buys are scaled down pro rata (rounded down) and those under the
   minimum dropped. Afterwards ``cash + sells - buys >= PT_CASH_FLOOR_PCT * NAV``
   whenever the holdings allow it (``Plan.cash_after``).
8. **Order type.** Sells and buys are ``"limit"`` when ``|z| > PLANNER_Z_DEV_THRESH``
   or the notional exceeds ``PLANNER_LIMIT_NOTIONAL``, else ``"market"``; the limit
   price is the last price rounded to the tick (a marketable limit that caps
   slippage). A buy is a ``"bracket"`` when its quantity is whole shares, its
   price is at most ``PLANNER_BRACKET_PRICE_MAX`` and its forecast has
   ``p05 < 0 < p95``: the entry is the limit (or market) order above, the
   take-profit leg a limit sell at ``price * exp(p95)`` (rounded up to the tick)
   and the stop-loss leg a stop sell at ``price * exp(p05)`` (rounded down).

Every order carries the allocator's ``target_weight`` and the allocation's
turnover estimate (``turnover_est``, the run's ``sum |delta_weight|``, the same on
every order) for audit, and a deterministic :func:`client_order_id`. Orders
(:data:`ORDERS_SCHEMA`) list sells first, then buys, each by symbol;
:func:`orders_table_rows` shapes them as rows of the ``orders`` table.

Each step is one function below; step 8, the ids and the table rows live in
:mod:`kronos.decision.orders`, the drop rules and their reasons in
:mod:`kronos.decision.drops` (both re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import polars as pl

from kronos.config import PolicySettings, PortfolioSettings
from kronos.decision import drops as d
from kronos.decision.allocator import (
    Account,
    Allocation,
    check_positions,
    check_unique,
    codes,
    lookup,
    positions_of,
    rows_of,
    sorted_union,
    take,
    take_list,
)
from kronos.decision.cash_floor import cash_floor
from kronos.decision.drops import DROPPED_SCHEMA, Figures, Ledger, reasons
from kronos.decision.orders import (
    ORDERS_SCHEMA,
    TABLE_SCHEMA,
    Plan,
    client_order_id,
    orders_frame,
    orders_table_rows,
)
from kronos.metrics import sigma_from_band

__all__ = [
    "DROPPED_SCHEMA",
    "ORDERS_SCHEMA",
    "TABLE_SCHEMA",
    "Plan",
    "client_order_id",
    "orders_table_rows",
    "plan_orders",
]

QS = ("p05", "p50", "p95")
_EPS = 1e-9


def plan_orders(
    *,
    allocation: Allocation,
    book: pl.DataFrame,
    account: Account,
    forecasts: pl.DataFrame,
    ideas: set[str],
    last_trade_at: Mapping[str, datetime],
    blocked: Mapping[str, str],
    now: datetime,
    run_id: str,
    asof: date | datetime | str,
    portfolio: PortfolioSettings,
    policy: PolicySettings,
) -> Plan:
    """Orders that move ``book`` toward ``allocation``: the module's steps 1 to 8 in turn.

    ``book``: symbol, qty, price (qty 0: a quote of a name not held);
    ``forecasts``: symbol, p05, p50, p95 (step 1 when a ``step`` column is
    present); ``ideas``: the recommended symbols (``POLICY_REQUIRE_RECO``);
    ``last_trade_at``: symbol -> aware datetime of its last trade; ``blocked``:
    symbol -> breaker reason; ``now``: aware, when cooldowns are judged.
    """
    if now.tzinfo is None:
        raise ValueError(f"{now} is a naive datetime; give a time zone (UTC)")
    nav, cash = account.nav, account.cash
    c = _share_deltas(allocation=allocation, book=book, forecasts=forecasts, nav=nav)
    ledger = _candidates(c=c)
    _dust(c=c, ledger=ledger, nav=nav, portfolio=portfolio)
    cooling = _cooldown(c=c, ledger=ledger, last_trade_at=last_trade_at, now=now, policy=policy)
    _buy_gates(c=c, ledger=ledger, ideas=ideas, blocked=blocked, policy=policy)
    shares = _whole_shares(c=c, ledger=ledger, portfolio=portfolio)
    min_buy = max(policy.policy_min_notional_usd, portfolio.pt_min_order_notional)
    shares = _minimum_buy(
        c=c, ledger=ledger, shares=shares, nav=nav, min_buy=min_buy, portfolio=portfolio
    )
    turnover = _turnover_guard(
        c=c, ledger=ledger, shares=shares, nav=nav, min_buy=min_buy, portfolio=portfolio
    )
    funded = cash_floor(  # step 7
        has_target=c.has_target,
        priced=c.priced,
        target_weight=c.target_weight,
        utility=c.utility,
        held=c.held,
        price=c.px,
        buy=c.buy,
        ledger=ledger,
        shares=turnover.shares,
        cooling=cooling,
        cash=cash,
        floor_cash=portfolio.pt_cash_floor_pct * nav,
        turnover_cap=turnover.cap,
        min_buy=min_buy,
        portfolio=portfolio,
    )
    orders = orders_frame(  # step 8
        alive=ledger.alive,
        buy=c.buy,
        exit_=c.exit_,
        shares=funded.shares,
        replacement=funded.replacement,
        price=c.px,
        inputs=c.frame,
        z=c.z,
        turnover_est=allocation.turnover,
        policy=policy,
        run_id=run_id,
        asof=asof,
    )
    figures = Figures(
        min_buy=min_buy,
        gross=turnover.gross,
        turnover_cap=turnover.cap,
        turnover_scale=turnover.scale,
        buys=funded.buys,
        buy_funds=funded.funds,
        buy_scale=funded.scale,
    )
    side = orders["side"].to_numpy()
    value = orders["notional"].to_numpy()
    return Plan(
        orders=orders,
        dropped=reasons(
            symbols=c.frame["symbol"],
            ledger=ledger,
            want=c.want,
            blocked=blocked,
            figures=figures,
            portfolio=portfolio,
            policy=policy,
        ),
        run_id=run_id,
        asof=asof,
        cash_before=cash,
        cash_after=cash + float(value[side == "sell"].sum()) - float(value[side == "buy"].sum()),
        cash_floor=portfolio.pt_cash_floor_pct * nav,
        turnover_scale=turnover.scale,
        buy_scale=funded.scale,
        replacement_notional=float(np.nansum(funded.replacement * c.px)),
    )


@dataclass(frozen=True)
class _Deltas:
    """Step 1 per symbol (targets and book, sorted by symbol); NaN where unknown."""

    frame: pl.DataFrame  # symbol, sector, target_weight, utility, qty, price, p05, p50, p95
    symbol: np.ndarray
    sector: np.ndarray  # integer codes
    target_weight: np.ndarray
    utility: np.ndarray
    held: np.ndarray  # shares held, 0 when none
    p50: np.ndarray
    z: np.ndarray  # p50 / sigma of the step-1 forecast
    has_target: np.ndarray
    priced: np.ndarray  # a finite price above 0
    px: np.ndarray  # the price where priced, else NaN
    value: np.ndarray  # held x price, 0 where unpriced
    want: np.ndarray  # dollar delta to the target, 0 where untargeted
    buy: np.ndarray
    exit_: np.ndarray  # a sell to a zero target of a holding


def _share_deltas(
    *, allocation: Allocation, book: pl.DataFrame, forecasts: pl.DataFrame, nav: float
) -> _Deltas:
    """Step 1: the dollar delta of every targeted name and its side."""
    f = _inputs(allocation, book, forecasts)
    tw, util, held, price, p05, p50, p95 = (
        f[col].to_numpy() for col in ("target_weight", "utility", "qty", "price", *QS)
    )
    held = np.nan_to_num(held)
    has_target = ~np.isnan(tw)
    priced = np.isfinite(price) & (price > 0)
    value = held * np.where(priced, price, 0.0)
    want = np.where(has_target, tw * nav - value, 0.0)
    sigma = sigma_from_band(p05, p95)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, p50 / sigma, np.nan)
    return _Deltas(
        frame=f,
        symbol=f["symbol"].to_numpy(),
        sector=codes(f["sector"]),
        target_weight=tw,
        utility=util,
        held=held,
        p50=p50,
        z=z,
        has_target=has_target,
        priced=priced,
        px=np.where(priced, price, np.nan),
        value=value,
        want=want,
        buy=want > 0,
        exit_=has_target & (tw <= 0) & (held > 0),
    )


def _candidates(*, c: _Deltas) -> Ledger:
    """The ledger of candidates: every targeted name with a delta.

    Holdings without a target are held as is; a candidate without a price is dropped.
    """
    ledger = Ledger(c.has_target & (c.want != 0))
    ledger.note(~c.has_target & (c.held > 0), d.UNTARGETED)
    ledger.drop(~c.priced, d.NO_PRICE)
    return ledger


def _dust(*, c: _Deltas, ledger: Ledger, nav: float, portfolio: PortfolioSettings) -> None:
    """Step 2: deltas under the minimum notional or, except exits, the no-trade band."""
    size = np.abs(c.want)
    ledger.drop(size < portfolio.pt_min_order_notional, d.DUST, size)
    ledger.drop((size / nav < portfolio.pt_no_trade_band_pct) & ~c.exit_, d.BAND, size / nav)


def _cooldown(
    *,
    c: _Deltas,
    ledger: Ledger,
    last_trade_at: Mapping[str, datetime],
    now: datetime,
    policy: PolicySettings,
) -> np.ndarray:
    """Step 3: no order for a name traded within the cooldown; returns that mask."""
    elapsed = _seconds_since(c.symbol, last_trade_at, now)
    interval_s = policy.policy_min_trade_interval_secs
    cooldown_s = policy.planner_cooldown_mins * 60.0
    cooling = elapsed < max(interval_s, cooldown_s)
    ledger.drop(cooling, d.COOLDOWN, elapsed)
    return cooling


def _buy_gates(
    *,
    c: _Deltas,
    ledger: Ledger,
    ideas: set[str],
    blocked: Mapping[str, str],
    policy: PolicySettings,
) -> None:
    """Step 4: breakers, the recommendation and the directional forecast gates (buys only)."""
    buy, p50, z = c.buy, c.p50, c.z
    ledger.drop(buy & positions_of(c.symbol, blocked), d.BREAKER)
    if policy.policy_require_reco:
        ledger.drop(buy & ~positions_of(c.symbol, ideas), d.RECO)
    if policy.policy_min_abs_dev > 0 or policy.policy_min_sigma_z > 0:
        ledger.drop(buy & np.isnan(p50), d.NO_FORECAST)
    ledger.drop(buy & (p50 < policy.policy_min_abs_dev), d.ABS_DEV, p50)
    if policy.policy_min_sigma_z > 0:
        ledger.drop(buy & np.isnan(z), d.NO_SIGMA)
        ledger.drop(buy & (z < policy.policy_min_sigma_z), d.SIGMA_Z, z)


def _whole_shares(*, c: _Deltas, ledger: Ledger, portfolio: PortfolioSettings) -> np.ndarray:
    """Steps 1 and 2 in shares: whole shares of each alive candidate's delta.

    Sells are at most the holding, exits all of it; a sell of no whole share or
    under ``PT_MIN_ORDER_NOTIONAL`` is dropped.
    """
    raw = np.floor(np.abs(c.want) / np.where(c.priced, c.px, np.inf) + _EPS)
    shares = np.where(c.buy, raw, np.where(c.exit_, c.held, np.minimum(raw, c.held)))
    shares = np.where(ledger.alive, shares, 0.0)
    sell = ~c.buy
    ledger.drop(sell & (shares <= 0), d.FRACTION)
    value = shares * c.px
    ledger.drop(sell & (value < portfolio.pt_min_order_notional), d.DUST_SELL, value)
    return shares


def _minimum_buy(
    *,
    c: _Deltas,
    ledger: Ledger,
    shares: np.ndarray,
    nav: float,
    min_buy: float,
    portfolio: PortfolioSettings,
) -> np.ndarray:
    """Step 5: a buy under ``min_buy`` is autosized to it within the caps, else dropped.

    Name and sector caps count the targets and earlier autosizes (symbol order).
    """
    shares = shares.copy()
    px, tw = c.px, c.target_weight
    small = np.flatnonzero(ledger.alive & c.buy & (shares * px < min_buy))
    if small.size:
        code = c.sector
        sector_w = np.bincount(code, weights=np.nan_to_num(tw), minlength=int(code.max()) + 1)
        for i in small:
            k = math.ceil(min_buy / px[i] - _EPS)
            new_w = (c.value[i] + k * px[i]) / nav
            extra = max(new_w - tw[i], 0.0)
            if new_w > portfolio.pt_max_pos_pct + 1e-12:
                rule = d.AUTOSIZE_NAME
            elif sector_w[code[i]] + extra > portfolio.pt_sector_max_pct + 1e-12:
                rule = d.AUTOSIZE_SECTOR
            else:
                shares[i] = k
                sector_w[code[i]] += extra
                continue
            ledger.drop_row(i, rule, shares[i] * px[i], k, k * px[i])
    return np.where(ledger.alive, shares, 0.0)


@dataclass(frozen=True)
class _Turnover:
    shares: np.ndarray
    gross: float  # the orders' notional before the guard
    cap: float  # PT_TURNOVER_CAP_PCT x NAV
    scale: float


def _turnover_guard(
    *,
    c: _Deltas,
    ledger: Ledger,
    shares: np.ndarray,
    nav: float,
    min_buy: float,
    portfolio: PortfolioSettings,
) -> _Turnover:
    """Step 6: over the turnover cap, all orders' shares scaled by one factor.

    Scaled shares are rounded down; orders that fall under their minimum are dropped.
    """
    px = c.px
    gross = float(np.nansum(shares * px))
    cap = portfolio.pt_turnover_cap_pct * nav
    if gross <= cap:
        return _Turnover(shares, gross, cap, 1.0)
    g = cap / gross
    minimum = np.where(c.buy, min_buy, portfolio.pt_min_order_notional)
    shares = np.where(ledger.alive, np.floor(shares * g + _EPS), 0.0)
    ledger.drop(shares * px < minimum, d.TURNOVER, shares * px, minimum)
    return _Turnover(np.where(ledger.alive, shares, 0.0), gross, cap, g)


def _inputs(
    allocation: Allocation, positions: pl.DataFrame, forecasts: pl.DataFrame
) -> pl.DataFrame:
    """Targets, book and step-1 forecast per symbol, sorted by symbol (NaN where unknown)."""
    check_positions(positions)
    fc = forecasts
    if "step" in fc.columns:
        fc = fc.filter(pl.col("step") == 1)
    fc_names = fc["symbol"].cast(pl.String).to_list()
    check_unique(fc["symbol"], "step-1 forecasts (one per symbol)")
    targets = allocation.targets
    target_names = targets["symbol"].to_list()
    book_names = positions["symbol"].cast(pl.String).to_list()
    symbol = sorted_union(target_names, book_names)
    at_target = rows_of(symbol, target_names)
    at_book = rows_of(symbol, book_names)
    at_fc = rows_of(symbol, fc_names)

    def floats(frame: pl.DataFrame, column: str, rows: np.ndarray) -> np.ndarray:
        return take(frame[column].cast(pl.Float64).to_numpy(), rows)

    return pl.DataFrame(
        {
            "symbol": symbol,
            "sector": take_list(targets["sector"].to_list(), at_target),
            "target_weight": floats(targets, "target_weight", at_target),
            "utility": floats(targets, "utility", at_target),
            "qty": floats(positions, "qty", at_book),
            "price": floats(positions, "price", at_book),
            **{q: floats(fc, q, at_fc) for q in QS},
        },
        schema={
            "symbol": pl.String(),
            "sector": pl.String(),
            **dict.fromkeys(("target_weight", "utility", "qty", "price", *QS), pl.Float64()),
        },
    )


def _seconds_since(
    sym: np.ndarray, last_trade_at: Mapping[str, datetime], now: datetime
) -> np.ndarray:
    """Seconds from each symbol's last trade to ``now`` (inf when never traded)."""
    out = np.full(sym.size, np.inf)
    if any(at.tzinfo is None for at in last_trade_at.values()):
        raise ValueError("last_trade_at: give time-zone-aware datetimes")
    keys = list(last_trade_at)
    rows, hit = lookup(sym, keys)
    out[rows] = [(now - last_trade_at[keys[k]]).total_seconds() for k in hit]
    return out
