"""The expected band of an event: the range of values the detector considered normal at that moment.

Every scored event gets ``lower`` and ``upper`` in raw units (``models.detection.detector.BatchResult``;
anomaly records carry them beside ``predicted``). They come from the detector's state *before* the
event, so they say what this event was measured against:

* ``threshold_method="likelihood"`` (``models.detection.thresholds.error_likelihood``): the forecast error
  ``|value - predicted|`` at which the likelihood score would reach the threshold, from the
  series' error averages and long-run statistics. The score is ``max(short_weight *
  tail(z_short), tail(z_slow))`` with ``z = (ewma_after_this_error - mu) / std``; solving each
  channel for the error gives ``e = prev + (mu + z_t * std - prev) / alpha`` where ``z_t`` is the
  z-score at which the channel's tail score reaches its target (:func:`tail_inverse`); the limit is
  the smaller of the two. The spatial check narrows the band to the range of values seen so far
  widened by ``spatial_tolerance`` (a value beyond it scores 1), unless that would leave it empty.
  Not in the band: the time-of-day context (a value inside the band can still be flagged because
  its hour usually looks different) and the daily-repeat suppression (a value outside it can score
  0 because an alarm fired in the same hour the day before); the refractory period after a flag
  does not change it either.
* ``"zscore"``: ``predicted +- (err_mean + threshold * err_std) * std`` (the error at the threshold).
* ``"static"``: ``predicted +- threshold * std``.

Before the likelihood has seen one error of a series the band is NaN (``null`` in JSON).
"""

from __future__ import annotations

import math

import numpy as np

from models.detection.thresholds.error_likelihood import ErrorLikelihood, tail_inverse


def likelihood_error_limit(likelihood: ErrorLikelihood, slots: np.ndarray) -> np.ndarray:
    """Raw error at which ``likelihood`` (an ``ErrorLikelihood``, state before the event) would flag
    the next event of each slot ``(m,)``; NaN for a series without an error yet."""
    cfg = likelihood.config
    thr = float(cfg.threshold)
    mu = likelihood.mu[slots].astype(np.float64)
    floor = np.maximum(cfg.min_std_frac * np.abs(mu), cfg.min_std)
    prev = likelihood.short[slots].astype(np.float64)
    slow_on = cfg.slow_alpha is not None
    z_short = tail_inverse(
        thr / cfg.short_weight if slow_on and cfg.short_weight > 0 else (math.inf if slow_on else thr)
    )
    with np.errstate(invalid="ignore", over="ignore"):
        if math.isinf(z_short) and z_short > 0:
            limit = np.full(len(slots), np.inf)
        else:
            std = np.maximum(np.sqrt(likelihood.var[slots].astype(np.float64)), floor)
            limit = prev + (mu + z_short * std - prev) / cfg.short_alpha
        if slow_on:
            sprev = likelihood.slow[slots].astype(np.float64)
            sstd = np.maximum(np.sqrt(likelihood.svar[slots].astype(np.float64)), floor)
            limit = np.minimum(limit, sprev + (mu + tail_inverse(thr) * sstd - sprev) / cfg.slow_alpha)
    limit = np.maximum(limit, 0.0)
    return np.where(likelihood.count[slots] > 0, limit, np.nan)


def likelihood_band(
    likelihood: ErrorLikelihood, slots: np.ndarray, predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` raw units for the next event of each slot: ``predicted +- error limit``,
    narrowed by the spatial range check when it applies (see the module docstring)."""
    limit = likelihood_error_limit(likelihood, slots)
    lower, upper = predicted - limit, predicted + limit
    tol = likelihood.config.spatial_tolerance
    if tol is not None:
        lo, hi = likelihood.lo[slots], likelihood.hi[slots]
        known = hi > lo
        if np.count_nonzero(known):
            reach = tol * (hi - lo)
            s_lo = np.maximum(lower, lo - reach)
            s_hi = np.minimum(upper, hi + reach)
            narrow = known & (s_lo <= s_hi)
            lower = np.where(narrow, s_lo, lower)
            upper = np.where(narrow, s_hi, upper)
    return lower, upper
