"""Time-of-day profile of each series' values: its usual level at this hour of the (UTC) day.

The context half of :class:`models.detection.thresholds.error_likelihood.ErrorLikelihood`: a forecaster that
sees a window of the last few dozen values cannot know that a daily peak is missing or lower than
usual (the window is flat and the forecast fits it). The profile remembers, per series and per
time-of-day bin (``bins`` per day; 24: hours), an exponentially weighted level of the values seen
in that bin; ``residual = |value - level of its bin|`` is then scored like a forecast error.

State per series: ``level (n_series, bins)`` uint16, 2 bytes a bin, quantised in the series' value
range ``[lo, hi]`` (which the likelihood tracks anyway for its spatial check):
``level = lo + q / 65534 * (hi - lo)`` (``q = 65535``: bin not seen yet). The range never shrinks;
when it grows, :meth:`requantise` re-encodes the row (values keep their raw meaning). Resolution:
1.5e-5 of the range.

Learning is an EWMA in time, not per visit: ``beta = min(1, dt / (memory_days * bin_seconds))``
with ``dt`` the series' step to this value, so a bin forgets at the same pace whether the series
reports every minute or every hour (the first visit of a bin, or ``dt = inf``, sets it).

Vectorised over distinct series ``i (n,)`` with bins ``b (n,)`` (:func:`bin_of`); ``lo``/``hi``
are the rows' current range.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

UNSEEN = np.uint16(65535)
_SCALE = 65534.0
DAY_SECONDS = 86400.0


def bin_of(t: npt.ArrayLike, bins: int) -> np.ndarray:
    """Epoch seconds ``t (n,)`` -> time-of-day bin ``(n,)`` int64 in ``[0, bins)`` (UTC)."""
    sod = np.mod(np.asarray(t, dtype=np.float64), DAY_SECONDS)
    return np.minimum((sod * (bins / DAY_SECONDS)).astype(np.int64), bins - 1)


def _frame(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(base, width)`` of the range codes are relative to: ``(lo, hi - lo)``; ``(0, 0)`` for a range
    not known yet, width 0 for a single value."""
    return np.where(np.isfinite(lo), lo, 0.0), np.where(hi > lo, hi - lo, 0.0)


def decode(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Quantised levels ``q`` (uint16, any shape broadcasting with ``lo``/``hi``) -> raw levels (float64;
    NaN where unseen). A zero-width (or not yet known) range decodes to ``lo``."""
    base, width = _frame(lo, hi)
    out = base + (q.astype(np.float64) / _SCALE) * width
    return np.where(q == UNSEEN, np.nan, out)


def encode(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Raw levels ``p`` (float64; NaN: unseen) -> uint16 codes in the range ``[lo, hi]``."""
    base, width = _frame(lo, hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(width > 0, (p - base) / np.where(width > 0, width, 1.0), 0.0)
    q = np.rint(np.clip(u, 0.0, 1.0) * _SCALE)
    return np.where(np.isnan(p), UNSEEN, q).astype(np.uint16)


class TimeOfDayProfile:
    """Per-series time-of-day levels; see the module docstring."""

    def __init__(self, bins: int = 24, memory_days: float = 3.0):
        if bins < 1 or memory_days <= 0:
            raise ValueError("bins must be >= 1 and memory_days > 0")
        self.bins = int(bins)
        self.memory_days = float(memory_days)
        self.level = np.full((0, self.bins), UNSEEN, dtype=np.uint16)

    @property
    def bin_seconds(self) -> float:
        return DAY_SECONDS / self.bins

    def bytes_per_series(self) -> int:
        return 2 * self.bins

    def resize(self, n: int) -> None:
        if n > len(self.level):
            extra = np.full((n - len(self.level), self.bins), UNSEEN, dtype=np.uint16)
            self.level = np.concatenate([self.level, extra])

    def reset(self, idx: np.ndarray) -> None:
        self.level[idx] = UNSEEN

    def requantise(
        self, i: np.ndarray, lo_old: np.ndarray, hi_old: np.ndarray, lo_new: np.ndarray, hi_new: np.ndarray
    ) -> None:
        """Re-encode the rows ``i`` whose range changed from ``[lo_old, hi_old]`` to ``[lo_new, hi_new]``."""
        moved = (lo_new != lo_old) | (hi_new != hi_old)
        if not np.count_nonzero(moved):
            return
        r = i[moved]
        raw = decode(self.level[r], lo_old[moved, None], hi_old[moved, None])
        self.level[r] = encode(raw, lo_new[moved, None], hi_new[moved, None])

    def residual(
        self, i: np.ndarray, b: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(|v - level|, level)`` for values ``v (n,)`` in bins ``b (n,)``; NaN where the bin is unseen
        (or ``v`` is not finite)."""
        level = decode(self.level[i, b], lo, hi)
        return np.abs(v - level), level

    def learn(
        self,
        i: np.ndarray,
        b: np.ndarray,
        v: np.ndarray,
        level: np.ndarray,
        dt: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        mask: np.ndarray,
    ) -> None:
        """Move the bins of the rows where ``mask`` holds toward ``v``; ``level`` from :meth:`residual`."""
        if not np.count_nonzero(mask):
            return
        i, b, v, level, dt, lo, hi = i[mask], b[mask], v[mask], level[mask], dt[mask], lo[mask], hi[mask]
        beta = np.minimum(np.asarray(dt, dtype=np.float64) / (self.memory_days * self.bin_seconds), 1.0)
        new = np.where(np.isnan(level), v, level + beta * (v - level))
        self.level[i, b] = encode(new, lo, hi)
