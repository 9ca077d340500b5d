"""Leave-one-group-out cross-validation (``pipeline.backtest.crossval``, ``tsad backtest --cv``).

The toy corpus test is the reason the mode exists: a candidate tuned to the biggest group wins
in-sample and loses out of sample, and the cross-validated figures say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from likelihood_oracle import score_series
from typer.testing import CliRunner

from models.detection.thresholds import LikelihoodConfig
from pipeline.backtest.crossval import (
    Scored,
    StoredRows,
    candidates_from_json,
    complexity,
    evaluate,
    folds,
    group_of,
    likelihood_scores,
    rescore,
    select,
    switch_grid,
)
from pipeline.backtest.nab_scoring import point_table
from pipeline.backtest.replay import ReplayConfig, replay_file
from pipeline.cli import app

N, PROBATION, WINDOW = 300, 45, (150, 169)


def _file(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    table = point_table(N, [WINDOW], PROBATION)
    return score, score >= 0.5, table


def _toy(tuned: bool) -> Scored:
    """Three groups: ``big`` (4 files), ``a`` and ``b`` (1 file each), one window per file.

    ``plain`` detects every window late (its last row) at score 0.7 and never fires elsewhere:
    the same modest result on every group. ``tuned`` fits the big group: there it detects each
    window on its first row at 0.9 (and its noise stays at 0.3); on ``a`` and ``b`` the window
    scores only 0.35 while the noise reaches 0.4 on 30 rows.
    """
    files = {}
    for g, count in (("big", 4), ("a", 1), ("b", 1)):
        for k in range(count):
            s = np.zeros(N)
            if not tuned:
                s[WINDOW[1]] = 0.7
            elif g == "big":
                s[PROBATION:] = 0.3
                s[WINDOW[0]] = 0.9
            else:
                s[200:230] = 0.4
                s[WINDOW[0]] = 0.35
            files[f"{g}/f{k}.csv"] = _file(s)
    return Scored(files)


def test_tuned_candidate_wins_in_sample_and_loses_held_out():
    per, nested = evaluate({"plain": _toy(False), "tuned": _toy(True)}, rule="max")
    assert per["tuned"].in_sample > per["plain"].in_sample + 5  # fitting the big group pays in-sample
    assert per["tuned"].pooled < per["plain"].pooled - 5  # and costs on each held-out group
    assert per["tuned"].held_out["a"] < per["plain"].held_out["a"]
    # every held-out score of "plain" equals its in-sample score: nothing of it was fitted
    assert all(v == pytest.approx(per["plain"].in_sample) for v in per["plain"].held_out.values())
    # the nested selection picks "tuned" only where the big group is in the training folds
    assert nested.chosen == {"big": "plain", "a": "tuned", "b": "tuned"}
    assert nested.pooled < max(p.in_sample for p in per.values())


def test_one_se_rule_keeps_a_step_only_when_it_beats_the_group_noise():
    """Contributions per group: 'complex' (the slow time scale on) against 'simple' (it off)."""
    cx = {"simple": complexity({"slow_alpha": None}), "complex": complexity({"slow_alpha": 0.04})}
    assert cx["complex"] == cx["simple"] + 2  # slow_alpha and short_weight
    noisy = {"simple": {"a": 10.0, "b": 10.0, "c": 10.0}, "complex": {"a": 14.0, "b": 7.0, "c": 10.0}}
    assert select(noisy, cx, "max") == "complex"  # 1 point better in total ...
    assert select(noisy, cx, "one-se") == "simple"  # ... but groups disagree by more than that
    steady = {"simple": {"a": 10.0, "b": 10.0, "c": 10.0}, "complex": {"a": 11.0, "b": 11.2, "c": 10.9}}
    assert select(steady, cx, "one-se") == "complex"  # better on every group: kept


def test_groups_without_windows_are_never_held_out():
    files = {"quiet/x.csv": (np.zeros(N), np.zeros(N, dtype=bool), point_table(N, [], PROBATION)), **_toy(False).files}
    tables = {n: f[2] for n, f in files.items()}
    assert sorted(folds(sorted(files), tables)) == ["a", "b", "big"]
    assert group_of("realTweets/Twitter_volume_AAPL.csv") == "realTweets" and group_of("x.csv") == ""


def test_switch_grid_lists_every_combination_simplest_first():
    grid = switch_grid()
    assert len(grid) == 8 and len({c.name for c in grid}) == 8
    assert grid[0].name == "base" and grid[0].post == {"slow_alpha": None, "seasonal_bins": None, "repeat_bins": None}
    assert grid[-1].name == "slow+tod+rep"
    assert grid[-1].post == {"slow_alpha": 0.04, "short_weight": 0.5, "seasonal_bins": 24, "repeat_bins": 24}
    assert [complexity(c.post) for c in grid] == sorted(complexity(c.post) for c in grid)


def test_candidates_from_json_validates():
    cands = candidates_from_json('{"one": {"slow_alpha": null}, "two": {}}', base={"refractory": 20})
    assert [c.name for c in cands] == ["one", "two"] and cands[0].post == {"refractory": 20, "slow_alpha": None}
    with pytest.raises(ValueError, match="candidate 'bad'"):
        candidates_from_json('{"bad": {"no_such_knob": 1}}')
    with pytest.raises(ValueError):
        candidates_from_json('{"bad": {"short_alpha": 2.0}}')
    with pytest.raises(ValueError, match="JSON object"):
        candidates_from_json("[1, 2]")


@pytest.fixture(scope="module")
def nab_small():
    return Path(__file__).resolve().parent.parent / "data" / "nab"


def test_rescore_reproduces_the_live_detector(nab_small):
    """Re-scoring stored errors gives the live StreamingDetector's scores and flags."""
    labels = json.loads((nab_small / "labels" / "combined_windows.json").read_text())
    r = replay_file(
        nab_small / "data" / "realTraffic" / "speed_7578.csv",
        labels["realTraffic/speed_7578.csv"],
        ReplayConfig(window=16, hidden=16, epochs=2, chunk=100),
        threads=1,
    )
    score, flag = rescore(r, {})
    np.testing.assert_array_equal(score, r.anomaly_score)  # the live arithmetic: bit-identical
    assert (flag == r.flag).all() and flag.any()
    off, _ = rescore(r, {"spatial_tolerance": None, "slow_alpha": None})
    assert not np.allclose(off, score)  # a candidate really changes the scores


