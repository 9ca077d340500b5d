"""Tests for models/forecasting/windows.py: window shapes, no look-ahead, NaN/gap policy, normalisers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.forecasting.windows import SeriesNormalizer, regularize, sequence_targets, sliding_windows


@settings(max_examples=60, deadline=None)
@given(time=st.integers(0, 80), features=st.integers(1, 3), window=st.integers(1, 12), horizon=st.integers(1, 5))
def test_window_shapes_and_no_lookahead(time, features, window, horizon):
    # value == its time index, so "no window contains a value from after its target" is checkable
    values = np.repeat(np.arange(time, dtype=float)[:, None], features, axis=1)
    X, y, starts = sliding_windows(values, window, horizon, return_index=True)
    n = max(time - window - horizon + 1, 0)
    assert X.shape == (n, window, features) and y.shape == (n, horizon) and starts.shape == (n,)
    if n:
        assert (X.max(axis=(1, 2)) < y.min(axis=1)).all()
        assert (y[:, 0] == X[:, -1, 0] + 1).all()  # target immediately follows the window
        np.testing.assert_array_equal(X[:, 0, 0], starts)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-5, 5), st.just(float("nan"))), min_size=0, max_size=60),
    st.integers(1, 6),
    st.integers(1, 3),
)
def test_nan_windows_are_dropped(values, window, horizon):
    arr = np.array(values, dtype=float)
    X, y, starts = sliding_windows(arr, window, horizon, return_index=True)
    assert not np.isnan(X).any() and not np.isnan(y).any()
    _, _, all_starts = sliding_windows(arr, window, horizon, drop_nan=False, return_index=True)
    for s in all_starts:  # every clean window is kept
        clean = not np.isnan(arr[s : s + window + horizon]).any()
        assert clean == (s in set(starts.tolist()))


def test_sequence_targets():
    y = sequence_targets(np.arange(5.0), 2)
    np.testing.assert_array_equal(y[:3], [[1, 2], [2, 3], [3, 4]])
    assert np.isnan(y[3, 1]) and y[3, 0] == 4 and np.isnan(y[4]).all()


def test_regularize_marks_gaps_nan():
    ts, vals = regularize(np.array([0, 10, 20, 50, 50]), np.array([1.0, 2, 3, 4, 5]))
    np.testing.assert_array_equal(ts, [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(np.isnan(vals), [0, 0, 0, 1, 1, 0])
    assert vals[-1] == 5  # duplicate timestamp keeps the last value


def test_series_normalizer_roundtrip():
    x = np.array([1.0, 2.0, np.nan, 3.0])
    n = SeriesNormalizer.fit(x)
    assert n.mean == pytest.approx(2.0) and n.std == pytest.approx(np.std([1, 2, 3]))
    np.testing.assert_allclose(n.inverse(n.transform(x)), x)
    assert SeriesNormalizer.from_dict(n.to_dict()) == n
    mean, std = n  # unpacks as (mean, std)
    assert SeriesNormalizer.fit(np.full(5, 7.0)).std > 0  # constant series: no division by zero
