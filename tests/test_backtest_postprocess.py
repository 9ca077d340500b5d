"""Anomaly-likelihood post-processing: streaming == batch, spikes score high, refractory period."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.backtest.postprocess import ErrorLikelihood, LikelihoodConfig, score_series, tail_score


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


def test_no_flags_during_warmup_and_nan_leaves_state():
    e = np.ones(50)
    e[10] = 1e3
    _, f = score_series(e, LikelihoodConfig(warmup=20))
    assert not f[:20].any()
    _, f0 = score_series(e, LikelihoodConfig(warmup=0))
    assert f0[10]
    a, fa = score_series(np.r_[np.ones(30), np.nan, 2.0], LikelihoodConfig(warmup=0))
    b, fb = score_series(np.r_[np.ones(30), 2.0], LikelihoodConfig(warmup=0))
    assert a[30] == 0 and not fa[30]
    assert a[31] == b[30]


def test_many_series_streaming_equals_batch_per_series():
    rng = np.random.default_rng(0)
    e = np.abs(rng.normal(0, 1, (3, 300))) * np.array([[1.0], [10.0], [0.1]])
    e[:, 250] *= 40
    cfg = LikelihoodConfig(warmup=50, refractory=20)
    state = ErrorLikelihood(cfg)
    got_s, got_f = np.zeros_like(e), np.zeros(e.shape, bool)
    # events interleaved in uneven batches, one series repeated inside a batch
    order = [(s, t) for t in range(300) for s in range(3)]
    for chunk in np.array_split(np.arange(len(order)), 37):
        idx = np.array([order[k][0] for k in chunk])
        ts = [order[k][1] for k in chunk]
        sc, fl = state.update(idx, e[idx, ts])
        got_s[idx, ts], got_f[idx, ts] = sc, fl
    for k in range(3):
        s, f = score_series(e[k], cfg)
        np.testing.assert_allclose(got_s[k], s)
        np.testing.assert_array_equal(got_f[k], f)
        assert f[250]  # scale-free: each series is judged against its own error level


def test_config_validation():
    with pytest.raises(ValueError):
        LikelihoodConfig(long_alpha=0)
    with pytest.raises(ValueError):
        LikelihoodConfig(threshold=2)
