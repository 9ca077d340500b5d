"""Shared pytest fixtures: a real embedded Kafka broker (Tansu) for integration tests.

``kafka_broker`` starts one broker per test session on a free loopback port. ``kafka_settings``
gives each test its own topic names and consumer group on that broker, so tests never see
each other's messages. Group timing is 2000/500 ms: Tansu answers a JoinGroup after
session_timeout/2, so joins take ~1 s.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from models.core.settings import KafkaSettings
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.kafka.clients import ensure_topics

REPO_ROOT = Path(__file__).resolve().parent.parent
NAB_DIR = REPO_ROOT / "data" / "nab"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker


@pytest.fixture
def kafka_settings(kafka_broker) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:8]
    settings = KafkaSettings(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        events_topic=f"events-{suffix}",
        anomalies_topic=f"anomalies-{suffix}",
        dead_letter_topic=f"dead-letter-{suffix}",
        group_id=f"scorer-{suffix}",
        archive_group_id=f"archiver-{suffix}",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        partitions=4,
    )
    ensure_topics(settings)
    return settings


@pytest.fixture
def nab_dir() -> Path:
    return NAB_DIR
