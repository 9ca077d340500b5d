"""``tsad serve --routing --alertmanager-url`` end to end: real broker, real Alertmanager, real CLI.

Two models are routed by series glob; a burst on one series is flagged by its model, exported
with its band on ``/metrics``, posted to Alertmanager as an alert labelled with the series, model
and routing group, resolved once the series is quiet, and shown by ``tsad anomalies``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_alertmanager import alerts_for, start_alertmanager, stop
from test_deploy_live import normal, publish, scrape_text, stop_process, wait_for

from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.training import fit
from models.registry import ModelRegistry
from pipeline.kafka.broker import free_port

pytestmark = pytest.mark.integration
TSAD = str(Path(sys.executable).parent / "tsad")


def samples(port: int) -> dict:
    text = scrape_text(port) or ""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_routed_serve_alerts_exports_and_lists_the_anomaly(kafka_settings, tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    i = np.arange(400)
    for name in ("cpu", "web"):
        bundle, _ = fit(
            ForecasterConfig(kind="many-to-many", window=8, hidden=16),
            {"s": np.sin(i / 6.0)},
            epochs=2,
            progress=False,
            name=name,
        )
        registry.promote(name, registry.register(bundle))
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "routes:\n  - {group: cpus, match: 'series-0', model: cpu}\ndefault: {group: rest, model: web}\n"
    )
    am_port, metrics_port = free_port(), free_port()
    alertmanager = start_alertmanager(tmp_path, am_port)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "TSAD_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "TSAD_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
    }
    log = tmp_path / "serve.log"
    cmd = [
        TSAD,
        "serve",
        "--bootstrap-servers",
        kafka_settings.bootstrap_servers,
        "--registry",
        str(registry.root),
        "--routing",
        str(routing),
        "--group-id",
        kafka_settings.group_id,
        "--events-topic",
        kafka_settings.events_topic,
        "--anomalies-topic",
        kafka_settings.anomalies_topic,
        "--dead-letter-topic",
        kafka_settings.dead_letter_topic,
        "--metrics-port",
        str(metrics_port),
        "--replay-messages",
        "0",
        "--alertmanager-url",
        f"http://127.0.0.1:{am_port}",
        "--alert-resolve-after",
        "3",
        "--likelihood-config",
        '{"warmup": 30, "refractory": 5}',
    ]
    with open(log, "wb") as log_file:
        serve = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True)
    try:
        wait_for(lambda: scrape_text(metrics_port) is not None, 40, "scorer /metrics", proc=serve, log=log)
        publish(kafka_settings, ((t, normal(t)[:2]) for t in range(56)))
        publish(kafka_settings, ((t, [1000.0 * (1 + t % 2), normal(t)[1]]) for t in range(56, 62)))
        wait_for(lambda: alerts_for(am_port, "series-0"), 40, "the alert in Alertmanager", proc=serve, log=log)
        alert = alerts_for(am_port, "series-0")[0]
        assert (alert["labels"]["model"], alert["labels"]["group"]) == ("cpu", "cpus")
        got = samples(metrics_port)
        key = ("tsad_series_expected_upper", (("group", "cpus"), ("model", "cpu"), ("series", "series-0")))
        assert key in got, sorted(k for k in got if k[0].startswith("tsad_series"))
        assert got[("tsad_model_anomalies_total", (("model", "cpu"),))] >= 1
        assert got[("tsad_model_serving_version", (("model", "web"),))] == 1
        wait_for(lambda: not alerts_for(am_port, "series-0"), 40, "the alert resolved", proc=serve, log=log)
        done = subprocess.run(
            [
                TSAD,
                "anomalies",
                "--bootstrap-servers",
                kafka_settings.bootstrap_servers,
                "--anomalies-topic",
                kafka_settings.anomalies_topic,
                "--since",
                "beginning",
                "--model",
                "cpu",
                "--json",
                "--exit-when-idle",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert records and {r["series"] for r in records} == {"series-0"}
        assert all(r["lower"] is not None and r["upper"] is not None for r in records)
    finally:
        stop_process(serve)
        stop(alertmanager)
    assert "route cpus: series-0 -> cpu" in log.read_text()
