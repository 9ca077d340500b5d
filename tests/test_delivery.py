"""Delivery you can trust (issue 15), against the real embedded broker: no message, batch or
broker restart can stop the scorer or lose an event.

Every test runs ``pipeline.serve.scorer.Scorer`` with its fetch process (the default) and a detector
that flags every scored event, so the anomalies topic holds one receipt per scored event.
"""

from __future__ import annotations

import threading

import pytest
from delivery_helpers import T0, RunningScorer, dead_letters, make_registry, read_all, receipt_detector, receipts, send
from kafka.record import default_records

from models.core.settings import KafkaSettings
from models.detection.detector import StreamingDetector
from pipeline.events import Reason, encode_event, parse_event
from pipeline.kafka.broker import EmbeddedBroker, free_port
from pipeline.kafka.clients import ensure_topics, make_producer
from pipeline.kafka.publish import publish_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("registry"))


def good(series: str, start: int, n: int) -> list:
    return [(series.encode(), encode_event(series, T0 + 60 * t, float(t % 7))) for t in range(start, start + n)]


def test_poison_messages_are_dead_lettered_with_their_reason_and_scoring_goes_on(kafka_settings, reg):
    poison = [
        (None, b'{"series": "\\ud800", "ts": 1700000000, "value": 1}'),  # lone surrogate, no key
        (b"s", b'{"series": "\\ud800", "ts": 1700000000, "value": 1}'),  # ... with a key
        (None, b'{"series": "\xed\xa0\x80", "ts": 1700000000, "value": 1}'),  # raw surrogate bytes, no key
        (b"\xed\xa0\x80", b'{"series": "\xed\xa0\x80", "ts": 1700000000, "value": 1}'),
        (b"s", b'{"a":"}'),  # issue 15's merging trio
        (b"s", b'{",  "series":"s","ts":1700000000,"value":5}'),
        (b"s", b'{"q":1},{"r":2}'),
        (b"s", b'{"series": "s", "ts": 1700000000, "value": ' + b"9" * 400 + b"}"),
        (b"s", b"\xef\xbb\xbf" + encode_event("s", T0, 1.0)),
    ]
    rows = good("s", 0, 30) + poison + good("s", 30, 30) + good("t", 0, 30)
    coords = send(kafka_settings, rows)
    run = RunningScorer(kafka_settings, receipt_detector(reg))
    try:
        run.wait(lambda: run.stats.consumed == len(rows), 60, "every message consumed")
    finally:
        run.stop()
    assert run.error is None
    expected_reasons = {coords[30 + k]: parse_event(v, k_).reason for k, (k_, v) in enumerate(poison)}
    assert list(expected_reasons.values()) == ["bad_series_id"] * 4 + ["malformed_json"] * 3 + [
        "value_out_of_range",
        "malformed_json",
    ]
    dead = dead_letters(read_all(kafka_settings, kafka_settings.dead_letter_topic, len(poison)))
    assert {(p, int(o)): h["tsad.reason"] for (p, o), h in dead.items()} == expected_reasons
    for k, (key, value) in enumerate(poison):  # unchanged: original bytes and key
        h = dead[(coords[30 + k][0], str(coords[30 + k][1]))]
        assert h["value"] == value and h["key"] == key
    valid = set(coords) - set(expected_reasons)
    assert receipts(read_all(kafka_settings, kafka_settings.anomalies_topic, len(valid))) == valid


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_batches_compressed_with_each_codec_are_scored(kafka_settings, reg, codec):
    rows = [row for s in range(4) for row in good(f"c-{s}", 0, 150)]
    coords = send(kafka_settings, rows, compression_type=codec, linger_ms=50)
    run = RunningScorer(kafka_settings, receipt_detector(reg))
    try:
        run.wait(lambda: run.stats.consumed == len(rows), 60, "every event consumed")
    finally:
        run.stop()
    assert run.stats.scored == len(rows) and run.stats.rejected_total == 0
    assert receipts(read_all(kafka_settings, kafka_settings.anomalies_topic, len(rows))) == set(coords)


