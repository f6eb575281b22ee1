"""Allocator: target weights from scores (whitepaper section 7).

Pure: frames in, an :class:`Allocation` out; no store, no clock. Settings come
from :class:`kronos.config.PortfolioSettings` (environment names in brackets).
Weights are fractions of NAV; the book is long only.

1. **Universe.** Every scored symbol and every held one. A name is *in the book*
   when it is eligible, its score is positive and, with
   ``PT_BLOCK_IF_LLM_DENY=true``, the reviewer allows it. The reviewer is asked
   once, about the eligible names with a positive score (sorted); a name it does
   not answer for counts as denied (fail closed). Without a reviewer passed in,
   the settings' ``PT_REVIEWER`` is used (default ``allow_all``: :class:`AllowAll`,
   and ``Allocation.reviewer_note`` says so); see :func:`reviewer_of`. Every other
   name *glides to zero* (target 0) with a reason: ``"not scored"``,
   ``"not eligible: ..."`` (the optional ``ineligible_reason`` column),
   ``"score <= 0"``, ``"breaker: ..."``, ``"denied by reviewer"``.
2. **Softmax.** ``w_i = B * exp(k * s_i) / sum_j exp(k * s_j)`` over the names in
   the book, ``s`` the score, ``k = PT_SCORE_EXP`` read as the *inverse*
   temperature (``k -> 0``: equal weights; larger ``k``: more concentrated), and
   the budget ``B = PT_GROSS_MAX_PCT - PT_CASH_FLOOR_PCT``. This is the default
   weighting, ``PT_WEIGHTING=softmax``; another one (:func:`weighting_of`) gives
   non-negative weights of the names in the book, spread over ``B`` in
   proportion, and every later step applies to them unchanged.
3. **Caps.** No softmax target exceeds ``PT_MAX_POS_PCT`` per name or
   ``PT_SECTOR_MAX_PCT`` per sector (sector from ``sectors``, else the scores'
   ``sector``, else ``"(none)"``, itself capped). Water-filling: names and
   sectors over their cap are fixed at it and the excess goes to the uncapped
   names in proportion to their softmax weight; what cannot be placed stays in
   cash. (A holding already above a cap only moves toward it when step 5
   slows the move down.)
4. **Breakers.** ``blocked`` (symbol -> reason, :func:`kronos.risk.blocked_symbols`)
   blocks new buys and nothing else: a blocked name in the book keeps competing
   with its name cap lowered to its current weight, so it is held or trimmed
   toward its softmax weight but never bought; a blocked name not held gets 0.
   A breaker does not force sells; flattening is panic exit's job
   (``ENABLE_PANIC_EXIT``, :func:`kronos.risk.panic_exit_orders`).
5. **Turnover.** When ``sum |target - current|`` exceeds ``PT_TURNOVER_CAP_PCT``
   every move is scaled by the same factor so that turnover equals the cap.
6. **Cash floor.** The target gross may not exceed
   ``L = min(PT_GROSS_MAX_PCT, 1 - PT_CASH_FLOOR_PCT)``. Raw targets sum to at
   most ``B <= L``; a scaled move can only exceed ``L`` when the current holdings
   alone breach it. The excess is then shed in order of cost: cutting a buy
   costs the name's utility ``u``; trimming a holding costs ``u + f`` with the
   churn penalty ``f = PT_REPLACEMENT_FRIC_BPS / 1e4`` (utility is read in return
   units); names gliding to zero or without utility cost ``-inf``. So a holding is
   trimmed to keep a buy (a replacement) only when the buy's utility beats the
   holding's by more than the friction; otherwise the buy is cut. The floor
   outranks the turnover cap: turnover may exceed the cap by at most the
   trimming the floor needs (``current gross - L``).

``utility`` (optional column, default the score) ranks names for trimming and
replacement here and in the planner.

The result, :class:`Allocation`, holds ``targets`` (names in the book and names
held; columns of :data:`TARGETS_SCHEMA`) and ``excluded`` (scored names kept out
of the book and held names without a score: symbol, reason).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from kronos.config import PortfolioSettings
from kronos.decision.weighting import Reviewer, reviewer_of, weigh, weighting_of

NO_SECTOR = "(none)"
_TOL = 1e-12
TARGETS_SCHEMA = {
    "symbol": pl.String(),
    "sector": pl.String(),
    "target_weight": pl.Float64(),
    "current_weight": pl.Float64(),
    "delta_weight": pl.Float64(),
    "reason": pl.String(),
    "utility": pl.Float64(),
}
EXCLUDED_SCHEMA = {"symbol": pl.String(), "reason": pl.String()}


@dataclass(frozen=True)
class Account:
    """The broker account in USD: net asset value and cash."""

    nav: float
    cash: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.nav) and self.nav > 0):
            raise ValueError(f"nav must be positive and finite, got {self.nav!r}")
        if not math.isfinite(self.cash):
            raise ValueError(f"cash must be finite, got {self.cash!r}")


@dataclass(frozen=True)
class Allocation:
    """Target weights and why.

    ``targets``: symbol, sector, target_weight, current_weight, delta_weight,
    reason, utility (names in the book and names held); ``excluded``: symbol,
    reason (names kept out of the book); ``turnover``: sum of |delta_weight|;
    ``budget``: the softmax budget B; ``turnover_scale``: the factor applied to
    every move (1 when the cap does not bind); ``cash_trim``: weight the
    cash-floor step removed.
    """

    targets: pl.DataFrame
    excluded: pl.DataFrame
    turnover: float
    budget: float
    reviewer_note: str
    turnover_scale: float = 1.0
    cash_trim: float = 0.0


def check_unique(symbols: pl.Series, what: str) -> None:
    """Raise ``ValueError`` when a symbol appears twice in ``symbols``."""
    if symbols.n_unique() != symbols.len():
        dup = symbols.filter(symbols.is_duplicated())[0]
        raise ValueError(f"{what}: duplicate rows for {dup!r}")


def check_positions(positions: pl.DataFrame) -> None:
    """Validate a positions frame (symbol, qty, price).

    Rows with qty 0 (or null) may carry quotes of names not held, with a null
    price allowed. Raises ``ValueError`` for duplicate symbols, negative
    (short) or infinite quantities and held names without a positive price.
    """
    check_unique(positions["symbol"], "positions")
    qty = positions["qty"].cast(pl.Float64).to_numpy()
    price = positions["price"].cast(pl.Float64).to_numpy()
    qty = np.where(np.isnan(qty), 0.0, qty)
    if np.isinf(qty).any() or (qty < 0).any():
        raise ValueError("positions: qty must be finite and >= 0 (long-only book)")
    bad = (qty > 0) & ~(np.isfinite(price) & (price > 0))
    if bad.any():
        raise ValueError(f"positions: held {positions['symbol'][int(np.argmax(bad))]} has no price")


def _waterfill_flat(p: np.ndarray, cap: np.ndarray, budget: float) -> np.ndarray:
    """``min(cap_i, lam * p_i)`` summing to ``budget`` (or every name at its cap)."""
    w = np.zeros_like(p)
    free = (p > 0) & (cap > 0)
    while free.any():
        rem = budget - w[~free].sum()
        if rem <= 0:
            w[free] = 0.0
            break
        w[free] = rem * p[free] / p[free].sum()
        over = free & (w > cap)
        if not over.any():
            break
        w[over] = cap[over]
        free &= ~over
    return w


def waterfill(
    p: np.ndarray,
    name_cap: np.ndarray,
    sector: np.ndarray,
    sector_cap: float,
    budget: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights proportional to ``p`` summing to ``budget`` under name and sector caps.

    ``sector``: integer codes. A name or sector over its cap is fixed at it and
    its excess goes to the free names pro rata; weight nothing can take is left
    out (cash). Returns the weights and the binding constraint per name
    (0 none, 1 name cap, 2 sector cap).
    """
    n_sec = int(sector.max()) + 1 if sector.size else 0
    w = np.zeros_like(p)
    bind = np.zeros(p.size, dtype=np.int8)
    free = (p > 0) & (name_cap > 0)
    for _ in range(p.size + n_sec + 1):  # each pass fixes a name or a sector
        if not free.any():
            break
        rem = budget - w[~free].sum()
        if rem <= 0:
            w[free] = 0.0
            break
        w[free] = rem * p[free] / p[free].sum()
        over_name = free & (w > name_cap)
        over_sec = np.bincount(sector, weights=w, minlength=n_sec) > sector_cap * (1 + _TOL)
        if not (over_name.any() or over_sec.any()):
            break
        for k in np.flatnonzero(over_sec):
            m = sector == k
            w[m] = _waterfill_flat(p[m], name_cap[m], sector_cap)
            bind[m] = np.where(w[m] >= name_cap[m], 1, 2)
            free &= ~m
            over_name &= ~m
        w[over_name] = name_cap[over_name]
        bind[over_name] = 1
        free &= ~over_name
    # rounding guard: a cap is never exceeded, not even by one ulp
    w = np.minimum(w, name_cap)
    sums = np.bincount(sector, weights=w, minlength=n_sec)
    scale = np.where(sums > sector_cap, sector_cap / np.where(sums > 0, sums, 1.0), 1.0)
    return w * scale[sector], bind


