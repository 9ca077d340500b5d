"""Stream archive: the events topic, validated, as Parquet files partitioned by date and hour.

``Archiver`` is a consumer in its own group (``settings.kafka.archive_group_id``) that parses
every message with ``pipeline.events.parse_event``; invalid ones are counted by reason in
``ArchiverMetrics`` and not archived (the scorer's dead-letter topic keeps them). Valid events are
buffered and flushed on size (``flush_every_events``) or age (``flush_interval_s``) to

    archive_dir/date=YYYY-MM-DD/hour=HH/part-<partition>-<firstoffset>-<lastoffset>-<digest>.parquet

(date/hour of the event time, UTC) with columns ``series`` (str), ``ts`` (float64 epoch seconds),
``value`` (float64), ``partition`` (int32), ``offset`` (int64). Each file is written to a hidden
temporary name in the same directory, fsync'd and renamed into place with ``os.replace``; offsets
are committed only after every file of a flush is in place. Delivery is at-least-once: a crash
between rename and commit re-archives some records (possibly under other file names), and
``read_archive`` removes the duplicates by ``(partition, offset, series, ts)``: a real redelivery is
identical, while offsets restarting at 0 (broker restarted, topic recreated) give rows that share
``(partition, offset)`` but not content, and all of them are kept. ``<digest>`` is a short hash of
the file's rows, so a file is never replaced by different content; rewriting the same records gives
the same name and replaces the file with identical bytes (idempotent).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.events import Event, parse_event
from pipeline.metrics import ArchiverMetrics
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("series", pa.string()),
    ("ts", pa.float64()),
    ("value", pa.float64()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
])
COLUMNS = tuple(SCHEMA.names)
_TMP_PREFIX = ".tmp-"
DEDUP_KEY = ["partition", "offset", "series", "ts"]  # a redelivered record is identical on all four


class ArchiveError(RuntimeError):
    """The archive could not be read (e.g. a file that is not valid Parquet)."""


def partition_dir(archive_dir: Path, ts: float) -> Path:
    """``archive_dir/date=YYYY-MM-DD/hour=HH`` for an event time in epoch seconds (UTC)."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return Path(archive_dir) / f"date={moment:%Y-%m-%d}" / f"hour={moment:%H}"


def content_digest(frame: pd.DataFrame) -> str:
    """Short, deterministic hash of the archived columns of ``frame`` (row order included)."""
    hashed = pd.util.hash_pandas_object(frame[list(COLUMNS)], index=False).to_numpy()
    return hashlib.blake2b(hashed.tobytes(), digest_size=5).hexdigest()


def file_name(partition: int, first_offset: int, last_offset: int, digest: str) -> str:
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


@dataclass
class _Buffer:
    """Valid events not yet on disk, and the highest offset read per partition (valid or not)."""

    series: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    partition: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    last_offset: dict[int, int] = field(default_factory=dict)
    started: float | None = None

    def __len__(self) -> int:
        return len(self.offset)

    def add(self, event: Event, partition: int, offset: int) -> None:
        self.series.append(event.series)
        self.ts.append(event.ts)
        self.value.append(event.value)
        self.partition.append(partition)
        self.offset.append(offset)

    def saw(self, partition: int, offset: int) -> None:
        if self.started is None:
            self.started = time.monotonic()
        if offset > self.last_offset.get(partition, -1):
            self.last_offset[partition] = offset

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "series": pd.Series(self.series, dtype=object),
            "ts": np.asarray(self.ts, dtype=np.float64),
            "value": np.asarray(self.value, dtype=np.float64),
            "partition": np.asarray(self.partition, dtype=np.int32),
            "offset": np.asarray(self.offset, dtype=np.int64),
        })


