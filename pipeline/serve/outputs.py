"""The scorer's output side: sending records one message at a time, and checkpoints.

``Outputs`` sends anomaly and dead-letter records at once (no flush per batch) and remembers, for
each send, which input message it came from. ``checkpoint()`` (every ``commit_interval_ms`` or
``commit_every_events``) is *sealed*: later batches go to the next one, and once every send of
the sealed one is acknowledged (the producer sends in the background; nothing waits for it)
``acknowledged()`` returns its offsets to commit. Before partitions are given up and on stop,
``checkpoint()`` seals everything, flushes and waits. Offsets are never committed before every
output produced up to them is acknowledged.

Failures are told apart:

* an *outage* (a retriable Kafka error: the broker is down, a timeout; or a non-retriable error
  that is not about one record, e.g. authorisation) raises ``ProduceFailed``: the scorer stops
  without committing, and a restart re-reads the uncommitted messages;
* a failure that belongs to *one record* (any non-Kafka exception while building or sending it,
  a record the broker refuses: too large, invalid) dead-letters the input message it came from,
  unchanged, with reason ``internal_error`` and the exception in ``tsad.detail``. The scorer goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaProducer
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import TopicPartition

from models.core.settings import KafkaSettings
from pipeline.events import Reason
from pipeline.serve.records import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER, dead_letter_headers, dead_letter_value

log = logging.getLogger(__name__)
_PER_RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)


class ProduceFailed(RuntimeError):
    """Records were not acknowledged (the broker is unreachable or refuses us); nothing is committed."""


def is_outage(error: BaseException) -> bool:
    """True when ``error`` is not about one record (retrying later, elsewhere, may succeed)."""
    return isinstance(error, KafkaError) and not isinstance(error, _PER_RECORD_ERRORS)


@dataclass
class Source:
    """The input message an output record came from (to dead-letter it if that record fails)."""

    key: bytes | None
    raw: bytes
    partition: int
    offset: int


@dataclass
class Pending:
    """What was produced since the last checkpoint: offsets to commit once acknowledged."""

    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    epoch: int | None = None
    events: int = 0
    sends: list = field(default_factory=list)  # (future, Source | None: a dead-letter record itself)
    since: float = field(default_factory=time.monotonic)
    done_upto: int = 0  # sends[:done_upto] are known to be finished (acknowledged or failed)

    def add(self, offsets: dict[TopicPartition, int], epoch: int | None, events: int) -> None:
        self.offsets.update(offsets)
        if epoch is not None:
            self.epoch = epoch if self.epoch is None else min(self.epoch, epoch)
        self.events += events


class Outputs:
    """Sends a scorer's records and checkpoints them (see the module docstring).

    ``on_internal_error(source, detail)`` is called for each input message dead-lettered as
    ``internal_error`` at checkpoint time (the scorer counts it as rejected, too).
    """

    def __init__(
        self,
        producer: KafkaProducer,
        kafka: KafkaSettings,
        max_message_bytes: int,
        *,
        commit_interval_ms: int = 1000,
        commit_every_events: int = 20_000,
        on_internal_error: Callable[[Source, str], None] | None = None,
    ) -> None:
        self.producer = producer
        self.kafka = kafka
        self.max_message_bytes = max_message_bytes
        self.commit_interval_s = max(commit_interval_ms, 0) / 1000.0
        self.commit_every_events = max(int(commit_every_events), 1)
        self.on_internal_error = on_internal_error
        self.pending = Pending()
        self.sealed: Pending | None = None  # a checkpoint waiting for its acknowledgements

    # ------------------------------------------------------------------ sending
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        source: Source | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send one record now; raises ``ProduceFailed`` on an outage, the error of the record otherwise."""
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
        except Exception as error:
            if is_outage(error):
                raise ProduceFailed(f"cannot send to {topic}: {type(error).__name__}: {error}") from error
            raise
        self.pending.sends.append((future, source))

    def dead_letter(self, source: Source, reason: Reason, detail: str) -> None:
        """Send ``source`` unchanged (cut to the size limit) to the dead-letter topic with ``reason``."""
        value, extra = dead_letter_value(source.raw, self.max_message_bytes)
        headers = dead_letter_headers(reason, detail, self.kafka.events_topic, source.partition, source.offset) + extra
        try:
            self.send(self.kafka.dead_letter_topic, source.key, value, None, headers)
        except ProduceFailed:
            raise
        except Exception as error:
            log.error(
                "dead letter of %s/%d/%d refused (%s); sent without its key",
                self.kafka.events_topic,
                source.partition,
                source.offset,
                error,
            )
            self.send(self.kafka.dead_letter_topic, None, value, None, headers)

    def marker(self, reason: Reason, detail: str, partition: int, first: int, last: int) -> None:
        """A dead-letter record with an empty value standing for offsets ``first..last`` (skipped)."""
        headers = [
            (REASON_HEADER, reason.encode()),
            (DETAIL_HEADER, detail[:512].encode("utf-8", "replace")),
            (SOURCE_HEADER, f"{self.kafka.events_topic}/{partition}/{first}-{last}".encode()),
        ]
        self.send(self.kafka.dead_letter_topic, None, b"", None, headers)

    # ------------------------------------------------------------------ checkpoints
    def add(self, offsets: dict[TopicPartition, int], epoch: int | None, events: int) -> None:
        """Offsets of a batch whose records were all sent (committed at a later checkpoint)."""
        self.pending.add(offsets, epoch, events)

    def due(self) -> bool:
        """The current checkpoint is full (``commit_every_events``) or old (``commit_interval_ms``)."""
        p = self.pending
        if not p.offsets and not p.sends:
            return False
        return p.events >= self.commit_every_events or time.monotonic() - p.since >= self.commit_interval_s

    def seal(self) -> None:
        """Close the current checkpoint: later batches go to the next one; ``acknowledged()`` tells
        when every send of it is acknowledged (no flush: the producer sends in the background)."""
        if self.sealed is None:
            self.sealed, self.pending = self.pending, Pending()
        else:
            self.sealed.done_upto = 0
            self.sealed.sends.extend(self.pending.sends)
            self.sealed.add(self.pending.offsets, self.pending.epoch, self.pending.events)
            self.pending = Pending()

    def acknowledged(self) -> tuple[dict, int | None] | None:
        """``(offsets, epoch)`` of the sealed checkpoint once all its sends are acknowledged (and
        records refused one by one were dead-lettered and acknowledged in turn), else None."""
        sealed = self.sealed
        if sealed is None:
            return None
        sends, k = sealed.sends, sealed.done_upto
        while k < len(sends) and sends[k][0].is_done:  # sends finish in order, mostly: resume the scan
            k += 1
        sealed.done_upto = k
        if k < len(sends):
            return None
        retry = self._settle(sends)
        if retry:
            sealed.sends, sealed.done_upto = retry, 0
            return None
        self.sealed = None
        return sealed.offsets, sealed.epoch

    def checkpoint(self) -> tuple[dict, int | None]:
        """Seal everything sent so far, flush and wait for it: ``(offsets, epoch)`` safe to commit
        now (before partitions are given up, and on stop). An outage raises ``ProduceFailed``."""
        self.seal()
        while True:
            self.producer.flush()
            done = self.acknowledged()
            if done is not None:
                return done

    def _settle(self, sends: list) -> list:
        """Check finished sends: an outage raises ``ProduceFailed``; a record refused on its own
        dead-letters its input message (``internal_error``): those new sends are returned."""
        retry: list = []
        for future, source in sends:
            if not future.failed():
                continue
            error = future.exception
            if source is None or is_outage(error):
                raise ProduceFailed(f"a record was not acknowledged: {type(error).__name__}: {error}")
            detail = f"producing its output record: {type(error).__name__}: {error}"
            log.error(
                "message %s/%d/%d dead-lettered: %s", self.kafka.events_topic, source.partition, source.offset, detail
            )
            mark = len(self.pending.sends)
            self.dead_letter(source, Reason.INTERNAL_ERROR, detail)
            retry.extend(self.pending.sends[mark:])
            del self.pending.sends[mark:]
            if self.on_internal_error is not None:
                self.on_internal_error(source, detail)
        return retry
