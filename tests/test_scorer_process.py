"""``tsad serve`` as a real subprocess against the embedded broker.

* ``kill -9`` mid-stream, restart: every event scored at least once (anomaly records carry the
  source coordinates; the threshold is set so every scored event yields one), duplicates only
  at or after the offsets committed at the kill and no more than the checkpoint settings allow
  (``duplicate_bound``), the restart warms up by replay; ``/metrics`` is scraped and parsed with
  ``text_string_to_metric_families``.
* Two scorer processes in one group split the partitions and together score every event once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from delivery_helpers import make_registry
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from pipeline.events import encode_event
from pipeline.kafka.broker import free_port
from pipeline.kafka.clients import make_producer
from pipeline.kafka.feed_process import MERGE_RECORDS

pytestmark = pytest.mark.integration

TSAD = str(Path(sys.executable).parent / "tsad")
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    make_registry(root)
    return root


def publish(settings, n_series: int, n_per_series: int) -> set[tuple[int, int]]:
    """Publish and return the (partition, offset) of every acknowledged event."""
    producer = make_producer(settings)
    futures = []
    for t in range(n_per_series):
        for s in range(n_series):
            sid = f"series-{s}"
            futures.append(
                producer.send(
                    settings.events_topic,
                    key=sid.encode(),
                    value=encode_event(sid, T0 + 60 * t, float(np.sin(t / 6.0 + s))),
                )
            )
    producer.flush()
    coords = {(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)}
    producer.close()
    assert len(coords) == len(futures)
    return coords


def duplicate_bound(commit_every_events: int, max_poll_records: int) -> int:
    """Events a ``kill -9`` may leave produced but uncommitted, from the checkpoint settings.

    A checkpoint is taken after the batch that brings its count to ``commit_every_events``; a
    (merged) batch holds at most the merge cap (``min(MERGE_RECORDS, commit_every_events)``, at
    least ``max_poll_records``) plus one poll batch; and one checkpoint's commit may still be in
    flight when the next one's events are produced. (The time trigger only makes checkpoints
    smaller.)
    """
    merge_cap = max(min(MERGE_RECORDS, commit_every_events), max_poll_records)
    one_checkpoint = commit_every_events - 1 + merge_cap + max_poll_records
    return 2 * one_checkpoint


def start_serve(settings, registry_dir, metrics_port, log_path, max_poll_records=200, commit_every_events=None):
    env = {
        **os.environ,
        "TSAD_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "TSAD_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
        "TSAD_KAFKA__MAX_POLL_RECORDS": str(max_poll_records),
    }
    if commit_every_events is not None:
        env["TSAD_COMMIT_EVERY_EVENTS"] = str(commit_every_events)
    cmd = [
        TSAD,
        "serve",
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--registry",
        str(registry_dir),
        "--model",
        "m",
        "--group-id",
        settings.group_id,
        "--events-topic",
        settings.events_topic,
        "--anomalies-topic",
        settings.anomalies_topic,
        "--dead-letter-topic",
        settings.dead_letter_topic,
        "--metrics-port",
        str(metrics_port),
        "--threshold-method",
        "zscore",
        "--threshold=-1e9",
        "--warmup-events",
        "0",
        "--replay-messages",
        "50",
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"), start_new_session=True
    )


def scrape(port: int) -> dict:
    """{(name, labels tuple): value} from /metrics, parsed with the Prometheus text parser."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(port: int, name: str) -> float:
    try:
        return scrape(port).get((name, ()), 0.0)
    except OSError:
        return 0.0


