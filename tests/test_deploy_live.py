"""Live check: a real Prometheus with the real rule files scrapes a real ``tsad serve``.

The scorer consumes from the embedded broker (conftest ``kafka_settings``) and serves a small
many-to-many model trained here. Prometheus (``/usr/bin/prometheus``, loopback, temporary TSDB)
runs a generated config: 1 s scrape and evaluation, job ``tsad-scorer`` pointing at the scorer,
``rule_files`` = ``deploy/prometheus/rules/*.yml`` unchanged (no test-only thresholds). Through
the HTTP API the test asserts that every sample the scorer exports is ingested, that every rule
evaluates without error, that every metric the dashboard and the rules name is known to the live
``/metrics`` (or to the archiver/retrain registries, or is a recording-rule output), that
``TsadAnomalyRateHigh`` stays silent during normal traffic, and that it reaches ``firing`` after a
burst of injected anomalies (the rule's 1m/5m two-window design fires on a burst without ``for``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_deploy_dashboard import (
    PROMETHEUS_SERIES,
    dashboard_exprs,
    family_sample_names,
    load_dashboards,
    load_rules,
    promql_metric_names,
    recorded_names,
    sample_names,
)
from waiting import wait_for

from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.training import fit
from models.registry import ModelRegistry
from pipeline.events import encode_event
from pipeline.kafka.broker import free_port
from pipeline.kafka.clients import make_producer
from pipeline.metrics import ArchiverMetrics, RetrainMetrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
TSAD = str(Path(sys.executable).parent / "tsad")
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
T0 = 1_700_000_000
N_SERIES = 12
MODEL = "live"


# ---------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory):
    """A registry whose champion is a small many-to-many forecaster of a sine wave."""
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(root)
    i = np.arange(400)
    bundle, _ = fit(
        ForecasterConfig(kind="many-to-many", window=8, hidden=16),
        {"s": np.sin(i / 6.0)},
        epochs=2,
        progress=False,
        name=MODEL,
    )
    registry.promote(MODEL, registry.register(bundle))
    return root


def stop_process(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def scorer(kafka_settings, registry_dir, tmp_path):
    """``tsad serve`` on the test's topics; yields its metrics port."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "TSAD_KAFKA__SESSION_TIMEOUT_MS": "2000", "TSAD_KAFKA__HEARTBEAT_INTERVAL_MS": "500"}
    cmd = [
        TSAD,
        "serve",
        "--bootstrap-servers",
        kafka_settings.bootstrap_servers,
        "--registry",
        str(registry_dir),
        "--model",
        MODEL,
        "--group-id",
        kafka_settings.group_id,
        "--events-topic",
        kafka_settings.events_topic,
        "--anomalies-topic",
        kafka_settings.anomalies_topic,
        "--dead-letter-topic",
        kafka_settings.dead_letter_topic,
        "--metrics-port",
        str(port),
        "--replay-messages",
        "0",
        # The test compresses hours into seconds (a few dozen events per series), so the
        # detector's warm-up and refractory period (counted in events) are shortened; the
        # alert rules are the real, unchanged files.
        "--likelihood-config",
        '{"warmup": 30, "refractory": 5}',
    ]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True)
    try:
        wait_for(lambda: scrape_text(port) is not None, 40, "scorer /metrics", proc=proc, log=log)
        yield port, proc, log
    finally:
        stop_process(proc)


