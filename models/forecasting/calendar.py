"""Calendar features derived from timestamps: where a value sits in the daily and weekly cycle.

``calendar_features(epoch_s (n,), week=True) -> (n, calendar_dim(week))`` float32 columns
``[sin(day), cos(day), sin(week), cos(week)]`` (the last two only with ``week``) with ``day`` = 2*pi * time-of-day / 24 h and
``week`` = 2*pi * (days since Monday 00:00 + time-of-day) / 7 d, computed in UTC from epoch
seconds (naive timestamps are read as UTC, as everywhere else in tsad). Pure numpy, vectorised:
the streaming scorer builds them per round from the events' ``ts``, training from the series'
timestamps, so a model never needs a long window or a per-series buffer to see its daily cycle.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from models.core.timeutil import to_epoch_seconds as to_epoch_seconds  # re-exported: part of the calendar API

CALENDAR_DIM = 4  # with the weekly columns; 2 without


def calendar_dim(week: bool = True) -> int:
    """Number of calendar columns: 4 with the weekly cycle, 2 for time of day only."""
    return CALENDAR_DIM if week else 2


DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
_MONDAY_OFFSET_S = 3 * DAY_S  # 1970-01-01 was a Thursday: +3 days puts Monday 00:00 at phase 0


def calendar_features(epoch_s: ArrayLike, week: bool = True) -> np.ndarray:
    """``(n,)`` epoch seconds (float or int) -> ``(n, calendar_dim(week))`` float32; NaN in, NaN out."""
    t = np.asarray(epoch_s, dtype=np.float64).reshape(-1)
    day = (2 * np.pi / DAY_S) * np.mod(t, DAY_S)
    out = np.empty((len(t), calendar_dim(week)), dtype=np.float32)
    out[:, 0], out[:, 1] = np.sin(day), np.cos(day)
    if week:
        wk = (2 * np.pi / WEEK_S) * np.mod(t + _MONDAY_OFFSET_S, WEEK_S)
        out[:, 2], out[:, 3] = np.sin(wk), np.cos(wk)
    return out


def with_calendar(values_2d: np.ndarray, epoch_s: np.ndarray, week: bool = True) -> np.ndarray:
    """Append calendar columns to ``(time, features)`` values (already normalised); ``epoch_s (time,)``."""
    t = to_epoch_seconds(epoch_s)
    if len(t) != len(values_2d):
        raise ValueError(f"{len(t)} timestamps for {len(values_2d)} values")
    return np.concatenate([values_2d, calendar_features(t, week).astype(values_2d.dtype)], axis=1)
