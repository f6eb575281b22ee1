"""``kronos paper``: the paper-trading loop (run, status) and its fault-injection run (chaos)."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from kronos.cli._common import (
    DbOption,
    JsonOption,
    err,
    fail,
    open_store,
    out,
    parse_day,
    parse_moment,
    table,
)
from kronos.config import load_settings, resolve_db_path, settings_hash
from kronos.data.store import Store
from kronos.errors import KronosError

app = typer.Typer(help="Paper trading: the live loop on a simulated or Alpaca broker.")
EXPERIMENT = "kronos-paper"


def universe(store: Store, source: str | None) -> list[str]:
    """Symbols of ``source``; by default the bundled equities, else synthetic, else all."""
    found = {r[0] for r in store.con.execute("SELECT DISTINCT source FROM bars").fetchall()}
    if source is None:
        source = next((s for s in ("skfolio.sp500", "synthetic") if s in found), None)
    elif source not in found:
        fail(f"no bars with source {source!r}; stored: {', '.join(sorted(found)) or 'none'}")
    sql = "SELECT DISTINCT symbol FROM bars" + (" WHERE source = ?" if source else "")
    rows = store.con.execute(sql + " ORDER BY 1", [source] if source else []).fetchall()
    if not rows:
        fail(f"no bars in {store.path}: run 'kronos data ingest' first")
    return [r[0] for r in rows]


def _moment(text: str | None) -> datetime | None:
    return None if text is None else parse_moment(text, "--until")


def _sleeper(interval: float, until: datetime | None):
    """Wait between live cycles: ``interval`` seconds, or until the next open when closed."""

    def wait(clock) -> None:
        if interval <= 0:
            return
        pause = interval
        if clock is not None and not clock.is_open:
            pause = max((clock.next_open - clock.now).total_seconds(), interval)
        if until is not None:
            pause = min(pause, max((until - datetime.now(UTC)).total_seconds(), 0))
        time.sleep(pause)

    return wait


@app.command("run")
def paper_run(
    broker: Annotated[str, typer.Option(help="sim (stored bars) or alpaca (paper account).")] = (
        "sim"
    ),
    cycles: Annotated[int | None, typer.Option(help="Stop after this many cycles.")] = None,
    until: Annotated[
        str | None, typer.Option(help="Stop once the broker's clock passes this ISO time (UTC).")
    ] = None,
    account: Annotated[str, typer.Option(help="Account label: runs, orders, state.")] = "paper",
    model: Annotated[
        str,
        typer.Option(help="Forecaster feeding the decision (name, pkg.mod:Class, entry point)."),
    ] = "nbeats",
    source: Annotated[
        str | None, typer.Option(help="Universe: bars of this source [default: bundled equities].")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="sim: first session of a new account [default: a year back]."),
    ] = None,
    cash: Annotated[float, typer.Option(help="sim: starting cash of a new account (USD).")] = (
        1_000_000.0
    ),
    fill_at: Annotated[str, typer.Option(help="sim: next_open or next_close.")] = "next_open",
    commission_bps: Annotated[float, typer.Option(help="sim: commission, bps.")] = 0.0,
    slippage_bps: Annotated[float, typer.Option(help="sim: slippage, bps.")] = 0.0,
    volume_share: Annotated[
        float | None, typer.Option(help="sim: largest share of a session's volume per order.")
    ] = None,
    interval: Annotated[
        float, typer.Option(help="alpaca: seconds between cycles (0: no waiting).")
    ] = 900.0,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the paper-trading loop: reconcile, decide, submit, follow fills, record.

    With the simulated broker each cycle moves its clock one phase (a session's
    open, then its close); its state lives in the store, so a later run of the
    same --account continues. With Alpaca, keys come from the environment or
    .env (APCA_PAPER_API_KEY_ID, APCA_PAPER_API_SECRET_KEY).

    Exit 1, with the MLflow run FAILED, when no cycle completed or the last
    cycle failed (e.g. the broker is unreachable); a failed cycle that a later
    one recovered from is counted (cycles_failed), not failed on. SIGTERM and
    SIGHUP stop the run as Ctrl-C does: run KILLED, exit 143/129 (130).
    """
    if broker not in ("sim", "alpaca"):
        fail(f"--broker must be sim or alpaca, got {broker!r}")
    if fill_at not in ("next_open", "next_close"):
        fail(f"--fill-at must be next_open or next_close, got {fill_at!r}")
    if cycles is None and until is None:
        fail("give --cycles N or --until TIME")
    if cycles is not None and cycles < 1:
        fail("--cycles must be at least 1")
    loaded = load_settings()
    try:
        stop = _moment(until)
        store = open_store(db, settings=loaded.data)
    except KronosError as exc:
        fail(str(exc))
    from kronos.interrupts import RunInterrupted, stop_on_signals

    try:
        with stop_on_signals(), store, contextlib.ExitStack() as stack:
            from kronos.execution.fills import FillRules
            from kronos.execution.paper import PaperConfig, PaperLoop

            symbols = universe(store, source)
            if broker == "sim":
                the_broker, wait = _sim(store, account, symbols, start, cash, fill_at,
                                        commission_bps, slippage_bps, volume_share,
                                        loaded.data)  # fmt: skip
            else:
                the_broker, wait = _alpaca(loaded.alpaca_trading), _sleeper(interval, stop)
            config = PaperConfig(
                account=account,
                model=model,
                model_dir=loaded.models.model_dir,
                symbols=tuple(symbols),
                settings=loaded.decision(),
                calibration=loaded.calibration,
                fill_model=FillRules(at=fill_at, commission_bps=commission_bps,
                                     slippage_bps=slippage_bps, volume_share=volume_share),
                settings_hash=settings_hash(loaded),
            )  # fmt: skip
            recorder = None
            if not no_mlflow:
                from kronos.tracking import mlflow_run

                tags = {"broker": broker, "account": account, "model": model}
                recorder = stack.enter_context(
                    mlflow_run(EXPERIMENT, f"paper-{account}", tags, settings=loaded)
                )
            say = (lambda m: err.print(m, highlight=False)) if as_json else print
            loop = PaperLoop(store, the_broker, config, recorder, say=say)
            try:
                reports = loop.run(cycles=cycles, until=stop, wait=wait)
            except KronosError as exc:  # e.g. the simulated broker at the end of the stored bars
                fail(str(exc))
            _report(loop, reports, the_broker, account, recorder, as_json, settings_hash(loaded))
    except KeyboardInterrupt as exc:  # the MLflow run is KILLED; the cycle journal says so too
        why = str(exc) if isinstance(exc, RunInterrupted) else "stopped by SIGINT"
        err.print(f"[red]{why}[/red]: the paper run is KILLED", highlight=False)
        raise typer.Exit(exc.exit_status if isinstance(exc, RunInterrupted) else 130) from None


