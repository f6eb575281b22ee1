"""``kronos breakers``: list, clear and check the fail-safe circuit breakers."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import polars as pl
import typer

from kronos import risk
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
from kronos.config import DataSettings, load_settings
from kronos.data import readers
from kronos.data.store import Store
from kronos.errors import KronosError
from kronos.risk import Breaker, FailSafeController

app = typer.Typer(
    help="Fail-safe circuit breakers: list, clear, check a session.", no_args_is_help=True
)


def _moment(text: str | None) -> datetime:
    """An ISO date or datetime (naive means UTC); now when ``text`` is None."""
    return datetime.now(UTC) if text is None else parse_moment(text, "--at")


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if t else ""


def _show(title: str, breakers: list[Breaker]) -> None:
    rows = [
        [
            b.short_id,
            b.scope,
            b.key,
            b.reason,
            _when(b.tripped_at),
            _when(b.expires_at),
            _when(b.cleared_at),
        ]
        for b in breakers
    ]
    columns = ["id", "scope", "key", "reason", "tripped (UTC)", "expires", "cleared"]
    out.print(table(title, columns, rows, left=4))


@app.command("list")
def breakers_list(
    show_all: Annotated[
        bool, typer.Option("--all", help="Every stored breaker, cleared and expired too.")
    ] = False,
    at: Annotated[
        str | None, typer.Option(help="Active at this ISO datetime (naive: UTC) [default: now].")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Active breakers (or all of them with --all)."""
    try:
        moment = _moment(at)
        with open_store(db, read_only=True, settings=load_settings().data) as store:
            found = risk.all_breakers(store) if show_all else risk.active_breakers(store, moment)
    except KronosError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"at": moment.isoformat(), "breakers": [b.to_dict() for b in found]}))
        return
    title = "all circuit breakers" if show_all else f"active at {_when(moment)} UTC"
    _show(f"{title}: {len(found)}", found)


@app.command("clear")
def breakers_clear(
    breaker_id: Annotated[
        str | None, typer.Argument(help="Breaker id, or a unique prefix of it.")
    ] = None,
    scope: Annotated[
        str | None, typer.Option(help="Clear every active breaker of this scope.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="With --scope: only this symbol/sector.")] = None,
    db: DbOption = None,
) -> None:
    """Clear active breakers by id or by scope/key, now."""
    if breaker_id is None and scope is None:
        fail("give a breaker id, or --scope (and optionally --key)")
    if breaker_id is not None and scope is not None:
        fail("give either a breaker id or --scope/--key, not both")
    try:
        with open_store(db, settings=load_settings().data) as store:
            n = risk.clear(store, breaker_id=breaker_id, scope=scope, key=key)
    except KronosError as exc:
        fail(str(exc))
    out.print(f"cleared {n} breaker{'s' if n != 1 else ''}", highlight=False)


def _step1_forecasts(
    store: Store, day: date, model: str | None, version: str | None, data: DataSettings
) -> tuple[pl.DataFrame, bool]:
    """Stored step-1 forecasts of one model version: calibrated if any, else raw."""
    calibrated = True
    frame = readers.forecasts(store, day, model=model, calibrated=True, settings=data)
    frame = frame.filter(step=1)
    if frame.is_empty():
        calibrated = False
        frame = readers.forecasts(store, day, model=model, calibrated=False, settings=data)
        frame = frame.filter(step=1)
    if frame.is_empty():
        fail(
            f"no stored step-1 forecasts{f' of model {model}' if model else ''} up to {day}; "
            "run 'kronos forecast' first"
        )
    models = sorted(frame["model"].unique().to_list())
    if len(models) > 1:
        fail(f"forecasts of several models are stored ({', '.join(models)}); give --model")
    if version is not None:
        frame = frame.filter(version=version)
        if frame.is_empty():
            fail(f"no step-1 forecasts of version {version!r} up to {day}")
    elif frame.select("symbol", "asof").is_duplicated().any():
        versions = sorted(frame["version"].unique().to_list())
        fail(f"several versions forecast the same origins ({', '.join(versions)}); give --version")
    return frame, calibrated


@app.command("check")
def breakers_check(
    asof: Annotated[str, typer.Option(help="Session to evaluate, YYYY-MM-DD.")],
    model: Annotated[
        str | None, typer.Option(help="Forecasts of this model [default: the only one stored].")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version, when several forecast the same origins.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate session ASOF from the store, trip what it finds, print it.

    Reads point in time at ASOF: the model's stored step-1 forecasts (calibrated
    ones if any are stored, else the raw ones), realized log returns, sectors from
    company profiles and headline counts. Tripping is idempotent.
    """
    try:
        day = parse_day(asof, "--asof")
    except KronosError as exc:
        fail(str(exc))
    loaded = load_settings()
    settings, data_settings = loaded.risk, loaded.data
    lookback = timedelta(days=3 * settings.failsafe_coverage_window + 14)
    try:
        with open_store(db, settings=data_settings) as store:
            fc, calibrated = _step1_forecasts(store, day, model, version, data_settings)
            realized = readers.returns(
                store, day, start=day - lookback, settings=data_settings
            ).select("symbol", "ts", y="log_ret")
            sectors = readers.profiles(store, day, settings=data_settings).select(
                "symbol", "sector"
            )
            news = readers.news_counts(
                store,
                day,
                start=day - timedelta(days=settings.headline_baseline_days),
                settings=data_settings,
            )
            found = FailSafeController(settings, data_settings).evaluate(
                day, fc, realized, sectors, news
            )
            new = risk.trip(store, found)
    except KronosError as exc:
        fail(str(exc))
    used = f"{fc['model'][0]} ({'calibrated' if calibrated else 'uncalibrated'})"
    if as_json:
        payload = {
            "asof": str(day),
            "model": fc["model"][0],
            "calibrated": calibrated,
            "new": new,
            "breakers": [b.to_dict() for b in found],
        }
        print(json.dumps(payload))
        return
    if not calibrated:
        err.print("no calibrated forecasts stored: using uncalibrated ones", highlight=False)
    _show(f"{day} with {used}: {len(found)} tripped, {new} new", found)
