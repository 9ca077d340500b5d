"""Error -> anomaly score in [0, 1] + flag: anomaly likelihood with a refractory period.

After Numenta's "anomaly likelihood" (Ahmad et al. 2017), in O(1) state per series:

1. ``short``: EWMA (``short_alpha``) of the prediction errors - one noisy error is not alarming,
   a run of large ones is.
2. ``mu``, ``var``: long-run EWMA mean / variance of ``short`` (``long_alpha``): the series' usual
   error level. They learn ``short`` *clipped* at ``mu + clip_z*std``, so an anomaly does not
   teach the series that anomalies are normal (the detector does not learn from what it flags).
3. ``z = (short - mu) / max(sqrt(var), min_std_frac*mu, min_std)``; tail probability
   ``Q = 0.5 erfc(z / sqrt 2)``; ``score = log(Q + 1e-10) / log(1e-10)`` clipped to [0, 1]
   (Numenta's log scale: 0.5 is Q = 1e-5, z ~ 4.26; 1.0 is Q <= 1e-10).
4. ``flag = score >= threshold`` once ``warmup`` errors were seen, unless the series flagged less
   than ``refractory`` events ago. During the refractory period the emitted score is multiplied
   by ``refractory_damp`` too, so a threshold swept over the score sees the same suppression
   (NAB rewards only the first detection per window and charges every false positive; an operator
   wants one alert per incident).

Vectorised over series: ``update(series_idx (n,), errors (n,)) -> (scores (n,), flags (n,))``,
repeated series in one call applied in order. ``score_series`` is the one-series batch path
(same arithmetic, tested). NaN errors leave the state unchanged and score 0.

This is post-processing of ``StreamingDetector`` outputs used by the backtest; to make the live
scorer emit the same scores it must be wired into ``pipeline/scoring.py`` (see the backtest report).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from models._streaming import grow, rounds

_LOG_EPS = math.log(1e-10)
_SQRT2 = math.sqrt(2.0)


@dataclass
class LikelihoodConfig:
    """Tunables of :class:`ErrorLikelihood`."""

    short_alpha: float = 0.1       # EWMA weight of the short error average (~10 events)
    long_alpha: float = 0.002      # EWMA weight of the long-run error statistics (~500 events)
    threshold: float = 0.5         # flag when score >= threshold (0.5: tail probability 1e-5)
    warmup: int = 100              # errors a series needs before it may flag
    refractory: int = 80           # events after a flag during which no new flag is raised
    refractory_damp: float = 0.0   # score multiplier during the refractory period
    min_std: float = 1e-6          # absolute floor of the error std (error units)
    min_std_frac: float = 0.1      # floor of the std relative to the mean error level
    clip_z: float = 4.0            # long statistics learn short clipped at mu + clip_z*std

    def __post_init__(self) -> None:
        for name in ("short_alpha", "long_alpha"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if not 0 <= self.threshold <= 1:
            raise ValueError("threshold must be in [0, 1]")
        if self.warmup < 0 or self.refractory < 0:
            raise ValueError("warmup and refractory must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def tail_score(z: np.ndarray) -> np.ndarray:
    """``log(Q(z) + 1e-10) / log(1e-10)`` in [0, 1]; ``Q`` the standard normal tail."""
    z = np.asarray(z, dtype=np.float64)
    q = 0.5 * np.array([math.erfc(v / _SQRT2) for v in z.ravel()]).reshape(z.shape)
    return np.clip(np.log(q + 1e-10) / _LOG_EPS, 0.0, 1.0)


class ErrorLikelihood:
    """Streaming anomaly likelihood over many series; see the module docstring."""

    def __init__(self, config: LikelihoodConfig | None = None):
        self.config = config or LikelihoodConfig()
        self.n_series = 0
        self.count = np.zeros(0, dtype=np.int64)
        self.short = np.zeros(0)
        self.mu = np.zeros(0)
        self.var = np.zeros(0)
        self.since_flag = np.zeros(0, dtype=np.int64)

    def _ensure(self, n: int) -> None:
        if n > self.n_series:
            self.count = grow(self.count, n, 0)
            self.short = grow(self.short, n, 0.0)
            self.mu = grow(self.mu, n, 0.0)
            self.var = grow(self.var, n, 0.0)
            self.since_flag = grow(self.since_flag, n, 1 << 40)
            self.n_series = n

    def update(self, series_idx, errors) -> tuple[np.ndarray, np.ndarray]:
        """Fold ``errors (n,)`` of ``series_idx (n,)`` in; returns ``(scores (n,), flags (n,))``."""
        idx = np.atleast_1d(np.asarray(series_idx, dtype=np.int64))
        e = np.broadcast_to(np.asarray(errors, dtype=np.float64), idx.shape)
        scores = np.zeros(len(idx))
        flags = np.zeros(len(idx), dtype=bool)
        if len(idx):
            self._ensure(int(idx.max()) + 1)
            for sel in rounds(idx):
                scores[sel], flags[sel] = self._step(idx[sel], e[sel])
        return scores, flags

    def _step(self, i: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        ok = np.isfinite(e)
        score = np.zeros(len(i))
        flag = np.zeros(len(i), dtype=bool)
        if not ok.any():
            return score, flag
        i, e = i[ok], e[ok]
        count = self.count[i]
        first = count == 0
        short = np.where(first, e, self.short[i] + cfg.short_alpha * (e - self.short[i]))
        mu = np.where(first, short, self.mu[i])
        var = np.where(first, 0.0, self.var[i])
        std = np.maximum(np.maximum(np.sqrt(var), cfg.min_std_frac * np.abs(mu)), cfg.min_std)
        s = tail_score((short - mu) / std)
        since = self.since_flag[i] + 1
        in_ref = since <= cfg.refractory
        s = np.where(in_ref, s * cfg.refractory_damp, s)
        fl = (count >= cfg.warmup) & ~in_ref & (s >= cfg.threshold)
        # long statistics: plain running mean/var during warm-up, then EWMA; learn the clipped value
        a = np.where(count < cfg.warmup, np.maximum(cfg.long_alpha, 1.0 / (count + 1.0)), cfg.long_alpha)
        d = np.minimum(short, mu + cfg.clip_z * std) - mu
        self.mu[i] = mu + a * d
        self.var[i] = (1 - a) * (var + a * d * d)
        self.short[i] = short
        self.count[i] = count + 1
        self.since_flag[i] = np.where(fl, 0, since)
        score[ok], flag[ok] = s, fl
        return score, flag


def score_series(errors, config: LikelihoodConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One series' ``errors (time,)`` -> ``(scores (time,), flags (time,))``.

    Scalar loop with the same arithmetic as :class:`ErrorLikelihood` (tested equal), ~50x faster
    for one long series than per-event array calls.
    """
    cfg = config or LikelihoodConfig()
    errors = np.asarray(errors, dtype=np.float64)
    n = len(errors)
    scores = np.zeros(n)
    flags = np.zeros(n, dtype=bool)
    count, short, mu, var, since = 0, 0.0, 0.0, 0.0, 1 << 40
    sa, la, warmup, ref, damp = cfg.short_alpha, cfg.long_alpha, cfg.warmup, cfg.refractory, cfg.refractory_damp
    thr, clip_z, msf, ms = cfg.threshold, cfg.clip_z, cfg.min_std_frac, cfg.min_std
    erfc, log, sqrt = math.erfc, math.log, math.sqrt
    for t in range(n):
        e = errors[t]
        if not math.isfinite(e):
            continue
        if count == 0:
            short, mu, var = e, e, 0.0
        else:
            short = short + sa * (e - short)
        std = max(sqrt(var), msf * abs(mu), ms)
        q = 0.5 * erfc(((short - mu) / std) / _SQRT2)
        s = min(max(log(q + 1e-10) / _LOG_EPS, 0.0), 1.0)
        since += 1
        in_ref = since <= ref
        if in_ref:
            s *= damp
        fl = count >= warmup and not in_ref and s >= thr
        a = max(la, 1.0 / (count + 1.0)) if count < warmup else la
        d = min(short, mu + clip_z * std) - mu
        mu = mu + a * d
        var = (1 - a) * (var + a * d * d)
        count += 1
        if fl:
            since = 0
        scores[t], flags[t] = s, fl
    return scores, flags