def _report(loop, reports, the_broker, account: str, recorder, as_json: bool, digest: str) -> None:
    """Print the run's summary; exit 1 (in the MLflow run: FAILED) when it did not work."""
    problem = loop.outcome(reports)
    if problem is not None and loop.failures and loop.failures[-1].unavailable:
        check = "KRONOS_ALPACA_TRADING_URL, the network and Alpaca's status"
        problem += f" (broker {_broker_host(the_broker)} unreachable: check {check})"
    summary = {
        "status": "FAILED" if problem else "FINISHED",
        "broker": the_broker.name,
        "account": account,
        "cycles": len(reports),
        "cycles_failed": len(loop.failures),
        "submitted": sum(r.submitted for r in reports),
        "rejected": sum(r.rejected for r in reports),
        "fills": sum(r.fills for r in reports),
        "differences": sum(r.differences for r in reports),
        "nav": reports[-1].nav if reports else None,
        "cash": reports[-1].cash if reports else None,
        "mlflow_run_id": recorder.run_id if recorder is not None else None,
        "settings_hash": digest,
        "error": problem,
    }
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        failed = f", {summary['cycles_failed']} failed" if loop.failures else ""
        out.print(
            f"{summary['cycles']} cycle(s){failed}: {summary['submitted']} order(s) "
            f"submitted, {summary['fills']} fill(s), {summary['differences']} difference(s); "
            f"NAV {summary['nav'] or 0:,.2f}; settings {digest}",
            highlight=False,
        )
    if recorder is not None:
        counts = {"cycles_completed": len(reports), "cycles_failed": len(loop.failures)}
        recorder.log_metrics({k: float(v) for k, v in counts.items()})
    if problem is not None:
        if recorder is not None:
            recorder.set_tags({"error": problem[:5000]})
        err.print(f"[red]paper run failed:[/red] {problem}", highlight=False)
        raise typer.Exit(1)  # raised inside the MLflow run: it ends FAILED


