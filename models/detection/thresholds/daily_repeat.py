"""Daily repeats: an alarm in the same hour as one the day before is a scheduled job, not an incident.

Ops series are full of jobs that run every day at the same time (backups, batch loads, cron): each
run is a spike the forecaster cannot see coming, and without this step it would alarm every day.
Per series and per time-of-day bin (``bins`` per UTC day; 24: hours) one byte remembers the last
day that bin was *hot* (its score reached the threshold, flagged or not: warm-up, replays and the
refractory period count as evidence too) and whether that was itself a repeat:

    code = (day mod 127) + 1   (low 7 bits; 0: never hot)     + 128 if it was a repeat

A hot value is a *repeat* when its bin was hot yesterday, or already today as a repeat. The
caller (:class:`models.detection.thresholds.error_likelihood.ErrorLikelihood`) scores repeats 0 except for
the spatial check (a value outside the range ever seen still alarms). A bin last hot exactly a
multiple of 127 days before yesterday aliases as "yesterday" (one alarm suppressed); a weekday job
alarms again on Monday (its bin was not hot on Sunday).

Vectorised over distinct series ``i (n,)`` with epoch-second times ``t (n,)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.detection.thresholds.time_of_day import DAY_SECONDS, bin_of

_REPEAT = 128
_DAYS = 127


def day_code(t: npt.ArrayLike) -> np.ndarray:
    """Epoch seconds ``t (n,)`` -> the day's code 1..127 (``(day mod 127) + 1``), int64."""
    return np.mod(np.floor(np.asarray(t, dtype=np.float64) / DAY_SECONDS).astype(np.int64), _DAYS) + 1


class DailyRepeats:
    """Per-series, per-bin memory of the last hot day; see the module docstring."""

    def __init__(self, bins: int = 24):
        if bins < 1:
            raise ValueError("bins must be >= 1")
        self.bins = int(bins)
        self.code = np.zeros((0, self.bins), dtype=np.uint8)

    def bytes_per_series(self) -> int:
        return self.bins

    def resize(self, n: int) -> None:
        if n > len(self.code):
            self.code = np.concatenate([self.code, np.zeros((n - len(self.code), self.bins), np.uint8)])

    def reset(self, idx: np.ndarray) -> None:
        self.code[idx] = 0

    def step(self, i: np.ndarray, t: np.ndarray, hot: np.ndarray) -> np.ndarray:
        """Record the hot values ``hot (n,)`` of rows ``i`` at ``t``; returns which of them are repeats."""
        if not np.count_nonzero(hot):
            return np.zeros(len(i), dtype=bool)
        i, t = i[hot], t[hot]
        b = bin_of(t, self.bins)
        today = day_code(t)
        yesterday = np.where(today == 1, _DAYS, today - 1)
        code = self.code[i, b].astype(np.int64)
        last = code & (_REPEAT - 1)
        repeat = (last == yesterday) | ((last == today) & (code >= _REPEAT))
        self.code[i, b] = (today + np.where(repeat, _REPEAT, 0)).astype(np.uint8)
        out = np.zeros(len(hot), dtype=bool)
        out[np.flatnonzero(hot)] = repeat
        return out
