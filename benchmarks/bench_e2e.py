"""End-to-end scorer benchmark on the embedded Tansu broker (prints numbers; no pass/fail).

One run prints:
1. raw kafka-python consume + orjson decode, events/s (the ceiling for any scorer; same consumer
   options as the scorer, ``pipeline.kafka.feed.CONSUMER_OVERRIDES``);
2. ``tsad serve``'s loop (``pipeline.serve.scorer.Scorer``, in-process) events/s for a stateful
   many-to-many and a window many-to-one forecaster (hidden 64, window 64, untrained weights:
   speed does not depend on the weights; warmed up before timing), many-to-one also at bf16 and
   with 2 torch threads, and the default loop (fetch in a child process) beside the in-process
   one (poll -> score -> commit in one thread); ratio to (1). Every run reads the same
   topic (same events, new consumer group); runs are interleaved (raw, m2m, m2o, ..., raw, ...)
   ``--repeats`` times and the median is reported with the range, because the machine is shared;
3. end-to-end latency p50/p99 at a paced 5k events/s (producer in a child process, fresh topic,
   ~20k events), and the scorer's own share (poll returned -> decision), beside the transport's
   own floor: a bare kafka-python consumer's produce -> poll-returned latency on the same pacing;
4. scorer-process RSS with 1k and 100k tracked series (many-to-many, hidden 64), bytes per series,
   and the fetch process's RSS;
5. bf16 vs fp32 many-to-one prediction difference on the benchmark's windows;
6. model routing (issue 14): the scorer's events/s with 1 model (plain detector), 1 routed model
   and 4 routed models (``models.detection.routed.RoutedDetector``, series split 4 ways by glob, many-to-many,
   the per-series export attached as in ``tsad serve``), interleaved ``--repeats`` times; and the
   memory the per-series export (``pipeline.serve.anomaly_export``) costs at K = 500 and 5000 series.

Usage: ``python benchmarks/bench_e2e.py [--series 1000] [--events 200000] [--repeats 3] [--routing-only]``.
Targets (issue 4): m2m >= 0.8x raw, m2o >= 0.3x raw, p99 < 50 ms at 5k/s, < 1 KiB state/series;
(issue 15) scorer-added p99 (end-to-end p99 - transport p99) <= 5 ms at 5k/s.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np

from pipeline.kafka.feed import CONSUMER_OVERRIDES  # no torch: the fetch process re-imports this module (spawn)

T0 = 1_700_000_000


def make_bundle(kind: str, hidden: int = 64, window: int = 64, precision: str = "fp32"):
    """Untrained forecaster bundle (seed 0), warmed up: its first calls are made before timing."""
    import torch

    from models.forecasting.forecasters import ForecasterConfig, build_forecaster
    from models.forecasting.serving import apply_precision

    torch.manual_seed(0)
    cfg = ForecasterConfig(kind=kind, window=window, hidden=hidden)
    bundle = apply_precision(
        SimpleNamespace(
            name=f"bench-{kind}",
            kind=kind,
            version=1,
            config=cfg,
            forecaster=build_forecaster(cfg).eval(),
            normalizers={},
            calibration=None,
        ),
        precision,
    )
    with torch.inference_mode():
        for b in (1, 256, 1000):
            if kind == "many-to-one":
                bundle.forecaster(torch.zeros(b, window, 1))
            else:
                bundle.forecaster.step(torch.zeros(b, 1), bundle.forecaster.init_state(b))
    return bundle


def produce(
    bootstrap: str, topic: str, n_series: int, n_events: int, rate: float | None = None, t_offset: int = 0
) -> float:
    """Send n_events round-robin over n_series (time-major); returns the send wall time."""
    from models.core.settings import KafkaSettings
    from pipeline.events import encode_event
    from pipeline.kafka.clients import make_producer

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

    from pipeline.kafka.clients import make_consumer

    consumer = make_consumer(kafka, [kafka.events_topic], group_id=f"raw-{uuid.uuid4().hex[:6]}", **CONSUMER_OVERRIDES)
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


def raw_latency(kafka, bootstrap: str, n_series: int, n_events: int, rate: float) -> np.ndarray:
    """Produce -> poll-returned latency (s) of a bare consumer (scorer's options) on a paced topic."""
    from pipeline.kafka.clients import make_consumer

    consumer = make_consumer(kafka, [kafka.events_topic], group_id=f"lat-{uuid.uuid4().hex[:6]}", **CONSUMER_OVERRIDES)
    consumer.poll(timeout_ms=3000)  # join the group before the first event
    lat: list = []

    def consume():
        deadline = time.monotonic() + 120
        while len(lat) < n_events and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200, max_records=kafka.max_poll_records).values():
                now = time.time()
                lat.extend(now - r.timestamp / 1000.0 for r in recs)

    thread = threading.Thread(target=consume)
    thread.start()
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--rate",
            str(rate),
            "--produce-child",
            bootstrap,
            kafka.events_topic,
            str(n_series),
            str(n_events),
        ],
        check=True,
    )
    thread.join(130)
    consumer.close()
    return np.array(lat)