def write_files(archive_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Write buffered rows as one file per (partition, date, hour); returns the paths written."""
    if frame.empty:
        return []
    stamps = pd.to_datetime(frame["ts"], unit="s", utc=True)
    frame = frame.assign(_date=stamps.dt.strftime("%Y-%m-%d"), _hour=stamps.dt.strftime("%H"))
    written = []
    for (partition, date, hour), group in frame.groupby(["partition", "_date", "_hour"], sort=True):
        group = group.sort_values("offset", kind="stable")
        name = file_name(int(partition), int(group["offset"].iloc[0]), int(group["offset"].iloc[-1]),
                         content_digest(group))
        path = Path(archive_dir) / f"date={date}" / f"hour={hour}" / name
        write_parquet_atomic(group, path)
        written.append(path)
    return written


class Archiver:
    """Consume the events topic and archive valid events to Parquet. ``run()`` until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        archive_dir: Path | None = None,
        flush_every_events: int = 50_000,
        flush_interval_s: float = 60.0,
        exit_when_idle_s: float | None = None,
        metrics: ArchiverMetrics | None = None,
        poll_timeout_ms: int = 200,
    ):
        if flush_every_events < 1 or flush_interval_s <= 0:
            raise ValueError("flush_every_events must be >= 1 and flush_interval_s > 0")
        self.settings = settings
        self.archive_dir = Path(archive_dir if archive_dir is not None else settings.archive_dir)
        self.flush_every_events = flush_every_events
        self.flush_interval_s = flush_interval_s
        self.exit_when_idle_s = exit_when_idle_s
        self.metrics = metrics if metrics is not None else ArchiverMetrics()
        self.poll_timeout_ms = poll_timeout_ms
        self._stop = threading.Event()
        self._buffer = _Buffer()
        self._consumer = None
        self._last_activity = time.monotonic()
        self.files: list[Path] = []  # every file this archiver renamed into place

    def stop(self) -> None:
        """Ask ``run()`` to flush, commit and return (safe from a signal handler or another thread)."""
        self._stop.set()

    # -- Kafka ---------------------------------------------------------------------------------

    def _make_consumer(self):
        from kafka import ConsumerRebalanceListener

        from pipeline.kafka_clients import make_consumer

        archiver = self

        class _FlushOnRevoke(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                # Our offsets for these partitions must be on disk + committed before another
                # member takes them over, or it would archive them again.
                if revoked:
                    archiver.flush()

            def on_partitions_assigned(self, assigned):
                archiver._last_activity = time.monotonic()
                log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

        kafka = self.settings.kafka
        consumer = make_consumer(kafka, group_id=kafka.archive_group_id)
        consumer.subscribe([kafka.events_topic], listener=_FlushOnRevoke())
        return consumer

    def _commit(self, last_offset: dict[int, int]) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        if not last_offset or self._consumer is None:
            return
        topic = self.settings.kafka.events_topic
        self._consumer.commit({
            TopicPartition(topic, partition): OffsetAndMetadata(offset + 1, "", -1)
            for partition, offset in last_offset.items()
        })

    # -- loop ----------------------------------------------------------------------------------

    def handle(self, records: Iterable) -> None:
        """Parse a batch of ConsumerRecords into the buffer (invalid ones are counted only)."""
        limits = {"max_message_bytes": self.settings.max_message_bytes,
                  "max_series_id_length": self.settings.max_series_id_length}
        for record in records:
            self._buffer.saw(record.partition, record.offset)
            parsed = parse_event(record.value, record.key, **limits)
            if isinstance(parsed, Event):
                if not len(self._buffer):
                    log.info("buffering events (first: partition %d offset %d)", record.partition, record.offset)
                self._buffer.add(parsed, record.partition, record.offset)
            else:
                self.metrics.events_rejected.labels(reason=parsed.reason).inc()

    def flush(self) -> list[Path]:
        """Write buffered events, then commit the offsets read so far. Returns the new files."""
        buffer, self._buffer = self._buffer, _Buffer()
        if not buffer.last_offset:
            return []
        try:
            written = write_files(self.archive_dir, buffer.frame())
        except BaseException:
            self._buffer = buffer  # nothing committed: keep the rows for the next try
            raise
        if written:
            self.metrics.files_written.inc(len(written))
            self.metrics.events_archived.inc(len(buffer))
            self.metrics.last_write.set(time.time())
            self.files.extend(written)
        self._commit(buffer.last_offset)
        log.info("archived %d events in %d files", len(buffer), len(written))
        return written

    def _due(self) -> bool:
        buffer = self._buffer
        if len(buffer) >= self.flush_every_events:
            return True
        return buffer.started is not None and time.monotonic() - buffer.started >= self.flush_interval_s

    def run(self) -> None:
        """Poll, buffer, flush on size/time; on stop or idle timeout flush, commit and close."""
        self._consumer = self._make_consumer()
        self._last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = self._consumer.poll(timeout_ms=self.poll_timeout_ms)
                for records in batch.values():
                    if records:
                        self._last_activity = time.monotonic()
                        self.handle(records)
                if self._due():
                    self.flush()
                if (self.exit_when_idle_s is not None
                        and time.monotonic() - self._last_activity >= self.exit_when_idle_s):
                    log.info("idle for %.1fs: exiting", self.exit_when_idle_s)
                    break
            self.flush()
        finally:
            consumer, self._consumer = self._consumer, None
            consumer.close(autocommit=False)


# -- reading -------------------------------------------------------------------------------------

def _to_epoch(moment: datetime | float | int | str | None) -> float | None:
    if moment is None:
        return None
    if isinstance(moment, (int, float)):
        return float(moment)
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.timestamp()


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
            begin_s = begin.replace(tzinfo=timezone.utc).timestamp()
            if (end is not None and begin_s >= end) or (start is not None and begin_s + 3600 <= start):
                continue
            out.append(hour_dir)
    return out


def list_files(archive_dir: Path | str, start=None, end=None) -> list[Path]:
    """Archive files (temporary ones excluded) whose hour overlaps [start, end)."""
    archive_dir = Path(archive_dir)
    files = []
    for hour_dir in _hour_dirs(archive_dir, _to_epoch(start), _to_epoch(end)):
        files.extend(p for p in sorted(hour_dir.glob("part-*.parquet")))
    return files


def read_archive(archive_dir: Path | str, start=None, end=None) -> pd.DataFrame:
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
