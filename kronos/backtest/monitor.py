"""The risk layer over a backtest: the online calibrator and the fail-safe, in date order.

Both depend only on forecasts and realized returns, never on the book, so they
run over the whole test window before the trading loop. At session ``t`` the
calibrator first learns from the return realized at ``t`` against the step-1
forecast of the previous session, then calibrates ``t``'s forecast (as
:func:`kronos.calibration.replay` and the nightly job do). The fail-safe
judges session ``t`` with the same :class:`~kronos.risk.FailSafeController`
the live loop uses; a numpy screen skips the sessions on which no rule can
fire (no residual beyond the threshold, no coverage window below its floor,
no symbol with enough headlines), so the controller runs only where it matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl

from kronos.calibration import OnlineCalibrator
from kronos.config import CalibrationSettings, DataSettings, RiskSettings
from kronos.data import readers
from kronos.data.store import Store
from kronos.metrics import sigma_from_band
from kronos.risk import Breaker, FailSafeController


@dataclass(frozen=True)
class Quantiles:
    """Step-1 quantiles ``[session, symbol]`` from each session (NaN: no forecast)."""

    p05: np.ndarray
    p50: np.ndarray
    p95: np.ndarray


def calibrate(
    raw: Quantiles,
    y: np.ndarray,
    symbols: list[str],
    sectors: dict[str, str | None],
    settings: CalibrationSettings,
) -> tuple[Quantiles, np.ndarray, np.ndarray]:
    """Calibrated quantiles and the (bias, scale) in force at each session."""
    cal = OnlineCalibrator(symbols, sectors, settings)
    shape = raw.p50.shape
    out = [np.full(shape, np.nan) for _ in range(3)]
    bias, scale = np.empty(shape), np.empty(shape)
    for i in range(shape[0]):
        if i:
            cal.update(raw.p05[i - 1], raw.p50[i - 1], raw.p95[i - 1], y[i])
        bias[i], scale[i] = cal.effective()
        out[0][i], out[1][i], out[2][i] = cal.apply_arrays(raw.p05[i], raw.p50[i], raw.p95[i])
    return Quantiles(*out), bias, scale


def inside(q: Quantiles, y: np.ndarray) -> np.ndarray:
    """1.0 where session ``t``'s return fell in the previous session's p05..p95, else 0.0.

    NaN where unscored (no forecast or no return).
    """
    out = np.full(y.shape, np.nan)
    lo, hi = q.p05[:-1], q.p95[:-1]
    scored = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(y[1:]) & (hi > lo)
    out[1:] = np.where(scored, ((y[1:] >= lo) & (y[1:] <= hi)).astype(float), np.nan)
    return out


def _coverage_alarm(hit: np.ndarray, window: int, floor: float) -> np.ndarray:
    """``[session, symbol]``: is the last ``window`` scored sessions' coverage below ``floor``."""
    alarm = np.zeros(hit.shape, dtype=bool)
    for j in range(hit.shape[1]):
        rows = np.flatnonzero(np.isfinite(hit[:, j]))
        if len(rows) < window:
            continue
        misses = np.concatenate([[0.0], np.cumsum(1.0 - hit[rows, j])])
        last = misses[window:] - misses[:-window]  # misses in the window ending at rows[k]
        low = (window - last) / window < floor
        alarm[rows[window - 1 :][low], j] = True
    return alarm


def _known_counts(
    headlines: pl.DataFrame, day: date, baseline_days: int, data_settings: DataSettings
) -> pl.DataFrame:
    """``symbol, day, n_news`` as :func:`kronos.data.readers.news_counts` gives them at ``day``."""
    cutoff = readers.PointInTime.at(day, data_settings).cutoff
    return (
        headlines.filter(
            (pl.col("available_at") <= cutoff)
            & (pl.col("day") >= day - timedelta(days=baseline_days))
        )
        .group_by("symbol", "day")
        .agg(n_news=pl.len())
    )