def model_ceiling(threads: int, batch: int = 256, window: int = 64, repeats: int = 8) -> float:
    """Windows/s of the served many-to-one forecaster alone (hidden 64, window 64) at ``threads``."""
    import torch

    forecaster = make_bundle("many-to-one").forecaster
    x = torch.randn(batch, window, 1)
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            forecaster(x)
            start = time.perf_counter()
            for _ in range(repeats):
                forecaster(x)
            return batch * repeats / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(1)


def run_scorer(
    kafka,
    bundle,
    total: int,
    latency: bool = False,
    fetch_process: bool = True,
    threads: int = 1,
    detector=None,
    observers=(),
):
    """Score the topic with the real loop (new group); returns (events/s, scorer).

    events/s = events consumed / (first poll batch returned -> last batch scored and acknowledged).
    """
    import torch

    from models.core.settings import Settings
    from models.detection.detector import DetectorConfig, StreamingDetector
    from pipeline.metrics import ScorerMetrics
    from pipeline.serve.scorer import Scorer

    torch.set_num_threads(threads)
    group = f"bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka=kafka.model_copy(update={"group_id": group}))
    detector = StreamingDetector(bundle, DetectorConfig()) if detector is None else detector
    scorer = Scorer(settings, detector, ScorerMetrics(), fetch_process=fetch_process)
    scorer.observers.extend(observers)
    if latency:
        scorer.latency_log = []
    marks = {}
    original = scorer._score

    def timed(batch):
        marks.setdefault("first", batch.polled_at)
        done = original(batch)
        marks["last"] = time.time()
        if fetch_process and "fetch_rss" not in marks:
            marks["fetch_rss"] = _rss_bytes(scorer.feed._proc.pid)
        return done

    scorer._score = timed
    stop = threading.Event()

    def run():
        torch.set_num_threads(threads)  # intra-op threads are set per calling thread
        scorer.run(stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while scorer.stats.consumed < total and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(30)
    torch.set_num_threads(1)
    rate = scorer.stats.consumed / (marks["last"] - marks["first"])
    scorer.fetch_rss = marks.get("fetch_rss")
    return rate, scorer


def _rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def rss_child(n_series: int) -> None:
    """(child) RSS after tracking n_series series with a many-to-many hidden-64 detector."""
    import torch

    from models.detection.detector import DetectorConfig, StreamingDetector

    torch.set_num_threads(1)
    det = StreamingDetector(make_bundle("many-to-many"), DetectorConfig(max_series=max(n_series, 1)))
    ids = [f"series-{s:06d}" for s in range(n_series)]
    chunk = 1_000  # like poll batches: the temporaries stay the same size for 1k and 100k series
    for t in range(3):
        for start in range(0, n_series, chunk):
            part = ids[start : start + chunk]
            det.process(part, np.full(len(part), T0 + 60.0 * t), np.random.default_rng(t).normal(size=len(part)))
    del ids, part
    gc.collect()
    with contextlib.suppress(
        OSError
    ):  # give freed heap pages back so RSS counts what is held, not what was once touched
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(
        json.dumps(
            {
                "series": det.tracked_series,
                "rss_bytes": _rss_bytes(),
                "array_bytes_per_series": det.state_bytes_per_series(),
            }
        )
    )


ROUTE_GLOBS = ("*[0-4][0-4]", "*[0-4][5-9]", "*[5-9][0-4]")  # with the default: 4 quarters of series-NNNNN


def routed_detector(n_models: int):
    """A ``RoutedDetector`` over ``n_models`` many-to-many models (same weights, own state), series split by glob."""
    from models.detection.detector import DetectorConfig, StreamingDetector
    from models.detection.routed import RoutedDetector
    from models.routing import Routing

    routes = [
        {"group": f"q{k}", "match": glob, "model": f"bench-q{k}"} for k, glob in enumerate(ROUTE_GLOBS[: n_models - 1])
    ]
    routing = Routing.from_dict({"routes": routes, "default": {"group": "rest", "model": "bench-rest"}})
    detectors = {}
    for name in routing.models:
        bundle = make_bundle("many-to-many")
        bundle.name = name
        detectors[name] = StreamingDetector(bundle, DetectorConfig())
    return RoutedDetector(routing, detectors)


def routing_throughput(kafka, total: int, repeats: int) -> None:
    """Section 6a: events/s with 1 model, 1 routed model, 4 routed models (median [min..max])."""
    from pipeline.serve.anomaly_export import AnomalousSeries

    runs = {"1 model (no routing)": None, "1 routed model": 1, "4 routed models": 4}
    rates = {label: [] for label in runs}
    for _ in range(repeats):
        for label, n in runs.items():
            detector = None if n is None else routed_detector(n)
            rate, _ = run_scorer(
                kafka, make_bundle("many-to-many"), total, detector=detector, observers=[AnomalousSeries()]
            )
            rates[label].append(rate)
    base = float(np.median(rates["1 model (no routing)"]))
    for label in runs:
        rate = float(np.median(rates[label]))
        print(
            f"scorer e2e, many-to-many, {label:<20}: {_spread(rates[label])} events/s = {rate / base:.2f}x "
            f"the single model"
        )


def export_memory(k: int) -> str:
    """Section 6b: memory of the per-series export holding ``k`` series (tracemalloc), and its scrape."""
    import tracemalloc

    from prometheus_client import CollectorRegistry, generate_latest

    from models.detection.detector import BatchResult
    from models.detection.status import Status
    from pipeline.serve.anomaly_export import AnomalousSeries

    ids = [f"series-{i:05d}-{'x' * 20}" for i in range(k)]  # 33-character ids
    n = len(ids)
    result = BatchResult(
        np.full(n, Status.SCORED, dtype=np.int8),
        np.ones(n),
        np.ones(n),
        np.full(n, 0.9),
        0.5,
        np.ones(n, dtype=bool),
        "bench-model",
        1,
        0,
        {},
        np.zeros(n),
        np.full(n, 2.0),
    )
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    export = AnomalousSeries(max_series=k)
    export.observe(ids, np.full(n, 1.7e9), np.full(n, 5.0), result, np.ones(n, dtype=bool))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    registry = CollectorRegistry()
    registry.register(export)
    t0 = time.perf_counter()
    body = generate_latest(registry)
    scrape_s = time.perf_counter() - t0
    return (
        f"per-series export at K={k}: {held / 2**10:,.0f} KiB held ({held / k:,.0f} B/series, ids and row objects "
        f"included); a scrape renders {len(body) / 2**10:,.0f} KiB ({len(body) / k:,.0f} B/series, 8 samples each) "
        f"in {scrape_s * 1000:.1f} ms"
    )


def _bench_topics(broker, series: int, events: int):
    """The benchmark's topics on ``broker``, with ``events`` events of ``series`` series produced:
    ``(KafkaSettings, seconds to produce)``."""
    from models.core.settings import KafkaSettings
    from pipeline.kafka.clients import ensure_topics

    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        events_topic="bench-events",
        anomalies_topic="bench-anomalies",
        dead_letter_topic="bench-dead",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        partitions=4,
    )
    ensure_topics(kafka)
    return kafka, produce(broker.bootstrap_servers, kafka.events_topic, series, events)