def rows_of(keys: Sequence[str], symbols: Sequence[str]) -> np.ndarray:
    """The row of each of ``keys`` in ``symbols`` (unique), -1 where absent."""
    at = {x: k for k, x in enumerate(symbols)}
    return np.fromiter((at.get(x, -1) for x in keys), np.int64, len(keys))


def take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` as floats, NaN where ``rows`` is -1."""
    out = np.full(rows.size, np.nan)
    hit = rows >= 0
    out[hit] = values[rows[hit]]
    return out


def take_list(values: Sequence, rows: np.ndarray) -> list:
    """``values[rows]`` as a list, None where ``rows`` is -1."""
    return [values[r] if r >= 0 else None for r in rows.tolist()]


def sorted_union(*symbols: Sequence[str]) -> list[str]:
    """The distinct symbols of all ``symbols``, sorted (as polars sorts strings)."""
    return sorted(set().union(*symbols))


@dataclass(frozen=True)
class _Universe:
    """Scored and held names, one row each, sorted by symbol (NaN where unknown)."""

    symbol: np.ndarray  # str objects
    sector: list[str]  # the sectors frame's, else the scores', else NO_SECTOR
    scored: np.ndarray
    score: np.ndarray
    eligible: np.ndarray  # False where not scored
    utility: np.ndarray
    why: list[str | None]  # ineligible_reason
    qty: np.ndarray
    price: np.ndarray


def _universe(scores: pl.DataFrame, positions: pl.DataFrame, sectors: pl.DataFrame) -> _Universe:
    """Scored names and held ones (qty > 0), aligned on their sorted symbols."""
    check_unique(scores["symbol"], "scores")
    check_unique(sectors["symbol"], "sectors")
    check_positions(positions)
    scored_names = scores["symbol"].cast(pl.String).to_list()
    qty = positions["qty"].cast(pl.Float64).to_numpy()
    held = qty > 0  # NaN (null) is not held
    held_names = [x for x, h in zip(positions["symbol"].to_list(), held.tolist(), strict=True) if h]
    symbol = sorted_union(scored_names, held_names)
    at_score = rows_of(symbol, scored_names)
    at_held = rows_of(symbol, held_names)

    def scores_column(name: str, dtype: pl.DataType) -> pl.Series:
        if name in scores.columns:
            return scores[name].cast(dtype)
        return pl.Series(name, [None] * scores.height, dtype=dtype)

    sector_of = dict(
        zip(
            sectors["symbol"].cast(pl.String).to_list(),
            sectors["sector"].cast(pl.String).to_list(),
            strict=True,
        )
    )
    score_sector = take_list(scores["sector"].cast(pl.String).to_list(), at_score)
    sector = []
    for x, fallback in zip(symbol, score_sector, strict=True):
        known = sector_of.get(x)
        sector.append(
            known if known is not None else fallback if fallback is not None else NO_SECTOR
        )
    eligible = take_list(scores_column("eligible", pl.Boolean()).to_list(), at_score)
    return _Universe(
        symbol=np.array(symbol, dtype=object),
        sector=sector,
        scored=at_score >= 0,
        score=take(scores["score"].cast(pl.Float64).to_numpy(), at_score),
        eligible=np.array([e is True for e in eligible], dtype=bool),
        utility=take(scores_column("utility", pl.Float64()).to_numpy(), at_score),
        why=take_list(scores_column("ineligible_reason", pl.String()).to_list(), at_score),
        qty=take(qty[held], at_held),
        price=take(positions["price"].cast(pl.Float64).to_numpy()[held], at_held),
    )


def codes(values: pl.Series) -> np.ndarray:
    """Integer codes 0..k-1 of the distinct values of a column, in order of appearance."""
    seen: dict[object, int] = {}
    return np.fromiter(
        (seen.setdefault(v, len(seen)) for v in values.to_list()), np.int64, len(values)
    )


def lookup(sorted_symbols: np.ndarray, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``sorted_symbols`` (sorted) holding ``keys``: (row indices, key indices)."""
    if not len(keys) or not sorted_symbols.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    arr = np.array(keys, dtype=object)
    at = np.minimum(np.searchsorted(sorted_symbols, arr), sorted_symbols.size - 1)
    hit = np.flatnonzero(sorted_symbols[at] == arr)
    return at[hit], hit


def positions_of(sorted_symbols: np.ndarray, wanted: Iterable[str]) -> np.ndarray:
    """Boolean mask of ``sorted_symbols`` (sorted) that are in ``wanted``."""
    mask = np.zeros(sorted_symbols.size, dtype=bool)
    mask[lookup(sorted_symbols, list(wanted))[0]] = True
    return mask


def allocate(
    scores: pl.DataFrame,
    positions: pl.DataFrame,
    account: Account,
    sectors: pl.DataFrame,
    blocked: Mapping[str, str],
    settings: PortfolioSettings,
    reviewer: Reviewer | None = None,
) -> Allocation:
    """Target weights for the book (see the module rules).

    ``scores``: symbol, sector, score, eligible, optional utility and
    ineligible_reason; ``positions``: symbol, qty, price; ``sectors``: symbol,
    sector; ``blocked``: symbol -> breaker reason. ``reviewer``: by default the
    one ``settings.pt_reviewer`` names. The weighting is ``settings.pt_weighting``.
    """
    s = settings
    reviewer = reviewer if reviewer is not None else reviewer_of(s)
    weighting, weighting_path = weighting_of(s)
    note = getattr(reviewer, "note", None) or f"reviewer {type(reviewer).__name__}"
    budget = max(0.0, s.pt_gross_max_pct - s.pt_cash_floor_pct)
    u = _universe(scores, positions, sectors)
    n = u.symbol.size
    sym, score, scored, eligible = u.symbol, u.score, u.scored, u.eligible
    positive = np.nan_to_num(score) > 0
    idea = scored & eligible & positive
    is_blocked = positions_of(sym, blocked)
    cur = np.nan_to_num(u.qty) * np.nan_to_num(u.price) / account.nav

    ideas = sym[idea].tolist()
    verdict = reviewer.review(ideas) if ideas else {}
    denied = idea & ~positions_of(sym, [x for x, ok in verdict.items() if ok is True])
    in_book = idea & ~denied if s.pt_block_if_llm_deny else idea

    p = np.zeros(n)
    if in_book.any():
        p[in_book] = weigh(weighting, weighting_path, score[in_book], sym[in_book].tolist(), s)
    name_cap = np.where(is_blocked, np.minimum(s.pt_max_pos_pct, cur), s.pt_max_pos_pct)
    sector = pl.Series("sector", u.sector, dtype=pl.String())
    raw, bind = waterfill(p, name_cap, codes(sector), s.pt_sector_max_pct, budget)

    move = raw - cur
    gross_turn = float(np.abs(move).sum())
    scale = s.pt_turnover_cap_pct / gross_turn if gross_turn > s.pt_turnover_cap_pct else 1.0
    target = cur + scale * move if scale < 1.0 else raw
    utility = np.where(np.isnan(u.utility), score, u.utility)
    cost = np.where(in_book & ~np.isnan(utility), utility, -np.inf)
    target, cut = _cash_floor(target, cur, cost, s)

    out_book = ~in_book | (is_blocked & (cur <= 0))
    brk = [
        blocked[x] if b else None for x, b in zip(sym.tolist(), is_blocked.tolist(), strict=True)
    ]
    flags = (scored, eligible, positive, is_blocked, denied, in_book, bind == 1, bind == 2, cut > 0)
    out_reason, reason = _reasons(
        flags, u.why, brk, u.sector, s.pt_block_if_llm_deny, s.pt_weighting
    )
    kept = np.flatnonzero(~out_book | (cur > 0))
    targets = pl.DataFrame(
        {
            "symbol": sym[kept].tolist(),
            "sector": [u.sector[i] for i in kept.tolist()],
            "target_weight": target[kept],
            "current_weight": cur[kept],
            "delta_weight": (target - cur)[kept],
            "reason": [reason[i] for i in kept.tolist()],
            "utility": pl.Series(utility[kept], nan_to_null=True),
        },
        schema=TARGETS_SCHEMA,
    )
    out = np.flatnonzero(out_book)
    excluded = pl.DataFrame(
        {"symbol": sym[out].tolist(), "reason": [out_reason[i] for i in out.tolist()]},
        schema=EXCLUDED_SCHEMA,
    )
    return Allocation(
        targets=targets,
        excluded=excluded,
        turnover=float(np.abs(target - cur).sum()),
        budget=budget,
        reviewer_note=note,
        turnover_scale=scale,
        cash_trim=float(cut.sum()),
    )


# the flags a row's reasons depend on, as bits (in the order _reasons takes them)
_SCORED, _ELIGIBLE, _POSITIVE, _BLOCKED, _DENIED, _IN_BOOK, _NAME_CAP, _SECTOR_CAP, _CUT = (
    1 << k for k in range(9)
)


def _explain(
    bits: int,
    why: str | None,
    brk: str | None,
    sector: str | None,
    block_if_deny: bool,
    weighting: str = "softmax",
) -> tuple[str, str | None]:
    """(why a name is kept out of the book, the reason of its target row).

    Out of the book: every rule that applies, ``"; "``-joined. A target row: its
    cap or breaker in the book, else the weighting (``PT_WEIGHTING``).
    """
    scored = bool(bits & _SCORED)
    parts = []
    if not scored:
        parts.append("not scored")
    if scored and not bits & _ELIGIBLE:
        parts.append(f"not eligible: {why if why is not None else 'filtered by strategist'}")
    if scored and not bits & _POSITIVE:
        parts.append("score <= 0")
    if bits & _BLOCKED and brk is not None:
        parts.append(f"breaker: {brk}")
    if bits & _DENIED:
        parts.append("denied by reviewer")
    out = "; ".join(parts)
    if not bits & _IN_BOOK:
        plain: str | None = out
    elif bits & _BLOCKED:
        plain = None if brk is None else f"breaker: {brk} (no new buys)"
    elif bits & _NAME_CAP:
        plain = "name cap"
    elif bits & _SECTOR_CAP:
        plain = None if sector is None else f"sector cap: {sector}"
    else:
        plain = weighting
    if bits & _IN_BOOK and bits & _DENIED and not block_if_deny and plain is not None:
        plain += " (denied by reviewer; PT_BLOCK_IF_LLM_DENY=false)"
    if bits & _CUT and plain is not None:
        plain = "cash floor trim; " + plain
    return out, plain


def _reasons(
    flags: Sequence[np.ndarray],
    why: Sequence[str | None],
    brk: Sequence[str | None],
    sector: Sequence[str | None],
    block_if_deny: bool,
    weighting: str = "softmax",
) -> tuple[list[str], list[str | None]]:
    """:func:`_explain` per row (each distinct row explained once)."""
    bits = np.zeros(len(why), dtype=np.int64)
    for k, flag in enumerate(flags):
        bits |= flag.astype(np.int64) << k
    seen: dict[tuple, tuple[str, str | None]] = {}
    out, reason = [], []
    for key in zip(bits.tolist(), why, brk, sector, strict=True):
        hit = seen.get(key)
        if hit is None:
            hit = seen[key] = _explain(*key, block_if_deny, weighting)
        out.append(hit[0])
        reason.append(hit[1])
    return out, reason


def _cash_floor(
    target: np.ndarray, cur: np.ndarray, utility: np.ndarray, s: PortfolioSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Shed gross above ``min(PT_GROSS_MAX_PCT, 1 - PT_CASH_FLOOR_PCT)`` cheapest first.

    Pieces: the buy part ``target - cur`` of a name at cost ``utility`` and the
    held part ``min(target, cur)`` at cost ``utility + friction``; ties go to buys,
    then to the earlier symbol. Returns the new targets and the weight cut per name.
    """
    limit = min(s.pt_gross_max_pct, 1.0 - s.pt_cash_floor_pct)
    excess = float(target.sum()) - limit
    if excess <= _TOL:
        return target, np.zeros_like(target)
    fric = s.pt_replacement_fric_bps / 1e4
    n = target.size
    amount = np.concatenate([np.maximum(target - cur, 0.0), np.minimum(target, cur)])
    cost = np.concatenate([utility, utility + fric])
    kind = np.repeat([0, 1], n)
    pos = np.tile(np.arange(n), 2)
    order = np.lexsort((pos, kind, cost))
    a = amount[order]
    before = np.cumsum(a) - a
    take = np.clip(excess - before, 0.0, a)
    cut = np.bincount(pos[order], weights=take, minlength=n)
    return np.maximum(target - cut, 0.0), cut
