"""The archived series a retraining run works on: read from the Parquet archive onto a regular grid,
and the subset one job trains on."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from models.core.settings import Settings
from pipeline.retrain.contracts import Job


@dataclass
class SeriesSet:
    """Regularised series of the training range: id -> (grid epoch seconds (time,), values (time,))."""

    series: dict[str, tuple[np.ndarray, np.ndarray]]

    def only(self, ids: set[str] | tuple[str, ...]) -> SeriesSet:
        """The series whose ids are in ``ids``."""
        keep = set(ids)
        return SeriesSet({s: v for s, v in self.series.items() if s in keep})


def load_series(archive_dir: str, start: str, end: str) -> SeriesSet:
    """Archive events in [start, end) per series, on a regular grid (gaps NaN, duplicate ts: last)."""
    from models.forecasting.windows import regularize
    from pipeline.archive.format import read_archive

    frame = read_archive(archive_dir, start, end)
    out = {}
    for sid, group in frame.groupby("series", sort=True):
        ts_ns = np.rint(group["ts"].to_numpy() * 1e9).astype(np.int64)
        grid, values = regularize(ts_ns, group["value"].to_numpy())
        out[str(sid)] = (grid / 1e9, values)
    return SeriesSet(out)


def select_job_series(settings: Settings, data: SeriesSet, job: Job) -> SeriesSet:
    """The series ``job`` trains on: those the routing file routes to its group, else those matching
    its glob(s) (``TSAD_RETRAIN_GROUPS``, overlapping groups allowed)."""
    if settings.routing:
        from models.routing import Routing

        routing = Routing.load(settings.routing)
        return SeriesSet({s: v for s, v in data.series.items() if routing.group_of(s) == job.group})
    return SeriesSet({s: v for s, v in data.series.items() if any(fnmatch.fnmatchcase(s, p) for p in job.patterns)})


def job_series(settings: Settings, job: Job, start: str, end: str, eligible: tuple[str, ...]) -> SeriesSet:
    """The eligible series of ``job`` in [start, end), read from ``settings.archive_dir``."""
    data = load_series(settings.archive_dir, start, end)
    return select_job_series(settings, data, job).only(eligible)