def _broker_host(broker) -> str:
    """The host (and port) a broker talks to, for error messages."""
    from urllib.parse import urlsplit

    url = getattr(broker, "url", None)
    if url:
        return urlsplit(url).netloc or url
    if getattr(broker, "name", "") == "alpaca":
        live = getattr(broker, "mode", "paper") == "live"
        return "api.alpaca.markets" if live else "paper-api.alpaca.markets"
    return getattr(broker, "name", "the broker")


def _sim(store, account, symbols, start, cash, fill_at, commission, slippage, volume_share, data):
    from kronos.execution.brokers.sim import SimBroker
    from kronos.execution.fills import FillRules

    rules = FillRules(
        at=fill_at, commission_bps=commission, slippage_bps=slippage, volume_share=volume_share
    )
    sim = SimBroker(store, account, rules, symbols, data_settings=data)
    try:
        if start is not None:
            first = parse_day(start, "--start")
        else:
            first = sim.sessions[max(len(sim.sessions) - 253, 0)]
        if sim.start(first, cash):
            print(f"simulated account {account!r} opened at the close of {first} with {cash:,.2f}")
        else:
            print(f"simulated account {account!r} continues at {sim.clock().now:%Y-%m-%d %H:%M}Z")
    except KronosError as exc:
        fail(str(exc))
    return sim, lambda _clock: sim.advance()


def _alpaca(settings):
    from kronos.execution.brokers.alpaca import AlpacaBroker, load_alpaca_trading_settings

    try:
        return AlpacaBroker(load_alpaca_trading_settings(settings))
    except KronosError as exc:
        fail(str(exc))


