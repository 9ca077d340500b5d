"""CLI command ``tsad archive``: run the stream archiver (Kafka events topic -> Parquet)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from pipeline.metrics import ArchiverMetrics


def register(app: typer.Typer) -> None:
    app.command("archive")(archive)


def archive(
    archive_dir: Path = typer.Option(None, help="Archive root (default: TSAD_ARCHIVE_DIR, var/archive)."),
    bootstrap_servers: str = typer.Option(None, help="Kafka bootstrap servers (default: settings)."),
    topic: str = typer.Option(None, help="Events topic (default: TSAD_KAFKA__EVENTS_TOPIC)."),
    group_id: str = typer.Option(None, help="Consumer group (default: TSAD_KAFKA__ARCHIVE_GROUP_ID)."),
    flush_every_events: int = typer.Option(50_000, min=1, help="Flush when this many valid events are buffered."),
    flush_interval_s: float = typer.Option(60.0, min=0.001, help="Flush when the oldest buffered record is this old."),
    exit_when_idle: float = typer.Option(
        None,
        "--exit-when-idle",
        min=0.0,
        help="Flush and exit after this many seconds without new records (counted once partitions are assigned).",
    ),
    metrics_port: int = typer.Option(9465, help="Serve /metrics on 127.0.0.1:PORT (0: don't serve)."),
) -> None:
    """Archive validated events to Parquet (date=/hour= partitions); SIGTERM/Ctrl-C flushes and exits."""
    from models.core.settings import load_settings
    from pipeline.archive.consumer import Archiver
    from pipeline.metrics import ArchiverMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(
        archive_dir=str(archive_dir) if archive_dir is not None else None,
        kafka={"bootstrap_servers": bootstrap_servers, "events_topic": topic, "archive_group_id": group_id},
    )
    metrics = ArchiverMetrics()
    server = _serve_metrics(metrics, settings.metrics_host, metrics_port) if metrics_port else None
    archiver = Archiver(
        settings,
        flush_every_events=flush_every_events,
        flush_interval_s=flush_interval_s,
        exit_when_idle_s=exit_when_idle,
        metrics=metrics,
    )
    signal.signal(signal.SIGTERM, lambda *_: archiver.stop())
    signal.signal(signal.SIGINT, lambda *_: archiver.stop())
    typer.echo(
        f"archiving {settings.kafka.events_topic} (group {settings.kafka.archive_group_id}) to {archiver.archive_dir}"
    )
    try:
        archiver.run()
    finally:
        if server is not None:
            server.shutdown()
    archived = int(metrics.registry.get_sample_value("tsad_archive_events_total") or 0)
    typer.echo(f"archived {archived} events in {len(archiver.files)} files")


def _serve_metrics(metrics: ArchiverMetrics, host: str, port: int) -> Any:
    """The archiver's /metrics server on ``host:port``; a port in use exits 2 with one line."""
    from pipeline.metrics import serve_metrics

    try:
        server, _ = serve_metrics(metrics.registry, host=host, port=port)
    except OSError as error:
        typer.echo(
            f"cannot serve metrics on {host}:{port}: "
            f"{error.strerror or error}; pick a free port with --metrics-port (0 disables)",
            err=True,
        )
        raise typer.Exit(2) from error
    return server
