"""The archive consumer: the events topic, validated, written as Parquet by ``pipeline.archive.format``.

``Archiver`` is a consumer in its own group (``settings.kafka.archive_group_id``) that parses
every message with ``pipeline.events.parse_event``; invalid ones are counted by reason in
``ArchiverMetrics`` and not archived (the scorer's dead-letter topic keeps them). Valid events are
buffered and flushed on size (``flush_every_events``) or age (``flush_interval_s``); offsets are
committed only after every file of a flush is in place. Delivery is at-least-once: a crash between
rename and commit re-archives some records (possibly under other file names), which the reader
removes (see ``pipeline.archive.format``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from models.core.settings import Settings
from pipeline.archive.format import write_files
from pipeline.events import Event, parse_event
from pipeline.metrics import ArchiverMetrics

if TYPE_CHECKING:
    from kafka import KafkaConsumer
    from kafka.consumer.fetcher import ConsumerRecord
    from kafka.structs import TopicPartition

log = logging.getLogger(__name__)


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
        return pd.DataFrame(
            {
                "series": pd.Series(self.series, dtype=object),
                "ts": np.asarray(self.ts, dtype=np.float64),
                "value": np.asarray(self.value, dtype=np.float64),
                "partition": np.asarray(self.partition, dtype=np.int32),
                "offset": np.asarray(self.offset, dtype=np.int64),
            }
        )


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
        self._consumer: KafkaConsumer | None = None
        self._last_activity = time.monotonic()
        self.files: list[Path] = []  # every file this archiver renamed into place

    def stop(self) -> None:
        """Ask ``run()`` to flush, commit and return (safe from a signal handler or another thread)."""
        self._stop.set()

    # -- Kafka ---------------------------------------------------------------------------------

    def _make_consumer(self) -> KafkaConsumer:
        from kafka import ConsumerRebalanceListener

        from pipeline.kafka.clients import make_consumer

        archiver = self

        class _FlushOnRevoke(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
                # Our offsets for these partitions must be on disk + committed before another
                # member takes them over, or it would archive them again.
                if revoked:
                    archiver.flush()

            def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
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
        self._consumer.commit(
            {
                TopicPartition(topic, partition): OffsetAndMetadata(offset + 1, "", -1)
                for partition, offset in last_offset.items()
            }
        )

    # -- loop ----------------------------------------------------------------------------------

    def handle(self, records: Iterable[ConsumerRecord]) -> None:
        """Parse a batch of ConsumerRecords into the buffer (invalid ones are counted only)."""
        limits = {
            "max_message_bytes": self.settings.max_message_bytes,
            "max_series_id_length": self.settings.max_series_id_length,
        }
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
        consumer = self._consumer = self._make_consumer()
        self._last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=self.poll_timeout_ms)
                for records in batch.values():
                    if records:
                        self._last_activity = time.monotonic()
                        self.handle(records)
                if self._due():
                    self.flush()
                if not consumer.assignment():  # idle time counts only once partitions are assigned
                    self._last_activity = time.monotonic()
                if (
                    self.exit_when_idle_s is not None
                    and time.monotonic() - self._last_activity >= self.exit_when_idle_s
                ):
                    log.info("idle for %.1fs: exiting", self.exit_when_idle_s)
                    break
            self.flush()
        finally:
            self._consumer = None
            consumer.close(autocommit=False)
