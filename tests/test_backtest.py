"""Backtest replay through the real StreamingDetector on the repo's NAB files: NAB rules (probation,
no look-ahead, retraining), NAB-format output, plots and the ``tsad backtest`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.backtest.nab_scoring import probation_length
from pipeline.backtest.output import result_path, write_nab_csv
from pipeline.backtest.replay import ReplayConfig, load_series, replay_file, run_corpus
from pipeline.cli import app

SMALL = ReplayConfig(window=16, hidden=16, epochs=2, retrain_epochs=1, chunk=100)


@pytest.fixture(scope="module")
def labels(nab_dir_module):
    return json.loads((nab_dir_module / "labels" / "combined_windows.json").read_text())


@pytest.fixture(scope="module")
def nab_dir_module():
    return Path(__file__).resolve().parent.parent / "data" / "nab"


@pytest.fixture(scope="module")
def traffic(nab_dir_module):
    return nab_dir_module / "data" / "realTraffic" / "speed_7578.csv"


@pytest.fixture(scope="module")
def traffic_result(traffic, labels):
    return replay_file(traffic, labels["realTraffic/speed_7578.csv"], SMALL, threads=1)


def test_replay_follows_nab_probation_and_scores_every_row(traffic_result):
    r = traffic_result
    n = len(r.values)
    assert n == 1127 and r.probation == probation_length(n) == 169
    assert len(r.anomaly_score) == n and np.all((r.anomaly_score >= 0) & (r.anomaly_score <= 1))
    assert not r.flag[: r.probation].any() and not r.detector_flag[: r.probation].any()
    assert np.all(r.anomaly_score[: r.probation] == 0)
    assert np.isfinite(r.predicted[r.probation :]).all()
    assert r.label.sum() == sum(hi - lo + 1 for lo, hi in r.windows) and len(r.windows) == 4
    # the 4 labelled windows of this file hold the deep dips: something must be caught
    assert r.flag.sum() >= 1 and (r.flag & r.label).any()


def test_replay_never_looks_ahead(tmp_path, traffic, labels):
    """Rows scored from a file are identical whether or not (wild) future rows follow them, with
    retraining on: every model fit and every score may only use the past. 6 extra rows keep NAB's
    probation (floor(0.15 n) = 169 for n in 1127..1133) and the retrain points the same."""
    cfg = ReplayConfig(window=16, hidden=16, epochs=2, retrain_epochs=1, chunk=100, retrain_every=300)
    full = replay_file(traffic, labels["realTraffic/speed_7578.csv"], cfg, threads=1)
    df = pd.read_csv(traffic)
    extra = pd.DataFrame(
        {
            "timestamp": pd.date_range(
                pd.Timestamp(df["timestamp"].iloc[-1]) + pd.Timedelta("5min"), periods=6, freq="5min"
            ).strftime("%Y-%m-%d %H:%M:%S"),
            "value": 1e6,
        }
    )
    longer = tmp_path / "realTraffic" / "speed_7578.csv"
    longer.parent.mkdir()
    pd.concat([df, extra]).to_csv(longer, index=False)
    assert probation_length(1133) == full.probation == 169
    ext = replay_file(longer, labels["realTraffic/speed_7578.csv"], cfg, threads=1)
    assert full.retrains == ext.retrains == 3
    np.testing.assert_array_equal(ext.anomaly_score[:1127], full.anomaly_score)
    np.testing.assert_array_equal(ext.flag[:1127], full.flag)
    np.testing.assert_array_equal(ext.predicted[:1127], full.predicted)
    assert ext.detector_flag[1127]  # the wild value itself is an anomaly to the detector


def test_nab_output_layout_and_columns(tmp_path, traffic_result):
    path = write_nab_csv(traffic_result, tmp_path, "tsad")
    assert path == tmp_path / "tsad" / "realTraffic" / "tsad_speed_7578.csv"
    assert result_path(tmp_path, "x", "g/f.csv") == tmp_path / "x" / "g" / "x_f.csv"
    df = pd.read_csv(path)
    assert list(df.columns) == ["timestamp", "value", "anomaly_score", "label"]
    assert len(df) == 1127 and df["label"].sum() == traffic_result.label.sum()
    assert df["timestamp"].iloc[0] == "2015-09-08 11:39:00"
    assert df["anomaly_score"].between(0, 1).all()


def test_bad_rows_are_dropped_and_counted(tmp_path, traffic):
    df = pd.read_csv(traffic, dtype=str)
    df.loc[5, "value"] = "oops"
    df.loc[9, "timestamp"] = "not a time"
    bad = tmp_path / "realTraffic" / "speed_7578.csv"
    bad.parent.mkdir()
    df.to_csv(bad, index=False)
    ts, values, dropped = load_series(bad)
    assert dropped == 2 and len(values) == 1125 and np.all(np.diff(ts.astype(np.int64)) > 0)


def test_corpus_run_reports_unlabelled_and_broken_files(tmp_path, traffic, labels):
    unlabelled = tmp_path / "other" / "x.csv"
    unlabelled.parent.mkdir()
    shutil.copy(traffic, unlabelled)
    short = tmp_path / "realTraffic" / "speed_7578.csv"
    short.parent.mkdir()
    pd.read_csv(traffic).iloc[:100].to_csv(short, index=False)  # too short to train
    results, errors = run_corpus([unlabelled, short], labels, SMALL, workers=1, progress=False)
    assert results == []
    assert any("other/x.csv: not in the labels file" in e for e in errors)
    assert any("too short" in e for e in errors)


def test_cli_backtest_writes_results_scores_and_plots(tmp_path, nab_dir_module):
    files = [
        nab_dir_module / "data" / "realTraffic" / "speed_7578.csv",
        nab_dir_module / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv",
    ]
    res = CliRunner().invoke(
        app,
        [
            "backtest",
            *map(str, files),
            "--labels",
            str(nab_dir_module / "labels" / "combined_windows.json"),
            "--out",
            str(tmp_path / "out"),
            "--detector",
            "mine",
            "--plot",
            str(tmp_path / "plots"),
            "--workers",
            "2",
            "--window",
            "16",
            "--hidden",
            "16",
            "--epochs",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "standard" in res.output and "label-optimised" in res.output
    assert (tmp_path / "out" / "mine" / "artificialWithAnomaly" / "mine_art_daily_jumpsup.csv").exists()
    scores = json.loads((tmp_path / "out" / "mine" / "mine_scores.json").read_text())
    assert scores["files"] == 2 and set(scores["nab"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    png = tmp_path / "plots" / "realTraffic" / "speed_7578.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_bad_detector_config(tmp_path, nab_dir_module):
    res = CliRunner().invoke(
        app,
        [
            "backtest",
            str(nab_dir_module / "data"),
            "--labels",
            str(nab_dir_module / "labels" / "combined_windows.json"),
            "--detector-config",
            '{"threshold_method": "nope"}',
        ],
    )
    assert res.exit_code != 0 and "threshold_method" in res.output


def test_replay_with_calendar_features(traffic, labels):
    """--calendar: the probation model gets the calendar columns and the detector serves it (same code)."""
    cfg = ReplayConfig(window=16, hidden=16, epochs=2, chunk=200, calendar=True, calendar_week=False)
    r = replay_file(traffic, labels["realTraffic/speed_7578.csv"], cfg, threads=1)
    plain = replay_file(
        traffic,
        labels["realTraffic/speed_7578.csv"],
        ReplayConfig(window=16, hidden=16, epochs=2, chunk=200),
        threads=1,
    )
    assert np.isfinite(r.predicted[r.probation :]).all()
    assert np.all((r.anomaly_score >= 0) & (r.anomaly_score <= 1))
    assert not np.allclose(r.predicted[r.probation :], plain.predicted[r.probation :])  # a different model