def failsafe(
    store: Store,
    sessions: list[date],
    symbols: list[str],
    sectors: dict[str, str | None],
    calibrated: Quantiles,
    y: np.ndarray,
    first: int,
    settings: RiskSettings,
    data_settings: DataSettings,
    with_news: bool,
) -> list[Breaker]:
    """Every breaker the controller trips on sessions ``first`` onwards, in order.

    The controller sees, per judged session, every symbol's return of the
    session against its forecast from the previous session (the residual and
    many-at-once rules), the coverage window only of symbols whose window the
    screen found below the floor (the only ones the coverage rule can trip),
    and the headline counts known at that session's close.
    """
    ctl = FailSafeController(settings, data_settings)
    sigma = sigma_from_band(calibrated.p05, calibrated.p95)
    z = np.full(y.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        z[1:] = np.where(sigma[:-1] > 0, (y[1:] - calibrated.p50[:-1]) / sigma[:-1], np.nan)
    # a hair below the threshold, so float rounding never hides a breach from the screen
    flagged = np.nan_to_num(np.abs(z), nan=0.0).max(axis=1) > settings.failsafe_resid_z * (1 - 1e-9)
    window = settings.failsafe_coverage_window
    alarm = _coverage_alarm(inside(calibrated, y), window, settings.failsafe_coverage_min)
    flagged |= alarm.any(axis=1)
    headlines = None
    if with_news:
        # read once; each judged session counts what was known at its close
        headlines = readers.headline_days(
            store,
            sessions[-1],
            symbols,
            start=sessions[first] - timedelta(days=settings.headline_baseline_days),
            settings=data_settings,
        )
        busy = (
            headlines.group_by("symbol", "day")
            .agg(n=pl.len())
            .filter(pl.col("n") >= settings.headline_min_count)["day"]
            .unique()
            .to_list()
        )
        busy_days = set(busy)
        flagged |= np.array([d in busy_days for d in sessions])
    sector_frame = pl.DataFrame(
        {"symbol": symbols, "sector": [sectors.get(s) for s in symbols]},
        schema={"symbol": pl.String, "sector": pl.String},
    )
    out: list[Breaker] = []
    span = 2 * window + 2
    for i in np.flatnonzero(flagged[first:]) + first:
        lo = max(0, i - span)
        deep = np.flatnonzero(alarm[i])
        # everyone's last step; the whole window for symbols in a coverage alarm
        fc = _forecasts(sessions[i - 1 : i], symbols, calibrated, i - 1, i, None)
        real = _realized(sessions[i - 1 : i + 1], symbols, y[i - 1 : i + 1], None)
        if deep.size:
            window_fc = _forecasts(sessions[lo : i - 1], symbols, calibrated, lo, i - 1, deep)
            window_real = _realized(sessions[lo : i - 1], symbols, y[lo : i - 1], deep)
            fc, real = pl.concat([fc, window_fc]), pl.concat([real, window_real])
        counts = None
        if headlines is not None:
            counts = _known_counts(
                headlines, sessions[i], settings.headline_baseline_days, data_settings
            )
        out += ctl.evaluate(sessions[i], fc, real, sector_frame, counts)
    return out


def _long(
    days: list[date],
    symbols: list[str],
    columns: np.ndarray | None,
    date_name: str,
    values: dict[str, np.ndarray],
    present: str,
) -> pl.DataFrame:
    """``[day, symbol]`` arrays (of ``columns``, default all) as a long frame.

    Rows where ``values[present]`` is NaN are left out.
    """
    cols = np.arange(len(symbols)) if columns is None else columns
    names = np.array(symbols, dtype=object)[cols]
    flat = {k: v[:, cols].ravel() for k, v in values.items()}
    keep = ~np.isnan(flat[present])
    return pl.DataFrame(
        {
            "symbol": np.tile(names, len(days))[keep],
            date_name: np.repeat(np.array(days, dtype="datetime64[D]"), len(cols))[keep],
            **{k: v[keep] for k, v in flat.items()},
        },
        schema={"symbol": pl.String, date_name: pl.Date, **dict.fromkeys(values, pl.Float64)},
    )


def _forecasts(
    days: list[date], symbols: list[str], q: Quantiles, lo: int, hi: int, columns: np.ndarray | None
) -> pl.DataFrame:
    """Step-1 quantiles from sessions ``lo..hi-1`` (``asof`` = origin)."""
    values = {"p05": q.p05[lo:hi], "p50": q.p50[lo:hi], "p95": q.p95[lo:hi]}
    return _long(days, symbols, columns, "asof", values, present="p50")


def _realized(
    days: list[date], symbols: list[str], y: np.ndarray, columns: np.ndarray | None
) -> pl.DataFrame:
    """Realized returns ``symbol, ts, y``."""
    return _long(days, symbols, columns, "ts", {"y": y}, present="y")
