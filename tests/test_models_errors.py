"""Tests for models/forecasting/errors.py: horizon error combination and EWMA smoothing."""

import numpy as np
import pytest

from models.forecasting.errors import combine_horizon_errors, ewma, point_error


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


def test_ewma_recursion_skips_nan():
    rng = np.random.default_rng(1)
    e = rng.random((3, 50))
    e[0, 10] = np.nan
    batch = ewma(e, 0.2)
    assert np.isnan(batch[0, 10]) and batch[0, 11] == pytest.approx(0.2 * e[0, 11] + 0.8 * batch[0, 9])
    for s in range(3):  # s_0 = e_0, then s_t = a*e_t + (1-a)*s_{t-1}, series independent
        expected = [e[s, 0]]
        for t in range(1, 50):
            expected.append(expected[-1] if np.isnan(e[s, t]) else 0.2 * e[s, t] + 0.8 * expected[-1])
        np.testing.assert_allclose(np.where(np.isnan(e[s]), np.nan, expected), batch[s], equal_nan=True)
