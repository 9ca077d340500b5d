"""Time helpers shared by every layer: epoch seconds (float, UTC) in, epoch seconds or ISO-8601 out.

Naive datetimes and strings without an offset are UTC throughout (NAB's and the archive's
convention).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np


def utc(moment: datetime | str) -> datetime:
    """A datetime or ISO string as an aware UTC datetime (naive means UTC)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    m = moment.astimezone(UTC)
    # A plain datetime, also for subclasses such as Airflow's pendulum DateTime (which compare oddly).
    return datetime(m.year, m.month, m.day, m.hour, m.minute, m.second, m.microsecond, tzinfo=UTC)


def to_epoch(moment: datetime | str | float | int) -> float:
    """Epoch seconds from a number (taken as epoch seconds), a datetime or an ISO string (naive = UTC)."""
    if isinstance(moment, int | float):
        return float(moment)
    return utc(moment).timestamp()


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def to_epoch_seconds(timestamps: np.ndarray) -> np.ndarray:
    """datetime64 (any unit) or numbers (epoch seconds) ``(n,)`` -> float64 epoch seconds ``(n,)``."""
    arr = np.asarray(timestamps)
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[ns]").astype(np.int64) / 1e9
    return arr.astype(np.float64)
