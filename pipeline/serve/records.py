"""Output records of the scorer: anomaly JSON values and dead-letter headers.

Anomaly record (value of a message on the anomalies topic, keyed by series)::

    {"series", "ts" (epoch s), "value", "predicted", "lower", "upper" (the band considered normal at
     that moment, raw units: ``models.detection.band``), "error" (|value - predicted|, raw units),
     "score", "threshold", "model", "model_version", "source": {"topic", "partition", "offset"}}

A dead-letter message keeps the ORIGINAL bytes as its value (and the original key); why it was
rejected travels in headers: ``tsad.reason`` (a code from ``pipeline.events``), ``tsad.detail``
(human text), ``tsad.source`` (``topic/partition/offset``). A value larger than the event size
limit (``oversize_message``) is cut to that limit and ``tsad.truncated`` carries its original length,
so one huge message can never exceed the producer's request size and stall the scorer.
"""

from __future__ import annotations

import math

import orjson

from pipeline.events import Reason

REASON_HEADER = "tsad.reason"
DETAIL_HEADER = "tsad.detail"
SOURCE_HEADER = "tsad.source"
TRUNCATED_HEADER = "tsad.truncated"
_MAX_DETAIL = 512


def anomaly_value(
    series: str,
    ts: float,
    value: float,
    predicted: float,
    error: float,
    score: float,
    threshold: float,
    model: str,
    model_version: object,
    topic: str,
    partition: int,
    offset: int,
    lower: float | None = None,
    upper: float | None = None,
) -> bytes:
    """JSON bytes of one anomaly record (``lower``/``upper``: NaN or None are written as null)."""
    return orjson.dumps(
        {
            "series": series,
            "ts": ts,
            "value": value,
            "predicted": predicted,
            "lower": _finite(lower),
            "upper": _finite(upper),
            "error": error,
            "score": score,
            "threshold": threshold,
            "model": model,
            "model_version": model_version,
            "source": {"topic": topic, "partition": partition, "offset": offset},
        }
    )


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def dead_letter_headers(
    reason: Reason, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Kafka headers saying why a message was dead-lettered and where it came from."""
    return [
        (REASON_HEADER, reason.encode()),
        (DETAIL_HEADER, detail[:_MAX_DETAIL].encode("utf-8", "replace")),
        (SOURCE_HEADER, f"{topic}/{partition}/{offset}".encode()),
    ]


def dead_letter_value(raw: bytes, limit: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The dead-letter value for ``raw``: unchanged, or its first ``limit`` bytes plus a header."""
    if len(raw) <= limit:
        return raw, []
    return raw[:limit], [(TRUNCATED_HEADER, str(len(raw)).encode())]
