"""End-to-end scorer benchmark on the embedded Tansu broker (prints numbers; no pass/fail).

One run prints:
1. raw kafka-python consume + orjson decode, events/s (the ceiling for any scorer);
2. ``tsad serve``'s loop (``pipeline.scorer.Scorer``, in-process) events/s for a stateful
   many-to-many and a window many-to-one forecaster (hidden 64, window 64, untrained weights:
   speed does not depend on the weights), and their ratio to (1);
3. end-to-end latency p50/p99 at a paced 5k events/s (producer in a child process, fresh topic,
   ~20k events), and the scorer's own share (poll returned -> decision);
4. scorer-process RSS with 1k and 100k tracked series (many-to-many, hidden 64), bytes per series.

Usage: ``python benchmarks/bench_e2e.py [--series 1000] [--events 200000]``.
Targets (issue 4): m2m >= 0.8x raw, m2o >= 0.3x raw, p99 < 50 ms at 5k/s, < 1 KiB state/series.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np

T0 = 1_700_000_000


def make_bundle(kind: str, hidden: int = 64, window: int = 64):
    import torch

    from models.forecasters import ForecasterConfig, build_forecaster

    torch.manual_seed(0)
    cfg = ForecasterConfig(kind=kind, window=window, hidden=hidden)
    return SimpleNamespace(name=f"bench-{kind}", kind=kind, version=1, config=cfg,
                           forecaster=build_forecaster(cfg).eval(), normalizers={}, calibration={})


def produce(bootstrap: str, topic: str, n_series: int, n_events: int, rate: float | None = None, t_offset: int = 0) -> float:
    """Send n_events round-robin over n_series (time-major); returns the send wall time."""
    from pipeline.events import encode_event
    from pipeline.kafka_clients import make_producer
    from pipeline.settings import KafkaSettings

    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap), linger_ms=2 if rate else 20)
    keys = [f"series-{s:05d}".encode() for s in range(n_series)]
    start = time.perf_counter()
    for i in range(n_events):
        s, t = i % n_series, i // n_series + t_offset
        if rate and i % 50 == 0:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        value = float(np.sin(t / 10.0 + s)) if i % 7 else float(np.cos(t / 10.0 + s))
        producer.send(topic, key=keys[s], value=encode_event(keys[s].decode(), T0 + 60 * t, value))
    producer.flush()
    producer.close()
    return time.perf_counter() - start


def raw_consume(kafka, total: int) -> float:
    """events/s of poll + orjson decode of the whole topic (new group), first record -> last."""
    import orjson

    from pipeline.kafka_clients import make_consumer

    consumer = make_consumer(kafka, [kafka.events_topic], group_id=f"raw-{uuid.uuid4().hex[:6]}")
    n, first = 0, None
    deadline = time.monotonic() + 120
    while n < total and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200, max_records=kafka.max_poll_records)
        if batch and first is None:
            first = time.perf_counter()
        for recs in batch.values():
            payloads = orjson.loads(b"[" + b",".join(r.value for r in recs) + b"]")
            n += len(payloads)
    elapsed = time.perf_counter() - first
    consumer.close()
    return n / elapsed


def run_scorer(kafka, bundle, total: int, latency: bool = False):
    """Score the topic with the real loop (new group); returns (events/s, scorer)."""
    from pipeline.metrics import ScorerMetrics
    from pipeline.scorer import Scorer
    from pipeline.scoring import DetectorConfig, StreamingDetector
    from pipeline.settings import Settings

    group = f"bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka=kafka.model_copy(update={"group_id": group}))
    scorer = Scorer(settings, StreamingDetector(bundle, DetectorConfig()), ScorerMetrics())
    if latency:
        scorer.latency_log = []
    marks = {}
    original = scorer.process_batch

    def timed(batch):
        marks.setdefault("first", time.perf_counter())
        original(batch)
        marks["last"] = time.perf_counter()

    scorer.process_batch = timed
    stop = threading.Event()
    thread = threading.Thread(target=scorer.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while scorer.stats.consumed < total and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(30)
    rate = scorer.stats.consumed / (marks["last"] - marks["first"])
    return rate, scorer


def rss_child(n_series: int) -> None:
    """(child) RSS after tracking n_series series with a many-to-many hidden-64 detector."""
    import torch

    from pipeline.scoring import DetectorConfig, StreamingDetector

    torch.set_num_threads(1)
    det = StreamingDetector(make_bundle("many-to-many"), DetectorConfig(max_series=max(n_series, 1)))
    ids = [f"series-{s:06d}" for s in range(n_series)]
    chunk = 1_000  # like poll batches: the temporaries stay the same size for 1k and 100k series
    for t in range(3):
        for start in range(0, n_series, chunk):
            part = ids[start:start + chunk]
            det.process(part, np.full(len(part), T0 + 60.0 * t), np.random.default_rng(t).normal(size=len(part)))
    with open("/proc/self/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    print(json.dumps({"series": det.tracked_series, "rss_bytes": rss_kb * 1024,
                      "array_bytes_per_series": det.state_bytes_per_series()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--paced-events", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--produce-child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child is not None:
        return rss_child(args.rss_child)
    if args.produce_child is not None:
        bootstrap, topic, n_series, n_events = args.produce_child
        produce(bootstrap, topic, int(n_series), int(n_events), rate=args.rate)
        return None

    import torch

    from pipeline.broker import EmbeddedBroker
    from pipeline.kafka_clients import ensure_topics
    from pipeline.settings import KafkaSettings

    torch.set_num_threads(1)
    print(f"bench_e2e: {args.series} series, {args.events} events, cpus={os.cpu_count()}, torch threads=1")
    with EmbeddedBroker() as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, events_topic="bench-events",
                              anomalies_topic="bench-anomalies", dead_letter_topic="bench-dead",
                              session_timeout_ms=2000, heartbeat_interval_ms=500, partitions=4)
        ensure_topics(kafka)
        secs = produce(broker.bootstrap_servers, kafka.events_topic, args.series, args.events)
        print(f"produced {args.events} events in {secs:.1f}s ({args.events / secs:,.0f}/s)")

        raw = raw_consume(kafka, args.events)
        print(f"raw consume+decode (kafka-python + orjson):   {raw:>10,.0f} events/s")
        results = {}
        for kind in ("many-to-many", "many-to-one"):
            rate, scorer = run_scorer(kafka, make_bundle(kind), args.events)
            results[kind] = rate
            st = scorer.stats
            print(f"scorer end-to-end {kind:<12} (hidden 64, w 64): {rate:>10,.0f} events/s = {rate / raw:.2f}x raw "
                  f"(scored {st.scored}, warm-up {st.warmup}, anomalies {st.anomalies}, batches {st.batches})")

        # latency at a paced rate on a fresh topic
        paced = kafka.model_copy(update={"events_topic": "bench-paced"})
        ensure_topics(paced, [paced.events_topic])
        box = {}
        runner = threading.Thread(target=lambda: box.update(r=run_scorer(paced, make_bundle("many-to-many"),
                                                                         args.paced_events, latency=True)))
        runner.start()
        time.sleep(4.0)  # let the group join before the first event
        subprocess.run([sys.executable, __file__, "--rate", str(args.rate), "--produce-child", broker.bootstrap_servers,
                        paced.events_topic, str(args.series), str(args.paced_events)], check=True)
        runner.join(120)
        _, scorer = box["r"]
        e2e = np.concatenate([a for a, _ in scorer.latency_log]) * 1000
        own = np.concatenate([np.full(len(a), b) for a, b in scorer.latency_log]) * 1000
        print(f"latency at {args.rate:,.0f} events/s ({len(e2e)} events, many-to-many): "
              f"p50 {np.percentile(e2e, 50):.1f} ms, p99 {np.percentile(e2e, 99):.1f} ms, max {e2e.max():.1f} ms; "
              f"scorer's own part p50 {np.percentile(own, 50):.2f} ms, p99 {np.percentile(own, 99):.2f} ms "
              f"({100 * np.median(own / np.maximum(e2e, 1e-9)):.0f}% of the median event's latency)")

    rss = {}
    for n in (1_000, 100_000):
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n)], capture_output=True, text=True, check=True)
        rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
    per_series = (rss[100_000]["rss_bytes"] - rss[1_000]["rss_bytes"]) / (100_000 - 1_000)
    print(f"scorer RSS: {rss[1_000]['rss_bytes'] / 2**20:.0f} MiB at 1k series, "
          f"{rss[100_000]['rss_bytes'] / 2**20:.0f} MiB at 100k series -> {per_series:,.0f} B/series "
          f"(state arrays {rss[100_000]['array_bytes_per_series']} B/series; rest: id strings + dict)")
    print("targets: m2m >= 0.8x raw: {}; m2o >= 0.3x raw: {}; p99 < 50 ms: {}; < 1 KiB/series: {}".format(
        results["many-to-many"] / raw >= 0.8, results["many-to-one"] / raw >= 0.3,
        float(np.percentile(e2e, 99)) < 50, per_series < 1024))


if __name__ == "__main__":
    main()
