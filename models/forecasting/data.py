"""Load training series from NAB CSVs, a directory of them, or Parquet (series, ts, value).

Every series is put on a regular time grid (``models.forecasting.windows.regularize``): missing timestamps
become NaN, which the window builders then drop. Series ids: for a directory, the path relative to
it without ``.csv``; for a single CSV, the file stem; for Parquet, the ``series`` column (numeric
``ts`` is epoch seconds, as ``pipeline.archive.format`` writes it). ``load_label_windows`` reads NAB label
windows (the one loader the demo and retraining use).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from models.core.timeutil import to_epoch
from models.forecasting.windows import regularize


@dataclass
class TrainingData:
    series: dict[str, np.ndarray]  # id -> values (time,) on a regular grid, NaN for gaps
    start: str | None  # earliest timestamp (ISO 8601) over all series
    end: str | None  # latest timestamp
    timestamps: dict[str, np.ndarray] = field(default_factory=dict)  # id -> grid epoch seconds (time,)

    @property
    def data_range(self) -> tuple[str, str] | None:
        return (self.start, self.end) if self.start and self.end else None


def _regular(ts: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ts_ns = np.asarray(ts, dtype="datetime64[ns]").astype(np.int64)
    return regularize(ts_ns, np.asarray(values, dtype=np.float64))


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def _parquet_times(ts: Any) -> Any:
    """A Parquet ``ts`` column as UTC datetimes: numbers are epoch seconds (the archive's unit), not ns."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(ts):
        return pd.to_datetime(ts, unit="s", utc=True)
    return pd.to_datetime(ts, utc=True)


def load_label_windows(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """NAB ``combined_windows.json``: file key (e.g. ``realTraffic/speed_7578.csv``) -> inclusive
    ``[(start, end)]`` in epoch seconds. Naive timestamps are UTC (NAB's convention).

    Raises ``ValueError`` naming the file when it is not a JSON object of lists of pairs.
    """
    path = Path(path)
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of file -> [[start, end], ...]")
    try:
        return {key: [(to_epoch(str(a)), to_epoch(str(b))) for a, b in windows] for key, windows in raw.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: bad label window ({error})") from error


def load_training_data(path: str | Path) -> TrainingData:
    """Read ``path`` (CSV file, directory of CSVs, or ``.parquet``) into regularised series."""
    import pandas as pd

    path = Path(path)
    frames: dict[str, tuple] = {}
    if path.is_dir():
        files = sorted(path.rglob("*.csv"))
        if not files:
            raise FileNotFoundError(f"no .csv files under {path}")
        for f in files:
            df = pd.read_csv(f, usecols=["timestamp", "value"], parse_dates=["timestamp"])
            frames[f.relative_to(path).with_suffix("").as_posix()] = (df["timestamp"], df["value"])
    elif path.suffix == ".parquet":
        df = pd.read_parquet(path, columns=["series", "ts", "value"])
        for sid, g in df.groupby("series", sort=True):
            frames[str(sid)] = (_parquet_times(g["ts"]), g["value"])
    elif path.is_file():
        df = pd.read_csv(path, usecols=["timestamp", "value"], parse_dates=["timestamp"])
        frames[path.stem] = (df["timestamp"], df["value"])
    else:
        raise FileNotFoundError(path)
    series, stamps, lo, hi = {}, {}, None, None
    for sid, (ts, values) in frames.items():
        grid, vals = _regular(ts, values)
        if len(grid) == 0:
            continue
        series[sid] = vals
        stamps[sid] = grid / 1e9  # for models.forecasting.calendar features (fit(..., timestamps=...))
        lo = grid[0] if lo is None else min(lo, grid[0])
        hi = grid[-1] if hi is None else max(hi, grid[-1])
    return TrainingData(series, _iso(lo) if lo is not None else None, _iso(hi) if hi is not None else None, stamps)


def load_training_series(path: str | Path) -> dict[str, np.ndarray]:
    """Series id -> values ``(time,)`` (regular grid, NaN for gaps); see module docstring."""
    return load_training_data(path).series
