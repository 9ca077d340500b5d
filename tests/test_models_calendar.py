"""Calendar features (models/forecasting/calendar.py) and training with them (fit(..., timestamps=...))."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.forecasting.calendar import CALENDAR_DIM, calendar_features, to_epoch_seconds
from models.forecasting.data import load_training_data
from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.inference import prediction_errors
from models.forecasting.training import fit
from models.registry import ModelRegistry


def test_calendar_columns_known_points():
    monday_noon = pd.Timestamp("2024-01-01 12:00:00").value / 1e9  # 2024-01-01 was a Monday
    thursday_0 = 0.0  # 1970-01-01 00:00 UTC, a Thursday
    f = calendar_features(np.array([monday_noon, thursday_0]))
    assert f.shape == (2, CALENDAR_DIM) and f.dtype == np.float32
    np.testing.assert_allclose(f[0, :2], [0.0, -1.0], atol=1e-6)  # noon: half way round the day
    week_phase = 2 * np.pi * (0.5 / 7)  # Monday 12:00 = half a day into the week
    np.testing.assert_allclose(f[0, 2:], [np.sin(week_phase), np.cos(week_phase)], atol=1e-6)
    np.testing.assert_allclose(f[1, :2], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(f[1, 2:], [np.sin(2 * np.pi * 3 / 7), np.cos(2 * np.pi * 3 / 7)], atol=1e-6)
    # periodic: one week later gives the same features; datetime64 and epoch seconds agree
    np.testing.assert_allclose(calendar_features([monday_noon + 7 * 86400]), f[:1], atol=1e-5)
    dt = np.array(["2024-01-01T12:00:00"], dtype="datetime64[s]")
    np.testing.assert_allclose(calendar_features(to_epoch_seconds(dt)), f[:1], atol=1e-6)


def test_config_sets_features_and_validates():
    cfg = ForecasterConfig(kind="many-to-many", calendar_features=True)
    assert cfg.features == 1 + CALENDAR_DIM
    assert ForecasterConfig.from_dict(cfg.to_dict()) == cfg
    assert ForecasterConfig.from_dict({"kind": "many-to-many"}).calendar_features is False  # old meta.json
    with pytest.raises(ValueError, match="calendar_features"):
        ForecasterConfig(calendar_features=True, features=3)


def daily(n, seed=0, start=1.7e9, step=1800.0):
    """30-min series whose only structure is the time of day: a flat night, a block by day."""
    ts = start + step * np.arange(n)
    hour = (ts % 86400) / 3600
    rng = np.random.default_rng(seed)
    return ts, np.where((hour >= 8) & (hour < 18), 1.0, 0.0) + 0.05 * rng.normal(size=n)


def test_fit_requires_timestamps_when_calendar():
    ts, v = daily(400)
    with pytest.raises(ValueError, match="timestamps"):
        fit(
            ForecasterConfig(kind="many-to-many", window=8, hidden=8, calendar_features=True),
            {"a": v},
            epochs=1,
            progress=False,
            device="cpu",
        )


def test_calendar_model_predicts_the_daily_step_a_plain_model_cannot(tmp_path):
    """The day/night switch comes 20 and 28 rows apart; a window of 8 can only time it with the calendar."""
    ts, v = daily(48 * 14)
    kw = dict(epochs=30, progress=False, device="cpu", seed=0, num_threads=1, patience=30)
    cal_b, cal_r = fit(
        ForecasterConfig(kind="many-to-many", window=8, hidden=16, calendar_features=True),
        {"a": v},
        timestamps={"a": ts},
        **kw,
    )
    plain_b, plain_r = fit(ForecasterConfig(kind="many-to-many", window=8, hidden=16), {"a": v}, **kw)
    assert cal_b.config.features == 5
    from models.forecasting.calendar import with_calendar

    z_cal = with_calendar(cal_b.normalizers["a"].transform(v)[:, None], ts)
    z_plain = plain_b.normalizers["a"].transform(v)
    switch = np.flatnonzero(np.abs(np.diff(v > 0.5)) > 0) + 1  # rows right after a day/night switch
    e_cal = prediction_errors(cal_b.forecaster, z_cal)[switch]
    e_plain = prediction_errors(plain_b.forecaster, z_plain)[switch]
    assert np.nanmean(e_cal) < 0.7 * np.nanmean(e_plain)  # measured 1.01 vs 1.92
    assert cal_r.best_val_loss < plain_r.best_val_loss
    # the registry keeps the flag, so the scorer knows to build the features
    reg = ModelRegistry(tmp_path)
    version = reg.register(cal_b)
    loaded = reg.load(cal_b.name, version)
    assert loaded.config.calendar_features and loaded.config.features == 5


def test_warm_start_refuses_a_calendar_mismatch():
    ts, v = daily(400)
    kw = dict(epochs=1, progress=False, device="cpu", num_threads=1)
    plain, _ = fit(ForecasterConfig(kind="many-to-many", window=8, hidden=8), {"a": v}, **kw)
    with pytest.raises(ValueError, match="architecture"):
        fit(
            ForecasterConfig(kind="many-to-many", window=8, hidden=8, calendar_features=True),
            {"a": v},
            timestamps={"a": ts},
            warm_start=plain,
            **kw,
        )


def test_load_training_data_returns_grid_timestamps(tmp_path):
    f = tmp_path / "s.csv"
    pd.DataFrame(
        {
            "timestamp": ["2024-01-01 00:00:00", "2024-01-01 00:05:00", "2024-01-01 00:10:00", "2024-01-01 00:20:00"],
            "value": [1.0, 2.0, 3.0, 4.0],
        }
    ).to_csv(f, index=False)
    data = load_training_data(f)
    start = pd.Timestamp("2024-01-01").value / 1e9
    np.testing.assert_allclose(data.timestamps["s"], start + 300 * np.arange(5))
    assert len(data.series["s"]) == 5 and np.isnan(data.series["s"][3])


def test_time_of_day_only_variant():
    cfg = ForecasterConfig(kind="many-to-many", calendar_features=True, calendar_week=False)
    assert cfg.features == 3 and ForecasterConfig.from_dict(cfg.to_dict()) == cfg
    f = calendar_features(np.array([0.0, 43200.0]), week=False)
    np.testing.assert_allclose(f, [[0.0, 1.0], [0.0, -1.0]], atol=1e-6)
    ts, v = daily(200)
    b, _ = fit(cfg, {"a": v}, timestamps={"a": ts}, epochs=1, progress=False, device="cpu", num_threads=1)
    from models.detection.detector import DetectorConfig, StreamingDetector

    det = StreamingDetector(b, DetectorConfig(threshold_method="likelihood"))
    res = det.process(["a"] * 200, ts, v)
    assert np.isfinite(res.predicted).all() and det.calendar
