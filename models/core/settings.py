"""All runtime settings in one frozen tree, read from the environment with the ``TSAD_`` prefix.

``Settings`` is the root: ``settings.kafka`` (``KafkaSettings``: bootstrap servers, topics, group,
security passthrough for real clusters), the scorer's and archiver's limits and paths at the top,
and ``settings.retrain`` (``RetrainSettings``: the retraining DAG's knobs). Nested values use
``__`` (e.g. ``TSAD_KAFKA__BOOTSTRAP_SERVERS=broker:9092``); the retraining knobs keep the names
the DAG has always read, ``TSAD_RETRAIN_<KNOB>`` with one underscore (e.g.
``TSAD_RETRAIN_EPOCHS=5``), plus ``TSAD_PUSHGATEWAY_URL``. The tree is frozen: build it once with
``load_settings(**overrides)`` (environment first, then the overrides, e.g. CLI flags or DAG
params) and pass it, or its parts, down.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from models.core.kinds import KINDS, Kind
from models.core.limits import MAX_MESSAGE_BYTES, MAX_SERIES_ID_LENGTH


class KafkaSettings(BaseModel):
    """Kafka connection, topic names and consumer-group timing."""

    model_config = ConfigDict(frozen=True)

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
    replication_factor: int = Field(default=1, ge=1)
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


class RetrainSettings(BaseModel):
    """Retraining knobs (``settings.retrain``): environment ``TSAD_RETRAIN_<KNOB>``, then DAG params.

    The paths and the routing file are the shared ones at the top of the tree
    (``settings.archive_dir``, ``settings.registry_dir``, ``settings.routing``).
    """

    model_config = ConfigDict(frozen=True)

    pushgateway_url: str | None = None  # environment TSAD_PUSHGATEWAY_URL (no RETRAIN_ in the name)
    textfile: str = "var/metrics/tsad_retrain.prom"
    # group -> fnmatch glob(s) over series ids (JSON in env); a routing file (settings.routing)
    # replaces these: each of its groups trains on exactly the series routed to it
    groups: dict[str, str | list[str]] = {"default": "*"}
    kinds: tuple[Kind, ...] = KINDS  # JSON list in env
    schedule: str = "@daily"  # the DAG's schedule (read when the DAG file is parsed)
    lookback_hours: float = 24 * 7
    holdout_fraction: float = 0.2
    min_points: int = 256  # values per series before the held-out cut
    min_holdout_points: int = 32
    window: int = 64
    hidden: int = 64
    layers: int = 1
    epochs: int = 10
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    labels: str | None = None  # NAB combined_windows.json: enables detection F1
    min_improvement: float = 0.0  # relative nMAE improvement a candidate needs


class _RetrainEnvSource(PydanticBaseSettingsSource):
    """``settings.retrain`` from the names the retraining DAG has always read: ``TSAD_RETRAIN_<KNOB>``
    (one underscore, not the ``__`` of nested settings) and ``TSAD_PUSHGATEWAY_URL``; JSON for the
    dict and list knobs (``groups``, ``kinds``). Names are case-insensitive, as for the other settings."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every knob at once

    def __call__(self) -> dict[str, Any]:
        environ = {key.upper(): value for key, value in os.environ.items()}
        knobs: dict[str, Any] = {}
        for name, field in RetrainSettings.model_fields.items():
            var = "TSAD_PUSHGATEWAY_URL" if name == "pushgateway_url" else f"TSAD_RETRAIN_{name.upper()}"
            if var not in environ:
                continue
            value: Any = environ[var]
            if get_origin(field.annotation) in (dict, list, tuple):
                try:
                    value = json.loads(value)
                except ValueError as error:
                    raise SettingsError(f"{var} must be JSON: {error}") from error
            knobs[name] = value
        return {"retrain": knobs} if knobs else {}


class Settings(BaseSettings):
    """The root of the settings tree (frozen); build it once with ``load_settings`` and pass the parts down."""

    model_config = SettingsConfigDict(env_prefix="TSAD_", env_nested_delimiter="__", extra="ignore", frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry_dir: str = "var/registry"
    archive_dir: str = "var/archive"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    max_series: int = 100_000
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_series_id_length: int = MAX_SERIES_ID_LENGTH
    # Checkpoints: offsets are committed every commit_interval_ms or commit_every_events events
    # (whichever comes first), once every output produced up to them is acknowledged.
    commit_interval_ms: int = Field(default=1000, ge=0)
    commit_every_events: int = Field(default=20_000, ge=1)
    # tsad publish / publish_events: retry with backoff until this many seconds have passed.
    publish_timeout_s: float = Field(default=60.0, gt=0)
    # Model routing file (models.routing; tsad serve --routing, and the retraining DAG).
    routing: str | None = None
    # Per-series export (pipeline.serve.anomaly_export): the K most recently anomalous series, each kept
    # this long after its last anomaly.
    anomalous_series_max: int = Field(default=500, ge=1)
    anomalous_series_ttl_s: float = Field(default=900.0, gt=0)
    # Alertmanager sink (pipeline.serve.alertmanager; off when unset): base URL, e.g. http://127.0.0.1:9093
    alertmanager_url: str | None = None
    alert_resolve_after_s: float = Field(default=300.0, gt=0)  # resolved after this long without an anomaly
    alert_resend_s: float = Field(default=60.0, gt=0)  # firing alerts are re-posted this often
    alert_queue_size: int = Field(default=10_000, ge=1)  # anomalies waiting for the sender thread, at most
    alert_max_attempts: int = Field(default=5, ge=1)  # posts of one alert update before it is dropped
    # The retraining DAG's knobs (TSAD_RETRAIN_<KNOB>, see _RetrainEnvSource).
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then ``TSAD_*`` (nested with ``__``), then the ``TSAD_RETRAIN_*`` knobs."""
        return init_settings, env_settings, _RetrainEnvSource(settings_cls), dotenv_settings, file_secret_settings


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, then apply explicit overrides (CLI flags, DAG params).

    ``None`` means "not given" at every level: ``load_settings(registry_dir=None)`` keeps the
    environment's value. ``kafka`` and ``retrain`` take dicts of their own fields.
    """
    given: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and key in ("kafka", "retrain"):
            value = {k: v for k, v in value.items() if v is not None}
            if not value:
                continue
        if value is not None:
            given[key] = value
    return Settings(**given)
