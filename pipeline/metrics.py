"""Prometheus metrics of the scorer and the archiver (prometheus-client).

Every constructor takes ``registry=`` so tests build a fresh ``CollectorRegistry`` and read
values with ``registry.get_sample_value``. Names: ``tsad_`` prefix, base units (seconds),
``_total`` on counters, histograms for latency; never a series id as a label here (the bounded
per-series export is ``pipeline.serve.anomaly_export``).
The names below are a contract with ``deploy/`` (alert rules, recording rules, dashboards).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

# Batch work is ~1 ms; end-to-end includes the broker's fetch wait.
_BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ScorerMetrics:
    """All metrics the streaming scorer exports."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter("tsad_events_consumed_total", "Events read from the events topic.", registry=r)
        self.events_scored = Counter(
            "tsad_events_scored_total", "Valid events scored by the model (alerts possible).", registry=r
        )
        self.events_warmup = Counter(
            "tsad_events_warmup_total",
            "Valid events taken into series state without alerting (series warm-up or replay after rebalance).",
            registry=r,
        )
        self.events_replayed = Counter(
            "tsad_events_replayed_total",
            "Already-committed events re-read after a partition assignment to rebuild series state "
            "(also counted in tsad_events_warmup_total, never in tsad_events_consumed_total).",
            registry=r,
        )
        self.events_rejected = Counter(
            "tsad_events_rejected_total", "Events sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.anomalies = Counter("tsad_anomalies_total", "Anomaly records produced to the anomalies topic.", registry=r)
        self.batch_duration = Histogram(
            "tsad_scoring_batch_duration_seconds",
            "Time to validate, score and produce one poll batch (fetch returned -> produced).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tsad_scoring_batch_events",
            "Events per poll batch.",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "tsad_end_to_end_latency_seconds",
            "Event produce timestamp (Kafka record timestamp) to anomaly decision.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "tsad_consumer_lag_messages",
            "Messages behind the partition end offset.",
            ["topic", "partition"],
            registry=r,
        )
        self.tracked_series = Gauge("tsad_tracked_series", "Series with state held by this scorer.", registry=r)
        self.series_evicted = Counter(
            "tsad_series_evicted_total", "Series dropped from state because the tracked-series cap was hit.", registry=r
        )
        self.model_info = Info("tsad_model", "The model serving now (name, kind, version).", registry=r)
        self.model_version = Gauge("tsad_model_version", "Registry version of the model serving now.", registry=r)
        self.last_reload = Gauge(
            "tsad_model_last_reload_timestamp_seconds", "Unix time of the last successful model (re)load.", registry=r
        )
        self.reload_failures = Counter(
            "tsad_model_reload_failures_total", "Promoted model versions refused (corrupt or unloadable).", registry=r
        )
        self.commits = Counter(
            "tsad_offset_commits_total", "Offset commits after a batch's records were acknowledged.", registry=r
        )
        self.up = Gauge("tsad_scorer_up", "1 while the scorer loop runs.", registry=r)
        self.partition_resets = Counter(
            "tsad_partition_resets_total",
            "Partitions whose log was reset or recreated (broker restarted empty, topic recreated); "
            "read again from the new log start.",
            ["topic"],
            registry=r,
        )
        self.undecodable_batches = Counter(
            "tsad_undecodable_batches_total",
            "Record batches that could not be decoded (codec, corruption) and were skipped.",
            registry=r,
        )
        self.skipped_offsets = Counter(
            "tsad_skipped_offsets_total", "Offsets skipped inside undecodable record batches.", registry=r
        )
        self.pointer_errors = Counter(
            "tsad_model_pointer_errors_total", "Checks of the champion pointer that could not read it.", registry=r
        )
        # per routed model (models.routing): the label's values are the routed models, a handful
        self.model_serving_version = Gauge(
            "tsad_model_serving_version", "Registry version each routed model serves now.", ["model"], registry=r
        )
        self.model_reloads = Counter(
            "tsad_model_reloads_total",
            "Champion (re)loads per routed model, by outcome: loaded | refused | pointer_error.",
            ["model", "outcome"],
            registry=r,
        )
        self.model_events_scored = Counter(
            "tsad_model_events_scored_total", "Events scored, by the model that scored them.", ["model"], registry=r
        )
        self.model_anomalies = Counter(
            "tsad_model_anomalies_total",
            "Anomaly records produced, by the model that flagged them.",
            ["model"],
            registry=r,
        )


class ArchiverMetrics:
    """Metrics of ``tsad archive``."""

    def __init__(self, registry: CollectorRegistry | None = None):
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

    def __init__(self, registry: CollectorRegistry | None = None):
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


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9464):
    """Serve ``/metrics`` for ``registry`` on host:port (loopback by default). Returns (server, thread)."""
    return start_http_server(port, addr=host, registry=registry)
