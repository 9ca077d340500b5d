"""Error -> anomaly score in [0, 1] + flag: anomaly likelihood, spatial check, refractory period.

Long (about 540 lines) because the five steps below share one per-series state and one hot path
(``step_unique``, split into one method per step); the time-of-day and daily-repeat state live in
``time_of_day`` and ``daily_repeat``.

The live scorer's final detection step (``models.detection.detector.StreamingDetector`` with
``threshold_method="likelihood"``), also what the NAB backtest measures. After Numenta's "anomaly
likelihood" (Ahmad et al. 2017) and the "spatial anomaly" of NAB's detectors, in O(1) state per
series (:data:`STATE_BYTES` (+ :data:`SLOW_BYTES` with the slow time scale) + :data:`CONTEXT_BYTES` bytes, plus 2 B per
time-of-day bin and 1 B per daily-repeat bin: 121 B with the defaults):

1. ``short``: EWMA (``short_alpha``) of the prediction errors - one noisy error is not alarming,
   a run of large ones is.
2. ``mu``, ``var``: long-run EWMA mean / variance of ``short`` (``long_alpha``; a plain running
   mean during the first ``warmup`` errors): the series' usual error level. They learn ``short``
   *clipped* at ``mu + clip_z*std``, so an anomaly does not teach the series that anomalies are
   normal (the detector does not learn from what it flags).
3. ``z = (short - mu) / max(sqrt(var), min_std_frac*mu, min_std)``; tail probability
   ``Q = 0.5 erfc(z / sqrt 2)``; ``likelihood score = log(Q + 1e-10) / log(1e-10)`` in [0, 1]
   (Numenta's log scale: 0.5 is Q = 1e-5, z ~ 4.26; 1.0 is Q <= 1e-10).
3b. Second time scale (default off; ``slow_alpha=0.04``: on, 8 bytes per series more): ``slow``, a
   slower EWMA of the same errors, and ``svar``, the long-run EWMA variance of ``slow`` (same ``mu``, same
   clipping; float32). ``likelihood score = max(short_weight * tail(z_short), tail(z_slow))``: a
   sustained rise of the error level counts fully, a short burst must be more extreme
   (``short_weight < 1``): the persistence that separates incidents from the usual spikes of a
   noisy series.
3c. Time-of-day context (default on; ``seasonal_bins=None``: off; needs ``values`` and ``times``): a
   :class:`models.detection.thresholds.time_of_day.TimeOfDayProfile` keeps each series' usual level per hour of
   the day; the residual ``|value - level of its hour|`` goes through its own slow EWMA ``cslow``
   (the slow time scale: ``slow_alpha``, else ``short_alpha``) with long-run ``cmu``/``cvar``
   (clipped like the others) and scores ``tail(z_context)`` once ``warmup`` residuals were seen
   (``ccount``). ``likelihood score = max(..., context score)``: a daily peak that does not come, or
   comes lower than usual, is anomalous although each value is easy to forecast from the ones just
   before it. The profile does not learn from a flagged value.
3d. Daily repeats (default on; ``repeat_bins=None``: off; needs ``times``): a score reaching the
   threshold in the same hour as one the day before is a scheduled job's spike, and scores 0
   (:class:`models.detection.thresholds.daily_repeat.DailyRepeats`, one byte per series and hour).
4. Spatial check (when ``values`` are given and ``spatial_tolerance`` is not None): a value more
   than ``spatial_tolerance * (max - min)`` outside the range ``[min, max]`` of the values seen
   before scores 1.0. ``score = max(likelihood score, spatial score)``. The range then grows to
   include the value (a new level is normal from the next event on).
5. ``flag = score >= threshold`` for an alerting event once ``warmup`` errors were seen, unless
   the series flagged less than ``refractory`` events ago; during that refractory period the
   emitted score is 0, so a threshold swept over the scores sees the same suppression (NAB
   rewards only the first detection per window and charges every false positive; an operator
   wants one alert per incident). Non-alerting events (``alert=False``: warm-up, replays) update
   the statistics but never flag nor start a refractory period; their score is still reported.

Vectorised over series: ``step(series_idx (n,), errors (n,), values=None, alert=True, times=None,
dt=None) -> (scores (n,), flags (n,))`` (``times`` epoch seconds, ``dt`` each series' step to this
value: the context check's inputs), repeated series in one call applied in order; ``update`` (scores only),
``score_one`` and ``score_batch`` (the ``models.core.streaming.StreamingState`` interface); ``reset(idx)``
returns slots to the fresh state (the scorer reuses slots of evicted series). NaN errors leave the
likelihood state unchanged and score 0 (the spatial check still applies to a finite value). The
tests check this against a scalar one-series oracle (``tests/likelihood_oracle.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.core.streaming import StreamingState, grow, rounds
from models.core.streaming import clip as _clip
from models.detection.thresholds.daily_repeat import DailyRepeats
from models.detection.thresholds.time_of_day import TimeOfDayProfile, bin_of

# Hot path: models.core.streaming.clip (np.clip without its Python wrapper), and
# np.count_nonzero(mask) as the cheap any()/all() test of a mask.
_LOG_EPS = math.log(1e-10)
_SQRT2 = math.sqrt(2.0)
_NEVER = 1 << 30  # 'never flagged' (int32 counters saturate here)
STATE_BYTES = 2 * 4 + 3 * 4 + 2 * 8  # count, since (int32, saturating); short, mu, var (float32); lo, hi (float64)
SLOW_BYTES = 2 * 4  # slow, svar (float32), only with slow_alpha (off by default)
CONTEXT_BYTES = 3 * 4 + 1  # cslow, cmu, cvar (float32), ccount (uint8), plus 2 B per time-of-day bin
_CCOUNT_MAX = 255


@dataclass
class LikelihoodConfig:
    """Tunables of :class:`ErrorLikelihood`; the on/off steps are chosen by ``tsad backtest --cv`` (docs/detection.md)."""

    short_alpha: float = 0.1  # EWMA weight of the short error average (~10 events)
    long_alpha: float = 0.002  # EWMA weight of the long-run error statistics (~500 events)
    threshold: float = 0.5  # flag when score >= threshold (0.5: tail probability 1e-5)
    warmup: int = 100  # errors a series needs before it may flag
    refractory: int = 40  # events after a flag during which no new flag is raised (score 0)
    min_std: float = 1e-6  # absolute floor of the error std (error units)
    min_std_frac: float = 0.1  # floor of the std relative to the mean error level
    clip_z: float = 8.0  # long statistics learn short clipped at mu + clip_z*std
    slow_alpha: float | None = None  # EWMA weight of a second, slower error average (0.04: ~25 events); None: off
    # (off by default: it lost out of sample, see docs/detection.md)
    short_weight: float = 0.5  # with slow_alpha: score = max(short_weight*short score, slow score);
    # 0.5 with threshold 0.5: the short scale alone alarms only at Q <= 1e-10
    spatial_tolerance: float | None = 0.05  # value outside [min, max] +- tol*(max-min) -> score 1; None: off
    seasonal_bins: int | None = 24  # time-of-day context: bins per (UTC) day; None: off
    seasonal_days: float = 3.0  # memory of a time-of-day bin's level (days)
    repeat_bins: int | None = 24  # daily repeats: an alarm in the same bin (hour) as one yesterday scores 0; None: off

    def __post_init__(self) -> None:
        for name in ("short_alpha", "long_alpha"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if not 0 <= self.threshold <= 1:
            raise ValueError("threshold must be in [0, 1]")
        if self.warmup < 0 or self.refractory < 0:
            raise ValueError("warmup and refractory must be >= 0")
        if self.min_std <= 0 or self.min_std_frac < 0 or self.clip_z <= 0:
            raise ValueError("min_std and clip_z must be > 0, min_std_frac >= 0")
        if self.slow_alpha is not None and not 0 < self.slow_alpha <= 1:
            raise ValueError("slow_alpha must be in (0, 1] or None")
        if not 0 <= self.short_weight <= 1:
            raise ValueError("short_weight must be in [0, 1]")
        if self.spatial_tolerance is not None and self.spatial_tolerance < 0:
            raise ValueError("spatial_tolerance must be >= 0 or None")
        if self.seasonal_bins is not None and not 1 <= self.seasonal_bins <= 24 * 60:
            raise ValueError("seasonal_bins must be in [1, 1440] or None")
        if self.repeat_bins is not None and not 1 <= self.repeat_bins <= 24 * 60:
            raise ValueError("repeat_bins must be in [1, 1440] or None")
        if self.seasonal_days <= 0:
            raise ValueError("seasonal_days must be > 0")
        if self.seasonal_bins is not None and self.warmup > _CCOUNT_MAX:
            raise ValueError(f"warmup must be <= {_CCOUNT_MAX} with seasonal_bins (the context count is a uint8)")

    @property
    def context_alpha(self) -> float:
        """EWMA weight of the time-of-day residuals: the slow time scale (or the short one without it)."""
        return self.slow_alpha if self.slow_alpha is not None else self.short_alpha

    def to_dict(self) -> dict:
        return asdict(self)


def _floor_std(var: np.ndarray, mu: np.ndarray, cfg: LikelihoodConfig) -> np.ndarray:
    """``max(sqrt(var), min_std_frac * |mu|, min_std)``: the spread a z-score divides by."""
    return np.maximum(np.maximum(np.sqrt(var), cfg.min_std_frac * np.abs(mu)), cfg.min_std)


def _learning_rate(count: np.ndarray, young: np.ndarray, cfg: LikelihoodConfig) -> float | np.ndarray:
    """Long-run EWMA weight: a plain running mean (``1 / (count + 1)``) while ``young``, then ``long_alpha``."""
    if not np.count_nonzero(young):
        return cfg.long_alpha
    return np.where(young, np.maximum(cfg.long_alpha, 1.0 / (count + 1.0)), cfg.long_alpha)


def _learn_clipped(
    x: np.ndarray, mu: np.ndarray, var: np.ndarray, std: np.ndarray, a: float | np.ndarray, clip_z: float
) -> tuple[np.ndarray, np.ndarray]:
    """Long-run mean / variance after learning ``x`` clipped at ``mu + clip_z * std`` with weight ``a``."""
    d = np.minimum(x, mu + clip_z * std) - mu
    return mu + a * d, (1 - a) * (var + a * d * d)


def _store(i: np.ndarray, mask: np.ndarray, all_set: bool, *pairs: tuple[np.ndarray, np.ndarray]) -> None:
    """``array[i] = values`` for each ``(array, values)`` pair, only the rows where ``mask`` holds."""
    if all_set:
        for array, values in pairs:
            array[i] = values
    else:
        rows = i[mask]
        for array, values in pairs:
            array[rows] = values[mask]


def tail_score(z: npt.ArrayLike) -> np.ndarray:
    """``log(Q(z) + 1e-10) / log(1e-10)`` in [0, 1]; ``Q`` the standard normal tail."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    q = 0.5 * torch.special.erfc(torch.from_numpy(z / _SQRT2)).numpy()  # vectorised, float64, no Python per element
    return _clip(np.log(q + 1e-10) / _LOG_EPS, 0.0, 1.0)


