"""Messy real-world series scored without errors or warnings, through the backtest (``replay_file``:
fleet, fleet fine-tuned, per-file where long enough) and the live path (``StreamingDetector.process``,
interleaved with a clean series): gaps, irregular steps, duplicate timestamps, long flat stretches,
counts that are mostly 0 or 1, a 100-row series. Scores must be finite and in [0, 1] wherever the
detector took the event; refused events (duplicates) are NaN there and 0 in the backtest.

Small models (window 12, hidden 8, 1 epoch) keep this to seconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.detection.detector import StreamingDetector
from models.detection.status import Status
from models.forecasting.windows import SeriesNormalizer
from pipeline.backtest.fleet import train_fleet
from pipeline.backtest.nab_scoring import probation_length
from pipeline.backtest.replay import ReplayConfig, detector_config, replay_file

pytestmark = pytest.mark.filterwarnings("error")  # a RuntimeWarning (0/0, overflow) is a failure

NAB = Path(__file__).resolve().parent.parent / "data" / "nab" / "data"
CFG = ReplayConfig(window=12, hidden=8, epochs=1, retrain_epochs=1, chunk=64)
SOURCES = ("fleet", "fleet-finetune", "per-file")
T0 = 1.6e9
HOUR = 3600.0


@pytest.fixture(scope="module")
def fleet():
    return train_fleet([NAB / "realTraffic" / "speed_7578.csv"], CFG, seed=0, threads=1)


def _write(path: Path, ts: np.ndarray, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": pd.to_datetime(ts, unit="s").strftime("%Y-%m-%d %H:%M:%S"), "value": values}).to_csv(
        path, index=False
    )
    return path


def _replay_all(path: Path, fleet, sources=SOURCES, **over) -> dict:
    """``replay_file`` under each model source; checks the outputs every case must satisfy."""
    out = {}
    for source in sources:
        cfg = ReplayConfig(**{**CFG.to_dict(), "model_source": source, **over})
        r = replay_file(path, [], cfg, threads=1, fleet=fleet)
        took = ~np.isnan(r.detector_score)
        assert took.sum() == len(r.values) - r.refused
        assert np.all((r.detector_score[took] >= 0) & (r.detector_score[took] <= 1))
        assert np.isfinite(r.predicted[took]).all() and np.isfinite(r.error[took]).all()
        assert np.all((r.anomaly_score >= 0) & (r.anomaly_score <= 1)) and not r.flag[: r.probation].any()
        out[source] = r
    return out


def _stream(bundle, ts: np.ndarray, values: np.ndarray, chunk: int = 50) -> tuple:
    """``StreamingDetector.process`` over the series interleaved with a clean sine series, ``chunk`` rows of
    each per call; returns the series' ``(status, score, predicted)`` ``(n,)`` and the detector."""
    d = StreamingDetector(bundle, detector_config(CFG))
    n = len(values)
    clean = 60 + 5 * np.sin(np.arange(n) * 2 * np.pi / 24)
    status, score, pred = np.zeros(n, np.int8), np.zeros(n), np.zeros(n)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        ids = ["messy"] * (b - a) + ["clean"] * (b - a)
        res = d.process(ids, np.r_[ts[a:b], T0 + HOUR * np.arange(a, b)], np.r_[values[a:b], clean[a:b]])
        m = slice(0, b - a)
        status[a:b], score[a:b], pred[a:b] = res.status[m], res.score[m], res.predicted[m]
        took = res.status <= Status.WARMUP
        assert np.all((res.score[took] >= 0) & (res.score[took] <= 1)) and np.isfinite(res.predicted[took]).all()
        assert np.isnan(res.score[~took]).all()
    return status, score, pred, d


def test_gaps_of_hours_and_days(tmp_path, fleet):
    n = 1000
    ts = T0 + HOUR * np.arange(n)
    ts[300:] += 50 * HOUR  # two days missing
    ts[700:] += 200 * HOUR  # a week missing
    ts[500:503] += 0.5 * HOUR  # off-grid rows
    v = 10 + np.sin(np.arange(n) * 2 * np.pi / 24) + np.random.default_rng(0).normal(0, 0.1, n)
    path = _write(tmp_path / "g" / "gaps.csv", ts, v)
    rs = _replay_all(path, fleet, retrain_every=250)
    assert rs["per-file"].retrains == 3 and rs["fleet"].refused == 0
    _replay_all(path, fleet, sources=("per-file",), calendar=True)  # calendar columns across the gaps
    status, *_ = _stream(fleet, ts, v)
    assert np.all(status <= Status.WARMUP)


def test_irregular_steps(tmp_path, fleet):
    n = 900
    rng = np.random.default_rng(1)
    ts = T0 + np.cumsum(rng.integers(1, 7200, n)).astype(float)  # 1 s to 2 h between rows
    v = rng.gamma(2.0, 3.0, n)
    path = _write(tmp_path / "g" / "irregular.csv", ts, v)
    _replay_all(path, fleet)
    _replay_all(path, fleet, sources=("per-file",), calendar=True)
    status, *_ = _stream(fleet, ts, v)
    assert np.all(status <= Status.WARMUP)


