"""Duplicates after ``kill -9`` at the default checkpoint settings (prints numbers; no pass/fail).

A producer paces events at ``--rate`` events/s into a fresh topic on the embedded broker while
``tsad serve`` (a real process, default checkpoint settings unless given) scores them with a
threshold that makes every scored event an anomaly record (a receipt). Mid-stream the scorer is
killed with SIGKILL and a second one is started; once every event has a receipt, the receipts
whose source appears twice are the duplicates. Printed beside the bound the settings imply.

Usage: ``python benchmarks/bench_kill9.py [--rate 5000] [--seconds 8] [--kill-after 4]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

TSAD = str(Path(sys.executable).parent / "tsad")
T0 = 1_700_000_000


def main() -> None:
    """The kill -9 scenario as one script, step by step (long because the steps share the broker,
    the topics and the scorer processes they start and read)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--kill-after", type=float, default=4.0, help="seconds of scoring before the kill")
    parser.add_argument("--series", type=int, default=200)
    args = parser.parse_args()

    from models.core.settings import KafkaSettings, Settings
    from models.forecasting.forecasters import ForecasterConfig
    from models.forecasting.training import fit
    from models.registry import ModelRegistry
    from pipeline.events import encode_event
    from pipeline.kafka.broker import EmbeddedBroker
    from pipeline.kafka.clients import ensure_topics, make_producer

    defaults = Settings()
    tmp = Path(tempfile.mkdtemp(prefix="kill9-"))
    reg = ModelRegistry(tmp / "registry")
    bundle, _ = fit(
        ForecasterConfig(kind="many-to-many", window=8, hidden=16),
        {"s": np.sin(np.arange(300) / 6.0)},
        epochs=1,
        progress=False,
        name="m",
    )
    reg.promote("m", reg.register(bundle))
    with EmbeddedBroker() as broker:
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            events_topic="k9-events",
            anomalies_topic="k9-anomalies",
            dead_letter_topic="k9-dead",
            group_id="k9",
        )
        ensure_topics(kafka)
        total = int(args.rate * args.seconds)
        sent: list = []

        def produce() -> None:
            producer = make_producer(kafka, linger_ms=2)
            start, futures = time.perf_counter(), []
            for i in range(total):
                if i % 50 == 0:
                    delay = start + i / args.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)  # pacing
                s, t = i % args.series, i // args.series
                futures.append(
                    producer.send(
                        kafka.events_topic,
                        key=f"s-{s}".encode(),
                        value=encode_event(f"s-{s}", T0 + 60 * t, float(np.sin(t / 6 + s))),
                    )
                )
            producer.flush()
            sent.extend((m.partition, m.offset) for m in (f.get(timeout=30) for f in futures))
            producer.close()

        def serve() -> subprocess.Popen:
            cmd = [
                TSAD,
                "serve",
                "--bootstrap-servers",
                kafka.bootstrap_servers,
                "--registry",
                str(tmp / "registry"),
                "--model",
                "m",
                "--group-id",
                kafka.group_id,
                "--events-topic",
                kafka.events_topic,
                "--anomalies-topic",
                kafka.anomalies_topic,
                "--dead-letter-topic",
                kafka.dead_letter_topic,
                "--metrics-port",
                "0",
                "--threshold-method",
                "zscore",
                "--threshold=-1e9",
                "--warmup-events",
                "0",
                "--log-level",
                "INFO",
            ]
            with open(tmp / f"serve-{time.monotonic():.0f}.log", "ab") as log:  # the child keeps its own copy
                return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True), log.name

        def assigned(log_path: str, timeout_s: float = 60.0) -> None:
            deadline = time.monotonic() + timeout_s
            while "partitions assigned" not in Path(log_path).read_text():
                if time.monotonic() > deadline:
                    raise SystemExit(f"the scorer joined no group in {timeout_s:.0f} s (see {log_path})")
                time.sleep(0.1)

        first, first_log = serve()
        assigned(first_log)  # score a live stream, not a start-up backlog
        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(args.kill_after)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        check = KafkaConsumer(**kafka.client_config(), group_id=kafka.group_id, enable_auto_commit=False)
        committed = sum(check.committed(TopicPartition(kafka.events_topic, p)) or 0 for p in range(kafka.partitions))
        check.close()
        second, _ = serve()
        producer.join()
        reader = KafkaConsumer(
            **kafka.client_config(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        parts = [TopicPartition(kafka.anomalies_topic, p) for p in range(kafka.partitions)]
        reader.assign(parts)
        reader.seek_to_beginning(*parts)
        got: list = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(got) >= set(sent):
            for batch in reader.poll(timeout_ms=500).values():
                got.extend(
                    (a["source"]["partition"], a["source"]["offset"]) for a in (orjson.loads(r.value) for r in batch)
                )
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        reader.close()
    counts = Counter(got)
    dups = sum(1 for n in counts.values() if n > 1)
    lost = len(set(sent) - set(counts))
    print(
        f"kill -9 after {args.kill_after:.0f} s at {args.rate:,.0f} events/s, checkpoint every "
        f"{defaults.commit_interval_ms} ms or {defaults.commit_every_events} events: {total} events, "
        f"{committed} committed at the kill, {dups} duplicates ({dups / args.rate * 1000:.0f} ms of events), "
        f"{lost} lost (scorer logs in {tmp})"
    )


if __name__ == "__main__":
    main()
