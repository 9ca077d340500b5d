"""Tests for models/forecasting/training.py: both kinds learn a noisy sine, detection end to end, reproducibility."""

import numpy as np
import pytest
import torch

from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.inference import prediction_errors
from models.forecasting.training import fit

PERIOD, NOISE, N = 50, 0.1, 4000


def sine(n, start=0, seed=0):
    t = np.arange(start, start + n)
    return np.sin(2 * np.pi * t / PERIOD) + NOISE * np.random.default_rng(seed).normal(size=n)


CONFIGS = {
    "many-to-one": ForecasterConfig(kind="many-to-one", window=32, hidden=32),
    "many-to-many": ForecasterConfig(kind="many-to-many", window=32, hidden=32, horizon=3),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request):
    train = sine(N)
    bundle, report = fit(CONFIGS[request.param], {"s": train}, epochs=20, progress=False, num_threads=1)
    return train, bundle, report


def test_learns_noisy_sine_to_noise_floor(trained):
    train, bundle, report = trained
    noise_mse = (NOISE / bundle.normalizers["s"].std) ** 2  # noise variance in normalised units
    assert report.best_val_loss < 1.6 * noise_mse  # many-to-many val includes 3-step-ahead forecasts
    assert report.wall_time_s > 0 and report.device == "cpu" and report.windows_per_s > 0
    cal = bundle.calibration
    assert cal is not None and cal.n is not None and cal.n > 700 and cal.k == 5.0
    assert cal.threshold == cal.error_mean + cal.k * cal.error_std
    assert cal.error_mean < 1.5 * noise_mse**0.5 * np.sqrt(2 / np.pi)  # E|N(0, s)| = s * sqrt(2/pi)
    assert bundle.forecaster.training is False and next(bundle.forecaster.parameters()).device.type == "cpu"


def test_flags_spikes_and_level_shift_not_clean_data(trained):
    train, bundle, _ = trained
    threshold = bundle.calibration.threshold  # the calibrated static threshold, mean + k * std

    def flags(continuation):
        normed = bundle.normalizer("s").transform(np.concatenate([train, continuation]))
        return prediction_errors(bundle.forecaster, normed)[N:] > threshold

    assert flags(sine(1000, N, seed=1)).sum() == 0
    dirty = sine(1000, N, seed=1)
    spikes = [200, 350, 500]
    dirty[spikes] += 3.0
    dirty[700:] += 2.0
    f = flags(dirty)
    assert all(f[s] for s in spikes)
    assert f[700:705].any()
    assert f[:200].sum() == 0 and f[600:700].sum() == 0  # quiet between anomalies


def test_reproducible_and_warm_start():
    series = {"a": sine(1200), "b": 3 + 2 * sine(900, seed=4)}
    cfg = ForecasterConfig(kind="many-to-one", window=16, hidden=8)
    b1, r1 = fit(cfg, series, epochs=2, progress=False, seed=7, num_threads=1)
    b2, r2 = fit(cfg, series, epochs=2, progress=False, seed=7, num_threads=1)
    assert r1.val_loss == r2.val_loss and r1.train_loss == r2.train_loss
    for p1, p2 in zip(b1.forecaster.parameters(), b2.forecaster.parameters()):
        assert torch.equal(p1, p2)
    assert set(b1.normalizers) == {"a", "b"} and b1.normalizers["b"].mean == pytest.approx(3, abs=0.2)
    b3, r3 = fit(cfg, series, epochs=1, progress=False, warm_start=b1, num_threads=1)
    assert r3.val_loss[0] < r1.val_loss[0]  # starts from trained weights
    with pytest.raises(ValueError):
        fit(ForecasterConfig(kind="many-to-one", window=16, hidden=4), series, epochs=1, progress=False, warm_start=b1)


def test_nan_gaps_are_tolerated():
    x = sine(1500)
    x[300:340] = np.nan
    for kind in CONFIGS:
        cfg = ForecasterConfig(kind=kind, window=16, hidden=8)
        bundle, report = fit(cfg, {"s": x}, epochs=1, progress=False, num_threads=1)
        assert np.isfinite(report.train_loss[0]) and np.isfinite(bundle.calibration.error_mean)
