"""Step 1 of a retraining run: the training range, the held-out cut and the eligible series of a data interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from models.core.settings import Settings
from models.core.timeutil import utc
from pipeline.retrain.contracts import NotEnoughDataError, Plan
from pipeline.retrain.series import SeriesSet, load_series


def _held_out_cut(data: SeriesSet, holdout_fraction: float) -> float:
    """Epoch seconds after which the most recent ``holdout_fraction`` of the range (over all series) lies."""
    t_min = min(ts[0] for ts, _ in data.series.values())
    t_max = max(ts[-1] for ts, _ in data.series.values())
    return float(t_min + (t_max - t_min) * (1.0 - holdout_fraction))


def plan(settings: Settings, interval_start: datetime | str, interval_end: datetime | str) -> Plan:
    """Training range ``[min(interval_start, interval_end - lookback), interval_end)``, its held-out cut
    and per-series counts. Raises ``NotEnoughDataError`` when no series has ``min_points`` values
    before the cut and ``min_holdout_points`` after it."""
    knobs = settings.retrain
    end = utc(interval_end)
    start = min(utc(interval_start), end - timedelta(hours=knobs.lookback_hours))
    data = load_series(settings.archive_dir, start.isoformat(), end.isoformat())
    if not data.series:
        raise NotEnoughDataError(
            f"no archived events in [{start.isoformat()}, {end.isoformat()}) under {settings.archive_dir}"
        )
    cut = _held_out_cut(data, knobs.holdout_fraction)
    eligible: list[str] = []
    counts: dict[str, tuple[int, int]] = {}
    for sid, (ts, values) in data.series.items():
        ok = ~np.isnan(values)
        n_train, n_hold = int((ok & (ts < cut)).sum()), int((ok & (ts >= cut)).sum())
        counts[sid] = (n_train, n_hold)
        if n_train >= knobs.min_points and n_hold >= knobs.min_holdout_points:
            eligible.append(sid)
    if not eligible:
        shown = {s: list(c) for s, c in list(counts.items())[:5]}
        raise NotEnoughDataError(
            f"too little data in [{start.isoformat()}, {end.isoformat()}): {len(data.series)} series, "
            f"none with >= {knobs.min_points} values before the held-out cut and >= "
            f"{knobs.min_holdout_points} after it (train/held-out counts: {shown})"
        )
    return Plan(
        interval_start=utc(interval_start).isoformat(),
        interval_end=utc(interval_end).isoformat(),
        start=start.isoformat(),
        end=end.isoformat(),
        cut=cut,
        cut_iso=datetime.fromtimestamp(cut, UTC).isoformat(),
        series=tuple(eligible),
        counts=counts,
    )
