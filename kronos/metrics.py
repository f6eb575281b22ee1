"""Forecast scores as pure functions of arrays (no I/O, no frames).

Quantile scores (pinball, coverage, quantile CRPS) take the forecast quantiles;
the exact CRPS functions take the parameters of a full predictive distribution.
Every ``*_each`` function returns one value per observation; its namesake
without the suffix returns their mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

BAND_SIGMAS = 3.29
"""Standard deviations a p05..p95 band spans under normality (2 x 1.645)."""


def sigma_from_band(p05: Any, p95: Any) -> Any:
    """The standard deviation a p05..p95 band implies: ``(p95 - p05) / 3.29``.

    Works on floats, numpy arrays and polars expressions alike; a band of
    zero or negative width gives a sigma <= 0, which callers must refuse.
    """
    return (p95 - p05) / BAND_SIGMAS


__all__ = [
    "coverage",
    "crps_from_quantile_function",
    "crps_from_quantile_function_each",
    "crps_normal",
    "crps_normal_each",
    "crps_quantiles",
    "crps_student_t",
    "crps_student_t_each",
    "mae",
    "pinball_loss",
    "pinball_losses",
    "sigma_from_band",
]


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def _quantile_matrix(
    y: ArrayLike, q_preds: ArrayLike, taus: Sequence[float] | ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yv = _vector(y, "y")
    q = np.asarray(q_preds, dtype=np.float64)
    t = _vector(taus, "taus")
    if q.ndim != 2 or q.shape != (len(yv), len(t)):
        raise ValueError(f"q_preds must have shape (n, k) = {(len(yv), len(t))}, got {q.shape}")
    if np.any((t <= 0) | (t >= 1)):
        raise ValueError(f"quantile levels must lie in (0, 1), got {t}")
    return yv, q, t


def _pinball(u: np.ndarray, tau: np.ndarray | float) -> np.ndarray:
    """Pinball loss of the error ``u = y - q`` at level ``tau`` (elementwise)."""
    return np.maximum(tau * u, (tau - 1.0) * u)


def pinball_loss(y: ArrayLike, q_pred: ArrayLike, tau: float) -> float:
    """Mean pinball loss ``max(tau (y - q), (tau - 1)(y - q))`` of one quantile level."""
    yv, qv = _vector(y, "y"), _vector(q_pred, "q_pred")
    if yv.shape != qv.shape:
        raise ValueError(f"y and q_pred differ in shape: {yv.shape} vs {qv.shape}")
    if not 0 < tau < 1:
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    return float(np.mean(_pinball(yv - qv, tau)))


def pinball_losses(
    y: ArrayLike, q_preds: ArrayLike, taus: Sequence[float] | ArrayLike
) -> np.ndarray:
    """Mean pinball loss per level: ``q_preds`` is ``(n, k)``, the result ``(k,)``."""
    yv, q, t = _quantile_matrix(y, q_preds, taus)
    return np.mean(_pinball(yv[:, None] - q, t[None, :]), axis=0)


def mae(y: ArrayLike, p50: ArrayLike) -> float:
    """Mean absolute error of the median forecast."""
    yv, pv = _vector(y, "y"), _vector(p50, "p50")
    if yv.shape != pv.shape:
        raise ValueError(f"y and p50 differ in shape: {yv.shape} vs {pv.shape}")
    return float(np.mean(np.abs(yv - pv)))


def coverage(y: ArrayLike, lo: ArrayLike, hi: ArrayLike) -> float:
    """Share of observations with ``lo <= y <= hi``."""
    yv, lv, hv = _vector(y, "y"), _vector(lo, "lo"), _vector(hi, "hi")
    if not yv.shape == lv.shape == hv.shape:
        raise ValueError(f"shapes differ: y {yv.shape}, lo {lv.shape}, hi {hv.shape}")
    return float(np.mean((lv <= yv) & (yv <= hv)))


def crps_quantiles(y: ArrayLike, q_preds: ArrayLike, taus: Sequence[float] | ArrayLike) -> float:
    """Quantile-based CRPS approximation: mean over the levels of twice the pinball loss.

    The CRPS equals ``2 * integral_0^1 pinball_tau(y, q(tau)) dtau``; averaging
    over a few levels replaces that integral by a coarse sum. With three levels
    it is a coarse approximation of the CRPS, comparable only between models
    scored on the same levels.
    """
    return float(2.0 * np.mean(pinball_losses(y, q_preds, taus)))


def crps_normal_each(y: ArrayLike, mu: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """Exact CRPS of ``N(mu, sigma^2)`` at each ``y`` (arguments broadcast).

    Closed form of Gneiting & Raftery (2007, eq. 21):
    ``sigma * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))`` with ``z = (y - mu) / sigma``.
    """
    from scipy import stats  # scipy on first use: the CLI and the chain need only the rest

    yv, m, s = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (y, mu, sigma)))
    if np.any(s <= 0):
        raise ValueError("sigma must be positive")
    z = (yv - m) / s
    return s * (
        z * (2.0 * stats.norm.cdf(z) - 1.0) + 2.0 * stats.norm.pdf(z) - 1.0 / np.sqrt(np.pi)
    )


def crps_normal(y: ArrayLike, mu: ArrayLike, sigma: ArrayLike) -> float:
    """Mean exact CRPS of normal forecasts (see :func:`crps_normal_each`)."""
    return float(np.mean(crps_normal_each(y, mu, sigma)))


def crps_student_t_each(y: ArrayLike, mu: ArrayLike, scale: ArrayLike, nu: ArrayLike) -> np.ndarray:
    """Exact CRPS of the location-scale Student-t ``mu + scale * T_nu`` (``nu > 1``).

    Closed form from Jordan, Krüger & Lerch (2019), "Evaluating probabilistic
    forecasts with scoringRules", J. Stat. Softw. 90(12) (``crps_t``):
    ``scale * (z (2 F(z) - 1) + 2 f(z) (nu + z^2) / (nu - 1)
    - 2 sqrt(nu) B(1/2, nu - 1/2) / ((nu - 1) B(1/2, nu/2)^2))``
    with ``z = (y - mu) / scale`` and ``F``, ``f`` the standard t cdf and pdf.
    ``scale`` is not the standard deviation: that is ``scale * sqrt(nu / (nu - 2))``.
    """
    from scipy import special, stats  # scipy on first use: the CLI and the chain need only the rest

    arrays = (np.asarray(a, dtype=np.float64) for a in (y, mu, scale, nu))
    yv, m, s, n = np.broadcast_arrays(*arrays)
    if np.any(s <= 0):
        raise ValueError("scale must be positive")
    if np.any(n <= 1):
        raise ValueError("the CRPS of a Student-t needs nu > 1 (finite mean)")
    z = (yv - m) / s
    beta_ratio = np.exp(special.betaln(0.5, n - 0.5) - 2.0 * special.betaln(0.5, n / 2.0))
    return s * (
        z * (2.0 * stats.t.cdf(z, n) - 1.0)
        + 2.0 * stats.t.pdf(z, n) * (n + z**2) / (n - 1.0)
        - 2.0 * np.sqrt(n) * beta_ratio / (n - 1.0)
    )


def crps_student_t(y: ArrayLike, mu: ArrayLike, scale: ArrayLike, nu: ArrayLike) -> float:
    """Mean exact CRPS of Student-t forecasts (see :func:`crps_student_t_each`)."""
    return float(np.mean(crps_student_t_each(y, mu, scale, nu)))


def crps_from_quantile_function_each(
    y: ArrayLike, qf: Callable[[np.ndarray], ArrayLike], n: int = 100_000
) -> np.ndarray:
    """CRPS at each ``y`` as ``2 * integral_0^1 pinball_tau(y, qf(tau)) dtau``.

    The integral is a midpoint sum over ``n`` levels ``(i + 1/2) / n``. ``qf`` is
    called with a column of levels, shape ``(m, 1)``, and must return values
    that broadcast against ``y`` to ``(m, len(y))`` (e.g. ``mu + sigma *
    norm.ppf(tau)`` with ``mu``, ``sigma`` of length ``len(y)``). Meant for
    cross-checking closed forms, not for speed.
    """
    yv = _vector(y, "y")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    total = np.zeros_like(yv)
    chunk = max(1, 2_000_000 // max(1, len(yv)))  # bounds memory at ~16 MB a chunk
    for start in range(0, n, chunk):
        tau = ((np.arange(start, min(n, start + chunk)) + 0.5) / n)[:, None]
        q = np.broadcast_to(np.asarray(qf(tau), dtype=np.float64), (len(tau), len(yv)))
        total += _pinball(yv[None, :] - q, tau).sum(axis=0)
    return 2.0 * total / n


def crps_from_quantile_function(
    y: ArrayLike, qf: Callable[[np.ndarray], ArrayLike], n: int = 100_000
) -> float:
    """Mean numerical CRPS (see :func:`crps_from_quantile_function_each`)."""
    return float(np.mean(crps_from_quantile_function_each(y, qf, n)))
