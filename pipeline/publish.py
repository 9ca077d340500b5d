"""Publish a CSV series (NAB format: ``timestamp,value``) as events, keyed by series id.

Used by ``tsad publish``, the demo and the tests. Rows are sent in file order; the series id
defaults to the file stem. ``rate`` paces the sends (events/s); ``None`` sends as fast as the
producer allows. Returns how many events were acknowledged and how long it took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.events import encode_event


@dataclass(frozen=True)
class PublishReport:
    events: int
    seconds: float

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


def publish_rows(producer, topic: str, series: str, timestamps, values, rate: float | None = None) -> PublishReport:
    """Send one event per (timestamp, value), keyed by ``series``; wait for every ack."""
    key = series.encode("utf-8")
    start = time.perf_counter()
    futures = []
    for i, (ts, value) in enumerate(zip(timestamps, values)):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        futures.append(producer.send(topic, key=key, value=encode_event(series, ts, float(value))))
    producer.flush()
    for future in futures:
        future.get(timeout=30)  # raises if any send failed: never a silent loss
    return PublishReport(events=len(futures), seconds=time.perf_counter() - start)


def publish_csv(producer, topic: str, path: Path, series: str | None = None, rate: float | None = None,
                start_row: int = 0) -> PublishReport:
    """Publish rows ``start_row..`` of a NAB CSV file."""
    frame = read_series_csv(path).iloc[start_row:]
    return publish_rows(producer, topic, series or Path(path).stem, frame["timestamp"], frame["value"], rate)
