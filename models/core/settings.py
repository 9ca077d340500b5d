"""All runtime settings in one place, read from the environment with the ``TSAD_`` prefix.

``KafkaSettings`` holds what every Kafka client needs (bootstrap servers, topics, group,
security passthrough for real clusters); ``ScorerSettings`` holds what the scorer loop needs.
Nested values use ``__``: e.g. ``TSAD_KAFKA__BOOTSTRAP_SERVERS=broker:9092``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    """Kafka connection, topic names and consumer-group timing."""

    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "tsad.events"
    anomalies_topic: str = "tsad.anomalies"
    dead_letter_topic: str = "tsad.dead-letter"
    group_id: str = "tsad-scorer"
    archive_group_id: str = "tsad-archiver"
    client_id: str = "tsad"
    # With kafka-python's default of 45 s a group join on Tansu takes ~23 s; 6 s is the lowest
    # a real Kafka accepts by default (group.min.session.timeout.ms) and gives ~3 s joins.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_records: int = 5000
    fetch_max_wait_ms: int = 50
    partitions: int = 4
    # Replicas of each topic ``ensure_topics`` creates (1 for the embedded broker / a single node;
    # 3 on a production cluster). Existing topics are not changed.
    replication_factor: int = Field(1, ge=1)
    # Security passthrough for real clusters (PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments shared by every kafka-python client (producer, consumer, admin)."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        return config


class Settings(BaseSettings):
    """Top-level settings object; build it once and pass the parts down."""

    model_config = SettingsConfigDict(env_prefix="TSAD_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry_dir: str = "var/registry"
    archive_dir: str = "var/archive"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    max_series: int = 100_000
    max_message_bytes: int = 64 * 1024
    max_series_id_length: int = 256
    # Checkpoints: offsets are committed every commit_interval_ms or commit_every_events events
    # (whichever comes first), once every output produced up to them is acknowledged.
    commit_interval_ms: int = Field(1000, ge=0)
    commit_every_events: int = Field(20_000, ge=1)
    # tsad publish / publish_events: retry with backoff until this many seconds have passed.
    publish_timeout_s: float = Field(60.0, gt=0)
    # Model routing file (models.routing; tsad serve --routing, and the retraining DAG).
    routing: str | None = None
    # Per-series export (pipeline.serve.anomaly_export): the K most recently anomalous series, each kept
    # this long after its last anomaly.
    anomalous_series_max: int = Field(500, ge=1)
    anomalous_series_ttl_s: float = Field(900.0, gt=0)
    # Alertmanager sink (pipeline.serve.alertmanager; off when unset): base URL, e.g. http://127.0.0.1:9093
    alertmanager_url: str | None = None
    alert_resolve_after_s: float = Field(300.0, gt=0)  # resolved after this long without an anomaly
    alert_resend_s: float = Field(60.0, gt=0)  # firing alerts are re-posted this often
    alert_queue_size: int = Field(10_000, ge=1)  # anomalies waiting for the sender thread, at most
    alert_max_attempts: int = Field(5, ge=1)  # posts of one alert update before it is dropped


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, then apply explicit overrides (CLI flags)."""
    settings = Settings()
    kafka_overrides = overrides.pop("kafka", None) or {}
    data = settings.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["kafka"].update({k: v for k, v in kafka_overrides.items() if v is not None})
    return Settings(**data)
