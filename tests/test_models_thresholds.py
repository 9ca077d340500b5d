"""Tests for models/detection/thresholds: the anomaly likelihood (ErrorLikelihood)."""

import math

import numpy as np
import pytest
from likelihood_oracle import score_series

from models.detection.thresholds import ErrorLikelihood, LikelihoodConfig, tail_score


def _errors(seed=0, S=3, T=3000):
    rng = np.random.default_rng(seed)
    e = np.abs(rng.normal(0, 0.15, size=(S, T)))
    e[0, 2000:2005] += 3.0  # spike
    e[1, 1500:1700] += 0.8  # sustained shift in error level
    e[2, 100] = np.nan
    return e


def test_streaming_equals_batch():
    def make() -> ErrorLikelihood:  # a fresh detector per path
        return ErrorLikelihood(warmup=100)

    e = _errors()
    batch = make().score_batch(e)
    det, rng = make(), np.random.default_rng(5)
    stream = np.empty_like(e)
    for t in range(e.shape[1]):
        order = rng.permutation(e.shape[0])  # arbitrary interleaving of series
        stream[order, t] = det.update(order, e[order, t])
    np.testing.assert_allclose(stream, batch, equal_nan=True)
    single = make()
    one = [single.score_one(0, x) for x in e[0, :400]]
    np.testing.assert_allclose(one, batch[0, :400], equal_nan=True)
    assert batch[2, 100] == 0.0  # a NaN error scores 0 and leaves the state unchanged
    assert ((batch >= 0) & (batch <= 1)).all()


def test_flags_injected_anomalies():
    e = _errors()
    det = ErrorLikelihood(warmup=100)
    flags = det.is_anomaly(det.score_batch(e))
    assert flags[0, 2000:2010].any() and flags[1, 1500:1520].any()
    assert flags[0, 2100:].sum() == 0


def test_repeated_series_in_one_call_applied_in_order():
    e = _errors()[0, :300]
    a, b = ErrorLikelihood(warmup=20), ErrorLikelihood(warmup=20)
    together = a.update(np.zeros(300, dtype=int), e)
    np.testing.assert_allclose(together, b.score_batch(e))


def test_likelihood_is_the_gaussian_tail_of_the_short_mean_against_the_long_run_distribution():
    cfg = LikelihoodConfig(
        short_alpha=0.1, warmup=50, refractory=0, min_std_frac=0.1, spatial_tolerance=None, slow_alpha=None
    )  # the short time scale alone
    det = ErrorLikelihood(cfg)
    det.score_batch(np.full(200, 0.1))  # long-run mean 0.1, variance 0: std floor 0.1 * 0.1 = 0.01
    m = float(np.float32(0.1))  # (the statistics are stored as float32)
    short = m + 0.1 * (0.16 - m)  # the short EWMA after one error of 0.16
    z = (short - m) / (0.1 * m)
    q = 0.5 * math.erfc(z / math.sqrt(2.0))
    expected = math.log(q + 1e-10) / math.log(1e-10)
    assert det.score_one(0, 0.16) == pytest.approx(expected, rel=1e-9)
    assert tail_score(np.array([z]))[0] == pytest.approx(expected, rel=1e-9)


def test_likelihood_scores_stay_in_unit_interval():
    rng = np.random.default_rng(7)
    e = np.abs(rng.standard_cauchy(size=(4, 2000)))
    e[1, ::97] = np.nan
    e[2, 1000] = 1e12
    s = ErrorLikelihood(warmup=50, refractory=0).score_batch(e)
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()


def test_likelihood_does_not_learn_from_flagged_points():
    e = np.r_[np.abs(np.random.default_rng(0).normal(0, 0.1, 400)), np.full(300, 2.0)]
    strict = ErrorLikelihood(warmup=50, refractory=0, clip_z=8.0, spatial_tolerance=None)
    lenient = ErrorLikelihood(warmup=50, refractory=0, clip_z=1e9, spatial_tolerance=None)
    s, loose = strict.score_batch(e), lenient.score_batch(e)
    assert strict.is_anomaly(s[400:455]).all()  # a persistent shift stays anomalous for a while
    assert lenient.is_anomaly(loose[400:]).sum() < strict.is_anomaly(s[400:]).sum()


