"""Nonparametric dynamic threshold of Hundman et al., KDD 2018 ("Telemanom").

Batch (``find_anomalies``) on smoothed errors ``e_s``:

1. ``epsilon = mean(e_s) + z * std(e_s)`` for ``z`` in ``z_values``; pick the ``z`` maximising
   ``(dmu/mu + dsigma/sigma) / (|e_a| + |E_seq|**2)``, where ``dmu``, ``dsigma`` are the drops in
   mean/std when the points above ``epsilon`` (``e_a``, forming contiguous sequences ``E_seq``) are
   removed. As in the reference implementation, candidates with more than ``max_sequences``
   sequences or with half the points anomalous are skipped; with no candidate, ``z = max(z_values)``.
2. Pruning: sort the sequence maxima descending, append the largest nominal error; walking down,
   a relative decrease ``< p`` (0.13) marks a sequence for removal, a decrease ``>= p`` clears the
   marks; whatever is still marked at the end is reclassified nominal.

Streaming (``TelemanomThreshold``): per series a trailing window of smoothed errors; ``epsilon``
and the largest nominal error ``m`` are refitted every ``refit_every`` events on that window.
An event is anomalous when ``e_s > epsilon`` AND it survives the pruning test against the nominal
maximum, ``(e_s - m) / e_s >= p``, i.e. ``e_s > tau = max(epsilon, m / (1 - p))``; its score is
``e_s / tau`` (> 1 is anomalous). Flagged points stay in the window: the epsilon search is built to
separate them (so "don't learn from flagged points" does not apply), and ``m`` excludes them.
"""

from __future__ import annotations

import numpy as np

from models.core.streaming import StreamingState, grow
from models.forecasting.errors import ewma

Z_VALUES = tuple(np.arange(2.5, 12.0, 0.5))


def sequences(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous True runs of a boolean ``(time,)`` mask as half-open ``(start, end)``."""
    m = np.r_[False, np.asarray(mask, dtype=bool), False]
    edges = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def find_epsilon(
    e_s: np.ndarray, z_values=Z_VALUES, max_sequences: int = 5, max_anomalous_fraction: float = 0.5
) -> float:
    """Threshold ``epsilon`` for smoothed errors ``e_s (time,)`` (NaNs ignored)."""
    e = np.asarray(e_s, dtype=np.float64)
    e = e[~np.isnan(e)]
    if len(e) == 0:
        return np.inf
    mu, sigma = e.mean(), e.std()
    best_score, best_eps = -np.inf, mu + max(z_values) * sigma
    if sigma == 0 or mu == 0:
        return best_eps
    for z in z_values:
        eps = mu + z * sigma
        above = e > eps
        n_above = int(above.sum())
        if n_above == 0 or n_above >= max_anomalous_fraction * len(e):
            continue
        n_seq = len(sequences(above))
        if n_seq > max_sequences:
            continue
        below = e[~above]
        score = ((mu - below.mean()) / mu + (sigma - below.std()) / sigma) / (n_above + n_seq**2)
        if score >= best_score:
            best_score, best_eps = score, eps
    return float(best_eps)


def prune_sequences(e_s: np.ndarray, seqs: list[tuple[int, int]], nominal_max: float, p: float = 0.13):
    """Keep the sequences that pass the minimum-percent-decrease test (see module docstring)."""
    if not seqs:
        return []
    maxima = np.array([np.nanmax(e_s[s:e]) for s, e in seqs])
    order = np.argsort(-maxima, kind="stable")
    ladder = np.r_[maxima[order], nominal_max]
    keep_upto = -1  # rank of the last sequence followed by a decrease >= p
    for i in range(len(order)):
        if ladder[i] > 0 and (ladder[i] - ladder[i + 1]) / ladder[i] >= p:
            keep_upto = i
    kept = sorted(order[: keep_upto + 1].tolist())
    return [seqs[i] for i in kept]


def find_anomalies(
    errors: np.ndarray, alpha: float = 0.1, p: float = 0.13, z_values=Z_VALUES, smoothed: bool = False
) -> list[tuple[int, int, float]]:
    """Batch Telemanom on one series of raw errors ``(time,)``: ``[(start, end, score)]`` half-open.

    ``score = (max(e_s in seq) - epsilon) / (mean(e_s) + std(e_s))`` as in the paper's code.
    """
    e_s = np.asarray(errors, dtype=np.float64) if smoothed else ewma(errors, alpha)
    eps = find_epsilon(e_s, z_values)
    above = np.nan_to_num(e_s, nan=-np.inf) > eps
    seqs = sequences(above)
    nominal = e_s[~above & ~np.isnan(e_s)]
    kept = prune_sequences(e_s, seqs, float(nominal.max()) if len(nominal) else 0.0, p)
    denom = np.nanmean(e_s) + np.nanstd(e_s)
    return [(s, e, float((np.nanmax(e_s[s:e]) - eps) / denom)) for s, e in kept]


class TelemanomThreshold(StreamingState):
    """Streaming dynamic threshold over many series; score ``e_s / tau`` (> 1 anomalous).

    ``initial_epsilon`` applies until a series has ``min_history`` smoothed errors (default inf:
    nothing is flagged during warm-up; pass e.g. ``calibration["threshold"]`` to flag from the start).
    """

    threshold = 1.0

    def __init__(
        self,
        alpha: float = 0.1,
        p: float = 0.13,
        window: int = 2000,
        refit_every: int = 100,
        min_history: int = 200,
        initial_epsilon: float = np.inf,
        z_values=Z_VALUES,
    ):
        self.alpha, self.p, self.window, self.refit_every = alpha, p, window, refit_every
        self.min_history, self.initial_epsilon, self.z_values = min_history, initial_epsilon, tuple(z_values)
        self.smooth = np.empty(0)
        self.hist = np.empty((0, window))
        self.count = np.empty(0, dtype=np.int64)
        self.epsilon = np.empty(0)
        self.nominal_max = np.empty(0)

    def _resize(self, n: int) -> None:
        self.smooth = grow(self.smooth, n, np.nan)
        self.hist = grow(self.hist, n, np.nan)
        self.count = grow(self.count, n, 0)
        self.epsilon = grow(self.epsilon, n, self.initial_epsilon)
        self.nominal_max = grow(self.nominal_max, n, 0.0)

    def _update_unique(self, idx, e):
        out = np.full(len(idx), np.nan)
        ok = ~np.isnan(e)
        idx, e = idx[ok], e[ok]
        s = self.smooth[idx]
        e_s = np.where(np.isnan(s), e, self.alpha * e + (1.0 - self.alpha) * s)
        self.smooth[idx] = e_s
        tau = np.maximum(self.epsilon[idx], self.nominal_max[idx] / (1.0 - self.p))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[ok] = np.where(np.isinf(tau), 0.0, e_s / tau)
        self.hist[idx, self.count[idx] % self.window] = e_s
        self.count[idx] += 1
        c = self.count[idx]
        for i in idx[(c >= self.min_history) & (c % self.refit_every == 0)]:
            self._refit(int(i))
        return out

    def _refit(self, i: int) -> None:
        h = self.hist[i]
        h = h[~np.isnan(h)]
        eps = find_epsilon(h, self.z_values)
        nominal = h[h <= eps]
        self.epsilon[i] = eps
        self.nominal_max[i] = nominal.max() if len(nominal) else 0.0

    def is_anomaly(self, scores) -> np.ndarray:
        return np.asarray(scores) > self.threshold
