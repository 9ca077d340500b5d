"""Archive format (Kafka-free): the Parquet schema, the file layout, atomic writes and reads.

Layout (date/hour of the event time, UTC):

    archive_dir/date=YYYY-MM-DD/hour=HH/part-<partition>-<firstoffset>-<lastoffset>-<digest>.parquet

with columns ``series`` (str), ``ts`` (float64 epoch seconds), ``value`` (float64), ``partition``
(int32), ``offset`` (int64). Each file is written to a hidden temporary name in the same directory,
fsync'd and renamed into place with ``os.replace``. ``<digest>`` is a short hash of the file's
rows, so a file is never replaced by different content; rewriting the same records gives the same
name and replaces the file with identical bytes (idempotent). ``read_archive`` removes the
duplicates of at-least-once delivery by ``(partition, offset, series, ts)``: a real redelivery is
identical, while offsets restarting at 0 (broker restarted, topic recreated) give rows that share
``(partition, offset)`` but not content, and all of them are kept. The writer is
``pipeline.archive.consumer``; retraining reads through this module alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.core.timeutil import to_epoch

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("series", pa.string()),
        ("ts", pa.float64()),
        ("value", pa.float64()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
_TMP_PREFIX = ".tmp-"
DEDUP_KEY = ["partition", "offset", "series", "ts"]  # a redelivered record is identical on all four


class ArchiveError(RuntimeError):
    """The archive could not be read (e.g. a file that is not valid Parquet)."""


def content_digest(frame: pd.DataFrame) -> str:
    """Short, deterministic hash of the archived columns of ``frame`` (row order included)."""
    hashed = pd.util.hash_pandas_object(frame[list(COLUMNS)], index=False).to_numpy()
    return hashlib.blake2b(hashed.tobytes(), digest_size=5).hexdigest()


def file_name(partition: int, first_offset: int, last_offset: int, digest: str) -> str:
    """``part-<partition>-<first offset>-<last offset>-<digest>.parquet``."""
    return f"part-{partition}-{first_offset}-{last_offset}-{digest}.parquet"


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to a temporary file next to ``path``, fsync it, then ``os.replace`` it in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{path.name}")
    table = pa.Table.from_pandas(frame[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def write_files(archive_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Write buffered rows as one file per (partition, date, hour); returns the paths written."""
    if frame.empty:
        return []
    stamps = pd.to_datetime(frame["ts"], unit="s", utc=True)
    frame = frame.assign(_date=stamps.dt.strftime("%Y-%m-%d"), _hour=stamps.dt.strftime("%H"))
    written = []
    for (partition, date, hour), group in frame.groupby(["partition", "_date", "_hour"], sort=True):
        group = group.sort_values("offset", kind="stable")
        name = file_name(
            int(partition), int(group["offset"].iloc[0]), int(group["offset"].iloc[-1]), content_digest(group)
        )
        path = Path(archive_dir) / f"date={date}" / f"hour={hour}" / name
        write_parquet_atomic(group, path)
        written.append(path)
    return written


# -- reading -------------------------------------------------------------------------------------


Moment = datetime | str | float | int | None  # a range bound: None = open; naive and offset-less = UTC


def _to_epoch(moment: Moment) -> float | None:
    return None if moment is None else to_epoch(moment)


def _hour_dirs(archive_dir: Path, start: float | None, end: float | None) -> list[Path]:
    """Hour directories that can hold events in [start, end) (pruned by their names)."""
    out = []
    for date_dir in sorted(archive_dir.glob("date=*")):
        for hour_dir in sorted(date_dir.glob("hour=*")):
            try:
                begin = datetime.strptime(f"{date_dir.name[5:]} {hour_dir.name[5:]}", "%Y-%m-%d %H")
            except ValueError:
                log.warning("ignoring unexpected directory %s", hour_dir)
                continue
            begin_s = begin.replace(tzinfo=UTC).timestamp()
            if (end is not None and begin_s >= end) or (start is not None and begin_s + 3600 <= start):
                continue
            out.append(hour_dir)
    return out


def list_files(archive_dir: Path | str, start: Moment = None, end: Moment = None) -> list[Path]:
    """Archive files (temporary ones excluded) whose hour overlaps [start, end)."""
    files: list[Path] = []
    for hour_dir in _hour_dirs(Path(archive_dir), _to_epoch(start), _to_epoch(end)):
        files.extend(p for p in sorted(hour_dir.glob("part-*.parquet")))
    return files


def read_archive(archive_dir: Path | str, start: Moment = None, end: Moment = None) -> pd.DataFrame:
    """Archived events with ``start <= ts < end`` (datetimes, ISO strings or epoch seconds; None = open).

    Duplicates from at-least-once delivery are removed by ``(partition, offset, series, ts)`` (rows
    that only share ``(partition, offset)`` come from restarted offsets and are kept). Returns columns
    ``series, ts, value, partition, offset`` sorted by series then ts; empty (same columns) when
    nothing matches. Raises ``ArchiveError`` naming the file if one cannot be read.
    """
    start_s, end_s = _to_epoch(start), _to_epoch(end)
    frames = []
    for path in list_files(archive_dir, start_s, end_s):
        try:
            frames.append(pq.read_table(path, schema=SCHEMA).to_pandas())
        except (pa.ArrowException, OSError) as error:
            raise ArchiveError(f"cannot read archive file {path}: {error}") from error
    if not frames:
        return SCHEMA.empty_table().to_pandas()
    frame = pd.concat(frames, ignore_index=True)
    mask = np.ones(len(frame), dtype=bool)
    if start_s is not None:
        mask &= frame["ts"].to_numpy() >= start_s
    if end_s is not None:
        mask &= frame["ts"].to_numpy() < end_s
    frame = frame[mask].drop_duplicates(DEDUP_KEY, keep="last")
    return frame.sort_values(["series", "ts", "partition", "offset"], kind="stable").reset_index(drop=True)
