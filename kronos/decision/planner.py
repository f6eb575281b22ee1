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
   after rounding to whole shares too.
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
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import numpy as np
import polars as pl

from kronos.config import PolicySettings, PortfolioSettings
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
from kronos.metrics import sigma_from_band

QS = ("p05", "p50", "p95")
_EPS = 1e-9
ORDERS_SCHEMA = {
    "client_order_id": pl.String(),
    "symbol": pl.String(),
    "side": pl.String(),
    "qty": pl.Float64(),
    "order_type": pl.String(),
    "limit_price": pl.Float64(),
    "take_profit": pl.Float64(),
    "stop_loss": pl.Float64(),
    "intent": pl.String(),
    "target_weight": pl.Float64(),
    "turnover_est": pl.Float64(),
    "notional": pl.Float64(),
}
DROPPED_SCHEMA = {"symbol": pl.String(), "side": pl.String(), "reason": pl.String()}
TABLE_SCHEMA = {
    "client_order_id": pl.String(),
    "run_id": pl.String(),
    "asof": pl.Datetime("us", "UTC"),
    "symbol": pl.String(),
    "side": pl.String(),
    "qty": pl.Float64(),
    "order_type": pl.String(),
    "limit_price": pl.Float64(),
    "take_profit": pl.Float64(),
    "stop_loss": pl.Float64(),
    "intent": pl.String(),
    "status": pl.String(),
    "broker": pl.String(),
    "broker_order_id": pl.String(),
    "target_weight": pl.Float64(),
    "turnover_est": pl.Float64(),
    "submitted_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
}


def _asof_text(asof: date | datetime | str) -> str:
    if isinstance(asof, datetime):
        return (asof.astimezone(UTC) if asof.tzinfo else asof).isoformat()
    if isinstance(asof, date):
        return asof.isoformat()
    return str(asof)


def client_order_id(run_id: str, asof: date | datetime | str, symbol: str, intent: str) -> str:
    """``"kr-"`` + the first 24 hex digits of sha256 of ``[run_id, asof, symbol, intent]``.

    The four are JSON-encoded (so no separator inside a field can make two
    tuples collide) with ``asof`` in ISO form (aware datetimes in UTC). The same
    run, session, symbol and intent always give the same id, so a retried
    submission is refused by the broker as a duplicate and can never place a
    second order.
    """
    blob = json.dumps([run_id, _asof_text(asof), symbol, intent])
    return "kr-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Plan:
    """The orders of one run and the candidates that were dropped.

    ``orders``: :data:`ORDERS_SCHEMA` (sells first, then buys, by symbol);
    ``dropped``: symbol, side, reason. ``cash_after = cash_before + sells - buys``
    at last prices; ``turnover_scale`` and ``buy_scale`` are the factors of the
    turnover guard and the cash step (1 when not binding).
    """

    orders: pl.DataFrame
    dropped: pl.DataFrame
    run_id: str
    asof: date | datetime | str
    cash_before: float
    cash_after: float
    cash_floor: float
    turnover_scale: float = 1.0
    buy_scale: float = 1.0
    replacement_notional: float = 0.0


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


def _tick(x: np.ndarray, up: bool | None = None) -> np.ndarray:
    """Round to the price tick: 0.01 at or above $1, 0.0001 below (up, down or nearest)."""
    step = np.where(x >= 1.0, 0.01, 0.0001)
    q = x / step
    q = np.ceil(q - _EPS) if up else np.floor(q + _EPS) if up is False else np.round(q)
    return np.round(q * step, 4)


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


# drop codes: Plan.dropped reasons are formatted from them in one vectorised pass
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


