"""CLI commands for the Kafka plumbing: ``tsad broker`` and ``tsad publish``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("broker")(broker)
    app.command("publish")(publish)


def broker(
    port: int = typer.Option(9092, help="Loopback port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
) -> None:
    """Run the embedded Tansu broker (in-memory storage) in the foreground until Ctrl-C/SIGTERM."""
    from models.core.settings import load_settings
    from pipeline.kafka.broker import EmbeddedBroker
    from pipeline.kafka.clients import ensure_topics

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedBroker(host=host, port=port) as running:
        settings = load_settings(kafka={"bootstrap_servers": running.bootstrap_servers})
        ensure_topics(settings.kafka)
        typer.echo(
            f"tansu broker listening on {running.bootstrap_servers} "
            f"(topics: {settings.kafka.events_topic}, {settings.kafka.anomalies_topic}, "
            f"{settings.kafka.dead_letter_topic}); Ctrl-C to stop"
        )
        while not stop.wait(0.5):
            if not running.is_running():
                raise typer.Exit(1)
    typer.echo("broker stopped")


def publish(
    paths: list[Path] = typer.Argument(..., exists=True, help="NAB-format CSV files (timestamp,value)."),
    topic: str = typer.Option(None, help="Topic (default: TSAD_KAFKA__EVENTS_TOPIC)."),
    bootstrap_servers: str = typer.Option(None, help="Kafka bootstrap servers (default: settings)."),
    series: str = typer.Option(None, help="Series id (default: each file's stem)."),
    rate: float = typer.Option(None, help="Pace sends at this many events/s (default: as fast as possible)."),
    timeout: float = typer.Option(
        None,
        "--timeout",
        help="Retry (with backoff) while the broker is unreachable or "
        "does not acknowledge, for at most this many seconds per "
        "file (default: TSAD_PUBLISH_TIMEOUT_S, 60).",
    ),
) -> None:
    """Publish CSV rows as JSON events keyed by series id; prints how many were acknowledged."""
    import logging

    from models.core.settings import load_settings
    from pipeline.kafka.publish import PublishFailed, publish_events, read_series_csv, series_rows

    for name in ("kafka", "pipeline.kafka.publish"):  # a broker outage is reported once, below
        logging.getLogger(name).setLevel(logging.CRITICAL)
    settings = load_settings(kafka={"bootstrap_servers": bootstrap_servers}, publish_timeout_s=timeout)
    topic = topic or settings.kafka.events_topic
    for path in paths:
        try:
            frame = read_series_csv(path)
        except (ValueError, OSError) as error:
            typer.echo(f"error: cannot read {path}: {error}", err=True)
            raise typer.Exit(2) from error
        rows = series_rows(series or Path(path).stem, frame["timestamp"], frame["value"])
        try:
            report = publish_events(
                settings.kafka, topic, rows, rate=rate, timeout_s=settings.publish_timeout_s, ensure_topic=True
            )
        except PublishFailed as error:
            typer.echo(f"error: {path}: {error}", err=True)
            raise typer.Exit(1) from error
        typer.echo(
            f"{path}: {report.events} events acknowledged on {topic} "
            f"in {report.seconds:.2f}s ({report.rate:,.0f} events/s)"
        )
