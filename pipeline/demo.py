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

Long (~390 lines) because it is a script of the whole product: each step is a short function,
and they read top to bottom in the order the demo runs them.
"""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from models.core.kinds import Kind

if TYPE_CHECKING:
    import pandas as pd

    from models.core.settings import KafkaSettings
    from models.registry import ModelRegistry
    from models.routing import Routing
    from pipeline.metrics import ScorerMetrics
    from pipeline.serve.anomaly_export import AnomalousSeries
    from pipeline.serve.scorer import Scorer

REPO_ROOT = Path(__file__).resolve().parent.parent
NAB_DIR = REPO_ROOT / "data" / "nab"
# (routing group, NAB file, glob of the family, model kind)
FAMILIES: tuple[tuple[str, str, str, Kind], ...] = (
    ("cpu", "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv", "ec2_cpu_*", "many-to-many"),
    ("traffic", "realTraffic/speed_7578.csv", "speed_*", "many-to-one"),
)


@dataclass(frozen=True)
class Family:
    """One series family of the demo: its routing group, NAB file, series glob and model kind."""

    group: str
    file: str
    glob: str
    kind: Kind

    @property
    def model(self) -> str:
        return f"{self.group}-{self.kind}"


@dataclass(frozen=True)
class FamilyData:
    """A family's NAB series: the first ``cut`` values train its model, the rest are streamed."""

    sid: str
    frame: pd.DataFrame
    values: np.ndarray  # (time,)
    cut: int
    windows: list[tuple[float, float]]  # labelled anomaly windows, epoch seconds


def _labels(series: str) -> list[tuple[float, float]]:
    """Labelled anomaly windows of a NAB file as (start, end) epoch seconds (none without a labels file)."""
    from models.forecasting.data import load_label_windows

    path = NAB_DIR / "labels" / "combined_windows.json"
    windows: list[tuple[float, float]] = load_label_windows(path).get(series, []) if path.exists() else []
    return windows


def _families(series: str) -> list[Family]:
    """The ``cpu`` family on ``series`` (its glob: ``ec2_cpu_*`` for an EC2 CPU file, else its stem), then ``traffic``."""
    cpu, traffic = (Family(*f) for f in FAMILIES)
    glob = cpu.glob if Path(series).stem.startswith("ec2_cpu_") else Path(series).stem
    return [Family(cpu.group, series, glob, cpu.kind), traffic]


def _load(families: list[Family], train_fraction: float) -> dict[str, FamilyData]:
    from pipeline.kafka.publish import read_series_csv

    data = {}
    for family in families:
        frame = read_series_csv(NAB_DIR / "data" / family.file)
        values = frame["value"].to_numpy(dtype=np.float64)
        data[family.group] = FamilyData(
            Path(family.file).stem, frame, values, int(len(values) * train_fraction), _labels(family.file)
        )
    return data


def _train(
    console: Console,
    registry: ModelRegistry,
    families: list[Family],
    data: dict[str, FamilyData],
    epochs: int,
    window: int,
    hidden: int,
) -> None:
    """One forecaster per family on its training part, registered and promoted."""
    from models.forecasting.forecasters import ForecasterConfig
    from models.forecasting.training import fit

    for family in families:
        part = data[family.group]
        t0 = time.perf_counter()
        bundle, report = fit(
            ForecasterConfig(kind=family.kind, window=window, hidden=hidden),
            {part.sid: part.values[: part.cut]},
            epochs=epochs,
            progress=False,
            name=family.model,
        )
        version = registry.register(bundle)
        registry.promote(bundle.name, version)
        console.print(
            f"trained {bundle.name:<20} hidden={hidden} window={window}: best val MSE "
            f"{report.best_val_loss:.3f} in {time.perf_counter() - t0:.1f}s -> v{version}"
        )


def _write_routing(console: Console, tmp: Path, families: list[Family]) -> Routing:
    """Every family but the last routed by its glob, the last one the default."""
    from models.routing import Routing

    routing_doc = {
        "routes": [{"group": f.group, "match": f.glob, "model": f.model} for f in families[:-1]],
        "default": {"group": families[-1].group, "model": families[-1].model},
    }
    routing_path = tmp / "routing.yaml"
    routing_path.write_text(yaml.safe_dump(routing_doc, sort_keys=False))
    routing = Routing.load(routing_path)
    console.print(
        "routing: "
        + "; ".join(f"{', '.join(r.patterns)} -> {r.model}" for r in routing.routes)
        + f"; every other series -> {routing.default.model}"
    )
    return routing