SLOW = dict(slow_alpha=0.04, short_weight=0.6)


def test_slow_time_scale_streaming_equals_the_scalar_path():
    e = _errors()
    v = np.random.default_rng(3).normal(size=e.shape)
    cfg = LikelihoodConfig(warmup=50, **SLOW)
    det, rng = ErrorLikelihood(cfg), np.random.default_rng(5)
    s, f = np.zeros_like(e), np.zeros(e.shape, dtype=bool)
    for t in range(e.shape[1]):
        o = rng.permutation(e.shape[0])
        s[o, t], f[o, t] = det.step(o, e[o, t], v[o, t])
    for k in range(e.shape[0]):
        ref_s, ref_f = score_series(e[k], cfg, v[k])
        np.testing.assert_allclose(s[k], ref_s, rtol=0, atol=1e-12)
        assert (f[k] == ref_f).all()
    assert det.slow.dtype == np.float32
    assert det.bytes_per_series() == ErrorLikelihood(slow_alpha=None).bytes_per_series() + 8 == 44 + 13 + 48 + 24
    det.reset([1])
    assert det.slow[1] == 0.0 and det.svar[1] == 0.0


def test_slow_time_scale_by_hand():
    """Constant errors, then one error: the slow EWMA against its own (floored) spread, short damped by short_weight."""
    cfg = LikelihoodConfig(
        short_alpha=0.1,
        warmup=50,
        refractory=0,
        min_std_frac=0.1,
        spatial_tolerance=None,
        slow_alpha=0.05,
        short_weight=0.5,
    )
    det = ErrorLikelihood(cfg)
    det.score_batch(np.full(200, 0.1))  # mu 0.1, both variances 0: std floors 0.01
    z_short = (0.1 + 0.1 * (0.16 - 0.1) - 0.1) / 0.01  # 0.6
    z_slow = (0.1 + 0.05 * (0.16 - 0.1) - 0.1) / 0.01  # 0.3
    expected = max(0.5 * tail_score(np.array([z_short]))[0], tail_score(np.array([z_slow]))[0])
    assert det.score_one(0, 0.16) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(tail_score(np.array([z_slow]))[0])  # here the slow scale wins


def test_slow_time_scale_needs_persistence_for_a_short_burst():
    """A 3-event burst that the short scale flags is not flagged with short_weight 0.5; a sustained
    shift still is (by the slow scale)."""
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(0, 0.1, 2000))
    burst, shift = base.copy(), base.copy()
    burst[1500:1503] += 0.2
    shift[1500:1700] += 0.3
    plain = dict(warmup=100, refractory=0, spatial_tolerance=None)
    one = ErrorLikelihood(**plain, slow_alpha=None)
    two = ErrorLikelihood(**plain, slow_alpha=0.04, short_weight=0.5)
    assert one.is_anomaly(one.score_batch(burst)[1500:1520]).any()
    assert not two.is_anomaly(two.score_batch(burst)[1500:1520]).any()
    assert (
        ErrorLikelihood(**plain, slow_alpha=0.04, short_weight=0.5)
        .is_anomaly(ErrorLikelihood(**plain, slow_alpha=0.04, short_weight=0.5).score_batch(shift)[1500:1700])
        .any()
    )


def test_slow_time_scale_is_off_by_default():
    """Cross-validation dropped it (docs/detection.md): one time scale, 8 bytes per series less."""
    cfg = LikelihoodConfig()
    assert cfg.slow_alpha is None and cfg.short_weight == 0.5
    assert ErrorLikelihood().bytes_per_series() + 8 == ErrorLikelihood(slow_alpha=0.04).bytes_per_series()


def test_slow_time_scale_config_errors():
    with pytest.raises(ValueError, match="slow_alpha"):
        LikelihoodConfig(slow_alpha=0.0)
    with pytest.raises(ValueError, match="short_weight"):
        LikelihoodConfig(short_weight=1.5)
