"""Fleet models in the backtest (``pipeline.backtest.fleet``): one model trained on other series serves
every file, fine-tuned or not, from ``train_fleet`` or the registry; any series of >= 100 rows runs;
the warm-up switch; per-file on a too-short file fails with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.detection.detector import StreamingDetector
from models.registry import ModelRegistry
from pipeline.backtest.fleet import for_series, train_fleet
from pipeline.backtest.nab_scoring import probation_length
from pipeline.backtest.replay import ReplayConfig, detector_config, load_series, replay_file, run_corpus

NAB = Path(__file__).resolve().parent.parent / "data" / "nab"
TRAFFIC = NAB / "data" / "realTraffic" / "speed_7578.csv"
JUMPS = NAB / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
EC2 = NAB / "data" / "realAWSCloudwatch" / "ec2_cpu_utilization_24ae8d.csv"
FLEET = ReplayConfig(window=12, hidden=8, epochs=1, retrain_epochs=1, chunk=100, model_source="fleet")


@pytest.fixture(scope="module")
def labels() -> dict:
    return json.loads((NAB / "labels" / "combined_windows.json").read_text())


@pytest.fixture(scope="module")
def fleet():
    """A small fleet model trained on two in-repo files (not on EC2)."""
    return train_fleet([TRAFFIC, JUMPS], FLEET, seed=0, threads=1)


def _write(path: Path, ts: np.ndarray, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": pd.to_datetime(ts, unit="s").strftime("%Y-%m-%d %H:%M:%S"), "value": values}).to_csv(
        path, index=False
    )
    return path


def _weights(bundle) -> list[torch.Tensor]:
    return [t.clone() for t in bundle.forecaster.state_dict().values()]


def test_train_fleet_learns_one_model_from_probation_rows_only(tmp_path, fleet):
    assert fleet.meta["fleet_files"] == ["artificialWithAnomaly/art_daily_jumpsup.csv", "realTraffic/speed_7578.csv"]
    assert set(fleet.normalizers) == set(fleet.meta["fleet_files"])
    assert (fleet.config.kind, fleet.config.window, fleet.config.hidden) == ("many-to-many", 12, 8)
    # rows after the probation never reach training: wild values there leave the model bit-identical
    df = pd.read_csv(TRAFFIC)
    p = probation_length(len(df))
    df.loc[p:, "value"] = 1e9
    wild = tmp_path / "realTraffic" / "speed_7578.csv"
    wild.parent.mkdir()
    df.to_csv(wild, index=False)
    again = train_fleet([wild, JUMPS], FLEET, seed=0, threads=1)
    for a, b in zip(_weights(fleet), _weights(again)):
        assert torch.equal(a, b)
    assert again.normalizers == fleet.normalizers


def test_fleet_scores_an_unseen_file_without_training_on_it(fleet, labels):
    key = "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
    r = replay_file(EC2, labels[key], FLEET, threads=1, fleet=fleet)
    assert r.model == "fleet" and r.name == key and key not in fleet.normalizers
    n = len(r.values)
    assert r.probation == probation_length(n) == 604
    assert np.all((r.anomaly_score >= 0) & (r.anomaly_score <= 1)) and np.all(r.anomaly_score[: r.probation] == 0)
    assert not r.flag[: r.probation].any()
    # exactly the fleet forecaster with the file's probation normaliser: replay the detector by hand
    ts, values, _ = load_series(EC2)
    det = StreamingDetector(
        for_series(fleet, key, values[: r.probation], "probation"),
        detector_config(FLEET, probation=r.probation, window=12),
    )
    t = ts.astype(np.int64) / 1e9
    det.process([key] * r.probation, t[: r.probation], values[: r.probation], alert=False)
    res = det.process([key] * (n - r.probation), t[r.probation :], values[r.probation :])
    np.testing.assert_array_equal(res.predicted, r.predicted[r.probation :])
    np.testing.assert_array_equal(res.score, r.detector_score[r.probation :])
    assert fleet.normalizers.keys() == {"artificialWithAnomaly/art_daily_jumpsup.csv", "realTraffic/speed_7578.csv"}


def test_fleet_online_normaliser_differs_from_probation_normaliser(fleet, labels):
    key = "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
    a = replay_file(EC2, labels[key], FLEET, threads=1, fleet=fleet)
    cfg = ReplayConfig(**{**FLEET.to_dict(), "fleet_normalizer": "online"})
    b = replay_file(EC2, labels[key], cfg, threads=1, fleet=fleet)
    assert np.isfinite(b.predicted).all() and np.all((b.anomaly_score >= 0) & (b.anomaly_score <= 1))
    assert not np.array_equal(a.predicted, b.predicted)


def test_fleet_finetune_trains_on_the_probation_and_falls_back_on_short_files(tmp_path, fleet, labels):
    key = "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
    cfg = ReplayConfig(**{**FLEET.to_dict(), "model_source": "fleet-finetune"})
    tuned = replay_file(EC2, labels[key], cfg, threads=1, fleet=fleet)
    plain = replay_file(EC2, labels[key], FLEET, threads=1, fleet=fleet)
    assert tuned.model == "fleet-finetune" and tuned.fit_seconds > 0
    assert not np.array_equal(tuned.predicted, plain.predicted)
    before = _weights(fleet)  # fine-tuning copies the fleet model, never changes it
    replay_file(EC2, labels[key], cfg, threads=1, fleet=fleet)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(fleet)))
    # 120 rows: probation 18 < window + 8, nothing to fine-tune on: the fleet model as is
    rng = np.random.default_rng(1)
    short = _write(tmp_path / "g" / "short.csv", 1.6e9 + 300 * np.arange(120), rng.normal(5, 1, 120))
    r = replay_file(short, [], cfg, threads=1, fleet=fleet)
    assert r.model == "fleet" and r.probation == 18 and np.isfinite(r.predicted).all()


def test_fleet_from_the_registry_champion(tmp_path, fleet, labels):
    reg = ModelRegistry(tmp_path / "registry")
    version = reg.register(fleet)
    reg.promote("fleet", version)
    key = "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
    cfg = ReplayConfig(**{**FLEET.to_dict(), "fleet_registry": str(tmp_path / "registry"), "fleet_model": "fleet"})
    from_reg = replay_file(EC2, labels[key], cfg, threads=1)
    given = replay_file(EC2, labels[key], FLEET, threads=1, fleet=fleet)
    assert from_reg.model == "fleet"
    np.testing.assert_array_equal(from_reg.predicted, given.predicted)
    np.testing.assert_array_equal(from_reg.anomaly_score, given.anomaly_score)
    results, errors = run_corpus([EC2], labels, cfg, workers=1, progress=False)
    assert errors == [] and np.array_equal(results[0].anomaly_score, given.anomaly_score)


def test_fleet_needs_a_model():
    with pytest.raises(ValueError, match="needs a fleet model"):
        replay_file(EC2, [], FLEET, threads=1)
    with pytest.raises(ValueError, match="model_source"):
        ReplayConfig(model_source="fleet-of-one")
    with pytest.raises(ValueError, match="warmup"):
        ReplayConfig(warmup="short")


def test_corpus_workers_get_the_fleet_once_and_match_in_process(tmp_path, fleet, labels):
    files = [EC2, TRAFFIC]
    one, e1 = run_corpus(files, labels, FLEET, workers=1, progress=False, fleet=fleet)
    two, e2 = run_corpus(files, labels, FLEET, workers=2, progress=False, fleet=fleet)
    assert e1 == e2 == [] and [r.name for r in one] == [r.name for r in two]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.anomaly_score, b.anomaly_score)
        np.testing.assert_array_equal(a.predicted, b.predicted)


def test_a_100_row_series_runs_and_may_alert_after_probation_with_the_switch(tmp_path, fleet):
    rng = np.random.default_rng(0)
    v = 20 + rng.uniform(-1, 1, 100)
    v[:2] = 19, 21  # the range is known from the start: no new extreme before row 60
    v[60] = 80.0  # far outside everything seen: the spatial check scores it 1.0
    path = _write(tmp_path / "g" / "hundred.csv", 1.6e9 + 3600 * np.arange(100), v)
    default = replay_file(path, [], FLEET, threads=1, fleet=fleet)
    assert len(default.values) == 100 and default.probation == 15
    assert np.all((default.anomaly_score >= 0) & (default.anomaly_score <= 1))
    # default warm-up: 100 errors before a flag -> a 100-row file never flags
    assert default.detector_score[60] == 1.0 and not default.flag.any()
    cfg = ReplayConfig(**{**FLEET.to_dict(), "warmup": "probation"})
    early = replay_file(path, [], cfg, threads=1, fleet=fleet)
    assert early.flag[60] and not early.flag[:15].any()
    dc = detector_config(cfg, probation=15, window=12)
    assert dc.warmup_events == 12 and dc.likelihood_config().warmup == 15
    dc = detector_config(
        ReplayConfig(warmup="probation", detector={"warmup_events": 40}, post={"warmup": 30}), probation=20, window=32
    )
    assert dc.warmup_events == 20 and dc.likelihood_config().warmup == 20
    dc = detector_config(ReplayConfig(), probation=15, window=12)  # default: untouched
    assert dc.warmup_events is None and dc.likelihood_config().warmup == 100


def test_per_file_on_a_too_short_file_names_the_fleet_option(tmp_path, fleet):
    rng = np.random.default_rng(2)
    path = _write(tmp_path / "g" / "short.csv", 1.6e9 + 3600 * np.arange(168), rng.normal(5, 1, 168))
    cfg = ReplayConfig(window=32, hidden=8, epochs=1)
    with pytest.raises(ValueError) as info:
        replay_file(path, [], cfg, threads=1, fleet=fleet)  # per-file ignores a fleet model
    msg = str(info.value)
    assert "\n" not in msg and "168 rows give a probationary period of 25 rows" in msg
    assert "too short to train a window-32 model" in msg and "model_source='fleet'" in msg