def _demo_kafka(bootstrap_servers: str) -> KafkaSettings:
    """Fresh topic names and group on the demo broker, with quick group joins."""
    from models.core.settings import KafkaSettings

    suffix = uuid.uuid4().hex[:6]
    return KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        events_topic=f"demo-events-{suffix}",
        anomalies_topic=f"demo-anomalies-{suffix}",
        dead_letter_topic=f"demo-dead-{suffix}",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        partitions=2,
        group_id=f"demo-{suffix}",
    )


class AnomalyPrinter:
    """The scorer's ``on_anomaly``: prints each anomaly (green inside a labelled window) and remembers its time."""

    def __init__(self, console: Console, windows_of: dict[str, list[tuple[float, float]]]):
        self.console = console
        self.windows_of = windows_of
        self.flagged: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.flagged.setdefault(record["series"], []).append(record["ts"])
            when = datetime.fromtimestamp(record["ts"], UTC).strftime("%Y-%m-%d %H:%M")
            hit = any(a <= record["ts"] <= b for a, b in self.windows_of.get(record["series"], []))
            band = f"[{record['lower']:.3f}, {record['upper']:.3f}]" if record.get("lower") is not None else "[-]"
            self.console.print(
                f"[{'green' if hit else 'yellow'}]anomaly[/] flagged by {record['model']:<20} "
                f"{record['series']} {when} value={record['value']:.3f} "
                f"expected={record['predicted']:.3f} band={band} score={record['score']:.2f} "
                f"{'(in a labelled window)' if hit else ''}"
            )


@dataclass
class LiveRun:
    """What the live part of the demo leaves for the summary."""

    scorer: Scorer
    metrics: ScorerMetrics
    export: AnomalousSeries
    url: str
    published: int
    scraped: int


def _publish(console: Console, kafka: KafkaSettings, families: list[Family], data: dict[str, FamilyData]) -> int:
    """The streamed part of every family's series, as events; returns how many were acknowledged."""
    from pipeline.kafka.clients import make_producer
    from pipeline.kafka.publish import publish_rows

    total = 0
    producer = make_producer(kafka)
    try:
        t0 = time.perf_counter()
        for family in families:
            part = data[family.group]
            total += publish_rows(
                producer,
                kafka.events_topic,
                part.sid,
                part.frame["timestamp"].iloc[part.cut :],
                part.values[part.cut :],
            ).events
    finally:
        producer.close()
    console.print(f"published {total} events in {time.perf_counter() - t0:.2f}s")
    return total


def _score_live(
    console: Console,
    registry: ModelRegistry,
    routing: Routing,
    kafka: KafkaSettings,
    families: list[Family],
    data: dict[str, FamilyData],
    printer: AnomalyPrinter,
    metrics_port: int,
) -> LiveRun:
    """Start the routed scorer (thread) and its metrics endpoint, publish, wait until every event is consumed."""
    from models.core.settings import Settings
    from models.detection.detector import DetectorConfig
    from models.detection.routed import RoutedDetector
    from pipeline.kafka.broker import free_port
    from pipeline.metrics import ScorerMetrics, serve_metrics
    from pipeline.serve.anomaly_export import AnomalousSeries
    from pipeline.serve.scorer import Scorer
    from pipeline.serve.serving_models import build_detector

    detector, watchers = build_detector(registry.root, routing, DetectorConfig())
    if not isinstance(detector, RoutedDetector):  # the demo's routing file always names two models
        raise RuntimeError("the demo needs a routed detector")
    metrics = ScorerMetrics()
    export = AnomalousSeries()
    metrics.registry.register(export)
    server, _ = serve_metrics(metrics.registry, "127.0.0.1", metrics_port or free_port())
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    scorer = Scorer(Settings(kafka=kafka), detector, metrics, watcher=watchers, on_anomaly=printer)
    scorer.observers.append(export)
    stop = threading.Event()
    thread = threading.Thread(target=scorer.run, args=(stop,), name="scorer", daemon=True)
    try:  # the scorer thread and metrics server started here are stopped, whatever fails below
        thread.start()
        serving = ", ".join(f"{m} v{d.model_version}" for m, d in detector.detectors.items())
        console.print(f"scorer serving {serving}; metrics at {url}")
        total = _publish(console, kafka, families, data)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and scorer.stats.consumed < total:
            time.sleep(0.1)
        scraped = _scrape(url)
    finally:
        stop.set()
        thread.join(30)
        server.shutdown()
        server.server_close()
    return LiveRun(scorer, metrics, export, url, total, scraped)