def test_an_undecodable_batch_is_skipped_with_a_marker_and_the_scorer_goes_on(kafka_settings, reg, monkeypatch):
    """A gzip batch whose compressed bytes are garbage (valid CRC): the fetch process cannot
    decode it. Only that batch is skipped; the events after it on the same partition are scored."""
    before = send(kafka_settings, good("u", 0, 20))
    with monkeypatch.context() as patch:  # this test's producer only writes garbage as "gzip"
        patch.setattr(default_records, "gzip_encode", lambda data, **_: b"not gzip at all")
        bad = send(kafka_settings, good("u", 20, 40), compression_type="gzip", linger_ms=50)
    after = send(kafka_settings, good("u", 60, 20))
    run = RunningScorer(kafka_settings, receipt_detector(reg))
    try:
        run.wait(lambda: run.stats.consumed == len(before) + len(after), 60, "the good events consumed")
        run.wait(lambda: run.metric("tsad_undecodable_batches_total") == 1, 10, "the skip counted")
    finally:
        run.stop()
    assert run.error is None
    (partition,) = {p for p, _ in bad}
    first, last = min(o for _, o in bad), max(o for _, o in bad)
    assert run.metric("tsad_skipped_offsets_total") == last - first + 1
    dead = dead_letters(read_all(kafka_settings, kafka_settings.dead_letter_topic, 1))
    (marker,) = dead.values()
    assert marker["tsad.reason"] == "undecodable_batch" and marker["value"] == b""
    assert marker["tsad.source"] == f"{kafka_settings.events_topic}/{partition}/{first}-{last}"
    assert receipts(read_all(kafka_settings, kafka_settings.anomalies_topic, 40)) == set(before) | set(after)


class ExplodingDetector(StreamingDetector):
    """Raises while scoring any batch that holds the series "boom" (a bug one event triggers)."""

    def process(self, series_ids, ts, values, alert=True):
        if "boom" in series_ids:
            raise RuntimeError("kaboom in the model")
        return super().process(series_ids, ts, values, alert)


def test_an_exception_while_scoring_or_producing_one_message_dead_letters_it_as_internal_error(kafka_settings, reg):
    rows = good("a", 0, 20) + good("boom", 0, 1) + good("a", 20, 10) + good("cb", 0, 1) + good("a", 30, 10)
    coords = send(kafka_settings, rows)

    def on_anomaly(record):
        if record["series"] == "cb":
            raise ValueError("callback refused it")

    run = RunningScorer(kafka_settings, receipt_detector(reg, ExplodingDetector), on_anomaly=on_anomaly)
    try:
        run.wait(lambda: run.stats.consumed == len(rows), 60, "every message consumed")
    finally:
        run.stop()
    assert run.error is None
    st = run.stats
    assert st.rejected == {Reason.INTERNAL_ERROR: 2} and st.consumed == st.scored + st.warmup + st.rejected_total
    assert run.metric("tsad_events_rejected_total", {"reason": Reason.INTERNAL_ERROR}) == 2
    dead = dead_letters(read_all(kafka_settings, kafka_settings.dead_letter_topic, 2))
    boom, cb = coords[20], coords[31]
    assert "kaboom in the model" in dead[(boom[0], str(boom[1]))]["tsad.detail"]
    assert "callback refused it" in dead[(cb[0], str(cb[1]))]["tsad.detail"]
    assert dead[(boom[0], str(boom[1]))]["value"] == rows[20][1]
    scored = receipts(read_all(kafka_settings, kafka_settings.anomalies_topic, len(rows) - 1))
    assert scored >= set(coords) - {boom, cb}


