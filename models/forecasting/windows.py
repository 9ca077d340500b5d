"""Sliding windows, per-series normalisation and gap handling (pure numpy).

Shapes are written ``(batch, window, features)``. Feature 0 is always the forecast target.

Gaps and NaNs (explicit policy):

* ``regularize`` puts a series on a regular time grid; a missing timestamp becomes a NaN row.
* ``sliding_windows`` DROPS every window whose inputs or targets contain a NaN (training never
  sees an imputed value); ``sequence_targets`` marks NaN targets so the many-to-many loss can mask
  them. Nothing is interpolated silently.
* Normalisers ignore NaNs when fitting; ``transform`` leaves NaNs as NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

MIN_STD = 1e-6  # floor for a constant series, so transform never divides by zero


def as_2d(values: ArrayLike) -> np.ndarray:
    """``(time,)`` or ``(time, features)`` -> float array ``(time, features)``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"expected (time,) or (time, features), got shape {arr.shape}")
    return arr


def sliding_windows(
    values: ArrayLike, window: int, horizon: int = 1, *, drop_nan: bool = True, return_index: bool = False
) -> tuple[np.ndarray, ...]:
    """Many-to-one / many-to-many training pairs from one series.

    ``values`` ``(time,)`` or ``(time, features)``. Returns ``X (n, window, features)`` and
    ``y (n, horizon)`` with ``X[i] = values[s:s+window]`` and ``y[i] = values[s+window:s+window+horizon, 0]``
    for start ``s``: every input precedes every target. Windows with a NaN in ``X`` or ``y`` are
    dropped when ``drop_nan``. With ``return_index`` also returns the start indices ``(n,)``.
    """
    if window < 1 or horizon < 1:
        raise ValueError("window and horizon must be >= 1")
    arr = as_2d(values)
    time, features = arr.shape
    n = max(time - window - horizon + 1, 0)
    starts = np.arange(n)
    if n == 0:
        X = np.empty((0, window, features))
        y = np.empty((0, horizon))
    else:
        view = np.lib.stride_tricks.sliding_window_view(arr, window + horizon, axis=0)[:n]  # (n, features, w+h)
        X = np.ascontiguousarray(view[:, :, :window].transpose(0, 2, 1))
        y = np.ascontiguousarray(view[:, 0, window:])
        if drop_nan:
            keep = ~(np.isnan(X).any(axis=(1, 2)) | np.isnan(y).any(axis=1))
            X, y, starts = X[keep], y[keep], starts[keep]
    return (X, y, starts) if return_index else (X, y)


def sequence_targets(values: ArrayLike, horizon: int) -> np.ndarray:
    """Many-to-many targets ``(time, horizon)``: ``Y[t, k] = values[t+1+k, 0]``; NaN past the end."""
    arr = as_2d(values)[:, 0]
    time = len(arr)
    padded = np.concatenate([arr, np.full(horizon, np.nan)])
    idx = np.arange(time)[:, None] + 1 + np.arange(horizon)[None, :]
    return padded[idx]


def regularize(timestamps: ArrayLike, values: ArrayLike, interval: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Put a series on a regular grid; missing steps become NaN, duplicate timestamps keep the last.

    ``timestamps`` int64 (e.g. ns since epoch), ``values`` ``(time,)``. ``interval`` defaults to the
    median positive spacing. Off-grid timestamps snap to the nearest grid step.
    Returns ``(grid_timestamps (T,), values (T,))``.
    """
    ts = np.asarray(timestamps, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float64)
    if len(ts) == 0:
        return ts, vals
    order = np.argsort(ts, kind="stable")
    ts, vals = ts[order], vals[order]
    if interval is None:
        diffs = np.diff(ts)
        diffs = diffs[diffs > 0]
        interval = int(np.median(diffs)) if len(diffs) else 1
    slot = np.rint((ts - ts[0]) / interval).astype(np.int64)
    out = np.full(slot[-1] + 1, np.nan)
    out[slot] = vals  # later duplicates overwrite earlier ones
    return ts[0] + np.arange(len(out), dtype=np.int64) * interval, out


class SeriesNormalizer(NamedTuple):
    """Per-series ``(mean, std)`` fitted on training data and saved with the model.

    A NamedTuple, so ``mean, std = bundle.normalizers[series]`` works.
    """

    mean: float
    std: float

    @classmethod
    def fit(cls, values: ArrayLike) -> SeriesNormalizer:
        """Fit on target column (feature 0) ignoring NaNs; an empty/all-NaN series gives (0, 1)."""
        col = as_2d(values)[:, 0]
        col = col[~np.isnan(col)]
        if len(col) == 0:
            return cls(0.0, 1.0)
        return cls(float(col.mean()), float(max(col.std(), MIN_STD)))

    def transform(self, values: ArrayLike) -> np.ndarray:
        """Normalised ``(values - mean) / std``; NaN stays NaN."""
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std

    def inverse(self, values: ArrayLike) -> np.ndarray:
        """Back to raw units: ``values * std + mean``."""
        return np.asarray(values, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | Sequence[Any]) -> SeriesNormalizer:
        """From ``{"mean": m, "std": s}`` (meta.json) or a ``(mean, std)`` pair."""
        if isinstance(d, dict):
            return cls(float(d["mean"]), float(d["std"]))
        mean, std = d
        return cls(float(mean), float(std))