@app.command("status")
def paper_status(
    account: Annotated[str, typer.Option(help="Account label.")] = "paper",
    last: Annotated[int, typer.Option(help="Show this many recent cycles.")] = 10,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recent cycles, positions, and paper vs backtest fill prices of an account, from the store."""
    try:
        with open_store(db, read_only=True, settings=load_settings().data) as store:
            cycles = store.con.execute(
                'SELECT cycle, status, broker_now, market_open, "asof", submitted, fills, '
                "differences, nav, cash, message FROM paper_cycles WHERE account = ? "
                "ORDER BY cycle DESC LIMIT ?",
                [account, last],
            ).fetchall()
            positions = store.con.execute(
                "SELECT symbol, qty, avg_price, market_value FROM positions WHERE account = ? "
                'AND symbol <> \'\' AND "asof" = (SELECT max("asof") FROM positions '
                "WHERE account = ?) ORDER BY symbol",
                [account, account],
            ).fetchall()
            from kronos.execution.parity import parity_report

            # realized vs modelled slippage of the account's fills (kronos.execution.parity)
            parity = parity_report(store, load_settings().data, account=account)
    except KronosError as exc:
        fail(str(exc))
    if as_json:
        doc = {"cycles": cycles, "positions": positions, "parity": parity.to_dicts()}
        print(json.dumps(doc, default=str))
        return
    if not cycles:
        out.print(f"no cycles for account {account!r}")
        return
    rows = [
        [str(c[0]), c[1], f"{c[2]:%Y-%m-%d %H:%M}" if c[2] else "", "open" if c[3] else "closed",
         str(c[4] or ""), str(c[5]), str(c[6]), str(c[7]), f"{c[8] or 0:,.0f}",
         f"{c[9] or 0:,.0f}"]
        for c in cycles
    ]  # fmt: skip
    cols = ["cycle", "status", "broker now", "market", "session", "sent", "fills", "diffs", "NAV",
            "cash"]  # fmt: skip
    out.print(table(f"paper account {account}: last {len(rows)} cycles", cols, rows, left=5))
    prow = [[s, f"{q:g}", f"{a or 0:,.2f}", f"{v or 0:,.0f}"] for s, q, a, v in positions]
    out.print(table("positions", ["symbol", "qty", "avg price", "value"], prow))
    bps = lambda x: "" if x is None else f"{x:+.1f}"  # noqa: E731
    parity_rows = [
        [r["symbol"], str(r["fills"]), str(r["priced"]), f"{r['notional']:,.0f}",
         bps(r["realized_bps"]), bps(r["modelled_bps"]), bps(r["gap_bps"])]
        for r in parity.iter_rows(named=True)
    ]  # fmt: skip
    parity_cols = ["symbol", "fills", "priced", "notional", "realized bps", "modelled bps",
                   "gap bps"]  # fmt: skip
    title = "paper vs backtest fill prices (gap > 0: paper did worse)"
    out.print(table(title, parity_cols, parity_rows))


@app.command("chaos")
def paper_chaos(
    faults: Annotated[int, typer.Option(help="Inject at least this many faults.")] = 500,
    kills: Annotated[int, typer.Option(help="SIGKILL the loop at least this many times.")] = 20,
    rate: Annotated[float, typer.Option(help="Share of trading requests faulted.")] = 0.12,
    start: Annotated[str, typer.Option(help="First session the fake market replays.")] = (
        "2021-01-04"
    ),
    sessions: Annotated[int, typer.Option(help="Sessions the fake market replays.")] = 500,
    model: Annotated[str, typer.Option(help="Forecaster feeding the decision.")] = "ewma",
    source: Annotated[
        str | None, typer.Option(help="Universe: bars of this source [default: bundled equities].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the faults and the kill times.")] = 0,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the store copy and the loop's log here.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The paper loop against a local Alpaca with injected faults, killed and restarted.

    Works on a copy of the store. Prints orders placed, duplicates (target 0),
    position mismatches after reconciliation (target 0) and cycles completed.
    """
    from kronos.testing.chaos import ChaosConfig, result_dict, run_chaos

    try:
        first = parse_day(start, "--start")
    except KronosError as exc:
        fail(str(exc))
    data = load_settings().data
    path = resolve_db_path(db, data)
    try:
        with open_store(db, read_only=True, settings=data) as store:
            symbols = universe(store, source)
    except KronosError as exc:
        fail(str(exc))
    config = ChaosConfig(
        db=path, symbols=tuple(symbols), start=first, sessions=sessions, min_faults=faults,
        min_kills=kills, fault_rate=rate, model=model, seed=seed, workdir=workdir,
    )  # fmt: skip
    try:
        result = run_chaos(config, say=lambda m: err.print(m, highlight=False))
    except KronosError as exc:
        fail(str(exc))
    data = result_dict(result)
    if as_json:
        print(json.dumps(data))
        return
    targets = {"duplicates": "0", "orphans": "0", "position_mismatches": "0"}
    rows = [
        [k, json.dumps(v) if isinstance(v, dict) else f"{v:,.1f}" if isinstance(v, float)
         else f"{v:,}", targets.get(k, "")]
        for k, v in data.items()
    ]  # fmt: skip
    out.print(table("kronos paper chaos", ["measure", "value", "target"], rows))
    if result.duplicates or result.orphans or result.position_mismatches:
        raise typer.Exit(1)
