"""Run a backtest spec end to end: data, folds, risk layer, trading, vectorbt, result."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from kronos.backtest import vbt
from kronos.backtest.analysis import fold_metrics, forecast_quality, rolling_coverage
from kronos.backtest.engine import Trading, order_hash, rebalance_days, trade
from kronos.backtest.executor import Executor, map_calls
from kronos.backtest.forecasts import STEP1_SCHEMA, FoldForecasts
from kronos.backtest.market import Market, load_market, resolve_universe, wide
from kronos.backtest.monitor import Quantiles, calibrate, failsafe
from kronos.backtest.plain import plain_strategy
from kronos.backtest.result import (
    BREAKERS_SCHEMA,
    COVERAGE_SCHEMA,
    EQUITY_SCHEMA,
    FOLD_METRICS_SCHEMA,
    POSITIONS_SCHEMA,
    BacktestResult,
    empty,
)
from kronos.backtest.spec import BacktestSpec, spec_hash
from kronos.backtest.tasks import fold_task
from kronos.data.store import DEFAULT_LOCK_WAIT_S, Store
from kronos.errors import ConfigError, InputError
from kronos.execution.fills import FillRules
from kronos.risk import Breaker

Progress = Callable[[str], None]


def fill_rules(spec: BacktestSpec, market: Market) -> FillRules:
    """The spec's costs and fill timing (``auto``: next open when the source has opens)."""
    at = spec.fills.at
    if at == "auto":
        at = "next_open" if market.has_open else "next_close"
    elif at == "next_open" and not market.has_open:
        raise ConfigError("fills.at is next_open but the universe's bars carry no opens")
    if spec.costs.volume_share is not None and not np.isfinite(market.volume).any():
        # a cap on a share of no volume would fill nothing and still report success
        raise ConfigError(
            f"costs.volume_share is {spec.costs.volume_share} but the universe's bars carry "
            "no volume: remove the cap or ingest bars with volume"
        )
    return FillRules(
        at=at,
        commission_bps=spec.costs.commission_bps,
        slippage_bps=spec.costs.slippage_bps,
        volume_share=spec.costs.volume_share,
    )


def _window(market: Market, start: date, end: date) -> tuple[int, int]:
    days = np.array(market.sessions, dtype="datetime64[D]")
    first = int(np.searchsorted(days, np.datetime64(start)))
    last = int(np.searchsorted(days, np.datetime64(end), side="right")) - 1
    if first > last:
        raise InputError(f"no session of the universe between {start} and {end}")
    return first, last


def fold_calls(
    spec: BacktestSpec, market: Market, first: int, last: int
) -> list[tuple[object, ...]]:
    """The arguments of each fold's task (less the panel), paths resolved here on the driver."""
    sessions = market.sessions
    folds = spec.splitter().folds(sessions, sessions[first], sessions[last])
    artifact = spec.forecaster.artifact
    if artifact is not None and ":/" not in artifact:  # a path, not a models:/ or s3:// URI
        artifact = str(Path(artifact).resolve())
    return [
        (
            spec.forecaster.name,
            spec.forecaster.params,
            spec.seed,
            f,
            [d for d in sessions[first : last + 1] if f.test_start <= d <= f.test_end],
            artifact,
        )
        for f in folds
    ]


def fold_plan(spec: BacktestSpec, store: Store) -> tuple[Market, list[tuple[object, ...]]]:
    """The market a spec trades and its fold tasks' arguments (none for a plain strategy)."""
    u = spec.universe
    data = spec.decision_settings().data
    symbols = resolve_universe(store, spec.dates.end, u.source, u.symbols, u.exclude, data)
    market = load_market(store, symbols, spec.dates.end, data)
    if spec.strategy.plain:
        return market, []
    first, last = _window(market, spec.dates.start, spec.dates.end)
    return market, fold_calls(spec, market, first, last)


def forecasts_by_fold(
    spec: BacktestSpec,
    market: Market,
    first: int,
    last: int,
    executor: Executor,
    ray_address: str | None,
    done: list[FoldForecasts] | None = None,
) -> list[FoldForecasts]:
    """Fit and forecast every fold (independent tasks), unless ``done`` already holds them."""
    if done is not None:  # a sweep's fold tasks ran before its trading loop
        return done
    calls = fold_calls(spec, market, first, last)
    return map_calls(fold_task, calls, executor, ray_address, shared={"panel": market.panel})


def _equity(market: Market, first: int, trading: Trading, benchmark: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": market.sessions[first : first + len(trading.nav)],
            "nav": trading.nav,
            "cash": trading.cash,
            "invested": trading.nav - trading.cash,
            "benchmark": benchmark,
        },
        schema=EQUITY_SCHEMA,
    )


