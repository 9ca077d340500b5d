"""Alertmanager sink: anomalous series become alerts in Alertmanager (v2 API), resolved when normal again.

``AlertmanagerSink`` is a scorer observer (``Scorer.observers``). The scorer thread only puts each
anomaly on a bounded queue (``put_nowait``; a full queue drops the notice and counts it), so
posting never blocks scoring. A background thread:

* keeps one alert per series: labels ``alertname="TsadSeriesAnomaly"``, ``series``, ``model``,
  ``group`` (the routing group), ``severity``; annotations ``summary``, ``score``, ``value``,
  ``expected``, ``lower``, ``upper``, ``event_time``, ``runbook``; ``startsAt`` = the first anomaly (wall clock);
* posts a new alert at once (``POST {url}/api/v2/alerts``, batched), re-posts a firing one every
  ``resend_s`` with ``endsAt`` = now + 3 x ``resend_s`` (so Alertmanager resolves it by itself if
  the scorer disappears), and posts it once more with ``endsAt`` = now (resolved) when the series
  had no anomaly for ``resolve_after_s``;
* retries a failed post with exponential backoff (1, 2, 4 ... s, at most 30 s), ``max_attempts``
  times per alert update, then drops it and counts it. Grouping, inhibition, silences and routing
  to receivers are Alertmanager's.

Metrics (``registry=``): ``tsad_alertmanager_alerts_posted_total{state}`` (firing | resolved),
``tsad_alertmanager_post_failures_total``, ``tsad_alertmanager_alerts_dropped_total{reason}``
(queue_full | retries_exhausted | too_many_active), ``tsad_alertmanager_active_alerts``,
``tsad_alertmanager_pending_alerts`` (updates waiting for a retry).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from models.core.settings import Settings
from models.core.timeutil import iso_utc
from models.detection.detector import BatchResult
from models.detection.status import Status

log = logging.getLogger(__name__)
ALERTNAME = "TsadSeriesAnomaly"
RUNBOOK = "https://github.com/tsad/tsad/blob/main/docs/operations.md#alert-tsadseriesanomaly"
_BATCH = 500
_MAX_BACKOFF_S = 30.0
# one anomaly for the sender thread: series, model, group, score, value, predicted, lower, upper, ts
_Notice = tuple[str, str, str, float, float, float, float, float, float]


def _num(x: float) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.6g}"


@dataclass
class _Alert:
    labels: dict
    annotations: dict
    starts: float
    last_anomaly: float
    last_sent: float = -math.inf


@dataclass
class _Pending:
    payload: dict
    state: str
    attempts: int = 0
    next_try: float = 0.0
    extra: dict = field(default_factory=dict)


class AlertmanagerSink:
    """Posts anomalous series to Alertmanager from a background thread; see the module docstring."""

    def __init__(
        self,
        url: str,
        registry: CollectorRegistry | None = None,
        *,
        resolve_after_s: float = 300.0,
        resend_s: float = 60.0,
        queue_size: int = 10_000,
        max_attempts: int = 5,
        timeout_s: float = 5.0,
        max_active: int = 10_000,
        severity: str = "warning",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.resolve_after_s = float(resolve_after_s)
        self.resend_s = float(resend_s)
        self.max_attempts = int(max_attempts)
        self.timeout_s = float(timeout_s)
        self.max_active = int(max_active)
        self.severity = severity
        self.clock = clock
        self.queue: queue.Queue[_Notice] = queue.Queue(maxsize=queue_size)
        self.active: dict[str, _Alert] = {}
        self.pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        r = registry if registry is not None else CollectorRegistry()
        self.posted = Counter(
            "tsad_alertmanager_alerts_posted_total",
            "Alert updates Alertmanager accepted, by state (firing | resolved).",
            ["state"],
            registry=r,
        )
        self.failures = Counter(
            "tsad_alertmanager_post_failures_total",
            "Posts to Alertmanager that failed (unreachable, timeout, HTTP error).",
            registry=r,
        )
        self.dropped = Counter(
            "tsad_alertmanager_alerts_dropped_total",
            "Alert updates given up: queue_full | retries_exhausted | too_many_active.",
            ["reason"],
            registry=r,
        )
        self.active_gauge = Gauge("tsad_alertmanager_active_alerts", "Series alerts firing now.", registry=r)
        self.pending_gauge = Gauge("tsad_alertmanager_pending_alerts", "Alert updates waiting for a retry.", registry=r)

    @classmethod
    def from_settings(cls, settings: Settings, registry: CollectorRegistry | None = None) -> AlertmanagerSink:
        """The sink of ``settings.alertmanager_url`` (which must be set) and the ``alert_*`` settings."""
        if settings.alertmanager_url is None:
            raise ValueError("alertmanager_url is not set")
        return cls(
            settings.alertmanager_url,
            registry,
            resolve_after_s=settings.alert_resolve_after_s,
            resend_s=settings.alert_resend_s,
            queue_size=settings.alert_queue_size,
            max_attempts=settings.alert_max_attempts,
        )

    # ------------------------------------------------------------------ scorer thread
    def observe(
        self, series: list[str], ts: np.ndarray, values: np.ndarray, result: BatchResult, new: np.ndarray
    ) -> None:
        """Queue each new anomaly of the batch (never blocks)."""
        flagged = np.flatnonzero(result.is_anomaly & new & (result.status == Status.SCORED))
        for j in flagged.tolist():
            model, _version = result.model_at(j)
            group = result.routes[int(result.route[j])][2] if result.route is not None else model
            lower, upper = result.band_at(j)
            notice = (
                series[j],
                model,
                group,
                float(result.score[j]),
                float(values[j]),
                float(result.predicted[j]),
                lower,
                upper,
                float(ts[j]),
            )
            try:
                self.queue.put_nowait(notice)
            except queue.Full:
                self.dropped.labels("queue_full").inc()

    # ------------------------------------------------------------------ sender thread
    def start(self) -> AlertmanagerSink:
        self._thread = threading.Thread(target=self._run, name="tsad-alertmanager", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after one last round of posts (firing alerts stay firing until their endsAt)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(wait_s=0.5)
        self.step(wait_s=0.0)

    def step(self, wait_s: float = 0.0) -> None:
        """One round: take queued anomalies, resolve quiet series, post what is due."""
        try:
            notices = [self.queue.get(timeout=wait_s)] if wait_s > 0 else []
        except queue.Empty:
            notices = []
        while True:
            try:
                notices.append(self.queue.get_nowait())
            except queue.Empty:
                break
        now = self.clock()
        for notice in notices:
            self._take(notice, now)
        for sid, alert in list(self.active.items()):
            if now - alert.last_anomaly >= self.resolve_after_s:
                del self.active[sid]
                self._queue_post(sid, alert, now, resolved=True)
            elif now - alert.last_sent >= self.resend_s:
                self._queue_post(sid, alert, now, resolved=False)
        self._post_due(now)
        self.active_gauge.set(len(self.active))
        self.pending_gauge.set(len(self.pending))

    def _take(self, notice: _Notice, now: float) -> None:
        sid, model, group, score, value, predicted, lower, upper, ts = notice
        alert = self.active.get(sid)
        annotations = {
            "summary": f"series {sid} anomalous (model {model}, score {score:.3f})",
            "score": _num(score),
            "value": _num(value),
            "expected": _num(predicted),
            "lower": _num(lower),
            "upper": _num(upper),
            "event_time": iso_utc(ts) if math.isfinite(ts) else "",
            "runbook": RUNBOOK,
        }
        if alert is None:
            if len(self.active) >= self.max_active:
                self.dropped.labels("too_many_active").inc()
                return
            labels = {"alertname": ALERTNAME, "series": sid, "model": model, "group": group, "severity": self.severity}
            self.active[sid] = _Alert(labels, annotations, now, now)
        else:
            alert.annotations, alert.last_anomaly = annotations, now

    def _queue_post(self, sid: str, alert: _Alert, now: float, resolved: bool) -> None:
        ends = now if resolved else now + 3 * self.resend_s
        payload = {
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": iso_utc(alert.starts),
            "endsAt": iso_utc(ends),
        }
        old = self.pending.get(sid)
        self.pending[sid] = _Pending(
            payload,
            "resolved" if resolved else "firing",
            attempts=old.attempts if old else 0,
            next_try=old.next_try if old else 0.0,
        )
        alert.last_sent = now

    def _post_due(self, now: float) -> None:
        due = [sid for sid, p in self.pending.items() if p.next_try <= now]
        for start in range(0, len(due), _BATCH):
            chunk = due[start : start + _BATCH]
            body = json.dumps([self.pending[sid].payload for sid in chunk]).encode()
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                ok = True
            except (OSError, urllib.error.HTTPError) as error:
                ok = False
                self.failures.inc()
                log.warning("posting %d alerts to %s failed: %s", len(chunk), self.url, error)
            for sid in chunk:
                p = self.pending[sid]
                if ok:
                    self.posted.labels(p.state).inc()
                    del self.pending[sid]
                    continue
                p.attempts += 1
                if p.attempts >= self.max_attempts:
                    self.dropped.labels("retries_exhausted").inc()
                    del self.pending[sid]
                else:
                    p.next_try = now + min(2.0 ** (p.attempts - 1), _MAX_BACKOFF_S)
