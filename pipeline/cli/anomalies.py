"""``tsad anomalies``: tail the anomalies topic as a live table (or JSON lines), filtered.

It reads every partition of the anomalies topic without a consumer group (it never disturbs the
scorers or commits anything), from ``--since`` (a duration back from now: ``90s``, ``15m``, ``2h``,
``1d``; an ISO-8601 time; or ``beginning``) by the records' Kafka timestamps, and follows new
records until Ctrl-C, ``--max`` matching records or ``--exit-when-idle`` seconds without a new
record. Filters: ``--series`` (a glob over series ids), ``--model``, ``--min-score``.
"""

from __future__ import annotations

import fnmatch
import math
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from kafka import KafkaConsumer

    from models.core.settings import Settings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLUMNS = (
    ("event time (UTC)", 20),
    ("series", 28),
    ("model", 22),
    ("value", 11),
    ("expected", 11),
    ("band", 23),
    ("score", 6),
)


def register(app: typer.Typer) -> None:
    app.command("anomalies")(anomalies)


def parse_since(text: str, now: float | None = None) -> float | None:
    """Epoch seconds to start from (None: the beginning of the topic); ValueError with a clear message."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "beginning":
        return None
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since must be a duration (90s, 15m, 2h, 1d), an ISO-8601 time or 'beginning', got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def matches(record: dict[str, Any], series: str | None, model: str | None, min_score: float | None) -> bool:
    """Whether an anomaly record passes the filters."""
    if series is not None and not fnmatch.fnmatchcase(str(record.get("series", "")), series):
        return False
    if model is not None and record.get("model") != model:
        return False
    if min_score is not None:
        score = record.get("score")
        if not isinstance(score, (int, float)) or score < min_score:
            return False
    return True


def _num(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def table_row(record: dict[str, Any]) -> str:
    """One anomaly as a fixed-width line (see ``COLUMNS``)."""
    ts = record.get("ts")
    when = (
        datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(ts, (int, float)) and math.isfinite(ts)
        else "-"
    )
    version = record.get("model_version")
    model = f"{record.get('model', '')}" + (f" v{version}" if version is not None else "")
    band = f"[{_num(record.get('lower'))}, {_num(record.get('upper'))}]"
    score = record.get("score")
    cells = (
        when,
        str(record.get("series", "")),
        model,
        _num(record.get("value")),
        _num(record.get("predicted")),
        band,
        f"{score:.3f}" if isinstance(score, (int, float)) else "-",
    )
    return "  ".join(cell[:width].ljust(width) for cell, (_, width) in zip(cells, COLUMNS)).rstrip()


def header() -> str:
    """The table's column names, aligned with ``table_row``."""
    return "  ".join(name.ljust(width) for name, width in COLUMNS).rstrip()


def anomalies(
    series: str = typer.Option(None, "--series", help="Only series ids matching this glob (e.g. 'cpu-*')."),
    model: str = typer.Option(None, help="Only anomalies flagged by this model."),
    min_score: float = typer.Option(None, help="Only anomalies with at least this score."),
    since: str = typer.Option(
        "15m",
        help="Start this far back (90s, 15m, 2h, 1d), at an ISO-8601 time, or at the "
        "'beginning' of the topic (Kafka record time).",
    ),
    json_lines: bool = typer.Option(False, "--json", help="One JSON record per line instead of the table."),
    max_records: int = typer.Option(None, "--max", help="Exit after this many matching records."),
    exit_when_idle: float = typer.Option(
        None, help="Exit after this many seconds without a new record (default: follow until Ctrl-C)."
    ),
    bootstrap_servers: str = typer.Option(None, help="Kafka bootstrap servers (default: settings)."),
    anomalies_topic: str = typer.Option(None, help="Anomalies topic (default: TSAD_KAFKA__ANOMALIES_TOPIC)."),
) -> None:
    """Tail the anomalies topic: a live table (or --json lines) of anomalies, filtered."""
    import logging

    from models.core.settings import load_settings

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    start = _check_flags(since, max_records, exit_when_idle)
    settings = load_settings(kafka={"bootstrap_servers": bootstrap_servers, "anomalies_topic": anomalies_topic})
    topic = settings.kafka.anomalies_topic
    consumer = _assign(settings, topic, start)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not json_lines:
        sys.stdout.write(header() + "\n")
        sys.stdout.flush()
    show = Filters(series, model, min_score)
    try:
        _follow(consumer, topic, start, show, json_lines, max_records, exit_when_idle, stop)
    finally:
        consumer.close()