def plan_orders(
    allocation: Allocation,
    positions: pl.DataFrame,
    account: Account,
    forecasts: pl.DataFrame,
    recos: set[str],
    last_trade_at: Mapping[str, datetime],
    blocked: Mapping[str, str],
    now: datetime,
    run_id: str,
    asof: date | datetime | str,
    pt: PortfolioSettings,
    policy: PolicySettings,
) -> Plan:
    """Orders that move the book toward ``allocation`` (see the module rules).

    ``forecasts``: symbol, p05, p50, p95 (step 1 when a ``step`` column is
    present); ``recos``: recommended symbols; ``last_trade_at``: symbol -> aware
    datetime of its last trade; ``blocked``: symbol -> breaker reason.
    """
    if now.tzinfo is None:
        raise ValueError(f"{now} is a naive datetime; give a time zone (UTC)")
    nav, cash = account.nav, account.cash
    floor_cash = pt.pt_cash_floor_pct * nav
    f = _inputs(allocation, positions, forecasts)
    n = f.height
    tw, util, held, price, p05, p50, p95 = (
        f[c].to_numpy() for c in ("target_weight", "utility", "qty", "price", *QS)
    )
    held = np.nan_to_num(held)
    sym = f["symbol"].to_numpy()
    elapsed = _seconds_since(sym, last_trade_at, now)
    reco = positions_of(sym, recos)
    is_blocked = positions_of(sym, blocked)
    code = codes(f["sector"])

    has_target = ~np.isnan(tw)
    priced = np.isfinite(price) & (price > 0)
    px = np.where(priced, price, np.nan)
    cur_val = held * np.where(priced, price, 0.0)
    want = np.where(has_target, tw * nav - cur_val, 0.0)
    buy = want > 0
    exit_ = has_target & (tw <= 0) & (held > 0)
    sigma = sigma_from_band(p05, p95)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, p50 / sigma, np.nan)
    interval_s = policy.policy_min_trade_interval_secs
    cooldown_s = policy.planner_cooldown_mins * 60.0
    cooling = elapsed < max(interval_s, cooldown_s)

    why = np.zeros(n, dtype=np.int8)
    v1, v2, v3 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    alive = has_target & (want != 0)

    def drop(mask: np.ndarray, rule: int, *values: np.ndarray) -> None:
        m = alive & mask
        why[m] = rule
        for out, val in zip((v1, v2, v3), values, strict=False):
            out[m] = val[m]
        alive[m] = False

    why[~has_target & (held > 0)] = UNTARGETED
    drop(~priced, NO_PRICE)
    drop(np.abs(want) < pt.pt_min_order_notional, DUST, np.abs(want))
    drop((np.abs(want) / nav < pt.pt_no_trade_band_pct) & ~exit_, BAND, np.abs(want) / nav)
    drop(cooling, COOLDOWN, elapsed)
    drop(buy & is_blocked, BREAKER)
    if policy.policy_require_reco:
        drop(buy & ~reco, RECO)
    if policy.policy_min_abs_dev > 0 or policy.policy_min_sigma_z > 0:
        drop(buy & np.isnan(p50), NO_FORECAST)
    drop(buy & (p50 < policy.policy_min_abs_dev), ABS_DEV, p50)
    if policy.policy_min_sigma_z > 0:
        drop(buy & np.isnan(z), NO_SIGMA)
        drop(buy & (z < policy.policy_min_sigma_z), SIGMA_Z, z)

    raw = np.floor(np.abs(want) / np.where(priced, price, np.inf) + _EPS)
    shares = np.where(buy, raw, np.where(exit_, held, np.minimum(raw, held)))
    shares = np.where(alive, shares, 0.0)
    drop(~buy & (shares <= 0), FRACTION)
    drop(~buy & (shares * px < pt.pt_min_order_notional), DUST_SELL, shares * px)
    min_buy = max(policy.policy_min_notional_usd, pt.pt_min_order_notional)
    _autosize(alive, buy, shares, px, cur_val, tw, code, nav, min_buy, pt, why, v1, v2, v3)

    minimum = np.where(buy, min_buy, pt.pt_min_order_notional)
    shares = np.where(alive, shares, 0.0)
    gross = float(np.nansum(shares * px))
    cap_n = pt.pt_turnover_cap_pct * nav
    g = 1.0
    if gross > cap_n:
        g = cap_n / gross
        shares = np.where(alive, np.floor(shares * g + _EPS), 0.0)
        drop(shares * px < minimum, TURNOVER, shares * px, minimum)
        shares = np.where(alive, shares, 0.0)
    notional = np.nan_to_num(shares * px)
    avail = cash + float(notional[~buy].sum()) - floor_cash

    # (a) and (b): replacement sells from holdings that are not being bought
    repl = np.zeros(n)
    rem = np.where(buy, held, held - shares)
    pool = has_target & priced & (rem > 0) & ~(alive & buy)
    pool_util = np.where((tw <= 0) | np.isnan(util), -np.inf, util)
    order = np.lexsort((np.arange(n), pool_util))
    order = order[pool[order]]
    if avail < 0:
        avail += _sell_from(order, -avail, rem, px, repl, pt.pt_min_order_notional, up=True)
    buys_n = float(notional[buy].sum())
    if buys_n > max(avail, 0.0):
        order = order[~cooling[order] & (rem[order] - repl[order] > 0)]
        x = _friction_limit(
            notional[alive & buy],
            np.nan_to_num(util[alive & buy], nan=-np.inf),
            max(avail, 0.0),
            (rem - repl)[order] * px[order],
            pool_util[order],
            pt.pt_replacement_fric_bps / 1e4,
        )
        room = cap_n - float(notional.sum()) - float(np.nansum(repl * px))
        x = min(x, max(room, 0.0), buys_n - max(avail, 0.0))
        if x > 0:
            avail += _sell_from(order, x, rem, px, repl, pt.pt_min_order_notional, up=False)

    # (c): residual buys pro rata
    h, funds = 1.0, max(avail, 0.0)
    if buys_n > funds:
        h = funds / buys_n
        shares = np.where(buy, np.floor(shares * h + _EPS), shares)
        _trim_to(funds, shares, px, alive & buy)
        drop(buy & (shares * px < min_buy), CASH, shares * px)
        shares = np.where(alive, shares, 0.0)

    orders = _orders_frame(
        alive, buy, exit_, shares, repl, px, f, z, allocation.turnover, policy, run_id, asof
    )
    side = orders["side"].to_numpy()
    value = orders["notional"].to_numpy()
    scalars = {
        "gross": gross,
        "cap_n": cap_n,
        "g": g,
        "buys_n": buys_n,
        "funds": funds,
        "h": h,
        "min_buy": min_buy,
    }
    return Plan(
        orders=orders,
        dropped=_dropped(f["symbol"], blocked, why, want, v1, v2, v3, pt, policy, scalars),
        run_id=run_id,
        asof=asof,
        cash_before=cash,
        cash_after=cash + float(value[side == "sell"].sum()) - float(value[side == "buy"].sum()),
        cash_floor=floor_cash,
        turnover_scale=g,
        buy_scale=h,
        replacement_notional=float(np.nansum(repl * px)),
    )


