"""Helpers of the delivery tests: a tiny trained registry, an in-process scorer that emits one
anomaly record per scored event (a receipt), and readers of the output topics."""

from __future__ import annotations

import threading

import numpy as np
import orjson
from record_helpers import headers_dict, read_to_end
from waiting import wait_for

from models.core.settings import Settings
from models.detection.detector import DetectorConfig, StreamingDetector
from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.training import fit
from models.registry import ModelRegistry
from pipeline.kafka.clients import make_producer
from pipeline.metrics import ScorerMetrics
from pipeline.serve.reload import ChampionWatcher
from pipeline.serve.scorer import Scorer

T0 = 1_700_000_000


def make_registry(root) -> ModelRegistry:
    reg = ModelRegistry(root)
    i = np.arange(300)
    bundle, _ = fit(
        ForecasterConfig(kind="many-to-many", window=8, hidden=16),
        {"s": np.sin(i / 6.0)},
        epochs=1,
        progress=False,
        name="m",
    )
    reg.promote("m", reg.register(bundle))
    return reg


def receipt_detector(reg, cls=StreamingDetector):
    """A detector that flags every scored event: its anomaly records are receipts."""
    watcher = ChampionWatcher(reg, "m", None, interval_s=60)
    return cls(watcher.load_initial(), DetectorConfig(threshold_method="zscore", threshold=-1e9, warmup_events=0))


class RunningScorer:
    """A ``Scorer`` running in a thread until ``stop()``."""

    def __init__(self, kafka, detector, **kw):
        self.scorer = Scorer(Settings(kafka=kafka, **kw.pop("settings", {})), detector, ScorerMetrics(), **kw)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.scorer.run(self.stop_event)
        except BaseException as error:
            self.error = error

    @property
    def stats(self):
        return self.scorer.stats

    def metric(self, name, labels=None) -> float:
        return self.scorer.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def wait(self, predicate, timeout_s: float, what: str) -> None:
        """``wait_for(predicate)``; fails at once if the scorer failed, and with its stats on a timeout."""

        def done() -> bool:
            if self.error is not None:
                raise AssertionError(f"scorer failed: {self.error!r}")
            return bool(predicate())

        try:
            wait_for(done, timeout_s, what, interval=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error} (stats {self.stats})") from None

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "scorer did not stop"


def send(kafka, rows, **producer_config) -> list:
    """rows: (key, value); returns each row's (partition, offset)."""
    producer = make_producer(kafka, **producer_config)
    try:
        futures = [producer.send(kafka.events_topic, key=k, value=v) for k, v in rows]
        producer.flush()
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close()


def read_all(kafka, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Every record of ``topic`` up to its end offsets, once they hold ``expected`` (or the deadline)."""
    return read_to_end(kafka.client_config(), topic, expected, timeout_s, partitions=range(kafka.partitions))


def receipts(records) -> set:
    """(partition, offset) of the source of each anomaly record."""
    return {(a["source"]["partition"], a["source"]["offset"]) for a in (orjson.loads(r.value) for r in records)}


def dead_letters(records) -> dict:
    """{source "partition/offset" or range: headers} of dead-letter records."""
    out = {}
    for r in records:
        h = headers_dict(r.headers)
        _, partition, offset = h["tsad.source"].rsplit("/", 2)
        out[(int(partition), offset)] = {**h, "value": r.value, "key": r.key}
    return out
