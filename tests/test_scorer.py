"""The Kafka scoring loop (pipeline/serve/scorer.py) in-process against the real embedded broker.

Anomalies of labelled series with injected spikes reach the anomalies topic; bad events reach the
dead-letter topic with reasons and original bytes; counts add up; hot reload swaps the model
version without losing events and refuses a corrupt version.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from record_helpers import headers_dict, read_to_end
from waiting import poll_until, wait_for

from models.core.settings import Settings
from models.detection.detector import DetectorConfig, StreamingDetector
from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.training import fit
from models.registry import ModelRegistry
from pipeline.events import encode_event
from pipeline.kafka.clients import make_producer
from pipeline.metrics import ScorerMetrics
from pipeline.serve.reload import ChampionWatcher
from pipeline.serve.scorer import Scorer

pytestmark = pytest.mark.integration

T0 = 1_700_000_000
SERIES = ["svc-0", "svc-1", "new-0"]  # new-0 is never seen in training (online normalisation)


def signal(i: np.ndarray, phase: float) -> np.ndarray:
    rng = np.random.default_rng(int(phase * 10))
    return 10 + 3 * np.sin(i / 8.0 + phase) + 0.05 * rng.normal(size=len(i))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A registry with a small many-to-many champion (v1) and a second trained version (v2)."""
    root = tmp_path_factory.mktemp("registry")
    reg = ModelRegistry(root)
    train = {s: signal(np.arange(400), p) for s, p in (("svc-0", 0.0), ("svc-1", 1.0))}
    cfg = ForecasterConfig(kind="many-to-many", window=16, hidden=16)
    b1, _ = fit(cfg, train, epochs=4, progress=False, name="m", seed=0)
    reg.promote("m", reg.register(b1))
    b2, _ = fit(cfg, train, epochs=4, progress=False, name="m", seed=1)
    v2 = reg.register(b2)
    return reg, v2


def publish(settings, rows):
    """rows: (key bytes | None, value bytes). Waits for every ack."""
    producer = make_producer(settings)
    try:
        futures = [producer.send(settings.events_topic, key=k, value=v) for k, v in rows]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


def read_topic(settings, topic, expected: int, timeout_s: float = 20.0):
    """Every record on ``topic`` up to its end offsets, once they hold ``expected`` (or the deadline)."""
    return read_to_end(settings.client_config(), topic, expected, timeout_s)


