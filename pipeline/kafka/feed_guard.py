"""What the scorer's feed does when the log under it misbehaves: resets and undecodable batches.

* ``PartitionReset``: a partition's log was reset or recreated (see ``pipeline.kafka.feed``); its events
  are read from the new log start as new events.
* ``SkippedRange``: offsets ``[start, end)`` of a partition that could not be decoded (an
  unsupported or broken codec, a corrupt batch) and were skipped. ``skip_undecodable`` finds the
  failing partition by probing each assigned partition alone, and the first readable offset after
  the bad batch by exponential then binary search (a probe inside a bad batch fails, a probe at or
  after the next batch's base offset reads), so only the bad batch is skipped.

Imports no torch (the fetch process runs it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka import KafkaConsumer
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.structs import TopicPartition

log = logging.getLogger(__name__)
_PROBE_WAIT_S = 1.0  # a probe that reads nothing in this time is at the log end


@dataclass
class PartitionReset:
    """Partitions whose log was reset or recreated (``why``: what showed it)."""

    tps: set[TopicPartition]
    why: str


@dataclass
class SkippedRange:
    """Offsets ``[start, end)`` of ``tp`` skipped as undecodable; ``epoch`` as in ``Batch``."""

    tp: TopicPartition
    start: int
    end: int
    detail: str
    epoch: int = 0


def topic_id(consumer: KafkaConsumer, topic: str) -> object:
    """The topic id the consumer's metadata holds for ``topic`` (None if the broker gives none)."""
    try:
        return consumer._client.cluster.topic_id(topic)
    except AttributeError:
        return None


def refresh_metadata(consumer: KafkaConsumer) -> None:
    """A blocking metadata round trip (so topic ids are current)."""
    try:
        consumer.topics()
    except KafkaError as error:
        log.warning("metadata refresh failed: %s", error)


def is_data_error(error: BaseException) -> bool:
    """True for errors that may come from undecodable record data (not from the connection)."""
    if isinstance(error, (UnsupportedCodecError, CorruptRecordError)):
        return True
    return not isinstance(error, KafkaError) and isinstance(error, Exception)


def _discard_buffered(consumer: KafkaConsumer) -> None:
    """Drop what kafka-python's fetcher holds: after a decode error its half-read batch keeps a dead
    iterator, and no new fetch is sent for that partition while it is buffered. (kafka-python has
    no public call for this; the attributes are those of kafka-python 3.0.)"""
    fetcher = getattr(consumer, "_fetcher", None)
    part = getattr(fetcher, "_next_partition_records", None)
    if fetcher is not None and part is not None:
        part.drain()
        fetcher._next_partition_records = None
    completed = getattr(fetcher, "_completed_fetches", None)
    if completed is not None:
        completed.clear()
    if fetcher is not None and hasattr(fetcher, "_next_in_line_exception_metadata"):
        fetcher._next_in_line_exception_metadata = None


def _probe(consumer: KafkaConsumer, tp: TopicPartition, offset: int, max_records: int) -> bool:
    """True when reading ``tp`` from ``offset`` fails (the other partitions are paused)."""
    _discard_buffered(consumer)
    consumer.seek(tp, offset)
    deadline = time.monotonic() + _PROBE_WAIT_S
    while time.monotonic() < deadline:
        try:
            records = consumer.poll(timeout_ms=200, max_records=max_records)
        except Exception as error:
            if is_data_error(error):
                return True
            raise
        if records.get(tp):
            return False
    return False  # nothing to read there (end of the log): not a bad batch


def skip_undecodable(consumer: KafkaConsumer, error: BaseException, epoch: int = 0) -> list[SkippedRange]:
    """Find and seek past the undecodable batch behind ``error``; the ranges skipped.

    Every assigned partition keeps (or is put back at) its position, except the bad ones, which
    resume at the first readable offset. Raises ``error`` again when no partition fails alone.
    """
    assigned = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
    positions = {tp: consumer.position(tp) for tp in assigned}
    skipped = []
    consumer.pause(*assigned)
    try:
        for tp in assigned:
            consumer.resume(tp)
            start = positions[tp]
            if _probe(consumer, tp, start, 1):
                good = _first_readable(consumer, tp, start)
                positions[tp] = good
                detail = f"{type(error).__name__}: {error}"[:400]
                skipped.append(SkippedRange(tp, start, good, detail, epoch))
                log.error(
                    "undecodable record batch on %s-%d: skipping offsets %d..%d (%s)",
                    tp.topic,
                    tp.partition,
                    start,
                    good - 1,
                    detail,
                )
            consumer.pause(tp)
    finally:
        _discard_buffered(consumer)
        consumer.resume(*assigned)
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
    if not skipped:
        raise error
    return skipped


def _first_readable(consumer: KafkaConsumer, tp: TopicPartition, bad: int) -> int:
    """The smallest offset > ``bad`` from which ``tp`` reads (exponential, then binary search);
    offsets at or past the log end count as readable (a probe there would reset to the start)."""
    try:
        end = max(consumer.end_offsets([tp]).get(tp) or 0, consumer.highwater(tp) or 0)
    except KafkaError:
        end = consumer.highwater(tp) or 0
    step, good = 1, None
    while good is None:
        probe = bad + step
        if probe >= end:
            good = max(probe if end <= bad else end, bad + 1)
        elif _probe(consumer, tp, probe, 1):
            bad, step = probe, step * 2
        else:
            good = probe
    while good - bad > 1:
        mid = (bad + good) // 2
        if mid < end and _probe(consumer, tp, mid, 1):
            bad = mid
        else:
            good = mid
    return good