def test_every_event_published_after_a_broker_restart_is_scored(tmp_path, reg):
    """The broker restarts EMPTY on the same port while the scorer runs (Tansu; a recreated topic
    looks the same). publish_events, started during the outage, retries until it is back; every
    event published after the restart is scored, none is taken as replay, the reset is counted."""
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log").start()
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers, session_timeout_ms=2000, heartbeat_interval_ms=500, partitions=4
    )
    try:
        ensure_topics(kafka)
        first = [row for s in range(8) for row in good(f"r-{s}", 0, 60)]
        send(kafka, first)
        run = RunningScorer(kafka, receipt_detector(reg), settings={"commit_interval_ms": 100})
        try:
            run.wait(lambda: run.stats.consumed == len(first) and run.stats.commits > 0, 60, "the first events")
            broker.stop()
            tries = []

            def factory(settings, **config):
                tries.append(1)
                return make_producer(settings, **config)

            second = [row for s in range(8) for row in good(f"r-{s}", 60, 60)]
            result = {}
            publisher = threading.Thread(
                target=lambda: result.update(
                    report=publish_events(
                        kafka, kafka.events_topic, second, timeout_s=90, make_producer=factory, ensure_topic=True
                    )
                )
            )
            publisher.start()
            run.wait(lambda: len(tries) >= 2, 60, "the publisher to retry during the outage")
            broker.start()
            ensure_topics(kafka)  # as `tsad broker` does: the output topics come back too
            publisher.join(90)
            assert result["report"].events == len(second) and result["report"].attempts >= 2
            run.wait(lambda: run.stats.consumed >= len(first) + len(second), 90, "the events after the restart")
            run.wait(
                lambda: len(read_all(kafka, kafka.anomalies_topic, len(second), timeout_s=2)) >= len(second),
                30,
                "their receipts",
            )
        finally:
            run.stop()
        assert run.error is None
        assert run.stats.replayed == 0 and run.metric("tsad_events_replayed_total") == 0
        assert run.metric("tsad_partition_resets_total", {"topic": kafka.events_topic}) >= 1
        import orjson

        scored = {
            (a["series"], a["ts"])
            for a in (orjson.loads(r.value) for r in read_all(kafka, kafka.anomalies_topic, len(second)))
        }
        published = {(orjson.loads(v)["series"], orjson.loads(v)["ts"]) for _, v in second}
        assert published <= scored, f"{len(published - scored)} of {len(published)} events never scored"
    finally:
        broker.stop()


def fuzz_messages(n: int, seed: int = 15) -> list:
    """``n`` mixed messages: (key, value, expected reason or None for a valid event)."""
    import random

    rnd = random.Random(seed)
    next_t: dict = {}

    def valid(keyed=True):
        # keyed events share 40 series (in order on their partition); an event without a key may
        # land on any partition, so each of those is a series of its own
        s = f"f-{rnd.randrange(40)}" if keyed else f"u-{len(next_t)}"
        t = next_t.get(s, 0)
        next_t[s] = t + 1
        return (s.encode() if keyed else None), encode_event(s, T0 + 60 * t, rnd.uniform(-1e3, 1e3)), None

    ev = b'{"series": "a", "ts": 1700000000, "value": '
    invalid = [
        lambda: (b"a", b'{"series": "a\xff\xfe", "ts": 1700000000, "value": 1}', "malformed_json"),  # bad UTF-8
        lambda: (None, b"\x00" + rnd.randbytes(rnd.randrange(0, 200)), "malformed_json"),  # binary
        lambda: (b"a", ev + b"9" * rnd.randrange(309, 2000) + b"}", "value_out_of_range"),  # huge int
        lambda: (b"a", ev + b"1e400}", "value_out_of_range"),
        lambda: (b"a", b'{"series": "a", "ts": 1e300, "value": 1}', "bad_timestamp"),
        lambda: (b"a", ev + b"[" * 3000 + b"]" * 3000 + b"}", "malformed_json"),  # deep nesting
        lambda: (b"a", ev + b"[" * 100 + b"]" * 100 + b"}", "wrong_type"),
        lambda: (b"a", ev + b'1, "pad": "' + b"p" * 70_000 + b'"}', "oversize_message"),
        lambda: (b"a", b'{"series": 7, "ts": 1700000000, "value": 1}', "wrong_type"),
        lambda: (b"a", ev + b'"12"}', "wrong_type"),
        lambda: (b"a", b'{"series": "a", "ts": [1], "value": 1}', "wrong_type"),
        lambda: (b"a", b"[1, 2]", "not_an_object"),
        lambda: (b"a", b'{"series": "a", "ts": 1700000000}', "missing_field"),
        lambda: (None, b'{"series": "\\ud800", "ts": 1700000000, "value": 1}', "bad_series_id"),
        lambda: (b"zzz", encode_event("a", T0, 1.0), "key_mismatch"),
        lambda: (b"a", ev + b"NaN}", "non_finite_value"),
        lambda: (b"a", b"\xef\xbb\xbf" + encode_event("a", T0, 1.0), "malformed_json"),
        lambda: (b"a", b'{"a":"}', "malformed_json"),
        lambda: (b"a", b'{",  "series":"a","ts":1700000000,"value":5}', "malformed_json"),
    ]
    out = []
    for _ in range(n):
        if rnd.random() < 0.5:
            out.append(valid(keyed=rnd.random() < 0.8))
        else:
            gen = rnd.choice(invalid)
            if gen is invalid[7] and rnd.random() < 0.8:  # keep oversize messages few (70 KB each)
                gen = invalid[0]
            out.append(gen())
    return out


