"""CLI commands of the scorer: ``tsad serve`` (the streaming scorer) and ``tsad demo``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from models.core.settings import Settings
    from models.detection.detector import DetectorConfig
    from models.routing import Routing
    from pipeline.metrics import ScorerMetrics

log = logging.getLogger("tsad.serve")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("demo")(demo)


# Long only in its signature (one typer option per flag); the body: options -> settings -> detector -> run.
def serve(
    bootstrap_servers: str = typer.Option(None, help="Kafka bootstrap servers (default: settings)."),
    registry: str = typer.Option(None, help="Model registry directory (default: TSAD_REGISTRY_DIR)."),
    model: str = typer.Option(
        None,
        envvar="TSAD_MODEL",
        help="Registry model whose champion scores every series (default: 'default'; not with --routing).",
    ),
    routing: str = typer.Option(
        None,
        help="Routing file (YAML/JSON): series globs -> models, first match wins "
        "(default: TSAD_ROUTING). Read at start: changes need a restart.",
    ),
    alertmanager_url: str = typer.Option(
        None,
        help="Post anomalies as alerts to this Alertmanager "
        "(e.g. http://127.0.0.1:9093; default: TSAD_ALERTMANAGER_URL).",
    ),
    alert_resolve_after: float = typer.Option(
        None,
        help="Resolve a series' alert after this many seconds without "
        "an anomaly (default: TSAD_ALERT_RESOLVE_AFTER_S, 300).",
    ),
    anomalous_series_max: int = typer.Option(
        None,
        help="Recently anomalous series exported with a series label, at "
        "most (default: TSAD_ANOMALOUS_SERIES_MAX, 500).",
    ),
    group_id: str = typer.Option(None, help="Consumer group (default: settings)."),
    events_topic: str = typer.Option(None, help="Events topic (default: settings)."),
    anomalies_topic: str = typer.Option(None, help="Anomalies topic (default: settings)."),
    dead_letter_topic: str = typer.Option(None, help="Dead-letter topic (default: settings)."),
    metrics_host: str = typer.Option(None, help="Metrics bind address (default: 127.0.0.1)."),
    metrics_port: int = typer.Option(None, help="Metrics port (default: 9464; 0 disables)."),
    max_series: int = typer.Option(None, help="Tracked-series cap (least recently seen evicted)."),
    warmup_events: int = typer.Option(None, help="Values a series needs before alerting (default: model window)."),
    threshold_method: str = typer.Option(
        None, help="Error -> score method: likelihood (default, score in [0, 1]) | zscore | static."
    ),
    threshold: float = typer.Option(None, help="Score threshold (default: 0.5 for likelihood, 6 otherwise)."),
    likelihood_config: str = typer.Option(
        None,
        help='Likelihood tunables as JSON, e.g. \'{"warmup": 100, '
        '"refractory": 40}\' (see models/detection/thresholds/error_likelihood.py).',
    ),
    replay_messages: int = typer.Option(20_000, help="Messages re-read per assigned partition to warm state."),
    commit_interval_ms: int = typer.Option(
        None, help="Checkpoint (flush, check, commit) at least this often (default: TSAD_COMMIT_INTERVAL_MS, 1000)."
    ),
    commit_every_events: int = typer.Option(
        None, help="... or after this many events (default: TSAD_COMMIT_EVERY_EVENTS, 20000)."
    ),
    reload_interval: float = typer.Option(1.0, help="Seconds between champion pointer checks."),
    torch_threads: int = typer.Option(1, help="torch intra-op threads."),
    precision: str = typer.Option(
        "fp32",
        help="Window (many-to-one) model precision: fp32 | bf16 (~2x faster, "
        "predictions differ slightly; many-to-many always fp32).",
    ),
    fetch_process: bool = typer.Option(
        True,
        help="Fetch in a child process while the previous batch is scored "
        "(two cores; --no-fetch-process polls in-process).",
    ),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Score the events topic continuously; SIGTERM/SIGINT finish the batch, commit and exit."""
    _configure_logging(log_level)
    import torch

    from models.core.settings import load_settings

    torch.set_num_threads(max(torch_threads, 1))
    settings = load_settings(
        registry_dir=registry,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        max_series=max_series,
        commit_interval_ms=commit_interval_ms,
        commit_every_events=commit_every_events,
        routing=routing,
        alertmanager_url=alertmanager_url,
        alert_resolve_after_s=alert_resolve_after,
        anomalous_series_max=anomalous_series_max,
        kafka={
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "events_topic": events_topic,
            "anomalies_topic": anomalies_topic,
            "dead_letter_topic": dead_letter_topic,
        },
    )
    if precision not in ("fp32", "bf16"):
        _fail(f"--precision must be fp32 or bf16, got {precision!r}")
    plan = _routing(settings, model)
    config = _detector_config(settings, warmup_events, threshold_method, threshold, likelihood_config)
    detector, watchers = _build_detector(settings, plan, config, reload_interval, precision)
    _run(settings, plan, detector, watchers, replay_messages=replay_messages, fetch_process=fetch_process)


def _configure_logging(log_level: str) -> None:
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))


