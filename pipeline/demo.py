"""``tsad demo``: the whole pipeline on real NAB series, two families routed to two models, on CPU.

Steps: start the embedded Kafka broker -> train one forecaster per series family on the first part
of its NAB series (family ``cpu``: an EC2 CPU trace, many-to-many; family ``traffic``: a road
traffic speed trace, many-to-one) and register/promote them in a temporary registry -> write a
routing file (``models.routing``: ``ec2_cpu_*`` -> ``cpu-many-to-many``, everything else ->
``traffic-many-to-one``) -> start one routed scorer (metrics endpoint on loopback, with the
per-series export) -> publish the rest of both series as events -> print each anomaly as it is
flagged, with the model that flagged it and its expected band -> summary per model: events
scored, anomalies, labelled NAB anomaly windows caught/missed, events/s, where metrics were
served. Everything runs in this process (threads) and the broker child is stopped on exit, so
nothing is left behind.
"""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
NAB_DIR = REPO_ROOT / "data" / "nab"
# (routing group, NAB file, glob of the family, model kind)
FAMILIES = (
    ("cpu", "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv", "ec2_cpu_*", "many-to-many"),
    ("traffic", "realTraffic/speed_7578.csv", "speed_*", "many-to-one"),
)


def _labels(series: str) -> list[tuple[float, float]]:
    """Labelled anomaly windows of a NAB file as (start, end) epoch seconds (none without a labels file)."""
    from models.forecasting.data import load_label_windows

    path = NAB_DIR / "labels" / "combined_windows.json"
    return load_label_windows(path).get(series, []) if path.exists() else []