def test_duplicate_timestamps_are_refused_and_leave_state_unchanged(tmp_path, fleet):
    n = 800
    rng = np.random.default_rng(2)
    ts = T0 + HOUR * np.arange(n)
    v = rng.normal(5, 1, n)
    dup_rows = np.r_[50, 51, 400, 401, 402, 600]  # inside the probation and after it
    ts_d = np.insert(ts, dup_rows + 1, ts[dup_rows])  # each duplicate right after its original
    v_d = np.insert(v, dup_rows + 1, rng.normal(50, 1, len(dup_rows)))  # with wild values
    is_dup = np.zeros(len(ts_d), bool)
    is_dup[dup_rows + 1 + np.arange(len(dup_rows))] = True
    path = _write(tmp_path / "g" / "dups.csv", ts_d, v_d)
    for r in _replay_all(path, fleet).values():
        assert r.refused == len(dup_rows)
        assert np.isnan(r.detector_score[is_dup]).all() and np.all(r.anomaly_score[is_dup] == 0)
        assert not r.flag[is_dup].any()
    status, score, pred, _ = _stream(fleet, ts_d, v_d)
    assert np.array_equal(status == Status.DUPLICATE, is_dup)
    # the refused rows changed nothing: the other rows score exactly as without them
    _, score0, pred0, _ = _stream(fleet, ts, v, chunk=10_000)
    _, score1, pred1, _ = _stream(fleet, ts_d, v_d, chunk=10_000)
    np.testing.assert_array_equal(score1[~is_dup], score0)
    np.testing.assert_array_equal(pred1[~is_dup], pred0)


def test_long_flat_stretch_then_movement(tmp_path, fleet):
    """Flat through the probation (std 0), then a noisy level: the training normaliser has no scale, so
    the detector normalises the series online instead of pinning every later value at +-clip_z (the
    forecast stuck at the flat level, |error| = the whole level change, for good)."""
    n = 1200
    rng = np.random.default_rng(3)
    ts = T0 + HOUR * np.arange(n)
    v = rng.normal(3, 1, n)
    v[:600] = 7.0
    path = _write(tmp_path / "g" / "flat.csv", ts, v)
    rs = _replay_all(path, fleet)
    for r in rs.values():
        assert r.flag[600:620].any()  # the end of the flat stretch is an anomaly
        # the forecast follows the new level (stuck at 7 it would be 4 off)
        assert np.median(np.abs(r.values - r.predicted)[1000:]) < 3.0
    # the same on the live path, and after a model swap (normalisers refreshed)
    bundle = dataclasses.replace(fleet, normalizers={"messy": SeriesNormalizer.fit(v[:180])})
    assert bundle.normalizers["messy"].std == 1e-6
    status, score, pred, det = _stream(bundle, ts[:700], v[:700])
    slot = det.store.ids["messy"]
    assert not det.store.fixed[slot] and det.store.std[slot] > 0.3
    det.swap_model(bundle)
    assert not det.store.fixed[slot] and det.store.std[slot] > 0.3
    # constant throughout: nothing to flag, scores finite
    const = _write(tmp_path / "g" / "const.csv", ts, np.full(n, 42.0))
    for r in _replay_all(const, fleet).values():
        assert not r.flag.any()


def test_counts_mostly_zero_or_one(tmp_path, fleet):
    n = 1200
    rng = np.random.default_rng(4)
    ts = T0 + HOUR * np.arange(n)
    crashes = (rng.random(n) < 0.03).astype(float)  # a crash rate: 0, sometimes 1
    _replay_all(_write(tmp_path / "g" / "crashes.csv", ts, crashes), fleet)
    status, *_ = _stream(fleet, ts, crashes)
    assert np.all(status <= Status.WARMUP)
    quiet = np.zeros(n)
    quiet[900] = 1.0  # all zero, then one crash
    for r in _replay_all(_write(tmp_path / "g" / "quiet.csv", ts, quiet), fleet).values():
        assert r.flag[900] and r.flag.sum() == 1
    status, score, _, _ = _stream(fleet, ts, quiet)
    assert score[900] >= 0.5


def test_a_100_row_series(tmp_path, fleet):
    rng = np.random.default_rng(5)
    ts = T0 + 300 * np.arange(100)
    v = rng.normal(100, 10, 100)
    path = _write(tmp_path / "g" / "hundred.csv", ts, v)
    rs = _replay_all(path, fleet, sources=("fleet", "fleet-finetune"))
    assert all(r.probation == probation_length(100) == 15 for r in rs.values())
    assert rs["fleet-finetune"].model == "fleet"  # 15 rows: nothing to fine-tune on
    _replay_all(path, fleet, sources=("fleet",), warmup="probation")
    with pytest.raises(ValueError, match="too short"):
        _replay_all(path, fleet, sources=("per-file",))
    status, *_ = _stream(fleet, ts, v, chunk=7)
    assert np.count_nonzero(status == Status.SCORED) == 100 - 12  # warm-up: the model window
