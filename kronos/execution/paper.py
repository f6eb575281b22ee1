"""The paper-trading loop: reconcile, decide, submit, follow fills, record.

One :meth:`PaperLoop.cycle`:

1. **Journal.** A ``paper_cycles`` row is opened (a row left ``running`` by a
   killed process is marked ``interrupted``).
2. **Reconcile** with the broker (:mod:`kronos.execution.reconcile`): orders
   by ``client_order_id``, executions, positions; the broker wins and every
   difference is recorded.
3. **Decide once per session.** The session is the last one completed at the
   broker's clock. Its first cycle stores the model's forecasts for it when
   none are stored (the promoted artifact, or the fallback fitted on the
   first session's data, loaded once per loop), evaluates the fail-safe
   controller (trips breakers), runs :func:`kronos.decision.step.decide` on the
   broker's positions and account, and records the planned orders under the
   deterministic run id of (account, session): every later cycle of that
   session, in this process or after a restart, finds them and does not
   decide again. With ``ENABLE_PANIC_EXIT``
   and a global breaker active, the plan is replaced by selling every holding.
4. **Submit** planned orders while the market is open, sells first, each with
   its ``client_order_id``. An ambiguous outcome (timeout, 5xx) is resolved
   by looking the order up, never by sending it again blindly; an order the
   broker still does not know stays planned, and the next cycle looks it up
   before sending it (the broker refuses a second order with the same id).
   A refusal (buying power, wash trade, pattern-day-trader protection, not
   tradable, invalid) marks the order ``rejected`` with the venue rule and the
   broker's words in ``orders.reason``; a rate limit that outlasts the retries
   keeps it ``planned`` with the reason, for the next cycle. Neither stops the loop.
5. **Follow fills**, record them with the allocator's metadata, and log the
   cycle's metrics (NAV, cash, orders, fills, differences) to the recorder.

Nothing here keeps state between cycles that is not in the store or at the
broker, so ``kill -9`` at any point and a restart continue the same book.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import polars as pl

from kronos.config import CalibrationSettings, DecisionSettings
from kronos.data import readers
from kronos.data.prices import corporate_actions, price_basis
from kronos.data.store import Store
from kronos.decision.allocator import Account
from kronos.decision.snapshot import StoreSource
from kronos.decision.step import decide, record, run_id_for
from kronos.execution.brokers.base import (
    AmbiguousOutcome,
    Broker,
    BrokerError,
    BrokerOrder,
    BrokerUnavailable,
    Clock,
    DuplicateOrder,
    OrderRejected,
    OrderRequest,
)
from kronos.execution.fills import FillRules
from kronos.execution.parity import backfill_model_prices
from kronos.execution.reconcile import (
    Reconciled,
    follow_fills,
    reconcile,
    record_differences,
    update_order,
)
from kronos.features.returns import returns_panel
from kronos.forecasting import fallback, forecast_with, store_forecasts
from kronos.models.artifacts import Loaded, load_promoted
from kronos.risk import FailSafeController, trip

__all__ = [
    "CycleFailure",
    "CycleReport",
    "PaperConfig",
    "PaperLoop",
    "Recorder",
]

LOOKUPS = 3  # tries to learn an ambiguous submit's outcome within one cycle


class Recorder(Protocol):
    """Where cycle metrics go (an MLflow recorder, or anything with ``log_metrics``)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at ``step``."""
        ...


@dataclass(frozen=True, kw_only=True)
class PaperConfig:
    """What the loop trades and how."""

    account: str = "paper"
    # a built-in name, import path or entry point as given; after init, the class's
    # name (the label of its stored forecasts) and ``model_ref`` the reference
    model: str = "nbeats"
    model_ref: str | None = None
    model_dir: Path = Path("data/models")
    symbols: tuple[str, ...] | None = None  # None: every symbol with bars
    settings: DecisionSettings
    calibration: CalibrationSettings
    forecast: bool = True  # store the session's forecasts when none are stored
    failsafe: bool = True  # evaluate the fail-safe controller on each new session
    fill_model: FillRules = field(default_factory=FillRules)  # the backtest's rule fills meet
    settings_hash: str | None = None  # of the resolved settings (kronos.config.settings_hash)

    def __post_init__(self) -> None:
        from kronos.models.registry import model_name

        reference = self.model_ref or self.model
        object.__setattr__(self, "model_ref", reference)
        object.__setattr__(self, "model", model_name(reference))


@dataclass(frozen=True)
class CycleFailure:
    """A cycle that ended in a broker error (journalled ``failed``)."""

    cycle: int
    message: str
    unavailable: bool  # the broker could not be reached (network, 5xx, 429 after retries)


@dataclass(frozen=True)
class CycleReport:
    """What one cycle saw and did."""

    cycle: int
    broker_now: datetime
    market_open: bool
    session: date | None
    run_id: str | None
    decided: bool
    planned: int
    submitted: int
    rejected: int
    fills: int
    differences: int
    mismatches: int
    nav: float
    cash: float
    message: str

    def line(self) -> str:
        """A one-line summary for logs."""
        state = "open" if self.market_open else "closed"
        return (
            f"cycle {self.cycle} {self.broker_now:%Y-%m-%d %H:%M}Z market {state} "
            f"session {self.session}: planned {self.planned}, submitted {self.submitted}, "
            f"rejected {self.rejected}, fills {self.fills}, differences {self.differences}, "
            f"NAV {self.nav:,.2f} cash {self.cash:,.2f}"
            + (f" ({self.message})" if self.message else "")
        )


def _request(row: tuple) -> OrderRequest:
    """A planned order row as the broker's request; a row no broker could take is refused."""
    try:
        return OrderRequest(
            client_order_id=row[0],
            symbol=row[1],
            side=row[2],
            qty=row[3],
            order_type=row[4],
            limit_price=row[5],
            take_profit=row[6],
            stop_loss=row[7],
        )
    except (TypeError, ValueError) as exc:
        raise OrderRejected(f"planned order refused before sending: {exc}", "invalid") from None