def _fail(message: str, cause: BaseException | None = None) -> NoReturn:
    """One line on stderr, exit code 2 (bad flags, settings or models: refused before any work)."""
    typer.echo(message, err=True)
    raise typer.Exit(2) from cause


def _routing(settings: Settings, model: str | None) -> Routing:
    """The routing file (``--routing``/``TSAD_ROUTING``), else every series to ``--model`` (default 'default')."""
    from models.routing import Routing, RoutingError

    if settings.routing and model:
        _fail("set either --routing (TSAD_ROUTING) or --model (TSAD_MODEL), not both")
    try:
        return Routing.load(settings.routing) if settings.routing else Routing.single(model or "default")
    except RoutingError as error:
        _fail(f"error: {error}", error)


def _detector_config(
    settings: Settings,
    warmup_events: int | None,
    threshold_method: str | None,
    threshold: float | None,
    likelihood_config: str | None,
) -> DetectorConfig:
    from models.detection.detector import DetectorConfig

    overrides: dict[str, Any] = {"threshold_method": threshold_method, "threshold": threshold}
    try:
        if likelihood_config:
            overrides["likelihood"] = json.loads(likelihood_config)
        return DetectorConfig(
            max_series=settings.max_series,
            warmup_events=warmup_events,
            **{k: v for k, v in overrides.items() if v is not None},
        )
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        _fail(f"invalid detector settings: {error}", error)


def _build_detector(
    settings: Settings, plan: Routing, config: DetectorConfig, reload_interval: float, precision: str
) -> tuple[Any, Any]:
    """The (routed) detector over each served model's champion, and the watchers that hot-reload them."""
    from pipeline.serve.serving_models import ModelLoadError, build_detector

    try:
        return build_detector(settings.registry_dir, plan, config, reload_interval, precision)
    except ModelLoadError as error:
        _fail(str(error), error)


def _serve_metrics(settings: Settings, metrics: ScorerMetrics) -> None:
    """Serve ``/metrics`` unless the port is 0; a busy port is a one-line error naming the flag."""
    from pipeline.metrics import serve_metrics

    if not settings.metrics_port:
        return
    try:
        server, _ = serve_metrics(metrics.registry, settings.metrics_host, settings.metrics_port)
    except OSError as error:
        _fail(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{error.strerror or error}; pick a free port with --metrics-port (0 disables)",
            error,
        )
    log.info("metrics on http://%s:%s/metrics", settings.metrics_host, server.server_port)


def _log_serving(settings: Settings, plan: Routing, detector: Any) -> None:
    for det in getattr(detector, "detectors", {detector.model_name: detector}).values():
        log.info(
            "serving %s v%s (%s) on %s group=%s",
            det.model_name,
            det.model_version,
            det.bundle.kind,
            settings.kafka.events_topic,
            settings.kafka.group_id,
        )
    if settings.routing:
        for route in plan.all_routes:
            log.info("route %s: %s -> %s", route.group, ", ".join(route.patterns), route.model)


def _run(
    settings: Settings, plan: Routing, detector: Any, watchers: Any, *, replay_messages: int, fetch_process: bool
) -> None:
    """Metrics, topics, signals, the scorer with its observers (per-series export, Alertmanager) until stopped."""
    from pipeline.kafka.clients import ensure_topics
    from pipeline.metrics import ScorerMetrics
    from pipeline.serve.anomaly_export import AnomalousSeries
    from pipeline.serve.scorer import Scorer

    metrics = ScorerMetrics()
    export = AnomalousSeries(settings.anomalous_series_max, settings.anomalous_series_ttl_s)
    metrics.registry.register(export)
    _serve_metrics(settings, metrics)
    ensure_topics(settings.kafka)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scorer = Scorer(
        settings, detector, metrics, watcher=watchers, replay_messages=replay_messages, fetch_process=fetch_process
    )
    scorer.observers.append(export)
    sink = None
    if settings.alertmanager_url:
        from pipeline.serve.alertmanager import AlertmanagerSink

        sink = AlertmanagerSink.from_settings(settings, metrics.registry)
        scorer.observers.append(sink)
        sink.start()
    _log_serving(settings, plan, detector)
    try:
        stats = scorer.run(stop)
    finally:
        if sink is not None:
            sink.close()
    log.info(
        "stopped: consumed=%d scored=%d warmup=%d replayed=%d rejected=%d anomalies=%d commits=%d",
        stats.consumed,
        stats.scored,
        stats.warmup,
        stats.replayed,
        stats.rejected_total,
        stats.anomalies,
        stats.commits,
    )


def demo(
    series: str = typer.Option(
        "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv",
        help="NAB file (under data/nab/data) of the 'cpu' family to train on and stream.",
    ),
    train_fraction: float = typer.Option(0.4, help="Leading fraction of the series used for training."),
    epochs: int = typer.Option(8, help="Training epochs per forecaster."),
    metrics_port: int = typer.Option(0, help="Metrics port (0: a free port)."),
) -> None:
    """One command: broker, two series families routed to two models, score the rest of both live, summary."""
    from pipeline.demo import run_demo

    raise typer.Exit(run_demo(series=series, train_fraction=train_fraction, epochs=epochs, metrics_port=metrics_port))