def _dropped(
    symbols: pl.Series,
    blocked: Mapping[str, str],
    why: np.ndarray,
    want: np.ndarray,
    v1: np.ndarray,
    v2: np.ndarray,
    v3: np.ndarray,
    pt: PortfolioSettings,
    policy: PolicySettings,
    k: dict[str, float],
) -> pl.DataFrame:
    """symbol, side, reason of every dropped candidate (reasons formatted vectorised)."""
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
            "_v1": v1[idx],
            "_v2": v2[idx],
            "_v3": v3[idx],
            "_brk": pl.Series(brk, dtype=pl.String),
        }
    )
    side = pl.when(pl.col("_want") > 0).then(pl.lit("buy")).when(pl.col("_want") < 0)
    side = side.then(pl.lit("sell"))
    a, b, c = (pl.col(name).round(2) for name in ("_v1", "_v2", "_v3"))
    interval_s = policy.policy_min_trade_interval_secs
    cooldown_s = policy.planner_cooldown_mins * 60.0
    rules = {
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
            f"POLICY_MIN_NOTIONAL_USD: ${{}} < ${k['min_buy']:g}; autosizing to {{}} shares "
            f"(${{}}) would breach PT_MAX_POS_PCT {100 * pt.pt_max_pos_pct:g}%",
            a,
            pl.col("_v2").cast(pl.Int64),
            c,
        ),
        AUTOSIZE_SECTOR: pl.format(
            f"POLICY_MIN_NOTIONAL_USD: ${{}} < ${k['min_buy']:g}; autosizing to {{}} shares "
            f"(${{}}) would breach PT_SECTOR_MAX_PCT {100 * pt.pt_sector_max_pct:g}%",
            a,
            pl.col("_v2").cast(pl.Int64),
            c,
        ),
        TURNOVER: pl.format(
            f"turnover guard: orders ${k['gross']:.2f} > PT_TURNOVER_CAP_PCT x NAV "
            f"${k['cap_n']:.2f}; scaled x{k['g']:.4f} to ${{}} < minimum ${{}}",
            a,
            b,
        ),
        CASH: pl.format(
            f"cash floor: buys ${k['buys_n']:.2f} > cash above PT_CASH_FLOOR_PCT "
            f"${k['funds']:.2f}; scaled x{k['h']:.4f} to ${{}} < minimum ${k['min_buy']:g}",
            a,
        ),
    }
    expr = pl.when(pl.lit(False)).then(pl.lit(None, dtype=pl.String))
    present = set(why[idx].tolist())  # only the rules that dropped something are formatted
    for rule, text in rules.items():
        if rule in present:
            expr = expr.when(pl.col("_why") == rule).then(text)
    # every column is a string already (no cast: one step less on a small frame)
    return frame.select("symbol", side=side, reason=expr.otherwise(None))


