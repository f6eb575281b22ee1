"""Online calibrator: nightly EWMA bias and interval scale per symbol (whitepaper 5).

Each night, for every symbol, the step-1 forecast made at the previous session
is compared with the return that was realized:

- **Bias.** ``b <- (1 - lambda) b + lambda r`` with ``r = y - p50`` and
  ``lambda = 0.02`` (about a 35-day half-life), clamped to +/-0.3% in return
  units.
- **Scale.** The interval half-widths are multiplied by ``s``. ``s`` is steered
  toward the target coverage (90%) by the adaptive-conformal update of Gibbs &
  Candes (2021) in log space: ``log s <- log s + gamma (miss - 0.10)``, where
  ``miss`` is 1 when the realized return fell outside the calibrated interval.
  Each miss widens the interval by about ``gamma``, each hit narrows it by a
  tenth of that, so the long-run miss rate settles at 10% whatever the shape of
  the error distribution (a variance-ratio estimate would assume normal tails,
  and daily returns are not normal). ``s`` is clamped to [0.8, 1.8].
- **Guards.** A night is skipped for a symbol when ``|y| > 10%`` or
  ``|y - p50 - b| > 4 sigma``, sigma being the calibrated interval's implied
  standard deviation ``s (p95 - p05) / 3.29``.
- **Backoff.** Sector and global states are updated each night from the mean
  residual and the mean miss of their members. A symbol with fewer than 20
  accepted nights uses its sector's state, or the global one when the sector
  also has fewer than 20 nights.

Application at inference, for every step: ``p50' = p50 + b``;
``p05' = p50' - (p50 - p05) s``; ``p95' = p50' + (p95 - p50) s``.

**Dynamic lambda** (whitepaper 10, off by default): with
``CALIBRATION_DYNAMIC_LAMBDA`` a night's update takes the regime encoder's
``p_turbulent`` of that night (:mod:`kronos.models.regime`) and uses
``lambda_t = lambda + (CALIBRATION_LAMBDA_TURBULENT - lambda) p_turbulent``
(``p`` clipped to [0, 1]; a night without ``p`` uses ``lambda``), and, with
``CALIBRATION_DYNAMIC_GAIN``, the gain ``gamma lambda_t / lambda``: bias and
interval scale adapt faster in turbulent regimes.

**Starting calibration** (:mod:`kronos.models.start_calibration`): a promoted
artifact may carry ``CALIBRATION_START.json``, a bias ``b0`` and scale ``s0``
fitted by split conformal on the gate's validation windows. The calibrator then
starts every state at ``(b0, s0)`` and clamps relative to it: bias within
``b0 +/- 0.3%``, scale within ``[0.8 s0, 1.8 s0]`` (the same clamp numbers).
Without the file (older artifacts, fallback fits) ``b0 = 0`` and ``s0 = 1``:
exactly the behaviour before starting calibrations existed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from kronos.config import CalibrationSettings
from kronos.data.store import Store
from kronos.errors import InputError
from kronos.metrics import sigma_from_band
from kronos.models.evaluation import realized
from kronos.models.start_calibration import StartCalibration, read_start

GLOBAL = "*"


@dataclass(frozen=True)
class NightReport:
    """What one nightly update did."""

    used: int
    skipped_return: int
    skipped_residual: int
    missing: int


class OnlineCalibrator:
    """Per-symbol bias/scale state with sector and global backoff, updated nightly."""

    def __init__(
        self,
        symbols: Sequence[str],
        sectors: Mapping[str, str | None] | None,
        settings: CalibrationSettings,
        start: StartCalibration | None = None,
    ) -> None:
        self.settings = settings
        self.start = start
        # the state starts at, and is clamped relative to, (b0, s0); (0, 1) without a start
        self.bias0 = start.bias if start is not None else 0.0
        self.scale0 = start.scale if start is not None else 1.0
        # step h's band is scaled by the state's scale times factor h (None: the same for all)
        factors = start.step_factors if start is not None else None
        self.step_factors = None if not factors else np.asarray(factors, dtype=np.float64)
        self.symbols = list(symbols)
        sectors = sectors or {}
        self.sector_of = [sectors.get(s) or "Unknown" for s in self.symbols]
        self.sector_names = sorted(set(self.sector_of))
        self._sector_idx = np.array([self.sector_names.index(s) for s in self.sector_of], int)
        n, k = len(self.symbols), len(self.sector_names)
        # rows: symbols, then sectors, then global
        self.bias_ = np.full(n + k + 1, self.bias0)
        self.scale_ = np.full(n + k + 1, self.scale0)
        self.n_ = np.zeros(n + k + 1, dtype=np.int64)
        self.resid_var_ = np.full(n + k + 1, np.nan)

    # ------------------------------------------------------------------ state

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(scope, key) of every state row."""
        return (
            [("symbol", s) for s in self.symbols]
            + [("sector", s) for s in self.sector_names]
            + [("global", GLOBAL)]
        )

    def effective(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-symbol (bias, scale) after shrinkage to sector or global."""
        n, k = len(self.symbols), len(self.sector_names)
        need = self.settings.calibration_min_samples
        row = np.arange(n)
        sector_row = n + self._sector_idx
        use = np.where(
            self.n_[row] >= need, row, np.where(self.n_[sector_row] >= need, sector_row, n + k)
        )
        return self.bias_[use], self.scale_[use]

    def bounds(self) -> tuple[float, float, float, float]:
        """(bias low, bias high, scale low, scale high): the clamp about ``(b0, s0)``."""
        s = self.settings
        clamp = s.calibration_bias_clamp
        return (
            self.bias0 - clamp,
            self.bias0 + clamp,
            self.scale0 * s.calibration_scale_min,
            self.scale0 * s.calibration_scale_max,
        )

    # ------------------------------------------------------------------ update

    def rates(self, p_turbulent: float | None = None) -> tuple[float, float]:
        """(lambda, scale gain) of a night, given its ``p_turbulent`` (dynamic lambda)."""
        s = self.settings
        if not s.calibration_dynamic_lambda or p_turbulent is None or np.isnan(p_turbulent):
            return s.calibration_lambda, s.calibration_scale_gain
        lam = dynamic_lambda(p_turbulent, s)
        gain = s.calibration_scale_gain
        return lam, gain * lam / s.calibration_lambda if s.calibration_dynamic_gain else gain

    def _step(
        self,
        rows: np.ndarray,
        resid: np.ndarray,
        miss: np.ndarray,
        rates: tuple[float, float] | None = None,
        accepted: np.ndarray | None = None,
    ) -> None:
        """Update ``rows``: the scale from every ``miss``, the bias only where ``accepted``."""
        s = self.settings
        lam, gain = rates or (s.calibration_lambda, s.calibration_scale_gain)
        lo_b, hi_b, lo_s, hi_s = self.bounds()
        log_scale = np.log(self.scale_[rows]) + gain * (miss - (1 - s.calibration_target_coverage))
        self.scale_[rows] = np.clip(np.exp(log_scale), lo_s, hi_s)
        if accepted is not None:
            rows, resid = rows[accepted], resid[accepted]
        self.bias_[rows] = np.clip((1 - lam) * self.bias_[rows] + lam * resid, lo_b, hi_b)
        centred = (resid - self.bias_[rows]) ** 2
        prev = self.resid_var_[rows]
        self.resid_var_[rows] = np.where(np.isnan(prev), centred, (1 - lam) * prev + lam * centred)
        self.n_[rows] += 1

    def update(
        self,
        p05: np.ndarray,
        p50: np.ndarray,
        p95: np.ndarray,
        y: np.ndarray,
        p_turbulent: float | None = None,
    ) -> NightReport:
        """One night: step-1 raw quantiles from the previous session vs realized ``y``.

        Arrays are aligned with ``symbols``; NaN marks a symbol without a
        forecast or a return that night. ``p_turbulent``: the regime of the
        night, used with dynamic lambda only. The guards (``|y|`` above
        ``calibration_max_return``, a residual beyond ``calibration_max_resid_sigma``
        sigma) keep a night out of the bias and residual variance; its miss
        still counts for the scale, since leaving out the largest misses would
        steer coverage below the target.
        """
        rates = self.rates(p_turbulent)
        s = self.settings
        bias, scale = self.effective()
        if self.step_factors is not None:  # the nightly update sees step 1's band
            scale = scale * self.step_factors[0]
        resid = y - p50
        lo = p50 + bias - (p50 - p05) * scale
        hi = p50 + bias + (p95 - p50) * scale
        sigma = scale * sigma_from_band(p05, p95)
        present = np.isfinite(resid) & np.isfinite(p05) & np.isfinite(p95)
        big_return = present & (np.abs(y) > s.calibration_max_return)
        big_resid = (
            present & ~big_return & (np.abs(resid - bias) > s.calibration_max_resid_sigma * sigma)
        )
        ok = present & ~big_return & ~big_resid
        miss = ((y < lo) | (y > hi)).astype(float)
        rows = np.flatnonzero(present)
        self._step(rows, resid[rows], miss[rows], rates, ok[rows])
        n = len(self.symbols)
        for j in range(len(self.sector_names)):
            members = rows[self._sector_idx[rows] == j]
            if len(members):
                self._pooled_step(n + j, members, resid, miss, ok, rates)
        if len(rows):
            self._pooled_step(len(self.bias_) - 1, rows, resid, miss, ok, rates)
        return NightReport(
            int(ok.sum()), int(big_return.sum()), int(big_resid.sum()), int((~present).sum())
        )

    def _pooled_step(
        self,
        row: int,
        members: np.ndarray,
        resid: np.ndarray,
        miss: np.ndarray,
        ok: np.ndarray,
        rates: tuple[float, float],
    ) -> None:
        """A sector or the global state learns its members' mean miss and mean accepted residual."""
        accepted = members[ok[members]]
        mean_resid = resid[accepted].mean(keepdims=True) if len(accepted) else np.zeros(1)
        self._step(
            np.array([row]),
            mean_resid,
            miss[members].mean(keepdims=True),
            rates,
            np.array([len(accepted) > 0]),
        )

    # ------------------------------------------------------------------ apply

    def apply_arrays(
        self, p05: np.ndarray, p50: np.ndarray, p95: np.ndarray, step: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrate step-``step`` quantile arrays whose first axis follows ``symbols``."""
        bias, scale = self.effective()
        if self.step_factors is not None:
            scale = scale * self.step_factors[step - 1]
        extra = (slice(None),) + (None,) * (p50.ndim - 1)
        b, s = bias[extra], scale[extra]
        mid = p50 + b
        return mid - (p50 - p05) * s, mid, mid + (p95 - p50) * s

    def apply(self, forecasts: pl.DataFrame) -> pl.DataFrame:
        """Calibrate a forecast frame (symbols without state keep the global values)."""
        bias, scale = self.effective()
        n, k = len(self.symbols), len(self.sector_names)
        lookup = pl.DataFrame({"symbol": self.symbols, "_b": bias, "_s": scale})
        out = forecasts.join(lookup, on="symbol", how="left").with_columns(
            pl.col("_b").fill_null(self.bias_[n + k]), pl.col("_s").fill_null(self.scale_[n + k])
        )
        out = with_step_factors(out, "_s", self.step_factors)
        return _shift_scale(out, "_b", "_s").select(forecasts.columns)

    # ------------------------------------------------------------------ persistence

    def to_frame(self, model: str, asof: date) -> pl.DataFrame:
        """The state as ``calibration_state`` rows."""
        scopes, keys = zip(*self.keys, strict=True)
        return pl.DataFrame(
            {
                "model": model,
                "scope": list(scopes),
                "key": list(keys),
                "asof": asof,
                "bias": self.bias_,
                "scale": self.scale_,
                "n_samples": self.n_.astype(np.int32),
                "resid_var": pl.Series(self.resid_var_).fill_nan(None),
            }
        )

    def load_frame(self, frame: pl.DataFrame) -> None:
        """Restore state rows (unknown keys are ignored, missing ones keep defaults).

        Values are held to the clamp about ``(b0, s0)``: state stored before a
        model with another starting calibration was promoted is moved into it.
        """
        index = {k: i for i, k in enumerate(self.keys)}
        lo_b, hi_b, lo_s, hi_s = self.bounds()
        for r in frame.iter_rows(named=True):
            i = index.get((r["scope"], r["key"]))
            if i is not None:
                self.bias_[i] = min(max(r["bias"], lo_b), hi_b)
                self.scale_[i] = min(max(r["scale"], lo_s), hi_s)
                self.n_[i] = r["n_samples"]
                self.resid_var_[i] = np.nan if r["resid_var"] is None else r["resid_var"]

    def to_json(self, model: str, asof: date) -> dict:
        """A JSON document of the state (``CALIBRATION_FILE``)."""
        rows = self.to_frame(model, asof).with_columns(pl.col("asof").cast(pl.String))
        return {
            "model": model,
            "asof": str(asof),
            "settings": self.settings.model_dump(mode="json"),
            "sectors": dict(zip(self.symbols, self.sector_of, strict=True)),
            "start": None if self.start is None else self.start.as_dict(),
            "states": [
                {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                for r in rows.drop("model", "asof").iter_rows(named=True)
            ],
        }

    @classmethod
    def from_json(
        cls, document: dict, settings: CalibrationSettings
    ) -> tuple[OnlineCalibrator, str, date]:
        """Rebuild a calibrator from :meth:`to_json`; returns (calibrator, model, asof)."""
        for field in ("model", "asof", "sectors", "states"):
            if field not in document:
                raise InputError(f"calibration file lacks '{field}'")
        try:
            day = date.fromisoformat(document["asof"])
        except (TypeError, ValueError):
            asof = document["asof"]
            raise InputError(f"calibration file: asof {asof!r} is not YYYY-MM-DD") from None
        sectors = document["sectors"]
        start = document.get("start")
        if start is not None:
            start = StartCalibration.from_dict(start, "calibration file 'start'")
        calibrator = cls(list(sectors), sectors, settings, start)
        calibrator.load_frame(pl.DataFrame(document["states"], infer_schema_length=None))
        return calibrator, document["model"], day


def dynamic_lambda(p_turbulent: float, settings: CalibrationSettings) -> float:
    """``lambda + (lambda_turbulent - lambda) p``, ``p`` clipped to [0, 1]."""
    p = min(max(float(p_turbulent), 0.0), 1.0)
    lam = settings.calibration_lambda
    return lam + (settings.calibration_lambda_turbulent - lam) * p


def write_json(path: Path, document: dict) -> None:
    """Write a calibration document atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(path)


def read_json(path: Path) -> dict:
    """A calibration document written by :func:`write_json`; InputError naming ``path`` if not."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read a calibration document ({exc})") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: a calibration document is a JSON object")
    return document


def replay(
    forecasts: pl.DataFrame,
    panel: pl.DataFrame,
    calibrator: OnlineCalibrator,
    regime: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The calibration in force at each origin (``asof, symbol, bias, scale``).

    Walks the origins in date order as the nightly job would. At origin ``t``
    the calibrator first learns from the return realized at ``t`` against the
    step-1 forecast made at the previous origin, then calibrates ``t``'s
    forecasts: nothing later than ``t`` is used. ``regime`` (``ts,
    p_turbulent``) gives each night's regime for dynamic lambda; the night of
    origin ``t`` takes the row of ``t``, known at its close.
    """
    origins = sorted(forecasts["asof"].unique().to_list())
    symbols = calibrator.symbols
    grid = pl.DataFrame({"asof": origins}).join(pl.DataFrame({"symbol": symbols}), how="cross")
    step1 = forecasts.filter(pl.col("step") == 1).join(
        realized(panel, 1), on=["symbol", "asof", "step"], how="left"
    )
    step1 = grid.join(step1, on=["asof", "symbol"], how="left").sort("asof", "symbol")
    shape = (len(origins), len(symbols))
    arrays = {
        c: step1[c].fill_null(np.nan).to_numpy().reshape(shape)
        for c in ("p05", "p50", "p95", "y_true")
    }
    turbulence: dict = {}
    if regime is not None:
        turbulence = dict(zip(regime["ts"].to_list(), regime["p_turbulent"].to_list(), strict=True))
    bias = np.empty(shape)
    scale = np.empty(shape)
    for i in range(len(origins)):
        if i:
            calibrator.update(
                arrays["p05"][i - 1],
                arrays["p50"][i - 1],
                arrays["p95"][i - 1],
                arrays["y_true"][i - 1],
                turbulence.get(origins[i]),
            )
        bias[i], scale[i] = calibrator.effective()
    return grid.sort("asof", "symbol").with_columns(
        bias=pl.Series(bias.ravel()), scale=pl.Series(scale.ravel())
    )


def apply_params(
    forecasts: pl.DataFrame, params: pl.DataFrame, step_factors: Sequence[float] | None = None
) -> pl.DataFrame:
    """Apply per-(asof, symbol) ``bias``/``scale``, times step ``h``'s factor, to a frame."""
    joined = forecasts.join(params, on=["asof", "symbol"], how="left").with_columns(
        pl.col("bias").fill_null(0.0), pl.col("scale").fill_null(1.0)
    )
    joined = with_step_factors(joined, "scale", step_factors)
    return _shift_scale(joined, "bias", "scale").select(forecasts.columns)


def with_step_factors(
    frame: pl.DataFrame, scale: str, factors: Sequence[float] | np.ndarray | None
) -> pl.DataFrame:
    """Column ``scale`` times the factor of each row's ``step`` (unchanged without factors)."""
    if factors is None or len(factors) == 0:
        return frame
    table = {h: float(f) for h, f in enumerate(factors, start=1)}
    bad = frame.filter(~pl.col("step").is_in(list(table)))
    if bad.height:
        raise InputError(
            f"starting calibration has factors for steps 1..{len(table)}, "
            f"the forecast has step {bad['step'][0]}"
        )
    return frame.with_columns(
        pl.col(scale) * pl.col("step").replace_strict(table, return_dtype=pl.Float64)
    )


def _shift_scale(frame: pl.DataFrame, bias: str, scale: str) -> pl.DataFrame:
    """The band moved by column ``bias`` and each half widened by column ``scale``."""
    mid = pl.col("p50") + pl.col(bias)
    return frame.with_columns(
        p05=mid - (pl.col("p50") - pl.col("p05")) * pl.col(scale),
        p95=mid + (pl.col("p95") - pl.col("p50")) * pl.col(scale),
        p50=mid,
    )


def load_calibrator(
    store: Store,
    model: str,
    asof: date,
    symbols: list[str],
    sectors: dict[str, str | None],
    settings: CalibrationSettings,
    start: StartCalibration | Path | None = None,
) -> tuple[OnlineCalibrator, date | None]:
    """The calibrator as stored for the newest night at or before ``asof``.

    ``start``: the promoted model's starting calibration, or its artifact
    directory to read it from (``Loaded.directory``); None, or a directory
    without ``CALIBRATION_START.json``, starts at ``b0 = 0, s0 = 1``.
    """
    if start is not None and not isinstance(start, StartCalibration):
        start = read_start(Path(start))
    calibrator = OnlineCalibrator(symbols, sectors, settings, start)
    day = store.con.execute(
        'SELECT max("asof") FROM calibration_state WHERE model = ? AND "asof" <= ?',
        [model, asof],
    ).fetchall()[0][0]
    if day is not None:
        rows = store.con.sql(
            'SELECT * FROM calibration_state WHERE model = ? AND "asof" = ?', params=[model, day]
        ).pl()
        calibrator.load_frame(rows)
    return calibrator, day
