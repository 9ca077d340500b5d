"""Test oracle: a scalar, one-series twin of ``ErrorLikelihood`` (same arithmetic, written out per event).

Not shipped: the package scores with the vectorised ``models.detection.thresholds.error_likelihood``;
the tests check it (and the detector, and ``pipeline.backtest.crossval.rescore``) against this
plain loop, kept in step with it by hand. Also the scalar twins of the time-of-day quantisation and
the daily-repeat step.
"""

from __future__ import annotations

import math

import numpy as np

from models.detection.thresholds.daily_repeat import _DAYS, _REPEAT
from models.detection.thresholds.error_likelihood import _CCOUNT_MAX, _LOG_EPS, _NEVER, _SQRT2, LikelihoodConfig
from models.detection.thresholds.time_of_day import _SCALE, DAY_SECONDS, UNSEEN


def decode_one(q: int, lo: float, hi: float) -> float:
    if q == UNSEEN:
        return math.nan
    width = hi - lo if hi > lo else 0.0
    return (lo if math.isfinite(lo) else 0.0) + (q / _SCALE) * width


def encode_one(p: float, lo: float, hi: float) -> int:
    if math.isnan(p):
        return int(UNSEEN)
    width = hi - lo if hi > lo else 0.0
    u = (p - (lo if math.isfinite(lo) else 0.0)) / width if width > 0 else 0.0
    return round(min(max(u, 0.0), 1.0) * _SCALE)


def bin_one(t: float, bins: int) -> int:
    return min(int((t % DAY_SECONDS) * (bins / DAY_SECONDS)), bins - 1)


def repeat_one(codes: list[int], t: float, bins: int) -> bool:
    """Scalar twin of :meth:`DailyRepeats.step` for one hot value (``codes``: the series' bins, updated)."""
    b = bin_one(t, bins)
    today = math.floor(t / DAY_SECONDS) % _DAYS + 1
    yesterday = _DAYS if today == 1 else today - 1
    last = codes[b] & (_REPEAT - 1)
    repeat = last == yesterday or (last == today and codes[b] >= _REPEAT)
    codes[b] = today + (_REPEAT if repeat else 0)
    return repeat


