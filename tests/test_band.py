"""The expected band (``models.detection.band``): lower/upper in every scored event and in anomaly records.

The band is derived from the likelihood's state before each event, so with the context and
daily-repeat steps off an event past warm-up and outside the refractory period is flagged exactly
when its value leaves the band.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from test_scoring import make_bundle

from models.detection.detector import DetectorConfig, StreamingDetector
from models.detection.status import Status
from models.detection.thresholds.error_likelihood import tail_inverse, tail_score
from pipeline.serve.records import anomaly_value


@pytest.mark.parametrize("target", [0.0, 0.25, 0.5, 0.9, 0.999])
def test_tail_inverse_inverts_the_tail_score(target):
    z = tail_inverse(target)
    assert tail_score(np.array([z]))[0] == pytest.approx(target, abs=1e-6)


def test_tail_inverse_is_infinite_when_the_target_is_out_of_reach():
    assert tail_inverse(1.0) == math.inf and tail_inverse(1.5) == math.inf


@pytest.mark.parametrize("slow", [None, 0.04])
@pytest.mark.parametrize("spatial", [None, 0.05])
@pytest.mark.parametrize("kind", ["many-to-many", "many-to-one"])
def test_flagged_exactly_when_the_value_leaves_the_band(kind, spatial, slow):
    rng = np.random.default_rng(3)
    n_series, steps = 6, 400
    t = np.arange(steps)
    det = StreamingDetector(
        make_bundle(kind),
        DetectorConfig(
            likelihood={
                "warmup": 50,
                "refractory": 5,
                "seasonal_bins": None,
                "repeat_bins": None,
                "spatial_tolerance": spatial,
                "slow_alpha": slow,
            }
        ),
    )
    ids = [f"s{k}" for k in range(n_series)]
    values = np.sin(t[:, None] / 7.0 + np.arange(n_series)) + 0.1 * rng.normal(size=(steps, n_series))
    values[200:206, 1] += 4.0  # incidents
    values[300:340, 4] += 1.5
    values[250, 2] -= 6.0
    since_flag = {s: 10**9 for s in ids}
    checked = flagged = 0
    for step in range(steps):
        r = det.process(ids, np.full(n_series, 60.0 * step), values[step])
        assert r.lower is not None and r.upper is not None
        for j, sid in enumerate(ids):
            since_flag[sid] += 1
            if r.status[j] != Status.SCORED or step < 60 or since_flag[sid] <= 5:
                continue
            v, lo, hi = values[step, j], r.lower[j], r.upper[j]
            assert lo <= r.predicted[j] <= hi or spatial is not None
            margin = 1e-6 * max(1.0, abs(v))
            if abs(v - lo) < margin or abs(v - hi) < margin:
                continue  # on the edge: float rounding decides
            outside = v < lo or v > hi
            assert bool(r.is_anomaly[j]) == outside, (step, sid, v, lo, hi, r.score[j])
            checked += 1
            flagged += int(outside)
            if r.is_anomaly[j]:
                since_flag[sid] = 0
    assert checked > 1500 and flagged >= 2  # both sides of the band are exercised


def test_zscore_band_is_the_error_at_the_threshold():
    det = StreamingDetector(
        make_bundle("many-to-many"), DetectorConfig(threshold_method="zscore", threshold=3.0, warmup_events=20)
    )
    rng = np.random.default_rng(0)
    for step in range(200):
        v = rng.normal(size=3)
        if step == 150:
            v[0] += 30
        r = det.process(["a", "b", "c"], np.full(3, float(step)), v)
        scored = r.status == Status.SCORED
        assert np.all(r.lower[scored] < r.predicted[scored]) and np.all(r.upper[scored] > r.predicted[scored])
        for j in np.flatnonzero(r.is_anomaly):
            assert not r.lower[j] <= v[j] <= r.upper[j]


def test_anomaly_record_carries_the_band_beside_predicted():
    record = orjson.loads(anomaly_value("s", 1.0, 5.0, 1.0, 4.0, 0.9, 0.5, "m", 1, "t", 0, 7, 0.5, 1.5))
    keys = list(record)
    assert keys[keys.index("predicted") + 1 : keys.index("predicted") + 3] == ["lower", "upper"]
    assert (record["lower"], record["upper"]) == (0.5, 1.5)
    assert (
        orjson.loads(anomaly_value("s", 1.0, 5.0, 1.0, 4.0, 0.9, 0.5, "m", 1, "t", 0, 7, math.nan, None))["lower"]
        is None
    )
