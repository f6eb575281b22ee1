"""Allocator: target weights from scores (whitepaper section 7).

Pure: frames in, an :class:`Allocation` out; no store, no clock. Settings come
from :class:`kronos.config.PortfolioSettings` (environment names in brackets).
Weights are fractions of NAV; the book is long only.

1. **Universe.** Every scored symbol and every held one. A name is *in the book*
   when it is eligible, its score is positive and, with
   ``PT_BLOCK_IF_LLM_DENY=true``, the reviewer allows it. The reviewer is asked
   once, about the eligible names with a positive score (sorted); a name it does
   not answer for counts as denied (fail closed). Without a reviewer,
   :class:`AllowAll` is used and ``Allocation.reviewer_note`` says so. Every other
   name *glides to zero* (target 0) with a reason: ``"not scored"``,
   ``"not eligible: ..."`` (the optional ``ineligible_reason`` column),
   ``"score <= 0"``, ``"breaker: ..."``, ``"denied by reviewer"``.
2. **Softmax.** ``w_i = B * exp(k * s_i) / sum_j exp(k * s_j)`` over the names in
   the book, ``s`` the score, ``k = PT_SCORE_EXP`` read as the *inverse*
   temperature (``k -> 0``: equal weights; larger ``k``: more concentrated), and
   the budget ``B = PT_GROSS_MAX_PCT - PT_CASH_FLOOR_PCT``.
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
from typing import Protocol

import numpy as np
import polars as pl

from kronos.config import PortfolioSettings

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


def softmax(score: np.ndarray, k: float) -> np.ndarray:
    """``exp(k * s) / sum exp(k * s)`` (shifted by the maximum for stability)."""
    z = k * score
    e = np.exp(z - z.max())
    return e / e.sum()


def _universe(scores: pl.DataFrame, positions: pl.DataFrame, sectors: pl.DataFrame) -> pl.DataFrame:
    """Scored and held names, one row each, sorted by symbol (one collect).

    Columns: symbol, sector, score, eligible, utility, _why, _scored, qty, price.
    """
    check_unique(scores["symbol"], "scores")
    check_unique(sectors["symbol"], "sectors")
    check_positions(positions)
    cols = scores.columns
    optional = {
        name: (pl.col(name) if name in cols else pl.lit(None)).cast(dtype)
        for name, dtype in (("utility", pl.Float64), ("ineligible_reason", pl.String))
    }
    sc = scores.select(
        pl.col("symbol").cast(pl.String),
        pl.col("sector").cast(pl.String).alias("_score_sector"),
        pl.col("score").cast(pl.Float64),
        pl.col("eligible").cast(pl.Boolean),
        optional["utility"].alias("utility"),
        optional["ineligible_reason"].alias("_why"),
        _scored=pl.lit(True),
    )
    held = positions.select(
        pl.col("symbol").cast(pl.String),
        pl.col("qty").cast(pl.Float64),
        pl.col("price").cast(pl.Float64),
    )
    held = held.filter(pl.Series(held["qty"].fill_null(0.0).to_numpy() > 0))
    sec = sectors.select(pl.col("symbol").cast(pl.String), pl.col("sector").cast(pl.String))
    # eager on purpose: for a few thousand rows the lazy optimiser costs more than it saves
    return (
        sc.join(held, on="symbol", how="full", coalesce=True)
        .join(sec, on="symbol", how="left")
        .with_columns(sector=pl.coalesce("sector", "_score_sector", pl.lit(NO_SECTOR)))
        .sort("symbol")
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
    sector; ``blocked``: symbol -> breaker reason.
    """
    s = settings
    reviewer = reviewer if reviewer is not None else AllowAll()
    note = getattr(reviewer, "note", None) or f"reviewer {type(reviewer).__name__}"
    budget = max(0.0, s.pt_gross_max_pct - s.pt_cash_floor_pct)
    u = _universe(scores, positions, sectors)
    n = u.height
    sym = u["symbol"].to_numpy()
    score = u["score"].to_numpy()
    scored = u["_scored"].is_not_null().to_numpy()
    eligible = u["eligible"].fill_null(False).to_numpy().astype(bool)
    positive = np.nan_to_num(score) > 0
    idea = scored & eligible & positive
    is_blocked = positions_of(sym, blocked)
    cur = np.nan_to_num(u["qty"].to_numpy()) * np.nan_to_num(u["price"].to_numpy()) / account.nav

    ideas = sym[idea].tolist()
    verdict = reviewer.review(ideas) if ideas else {}
    denied = idea & ~positions_of(sym, [x for x, ok in verdict.items() if ok is True])
    in_book = idea & ~denied if s.pt_block_if_llm_deny else idea

    p = np.zeros(n)
    if in_book.any():
        p[in_book] = softmax(score[in_book], s.pt_score_exp)
    name_cap = np.where(is_blocked, np.minimum(s.pt_max_pos_pct, cur), s.pt_max_pos_pct)
    raw, bind = waterfill(p, name_cap, codes(u["sector"]), s.pt_sector_max_pct, budget)

    move = raw - cur
    gross_turn = float(np.abs(move).sum())
    scale = s.pt_turnover_cap_pct / gross_turn if gross_turn > s.pt_turnover_cap_pct else 1.0
    target = cur + scale * move if scale < 1.0 else raw
    utility = u["utility"].to_numpy()
    utility = np.where(np.isnan(utility), score, utility)
    cost = np.where(in_book & ~np.isnan(utility), utility, -np.inf)
    target, cut = _cash_floor(target, cur, cost, s)

    out_book = ~in_book | (is_blocked & (cur <= 0))
    brk = np.full(n, None, dtype=object)
    brk[is_blocked] = [blocked[x] for x in sym[is_blocked]]
    frame = (
        pl.DataFrame(
            {
                "symbol": u["symbol"],
                "sector": u["sector"],
                "target_weight": target,
                "current_weight": cur,
                "delta_weight": target - cur,
                "utility": pl.Series(utility, nan_to_null=True),
                "_why": u["_why"],
                "_brk": pl.Series(brk.tolist(), dtype=pl.String),
                "_scored": scored,
                "_eligible": eligible,
                "_positive": positive,
                "_blocked": is_blocked,
                "_denied": denied,
                "_in_book": in_book,
                "_name_cap": bind == 1,
                "_sector_cap": bind == 2,
                "_cut": cut > 0,
            },
        )
        .lazy()
        .with_columns(_out=_out_reason())
        .with_columns(reason=_reason(pl.col("_out"), s.pt_block_if_llm_deny))
        .collect()
    )
    targets = frame[np.flatnonzero(~out_book | (cur > 0))].select(list(TARGETS_SCHEMA))
    excluded = frame[np.flatnonzero(out_book)].select("symbol", reason="_out")
    return Allocation(
        targets=targets,
        excluded=excluded,
        turnover=float(np.abs(target - cur).sum()),
        budget=budget,
        reviewer_note=note,
        turnover_scale=scale,
        cash_trim=float(cut.sum()),
    )


