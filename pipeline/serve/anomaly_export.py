"""Per-series visibility with bounded cardinality: the K most recently anomalous series in Prometheus.

``AnomalousSeries`` is a scorer observer (``Scorer.observers``) and a prometheus_client custom
collector (``registry.register``; computed at scrape time). It keeps at most ``max_series``
entries (``TSAD_ANOMALOUS_SERIES_MAX``, default 500): a series enters with its first anomaly, the
least recently anomalous one leaves when a new one needs room, and a series leaves
``ttl_s`` (``TSAD_ANOMALOUS_SERIES_TTL_S``, default 900 s) after its last anomaly (wall clock).
While it is in the table, every event scored for it updates its row, so a dashboard draws its
value with the expected band, not only the anomalous points.

Exported per series (labels ``series``, ``model``, ``group``; at most ``max_series`` label sets
per metric):

=================================================  ==========================================
``tsad_series_anomaly_score``                      score of the series' last scored event
``tsad_series_value``                              its value
``tsad_series_expected``                           the forecast (``predicted``)
``tsad_series_expected_lower`` / ``..._upper``     the band considered normal (``models.detection.band``)
``tsad_series_anomalous``                          1 while its last anomaly is under a minute old (wall
                                                   clock; any scrape interval up to 1 min sees it), else 0
``tsad_series_anomaly_started_timestamp_seconds``  event time of the first anomaly since it entered
``tsad_series_last_anomaly_timestamp_seconds``     event time of its last anomaly
=================================================  ==========================================

and ``tsad_anomalous_series`` (rows now) and ``tsad_anomalous_series_evicted_total`` (rows pushed
out by a newer anomalous series before their time was up).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from models.detection.detector import BatchResult
from models.detection.status import Status

DEFAULT_MAX_SERIES = 500
DEFAULT_TTL_S = 900.0
ANOMALOUS_FOR_S = 60.0  # tsad_series_anomalous stays 1 this long after an anomaly (wall clock)

_GAUGES = (
    ("tsad_series_anomaly_score", "Score of the last scored event of a recently anomalous series.", "score"),
    ("tsad_series_value", "Value of the last scored event of a recently anomalous series.", "value"),
    (
        "tsad_series_expected",
        "Forecast of the last scored event of a recently anomalous series (raw units).",
        "expected",
    ),
    ("tsad_series_expected_lower", "Lower edge of the band considered normal for that event (raw units).", "lower"),
    ("tsad_series_expected_upper", "Upper edge of the band considered normal for that event (raw units).", "upper"),
    ("tsad_series_anomalous", "1 while the series' last anomaly is less than a minute old, else 0.", "anomalous"),
    (
        "tsad_series_anomaly_started_timestamp_seconds",
        "Event time of the first anomaly since the series entered the recently-anomalous table.",
        "started",
    ),
    ("tsad_series_last_anomaly_timestamp_seconds", "Event time of the series' last anomaly.", "last_ts"),
)


@dataclass(slots=True)
class Row:
    """What is exported for one series."""

    model: str
    group: str
    started: float
    last_ts: float
    last_wall: float
    score: float = math.nan
    value: float = math.nan
    expected: float = math.nan
    lower: float = math.nan
    upper: float = math.nan


class AnomalousSeries:
    """The bounded table; ``observe`` from the scorer thread, ``collect`` from the HTTP server's."""

    def __init__(
        self,
        max_series: int = DEFAULT_MAX_SERIES,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_series < 1 or ttl_s <= 0:
            raise ValueError("max_series must be >= 1 and ttl_s > 0")
        self.max_series = int(max_series)
        self.ttl_s = float(ttl_s)
        self.clock = clock
        self.evicted = 0
        self._rows: OrderedDict[str, Row] = OrderedDict()  # least recently anomalous first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> dict[str, Row]:
        with self._lock:
            self._expire(self.clock())
            return dict(self._rows)

    # ------------------------------------------------------------------ scorer side
    def observe(
        self, series: list[str], ts: np.ndarray, values: np.ndarray, result: BatchResult, new: np.ndarray
    ) -> None:
        """Take a scored batch: anomalies enter or refresh rows; other scored events of listed series
        update their value, forecast, band and score."""
        flagged = result.is_anomaly & new
        rows = self._rows
        now = self.clock()
        with self._lock:
            if not rows and not np.count_nonzero(flagged):
                return
            candidates = np.flatnonzero(flagged)
            watched = rows.keys() | {series[j] for j in candidates.tolist()}  # incl. those entering now
            listed = [j for j, s in enumerate(series) if s in watched]
            candidates = np.array(listed, dtype=np.int64)
            scored = (result.status == Status.SCORED) & new
            for j in candidates.tolist():
                if not scored[j]:
                    continue
                sid = series[j]
                row = rows.get(sid)
                if flagged[j]:
                    model, _version = result.model_at(j)
                    group = result.routes[int(result.route[j])][2] if result.route is not None else model
                    if row is None:
                        row = rows[sid] = Row(model, group, float(ts[j]), float(ts[j]), now)
                        if len(rows) > self.max_series:
                            rows.popitem(last=False)
                            self.evicted += 1
                    else:
                        row.model, row.group, row.last_ts, row.last_wall = model, group, float(ts[j]), now
                        rows.move_to_end(sid)
                elif row is None:
                    continue
                lower, upper = result.band_at(j)
                row.score, row.value = float(result.score[j]), float(values[j])
                row.expected = float(result.predicted[j])
                row.lower, row.upper = lower, upper
            self._expire(now)

    def _expire(self, now: float) -> None:
        rows, limit = self._rows, now - self.ttl_s
        while rows:
            first = next(iter(rows.values()))
            if first.last_wall >= limit:
                break
            rows.popitem(last=False)

    # ------------------------------------------------------------------ collector side
    def describe(self) -> list[Metric]:
        return []  # families depend on the data; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        rows = self.rows()
        labels = ["series", "model", "group"]
        families = [(GaugeMetricFamily(name, doc, labels=labels), attr) for name, doc, attr in _GAUGES]
        for sid, row in rows.items():
            key = [sid, row.model, row.group]
            for family, attr in families:
                value = (
                    (1.0 if now - row.last_wall < ANOMALOUS_FOR_S else 0.0)
                    if attr == "anomalous"
                    else getattr(row, attr)
                )
                if not math.isnan(value):
                    family.add_metric(key, value)
        for family, _ in families:
            yield family
        yield GaugeMetricFamily("tsad_anomalous_series", "Series in the recently-anomalous table now.", value=len(rows))
        yield CounterMetricFamily(
            "tsad_anomalous_series_evicted",
            "Series pushed out of the recently-anomalous table by newer ones before their "
            "time was up (the table is full: raise TSAD_ANOMALOUS_SERIES_MAX).",
            value=self.evicted,
        )
