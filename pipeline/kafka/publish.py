"""Publish events: a CSV series (NAB format: ``timestamp,value``) or raw (key, value) rows.

Used by ``tsad publish``, the demo and the tests. Rows are sent in order, keyed by series id (the
file stem by default); ``rate`` paces the sends (events/s), ``None`` sends as fast as the producer
allows.

``publish_events`` survives a broker that is down or restarting: every row not acknowledged is
sent again with a fresh producer (kafka-python's producer state does not survive a broker that
restarted empty), with exponential backoff, until ``timeout_s`` has passed; then it raises
``PublishFailed`` (one line: how many rows were not acknowledged and the last error). A row sent
twice (acknowledged, but the acknowledgement lost) is a duplicate the scorer dead-letters as
``duplicate_timestamp``; rows re-sent after a failure may arrive after later rows of their series
(``out_of_order``). ``publish_rows`` sends through a given producer once (no retry).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaError

from models.core.settings import KafkaSettings
from pipeline.events import encode_event

log = logging.getLogger(__name__)
_FIRST_BACKOFF_S, _MAX_BACKOFF_S = 0.25, 4.0
Row = tuple[bytes | None, bytes]  # (key, value) of one message
MakeProducer = Callable[..., Any]  # (kafka, **config) -> a KafkaProducer (pipeline.kafka.clients.make_producer)


class PublishFailed(RuntimeError):
    """Rows still not acknowledged when the publish deadline passed."""


@dataclass(frozen=True)
class PublishReport:
    events: int
    seconds: float
    attempts: int = 1

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def read_series_csv(path: Path) -> pd.DataFrame:
    """A NAB-format CSV as a frame with columns ``timestamp`` (str) and ``value`` (float)."""
    frame = pd.read_csv(path, dtype={"timestamp": str})
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return frame


def series_rows(series: str, timestamps: Iterable[float | str], values: Iterable[float]) -> list[Row]:
    """(key, value) rows of one series' events."""
    key = series.encode("utf-8")
    return [(key, encode_event(series, ts, float(value))) for ts, value in zip(timestamps, values)]


def _send_all(producer: KafkaProducer, topic: str, rows: list[Row], rate: float | None, start: float) -> list[Any]:
    """Send ``rows`` in order, paced at ``rate`` per second from ``start`` (perf_counter); their futures."""
    futures = []
    for i, (key, value) in enumerate(rows):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        futures.append(producer.send(topic, key=key, value=value))
    return futures


def publish_rows(
    producer: KafkaProducer,
    topic: str,
    series: str,
    timestamps: Iterable[float | str],
    values: Iterable[float],
    rate: float | None = None,
) -> PublishReport:
    """Send one event per (timestamp, value), keyed by ``series``, through ``producer``; wait for every ack."""
    start = time.perf_counter()
    futures = _send_all(producer, topic, series_rows(series, timestamps, values), rate, start)
    producer.flush()
    for future in futures:
        future.get(timeout=30)  # raises if any send failed: never a silent loss
    return PublishReport(events=len(futures), seconds=time.perf_counter() - start)


def publish_events(
    kafka: KafkaSettings,
    topic: str,
    rows: Iterable[Row],
    *,
    rate: float | None = None,
    timeout_s: float = 60.0,
    make_producer: MakeProducer | None = None,
    ensure_topic: bool = False,
) -> PublishReport:
    """Send ``rows`` ((key, value) bytes) to ``topic``, retrying what is not acknowledged (see the
    module docstring) until ``timeout_s``; ``kafka`` is the ``KafkaSettings`` to build producers from.
    ``ensure_topic``: create ``topic`` first when missing (retried like the sends)."""
    from pipeline.kafka import clients as kafka_clients

    make = make_producer or kafka_clients.make_producer
    ensure = _Once((lambda: kafka_clients.ensure_topics(kafka, [topic])) if ensure_topic else None)
    remaining = list(rows)
    total = len(remaining)
    start = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    backoff, attempts, last_error = _FIRST_BACKOFF_S, 0, None
    while remaining:
        attempts += 1
        remaining, error = _send_once(
            kafka, topic, remaining, make, ensure, rate if attempts == 1 else None, start, deadline
        )
        last_error = error if error is not None else last_error
        if not remaining:
            break
        if time.monotonic() + backoff > deadline:
            raise PublishFailed(
                f"{len(remaining)} of {total} events not acknowledged on {topic} after "
                f"{timeout_s:g}s ({attempts} attempts): {last_error}"
            )
        log.warning(
            "%d of %d events not acknowledged (%s); retrying in %.2fs", len(remaining), total, last_error, backoff
        )
        time.sleep(backoff)  # backoff between attempts (not a wait for a condition)
        backoff = min(backoff * 2, _MAX_BACKOFF_S)
    return PublishReport(events=total, seconds=time.perf_counter() - start, attempts=attempts)


class _Once:
    """Runs ``action`` until it succeeds once (then never again); nothing when None."""

    def __init__(self, action: Callable[[], object] | None) -> None:
        self.action = action

    def __call__(self) -> None:
        if self.action is not None:
            self.action()
            self.action = None


def _send_once(
    kafka: KafkaSettings,
    topic: str,
    rows: list[Row],
    make_producer: MakeProducer,
    ensure: _Once,
    rate: float | None,
    start: float,
    deadline: float,
) -> tuple[list[Row], object]:
    """One attempt with a fresh producer: ``(rows not acknowledged, why)`` (why: None when all were)."""
    left_ms = max(int((deadline - time.monotonic()) * 1000), 1000)
    producer = None
    try:
        wait_ms = min(left_ms, 10_000)
        producer = make_producer(
            kafka,
            bootstrap_timeout_ms=wait_ms,
            max_block_ms=wait_ms,
            request_timeout_ms=wait_ms,
            delivery_timeout_ms=wait_ms + 1000,
        )
        ensure()
        futures = _send_all(producer, topic, rows, rate, start)
        producer.flush(timeout=left_ms / 1000.0)
        failed = [k for k, f in enumerate(futures) if not f.is_done or f.failed()]
        error: object = None
        if failed:
            bad = futures[failed[0]]
            error = bad.exception if bad.is_done else "no acknowledgement before the deadline"
        return [rows[k] for k in failed], error
    except KafkaError as error:  # no broker (yet), metadata timeouts: try again with a new producer
        return rows, error
    finally:
        if producer is not None:
            with contextlib.suppress(Exception):  # a producer of a broker that is gone may fail to close
                producer.close(timeout=1)


def publish_csv(
    producer: KafkaProducer,
    topic: str,
    path: Path,
    series: str | None = None,
    rate: float | None = None,
    start_row: int = 0,
) -> PublishReport:
    """Publish rows ``start_row..`` of a NAB CSV file through ``producer``."""
    frame = read_series_csv(path).iloc[start_row:]
    return publish_rows(producer, topic, series or Path(path).stem, frame["timestamp"], frame["value"], rate)