def _out_reason() -> pl.Expr:
    """Why a name is kept out of the book (every rule that applies, ``"; "``-joined)."""
    scored = pl.col("_scored")
    return pl.concat_str(
        pl.when(~scored).then(pl.lit("not scored")),
        pl.when(scored & ~pl.col("_eligible")).then(
            pl.format("not eligible: {}", pl.col("_why").fill_null("filtered by strategist"))
        ),
        pl.when(scored & ~pl.col("_positive")).then(pl.lit("score <= 0")),
        pl.when(pl.col("_blocked")).then(pl.format("breaker: {}", pl.col("_brk"))),
        pl.when(pl.col("_denied")).then(pl.lit("denied by reviewer")),
        separator="; ",
        ignore_nulls=True,
    )


def _reason(out_reason: pl.Expr, block_if_deny: bool) -> pl.Expr:
    """The reason of a target row: its cap or breaker in the book, else ``out_reason``."""
    book = (
        pl.when(pl.col("_blocked"))
        .then(pl.format("breaker: {} (no new buys)", pl.col("_brk")))
        .when(pl.col("_name_cap"))
        .then(pl.lit("name cap"))
        .when(pl.col("_sector_cap"))
        .then(pl.format("sector cap: {}", pl.col("sector")))
        .otherwise(pl.lit("softmax"))
    )
    if not block_if_deny:
        denied = pl.concat_str(book, pl.lit(" (denied by reviewer; PT_BLOCK_IF_LLM_DENY=false)"))
        book = pl.when(pl.col("_denied")).then(denied).otherwise(book)
    plain = pl.when(pl.col("_in_book")).then(book).otherwise(out_reason)
    cut = pl.concat_str(pl.lit("cash floor trim; "), plain)
    return pl.when(pl.col("_cut")).then(cut).otherwise(plain)


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