@lru_cache(maxsize=64)
def tail_inverse(target: float) -> float:
    """The z-score at which :func:`tail_score` reaches ``target`` (inf when it never does)."""
    q = math.exp(target * _LOG_EPS) - 1e-10
    if q <= 0.0:
        return math.inf
    if q >= 1.0:
        return -math.inf
    return -NormalDist().inv_cdf(q)


@dataclass(slots=True)
class _Range:
    """``step_unique``'s value-range step: spatial flags (None: none), finite values, the grown range,
    and with the time-of-day context the value's bin, residual and its bin's level."""

    spatial: np.ndarray | None
    fin: np.ndarray
    new_lo: np.ndarray
    new_hi: np.ndarray
    tbin: Any = None
    resid: Any = None
    level: Any = None


@dataclass(slots=True)
class _Channels:
    """The error channels after this error: finite mask, counts, short EWMA and long-run statistics
    (float64), and the slow time scale when on."""

    ok: np.ndarray
    all_ok: bool
    count: np.ndarray
    short: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    std: np.ndarray
    slow: np.ndarray | None = None
    svar: np.ndarray | None = None
    sstd: np.ndarray | None = None


@dataclass(slots=True)
class _Context:
    """The time-of-day channel after this residual (``rok``: finite residual)."""

    rok: np.ndarray
    ccount: np.ndarray
    cslow: np.ndarray
    cmu: np.ndarray
    cvar: np.ndarray
    cstd: np.ndarray