def score_series(
    errors, config: LikelihoodConfig | None = None, values=None, alert=None, times=None
) -> tuple[np.ndarray, np.ndarray]:
    """One series' ``errors (time,)`` (+ ``values``, ``alert``, epoch-second ``times``) -> ``(scores (time,),
    flags (time,))``. The time-of-day context needs ``values`` and ``times`` (each row's ``dt`` is the
    step from the row before), the daily repeats ``times``.

    Scalar loop with the same arithmetic as :class:`ErrorLikelihood` (tested equal).
    """
    cfg = config or LikelihoodConfig()
    errors = np.asarray(errors, dtype=np.float64)
    n = len(errors)
    vals = None if values is None else np.asarray(values, dtype=np.float64)
    times = None if times is None else np.asarray(times, dtype=np.float64)
    al = np.ones(n, dtype=bool) if alert is None else np.broadcast_to(np.asarray(alert, dtype=bool), (n,))
    scores = np.zeros(n)
    flags = np.zeros(n, dtype=bool)
    count, short, mu, var, since = 0, 0.0, 0.0, 0.0, _NEVER
    slow, svar, f32 = 0.0, 0.0, np.float32  # state stored as float32 like the vector path
    sla, sw = cfg.slow_alpha, cfg.short_weight
    lo, hi = math.inf, -math.inf
    sa, la, warmup, ref = cfg.short_alpha, cfg.long_alpha, cfg.warmup, cfg.refractory
    thr, clip_z, msf, ms, tol = cfg.threshold, cfg.clip_z, cfg.min_std_frac, cfg.min_std, cfg.spatial_tolerance
    erfc, log, sqrt, isfinite = math.erfc, math.log, math.sqrt, math.isfinite
    context = cfg.seasonal_bins is not None and vals is not None and times is not None
    if context:
        bins, ca_alpha = cfg.seasonal_bins, cfg.context_alpha
        horizon = cfg.seasonal_days * (DAY_SECONDS / bins)
        prof = [int(UNSEEN)] * bins
        cslow, cmu, cvar, ccount, t_prev = 0.0, 0.0, 0.0, 0, -math.inf
    track = vals is not None and (tol is not None or context)
    repeat_codes = [0] * cfg.repeat_bins if cfg.repeat_bins is not None and times is not None else None

    def tail(z: float) -> float:
        q = 0.5 * erfc(z / _SQRT2)
        return min(max(log(q + 1e-10) / _LOG_EPS, 0.0), 1.0)

    for t in range(n):
        e = errors[t]
        spatial = False
        resid = math.nan
        if track:
            v = vals[t]
            if isfinite(v):
                if tol is not None:
                    spatial = hi > lo and (v > hi + tol * (hi - lo) or v < lo - tol * (hi - lo))
                lo_old, hi_old = lo, hi
                lo, hi = min(lo, v), max(hi, v)
                if context:
                    if lo != lo_old or hi != hi_old:
                        prof = [encode_one(decode_one(q, lo_old, hi_old), lo, hi) for q in prof]
                    tbin = bin_one(times[t], bins)
                    level = decode_one(prof[tbin], lo, hi)
                    resid = abs(v - level)
        ok = isfinite(e)
        if ok:
            if count == 0:
                short, mu, var = e, e, 0.0
                slow, svar = e, 0.0
            elif sla is not None:
                short = short + sa * (e - short)
                slow = slow + sla * (e - slow)
            else:
                short = short + sa * (e - short)
            std = max(sqrt(var), msf * abs(mu), ms)
            s = tail((short - mu) / std)
            if sla is not None:
                sstd = max(sqrt(svar), msf * abs(mu), ms)
                s = max(sw * s, tail((slow - mu) / sstd))
        else:
            s = 0.0
        rok = context and isfinite(resid)
        if rok:
            if ccount == 0:
                cslow, cmu, cvar = resid, resid, 0.0
            else:
                cslow = cslow + ca_alpha * (resid - cslow)
            cstd = max(sqrt(cvar), msf * abs(cmu), ms)
            if ccount >= warmup:
                s = max(s, tail((cslow - cmu) / cstd))
        if repeat_codes is not None and s >= thr and repeat_one(repeat_codes, times[t], cfg.repeat_bins):
            s = 0.0
        if spatial:
            s = 1.0
        since += 1
        in_ref = since <= ref
        if in_ref:
            s = 0.0
        fl = bool(al[t]) and (ok or spatial) and count >= warmup and not in_ref and s >= thr
        if rok:
            ca = max(la, 1.0 / (ccount + 1.0)) if ccount < warmup else la
            dc = min(cslow, cmu + clip_z * cstd) - cmu
            cslow = float(f32(cslow))
            cmu, cvar = float(f32(cmu + ca * dc)), float(f32((1 - ca) * (cvar + ca * dc * dc)))
            ccount = min(ccount + 1, _CCOUNT_MAX)
        if context:  # the profile learns the value unless it was flagged
            if isfinite(vals[t]) and not fl:
                beta = min((times[t] - t_prev) / horizon, 1.0)
                prof[tbin] = encode_one(vals[t] if math.isnan(level) else level + beta * (vals[t] - level), lo, hi)
            t_prev = times[t]
        if ok:
            a = max(la, 1.0 / (count + 1.0)) if count < warmup else la
            d = min(short, mu + clip_z * std) - mu
            if sla is not None:
                ds = min(slow, mu + clip_z * sstd) - mu
                slow, svar = float(f32(slow)), float(f32((1 - a) * (svar + a * ds * ds)))
            mu = float(f32(mu + a * d))
            var = float(f32((1 - a) * (var + a * d * d)))
            short = float(f32(short))
            count += 1
        if fl:
            since = 0
        scores[t], flags[t] = s, fl
    return scores, flags
