"""Error-likelihood detection step (models.detection.thresholds.error_likelihood): streaming == scalar batch,
spikes score high, spatial check, refractory period, alert=False never flags, state reset."""

from __future__ import annotations

import math

import numpy as np
import pytest
from likelihood_oracle import score_series

from models.detection.thresholds import ErrorLikelihood, LikelihoodConfig, tail_score


def test_tail_score_scale():
    # Q(z) = 1e-5 at z ~ 4.2649 -> 0.5 ; Q(0) = 0.5 -> log(0.5)/log(1e-10) ~ 0.0301
    assert tail_score(np.array([4.264890793922825]))[0] == pytest.approx(0.5, abs=1e-6)
    assert tail_score(np.array([0.0]))[0] == pytest.approx(math.log(0.5 + 1e-10) / math.log(1e-10))
    assert tail_score(np.array([-5.0, 50.0])).tolist() == [pytest.approx(0.0, abs=1e-6), 1.0]


def test_spike_after_quiet_errors_is_flagged_once_then_refractory():
    rng = np.random.default_rng(1)
    e = 1.0 + 0.1 * rng.normal(0, 1, 600)
    e[400] = 30.0
    e[430] = 30.0  # inside the refractory period of the first flag
    e[560] = 30.0  # after it
    s, f = score_series(e, LikelihoodConfig(refractory=100, warmup=100))
    assert np.flatnonzero(f).tolist() == [400, 560]
    assert s[400] > 0.9 and s[430] == 0.0
    assert np.quantile(s[100:399], 0.95) < 0.5


def test_spatial_check_flags_a_value_outside_the_range_seen():
    v = np.tile([0.0, 1.0, 2.0, 1.0], 100)
    v[300] = 2.5  # > max + 0.05 * range: new extreme
    e = np.full(len(v), 1.0)  # the forecaster saw nothing unusual
    s, f = score_series(e, LikelihoodConfig(warmup=50, refractory=10), values=v)
    assert np.flatnonzero(f).tolist() == [300] and s[300] == 1.0
    v2 = v.copy()
    v2[300] = 2.05  # within the tolerance: not spatial
    _, f2 = score_series(e, LikelihoodConfig(warmup=50), values=v2)
    assert not f2.any()
    _, f3 = score_series(e, LikelihoodConfig(warmup=50, spatial_tolerance=None), values=v)
    assert not f3.any()


def test_no_flags_during_warmup_or_when_not_alerting_and_nan_leaves_state():
    e = np.ones(50)
    e[10] = 1e3
    _, f = score_series(e, LikelihoodConfig(warmup=20))
    assert not f[:20].any()
    _, f0 = score_series(e, LikelihoodConfig(warmup=0))
    assert f0[10]
    s1, f1 = score_series(e, LikelihoodConfig(warmup=0), alert=np.arange(50) != 10)
    assert not f1[10] and s1[10] > 0.5  # reported, not flagged ...
    assert f1[11]  # ... and no refractory period started
    a, fa = score_series(np.r_[np.ones(30), np.nan, 2.0], LikelihoodConfig(warmup=0))
    b, fb = score_series(np.r_[np.ones(30), 2.0], LikelihoodConfig(warmup=0))
    assert a[30] == 0 and not fa[30]
    assert a[31] == b[30]


def test_many_series_streaming_equals_scalar_batch_per_series():
    rng = np.random.default_rng(0)
    e = np.abs(rng.normal(0, 1, (3, 300))) * np.array([[1.0], [10.0], [0.1]])
    e[:, 250] *= 40
    e[1, 100] = np.nan
    # ~20 min steps over ~4 days with a daily square wave: the time-of-day context is exercised too
    times = 1.7e9 + np.cumsum(rng.integers(900, 1500, (3, 300)), axis=1).astype(float)
    v = rng.normal(0, 1, (3, 300)) + 5.0 * ((times % 86400) < 43200)
    v[2, 200] = 50.0
    v[0, 260:280] = 0.0  # a missing daily high
    alert = rng.random((3, 300)) > 0.1
    cfg = LikelihoodConfig(warmup=50, refractory=20)
    state = ErrorLikelihood(cfg)
    got_s, got_f = np.zeros_like(e), np.zeros(e.shape, bool)
    # events interleaved in uneven batches, one series repeated inside a batch
    order = [(s, t) for t in range(300) for s in range(3)]
    for chunk in np.array_split(np.arange(len(order)), 37):
        idx = np.array([order[k][0] for k in chunk])
        ts = [order[k][1] for k in chunk]
        prev = np.array([times[s, t - 1] if t else -np.inf for s, t in zip(idx, ts)])
        sc, fl = state.step(idx, e[idx, ts], v[idx, ts], alert[idx, ts], times[idx, ts], times[idx, ts] - prev)
        got_s[idx, ts], got_f[idx, ts] = sc, fl
    assert state.ccount.max() > cfg.warmup  # the context channel was live
    for k in range(3):
        s, f = score_series(e[k], cfg, values=v[k], alert=alert[k], times=times[k])
        np.testing.assert_allclose(got_s[k], s, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(got_f[k], f)
        assert f[250] or not alert[k, 250]  # scale-free: each series is judged against its own error level
    assert got_f[2, 200]


def test_streaming_protocol_and_reset():
    rng = np.random.default_rng(2)
    e = np.abs(rng.normal(0, 1, (2, 200)))
    det = ErrorLikelihood(warmup=10)
    batch = det.score_batch(e)
    again = ErrorLikelihood(warmup=10)
    np.testing.assert_allclose(batch[1], [again.score_one(1, x) for x in e[1]])
    det.reset([0])
    assert det.count[0] == 0 and det.count[1] == 200
    np.testing.assert_allclose(det.score_batch(e[0]), ErrorLikelihood(warmup=10).score_batch(e[0]))
    # 36 B likelihood + 13 B context statistics + 2 B per time-of-day bin + 1 B per hour (daily repeats)
    assert det.bytes_per_series() == 36 + 13 + 2 * 24 + 24
    assert ErrorLikelihood(seasonal_bins=None, repeat_bins=None).bytes_per_series() == 36


def test_config_validation():
    with pytest.raises(ValueError):
        LikelihoodConfig(long_alpha=0)
    with pytest.raises(ValueError):
        LikelihoodConfig(threshold=2)
    with pytest.raises(ValueError):
        LikelihoodConfig(spatial_tolerance=-1)
