"""Per-series export (pipeline/serve/anomaly_export.py): bounded cardinality, expiry, band, per-model rows."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models.detection.detector import BatchResult
from models.detection.status import Status
from pipeline.serve.anomaly_export import AnomalousSeries


def batch(series: list[str], flagged, value=5.0, routes=None, route=None) -> BatchResult:
    n = len(series)
    flags = np.zeros(n, dtype=bool)
    flags[list(flagged)] = True
    return BatchResult(
        np.full(n, Status.SCORED, dtype=np.int8),
        np.full(n, 1.0),
        np.full(n, value - 1.0),
        np.where(flags, 0.9, 0.1),
        0.5,
        flags,
        "m",
        3,
        0,
        {},
        np.full(n, 0.5),
        np.full(n, 1.5),
        route,
        routes or [],
    )


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def label_sets(registry) -> dict[str, set]:
    out: dict[str, set] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if "series" in sample.labels:
                out.setdefault(sample.name, set()).add(sample.labels["series"])
    return out


def test_cardinality_stays_within_k_under_10k_anomalous_series():
    registry = CollectorRegistry()
    export = AnomalousSeries(max_series=500, ttl_s=600)
    registry.register(export)
    ids = [f"series-{i}" for i in range(10_000)]
    for start in range(0, 10_000, 2_500):
        part = ids[start : start + 2_500]
        export.observe(
            part,
            np.full(len(part), 1.7e9),
            np.full(len(part), 5.0),
            batch(part, range(len(part))),
            np.ones(len(part), dtype=bool),
        )
        sets = label_sets(registry)
        assert sets and all(len(s) <= 500 for s in sets.values())
    sets = label_sets(registry)
    assert sets["tsad_series_anomaly_score"] == set(ids[-500:])  # the most recently anomalous
    assert registry.get_sample_value("tsad_anomalous_series") == 500
    assert registry.get_sample_value("tsad_anomalous_series_evicted_total") == 9_500


def test_a_series_drops_out_ttl_after_its_last_anomaly_and_normal_events_update_its_row():
    clock = Clock()
    registry = CollectorRegistry()
    export = AnomalousSeries(max_series=10, ttl_s=120, clock=clock)
    registry.register(export)
    new = np.ones(2, dtype=bool)
    export.observe(["a", "b"], np.array([100.0, 100.0]), np.array([5.0, 5.0]), batch(["a", "b"], [0]), new)
    assert set(export.rows()) == {"a"}  # b was never anomalous
    clock.now += 30
    export.observe(["a", "b"], np.array([160.0, 160.0]), np.array([1.2, 1.2]), batch(["a", "b"], [], value=1.2), new)
    g = registry.get_sample_value
    labels = {"series": "a", "model": "m", "group": "m"}
    assert g("tsad_series_value", labels) == 1.2 and g("tsad_series_anomalous", labels) == 1  # < 1 min ago
    assert g("tsad_series_expected_lower", labels) == 0.5 and g("tsad_series_expected_upper", labels) == 1.5
    assert g("tsad_series_anomaly_started_timestamp_seconds", labels) == 100.0
    clock.now += 31  # 61 s after the last anomaly: still listed, no longer anomalous now
    assert g("tsad_series_anomalous", labels) == 0 and g("tsad_series_value", labels) == 1.2
    clock.now += 60  # 121 s: out
    assert export.rows() == {} and g("tsad_series_value", labels) is None


def test_rows_carry_the_routed_model_and_group():
    export = AnomalousSeries()
    routes = [("cpu-model", 1, "cpu"), ("web-model", 2, "web")]
    export.observe(
        ["c", "w"],
        np.array([1.0, 1.0]),
        np.array([5.0, 5.0]),
        batch(["c", "w"], [0, 1], routes=routes, route=np.array([0, 1])),
        np.ones(2, dtype=bool),
    )
    rows = export.rows()
    assert (rows["c"].model, rows["c"].group) == ("cpu-model", "cpu")
    assert (rows["w"].model, rows["w"].group) == ("web-model", "web")


def test_a_later_normal_event_in_the_same_batch_updates_the_new_row():
    export = AnomalousSeries()
    export.observe(
        ["a", "a"], np.array([1.0, 2.0]), np.array([9.0, 1.1]), batch(["a", "a"], [0]), np.ones(2, dtype=bool)
    )
    row = export.rows()["a"]
    assert (row.value, row.started, row.last_ts) == (1.1, 1.0, 1.0)
