"""``tsad demo``: the whole pipeline on one real NAB series, in one command, on CPU.

Steps: start the embedded Kafka broker -> train a many-to-one and a many-to-many forecaster
(small, a few epochs) on the first part of the series and register/promote them in a temporary
registry -> start one scorer per model (each its own consumer group, metrics endpoint on
loopback) -> publish the rest of the series as events -> print anomalies as they are flagged ->
summary per model: events scored, anomalies, labelled NAB anomaly windows caught/missed,
events/s, where metrics were served. Everything runs in this process (threads) and the broker
child is stopped on exit, so nothing is left behind.
"""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
NAB_DIR = REPO_ROOT / "data" / "nab"
KINDS = ("many-to-many", "many-to-one")


def _labels(series: str) -> list[tuple[float, float]]:
    """Labelled anomaly windows of a NAB file as (start, end) epoch seconds (none without a labels file)."""
    from models.data import load_label_windows

    path = NAB_DIR / "labels" / "combined_windows.json"
    return load_label_windows(path).get(series, []) if path.exists() else []


def run_demo(series: str = "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv", train_fraction: float = 0.4,
             epochs: int = 8, metrics_port: int = 0, window: int = 32, hidden: int = 32) -> int:
    """Run the demo; returns the process exit code (0 on success)."""
    import torch

    from models.forecasters import ForecasterConfig
    from models.registry import ModelRegistry
    from models.training import fit
    from pipeline.broker import EmbeddedBroker, free_port
    from pipeline.events import parse_timestamp
    from pipeline.kafka_clients import ensure_topics, make_producer
    from pipeline.metrics import ScorerMetrics, serve_metrics
    from pipeline.publish import publish_rows, read_series_csv
    from pipeline.reload import ChampionWatcher
    from pipeline.scorer import Scorer
    from pipeline.scoring import DetectorConfig, StreamingDetector
    from pipeline.settings import KafkaSettings, Settings

    console = Console(width=max(Console().width, 120))
    path = NAB_DIR / "data" / series
    if not path.exists():
        console.print(f"[red]no such NAB file: {path}[/red]")
        return 2
    torch.set_num_threads(1)
    started = time.perf_counter()
    frame = read_series_csv(path)
    values = frame["value"].to_numpy(dtype=np.float64)
    cut = int(len(values) * train_fraction)
    series_id = Path(series).stem
    windows = _labels(series)
    console.rule(f"[bold]tsad demo[/bold]: {series} ({len(values)} points; train on {cut}, stream {len(values) - cut})")

    with tempfile.TemporaryDirectory(prefix="tsad-demo-") as tmp, \
            EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
        console.print(f"broker: Tansu on {broker.bootstrap_servers}")
        registry = ModelRegistry(Path(tmp) / "registry")
        for kind in KINDS:
            t0 = time.perf_counter()
            bundle, report = fit(ForecasterConfig(kind=kind, window=window, hidden=hidden),
                                 {series_id: values[:cut]}, epochs=epochs, progress=False, name=f"demo-{kind}")
            version = registry.register(bundle)
            registry.promote(bundle.name, version)
            console.print(f"trained {kind:<12} hidden={hidden} window={window}: best val MSE "
                          f"{report.best_val_loss:.3f} in {time.perf_counter() - t0:.1f}s -> {bundle.name} v{version}")

        suffix = uuid.uuid4().hex[:6]
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, events_topic=f"demo-events-{suffix}",
                              anomalies_topic=f"demo-anomalies-{suffix}", dead_letter_topic=f"demo-dead-{suffix}",
                              session_timeout_ms=2000, heartbeat_interval_ms=500, partitions=1)
        ensure_topics(kafka)
        scorers, threads, urls = {}, [], {}
        stop = threading.Event()
        lock = threading.Lock()
        flagged: dict[str, list[float]] = {kind: [] for kind in KINDS}

        def shower(kind):
            def show(record):
                with lock:
                    flagged[kind].append(record["ts"])
                    when = datetime.fromtimestamp(record["ts"], timezone.utc).strftime("%Y-%m-%d %H:%M")
                    hit = any(a <= record["ts"] <= b for a, b in windows)
                    console.print(f"[{'green' if hit else 'yellow'}]anomaly[/] {kind:<12} {record['series']} {when} "
                                  f"value={record['value']:.3f} predicted={record['predicted']:.3f} "
                                  f"score={record['score']:.1f} {'(in a labelled window)' if hit else ''}")
            return show

        try:  # every scorer thread and metrics server started here is stopped, whatever fails below
            for i, kind in enumerate(KINDS):
                name = f"demo-{kind}"
                watcher = ChampionWatcher(registry, name, None)
                detector = StreamingDetector(watcher.load_initial(), DetectorConfig())
                metrics = ScorerMetrics()
                port = metrics_port + i if metrics_port else free_port()
                server, _ = serve_metrics(metrics.registry, "127.0.0.1", port)
                urls[kind] = f"http://127.0.0.1:{server.server_port}/metrics"
                settings = Settings(kafka=kafka.model_copy(update={"group_id": f"demo-{kind}-{suffix}"}))
                scorer = Scorer(settings, detector, metrics, watcher=watcher, on_anomaly=shower(kind))
                scorers[kind] = (scorer, server)
                thread = threading.Thread(target=scorer.run, args=(stop,), name=f"scorer-{kind}", daemon=True)
                thread.start()
                threads.append(thread)
                console.print(f"scorer {kind:<12} serving {name} v{detector.model_version}; metrics at {urls[kind]}")

            producer = make_producer(kafka)
            try:
                report = publish_rows(producer, kafka.events_topic, series_id, frame["timestamp"].iloc[cut:],
                                      values[cut:])
            finally:
                producer.close()
            console.print(f"published {report.events} events in {report.seconds:.2f}s")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(s.stats.consumed < report.events for s, _ in scorers.values()):
                time.sleep(0.1)
            scraped = {kind: _scrape(urls[kind]) for kind in KINDS}
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            for _, server in scorers.values():
                server.shutdown()
                server.server_close()

        stream_ts = np.array([parse_timestamp(t) for t in frame["timestamp"].iloc[cut:]])
        table = Table(title=f"summary: {series} (labelled windows from NAB combined_windows.json)")
        table.add_column("")
        for kind in KINDS:
            table.add_column(kind, justify="right")
        rows: dict[str, list[str]] = {}
        ok = True
        relevant = [(a, b) for a, b in windows if a <= stream_ts[-1] and b >= stream_ts[0]]
        for kind in KINDS:
            st = scorers[kind][0].stats
            ok &= st.consumed == report.events
            caught = sum(any(a <= t <= b for t in flagged[kind]) for a, b in relevant)
            outside = sum(not any(a <= t <= b for a, b in windows) for t in flagged[kind])
            rate = st.consumed / st.busy_s if st.busy_s else float("nan")
            for label, value in (("events consumed", st.consumed), ("events scored", st.scored),
                                 ("events in warm-up", st.warmup), ("events rejected", st.rejected_total),
                                 ("anomalies flagged", st.anomalies), ("labelled windows caught", caught),
                                 ("labelled windows missed", len(relevant) - caught),
                                 ("alerts outside labelled windows", outside),
                                 ("events/s (scorer busy time)", f"{rate:,.0f}")):
                rows.setdefault(label, []).append(str(value))
        for label, values in rows.items():
            table.add_row(label, *values)
        console.print(table)
        for kind in KINDS:
            console.print(f"metrics of {kind} were served at {urls[kind]} "
                          f"(scraped {scraped[kind]} tsad_ samples)")
        console.print(f"done in {time.perf_counter() - started:.1f}s")
        if not ok:
            console.print("[red]not every published event was consumed[/red]")
            return 1
    return 0


def _scrape(url: str) -> int:
    """How many tsad_ samples ``/metrics`` returns (parsed with the Prometheus text parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(len(f.samples) for f in text_string_to_metric_families(text) if f.name.startswith("tsad_"))