def _autosize(
    alive: np.ndarray,
    buy: np.ndarray,
    shares: np.ndarray,
    px: np.ndarray,
    cur_val: np.ndarray,
    tw: np.ndarray,
    code: np.ndarray,
    nav: float,
    min_buy: float,
    pt: PortfolioSettings,
    why: np.ndarray,
    v1: np.ndarray,
    v2: np.ndarray,
    v3: np.ndarray,
) -> None:
    """Step 5 in place: autosize small buys to ``min_buy`` within the caps, else drop."""
    small = np.flatnonzero(alive & buy & (shares * px < min_buy))
    if not small.size:
        return
    sector_w = np.bincount(code, weights=np.nan_to_num(tw), minlength=int(code.max()) + 1)
    for i in small:
        k = math.ceil(min_buy / px[i] - _EPS)
        new_w = (cur_val[i] + k * px[i]) / nav
        extra = max(new_w - tw[i], 0.0)
        if new_w > pt.pt_max_pos_pct + 1e-12:
            why[i] = AUTOSIZE_NAME
        elif sector_w[code[i]] + extra > pt.pt_sector_max_pct + 1e-12:
            why[i] = AUTOSIZE_SECTOR
        else:
            shares[i] = k
            sector_w[code[i]] += extra
            continue
        v1[i], v2[i], v3[i] = shares[i] * px[i], k, k * px[i]
        alive[i] = False


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