def test_fuzz_every_valid_event_is_scored_and_every_invalid_one_dead_lettered_with_its_reason(kafka_settings, reg):
    messages = fuzz_messages(6000)
    for key, value, reason in messages:  # the generator's expectation is the schema's
        verdict = parse_event(value, key)
        assert getattr(verdict, "reason", None) == reason, (key, value[:80], verdict)
    coords = send(kafka_settings, [(k, v) for k, v, _ in messages], max_request_size=4 * 1024 * 1024)
    run = RunningScorer(kafka_settings, receipt_detector(reg))
    try:
        run.wait(lambda: run.stats.consumed == len(messages), 120, "every message consumed")
        assert run.thread.is_alive() and run.metric("tsad_scorer_up") == 1  # alive at the end
    finally:
        run.stop()
    assert run.error is None
    invalid = {c: r for c, (_, _, r) in zip(coords, messages) if r is not None}
    valid = set(coords) - set(invalid)
    assert len(valid) > 2000 and len(invalid) > 2000
    dead = dead_letters(read_all(kafka_settings, kafka_settings.dead_letter_topic, len(invalid), timeout_s=60))
    assert {(p, int(o)): h["tsad.reason"] for (p, o), h in dead.items()} == invalid
    assert receipts(read_all(kafka_settings, kafka_settings.anomalies_topic, len(valid), timeout_s=60)) == valid
    st = run.stats
    assert st.consumed == st.scored + st.warmup + st.rejected_total and st.scored == len(valid)


def test_an_unreadable_champion_pointer_is_counted_and_the_old_model_keeps_serving(kafka_settings, tmp_path):
    from models.detection.detector import DetectorConfig
    from pipeline.serve.reload import ChampionWatcher

    reg = make_registry(tmp_path / "reg")
    watcher = ChampionWatcher(reg, "m", None, interval_s=0.05)
    detector = StreamingDetector(watcher.load_initial(), DetectorConfig())
    run = RunningScorer(kafka_settings, detector, watcher=watcher, fetch_process=False)
    try:
        (reg.root / "m" / "champion.json").write_text("[1, 2]")
        run.wait(lambda: run.metric("tsad_model_pointer_errors_total") >= 2, 30, "the pointer errors counted")
        rows = good("p", 0, 20)
        send(kafka_settings, rows)
        run.wait(lambda: run.stats.consumed == len(rows), 60, "events scored meanwhile")
    finally:
        run.stop()
    assert run.metric("tsad_model_reload_failures_total") == 0 and run.metric("tsad_model_version") == 1
