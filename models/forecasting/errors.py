"""Prediction errors: point metrics, combining overlapping horizon forecasts, EWMA smoothing (batch, numpy).

Errors are computed in normalised units (per-series z-units), so one threshold serves all series.
Alignment: ``pred[t, k]`` forecasts ``actual[t+1+k]`` (the convention of every forecaster here).
A time step ``t`` is therefore covered by up to ``horizon`` earlier forecasts ``pred[t-1-k, k]``;
its error is the MEAN of the point errors of the forecasts that cover it (NaN forecasts ignored,
NaN when none covers it, e.g. at the start of a series).
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

METRICS = ("abs", "squared")


def absolute_error(pred: ArrayLike, actual: ArrayLike) -> np.ndarray:
    return np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(actual, dtype=np.float64))


def squared_error(pred: ArrayLike, actual: ArrayLike) -> np.ndarray:
    return np.square(np.asarray(pred, dtype=np.float64) - np.asarray(actual, dtype=np.float64))


def point_error(pred: ArrayLike, actual: ArrayLike, metric: str = "abs") -> np.ndarray:
    if metric == "abs":
        return absolute_error(pred, actual)
    if metric == "squared":
        return squared_error(pred, actual)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN, on purpose
        return np.nanmean(a, axis=axis)


def covering_forecasts(pred: ArrayLike) -> np.ndarray:
    """``pred (time, horizon)`` -> ``M (time, horizon)`` with ``M[t, k] = pred[t-1-k, k]`` (NaN if t-1-k < 0)."""
    pred = np.asarray(pred, dtype=np.float64)
    time, horizon = pred.shape
    rows = np.arange(time)[:, None] - 1 - np.arange(horizon)[None, :]
    return np.where(rows >= 0, pred[np.clip(rows, 0, None), np.arange(horizon)[None, :]], np.nan)


def combine_horizon_errors(pred: ArrayLike, actual: ArrayLike, metric: str = "abs") -> np.ndarray:
    """Error per time step ``(time,)``: mean point error over the forecasts ``pred (time, horizon)`` covering it."""
    actual = np.asarray(actual, dtype=np.float64)
    return _nanmean(point_error(covering_forecasts(pred), actual[:, None], metric), axis=1)


def ewma(errors: ArrayLike, alpha: float) -> np.ndarray:
    """EWMA along the last axis of ``errors (..., time)``: ``s_t = a*e_t + (1-a)*s_{t-1}``, ``s_0 = e_0``.

    NaN errors give NaN and leave the running value unchanged.
    """
    arr = np.asarray(errors, dtype=np.float64)
    out = np.empty_like(arr)
    state = np.full(arr.shape[:-1], np.nan)
    for t in range(arr.shape[-1]):
        e = arr[..., t]
        new = np.where(np.isnan(state), e, alpha * e + (1.0 - alpha) * state)
        state = np.where(np.isnan(e), state, new)
        out[..., t] = np.where(np.isnan(e), np.nan, state)
    return out