def _orders_frame(
    alive: np.ndarray,
    buy: np.ndarray,
    exit_: np.ndarray,
    shares: np.ndarray,
    repl: np.ndarray,
    px: np.ndarray,
    f: pl.DataFrame,
    z: np.ndarray,
    turnover_est: float,
    policy: PolicySettings,
    run_id: str,
    asof: date | datetime | str,
) -> pl.DataFrame:
    """Orders (sells first, then buys; by symbol) with type, prices and ids (step 8)."""
    main = np.flatnonzero(alive & (shares > 0))
    extra = np.flatnonzero(repl > 0)
    idx = np.concatenate([main, extra])
    is_repl = np.arange(idx.size) >= main.size
    is_buy = np.concatenate([buy[main], np.zeros(extra.size, dtype=bool)])
    sort = np.lexsort((is_repl, idx, is_buy))
    idx, is_repl, is_buy = idx[sort], is_repl[sort], is_buy[sort]
    qty = np.concatenate([shares[main], repl[extra]])[sort]
    intent = np.where(is_repl, "replacement", np.where(exit_[idx] & ~is_buy, "exit", "rebalance"))
    p05, p95 = f["p05"].to_numpy()[idx], f["p95"].to_numpy()[idx]
    price = px[idx]
    notional = qty * price
    limit = (np.nan_to_num(z[idx], nan=0.0) > policy.planner_z_dev_thresh) | (
        notional > policy.planner_limit_notional
    )
    entry = _tick(price)
    tp = _tick(price * np.exp(np.nan_to_num(p95)), up=True)
    sl = _tick(price * np.exp(np.nan_to_num(p05)), up=False)
    bracket = (
        is_buy
        & (qty == np.floor(qty))
        & (price <= policy.planner_bracket_price_max)
        & (p05 < 0)
        & (p95 > 0)
        & (tp > entry)
        & (sl < entry)
        & (sl > 0)
    )
    names = f["symbol"].to_list()
    symbols = [names[i] for i in idx.tolist()]
    ids = [
        client_order_id(run_id, asof, sym, it)
        for sym, it in zip(symbols, intent.tolist(), strict=True)
    ]
    return pl.DataFrame(
        {
            "client_order_id": ids,
            "symbol": symbols,
            "side": np.where(is_buy, "buy", "sell"),
            "qty": qty,
            "order_type": np.where(bracket, "bracket", np.where(limit, "limit", "market")),
            "limit_price": np.where(limit, entry, np.nan),
            "take_profit": np.where(bracket, tp, np.nan),
            "stop_loss": np.where(bracket, sl, np.nan),
            "intent": intent,
            "target_weight": f["target_weight"].to_numpy()[idx],
            "turnover_est": np.full(idx.size, turnover_est),
            "notional": notional,
        },
        schema=ORDERS_SCHEMA,
        nan_to_null=True,
    )


def orders_table_rows(
    plan: Plan,
    run_id: str,
    asof: date | datetime | str,
    broker: str = "sim",
    *,
    now: datetime,
) -> pl.DataFrame:
    """``plan.orders`` shaped as rows of the ``orders`` table (status ``"planned"``).

    ``asof``: a date becomes midnight UTC of that day; ``now`` (aware) is
    ``updated_at``. Raises ``ValueError`` when an order's id is not the one
    :func:`client_order_id` gives for this ``run_id`` and ``asof``, so a plan
    cannot be stored under another run.
    """
    if now.tzinfo is None:
        raise ValueError(f"{now} is a naive datetime; give a time zone (UTC)")
    o = plan.orders
    ids = [
        client_order_id(run_id, asof, s, it)
        for s, it in zip(o["symbol"].to_list(), o["intent"].to_list(), strict=True)
    ]
    if ids != o["client_order_id"].to_list():
        raise ValueError(f"plan was not made for run {run_id!r} at {_asof_text(asof)}")
    if isinstance(asof, datetime):
        at = asof if asof.tzinfo else asof.replace(tzinfo=UTC)
    else:
        at = datetime.combine(date.fromisoformat(str(asof)), time(), UTC)
    return o.select(
        "client_order_id",
        run_id=pl.lit(run_id),
        asof=pl.lit(at),
        symbol="symbol",
        side="side",
        qty="qty",
        order_type="order_type",
        limit_price="limit_price",
        take_profit="take_profit",
        stop_loss="stop_loss",
        intent="intent",
        status=pl.lit("planned"),
        broker=pl.lit(broker),
        broker_order_id=pl.lit(None, dtype=pl.String),
        target_weight="target_weight",
        turnover_est="turnover_est",
        submitted_at=pl.lit(None, dtype=pl.Datetime("us", "UTC")),
        updated_at=pl.lit(now),
    ).cast(TABLE_SCHEMA)
