"""Helpers shared by the vectorised streaming state classes (many series, one array slot each)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

# The ufunc behind np.clip, called directly: it skips np.clip's Python-level overhead (argument
# dispatch) on the detector's per-round hot path, with the same results.
clip: Any = (np._core if hasattr(np, "_core") else np.core).umath.clip


def rounds(series_idx: np.ndarray) -> list[np.ndarray]:
    """Split positions of ``series_idx (n,)`` into rounds in which each series occurs at most once.

    Round ``r`` holds the ``r``-th occurrence of every series (positions ascending), so applying
    the rounds in order processes repeated events of one series in arrival order. O(n log n) in
    all: one stable argsort for the occurrence numbers, one to group positions by round. The common
    case (all distinct) is one round.
    """
    idx = np.asarray(series_idx)
    n = len(idx)
    if n == 0:
        return []
    if n == 1:
        return [np.zeros(1, dtype=np.int64)]
    order = np.argsort(idx, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(idx[order])) + 1]
    if len(starts) == n:
        return [np.arange(n)]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = np.arange(n) - group_start
    by_round = np.argsort(occurrence, kind="stable")
    bounds = np.searchsorted(occurrence[by_round], np.arange(int(occurrence.max()) + 2))
    return [by_round[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]


def grow(arr: np.ndarray, n: int, fill: float) -> np.ndarray:
    """Return ``arr`` extended along axis 0 to length ``n`` with ``fill`` (no copy when big enough)."""
    if n <= len(arr):
        return arr
    extra = np.full((n - len(arr), *arr.shape[1:]), fill, dtype=arr.dtype)
    return np.concatenate([arr, extra])


class StreamingState:
    """Base for per-series streaming state: ``update(series_idx (n,), x (n,)) -> scores (n,)``.

    Subclasses implement ``_resize(n)`` (grow state arrays to ``n`` series) and
    ``_update_unique(idx, x)`` (one event for each of some distinct series). This base adds repeated
    indices (applied in arrival order), ``score_one`` and the batch path ``score_batch`` over
    ``(series, time)`` arrays, which replays time steps through the same arithmetic, so streaming
    and batch give identical numbers.
    """

    n_series = 0

    def _resize(self, n: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_unique(self, idx: np.ndarray, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def ensure(self, n: int) -> None:
        """Make room for series ``0..n-1`` (new series start from a fresh state)."""
        if n > self.n_series:
            self._resize(n)
            self.n_series = n

    def update(self, series_idx: npt.ArrayLike, x: npt.ArrayLike) -> np.ndarray:
        """Fold one event per entry into the state and return its score; shapes ``(n,)``."""
        idx = np.atleast_1d(np.asarray(series_idx, dtype=np.int64))
        vals = np.asarray(x, dtype=np.float64)
        vals = np.broadcast_to(vals, idx.shape + vals.shape[1:]) if vals.ndim <= 1 else vals
        out = np.empty(len(idx))
        if len(idx) == 0:
            return out
        self.ensure(int(idx.max()) + 1)
        for sel in rounds(idx):
            out[sel] = self._update_unique(idx[sel], vals[sel])
        return out

    def score_one(self, series_idx: int, x: float) -> float:
        """Single event for one series."""
        return float(self.update(np.array([series_idx]), np.asarray(x, dtype=np.float64)[None])[0])

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        """Batch path: ``x (time,)`` for series 0 or ``(series, time)`` for series ``0..S-1``; same shape out."""
        arr = np.asarray(x, dtype=np.float64)
        one = arr.ndim == 1
        arr = arr[None] if one else arr
        idx = np.arange(arr.shape[0])
        out = np.empty(arr.shape[:2])
        for t in range(arr.shape[1]):
            out[:, t] = self.update(idx, arr[:, t])
        return out[0] if one else out
