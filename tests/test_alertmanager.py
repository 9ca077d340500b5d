"""Alertmanager sink (pipeline/serve/alertmanager.py) against a real Alertmanager (Debian prometheus-alertmanager).

Alertmanager runs on loopback with its own storage and clustering off. An anomaly becomes an alert
(labels series, model, group) that Alertmanager lists, then resolves once the series stays quiet;
while Alertmanager is down, observing never blocks, failed posts are counted and retried, and the
alert arrives once Alertmanager is up.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from waiting import wait_for

from models.detection.detector import BatchResult
from models.detection.status import Status
from pipeline.kafka.broker import free_port
from pipeline.serve.alertmanager import ALERTNAME, AlertmanagerSink

pytestmark = pytest.mark.integration
ALERTMANAGER = (
    shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or "/usr/bin/prometheus-alertmanager"
)
CONFIG = """\
route:
  receiver: "null"
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: "null"
"""


def start_alertmanager(tmp_path: Path, port: int) -> subprocess.Popen:
    if not Path(ALERTMANAGER).exists():
        pytest.fail("alertmanager not found: run `make prometheus` (Debian package prometheus-alertmanager)")
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG)
    with open(tmp_path / "alertmanager.log", "wb") as log:  # the child keeps its own copy of the file
        proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for(lambda: get(f"http://127.0.0.1:{port}/api/v2/status") is not None, 30, "alertmanager ready", proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read() or b"null")
    except (OSError, ValueError):
        return None


def alerts_for(port: int, series: str) -> list[dict]:
    found = get(f"http://127.0.0.1:{port}/api/v2/alerts") or []
    return [a for a in found if a["labels"].get("alertname") == ALERTNAME and a["labels"].get("series") == series]


def anomaly(series: str) -> tuple:
    """A one-event batch flagged by route 0 (model cpu-m, group cpu)."""
    result = BatchResult(
        np.array([Status.SCORED], dtype=np.int8),
        np.array([1.0]),
        np.array([4.0]),
        np.array([0.97]),
        0.5,
        np.array([True]),
        "cpu-m",
        1,
        0,
        {},
        np.array([0.2]),
        np.array([1.8]),
        np.array([0]),
        [("cpu-m", 1, "cpu")],
    )
    return [series], np.array([1.7e9]), np.array([5.0]), result, np.array([True])


def test_an_anomaly_fires_then_resolves_in_alertmanager(tmp_path):
    port = free_port()
    proc = start_alertmanager(tmp_path, port)
    registry = CollectorRegistry()
    sink = AlertmanagerSink(f"http://127.0.0.1:{port}", registry, resolve_after_s=2.0, resend_s=30).start()
    try:
        sink.observe(*anomaly("cpu-7"))
        wait_for(lambda: alerts_for(port, "cpu-7"), 20, "the alert in Alertmanager", proc)
        alert = alerts_for(port, "cpu-7")[0]
        assert alert["labels"]["model"] == "cpu-m" and alert["labels"]["group"] == "cpu"
        assert alert["status"]["state"] in ("active", "unprocessed")
        assert alert["annotations"]["lower"] == "0.2" and alert["annotations"]["upper"] == "1.8"
        wait_for(lambda: not alerts_for(port, "cpu-7"), 30, "the alert resolved", proc)
        g = registry.get_sample_value
        assert g("tsad_alertmanager_alerts_posted_total", {"state": "firing"}) >= 1
        assert g("tsad_alertmanager_alerts_posted_total", {"state": "resolved"}) == 1
        assert g("tsad_alertmanager_active_alerts") == 0 and g("tsad_alertmanager_post_failures_total") == 0
    finally:
        sink.close()
        stop(proc)


def test_alertmanager_down_never_blocks_scoring_and_alerts_are_retried(tmp_path):
    port = free_port()  # nothing listens yet
    registry = CollectorRegistry()
    sink = AlertmanagerSink(
        f"http://127.0.0.1:{port}",
        registry,
        resolve_after_s=600,
        resend_s=600,
        queue_size=2,
        max_attempts=20,
        timeout_s=1,
    ).start()
    proc = None
    g = registry.get_sample_value
    try:
        for _ in range(5):  # put_nowait on a queue of 2: never blocks (a full queue drops and counts)
            sink.observe(*anomaly("web-1"))
        wait_for(lambda: (g("tsad_alertmanager_post_failures_total") or 0) >= 1, 20, "a failed post counted")
        proc = start_alertmanager(tmp_path, port)
        wait_for(lambda: alerts_for(port, "web-1"), 40, "the retried alert in Alertmanager", proc)
    finally:
        sink.close()
        if proc is not None:
            stop(proc)


def test_retries_are_bounded(tmp_path):
    port = free_port()
    registry = CollectorRegistry()
    sink = AlertmanagerSink(f"http://127.0.0.1:{port}", registry, max_attempts=2, timeout_s=1, queue_size=1)
    sink.observe(*anomaly("a"))
    sink.observe(*anomaly("b"))  # the queue holds one: dropped, counted, observe returned
    g = registry.get_sample_value
    assert g("tsad_alertmanager_alerts_dropped_total", {"reason": "queue_full"}) == 1
    sink.step()  # first attempt fails
    wait_for(lambda: (sink.step() or True) and not sink.pending, 10, "the update given up")
    assert g("tsad_alertmanager_post_failures_total") == 2
    assert g("tsad_alertmanager_alerts_dropped_total", {"reason": "retries_exhausted"}) == 1
