"""Test helpers for records read back from Kafka: a topic read to its end, headers as a dict, a
batch decoded from records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from waiting import poll_until

from models.core.limits import MAX_MESSAGE_BYTES, MAX_SERIES_ID_LENGTH
from pipeline.serve.decode import DecodedBatch, decode_columns


class KeyedRecord(Protocol):
    """A record with ``.key`` and ``.value`` (e.g. kafka-python's ConsumerRecord)."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


def headers_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Headers of a consumed message as a str -> str dict."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}


def decode_batch(
    records: Sequence[KeyedRecord],
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_series_id_length: int = MAX_SERIES_ID_LENGTH,
) -> DecodedBatch:
    """``decode_columns`` of records' values and keys."""
    return decode_columns([r.value for r in records], [r.key for r in records], max_message_bytes, max_series_id_length)


def read_to_end(
    client_config: dict[str, Any], topic: str, expected: int, timeout_s: float, partitions: Iterable[int] | None = None
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from its beginning up to the high watermark of each partition, once
    that is at least ``expected`` records; after ``timeout_s`` what was read (the caller asserts).

    Reading up to the high watermarks, rather than polling on for a while, is what shows that
    nothing else is there (the writers stopped). The marks come from fetch responses: Tansu's
    ``ListOffsets`` (``end_offsets``) answers the last batch's base offset + 1, not the log end.
    ``partitions``: all of the topic's by default.
    """
    consumer = KafkaConsumer(**client_config, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        if partitions is None:
            partitions = consumer.partitions_for_topic(topic) or []
        parts = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[ConsumerRecord] = []

        def read_all_there() -> bool:
            for batch in consumer.poll(timeout_ms=300).values():
                out.extend(batch)
            marks = [consumer.highwater(tp) for tp in parts]
            at_end = all(m is not None and consumer.position(tp) >= m for tp, m in zip(parts, marks))
            return at_end and len(out) >= expected

        poll_until(read_all_there, timeout_s, interval=0.0)
        return out
    finally:
        consumer.close()