def _summary(
    console: Console,
    routing: Routing,
    families: list[Family],
    data: dict[str, FamilyData],
    live: LiveRun,
    flagged: dict[str, list[float]],
) -> None:
    """Per routed model: events scored, anomalies, labelled windows caught/missed, alerts outside them."""
    from pipeline.events import parse_timestamp

    table = Table(title="summary per routed model (labelled windows from NAB combined_windows.json)")
    table.add_column("")
    for family in families:
        table.add_column(f"{family.model}\n({data[family.group].sid})", justify="right")
    m = live.metrics.registry.get_sample_value
    rows: dict[str, list[str]] = {}
    for family in families:
        part = data[family.group]
        model = routing.model_of(part.sid)
        stream_ts = np.array([parse_timestamp(t) for t in part.frame["timestamp"].iloc[part.cut :]])
        relevant = [(a, b) for a, b in part.windows if a <= stream_ts[-1] and b >= stream_ts[0]]
        times = flagged.get(part.sid, [])
        caught = sum(any(a <= t <= b for t in times) for a, b in relevant)
        outside = sum(not any(a <= t <= b for a, b in part.windows) for t in times)
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

    from models.registry import ModelRegistry
    from pipeline.kafka.broker import EmbeddedBroker
    from pipeline.kafka.clients import ensure_topics

    console = Console(width=max(Console().width, 150))
    families = _families(series)
    for family in families:
        if not (NAB_DIR / "data" / family.file).exists():
            console.print(f"[red]no such NAB file: {NAB_DIR / 'data' / family.file}[/red]")
            return 2
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = _load(families, train_fraction)
    console.rule(
        "[bold]tsad demo[/bold]: "
        + "; ".join(
            f"{f.group} = {f.file} ({len(data[f.group].values)} points; train on {data[f.group].cut})" for f in families
        )
    )
    with (
        tempfile.TemporaryDirectory(prefix="tsad-demo-") as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        console.print(f"broker: Tansu on {broker.bootstrap_servers}")
        registry = ModelRegistry(Path(tmp) / "registry")
        _train(console, registry, families, data, epochs, window, hidden)
        routing = _write_routing(console, Path(tmp), families)
        kafka = _demo_kafka(broker.bootstrap_servers)
        ensure_topics(kafka)
        printer = AnomalyPrinter(console, {part.sid: part.windows for part in data.values()})
        live = _score_live(console, registry, routing, kafka, families, data, printer, metrics_port)
        _summary(console, routing, families, data, live, printer.flagged)
        code = _footer(console, live, started)
    return code


def _footer(console: Console, live: LiveRun, started: float) -> int:
    """Consumption and throughput, where metrics were served; 1 when not every published event was consumed."""
    st = live.scorer.stats
    rate = st.consumed / st.busy_s if st.busy_s else float("nan")
    console.print(
        f"events consumed {st.consumed} of {live.published} published, {st.warmup} in warm-up, "
        f"{st.rejected_total} rejected; {rate:,.0f} events/s (scorer busy time)"
    )
    console.print(
        f"metrics were served at {live.url} (scraped {live.scraped} tsad_ samples, "
        f"{len(live.export)} series in the anomalous-series export)"
    )
    console.print(f"done in {time.perf_counter() - started:.1f}s")
    if st.consumed != live.published:
        console.print("[red]not every published event was consumed[/red]")
        return 1
    return 0


def _scrape(url: str) -> int:
    """How many tsad_ samples ``/metrics`` returns (parsed with the Prometheus text parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(len(f.samples) for f in text_string_to_metric_families(text) if f.name.startswith("tsad_"))
