"""Prediction errors: point metrics, combining overlapping horizon forecasts, EWMA smoothing.

Errors are computed in normalised units (per-series z-units), so one threshold serves all series.
Alignment: ``pred[t, k]`` forecasts ``actual[t+1+k]`` (the convention of every forecaster here).
A time step ``t`` is therefore covered by up to ``horizon`` earlier forecasts ``pred[t-1-k, k]``;
its error is the MEAN of the point errors of the forecasts that cover it (NaN forecasts ignored,
NaN when none covers it, e.g. at the start of a series).

Each stateful class works on many series at once: ``update(series_idx (n,), ...) -> (n,)``; the
batch functions give the same numbers (tested).
"""

from __future__ import annotations

import warnings

import numpy as np

from models.core.streaming import StreamingState, grow, rounds

METRICS = ("abs", "squared")


def absolute_error(pred, actual) -> np.ndarray:
    return np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(actual, dtype=np.float64))


def squared_error(pred, actual) -> np.ndarray:
    return np.square(np.asarray(pred, dtype=np.float64) - np.asarray(actual, dtype=np.float64))


def point_error(pred, actual, metric: str = "abs") -> np.ndarray:
    if metric == "abs":
        return absolute_error(pred, actual)
    if metric == "squared":
        return squared_error(pred, actual)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN, on purpose
        return np.nanmean(a, axis=axis)


def covering_forecasts(pred: np.ndarray) -> np.ndarray:
    """``pred (time, horizon)`` -> ``M (time, horizon)`` with ``M[t, k] = pred[t-1-k, k]`` (NaN if t-1-k < 0)."""
    pred = np.asarray(pred, dtype=np.float64)
    time, horizon = pred.shape
    rows = np.arange(time)[:, None] - 1 - np.arange(horizon)[None, :]
    return np.where(rows >= 0, pred[np.clip(rows, 0, None), np.arange(horizon)[None, :]], np.nan)


def combine_horizon_errors(pred: np.ndarray, actual: np.ndarray, metric: str = "abs") -> np.ndarray:
    """Error per time step ``(time,)``: mean point error over the forecasts ``pred (time, horizon)`` covering it."""
    actual = np.asarray(actual, dtype=np.float64)
    return _nanmean(point_error(covering_forecasts(pred), actual[:, None], metric), axis=1)


class HorizonErrors:
    """Streaming ``combine_horizon_errors`` for many series.

    Per series it keeps the last ``horizon`` forecast vectors. At each event call
    ``update(series_idx, actual, pred)``: ``actual (n,)`` is the value just observed, scored against
    the stored forecasts, then ``pred (n, horizon)`` (the forecast made after seeing it) is stored.
    """

    def __init__(self, horizon: int, metric: str = "abs"):
        point_error(0.0, 0.0, metric)  # validate
        self.horizon, self.metric = horizon, metric
        self.history = np.full((0, horizon, horizon), np.nan)  # (series, age, horizon)

    def update(self, series_idx, actual, pred) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(series_idx, dtype=np.int64))
        actual = np.atleast_1d(np.asarray(actual, dtype=np.float64))
        pred = np.asarray(pred, dtype=np.float64).reshape(len(idx), self.horizon)
        out = np.empty(len(idx))
        if len(idx):
            self.history = grow(self.history, int(idx.max()) + 1, np.nan)
        diag = np.arange(self.horizon)
        for sel in rounds(idx):
            i = idx[sel]
            covering = self.history[i][:, diag, diag]  # (n, horizon): forecast made k+1 events ago, step k
            out[sel] = _nanmean(point_error(covering, actual[sel, None], self.metric), axis=1)
            self.history[i, 1:] = self.history[i, :-1]
            self.history[i, 0] = pred[sel]
        return out

    def score_one(self, series_idx: int, actual: float, pred) -> float:
        return float(self.update([series_idx], [actual], np.asarray(pred, dtype=np.float64)[None])[0])


def ewma(errors: np.ndarray, alpha: float) -> np.ndarray:
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


class EWMA(StreamingState):
    """Streaming ``ewma`` for many series: ``update(series_idx, errors) -> smoothed``."""

    def __init__(self, alpha: float = 0.1):
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.state = np.empty(0)

    def _resize(self, n: int) -> None:
        self.state = grow(self.state, n, np.nan)

    def _update_unique(self, idx, e):
        s = self.state[idx]
        new = np.where(np.isnan(s), e, self.alpha * e + (1.0 - self.alpha) * s)
        self.state[idx] = np.where(np.isnan(e), s, new)
        return np.where(np.isnan(e), np.nan, self.state[idx])
