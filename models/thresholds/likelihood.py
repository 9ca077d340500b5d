"""Anomaly likelihood (Numenta style): is the recent mean error unusually high for this series?

Per series: the short-term mean ``m`` of the last ``short_window`` errors is compared with the
distribution (mean ``mu``, std ``sigma``) of the short-term means over the last ``long_window``
steps: ``likelihood = 1 - Q((m - mu) / sigma) = Phi(z)`` in [0, 1]; anomalous at or above
``threshold`` (0.9999 by default). One-sided (Numenta's tail is two-sided; for errors only "too
high" matters). Until ``min_history`` means were collected the likelihood is 0.5 (Numenta's
learning period). Points flagged anomalous are NOT added to the long-term distribution
(``learn_from_anomalies=False``), so an anomaly does not teach the detector that anomalies are
normal. NaN errors score NaN and leave the state untouched.
"""

from __future__ import annotations

import math

import numpy as np

from models._streaming import StreamingState, grow

_erfc = np.frompyfunc(math.erfc, 1, 1)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF ``Phi(z) = 1 - Q(z)``, elementwise."""
    return 0.5 * np.asarray(_erfc(-np.asarray(z, dtype=np.float64) / math.sqrt(2.0)), dtype=np.float64)


def log_likelihood(likelihood) -> np.ndarray:
    """Numenta's log transform: spreads values near 1 over [0, 1] (0.9999 -> ~0.4, 0.99999 -> ~0.5)."""
    return np.log(1.0000000001 - np.asarray(likelihood, dtype=np.float64)) / math.log(1.0 - 0.9999999999)


class AnomalyLikelihood(StreamingState):
    """Streaming anomaly likelihood over many series (see module docstring)."""

    def __init__(
        self, short_window: int = 10, long_window: int = 1000, min_history: int = 100,
        threshold: float = 0.9999, min_std: float = 1e-3, learn_from_anomalies: bool = False,
    ):
        self.short_window, self.long_window = short_window, long_window
        self.min_history, self.threshold, self.min_std = min_history, threshold, min_std
        self.learn_from_anomalies = learn_from_anomalies
        self.short = np.empty((0, short_window))
        self.short_pos = np.empty(0, dtype=np.int64)
        self.long = np.empty((0, long_window))
        self.long_pos = np.empty(0, dtype=np.int64)

    def _resize(self, n: int) -> None:
        self.short = grow(self.short, n, np.nan)
        self.short_pos = grow(self.short_pos, n, 0)
        self.long = grow(self.long, n, np.nan)
        self.long_pos = grow(self.long_pos, n, 0)

    def _update_unique(self, idx, e):
        out = np.full(len(idx), np.nan)
        ok = ~np.isnan(e)
        idx, e = idx[ok], e[ok]
        self.short[idx, self.short_pos[idx] % self.short_window] = e
        self.short_pos[idx] += 1
        m = np.nanmean(self.short[idx], axis=1)
        hist = self.long[idx]
        ready = np.sum(~np.isnan(hist), axis=1) >= self.min_history
        lik = np.full(len(idx), 0.5)
        if ready.any():
            h = hist[ready]
            mu = np.nanmean(h, axis=1)
            sigma = np.maximum(np.nanstd(h, axis=1), self.min_std)
            lik[ready] = normal_cdf((m[ready] - mu) / sigma)
        learn = np.ones(len(idx), dtype=bool) if self.learn_from_anomalies else lik < self.threshold
        li = idx[learn]
        self.long[li, self.long_pos[li] % self.long_window] = m[learn]
        self.long_pos[li] += 1
        out[ok] = lik
        return out

    def is_anomaly(self, scores) -> np.ndarray:
        return np.asarray(scores) >= self.threshold