@dataclass(frozen=True)
class Filters:
    """Which anomaly records are shown (None: any)."""

    series: str | None
    model: str | None
    min_score: float | None

    def __call__(self, record: Any) -> bool:
        return isinstance(record, dict) and matches(record, self.series, self.model, self.min_score)


def _check_flags(since: str, max_records: int | None, exit_when_idle: float | None) -> float | None:
    """The start time (epoch s, None: the beginning); bad flags are a one-line error and exit code 2."""
    try:
        start = parse_since(since)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if (max_records is not None and max_records < 1) or (exit_when_idle is not None and exit_when_idle <= 0):
        typer.echo("error: --max must be >= 1 and --exit-when-idle > 0", err=True)
        raise typer.Exit(2)
    return start


def _follow(
    consumer: KafkaConsumer,
    topic: str,
    start: float | None,
    show: Filters,
    json_lines: bool,
    max_records: int | None,
    exit_when_idle: float | None,
    stop: threading.Event,
) -> None:
    """Print matching records in Kafka-time order until ``stop``, ``max_records`` or ``exit_when_idle``."""
    import orjson

    out = sys.stdout
    shown, last_record = 0, time.monotonic()
    start_ms = None if start is None else int(start * 1000)
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=200)
        rows = sorted((r for batch in polled.values() for r in batch), key=lambda r: (r.timestamp, r.offset))
        if rows:
            last_record = time.monotonic()
        for record in rows:
            if start_ms is not None and record.timestamp < start_ms:
                continue  # brokers' time lookups can land early (Tansu): the record time decides
            try:
                value = orjson.loads(record.value)
            except (orjson.JSONDecodeError, TypeError):
                typer.echo(f"skipping an undecodable record at {topic}/{record.partition}/{record.offset}", err=True)
                continue
            if not show(value):
                continue
            out.write((orjson.dumps(value).decode() if json_lines else table_row(value)) + "\n")
            shown += 1
            if max_records is not None and shown >= max_records:
                out.flush()
                return
        out.flush()
        if exit_when_idle is not None and time.monotonic() - last_record >= exit_when_idle:
            return


def _assign(settings: Settings, topic: str, start: float | None) -> KafkaConsumer:
    """A group-less consumer on every partition of ``topic``, positioned at ``start`` (epoch s)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError
    from kafka.structs import TopicPartition

    try:
        consumer = KafkaConsumer(
            **settings.kafka.client_config(), group_id=None, enable_auto_commit=False, auto_offset_reset="latest"
        )
        parts = consumer.partitions_for_topic(topic)
    except KafkaError as error:
        typer.echo(f"error: cannot reach Kafka at {settings.kafka.bootstrap_servers}: {error}", err=True)
        raise typer.Exit(1) from None
    if not parts:
        consumer.close()
        typer.echo(
            f"error: topic {topic!r} not found on {settings.kafka.bootstrap_servers} (--anomalies-topic)", err=True
        )
        raise typer.Exit(2)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    if start is None:
        consumer.seek_to_beginning(*tps)
        return consumer
    found = consumer.offsets_for_times({tp: int(start * 1000) for tp in tps})
    for tp in tps:
        hit = found.get(tp)
        if hit is None:
            consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, hit.offset)
    return consumer
