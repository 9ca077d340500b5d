"""Prometheus metrics of the scorer, the archiver and the retraining figures (prometheus-client).

Every constructor takes ``registry=`` so tests build a fresh ``CollectorRegistry`` and read
values with ``registry.get_sample_value``. Names: ``tsad_`` prefix, base units (seconds),
``_total`` on counters, histograms for latency; never a series id as a label here (the bounded
per-series export is ``pipeline.serve.anomaly_export``).
The scorer's metrics are a custom collector (``ScorerMetrics``, client_python's own pattern, as in
its ``gc_collector``) reading the scorer's own counters (``ScorerStats``) at scrape time.
The names below are a contract with ``deploy/`` (alert rules, recording rules, dashboards).
Long (~340 lines) because it spells out every exported metric: name, type, labels and HELP.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# Batch work is ~1 ms; end-to-end includes the broker's fetch wait.
_BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Buckets:
    """The counts of one histogram (upper ``bounds``, then +Inf) and its sum, read at scrape time.

    Observing takes a lock (the scrape runs in the metrics server's thread); ``observe_many`` adds
    a whole array in O(buckets) numpy work. A value lands in the first bucket whose bound is >= it,
    as in prometheus_client's ``Histogram.observe``.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._edges = np.asarray(self.bounds, dtype=np.float64)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = int(np.searchsorted(self._edges, value, side="left"))
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        counts = np.bincount(np.searchsorted(self._edges, values, side="left"), minlength=len(self._counts))
        total = float(np.sum(values))
        with self._lock:
            for k, c in enumerate(counts.tolist()):
                self._counts[k] += c
            self._sum += total

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """``([(le, observations <= le), ..., ("+Inf", count)], sum)``, one consistent snapshot."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        running, out = 0, []
        for bound, c in zip((*self.bounds, float("inf")), counts):
            running += c
            out.append((floatToGoString(bound), float(running)))
        return out, total


def _tally() -> defaultdict[str, int]:
    return defaultdict(int)


@dataclass
class ScorerStats:
    """The scorer's running totals and state: the one source of truth its metrics are read from.

    Event accounting: every consumed event is exactly one of ``scored``, ``warmup`` (new events;
    ``warmup`` also counts replayed ones, see ``replayed``) or ``rejected`` (by reason).
    """

    consumed: int = 0
    scored: int = 0
    warmup: int = 0
    replayed: int = 0
    rejected: defaultdict[str, int] = field(default_factory=_tally)  # by reason
    anomalies: int = 0
    batches: int = 0
    commits: int = 0
    busy_s: float = 0.0
    evicted: int = 0
    tracked_series: int = 0
    undecodable_batches: int = 0
    skipped_offsets: int = 0
    partition_resets: defaultdict[str, int] = field(default_factory=_tally)  # by topic
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> messages behind
    up: bool = False
    # the model(s) serving
    model_info: dict[str, str] = field(default_factory=dict)  # name, kind, version
    model_version: float = 0.0
    last_reload_s: float = 0.0  # Unix time
    reload_failures: int = 0
    pointer_errors: int = 0
    model_reloads: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    model_serving_version: dict[str, float] = field(default_factory=dict)
    model_scored: defaultdict[str, int] = field(default_factory=_tally)
    model_anomalies: defaultdict[str, int] = field(default_factory=_tally)
    # histograms
    batch_duration: Buckets = field(default_factory=lambda: Buckets(_BATCH_BUCKETS))
    batch_size: Buckets = field(default_factory=lambda: Buckets(_SIZE_BUCKETS))
    latency: Buckets = field(default_factory=lambda: Buckets(_LATENCY_BUCKETS))
    created: float = field(default_factory=time.time)  # Unix time (the counters' ``_created``)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class ScorerMetrics(Collector):
    """All metrics the streaming scorer exports: a collector that reads ``stats`` at scrape time.

    Registered on ``registry`` (a fresh one by default). The scorer writes ``stats`` (its own
    counters); nothing is counted twice. Counters and histograms carry ``_created`` = when
    ``stats`` was made.
    """

    def __init__(self, registry: CollectorRegistry | None = None, stats: ScorerStats | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stats = stats if stats is not None else ScorerStats()
        self.registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        yield from self._events()
        yield from self._batches()
        yield from self._feed()
        yield from self._models()

    # ------------------------------------------------------------------ families
    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=value, created=self.stats.created)

    def _labelled_counter(
        self, name: str, doc: str, labels: list[str], values: list[tuple[tuple[str, ...], int]]
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=labels)
        for label_values, value in values:
            family.add_metric(list(label_values), value, created=self.stats.created)
        return family

    def _histogram(self, name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
        cumulative, total = buckets.cumulative()
        family = HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)
        family.samples.append(Sample(f"{name}_created", {}, self.stats.created))
        return family

    def _events(self) -> Iterator[Metric]:
        st = self.stats
        yield self._counter("tsad_events_consumed_total", "Events read from the events topic.", st.consumed)
        yield self._counter(
            "tsad_events_scored_total", "Valid events scored by the model (alerts possible).", st.scored
        )
        yield self._counter(
            "tsad_events_warmup_total",
            "Valid events taken into series state without alerting (series warm-up or replay after rebalance).",
            st.warmup,
        )
        yield self._counter(
            "tsad_events_replayed_total",
            "Already-committed events re-read after a partition assignment to rebuild series state "
            "(also counted in tsad_events_warmup_total, never in tsad_events_consumed_total).",
            st.replayed,
        )
        yield self._labelled_counter(
            "tsad_events_rejected_total",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            [((str(reason),), n) for reason, n in list(st.rejected.items())],
        )
        yield self._counter("tsad_anomalies_total", "Anomaly records produced to the anomalies topic.", st.anomalies)

    def _batches(self) -> Iterator[Metric]:
        st = self.stats
        yield self._histogram(
            "tsad_scoring_batch_duration_seconds",
            "Time to validate, score and produce one poll batch (fetch returned -> produced).",
            st.batch_duration,
        )
        yield self._histogram("tsad_scoring_batch_events", "Events per poll batch.", st.batch_size)
        yield self._histogram(
            "tsad_end_to_end_latency_seconds",
            "Event produce timestamp (Kafka record timestamp) to anomaly decision.",
            st.latency,
        )

    def _feed(self) -> Iterator[Metric]:
        st = self.stats
        lag = GaugeMetricFamily(
            "tsad_consumer_lag_messages", "Messages behind the partition end offset.", labels=["topic", "partition"]
        )
        for (topic, partition), behind in list(st.lag.items()):
            lag.add_metric([topic, str(partition)], behind)
        yield lag
        yield GaugeMetricFamily(
            "tsad_tracked_series", "Series with state held by this scorer.", value=st.tracked_series
        )
        yield self._counter(
            "tsad_series_evicted_total",
            "Series dropped from state because the tracked-series cap was hit.",
            st.evicted,
        )
        yield self._counter(
            "tsad_offset_commits_total", "Offset commits after a batch's records were acknowledged.", st.commits
        )
        yield GaugeMetricFamily("tsad_scorer_up", "1 while the scorer loop runs.", value=1.0 if st.up else 0.0)
        yield self._labelled_counter(
            "tsad_partition_resets_total",
            "Partitions whose log was reset or recreated (broker restarted empty, topic recreated); "
            "read again from the new log start.",
            ["topic"],
            [((topic,), n) for topic, n in list(st.partition_resets.items())],
        )
        yield self._counter(
            "tsad_undecodable_batches_total",
            "Record batches that could not be decoded (codec, corruption) and were skipped.",
            st.undecodable_batches,
        )
        yield self._counter(
            "tsad_skipped_offsets_total", "Offsets skipped inside undecodable record batches.", st.skipped_offsets
        )

    def _models(self) -> Iterator[Metric]:
        st = self.stats
        yield InfoMetricFamily("tsad_model", "The model serving now (name, kind, version).", value=dict(st.model_info))
        yield GaugeMetricFamily(
            "tsad_model_version", "Registry version of the model serving now.", value=st.model_version
        )
        yield GaugeMetricFamily(
            "tsad_model_last_reload_timestamp_seconds",
            "Unix time of the last successful model (re)load.",
            value=st.last_reload_s,
        )
        yield self._counter(
            "tsad_model_reload_failures_total",
            "Promoted model versions refused (corrupt or unloadable).",
            st.reload_failures,
        )
        yield self._counter(
            "tsad_model_pointer_errors_total",
            "Checks of the champion pointer that could not read it.",
            st.pointer_errors,
        )
        # per routed model (models.routing): the label's values are the routed models, a handful
        serving = GaugeMetricFamily(
            "tsad_model_serving_version", "Registry version each routed model serves now.", labels=["model"]
        )
        for model, version in list(st.model_serving_version.items()):
            serving.add_metric([model], version)
        yield serving
        yield self._labelled_counter(
            "tsad_model_reloads_total",
            "Champion (re)loads per routed model, by outcome: loaded | refused | pointer_error.",
            ["model", "outcome"],
            list(st.model_reloads.items()),
        )
        yield self._labelled_counter(
            "tsad_model_events_scored_total",
            "Events scored, by the model that scored them.",
            ["model"],
            [((model,), n) for model, n in list(st.model_scored.items())],
        )
        yield self._labelled_counter(
            "tsad_model_anomalies_total",
            "Anomaly records produced, by the model that flagged them.",
            ["model"],
            [((model,), n) for model, n in list(st.model_anomalies.items())],
        )


class ArchiverMetrics:
    """Metrics of ``tsad archive``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_archived = Counter("tsad_archive_events_total", "Validated events written to Parquet.", registry=r)
        self.events_rejected = Counter(
            "tsad_archive_events_rejected_total",
            "Invalid events skipped by the archiver, by reason.",
            ["reason"],
            registry=r,
        )
        self.files_written = Counter(
            "tsad_archive_files_written_total", "Parquet files renamed into place.", registry=r
        )
        self.last_write = Gauge(
            "tsad_archive_last_write_timestamp_seconds", "Unix time of the last Parquet file written.", registry=r
        )


class RetrainMetrics:
    """Figures the retraining DAG pushes (Pushgateway style) or writes to a textfile."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.last_success = Gauge(
            "tsad_retrain_last_success_timestamp_seconds",
            "Unix time of the last successful retrain run.",
            ["model"],
            registry=r,
        )
        self.candidate_error = Gauge(
            "tsad_retrain_candidate_error",
            "Held-out forecast error (MAE, normalised) of the candidate.",
            ["model"],
            registry=r,
        )
        self.champion_error = Gauge(
            "tsad_retrain_champion_error",
            "Held-out forecast error (MAE, normalised) of the champion.",
            ["model"],
            registry=r,
        )
        self.promotions = Counter(
            "tsad_retrain_promotions_total", "Candidates promoted to champion.", ["model"], registry=r
        )


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9464) -> tuple[WSGIServer, Thread]:
    """Serve ``/metrics`` for ``registry`` on host:port (loopback by default). Returns (server, thread)."""
    return start_http_server(port, addr=host, registry=registry)