def _positions(market: Market, first: int, qty: np.ndarray, nav: np.ndarray) -> pl.DataFrame:
    t, j = np.nonzero(qty)
    marks = market.mark[first:][t, j]
    value = qty[t, j] * marks
    return pl.DataFrame(
        {
            "ts": np.array(market.sessions[first:], dtype="datetime64[D]")[t],
            "symbol": np.array(market.symbols, dtype=object)[j],
            "qty": qty[t, j],
            "price": marks,
            "value": value,
            "weight": value / nav[t],
        }
    ).cast(POSITIONS_SCHEMA)


def _breakers(trips: list[Breaker]) -> pl.DataFrame:
    rows = [
        {
            "tripped_at": b.tripped_at,
            "scope": b.scope,
            "key": b.key,
            "reason": b.reason,
            "expires_at": b.expires_at,
        }
        for b in trips
    ]
    return pl.DataFrame(rows, schema=BREAKERS_SCHEMA)


def run_backtest(
    spec: BacktestSpec,
    store: Store,
    *,
    executor: Executor = "local",
    ray_address: str | None = None,
    progress: Progress | None = None,
    folds: list[FoldForecasts] | None = None,
) -> BacktestResult:
    """Run ``spec`` on ``store`` (read only: the backtest writes nothing there)."""
    say = progress or (lambda _m: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    u = spec.universe
    settings = spec.decision_settings()
    symbols = resolve_universe(store, spec.dates.end, u.source, u.symbols, u.exclude, settings.data)
    market = load_market(store, symbols, spec.dates.end, settings.data)
    first, last = _window(market, spec.dates.start, spec.dates.end)
    timings["load"] = time.perf_counter() - t0
    say(
        f"{len(symbols)} symbols, {last - first + 1} sessions "
        f"{market.sessions[first]}..{market.sessions[last]}"
    )

    plain = None
    if spec.strategy.plain:  # no forecaster, calibrator or fail-safe
        plain = plain_strategy(spec, market, first, last)
        folds, trips = [], []
        raw = calibrated = Quantiles(*(np.full(market.y.shape, np.nan) for _ in range(3)))
        scale = None
        say(f"plain {spec.strategy.kind} strategy: {plain.label}")
    else:
        folds, raw, calibrated, trips, scale = _forecasts_and_risk(
            spec, store, market, first, last, executor, ray_address, timings, say, folds
        )

    t0 = time.perf_counter()
    rules = fill_rules(spec, market)
    trading = trade(
        store=store,
        market=market,
        first=first,
        last=last,
        forecasts=calibrated,
        breakers=trips,
        rebalance=plain.rebalance
        if plain
        else rebalance_days(
            market.sessions[first : last + 1], spec.rebalance.every, spec.rebalance.weekday
        ),
        rules=rules,
        settings=settings,
        initial_cash=spec.capital.initial_cash,
        label=spec.name,
        progress=say,
        plan=plain,
    )
    timings["trading"] = time.perf_counter() - t0
    timings.update({f"trading_{k}": v for k, v in trading.seconds.items()})
    say(f"{trading.decisions} decisions, {trading.fills.height} fills")

    t0 = time.perf_counter()
    close = pl.DataFrame(
        {
            "ts": np.repeat(
                np.array(market.sessions[first : last + 1], dtype="datetime64[D]"), len(symbols)
            ),
            "symbol": symbols * (last - first + 1),
            "close": market.mark[first : last + 1].ravel(),
        }
    )
    positions = _positions(market, first, trading.qty, trading.nav)
    bench_symbols = [u.benchmark] if u.benchmark else symbols
    bench_close = close
    if u.benchmark and u.benchmark not in symbols:
        other = load_market(store, [u.benchmark], spec.dates.end, settings.data)
        idx = [
            other.sessions.index(d) if d in other.sessions else -1
            for d in market.sessions[first : last + 1]
        ]
        marks = np.array([other.mark[i, 0] if i >= 0 else np.nan for i in idx])
        bench_close = pl.DataFrame(
            {"ts": market.sessions[first : last + 1], "symbol": u.benchmark, "close": marks}
        )
    bench_nav, bench_stats = vbt.buy_and_hold_stats(
        bench_close, spec.capital.initial_cash, bench_symbols
    )
    equity = _equity(market, first, trading, bench_nav["benchmark"].to_numpy())
    signed = trading.fills.with_columns(
        qty=pl.when(pl.col("side") == "sell").then(-pl.col("qty")).otherwise(pl.col("qty"))
    )
    # vectorbt replays the fills only: a book that took corporate actions or
    # delistings moved outside them, so there is nothing to compare it with
    acted = trading.events.height > 0
    t1 = time.perf_counter()
    pf = None if acted else vbt.replay(signed, close, spec.capital.initial_cash, rules)
    timings["vectorbt_replay"] = time.perf_counter() - t1
    parity = {} if pf is None else vbt.parity(equity, positions, pf)
    stats = vbt.portfolio_stats(pf, equity, signed, spec.capital.initial_cash)
    stats.update({f"benchmark_{k}": v for k, v in bench_stats.items()})
    timings["vectorbt"] = time.perf_counter() - t0

    fold_list = [f.fold for f in folds]
    crossed = sum(f.crossed for f in folds)
    quality: dict[str, pl.DataFrame] = {}  # the report's forecast page: small summaries
    if not plain:
        t0 = time.perf_counter()
        pit_hist, terciles, scales = forecast_quality(
            market.sessions, raw, calibrated, market.y, first, scale
        )
        quality = {"pit_hist": pit_hist, "coverage_terciles": terciles, "calibration_scale": scales}
        timings["forecast_quality"] = time.perf_counter() - t0
    return BacktestResult(
        name=spec.name,
        spec_hash=spec_hash(spec),
        order_hash=order_hash(trading.orders),
        start=market.sessions[first],
        end=market.sessions[last],
        equity=equity,
        positions=positions,
        fills=trading.fills,
        orders=trading.orders,
        stats=stats,
        fold_metrics=empty(FOLD_METRICS_SCHEMA)
        if plain
        else fold_metrics(fold_list, market.sessions, raw, calibrated, market.y),
        coverage=empty(COVERAGE_SCHEMA)
        if plain
        else rolling_coverage(market.sessions, raw, calibrated, market.y, first),
        factor_contrib=trading.factors,
        breakers=_breakers(trips),
        parity=parity,
        timings=timings,
        events=trading.events,
        notes=trading.notes
        + (plain.notes() if plain else ())
        + (
            ("vectorbt parity not checked: corporate actions or delistings reached the book",)
            if acted
            else ()
        )
        + (
            (f"{crossed} step-1 forecast rows had crossed quantiles; sorted before use",)
            if crossed
            else ()
        ),
        crossed_rows=crossed,
        **quality,
    )


def _forecasts_and_risk(
    spec: BacktestSpec,
    store: Store,
    market: Market,
    first: int,
    last: int,
    executor: Executor,
    ray_address: str | None,
    timings: dict[str, float],
    say: Progress,
    done: list[FoldForecasts] | None = None,
) -> tuple[list[FoldForecasts], Quantiles, Quantiles, list[Breaker], np.ndarray | None]:
    """The decision chain's inputs: fold forecasts, calibrated, the fail-safe's trips.

    The last item is the calibrator's band scale per ``[session, symbol]`` (None uncalibrated).
    """
    t0 = time.perf_counter()
    folds = forecasts_by_fold(spec, market, first, last, executor, ray_address, done)
    timings["forecasts"] = time.perf_counter() - t0
    say(f"{len(folds)} folds fitted and forecast with {spec.forecaster.name}")
    frame = pl.concat([f.forecasts for f in folds]) if folds else pl.DataFrame(schema=STEP1_SCHEMA)
    by_origin = frame.rename({"asof": "ts"})
    raw = Quantiles(
        *(wide(by_origin, c, market.sessions, market.symbols) for c in ("p05", "p50", "p95"))
    )

    t0 = time.perf_counter()
    symbols = market.symbols
    if spec.forecaster.calibrate:
        calibrated, _, scale = calibrate(
            raw, market.y, symbols, market.sectors, spec.calibration_settings()
        )
    else:
        calibrated, scale = raw, None
    settings = spec.decision_settings()
    trips = failsafe(
        store,
        market.sessions,
        symbols,
        market.sectors,
        calibrated,
        market.y,
        first,
        settings.risk,
        settings.data,
        with_news="news" not in market.absent,
    )
    timings["risk"] = time.perf_counter() - t0
    say(f"calibrator and fail-safe replayed: {len(trips)} breaker trips")
    return folds, raw, calibrated, trips, scale


def run_on_db(
    spec: BacktestSpec,
    db: Path,
    executor: Executor = "local",
    ray_address: str | None = None,
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    *folds: FoldForecasts,
) -> BacktestResult:
    """Open the store at ``db`` read only and run ``spec`` (a sweep variant's Ray task).

    ``folds``, when given, are the spec's fold forecasts computed before (as
    separate Ray tasks: Ray hands them in once they are all done).
    """
    if not Path(db).exists():  # on a Ray worker: the store must be at the same path here
        raise InputError(
            f"no kronos database at {db} on host {socket.gethostname()} "
            "(a Ray worker reads the store at the driver's absolute path: share it there)"
        )
    with Store.open(db, read_only=True, lock_wait_s=lock_wait_s) as store:
        return run_backtest(
            spec, store, executor=executor, ray_address=ray_address, folds=list(folds) or None
        )
