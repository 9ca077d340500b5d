"""Factories for kafka-python clients built from ``KafkaSettings``, and topic creation.

One place decides client options, so the scorer, archiver, publisher, demo and tests all talk
to Kafka the same way. Consumers never auto-commit: callers commit after their output is
acknowledged (at-least-once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from models.core.settings import KafkaSettings


def make_producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """A producer tuned for throughput (linger + large batches) that waits for all replicas."""
    config: dict[str, Any] = {
        **settings.client_config(),
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "retries": 5,
        "max_in_flight_requests_per_connection": 1,
        # Idempotence breaks for good after a Tansu restart (UnknownProducerIdError); ordering
        # is kept by one in-flight request per connection instead.
        "enable_idempotence": False,
    }
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(
    settings: KafkaSettings,
    topics: Iterable[str] | None = None,
    *,
    group_id: str | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A consumer in ``group_id`` (default: the scorer's group) with manual commits."""
    config: dict[str, Any] = {
        **settings.client_config(),
        "group_id": group_id if group_id is not None else settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_records": settings.max_poll_records,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    if topics is not None:
        consumer.subscribe(list(topics))
    return consumer


def ensure_topics(settings: KafkaSettings, topics: Iterable[str] | None = None, partitions: int | None = None) -> None:
    """Create the events, anomalies and dead-letter topics (or ``topics``) when missing, with
    ``settings.partitions`` (or ``partitions``) partitions and ``settings.replication_factor`` replicas."""
    names = (
        list(topics)
        if topics is not None
        else [
            settings.events_topic,
            settings.anomalies_topic,
            settings.dead_letter_topic,
        ]
    )
    admin = KafkaAdminClient(**settings.client_config())
    try:
        existing = set(admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(name, partitions or settings.partitions, settings.replication_factor) for name in missing]
                )
    finally:
        admin.close()