def _cv(nab_small, *args: str):
    """``tsad backtest --cv`` on the in-repo NAB files with a tiny model."""
    return CliRunner().invoke(
        app,
        [
            "backtest",
            str(nab_small / "data"),
            "--labels",
            str(nab_small / "labels" / "combined_windows.json"),
            "--cv",
            "--window",
            "16",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--workers",
            "1",
            *args,
        ],
    )


def test_cli_cross_validation(tmp_path, nab_small):
    res = _cv(
        nab_small,
        "--seeds",
        "0,1",
        "--candidates",
        '{"one-scale": {"slow_alpha": null}, "default": {}}',
        "--out",
        str(tmp_path),
    )
    assert res.exit_code == 0, res.output
    assert "chosen per held-out group" in res.output and "cross-validated choice" in res.output
    summary = json.loads((tmp_path / "crossval.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["per_candidate"]) == {"one-scale", "default"}
    groups = summary["per_candidate"]["default"]["groups"]
    assert set(groups) == {g.name for g in (nab_small / "data").iterdir() if g.is_dir()} - {"artificialNoAnomaly"}
    assert summary["best"] in {"one-scale", "default"} and summary["rule"] == "one-se"


def test_cli_rejects_bad_candidates(nab_small):
    res = _cv(nab_small, "--candidates", '{"x": {"nope": 1}}')
    assert res.exit_code == 2 and "nope" in res.output


def test_cli_cross_validation_of_replay_variants(tmp_path, nab_small):
    """Per-file and fleet models compared in one run: each group's fleet model never saw that group."""
    res = _cv(
        nab_small,
        "--seeds",
        "0",
        "--candidates",
        '{"one-scale": {"slow_alpha": null}}',
        "--out",
        str(tmp_path),
        "--variants",
        '{"per-file": {"model_source": "per-file"}, "fleet": {"model_source": "fleet"}}',
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "crossval.json").read_text())
    assert set(summary["per_candidate"]) == {"per-file/one-scale", "fleet/one-scale"}
    assert summary["candidates"]["fleet/one-scale"]["replay"] == {"model_source": "fleet"}
    assert summary["files"] == 5
    per_file = summary["per_candidate"]["per-file/one-scale"]["groups"]
    fleet = summary["per_candidate"]["fleet/one-scale"]["groups"]
    assert per_file.keys() == fleet.keys() == {"artificialWithAnomaly", "realAWSCloudwatch", "realTraffic"}


def test_cli_rejects_bad_variants(nab_small):
    res = _cv(nab_small, "--variants", '{"x": {"model_source": "nope"}}')
    assert res.exit_code == 2 and "model_source" in res.output


def test_cli_default_scores_a_100_row_series(tmp_path, nab_small):
    """The default model source (fleet-finetune, chosen by --cv) runs a series too short to train on."""
    import pandas as pd

    short = tmp_path / "data" / "realTraffic" / "speed_7578.csv"
    short.parent.mkdir(parents=True)
    pd.read_csv(nab_small / "data" / "realTraffic" / "speed_7578.csv").iloc[:100].to_csv(short, index=False)
    other = nab_small / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
    res = CliRunner().invoke(
        app,
        [
            "backtest",
            str(short),
            str(other),
            "--labels",
            str(nab_small / "labels" / "combined_windows.json"),
            "--workers",
            "1",
            "--window",
            "16",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 0, res.output
    scored = pd.read_csv(tmp_path / "out" / "tsad" / "realTraffic" / "tsad_speed_7578.csv")
    assert len(scored) == 100 and scored["anomaly_score"].between(0, 1).all()


def test_likelihood_scores_side_by_side_equal_the_scalar_oracle():
    """Series of different lengths scored side by side == each one through the scalar oracle."""
    rng = np.random.default_rng(4)
    cfg = LikelihoodConfig(warmup=30, refractory=10, slow_alpha=0.04)
    series = []
    for k, n in enumerate((700, 250, 700, 40)):
        e = np.abs(rng.normal(0.0, 1.0 + k, n))
        e[n // 2] += 30.0
        e[5] = np.nan  # a NaN error leaves the likelihood state unchanged
        times = 1.7e9 + np.cumsum(rng.integers(300, 900, n)).astype(np.float64)  # uneven steps: dt matters
        v = 10.0 * np.sin(times / 86400.0 * 2 * np.pi) + rng.normal(0.0, 0.5, n)
        series.append(StoredRows(e, v, np.arange(n) >= 20, times))
    got = likelihood_scores(cfg, series)
    for rows, (s, f) in zip(series, got, strict=True):
        ref_s, ref_f = score_series(rows.errors, cfg, values=rows.values, alert=rows.alert, times=rows.times)
        np.testing.assert_allclose(s, ref_s, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(f, ref_f)
    assert any(f.any() for _, f in got)