def read_sources_until(settings, topic, expected: set, timeout_s: float) -> set:
    """Source coordinates ``(partition, offset)`` of the records on ``topic``, read from the start
    until they cover ``expected`` or ``timeout_s`` passes (however many duplicates come first)."""
    consumer = KafkaConsumer(
        **settings.client_config(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        seen: set = set()
        deadline = time.monotonic() + timeout_s
        while not expected <= seen and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                for r in batch:
                    src = orjson.loads(r.value)["source"]
                    seen.add((src["partition"], src["offset"]))
        return seen
    finally:
        consumer.close()


def start_scorer(kafka_settings, reg, **kw):
    watcher = ChampionWatcher(reg, "m", None, interval_s=0.1)
    bundle = watcher.load_initial()
    metrics = ScorerMetrics()
    detector = StreamingDetector(bundle, DetectorConfig())
    scorer = Scorer(Settings(kafka=kafka_settings), detector, metrics, watcher=watcher, **kw)
    stop = threading.Event()
    thread = threading.Thread(target=scorer.run, args=(stop,), daemon=True)
    thread.start()
    return scorer, stop, thread


def wait_consumed(scorer, n, timeout_s=30.0):
    wait_for(lambda: scorer.stats.consumed >= n, timeout_s, f"{n} events consumed", interval=0.05)
    assert scorer.stats.consumed == n, f"consumed {scorer.stats.consumed} of {n}"


def good_rows(start: int, stop: int, spikes: dict):
    rows = []
    for s_i, series in enumerate(SERIES):
        i = np.arange(start, stop)
        values = signal(i, float(s_i))
        for ii, v in zip(i.tolist(), values.tolist()):
            v = v + spikes.get((series, ii), 0.0)
            rows.append((series.encode(), encode_event(series, T0 + 60 * ii, v)))
    return rows


def test_anomalies_and_dead_letters_counts_add_up(kafka_settings, trained):
    reg, _ = trained
    spikes = {("svc-0", 150): 25.0, ("svc-1", 220): -25.0, ("new-0", 260): 30.0}
    rows = good_rows(0, 300, spikes)
    bad = [
        (b"svc-0", b"{not json"),
        (b"svc-0", b"[1, 2]"),
        (b"svc-0", orjson.dumps({"series": "svc-0", "ts": T0})),
        (b"svc-0", b'{"series": "svc-0", "ts": 1700000000, "value": NaN}'),
        (b"other", encode_event("svc-1", T0 + 60 * 999, 1.0)),  # key mismatch
        (b"svc-1", encode_event("svc-1", "yesterday", 1.0)),
        (b"svc-0", encode_event("svc-0", T0 + 60 * 299, 10.0)),  # duplicate of the last ts
        (b"svc-0", encode_event("svc-0", T0 + 60 * 100, 10.0)),  # out of order
    ]
    expected_reasons = [
        "malformed_json",
        "not_an_object",
        "missing_field",
        "non_finite_value",
        "key_mismatch",
        "bad_timestamp",
        "duplicate_timestamp",
        "out_of_order",
    ]
    publish(kafka_settings, rows + bad)
    scorer, stop, thread = start_scorer(kafka_settings, reg)
    try:
        wait_consumed(scorer, len(rows) + len(bad))
    finally:
        stop.set()
        thread.join(15)
    st = scorer.stats
    assert st.consumed == st.scored + st.warmup + st.rejected_total == len(rows) + len(bad)
    assert sorted(st.rejected) == sorted(expected_reasons) and st.rejected_total == len(bad)
    # warm-up: each series' first `window` values (16) only
    assert st.warmup == 16 * len(SERIES)

    m = scorer.metrics.registry.get_sample_value
    assert m("tsad_events_consumed_total") == st.consumed
    assert (
        m("tsad_events_scored_total")
        + m("tsad_events_warmup_total")
        + sum(m("tsad_events_rejected_total", {"reason": r}) for r in expected_reasons)
        == st.consumed
    )
    assert m("tsad_anomalies_total") == st.anomalies

    anomalies = [
        orjson.loads(r.value) for r in read_topic(kafka_settings, kafka_settings.anomalies_topic, st.anomalies)
    ]
    assert len(anomalies) == st.anomalies
    flagged = {(a["series"], round((a["ts"] - T0) / 60)) for a in anomalies}
    assert set(spikes) <= flagged, f"missed spikes: {set(spikes) - flagged}"
    assert len(flagged - set(spikes)) <= 3, f"too many false alarms: {sorted(flagged - set(spikes))}"
    a = next(a for a in anomalies if a["series"] == "svc-0")
    assert {
        "series",
        "ts",
        "value",
        "predicted",
        "error",
        "score",
        "threshold",
        "model",
        "model_version",
        "source",
    } <= set(a)
    assert a["model"] == "m" and a["model_version"] == 1 and a["score"] > a["threshold"]
    assert set(a["source"]) == {"topic", "partition", "offset"}

    dead = read_topic(kafka_settings, kafka_settings.dead_letter_topic, len(bad))
    assert len(dead) == len(bad)
    by_value = {r.value: headers_dict(r.headers) for r in dead}
    for (_, raw), reason in zip(bad, expected_reasons):
        assert by_value[raw]["tsad.reason"] == reason  # original bytes kept as the value
        assert by_value[raw]["tsad.detail"]
        assert by_value[raw]["tsad.source"].startswith(kafka_settings.events_topic + "/")


def test_hot_reload_swaps_version_without_loss_and_refuses_corrupt(kafka_settings, trained):
    reg, v2 = trained
    reg.promote("m", 1)
    scorer, stop, thread = start_scorer(kafka_settings, reg)
    try:
        first = good_rows(0, 200, {("svc-0", 150): 25.0})
        publish(kafka_settings, first)
        wait_consumed(scorer, len(first))
        reg.promote("m", v2)
        wait_for(lambda: scorer.detector.model_version == v2, 10, f"v{v2} serving", interval=0.05)
        # a corrupt champion: promoted, then its weights damaged -> refused, v2 keeps serving
        b3, _ = fit(
            ForecasterConfig(kind="many-to-many", window=16, hidden=16),
            {"svc-0": signal(np.arange(200), 0.0)},
            epochs=1,
            progress=False,
            name="m",
        )
        v3 = reg.register(b3)
        reg.promote("m", v3)
        weights = reg.root / "m" / f"v{v3:04d}" / "weights.pt"
        weights.write_bytes(weights.read_bytes()[:100])
        wait_for(
            lambda: scorer.metrics.registry.get_sample_value("tsad_model_reload_failures_total") >= 1,
            10,
            "the corrupt version refused",
            interval=0.05,
        )
        second = good_rows(200, 400, {("svc-1", 300): 25.0})
        publish(kafka_settings, second)
        wait_consumed(scorer, len(first) + len(second))
    finally:
        stop.set()
        thread.join(15)
    m = scorer.metrics.registry.get_sample_value
    assert m("tsad_model_reload_failures_total") == 1
    assert m("tsad_model_version") == v2
    st = scorer.stats
    assert st.consumed == st.scored + st.warmup == len(first) + len(second)  # nothing lost
    anomalies = [
        orjson.loads(r.value) for r in read_topic(kafka_settings, kafka_settings.anomalies_topic, st.anomalies)
    ]
    versions = {(a["series"], round((a["ts"] - T0) / 60)): a["model_version"] for a in anomalies}
    assert versions[("svc-0", 150)] == 1
    assert versions[("svc-1", 300)] == v2
    # no event scored twice: source coordinates are unique
    sources = [(a["source"]["partition"], a["source"]["offset"]) for a in anomalies]
    assert len(sources) == len(set(sources))


@pytest.mark.parametrize("fetch_process", [False, True], ids=["in-process", "fetch-process"])
def test_rebalance_mid_stream_loses_nothing_and_dead_letters_nothing(kafka_settings, trained, fetch_process):
    """A second scorer joins while the first is mid-stream (small batches; with a fetch process,
    batches are in flight between the processes when the rebalance starts).

    Every event is scored at least once (a threshold that flags every scored event makes the
    anomaly records a receipt per event), and re-read events of partitions the first scorer kept
    are replayed into state, not dead-lettered as duplicate timestamps.
    """
    reg, _ = trained
    reg.promote("m", 1)
    small = kafka_settings.model_copy(update={"max_poll_records": 50})
    rows = [
        (f"r-{s}".encode(), encode_event(f"r-{s}", T0 + 60 * t, float(np.sin(t / 5 + s))))
        for t in range(250)
        for s in range(12)
    ]
    producer = make_producer(small)
    try:
        futures = [producer.send(small.events_topic, key=k, value=v) for k, v in rows]
        producer.flush()
        expected = {(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)}
    finally:
        producer.close()
    assert len(expected) == len(rows)

    def start(**kw):
        watcher = ChampionWatcher(reg, "m", None, interval_s=60)
        detector = StreamingDetector(
            watcher.load_initial(), DetectorConfig(threshold_method="zscore", threshold=-1e9, warmup_events=0)
        )
        scorer = Scorer(Settings(kafka=small), detector, ScorerMetrics(), watcher=watcher, replay_messages=30, **kw)
        stop = threading.Event()
        thread = threading.Thread(target=scorer.run, args=(stop,), daemon=True)
        thread.start()
        return scorer, stop, thread

    a = start(fetch_process=fetch_process)
    b = None
    try:
        poll_until(lambda: a[0].stats.consumed >= 600, 30, interval=0.01)
        assert 0 < a[0].stats.consumed < len(rows), "first scorer should be mid-stream"
        b = start(fetch_process=fetch_process)
        # every event has a receipt (duplicates allowed: a moved partition is re-scored from its
        # last checkpoint), read while both scorers run
        coords = read_sources_until(small, small.anomalies_topic, expected, timeout_s=60)
    finally:
        for s in (a, b):
            if s is not None:
                s[1].set()
                s[2].join(15)
    assert coords == expected, f"{len(expected - coords)} events never scored"
    assert read_topic(small, small.dead_letter_topic, 0, timeout_s=2) == []
    assert a[0].stats.rejected_total == 0 and b[0].stats.rejected_total == 0


def test_oversize_message_is_dead_lettered_truncated_and_the_scorer_keeps_going(kafka_settings, trained):
    """A 2 MiB event (over the producer's 1 MiB request size) must not stall the scorer."""
    reg, _ = trained
    raw = b'{"series": "svc-0", "ts": 1, "value": 1, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    big_producer = make_producer(kafka_settings, max_request_size=4 * 1024 * 1024)
    try:
        big_producer.send(kafka_settings.events_topic, key=b"svc-0", value=raw).get(timeout=30)
    finally:
        big_producer.close()
    rows = good_rows(0, 40, {})
    publish(kafka_settings, rows)
    scorer, stop, thread = start_scorer(kafka_settings, reg)
    try:
        wait_consumed(scorer, len(rows) + 1)
    finally:
        stop.set()
        thread.join(15)
    assert dict(scorer.stats.rejected) == {"oversize_message": 1}
    (dead,) = read_topic(kafka_settings, kafka_settings.dead_letter_topic, 1)
    headers = headers_dict(dead.headers)
    assert headers["tsad.reason"] == "oversize_message"
    assert headers["tsad.truncated"] == str(len(raw))
    assert raw.startswith(dead.value) and len(dead.value) == Settings().max_message_bytes
