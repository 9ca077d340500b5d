"""NAB scorer on hand-computed cases (early / late / missed detections, FP after a window, probation),
plus the corpus threshold sweep against a brute-force search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.backtest.nab_scoring import (
    PROFILES,
    WindowPRF,
    normalised,
    point_table,
    probation_length,
    scaled_sigmoid,
    score_corpus,
    score_detections,
    sweep_threshold,
    window_indices,
    window_prf,
)

STD = PROFILES["standard"]
LOW_FP = PROFILES["reward_low_FP_rate"]
LOW_FN = PROFILES["reward_low_FN_rate"]


def sig(y: float) -> float:  # written out independently of the module
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


# n=40 rows, probation floor(0.15*40)=6, one window at rows 10..14 (width 5)
N, WIN = 40, [(10, 14)]


def det(*rows: int, n: int = N) -> np.ndarray:
    d = np.zeros(n, dtype=bool)
    d[list(rows)] = True
    return d


def test_probation_length():
    assert probation_length(40) == 6
    assert probation_length(4032) == 604
    assert probation_length(5000) == 750
    assert probation_length(22695) == 750


def test_scaled_sigmoid_values():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.9866142981514305)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(3.0) == pytest.approx(sig(3.0))
    assert scaled_sigmoid(3.0001) == -1.0


def test_detection_on_first_row_of_window_earns_exactly_a_tp():
    t = point_table(N, WIN)
    s = score_detections(det(10), t, STD)
    assert s.raw == pytest.approx(1.0)
    assert (s.tp, s.fn, s.fp) == (1, 0, 0)
    assert normalised(s.raw, 1, STD) == pytest.approx(100.0)


def test_late_detection_earns_less_than_early():
    t = point_table(N, WIN)
    # row 12: y = -(14-12+1)/5 = -0.6 ; row 14 (last): y = -1/5
    assert score_detections(det(12), t, STD).raw == pytest.approx(sig(-0.6) / sig(-1.0))
    assert score_detections(det(12), t, STD).raw == pytest.approx(0.917429, abs=1e-6)
    assert score_detections(det(14), t, STD).raw == pytest.approx(0.468387, abs=1e-6)


def test_only_earliest_detection_in_a_window_counts():
    t = point_table(N, WIN)
    assert score_detections(det(11, 12, 13, 14), t, STD).raw == pytest.approx(sig(-0.8) / sig(-1.0))


def test_missed_window_costs_a_fn():
    t = point_table(N, WIN)
    assert score_detections(det(), t, STD).raw == pytest.approx(-1.0)
    assert score_detections(det(), t, LOW_FN).raw == pytest.approx(-2.0)
    assert normalised(-1.0, 1, STD) == pytest.approx(0.0)


def test_fp_just_after_window_costs_little_far_after_costs_full():
    t = point_table(N, WIN)
    # row 16: y = |16-14|/(5-1) = 0.5 -> 0.11 * sig(0.5) = -0.093311
    assert score_detections(det(10, 16), t, STD).raw == pytest.approx(1.0 + 0.11 * sig(0.5))
    assert 0.11 * sig(0.5) == pytest.approx(-0.093311, abs=1e-6)
    # row 15: y = 0.25, cheaper than row 16
    assert score_detections(det(10, 15), t, STD).raw > score_detections(det(10, 16), t, STD).raw
    # row 27: y = 13/4 = 3.25 > 3 -> full cost
    assert score_detections(det(10, 27), t, STD).raw == pytest.approx(1.0 - 0.11)
    assert score_detections(det(10, 27), t, LOW_FP).raw == pytest.approx(1.0 - 0.22)


def test_fp_before_any_window_costs_full_a_fp_and_each_fp_counts():
    t = point_table(N, WIN)
    s = score_detections(det(7, 8, 10), t, STD)
    assert s.raw == pytest.approx(1.0 - 2 * 0.11)
    assert s.fp == 2


def test_probation_rows_are_ignored():
    t = point_table(N, WIN)
    assert score_detections(det(0, 3, 5, 10), t, STD).raw == pytest.approx(1.0)
    assert score_detections(det(6, 10), t, STD).raw == pytest.approx(1.0 - 0.11)


def test_window_entirely_in_probation_is_not_counted():
    t = point_table(N, [(1, 3), (20, 24)])
    assert t.n_windows == 1
    s = score_detections(det(), t, STD)
    assert s.raw == pytest.approx(-1.0) and s.fn == 1
    # FP right after the probationary window is still weighted by its distance to it: y=(7-3)/2 = 2
    assert score_detections(det(7, 20), t, STD).raw == pytest.approx(1.0 + 0.11 * sig(2.0))


def test_fp_is_measured_from_the_preceding_window_only():
    t = point_table(60, [(10, 14), (30, 39)])
    # row 29 is before window 2 but after window 1: y = (29-14)/4 = 3.75 -> -1
    assert score_detections(det(10, 29, 30, n=60), t, STD).raw == pytest.approx(2 - 0.11)
    # row 41 after window 2 (width 10): y = 2/9
    assert score_detections(det(10, 30, 41, n=60), t, STD).raw == pytest.approx(2 + 0.11 * sig(2 / 9))


def test_hand_computed_file_normalised():
    t = point_table(N, WIN)
    raw = score_detections(det(12, 16), t, STD).raw
    assert raw == pytest.approx(0.917429 - 0.093311, abs=1e-5)
    assert normalised(raw, 1, STD) == pytest.approx(100 * (raw + 1) / 2)


def test_window_indices_snap_to_rows_and_reject_overlap():
    ts = np.arange("2020-01-01T00:00", "2020-01-01T01:00", 5, dtype="datetime64[m]")
    w = window_indices(ts, [("2020-01-01 00:07:00.000000", "2020-01-01 00:20:00.000000")])
    assert w == [(2, 4)]
    assert window_indices(ts, [("2021-01-01", "2021-01-02")]) == []
    with pytest.raises(ValueError):
        window_indices(ts, [("2020-01-01 00:00", "2020-01-01 00:20"), ("2020-01-01 00:15", "2020-01-01 00:30")])


def test_window_prf_counts_runs():
    t = point_table(N, WIN)
    f = det(3, 7, 8, 12, 13, 14, 15, 20, 30)  # 3: probation; 7-8 one FP run; 12-15 touches; 20, 30 FP
    c = window_prf(f, t)
    assert (c.caught, c.missed, c.fp_runs) == (1, 0, 3)
    assert c.precision == pytest.approx(0.25) and c.recall == 1.0
    assert c.f1 == pytest.approx(0.4)
    total = c + WindowPRF(0, 1, 0)
    assert total.recall == pytest.approx(0.5)


def _brute_force(scores, tables, profile):
    thr_cands = sorted({float(x) for s, t in zip(scores, tables) for x in s[t.probation :]}, reverse=True)
    best = (math.inf, sum(score_detections(np.zeros(t.n, bool), t, profile).raw for t in tables))
    for thr in thr_cands:
        tot = sum(score_detections(s >= thr, t, profile).raw for s, t in zip(scores, tables))
        if tot > best[1] + 1e-12:
            best = (thr, tot)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_sweep_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores, tables = [], []
    for _ in range(3):
        n = int(rng.integers(30, 80))
        lo = int(rng.integers(5, n - 10))
        wins = [(lo, lo + int(rng.integers(1, 8)))] if rng.random() < 0.8 else []
        s = np.round(rng.random(n), 1)  # ties on purpose
        for a, b in wins:
            s[a : b + 1] += rng.random() * 0.5
        scores.append(s)
        tables.append(point_table(n, wins))
    for profile in PROFILES.values():
        thr, raw = sweep_threshold(scores, tables, profile)
        bthr, braw = _brute_force(scores, tables, profile)
        assert raw == pytest.approx(braw)
        assert thr == pytest.approx(bthr)


def test_score_corpus_own_flags_vs_optimised():
    t = point_table(N, WIN)
    score = np.zeros(N)
    score[12] = 0.9
    score[20] = 0.5
    flags = score >= 0.4  # own threshold catches the window late and one FP
    files = {"a.csv": (score, flags, t)}
    own = score_corpus(files, STD, optimise=False)
    opt = score_corpus(files, STD, optimise=True)
    assert own.threshold is None and opt.threshold == pytest.approx(0.9)
    assert opt.raw == pytest.approx(sig(-0.6) / sig(-1.0))
    assert own.raw == pytest.approx(opt.raw + 0.11 * sig(6 / 4))
    assert opt.normalised > own.normalised
    assert (opt.tp, opt.fp, opt.fn) == (1, 0, 0)