@pytest.fixture
def prometheus(scorer, tmp_path):
    """Prometheus scraping the scorer every second with the real rule files; yields its URL."""
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus server not found: run `make prometheus` (Debian package prometheus)")
    scorer_port = scorer[0]
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{"job_name": "tsad-scorer", "static_configs": [{"targets": [f"127.0.0.1:{scorer_port}"]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    cmd = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{url}/-/ready") is not None, 30, "prometheus ready", proc=proc, log=log)
        yield url
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- helpers


def http_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read()
    except OSError:
        return None


def scrape_text(port: int) -> str | None:
    body = http_get(f"http://127.0.0.1:{port}/metrics")
    return body.decode() if body is not None else None


def api(url: str, path: str, **params) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    body = http_get(f"{url}/api/v1/{path}{query}")
    assert body is not None, f"Prometheus API {path} unreachable"
    payload = json.loads(body)
    assert payload["status"] == "success", payload
    return payload["data"]


def query_value(url: str, expr: str) -> float | None:
    result = api(url, "query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def alert_states(url: str, name: str) -> list[str]:
    return [alert["state"] for alert in api(url, "alerts")["alerts"] if alert["labels"]["alertname"] == name]


def publish(settings, values_for) -> None:
    """Publish ``values_for(t, s)`` for steps t of every series, acknowledged before returning."""
    producer = make_producer(settings)
    futures = []
    for t, value_row in values_for:
        for s, value in enumerate(value_row):
            sid = f"series-{s}"
            futures.append(
                producer.send(
                    settings.events_topic, key=sid.encode(), value=encode_event(sid, T0 + 60 * t, float(value))
                )
            )
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    producer.close()


def normal(t: int) -> list[float]:
    return [float(np.sin(t / 6.0 + s)) for s in range(N_SERIES)]


# ---------------------------------------------------------------- the test


def test_prometheus_ingests_the_scorer_and_fires_the_anomaly_rate_alert(kafka_settings, scorer, prometheus):
    scorer_port, scorer_proc, scorer_log = scorer
    url = prometheus

    # The target is up and every rule group loaded from the real files.
    wait_for(lambda: query_value(url, 'up{job="tsad-scorer"}') == 1.0, 20, "scorer target up")
    groups = api(url, "rules")["groups"]
    assert {group["file"] for group in groups} == {str(path) for path in RULE_FILES}

    # Normal traffic: the model window is 8, so each series warms up, then is scored.
    publish(kafka_settings, ((t, normal(t)) for t in range(56)))
    wait_for(
        lambda: (query_value(url, 'sum(tsad_events_scored_total{job="tsad-scorer"})') or 0) >= 500,
        30,
        "scored events ingested",
        proc=scorer_proc,
        log=scorer_log,
    )
    wait_for(
        lambda: query_value(url, "job:tsad_anomalies_per_scored:ratio_rate1m") is not None,
        10,
        "recording rules evaluated",
    )

    # Every sample the scorer exports is a series in Prometheus (_created is metadata).
    live_families = list(text_string_to_metric_families(scrape_text(scorer_port)))
    live_samples = {sample.name for family in live_families for sample in family.samples}
    ingested = set(api(url, "label/__name__/values", **{"match[]": '{job="tsad-scorer"}'}))
    assert {name for name in live_samples if not name.endswith("_created")} <= ingested

    # Every name the dashboard and the rules use is exported by the live scorer (or by the
    # archiver / retraining, which do not run here), or recorded by a rule.
    live_names = family_sample_names(live_families)
    others = sample_names(ArchiverMetrics(CollectorRegistry()).registry) | sample_names(
        RetrainMetrics(CollectorRegistry()).registry
    )
    known = live_names | others | recorded_names() | PROMETHEUS_SERIES
    used = {name for rule in load_rules() for name in promql_metric_names(rule["expr"])}
    used |= {
        name
        for _, dashboard in load_dashboards()
        for _, expr in dashboard_exprs(dashboard)
        for name in promql_metric_names(expr)
    }
    assert used - known == set(), f"named in deploy/ but not exported: {sorted(used - known)}"
    assert {
        name for name in used if name.startswith("tsad_") and not name.startswith(("tsad_archive", "tsad_retrain"))
    } <= live_names

    # Normal traffic does not page.
    ratio = query_value(url, "job:tsad_anomalies_per_scored:ratio_rate5m")
    assert ratio is not None and ratio < 0.01, f"normal traffic already {ratio:.1%} anomalous"
    assert alert_states(url, "TsadAnomalyRateHigh") == []
    print(f"normal traffic: anomaly share {ratio:.2%}")

    # A burst: every series jumps far off its forecast for several steps.
    burst_start = time.monotonic()
    publish(kafka_settings, ((t, [1000.0 * (1 + (t % 2))] * N_SERIES) for t in range(56, 71)))
    wait_for(
        lambda: alert_states(url, "TsadAnomalyRateHigh") == ["firing"],
        30,
        "TsadAnomalyRateHigh firing",
        proc=scorer_proc,
        log=scorer_log,
    )
    fired_after = time.monotonic() - burst_start
    alert = next(a for a in api(url, "alerts")["alerts"] if a["labels"]["alertname"] == "TsadAnomalyRateHigh")
    assert alert["labels"]["severity"] == "page" and alert["labels"]["job"] == "tsad-scorer"
    assert alert["annotations"]["runbook"].endswith("docs/operations.md#alert-tsadanomalyratehigh")
    print(
        f"TsadAnomalyRateHigh firing {fired_after:.1f} s after the burst was published; "
        f"anomaly share {query_value(url, 'job:tsad_anomalies_per_scored:ratio_rate5m'):.1%}"
    )

    # The anomalous series are exported one by one with their band: PromQL finds them.
    chosen = "series-3"
    wait_for(
        lambda: query_value(url, f'tsad_series_expected_upper{{job="tsad-scorer", series="{chosen}"}}') is not None,
        20,
        "the per-series export ingested",
        proc=scorer_proc,
        log=scorer_log,
    )
    band = {
        name: query_value(url, f'tsad_series_{name}{{series="{chosen}"}}')
        for name in (
            "value",
            "expected",
            "expected_lower",
            "expected_upper",
            "anomaly_score",
            "anomaly_started_timestamp_seconds",
        )
    }
    assert band["expected_lower"] <= band["expected"] <= band["expected_upper"], band
    assert band["anomaly_started_timestamp_seconds"] >= T0 + 60 * 56, band
    wait_for(
        lambda: query_value(url, 'count(tsad_series_anomaly_score{job="tsad-scorer"})') == N_SERIES,
        20,
        "every series of the burst exported",
    )
    series_values = set(api(url, "label/series/values", **{"match[]": "tsad_series_anomaly_score"}))
    assert chosen in series_values  # the dashboard's `series` variable
    print(
        f"{chosen}: value {band['value']:.1f}, expected {band['expected']:.2f} "
        f"[{band['expected_lower']:.2f}, {band['expected_upper']:.2f}], score {band['anomaly_score']:.3f}"
    )

    # Every query of the new dashboard panels returns data (the variable set to that series).
    dashboard = next(d for _, d in load_dashboards() if d["uid"] == "tsad-overview")
    new_panels = ("Anomalous series now", "Series value and expected band", "Anomalies per second by model")
    for title, expr in dashboard_exprs(dashboard):
        if title not in new_panels:
            continue
        expr = expr.replace("$series", chosen).replace("$__rate_interval", "1m")

        def panel_data(expr=expr):
            now = time.time()
            return api(url, "query_range", query=expr, start=now - 120, end=now, step=1)["result"]

        wait_for(lambda: panel_data() != [], 20, f"panel {title!r}: {expr} returns data")  # a rate needs 2 scrapes
        result = panel_data()
        if title == "Anomalous series now":
            assert {r["metric"]["series"] for r in result} == {f"series-{k}" for k in range(N_SERIES)}
            assert {r["metric"]["model"] for r in result} == {MODEL}

    # Every rule evaluated without error against real data.
    unhealthy = [
        (rule["name"], rule.get("lastError"))
        for group in api(url, "rules")["groups"]
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert not unhealthy, unhealthy
