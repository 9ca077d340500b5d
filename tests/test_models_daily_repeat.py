"""Daily repeats (models.detection.thresholds.daily_repeat and its step in ErrorLikelihood): a spike every day
at the same hour alarms once, a spike at another hour or after a day without one alarms, the
spatial check is exempt, and the vector path records the same codes as the scalar twin."""

from __future__ import annotations

import numpy as np
import pytest
from likelihood_oracle import repeat_one, score_series

from models.detection.thresholds import ErrorLikelihood, LikelihoodConfig
from models.detection.thresholds.daily_repeat import DailyRepeats, day_code

DAY = 86400.0
T0 = 1.7e9 - (1.7e9 % DAY)  # a UTC midnight


def test_repeats_are_same_hour_yesterday_or_a_repeat_already_today():
    rep = DailyRepeats(24)
    rep.resize(1)
    i = np.array([0])

    def hot(t):
        return bool(rep.step(i, np.array([t]), np.array([True]))[0])

    assert not hot(T0 + 3 * 3600)  # day 0, 03:xx: first time
    assert not hot(T0 + 3 * 3600 + 600)  # again day 0: not a repeat (not hot yesterday)
    assert hot(T0 + DAY + 3 * 3600 + 120)  # day 1, same hour: a repeat
    assert hot(T0 + DAY + 3 * 3600 + 900)  # day 1 again: still a repeat
    assert not hot(T0 + DAY + 5 * 3600)  # another hour
    assert not hot(T0 + 3 * DAY + 3 * 3600)  # day 3 after a day without: alarms again
    before = rep.code.copy()
    assert not rep.step(i, np.array([T0 + 4 * DAY + 3 * 3600]), np.array([False]))[0]
    np.testing.assert_array_equal(rep.code, before)  # a value that is not hot records nothing
    rep.reset(i)
    assert (rep.code == 0).all()


def test_day_codes_wrap_and_the_scalar_twin_agrees():
    t = T0 + np.arange(0, 300) * DAY
    codes = day_code(t)
    assert codes.min() == 1 and codes.max() == 127
    assert np.all(np.diff(codes)[np.diff(codes) < 0] == -126)  # 127 -> 1
    rng = np.random.default_rng(0)
    times = np.sort(T0 + rng.uniform(0, 400 * DAY, 3000))
    rep = DailyRepeats(24)
    rep.resize(1)
    scalar = [0] * 24
    for tk in times:
        got = rep.step(np.array([0]), np.array([tk]), np.array([True]))[0]
        assert got == repeat_one(scalar, float(tk), 24)
    assert rep.code[0].tolist() == scalar


def _daily_spikes(days=6, step=300.0, hour=3.5):
    rng = np.random.default_rng(3)
    t = T0 + np.arange(0, days * DAY, step)
    v = 10.0 + rng.normal(0, 1, len(t))
    e = np.abs(rng.normal(0, 1, len(t)))
    spikes = [int(np.argmin(np.abs(t - (T0 + d * DAY + hour * 3600)))) for d in range(days)]
    return t, v, e, spikes


def test_a_daily_job_alarms_once_and_an_incident_at_another_hour_still_alarms():
    t, v, e, spikes = _daily_spikes()
    job = spikes[1:]  # a daily job from day 1 on
    e[job] = 60.0  # the forecaster never sees it coming
    other = spikes[4] + 100  # day 4, ~8 h later: an incident
    e[other] = 60.0
    cfg = LikelihoodConfig(seasonal_bins=None)  # forecast channel alone, so the test reads clearly
    scores, flags = score_series(e, cfg, values=v, times=t)
    assert flags[job[0]] and not flags[job[1:]].any()  # the first run alarms, the repeats do not
    assert scores[job[2]] == 0.0
    assert flags[other]
    _, off = score_series(e, LikelihoodConfig(seasonal_bins=None, repeat_bins=None), values=v, times=t)
    assert off[job].all()


def test_warm_up_spikes_count_as_evidence():
    t, v, e, spikes = _daily_spikes()
    e[spikes] = 60.0  # day 0's run falls in the warm-up (cannot flag) ...
    flags = score_series(e, LikelihoodConfig(seasonal_bins=None), values=v, times=t)[1]
    assert spikes[0] < 100 and not flags[spikes].any()  # ... but makes day 1's a repeat


def test_a_new_extreme_at_a_repeated_hour_still_alarms():
    t, v, e, spikes = _daily_spikes()
    e[spikes] = 60.0
    v[spikes[4]] = 1000.0  # far outside every value seen: the spatial check
    scores, flags = score_series(e, LikelihoodConfig(seasonal_bins=None), values=v, times=t)
    assert flags[spikes[4]] and scores[spikes[4]] == 1.0


def test_vector_path_equals_scalar_with_repeats():
    t, v, e, spikes = _daily_spikes()
    e[spikes] = 60.0
    cfg = LikelihoodConfig()
    det = ErrorLikelihood(cfg)
    dt = np.diff(t, prepend=-np.inf)
    got = [det.step([0], e[k], v[k], True, t[k], dt[k]) for k in range(len(t))]
    s = np.array([g[0][0] for g in got])
    f = np.array([g[1][0] for g in got])
    ref_s, ref_f = score_series(e, cfg, values=v, times=t)
    np.testing.assert_allclose(s, ref_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(f, ref_f)
    assert det.bytes_per_series() == 36 + 13 + 2 * 24 + 24


def test_repeat_config_validation():
    with pytest.raises(ValueError):
        LikelihoodConfig(repeat_bins=0)
    with pytest.raises(ValueError):
        DailyRepeats(0)