def run_demo(
    series: str = FAMILIES[0][1],
    train_fraction: float = 0.4,
    epochs: int = 8,
    metrics_port: int = 0,
    window: int = 32,
    hidden: int = 32,
) -> int:
    """Run the demo (``series``: the NAB file of the ``cpu`` family); returns the exit code (0 on success)."""
    import torch

    from models.core.settings import KafkaSettings, Settings
    from models.detection.detector import DetectorConfig
    from models.forecasting.forecasters import ForecasterConfig
    from models.forecasting.training import fit
    from models.registry import ModelRegistry
    from models.routing import Routing
    from pipeline.events import parse_timestamp
    from pipeline.kafka.broker import EmbeddedBroker, free_port
    from pipeline.kafka.clients import ensure_topics, make_producer
    from pipeline.kafka.publish import publish_rows, read_series_csv
    from pipeline.metrics import ScorerMetrics, serve_metrics
    from pipeline.serve.anomaly_export import AnomalousSeries
    from pipeline.serve.scorer import Scorer
    from pipeline.serve.serving_models import build_detector

    console = Console(width=max(Console().width, 150))
    families = [
        (
            FAMILIES[0][0],
            series,
            FAMILIES[0][2] if Path(series).stem.startswith("ec2_cpu_") else Path(series).stem,
            FAMILIES[0][3],
        ),
        FAMILIES[1],
    ]
    for _, file, _, _ in families:
        if not (NAB_DIR / "data" / file).exists():
            console.print(f"[red]no such NAB file: {NAB_DIR / 'data' / file}[/red]")
            return 2
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = {}
    for group, file, _, _ in families:
        frame = read_series_csv(NAB_DIR / "data" / file)
        values = frame["value"].to_numpy(dtype=np.float64)
        data[group] = (Path(file).stem, frame, values, int(len(values) * train_fraction), _labels(file))
    console.rule(
        "[bold]tsad demo[/bold]: "
        + "; ".join(
            f"{group} = {file} ({len(data[group][2])} points; train on {data[group][3]})"
            for group, file, _, _ in families
        )
    )

    with (
        tempfile.TemporaryDirectory(prefix="tsad-demo-") as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        console.print(f"broker: Tansu on {broker.bootstrap_servers}")
        registry = ModelRegistry(Path(tmp) / "registry")
        for group, _, _, kind in families:
            sid, _, values, cut, _ = data[group]
            t0 = time.perf_counter()
            bundle, report = fit(
                ForecasterConfig(kind=kind, window=window, hidden=hidden),
                {sid: values[:cut]},
                epochs=epochs,
                progress=False,
                name=f"{group}-{kind}",
            )
            version = registry.register(bundle)
            registry.promote(bundle.name, version)
            console.print(
                f"trained {bundle.name:<20} hidden={hidden} window={window}: best val MSE "
                f"{report.best_val_loss:.3f} in {time.perf_counter() - t0:.1f}s -> v{version}"
            )
        routing_doc = {
            "routes": [{"group": g, "match": glob, "model": f"{g}-{k}"} for g, _, glob, k in families[:-1]],
            "default": {"group": families[-1][0], "model": f"{families[-1][0]}-{families[-1][3]}"},
        }
        routing_path = Path(tmp) / "routing.yaml"
        routing_path.write_text(yaml.safe_dump(routing_doc, sort_keys=False))
        routing = Routing.load(routing_path)
        console.print(
            "routing: "
            + "; ".join(f"{', '.join(r.patterns)} -> {r.model}" for r in routing.routes)
            + f"; every other series -> {routing.default.model}"
        )

        suffix = uuid.uuid4().hex[:6]
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            events_topic=f"demo-events-{suffix}",
            anomalies_topic=f"demo-anomalies-{suffix}",
            dead_letter_topic=f"demo-dead-{suffix}",
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
            partitions=2,
            group_id=f"demo-{suffix}",
        )
        ensure_topics(kafka)
        lock = threading.Lock()
        flagged: dict[str, list[float]] = {}
        windows_of = {data[g][0]: data[g][4] for g, _, _, _ in families}

        def show(record):
            with lock:
                flagged.setdefault(record["series"], []).append(record["ts"])
                when = datetime.fromtimestamp(record["ts"], UTC).strftime("%Y-%m-%d %H:%M")
                hit = any(a <= record["ts"] <= b for a, b in windows_of.get(record["series"], []))
                band = f"[{record['lower']:.3f}, {record['upper']:.3f}]" if record.get("lower") is not None else "[-]"
                console.print(
                    f"[{'green' if hit else 'yellow'}]anomaly[/] flagged by {record['model']:<20} "
                    f"{record['series']} {when} value={record['value']:.3f} "
                    f"expected={record['predicted']:.3f} band={band} score={record['score']:.2f} "
                    f"{'(in a labelled window)' if hit else ''}"
                )

        detector, watchers = build_detector(registry.root, routing, DetectorConfig())
        metrics = ScorerMetrics()
        export = AnomalousSeries()
        metrics.registry.register(export)
        server, _ = serve_metrics(metrics.registry, "127.0.0.1", metrics_port or free_port())
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        scorer = Scorer(Settings(kafka=kafka), detector, metrics, watcher=watchers, on_anomaly=show)
        scorer.observers.append(export)
        stop = threading.Event()
        thread = threading.Thread(target=scorer.run, args=(stop,), name="scorer", daemon=True)
        total = 0
        try:  # the scorer thread and metrics server started here are stopped, whatever fails below
            thread.start()
            serving = ", ".join(f"{m} v{d.model_version}" for m, d in detector.detectors.items())
            console.print(f"scorer serving {serving}; metrics at {url}")
            producer = make_producer(kafka)
            try:
                t0 = time.perf_counter()
                for group, _, _, _ in families:
                    sid, frame, values, cut, _ = data[group]
                    total += publish_rows(
                        producer, kafka.events_topic, sid, frame["timestamp"].iloc[cut:], values[cut:]
                    ).events
            finally:
                producer.close()
            console.print(f"published {total} events in {time.perf_counter() - t0:.2f}s")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and scorer.stats.consumed < total:
                time.sleep(0.1)
            scraped = _scrape(url)
        finally:
            stop.set()
            thread.join(30)
            server.shutdown()
            server.server_close()

        models = [f"{g}-{k}" for g, _, _, k in families]
        table = Table(title="summary per routed model (labelled windows from NAB combined_windows.json)")
        table.add_column("")
        for (group, _, _, _), model in zip(families, models):
            table.add_column(f"{model}\n({data[group][0]})", justify="right")
        m = metrics.registry.get_sample_value
        rows: dict[str, list[str]] = {}
        for group, _, _, _ in families:
            sid, frame, _, cut, windows = data[group]
            model = routing.model_of(sid)
            stream_ts = np.array([parse_timestamp(t) for t in frame["timestamp"].iloc[cut:]])
            relevant = [(a, b) for a, b in windows if a <= stream_ts[-1] and b >= stream_ts[0]]
            times = flagged.get(sid, [])
            caught = sum(any(a <= t <= b for t in times) for a, b in relevant)
            outside = sum(not any(a <= t <= b for a, b in windows) for t in times)
            for label, value in (
                ("events scored", int(m("tsad_model_events_scored_total", {"model": model}) or 0)),
                ("anomalies flagged", int(m("tsad_model_anomalies_total", {"model": model}) or 0)),
                ("labelled windows caught", caught),
                ("labelled windows missed", len(relevant) - caught),
                ("alerts outside labelled windows", outside),
            ):
                rows.setdefault(label, []).append(str(value))
        for label, values in rows.items():
            table.add_row(label, *values)
        console.print(table)
        st = scorer.stats
        rate = st.consumed / st.busy_s if st.busy_s else float("nan")
        console.print(
            f"events consumed {st.consumed} of {total} published, {st.warmup} in warm-up, "
            f"{st.rejected_total} rejected; {rate:,.0f} events/s (scorer busy time)"
        )
        console.print(
            f"metrics were served at {url} (scraped {scraped} tsad_ samples, "
            f"{len(export)} series in the anomalous-series export)"
        )
        console.print(f"done in {time.perf_counter() - started:.1f}s")
        if st.consumed != total:
            console.print("[red]not every published event was consumed[/red]")
            return 1
    return 0


def _scrape(url: str) -> int:
    """How many tsad_ samples ``/metrics`` returns (parsed with the Prometheus text parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(len(f.samples) for f in text_string_to_metric_families(text) if f.name.startswith("tsad_"))
