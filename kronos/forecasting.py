"""Forecasts for a session from the promoted model, calibrated when a state exists, stored.

What ``kronos forecast``, the calibration job and the notebooks share: load the
promoted artifact (or fit the lightweight fallback and say so), predict from
the origin, apply the newest calibration state, and write raw and calibrated
rows to ``forecasts``.

Point in time: a model *fitted through* day D has seen the bars up to and
including D (its training and validation data, METRICS.json ``data_range``).
A forecast from origin O reads bars up to O; it uses nothing the model could
not have known iff D <= O. So a model fitted through D answers origins on or
after D (the boundary day D itself is point in time) and refuses earlier ones
unless look-ahead is explicitly allowed (:func:`point_in_time`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from kronos.calendar import get_calendar
from kronos.calibration import load_calibrator
from kronos.config import CalibrationSettings, DataSettings
from kronos.data import readers
from kronos.data.ingest import ingest
from kronos.data.store import Store
from kronos.errors import LookAhead
from kronos.forecast_quality import crossed_rows, repair_frame
from kronos.models.artifacts import Loaded, load_promoted
from kronos.models.base import Forecaster, retarget
from kronos.models.registry import ForecasterRef


def fallback(name: ForecasterRef, panel: pl.DataFrame) -> Callable[[], Forecaster] | None:
    """What to fit when no artifact is promoted (TFT and the graph models: nothing).

    The lightweight N-BEATS (whitepaper section 3), or a baseline on ``panel``;
    a model not built in (an import path, entry point or class) is built with
    its defaults and fitted on ``panel`` like the baselines. TFT and the graph
    models need sectors, validation rows and minutes of training: train them
    with ``kronos train``.
    """
    from kronos.models.registry import build
    from kronos.models.split import train_valid_split

    if name in ("tft", "stemgnn", "mtgnn", "mtgnn_prior"):
        return None

    def fit() -> Forecaster:
        if name == "nbeats":
            from kronos.models.nbeats import lightweight_nbeats

            return lightweight_nbeats().fit(*train_valid_split(panel))
        return build(name).fit(panel)

    return fit


@dataclass(frozen=True)
class Produced:
    """Forecasts of one origin and how they were made."""

    origin: date
    raw: pl.DataFrame
    calibrated: pl.DataFrame | None  # None without a calibration state (or when disabled)
    calibration_night: date | None
    source: str  # "artifact" or "fallback"
    message: str
    crossed: Mapping[str, int] = field(default_factory=dict)  # per symbol: rows sorted

    @property
    def crossed_rows(self) -> int:
        """Rows the model emitted with crossed quantiles (sorted before calibration)."""
        return sum(self.crossed.values())

    @property
    def crossed_note(self) -> str | None:
        """What to tell the user about crossed rows; None when there were none."""
        if not self.crossed_rows:
            return None
        return (
            f"{self.crossed_rows} forecast rows had crossed quantiles at {self.origin} "
            "(p05 > p50 or p50 > p95); sorted before calibration"
        )

    @property
    def best(self) -> pl.DataFrame:
        """The calibrated forecasts when there are some, else the raw ones."""
        return self.calibrated if self.calibrated is not None else self.raw


def forecast_with(
    store: Store,
    loaded: Loaded,
    model: str,
    panel: pl.DataFrame,
    *,
    symbols: Sequence[str] | None = None,
    settings: CalibrationSettings,
    data: DataSettings,
    lock: AbstractContextManager | None = None,
) -> Produced:
    """Forecast steps 1-5 from the panel's last session with a loaded model; calibrate.

    ``target_ts`` counts sessions of ``data.calendar``. Writes nothing; the
    service calls this with the model it loaded once, and a ``lock`` held only
    while the model predicts (Lightning models are not safe to call from two
    threads; reading the calibration state is).
    """
    origin = panel["ts"].max()
    with lock or nullcontext():
        predicted = loaded.forecaster.predict(panel, origin, symbols)
    raw = retarget(predicted, get_calendar(data.calendar))
    # the calibrator's bias and scale act on a sorted triple: repair first, and say so
    counts = raw.filter(crossed_rows()).group_by("symbol").len()
    crossed = dict(zip(counts["symbol"].to_list(), counts["len"].to_list(), strict=True))
    if crossed:
        raw, _ = repair_frame(raw)
    calibrated, night = None, None
    if settings.calibration_enabled:
        names = sorted(raw["symbol"].unique().to_list())
        profiles = readers.profiles(store, origin, names, settings=data)
        sectors = dict(zip(profiles["symbol"], profiles["sector"], strict=True))
        calibrator, night = load_calibrator(
            store, model, origin, names, sectors, settings, loaded.directory
        )
        # a promoted model's starting calibration applies before any nightly state exists
        if night is not None or calibrator.start is not None:
            calibrated = calibrator.apply(raw)
    return Produced(origin, raw, calibrated, night, loaded.source, loaded.message, crossed)


def forecast_and_store(
    store: Store,
    model: str,
    panel: pl.DataFrame,
    model_dir: Path,
    *,
    symbols: Sequence[str] | None = None,
    settings: CalibrationSettings,
    data: DataSettings,
    write: bool = True,
) -> Produced:
    """Forecast steps 1-5 from the panel's last session; calibrate; store (idempotent).

    ``model``: a name, import path or entry point; rows and calibration state
    are labelled with the class's ``name``.
    """
    loaded = load_promoted(model_dir, model, fallback(model, panel))
    label = loaded.forecaster.name
    made = forecast_with(store, loaded, label, panel, symbols=symbols, settings=settings, data=data)
    if write:
        store_forecasts(store, label, made)
    return made


def store_forecasts(store: Store, model: str, made: Produced) -> None:
    """Write raw and (when made) calibrated rows to ``forecasts`` (idempotent)."""
    frames = [made.raw.with_columns(calibrated=pl.lit(False))]
    if made.calibrated is not None:
        frames.append(made.calibrated.with_columns(calibrated=pl.lit(True)))
    ingest(store, "forecasts", frames, source=model, origin=f"forecast {model} {made.origin}")


def point_in_time(
    fitted_through: date | None, asof: date, origin: date, *, allow_lookahead: bool
) -> bool:
    """Whether a forecast from ``origin`` uses only what a model fitted through then saw.

    True iff ``fitted_through <= origin`` (the module's rule). Otherwise raise
    :class:`LookAhead` naming both days, unless ``allow_lookahead`` (then False).
    An unknown cutoff (None) is not point in time.
    """
    if fitted_through is not None and fitted_through <= origin:
        return True
    if allow_lookahead:
        return False
    if fitted_through is None:
        raise LookAhead(
            f"the model records no training cutoff (no data_range in its METRICS.json); "
            f"asof {asof} may use the future; pass an artifact trained by then or "
            "--allow-lookahead"
        )
    raise LookAhead(
        f"model fitted through {fitted_through}; asof {asof} would use the future; "
        "pass an artifact trained by then or --allow-lookahead"
    )


class ResultCache:
    """A bounded least-recently-used cache that computes each key once, even when asked at once.

    Concurrent callers of the same missing key wait for the first one's result
    instead of computing it again; a computation that raises is not cached (the
    waiters then compute it themselves). ``maxsize`` 0 caches nothing.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0  # computations
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._pending: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: Hashable) -> object | None:
        """The cached value of ``key`` (counted as a hit), else None; never computes."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]

    def get(self, key: Hashable, compute: Callable[[], object]) -> object:
        """The value of ``key``: cached, awaited from a concurrent computation, or computed."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            waiting = self._pending.get(key)
            if waiting is None and self.maxsize > 0:
                self._pending[key] = threading.Event()
        if waiting is not None:
            waiting.wait()
            found = self.peek(key)
            if found is not None:
                return found
            return self._compute(key, compute, owner=False)  # the first one failed
        return self._compute(key, compute, owner=self.maxsize > 0)

    def _compute(self, key: Hashable, compute: Callable[[], object], owner: bool) -> object:
        try:
            value = compute()
            with self._lock:
                self.misses += 1
                if self.maxsize > 0:
                    self._items[key] = value
                    self._items.move_to_end(key)
                    while len(self._items) > self.maxsize:
                        self._items.popitem(last=False)
            return value
        finally:
            if owner:
                with self._lock:
                    self._pending.pop(key).set()

    def clear(self) -> None:
        """Forget every value (counters stay)."""
        with self._lock:
            self._items.clear()