def main() -> None:
    """The benchmark script: its sections run in order and print as they go (long because it is that
    script, read top to bottom; the measurements themselves are the functions it calls)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--paced-events", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--produce-child", nargs=4, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--routing-only", action="store_true", help="only section 6 (routing, per-series export)")
    args = ap.parse_args()
    if args.rss_child is not None:
        return rss_child(args.rss_child)
    if args.produce_child is not None:
        bootstrap, topic, n_series, n_events = args.produce_child
        produce(bootstrap, topic, int(n_series), int(n_events), rate=args.rate)
        return None

    import torch

    from pipeline.kafka.broker import EmbeddedBroker
    from pipeline.kafka.clients import ensure_topics

    torch.set_num_threads(1)
    if args.routing_only:
        with EmbeddedBroker() as broker:
            kafka, secs = _bench_topics(broker, args.series, args.events)
            print(
                f"bench_e2e --routing-only: {args.series} series, {args.events} events (produced in {secs:.1f}s), "
                f"repeats={args.repeats} (median [min..max])"
            )
            routing_throughput(kafka, args.events, args.repeats)
        for k in (500, 5000):
            print(export_memory(k))
        return None
    print(
        f"bench_e2e: {args.series} series, {args.events} events, cpus={os.cpu_count()}, torch threads=1, "
        f"repeats={args.repeats} (median [min..max])"
    )
    runs = {  # label -> (kind, precision, fetch process, torch threads)
        "many-to-many": ("many-to-many", "fp32", True, 1),
        "many-to-many in-process": ("many-to-many", "fp32", False, 1),
        "many-to-one": ("many-to-one", "fp32", True, 1),
        "many-to-one 2 threads": ("many-to-one", "fp32", True, 2),
        "many-to-one in-process": ("many-to-one", "fp32", False, 1),
        "many-to-one bf16": ("many-to-one", "bf16", True, 1),
    }
    if not _native_bf16():  # emulated bf16 is ~10x slower than fp32 here: a run would only hit the deadline
        print("many-to-one bf16 e2e run skipped: this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
        del runs["many-to-one bf16"]
    with EmbeddedBroker() as broker:
        kafka, secs = _bench_topics(broker, args.series, args.events)
        print(f"produced {args.events} events in {secs:.1f}s ({args.events / secs:,.0f}/s)")

        raw_rates, rates, busy, last = [], {label: [] for label in runs}, {label: [] for label in runs}, {}
        fetch_rss = None
        for _ in range(args.repeats):
            raw_rates.append(raw_consume(kafka, args.events))
            for label, (kind, prec, fetch_process, threads) in runs.items():
                bundle = make_bundle(kind, precision=prec)  # fresh state, same weights
                rate, scorer = run_scorer(kafka, bundle, args.events, fetch_process=fetch_process, threads=threads)
                fetch_rss = scorer.fetch_rss or fetch_rss
                rates[label].append(rate)
                busy[label].append(scorer.stats.busy_s * rate / max(scorer.stats.consumed, 1))
                last[label] = scorer.stats
        raw = float(np.median(raw_rates))
        print(f"raw consume+decode (kafka-python + orjson):          {_spread(raw_rates)} events/s")
        results = {}
        for label in runs:
            rate = float(np.median(rates[label]))
            results[label] = rate
            ratios = [r / w for r, w in zip(rates[label], raw_rates)]
            st = last[label]
            print(
                f"scorer e2e {label:<24} (h 64, w 64): {_spread(rates[label])} events/s = {rate / raw:.2f}x raw "
                f"(per-round ratios {', '.join(f'{x:.2f}' for x in ratios)}; scorer busy "
                f"{100 * float(np.median(busy[label])):.0f}% of wall; scored {st.scored}, warm-up {st.warmup}, "
                f"batches {st.batches})"
            )

        # latency at a paced rate on a fresh topic
        paced = kafka.model_copy(update={"events_topic": "bench-paced"})
        ensure_topics(paced, [paced.events_topic])
        box = {}
        runner = threading.Thread(
            target=lambda: box.update(r=run_scorer(paced, make_bundle("many-to-many"), args.paced_events, latency=True))
        )
        runner.start()
        time.sleep(4.0)  # let the group join before the first event
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--rate",
                str(args.rate),
                "--produce-child",
                broker.bootstrap_servers,
                paced.events_topic,
                str(args.series),
                str(args.paced_events),
            ],
            check=True,
        )
        runner.join(120)
        _, scorer = box["r"]
        e2e = np.concatenate([a for a, _ in scorer.latency_log]) * 1000
        own = np.concatenate([np.full(len(a), b) for a, b in scorer.latency_log]) * 1000
        print(
            f"latency at {args.rate:,.0f} events/s ({len(e2e)} events, many-to-many): "
            f"p50 {np.percentile(e2e, 50):.1f} ms, p99 {np.percentile(e2e, 99):.1f} ms, max {e2e.max():.1f} ms; "
            f"scorer's own part (poll returned -> decided) p50 {np.percentile(own, 50):.2f} ms, "
            f"p99 {np.percentile(own, 99):.2f} ms ({100 * np.median(own / np.maximum(e2e, 1e-9)):.0f}% of the "
            f"median event's latency)"
        )
        floor_topic = kafka.model_copy(update={"events_topic": "bench-paced-raw"})
        ensure_topics(floor_topic, [floor_topic.events_topic])
        floor = raw_latency(floor_topic, broker.bootstrap_servers, args.series, args.paced_events, args.rate) * 1000
        print(
            f"transport floor at {args.rate:,.0f} events/s (bare kafka-python consumer, no scoring, {len(floor)} events): "
            f"p50 {np.percentile(floor, 50):.1f} ms, p99 {np.percentile(floor, 99):.1f} ms"
        )
        added = float(np.percentile(e2e, 99) - np.percentile(floor, 99))
        print(
            f"end-to-end p99 {np.percentile(e2e, 99):.1f} ms beside the transport floor p99 "
            f"{np.percentile(floor, 99):.1f} ms: scorer-added p99 {added:+.1f} ms (target <= 5 ms: {added <= 5.0}); "
            f"many-to-many throughput {results['many-to-many'] / raw:.2f}x raw consume (target >= 0.8x: "
            f"{results['many-to-many'] / raw >= 0.8})"
        )
        routing_throughput(kafka, args.events, args.repeats)
    for k in (500, 5000):
        print(export_memory(k))

    print(bf16_difference())
    for threads in (1, 2):
        ceiling = model_ceiling(threads)
        print(
            f"many-to-one model alone, {threads} thread(s) (B=256, h 64, w 64): {ceiling:,.0f} windows/s = "
            f"{ceiling / raw:.2f}x raw (the ceiling of a many-to-one scorer here)"
        )
    rss = {}
    for n in (1_000, 100_000):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(n)], capture_output=True, text=True, check=True
        )
        rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
    per_series = (rss[100_000]["rss_bytes"] - rss[1_000]["rss_bytes"]) / (100_000 - 1_000)
    print(
        f"scorer RSS: {rss[1_000]['rss_bytes'] / 2**20:.0f} MiB at 1k series, "
        f"{rss[100_000]['rss_bytes'] / 2**20:.0f} MiB at 100k series -> {per_series:,.0f} B/series "
        f"(state arrays {rss[100_000]['array_bytes_per_series']} B/series; rest: id strings + dict); "
        f"fetch process RSS {fetch_rss / 2**20:.0f} MiB (holds no series state)"
    )
    print(
        "targets: m2m >= 0.8x raw: {}; m2o >= 0.3x raw: {} (fp32), {} (fp32, 2 threads), {} (bf16); p99 < 50 ms: {}; "
        "< 1 KiB/series: {}".format(
            results["many-to-many"] / raw >= 0.8,
            results["many-to-one"] / raw >= 0.3,
            results["many-to-one 2 threads"] / raw >= 0.3,
            results["many-to-one bf16"] / raw >= 0.3 if "many-to-one bf16" in results else "n/a",
            float(np.percentile(e2e, 99)) < 50,
            per_series < 1024,
        )
    )


def _native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _spread(values) -> str:
    return f"{np.median(values):>9,.0f} [{min(values):,.0f}..{max(values):,.0f}]"


def bf16_difference(n: int = 4096, window: int = 64) -> str:
    """bf16 vs fp32 many-to-one predictions on windows of the benchmark's signal (normalised units)."""
    import torch

    fp32, bf16 = make_bundle("many-to-one").forecaster, make_bundle("many-to-one", precision="bf16").forecaster
    t = np.arange(window)[None, :] + np.arange(n)[:, None]
    s = np.arange(n)[:, None] % 1000
    x = np.sin(t / 10.0 + s) / np.sqrt(0.5)  # the bench signal, unit variance
    with torch.inference_mode():
        xt = torch.from_numpy(x.astype(np.float32))[:, :, None]
        a, b = fp32(xt)[:, 0].numpy(), bf16(xt)[:, 0].numpy()
    d = np.abs(a - b)
    return (
        f"bf16 vs fp32 many-to-one predictions ({n} windows, untrained bench model): max |diff| {d.max():.2e}, "
        f"mean {d.mean():.2e} normalised units (prediction std {a.std():.2e})"
    )


if __name__ == "__main__":
    main()