class ErrorLikelihood(StreamingState):
    """Streaming anomaly likelihood + spatial check over many series; see the module docstring."""

    def __init__(self, config: LikelihoodConfig | None = None, **overrides: Any) -> None:
        self.config = config or LikelihoodConfig(**overrides)
        self.n_series = 0
        self.count = np.zeros(0, dtype=np.int32)
        self.since = np.zeros(0, dtype=np.int32)
        # error statistics: float32 storage, float64 arithmetic (errors are magnitudes: float32's
        # relative precision is ample); the value range stays float64 (a level of 1e6 with 0.01
        # wiggles must keep its range)
        self.short = np.zeros(0, dtype=np.float32)
        self.mu = np.zeros(0, dtype=np.float32)
        self.var = np.zeros(0, dtype=np.float32)
        self.lo = np.zeros(0)
        self.hi = np.zeros(0)
        self.slow = np.zeros(0, dtype=np.float32)  # stay empty without slow_alpha
        self.svar = np.zeros(0, dtype=np.float32)
        cfg = self.config
        self.profile = None if cfg.seasonal_bins is None else TimeOfDayProfile(cfg.seasonal_bins, cfg.seasonal_days)
        self.cslow = np.zeros(0, dtype=np.float32)  # time-of-day context channel; stay empty without it
        self.cmu = np.zeros(0, dtype=np.float32)
        self.cvar = np.zeros(0, dtype=np.float32)
        self.ccount = np.zeros(0, dtype=np.uint8)
        self.repeats = None if cfg.repeat_bins is None else DailyRepeats(cfg.repeat_bins)

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def _resize(self, n: int) -> None:
        self.count = grow(self.count, n, 0)
        self.since = grow(self.since, n, _NEVER)
        self.short = grow(self.short, n, 0.0)
        self.mu = grow(self.mu, n, 0.0)
        self.var = grow(self.var, n, 0.0)
        self.lo = grow(self.lo, n, np.inf)
        self.hi = grow(self.hi, n, -np.inf)
        if self.config.slow_alpha is not None:
            self.slow = grow(self.slow, n, 0.0)
            self.svar = grow(self.svar, n, 0.0)
        if self.profile is not None:
            self.profile.resize(n)
            self.cslow = grow(self.cslow, n, 0.0)
            self.cmu = grow(self.cmu, n, 0.0)
            self.cvar = grow(self.cvar, n, 0.0)
            self.ccount = grow(self.ccount, n, 0)
        if self.repeats is not None:
            self.repeats.resize(n)

    def reset(self, series_idx: npt.ArrayLike) -> None:
        """Return ``series_idx`` to the fresh state (e.g. a reused slot)."""
        idx = np.atleast_1d(np.asarray(series_idx, dtype=np.int64))
        if not len(idx):
            return
        self.ensure(int(idx.max()) + 1)
        self.count[idx], self.since[idx] = 0, _NEVER
        self.short[idx] = self.mu[idx] = self.var[idx] = 0.0
        self.lo[idx], self.hi[idx] = np.inf, -np.inf
        if self.config.slow_alpha is not None:
            self.slow[idx] = self.svar[idx] = 0.0
        if self.profile is not None:
            self.profile.reset(idx)
            self.cslow[idx] = self.cmu[idx] = self.cvar[idx] = 0.0
            self.ccount[idx] = 0
        if self.repeats is not None:
            self.repeats.reset(idx)

    def bytes_per_series(self) -> int:
        ctx = CONTEXT_BYTES + self.profile.bytes_per_series() if self.profile is not None else 0
        rep = self.repeats.bytes_per_series() if self.repeats is not None else 0
        return STATE_BYTES + (SLOW_BYTES if self.config.slow_alpha is not None else 0) + ctx + rep

    def step(
        self,
        series_idx: npt.ArrayLike,
        errors: npt.ArrayLike,
        values: npt.ArrayLike | None = None,
        alert: npt.ArrayLike = True,
        times: npt.ArrayLike | None = None,
        dt: npt.ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fold ``errors (n,)`` (and raw ``values (n,)``, epoch-second ``times (n,)`` with each series' step
        ``dt (n,)`` to them) of ``series_idx (n,)`` in -> ``(scores, flags)``."""
        idx = np.atleast_1d(np.asarray(series_idx, dtype=np.int64))
        n = len(idx)
        if (times is None) != (dt is None):
            raise ValueError("times and dt go together (the time-of-day context needs both)")
        e = np.broadcast_to(np.asarray(errors, dtype=np.float64), (n,))
        v = None if values is None else np.broadcast_to(np.asarray(values, dtype=np.float64), (n,))
        a = np.broadcast_to(np.asarray(alert, dtype=bool), (n,))
        t = None if times is None else np.broadcast_to(np.asarray(times, dtype=np.float64), (n,))
        d = None if dt is None else np.broadcast_to(np.asarray(dt, dtype=np.float64), (n,))
        scores = np.zeros(n)
        flags = np.zeros(n, dtype=bool)
        if n:
            self.ensure(int(idx.max()) + 1)
            for sel in rounds(idx):
                scores[sel], flags[sel] = self.step_unique(
                    idx[sel],
                    e[sel],
                    None if v is None else v[sel],
                    a[sel],
                    None if t is None else t[sel],
                    None if d is None else d[sel],
                )
        return scores, flags

    def step_unique(
        self,
        i: np.ndarray,
        e: np.ndarray,
        v: np.ndarray | None = None,
        alert: Any = True,
        t: np.ndarray | None = None,
        dt: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` for distinct ``i (n,)`` already allocated (the scorer's per-round call).

        Hot path (once per scorer round): the common case (finite errors and values, series past
        warm-up, no refractory period running) skips the masks it does not need; same arithmetic.
        Steps: value range (spatial check, time-of-day residual), error channels, context channel,
        score, flag, then the state learns.
        """
        n = len(i)
        if not (type(alert) is np.ndarray and alert.dtype == np.bool_ and alert.shape == (n,)):
            alert = np.broadcast_to(np.asarray(alert, dtype=bool), (n,))
        context = self.profile is not None and v is not None and t is not None
        if t is not None and dt is None:
            raise ValueError("times need dt (each series' step to this value)")
        rng = self._range(i, v, t, context) if v is not None else None
        ch = self._error_channels(i, e)
        zs = [(ch.short - ch.mu) / ch.std]
        if ch.slow is not None:
            zs.append((ch.slow - ch.mu) / ch.sstd)
        ctx = self._context_channel(i, rng.resid) if context and rng is not None else None
        if ctx is not None:
            zs.append((ctx.cslow - ctx.cmu) / ctx.cstd)
        spatial = None if rng is None else rng.spatial
        s = self._score(i, zs, ch, ctx, t, spatial, n)
        s, flag, since, young = self._flag(i, s, ch, alert, spatial)
        self._learn(i, ch, young)
        if ctx is not None and rng is not None and v is not None and dt is not None:  # (all set with the context)
            self._learn_context(i, ctx, rng, v, dt, flag, n)
        since = np.minimum(since, _NEVER)
        self.since[i] = np.where(flag, 0, since) if np.count_nonzero(flag) else since
        return s, flag

    def _range(self, i: np.ndarray, v: np.ndarray, t: np.ndarray | None, context: bool) -> _Range | None:
        """Spatial check against the range seen before, grow the range, and (with the context) the
        value's residual from the usual level of its time of day, in the (possibly grown) range."""
        cfg = self.config
        if not (cfg.spatial_tolerance is not None or context):
            return None
        spatial = None
        lo, hi = self.lo[i], self.hi[i]
        fin = np.isfinite(v)
        all_fin = np.count_nonzero(fin) == len(fin)
        if cfg.spatial_tolerance is not None:
            tol = cfg.spatial_tolerance * (hi - lo)
            spatial = v > hi + tol
            spatial |= v < lo - tol
            spatial &= hi > lo
            if not all_fin:
                spatial &= fin
            if not np.count_nonzero(spatial):
                spatial = None
        if all_fin:
            new_lo, new_hi = np.minimum(lo, v), np.maximum(hi, v)
        else:
            new_lo, new_hi = np.where(fin, np.minimum(lo, v), lo), np.where(fin, np.maximum(hi, v), hi)
        self.lo[i], self.hi[i] = new_lo, new_hi
        out = _Range(spatial, fin, new_lo, new_hi)
        if context and self.profile is not None and t is not None:
            self.profile.requantise(i, lo, hi, new_lo, new_hi)
            out.tbin = bin_of(t, self.profile.bins)
            out.resid, out.level = self.profile.residual(i, out.tbin, v, new_lo, new_hi)
        return out

    def _error_channels(self, i: np.ndarray, e: np.ndarray) -> _Channels:
        """The short EWMA (and the slow one) after this error, with the long-run statistics before it."""
        cfg = self.config
        ok = np.isfinite(e)
        all_ok = np.count_nonzero(ok) == len(ok)
        count = self.count[i]
        first = count == 0
        e0 = e if all_ok else np.where(ok, e, 0.0)
        prev = self.short[i].astype(np.float64)
        short = prev + cfg.short_alpha * (e0 - prev)
        mu, var = self.mu[i].astype(np.float64), self.var[i].astype(np.float64)
        if np.count_nonzero(first):
            short = np.where(first, e0, short)
            mu = np.where(first, short, mu)
            var = np.where(first, 0.0, var)
        ch = _Channels(ok, all_ok, count, short, mu, var, _floor_std(var, mu, cfg))
        if cfg.slow_alpha is not None:  # second time scale: float32 state, float64 arithmetic
            sprev = self.slow[i].astype(np.float64)
            slow = sprev + cfg.slow_alpha * (e0 - sprev)
            svar = self.svar[i].astype(np.float64)
            if np.count_nonzero(first):
                slow = np.where(first, e0, slow)
                svar = np.where(first, 0.0, svar)
            ch.slow, ch.svar, ch.sstd = slow, svar, _floor_std(svar, mu, cfg)
        return ch

    def _context_channel(self, i: np.ndarray, resid: np.ndarray) -> _Context:
        """Time-of-day channel: its own slow EWMA of the residuals and long-run statistics."""
        cfg = self.config
        rok = np.isfinite(resid)
        r0 = np.where(rok, resid, 0.0)
        ccount = self.ccount[i]
        cfirst = ccount == 0
        cprev = self.cslow[i].astype(np.float64)
        cslow = np.where(cfirst, r0, cprev + cfg.context_alpha * (r0 - cprev))
        cmu = np.where(cfirst, cslow, self.cmu[i].astype(np.float64))
        cvar = np.where(cfirst, 0.0, self.cvar[i].astype(np.float64))
        return _Context(rok, ccount, cslow, cmu, cvar, _floor_std(cvar, cmu, cfg))

    def _score(
        self,
        i: np.ndarray,
        zs: list[np.ndarray],
        ch: _Channels,
        ctx: _Context | None,
        t: np.ndarray | None,
        spatial: np.ndarray | None,
        n: int,
    ) -> np.ndarray:
        """Tail scores of the channels' z-scores ``zs`` combined, daily repeats and the spatial check
        applied (the refractory period comes after)."""
        cfg = self.config
        tails = tail_score(np.concatenate(zs)) if len(zs) > 1 else tail_score(zs[0])
        s = tails[:n]
        if ch.slow is not None:
            s = np.maximum(cfg.short_weight * s, tails[n : 2 * n])
        if not ch.all_ok:
            s = np.where(ch.ok, s, 0.0)
        if ctx is not None:
            cs = tails[-n:]
            cs = np.where(ctx.rok & (ctx.ccount >= cfg.warmup), cs, 0.0)
            s = np.maximum(s, cs)
        if self.repeats is not None and t is not None:
            rep = self.repeats.step(i, t, s >= cfg.threshold)
            if np.count_nonzero(rep):
                s = np.where(rep, 0.0, s)
        if spatial is not None:
            s = np.where(spatial, 1.0, s)
        return np.asarray(s)

    def _flag(
        self, i: np.ndarray, s: np.ndarray, ch: _Channels, alert: np.ndarray, spatial: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Refractory period (score 0) and the flag of an alerting, warmed-up series:
        ``(score, flag, events since the last flag, young)``."""
        cfg = self.config
        since = self.since[i] + 1
        in_ref = since <= cfg.refractory
        any_ref = np.count_nonzero(in_ref) > 0
        if any_ref:
            s = np.where(in_ref, 0.0, s)
        young = ch.count < cfg.warmup
        flag = s >= cfg.threshold
        flag &= alert
        flag &= ~young
        if any_ref:
            flag &= ~in_ref
        if not ch.all_ok:
            flag &= ch.ok if spatial is None else (ch.ok | spatial)
        return s, flag, since, young

    def _learn(self, i: np.ndarray, ch: _Channels, young: np.ndarray) -> None:
        """Long statistics: plain running mean/var during warm-up, then EWMA; learn the clipped value."""
        cfg = self.config
        a = _learning_rate(ch.count, young, cfg)
        mu_new, var_new = _learn_clipped(ch.short, ch.mu, ch.var, ch.std, a, cfg.clip_z)
        _store(
            i,
            ch.ok,
            ch.all_ok,
            (self.mu, mu_new),
            (self.var, var_new),
            (self.short, ch.short),
            (self.count, np.minimum(ch.count + 1, _NEVER)),
        )
        if ch.slow is not None and ch.svar is not None and ch.sstd is not None:  # the slow average's spread
            svar_new = _learn_clipped(ch.slow, ch.mu, ch.svar, ch.sstd, a, cfg.clip_z)[1]
            _store(i, ch.ok, ch.all_ok, (self.slow, ch.slow), (self.svar, svar_new))

    def _learn_context(
        self,
        i: np.ndarray,
        ctx: _Context,
        rng: _Range,
        v: np.ndarray,
        dt: np.ndarray,
        flag: np.ndarray,
        n: int,
    ) -> None:
        """The context channel's statistics learn the residual; the profile the value unless flagged."""
        cfg = self.config
        ca = _learning_rate(ctx.ccount, ctx.ccount < cfg.warmup, cfg)
        cmu_new, cvar_new = _learn_clipped(ctx.cslow, ctx.cmu, ctx.cvar, ctx.cstd, ca, cfg.clip_z)
        _store(
            i,
            ctx.rok,
            np.count_nonzero(ctx.rok) == n,
            (self.cslow, ctx.cslow),
            (self.cmu, cmu_new),
            (self.cvar, cvar_new),
            (self.ccount, np.minimum(ctx.ccount.astype(np.int64) + 1, _CCOUNT_MAX)),
        )
        assert self.profile is not None
        self.profile.learn(i, rng.tbin, v, rng.level, dt, rng.new_lo, rng.new_hi, rng.fin & ~flag)

    # StreamingState protocol (errors only, every event alerting)
    def _update_unique(self, idx: np.ndarray, e: np.ndarray) -> np.ndarray:
        return self.step_unique(idx, e)[0]

    def is_anomaly(self, scores: npt.ArrayLike) -> np.ndarray:
        return np.asarray(scores) >= self.config.threshold
