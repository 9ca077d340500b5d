"""Tests for models/forecasting/errors.py: horizon error combination and streaming == batch."""

import numpy as np
import pytest

from models.forecasting.errors import EWMA, HorizonErrors, combine_horizon_errors, ewma, point_error


def test_combine_horizon_errors_is_mean_over_covering_forecasts():
    actual = np.array([0.0, 1.0, 2.0, 3.0])
    pred = np.array([[1.5, 2.0], [1.0, 4.0], [np.nan, 3.0], [9.0, 9.0]])  # pred[t, k] forecasts actual[t+1+k]
    e = combine_horizon_errors(pred, actual)
    assert np.isnan(e[0])  # nothing forecasts the first step
    assert e[1] == pytest.approx(0.5)  # only pred[0, 0]
    assert e[2] == pytest.approx((1.0 + 0.0) / 2)  # pred[1, 0] = 1.0 and pred[0, 1] = 2.0 vs 2
    assert e[3] == pytest.approx(1.0)  # pred[2, 0] is NaN (ignored), pred[1, 1] = 4.0 vs 3
    sq = combine_horizon_errors(pred, actual, metric="squared")
    assert sq[3] == pytest.approx(1.0) and sq[1] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        point_error(1.0, 2.0, "huber")


def test_horizon_errors_streaming_equals_batch_interleaved():
    rng = np.random.default_rng(0)
    S, T, H = 4, 60, 3
    actual = rng.normal(size=(S, T))
    pred = rng.normal(size=(S, T, H))
    stream = HorizonErrors(H)
    got = np.empty((S, T))
    for t in range(T):
        order = rng.permutation(S)
        got[order, t] = stream.update(order, actual[order, t], pred[order, t])
    for s in range(S):
        np.testing.assert_allclose(got[s], combine_horizon_errors(pred[s], actual[s]), equal_nan=True)
    one = HorizonErrors(H)
    single = [one.score_one(0, actual[1, t], pred[1, t]) for t in range(T)]
    np.testing.assert_allclose(single, got[1], equal_nan=True)


def test_ewma_streaming_equals_batch_and_skips_nan():
    rng = np.random.default_rng(1)
    e = rng.random((3, 50))
    e[0, 10] = np.nan
    batch = ewma(e, 0.2)
    assert np.isnan(batch[0, 10]) and batch[0, 11] == pytest.approx(0.2 * e[0, 11] + 0.8 * batch[0, 9])
    det = EWMA(0.2)
    stream = np.array([[det.score_one(s, e[s, t]) for t in range(50)] for s in range(3)])
    np.testing.assert_allclose(stream, batch, equal_nan=True)