class TopicReader:
    """Reads a topic from the beginning, incrementally (no group)."""

    def __init__(self, settings, topic):
        self.consumer = KafkaConsumer(
            **settings.client_config(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.records = []

    def read(self):
        for batch in self.consumer.poll(timeout_ms=200, max_records=10_000).values():
            self.records.extend(batch)
        return self.records

    def close(self):
        self.consumer.close()


def sources(records) -> list[tuple[int, int]]:
    return [(a["source"]["partition"], a["source"]["offset"]) for a in (orjson.loads(r.value) for r in records)]


def committed_offsets(settings) -> dict[int, int]:
    c = KafkaConsumer(**settings.client_config(), group_id=settings.group_id, enable_auto_commit=False)
    out = {p: (c.committed(TopicPartition(settings.events_topic, p)) or 0) for p in range(settings.partitions)}
    c.close()
    return out


def stop(proc, timeout_s=15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise


def test_kill_9_and_restart_scores_every_event_at_least_once(kafka_settings, registry_dir, tmp_path):
    expected = publish(kafka_settings, n_series=20, n_per_series=400)
    total = len(expected)
    port = free_port()
    every, max_poll = 300, 100  # small checkpoints, so some are committed before the kill
    first = start_serve(
        kafka_settings, registry_dir, port, tmp_path / "first.log", max_poll_records=max_poll, commit_every_events=every
    )
    try:
        wait_for(
            lambda: (
                metric(port, "tsad_events_consumed_total") >= 1500 and metric(port, "tsad_offset_commits_total") >= 1
            ),
            40,
            "first scorer to consume and commit",
        )
        families = scrape(port)  # parsed by prometheus_client's text parser
        assert families[("tsad_scorer_up", ())] == 1.0
        assert ("tsad_end_to_end_latency_seconds_count", ()) in families
        assert any(name == "tsad_consumer_lag_messages" for name, _ in families)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    committed_at_kill = committed_offsets(kafka_settings)
    assert 0 < sum(committed_at_kill.values()) < total, committed_at_kill

    reader = TopicReader(kafka_settings, kafka_settings.anomalies_topic)
    port2 = free_port()
    second = start_serve(kafka_settings, registry_dir, port2, tmp_path / "second.log")
    try:
        wait_for(lambda: set(sources(reader.read())) >= expected, 60, "every event scored")
        uncommitted = total - sum(committed_at_kill.values())
        wait_for(
            lambda: scrape(port2).get(("tsad_events_consumed_total", ()), 0.0) >= uncommitted,
            30,
            "the uncommitted events consumed",
        )
        after = scrape(port2)
        assert after[("tsad_events_replayed_total", ())] > 0  # warm state rebuilt from history
        assert after[("tsad_events_consumed_total", ())] == uncommitted
    finally:
        rc = stop(second)
        reader.read()  # everything the second scorer produced before it stopped
        reader.close()
    assert rc == 0, (tmp_path / "second.log").read_text()[-2000:]
    got = sources(reader.records)
    assert set(got) == expected
    dups = [coord for coord, n in Counter(got).items() if n > 1]
    # duplicates only from what the killed scorer produced after its last completed checkpoint
    assert all(offset >= committed_at_kill[p] for p, offset in dups), (dups[:10], committed_at_kill)
    bound = duplicate_bound(every, max_poll)
    print(f"kill -9 with commit_every_events={every}: {len(dups)} duplicates (bound {bound})")
    assert len(dups) <= bound < total


def test_two_scorers_in_one_group_split_partitions(kafka_settings, registry_dir, tmp_path):
    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_serve(kafka_settings, registry_dir, p, log) for p, log in zip(ports, logs)]

    def assigned(log: Path):
        found = re.findall(r"partitions assigned: \[([0-9, ]*)\]", log.read_text() if log.exists() else "")
        return [int(x) for x in found[-1].split(",") if x.strip()] if found else None

    reader = TopicReader(kafka_settings, kafka_settings.anomalies_topic)
    try:
        wait_for(lambda: all(assigned(log) and len(assigned(log)) == 2 for log in logs), 45, "a 2+2 split")
        by_proc = [set(assigned(log)) for log in logs]  # (the one left may take all 4 while the other stops)
        assert sorted(by_proc[0] | by_proc[1]) == [0, 1, 2, 3] and not (by_proc[0] & by_proc[1])
        expected = publish(kafka_settings, n_series=16, n_per_series=100)
        total = len(expected)
        wait_for(lambda: set(sources(reader.read())) >= expected, 40, "every event scored")
        consumed = [metric(p, "tsad_events_consumed_total") for p in ports]
    finally:
        codes = [stop(p) for p in procs]
        reader.close()
    assert codes == [0, 0]
    got = sources(reader.records)
    assert set(got) == expected and len(got) == total  # each event scored exactly once
    assert all(c > 0 for c in consumed) and sum(consumed) == total
