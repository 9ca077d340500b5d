"""Window-level detection figures shared by retraining (``pipeline.retrain.evaluate``) and the NAB backtest.

A labelled anomaly *window* is caught when at least one flag falls inside it, missed otherwise;
a *false-positive run* is a maximal run of consecutive flags none of which lies in a window.
``precision = caught / (caught + fp_runs)``, ``recall = caught / (caught + missed)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass
class WindowPRF:
    """Window-level counts: ``caught`` windows with >= 1 flag, ``missed`` windows, ``fp_runs``
    maximal runs of consecutive flags touching no window."""

    caught: int = 0
    missed: int = 0
    fp_runs: int = 0

    def __add__(self, other: WindowPRF) -> WindowPRF:
        return WindowPRF(self.caught + other.caught, self.missed + other.missed, self.fp_runs + other.fp_runs)

    @property
    def precision(self) -> float:
        d = self.caught + self.fp_runs
        return self.caught / d if d else float("nan")

    @property
    def recall(self) -> float:
        d = self.caught + self.missed
        return self.caught / d if d else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return float("nan") if (math.isnan(p) or math.isnan(r)) else 0.0
        return 2 * p * r / (p + r)


def window_of_rows(ts: ArrayLike, windows: Iterable[tuple[float, float]]) -> np.ndarray:
    """Index of the window holding each row ``(n,)`` int64, -1 outside every window.

    ``ts (n,)`` and the inclusive ``(start, end)`` windows in the same units (e.g. epoch seconds);
    a row in several (overlapping) windows belongs to the first.
    """
    ts = np.asarray(ts, dtype=np.float64)
    out = np.full(len(ts), -1, dtype=np.int64)
    for k, (a, b) in enumerate(windows):
        out[(out < 0) & (ts >= a) & (ts <= b)] = k
    return out


def window_prf(flags: ArrayLike, window: ArrayLike, scored: Iterable[int] | None = None) -> WindowPRF:
    """Window counts of boolean ``flags (n,)`` given each row's window ``window (n,)`` (-1: none).

    ``scored``: the window ids that count as caught/missed (default: every id present in
    ``window``, i.e. windows with at least one row).
    """
    f = np.asarray(flags, dtype=bool)
    window = np.asarray(window, dtype=np.int64)
    if len(f) != len(window):
        raise ValueError(f"flags ({len(f)}) and window ({len(window)}) differ in length")
    ids = np.unique(window[window >= 0]) if scored is None else np.asarray(list(scored), dtype=np.int64)
    hit = np.unique(window[f & (window >= 0)])
    caught = int(np.isin(ids, hit).sum())
    padded = np.r_[False, f, False].astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    inside = np.r_[0, np.cumsum(window >= 0)]
    fp_runs = int(np.sum(inside[ends] - inside[starts] == 0))
    return WindowPRF(caught, len(ids) - caught, fp_runs)
