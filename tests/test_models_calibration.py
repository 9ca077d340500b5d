"""Tests for models/forecasting/calibration.py: the statistics, one key per fact, legacy spellings."""

import math

import numpy as np
import pytest

from models.forecasting.calibration import Calibration, stats

LEGACY = {  # a calibration as bundles wrote it before the Calibration class (mean/std twice, "max")
    "metric": "abs",
    "n": 4,
    "mean": 0.25,
    "std": 0.125,
    "error_mean": 0.25,
    "error_std": 0.125,
    "q50": 0.2,
    "q90": 0.4,
    "q99": 0.45,
    "q999": 0.5,
    "max": 0.5,
    "k": 5.0,
    "threshold": 0.875,
    "ewma_alpha": 0.1,
    "smoothed_mean": 0.2,
    "smoothed_std": 0.05,
}


def test_stats_of_the_validation_errors():
    errors = np.array([0.1, np.nan, 0.3, 0.2, 0.6])
    cal = stats(errors, np.array([0.1, np.nan, 0.12, 0.13, 0.18]), k=4.0)
    assert cal is not None and cal.n == 4
    assert cal.error_mean == pytest.approx(0.3) and cal.error_std == pytest.approx(np.std([0.1, 0.3, 0.2, 0.6]))
    assert cal.threshold == cal.error_mean + 4.0 * cal.error_std
    assert cal.q50 == pytest.approx(0.25) and cal.error_max == 0.6
    assert cal.smoothed_mean == pytest.approx(np.mean([0.1, 0.12, 0.13, 0.18]))
    assert stats(np.full(3, np.nan), np.full(3, np.nan), k=5.0) is None  # nothing to pool: no calibration


def test_to_dict_writes_each_fact_once_and_reads_back():
    cal = stats(np.array([0.1, 0.3, 0.2]), np.array([0.1, 0.12, 0.13]), k=5.0)
    assert cal is not None
    d = cal.to_dict()
    assert "mean" not in d and "std" not in d and "max" not in d
    assert d["error_mean"] == cal.error_mean and d["error_max"] == 0.3 and d["metric"] == "abs"
    assert Calibration.from_dict(d) == cal
    partial = Calibration(error_mean=0.5, error_std=0.5)
    assert partial.to_dict() == {"error_mean": 0.5, "error_std": 0.5, "metric": "abs"}
    assert Calibration.from_dict(partial.to_dict()) == partial


def test_from_dict_reads_the_legacy_spellings():
    cal = Calibration.from_dict(LEGACY)
    assert cal == Calibration(
        n=4,
        error_mean=0.25,
        error_std=0.125,
        q50=0.2,
        q90=0.4,
        q99=0.45,
        q999=0.5,
        error_max=0.5,
        k=5.0,
        threshold=0.875,
        ewma_alpha=0.1,
        smoothed_mean=0.2,
        smoothed_std=0.05,
    )
    assert Calibration.from_dict({"mean_error": 1, "std_error": 2}) == Calibration(error_mean=1.0, error_std=2.0)
    assert Calibration.from_dict({"mae": 0.5, "std": 0.1}) == Calibration(error_mean=0.5, error_std=0.1)
    assert Calibration.from_dict({"error_mean": 0.3, "mean": 9.0, "error_std": 0.2}).error_mean == 0.3


@pytest.mark.parametrize("data", [{}, {"metric": "abs", "n": 0, "k": 5.0}, {"mean": 0.3}])
def test_from_dict_without_error_statistics_is_none(data):
    assert Calibration.from_dict(data) is None


def test_from_dict_refuses_values_that_are_not_numbers():
    with pytest.raises(ValueError):
        Calibration.from_dict({"error_mean": "abc", "error_std": 0.1})
    with pytest.raises(TypeError):
        Calibration.from_dict({"error_mean": [0.1], "error_std": 0.1})
    nan = Calibration.from_dict({"error_mean": math.nan, "error_std": 0.1})
    assert nan is not None and math.isnan(nan.error_mean)  # kept as stored; the detector falls back
