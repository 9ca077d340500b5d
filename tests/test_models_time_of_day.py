"""Time-of-day context (models.detection.thresholds.time_of_day and its channel in ErrorLikelihood): quantised
levels keep their raw meaning, a missing daily peak is flagged although the forecast error is flat,
the profile does not learn what was flagged, and it forgets at the same pace at any sampling rate."""

from __future__ import annotations

import numpy as np
import pytest
from likelihood_oracle import score_series

from models.detection.thresholds import ErrorLikelihood, LikelihoodConfig
from models.detection.thresholds.time_of_day import UNSEEN, TimeOfDayProfile, bin_of, decode, encode

DAY = 86400.0


def test_bins_are_hours_of_the_utc_day():
    t = np.array([0.0, 3599.9, 3600.0, DAY - 1, DAY + 7200.0, -1.0])
    assert bin_of(t, 24).tolist() == [0, 0, 1, 23, 2, 23]


def test_quantised_levels_keep_their_raw_value_when_the_range_grows():
    lo, hi = np.array([10.0]), np.array([20.0])
    raw = np.array([[10.0, 12.5, 20.0, np.nan]])
    q = encode(raw, lo[:, None], hi[:, None])
    assert q[0, 3] == UNSEEN
    np.testing.assert_allclose(decode(q, lo[:, None], hi[:, None])[0, :3], raw[0, :3], atol=10 / 65534)
    prof = TimeOfDayProfile(bins=4)
    prof.resize(1)
    prof.level[0] = q[0]
    prof.requantise(np.array([0]), lo, hi, np.array([-1000.0]), np.array([20.0]))
    back = decode(prof.level[0], -1000.0, 20.0)
    np.testing.assert_allclose(back[:3], raw[0, :3], atol=1020 / 65534)
    assert np.isnan(back[3])
    prof.reset(np.array([0]))
    assert (prof.level[0] == UNSEEN).all()


def _daily_square(days: int, step: float, rng):
    t = 1.7e9 - (1.7e9 % DAY) + np.arange(0, days * DAY, step)
    high = (t % DAY) >= 10 * 3600
    high &= (t % DAY) < 18 * 3600
    v = 20.0 + 60.0 * high + rng.normal(0, 2.0, len(t))
    return t, v, high


def test_a_missing_daily_peak_is_flagged_by_the_context_alone():
    rng = np.random.default_rng(0)
    t, v, high = _daily_square(8, 300.0, rng)
    day6 = (t >= t[0] + 6 * DAY) & (t < t[0] + 7 * DAY)
    v[day6 & high] = 20.0 + rng.normal(0, 2.0, int((day6 & high).sum()))  # the peak does not come
    e = np.abs(rng.normal(0, 1.0, len(t)))  # a forecaster that follows the window: nothing unusual
    alert = t >= t[0] + DAY  # a first day of history (the spatial check flags its first peak)
    flags = score_series(e, LikelihoodConfig(), values=v, alert=alert, times=t)[1]
    hits = np.flatnonzero(flags)
    assert len(hits) and all(day6[h] and high[h] for h in hits), hits
    off = score_series(e, LikelihoodConfig(seasonal_bins=None), values=v, alert=alert, times=t)[1]
    assert not off.any()


def test_the_profile_does_not_learn_a_flagged_value():
    rng = np.random.default_rng(1)
    t, v, high = _daily_square(5, 600.0, rng)
    e = np.abs(rng.normal(0, 1.0, len(t)))
    k = np.flatnonzero(t >= t[0] + 4 * DAY + 12 * 3600)[0]  # inside day 4's high
    level = {}
    for spike in (80.0, 500.0):
        det = ErrorLikelihood(LikelihoodConfig(warmup=20))
        vv = v.copy()
        vv[k] = spike
        dt = np.diff(t, prepend=-np.inf)
        for j in range(k + 1):
            _, f = det.step([0], e[j], vv[j], True, t[j], dt[j])
        assert f[0] == (spike == 500.0)  # the spatial check flags 500
        b = bin_of([t[k]], 24)[0]
        level[spike] = decode(det.profile.level[0, b], det.lo[0], det.hi[0])
    assert level[500.0] == pytest.approx(level[80.0], abs=0.5)  # the hour's level did not move toward 500
    assert level[80.0] == pytest.approx(80.0, abs=3.0)


def test_memory_is_in_days_not_visits():
    """After a level change, a 1-minute and a 15-minute series move their profile at the same pace."""
    out = []
    for step in (60.0, 900.0):
        prof = TimeOfDayProfile(bins=24, memory_days=3.0)
        prof.resize(1)
        t = np.arange(0, 4 * DAY, step)
        lo, hi = np.array([0.0]), np.array([100.0])
        i = np.array([0])
        for k, tk in enumerate(t):
            b = bin_of([tk], 24)
            v = np.array([10.0 if tk < DAY else 90.0])
            _, level = prof.residual(i, b, v, lo, hi)
            prof.learn(i, b, v, level, np.array([step if k else np.inf]), lo, hi, np.array([True]))
        out.append(decode(prof.level[0], 0.0, 100.0).mean())
    # 3 days after the change, with a 3-day memory: 1 - e^-1 of the way from 10 to 90
    assert out[0] == pytest.approx(10 + 80 * (1 - np.exp(-1)), abs=2.0)
    assert out[1] == pytest.approx(out[0], abs=2.0)


@pytest.mark.parametrize(
    "bad", [dict(seasonal_bins=0), dict(seasonal_days=0), dict(warmup=300)]
)  # the context count is a uint8
def test_context_config_validation(bad):
    with pytest.raises(ValueError):
        LikelihoodConfig(**bad)


def test_a_long_warmup_is_fine_without_the_context():
    assert LikelihoodConfig(warmup=300, seasonal_bins=None).warmup == 300


def test_times_without_steps_are_refused():
    det = ErrorLikelihood()
    with pytest.raises(ValueError, match="dt"):
        det.step([0], 1.0, 1.0, True, times=1.7e9)
    det.ensure(1)
    with pytest.raises(ValueError, match="dt"):
        det.step_unique(np.array([0]), np.array([1.0]), np.array([1.0]), True, np.array([1.7e9]))
