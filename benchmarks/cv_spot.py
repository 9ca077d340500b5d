"""Extreme-value (SPOT) scoring of the forecast errors, compared under the cross-validation protocol.

SPOT (Siffer et al., KDD 2017) fits a generalised Pareto distribution to the peaks of a series'
errors over a high quantile and scores each new error by its estimated tail probability. Here it
replaces the Gaussian tail of the likelihood's forecast channel (same short error average, same
spatial check and refractory period, no time-of-day context or daily repeats), and is compared
with the likelihood under the same switches, on stored replays:

    .venv/bin/python benchmarks/backtest_nab.py --data NAB --model-source fleet-finetune --seed S \\
        --save-arrays /tmp/r_S.pkl                      # one replay per seed
    .venv/bin/python benchmarks/cv_spot.py /tmp/r_0.pkl /tmp/r_1.pkl /tmp/r_2.pkl

Prints the pooled held-out NAB score (threshold chosen on the other groups) of each, per seed.
Not shipped: it keeps every peak per series (O(peaks) memory), and it did not win (docs/detection.md).
"""

from __future__ import annotations

import math
import pickle
import sys

import numpy as np

from pipeline.backtest.crossval import Scored, evaluate, rescore
from pipeline.backtest.nab_scoring import point_table

_LOG_EPS = math.log(1e-10)


def _gpd_moments(peaks: np.ndarray) -> tuple[float, float]:
    """Method-of-moments GPD fit of the excesses: ``(shape gamma, scale sigma)``."""
    m, v = float(peaks.mean()), float(peaks.var())
    if v <= 0 or m <= 0:
        return 0.0, max(m, 1e-12)
    gamma = 0.5 * (1.0 - m * m / v)
    return gamma, 0.5 * m * (m * m / v + 1.0)


def spot_scores(
    errors: np.ndarray,
    values: np.ndarray,
    probation: int,
    *,
    short_alpha: float = 0.1,
    level: float = 0.98,
    refractory: int = 40,
    spatial_tolerance: float = 0.05,
    warmup: int = 100,
    refit_every: int = 20,
) -> np.ndarray:
    """Score in [0, 1] per row: ``log(P(short > x) + 1e-10) / log(1e-10)`` from a GPD tail over ``level``.

    One scalar loop over the rows (about 55 lines): the baseline's whole state machine in one place."""
    n = len(errors)
    out = np.zeros(n)
    hist: list[float] = []
    short, count, since = 0.0, 0, 1 << 30
    lo, hi = math.inf, -math.inf
    t, gamma, sigma, last_fit = math.inf, 0.0, 1.0, -1
    for i in range(n):
        e, v = errors[i], values[i]
        spatial = False
        if math.isfinite(v):
            spatial = hi > lo and (v > hi + spatial_tolerance * (hi - lo) or v < lo - spatial_tolerance * (hi - lo))
            lo, hi = min(lo, v), max(hi, v)
        s = 0.0
        if math.isfinite(e):
            short = e if count == 0 else short + short_alpha * (e - short)
            count += 1
            if count >= warmup:
                if last_fit < 0 or count - last_fit >= refit_every:
                    arr = np.asarray(hist)
                    t = float(np.quantile(arr, level))
                    pk = arr[arr > t] - t
                    gamma, sigma = _gpd_moments(pk) if len(pk) >= 5 else (0.0, max(float(arr.std()), 1e-12))
                    frac = max(len(pk), 1) / len(arr)
                    last_fit = count
                if short > t:
                    x = (short - t) / sigma
                    tail = math.exp(-x) if abs(gamma) < 1e-6 else max(1.0 + gamma * x, 0.0) ** (-1.0 / gamma)
                    p = frac * tail
                else:
                    p = 1.0
                s = min(max(math.log(p + 1e-10) / _LOG_EPS, 0.0), 1.0)
            hist.append(min(short, t + 10 * sigma) if math.isfinite(t) else short)  # flagged peaks clipped
        if spatial:
            s = 1.0
        since += 1
        if since <= refractory:
            s = 0.0
        if i >= probation and s >= 0.5:
            since = 0
        out[i] = s
    out[:probation] = 0.0
    return out


def main(paths: list[str]) -> None:
    base = {"slow_alpha": None, "seasonal_bins": None, "repeat_bins": None}
    for path in paths:
        with open(path, "rb") as fh:
            results = pickle.load(fh)
        tables = {r.name: point_table(len(r.values), r.windows, r.probation) for r in results}
        lik, spot = Scored({}, base), Scored({}, base)
        for r in results:
            s, f = rescore(r, base)
            lik.files[r.name] = (s, f, tables[r.name])
            sp = spot_scores(r.error, r.values, r.probation)
            spot.files[r.name] = (sp, sp >= 0.5, tables[r.name])
        per, _ = evaluate({"likelihood": lik, "spot": spot}, rule="max")
        print(path, {k: (round(v.pooled, 1), round(v.pooled_own, 1), round(v.in_sample, 1)) for k, v in per.items()})


if __name__ == "__main__":
    main(sys.argv[1:])
