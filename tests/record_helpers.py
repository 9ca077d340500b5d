"""Test helpers for records read back from Kafka: headers as a dict, a batch decoded from records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

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