class PaperLoop:
    """The paper-trading loop over one broker and one account (module steps)."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        config: PaperConfig,
        recorder: Recorder | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.config = config
        self.recorder = recorder
        self.say = say or (lambda _m: None)
        self.data = config.settings.data
        self._cycle = 0
        self._clock: Clock | None = None
        self.failures: list[CycleFailure] = []  # the last run()'s failed cycles
        self._model: Loaded | None = None
        self._split_day: tuple[tuple[date, date | None], pl.DataFrame | None] | None = None
        if config.symbols is None:
            rows = store.con.execute("SELECT DISTINCT symbol FROM bars ORDER BY 1").fetchall()
            self.symbols = [r[0] for r in rows]
        else:
            self.symbols = list(config.symbols)

    def _splits(self, now: datetime) -> pl.DataFrame | None:
        """Splits known at ``now`` on the raw price basis (the broker applies them itself).

        Read again only when the day or the newest stored bar changes (the two
        cycles of a session share one read).
        """
        end = now.astimezone(ZoneInfo(self.data.market_tz)).date()
        newest = self.store.con.execute("SELECT max(ts) FROM bars").fetchall()[0][0]
        if self._split_day is None or self._split_day[0] != (end, newest):
            raw = price_basis(self.store, self.symbols, end, self.data).raw
            splits = corporate_actions(self.store, end, self.symbols, self.data) if raw else None
            self._split_day = ((end, newest), splits)
        return self._split_day[1]

    # -- journal -----------------------------------------------------------
    def _begin(self, started: datetime) -> int:
        account = self.config.account
        con = self.store.con
        con.execute(
            "UPDATE paper_cycles SET status = 'interrupted' "
            "WHERE account = ? AND status = 'running'",
            [account],
        )
        n = con.execute(
            "SELECT coalesce(max(cycle), 0) + 1 FROM paper_cycles WHERE account = ?", [account]
        ).fetchall()[0][0]
        con.execute(
            "INSERT INTO paper_cycles (account, cycle, broker, started_at, status, "
            "settings_hash) VALUES (?, ?, ?, ?, 'running', ?)",
            [account, n, self.broker.name, started, self.config.settings_hash],
        )
        return n

    def _finish(self, report: CycleReport, status: str) -> None:
        self.store.con.execute(
            "UPDATE paper_cycles SET finished_at = ?, broker_now = ?, market_open = ?, "
            '"asof" = ?, run_id = ?, status = ?, decided = ?, submitted = ?, fills = ?, '
            "differences = ?, nav = ?, cash = ?, message = ? WHERE account = ? AND cycle = ?",
            [
                datetime.now(UTC),
                report.broker_now,
                report.market_open,
                report.session,
                report.run_id,
                status,
                report.decided,
                report.submitted,
                report.fills,
                report.differences,
                report.nav,
                report.cash,
                report.message,
                self.config.account,
                report.cycle,
            ],
        )

    # -- the session -------------------------------------------------------
    def session_at(self, now: datetime) -> date | None:
        """The last session with bars whose close is at or before ``now``."""
        last = readers.PointInTime.at(now, self.data).bar_date
        row = self.store.con.execute(
            "SELECT max(ts) FROM bars WHERE ts <= ? AND symbol IN (SELECT unnest(?))",
            [last, self.symbols],
        ).fetchall()
        return row[0][0]

    def run_id(self, session: date) -> str:
        """The decision's run id for ``session`` (so its order ids are deterministic)."""
        return run_id_for(session, f"paper-{self.config.account}")

    def _decided(self, run_id: str) -> bool:
        row = self.store.con.execute(
            "SELECT (SELECT count(*) FROM orders WHERE run_id = ?) + (SELECT count(*) FROM "
            "paper_cycles WHERE account = ? AND run_id = ? AND decided)",
            [run_id, self.config.account, run_id],
        ).fetchall()
        return row[0][0] > 0

    def _prepare(self, session: date) -> None:
        """Forecasts and fail-safe for a new session."""
        cfg = self.config
        if cfg.forecast:
            stored = self.store.con.execute(
                'SELECT count(*) FROM forecasts WHERE model = ? AND "asof" = ?',
                [cfg.model, session],
            ).fetchall()[0][0]
            if not stored:
                panel = returns_panel(self.store, session, self.symbols, settings=self.data)
                if self._model is None:  # loaded (or fitted) once per loop
                    reference = cfg.model_ref or cfg.model
                    fit = fallback(reference, panel)
                    self._model = load_promoted(cfg.model_dir, reference, fit)
                    self.say(f"{session}: {self._model.message}")
                made = forecast_with(
                    self.store,
                    self._model,
                    cfg.model,
                    panel,
                    symbols=self.symbols,
                    settings=cfg.calibration,
                    data=self.data,
                )
                store_forecasts(self.store, cfg.model, made)
                if made.crossed_note:
                    self.say(f"{session}: {cfg.model}: {made.crossed_note}")
        if cfg.failsafe:
            self._check_failsafe(session)

    def _check_failsafe(self, session: date) -> int:
        """Evaluate the fail-safe controller on ``session``; trip what it finds."""
        risk = self.config.settings.risk
        lookback = timedelta(days=3 * risk.failsafe_coverage_window + 14)
        fc = readers.forecasts(self.store, session, model=self.config.model, settings=self.data)
        fc = fc.filter(pl.col("step") == 1, pl.col("asof") >= session - lookback)
        if fc.is_empty():
            return 0
        # calibrated rows where a day has them, one version per origin
        fc = (
            fc.sort("symbol", "asof", "calibrated", "version")
            .group_by("symbol", "asof", maintain_order=True)
            .last()
        )
        realized = readers.returns(
            self.store, session, self.symbols, start=session - lookback, settings=self.data
        )
        realized = realized.select("symbol", "ts", y="log_ret")
        sectors = readers.profiles(self.store, session, self.symbols, settings=self.data)
        sectors = sectors.select("symbol", "sector")
        news = readers.news_counts(
            self.store,
            session,
            start=session - timedelta(days=risk.headline_baseline_days),
            settings=self.data,
        )
        found = FailSafeController(risk, self.data).evaluate(session, fc, realized, sectors, news)
        new = trip(self.store, found)
        if new:
            self.say(f"{session}: fail-safe tripped {new} breaker(s)")
        return new

    def _decide(self, session: date, run_id: str, now: datetime, rec: Reconciled) -> int:
        """Decide on ``session`` and record the planned orders; how many were planned."""
        self._prepare(session)
        settings = self.config.settings
        positions = pl.DataFrame(
            {"symbol": [p.symbol for p in rec.positions], "qty": [p.qty for p in rec.positions]},
            schema={"symbol": pl.String, "qty": pl.Float64},
        )
        account = Account(nav=rec.account.nav, cash=rec.account.cash)
        source = StoreSource(self.store, self.config.model, settings, self.symbols)
        decision = decide(source, session, positions, account, settings, run_id=run_id, now=now)
        for note in decision.notes:
            self.say(f"{session}: {note}")
        added = record(self.store, decision, now, broker=self.broker.name, data_settings=self.data)
        self.store.con.execute(
            "UPDATE paper_cycles SET decided = true, run_id = ? WHERE account = ? AND cycle = ?",
            [run_id, self.config.account, self._cycle],
        )
        return added

    # -- submission --------------------------------------------------------
    def _planned(self, run_id: str) -> list[tuple]:
        """The run's planned order rows, sells first (see :func:`_request`)."""
        return self.store.con.execute(
            "SELECT client_order_id, symbol, side, qty, order_type, limit_price, take_profit, "
            "stop_loss FROM orders WHERE run_id = ? AND status = 'planned' "
            "ORDER BY side DESC, symbol, client_order_id",  # sells first
            [run_id],
        ).fetchall()

    def _lookup(self, cid: str) -> BrokerOrder | None:
        for k in range(LOOKUPS):
            try:
                return self.broker.order(cid)
            except BrokerError:
                time.sleep(0.05 * (k + 1))
        return None

    def _submit(self, run_id: str, now: datetime) -> tuple[int, int, list[str]]:
        """Send the run's planned orders; returns (submitted, rejected, notes)."""
        submitted = rejected = 0
        notes: list[str] = []
        for row in self._planned(run_id):
            cid, symbol = row[0], row[1]
            try:
                found = self.broker.submit(_request(row))
            except DuplicateOrder:
                found = self._lookup(cid)
            except OrderRejected as exc:
                reason = f"{exc.kind}: {exc}"  # the venue rule and Alpaca's words
                self.store.con.execute(
                    "UPDATE orders SET status = 'rejected', reason = ?, updated_at = ? "
                    "WHERE client_order_id = ?",
                    [reason[:1000], now, cid],
                )
                rejected += 1
                notes.append(f"{symbol} rejected: {reason}")
                continue
            except AmbiguousOutcome as exc:
                found = self._lookup(cid)
                if found is None:
                    notes.append(f"{cid} outcome unknown ({exc}): looked up next cycle")
                    continue
            except BrokerUnavailable as exc:
                # nothing was placed (429 after retries, refused connection): the order
                # stays planned with the reason, and the next cycle sends it again
                self.store.con.execute(
                    "UPDATE orders SET reason = ?, updated_at = ? WHERE client_order_id = ?",
                    [f"unavailable, retried next cycle: {exc}"[:1000], now, cid],
                )
                notes.append(f"broker unavailable ({exc}): the rest next cycle")
                break
            if found is None:
                continue
            update_order(self.store, found, now)
            submitted += 1
        return submitted, rejected, notes

    # -- one cycle ---------------------------------------------------------
    def cycle(self) -> CycleReport:
        """Run one cycle (module steps) and journal it."""
        self._cycle = n = self._begin(datetime.now(UTC))
        clock = self._clock = self.broker.clock()
        now = clock.now
        session = self.session_at(now)
        rec = reconcile(
            self.store, self.broker, self.config.account, session, now,
            splits=self._splits(now), tz=self.data.market_tz,
        )  # fmt: skip
        record_differences(self.store, self.config.account, n, rec.differences, now)
        run_id = self.run_id(session) if session is not None else None
        planned = submitted = rejected = 0
        decided = False
        notes: list[str] = []
        if session is None:
            notes.append("no completed session in the store yet")
        elif not self._decided(run_id):
            planned = self._decide(session, run_id, now, rec)
            decided = True
        if run_id is not None and clock.is_open:
            submitted, rejected, notes_submit = self._submit(run_id, now)
            notes += notes_submit
        fills = rec.new_fills + follow_fills(self.store, self.broker, self.config.account)
        backfill_model_prices(
            self.store, self.config.fill_model, settings=self.data,
            account=self.config.account, universe=self.symbols,
        )  # fmt: skip
        state = self.broker.account()
        report = CycleReport(
            cycle=n,
            broker_now=now,
            market_open=clock.is_open,
            session=session,
            run_id=run_id,
            decided=decided,
            planned=planned,
            submitted=submitted,
            rejected=rejected,
            fills=fills,
            differences=len(rec.differences),
            mismatches=rec.mismatches,
            nav=state.nav,
            cash=state.cash,
            message="; ".join(notes),
        )
        self._finish(report, "done")
        if self.recorder is not None:
            self.recorder.log_metrics(
                {
                    "nav": report.nav,
                    "cash": report.cash,
                    "orders_planned": float(planned),
                    "orders_submitted": float(submitted),
                    "orders_rejected": float(rejected),
                    "fills": float(fills),
                    "differences": float(report.differences),
                    "positions": float(len(rec.positions)),
                },
                step=n,
            )
        self.say(report.line())
        return report

    def run(
        self,
        cycles: int | None = None,
        until: datetime | None = None,
        wait: Callable[[Clock | None], None] | None = None,
    ) -> list[CycleReport]:
        """Cycle until ``cycles`` are done or the broker's clock passes ``until``.

        ``wait`` is called between cycles with the clock the last cycle read
        (``None`` when it failed before reading it): the simulated broker
        advances its clock there, a live run sleeps. Returns the completed
        cycles; the failed ones are in :attr:`failures`, and :meth:`outcome`
        says whether the run did its work.
        """
        if cycles is None and until is None:
            raise ValueError("give cycles or until (or both)")
        reports: list[CycleReport] = []
        self.failures = []
        attempts = 0
        while cycles is None or attempts < cycles:
            attempts += 1
            self._clock = None
            try:
                reports.append(self.cycle())
            except BrokerError as exc:
                self.store.con.execute(
                    "UPDATE paper_cycles SET status = 'failed', message = ?, finished_at = ? "
                    "WHERE account = ? AND cycle = ?",
                    [str(exc)[:500], datetime.now(UTC), self.config.account, self._cycle],
                )
                self.failures.append(
                    CycleFailure(self._cycle, str(exc), isinstance(exc, BrokerUnavailable))
                )
                self.say(f"cycle {self._cycle} failed: {exc}")
            clock = self._clock
            if until is not None and clock is not None and clock.now >= until:
                break
            if cycles is not None and attempts >= cycles:
                break
            if wait is not None:
                wait(clock)
        return reports

    def outcome(self, reports: Sequence[CycleReport]) -> str | None:
        """Why the last :meth:`run` did not do its work, or None when it did.

        A run fails when no cycle completed or its last cycle failed (the broker
        is unreachable now); earlier failed cycles that a later one recovered
        from are counted, not failed on.
        """
        if not self.failures:
            return None if reports else "no cycle ran"
        last = self.failures[-1]
        if reports and reports[-1].cycle > last.cycle:
            return None
        done = f"{len(reports)} of {len(reports) + len(self.failures)} cycle(s) completed"
        return f"{done}; the last failed (cycle {last.cycle}): {last.message}"
