"""NAB scoring (Numenta Anomaly Benchmark, Lavin & Ahmad 2015), implemented from the published definitions.

Just over 300 lines: the window table, the scoring rule, the threshold sweep and the profiles are
one definition, kept together.

Pure functions over arrays; no I/O. Interpretation (matches the NAB paper and the behaviour of
NAB's scorer/sweeper):

* **Probation.** The first ``min(floor(0.15*n), 750)`` rows of a file (750 = 0.15 * 5000) are not
  scored: detections there count for nothing and cost nothing.
* **Windows** are inclusive ``[start, end]`` timestamp ranges, snapped to rows (first row >= start,
  last row <= end). ``width = end_idx - start_idx + 1`` rows. A window is *scorable* when at least
  one of its rows lies after probation; only scorable windows count (TP, FN, null, perfect).
* **Scaled sigmoid** ``sigma(y) = 2/(1+exp(5y)) - 1`` for ``y <= 3`` and ``-1`` for ``y > 3``.
* **True positive.** Row ``i`` inside a window has ``y = -(end_idx - i + 1)/width``, so the
  window's first row has ``y = -1`` and its last row ``y = -1/width``. Its score is
  ``A_TP * sigma(y) / sigma(-1)``: a detection on the first row earns exactly ``A_TP``, one on the
  last row little more than 0. Only the best (= earliest) detection of each window counts; later
  detections inside the same window neither earn nor cost anything.
* **False positive.** A detection outside every window scores ``A_FP * sigma(y)`` (negative):
  ``y = (i - prev_end_idx)/(prev_width - 1)`` measured from the end of the *preceding* window, so an
  FP just after a window costs almost nothing and one ``> 3`` window-widths past it costs the full
  ``A_FP``. An FP with no preceding window costs the full ``A_FP``.
* **Miss.** Each scorable window without a detection scores ``-A_FN``.
* **Normalised score** over a set of files: ``100 * (S - S_null) / (S_perfect - S_null)`` with
  ``S_null = -A_FN * W`` (detect nothing) and ``S_perfect = A_TP * W`` (detect every window on its
  first row), ``W`` = number of scorable windows. A file without windows therefore normalises to
  100 when it has no FP and is the sum of FP costs otherwise (only meaningful in the corpus sum).
* **Label-optimised threshold.** "Detected" means ``anomaly_score >= threshold``. The sweep
  evaluates every distinct score (and "nothing detected") over the *whole corpus* at once and keeps
  the highest threshold among those with the maximal summed raw score, per profile, as NAB's
  public scoreboard does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.forecasting.evaluation import WindowPRF
from models.forecasting.evaluation import window_prf as _window_prf

PROBATION_FRACTION = 0.15
PROBATION_CAP = 750  # = 0.15 * 5000, NAB's cap


@dataclass(frozen=True)
class Profile:
    """NAB application profile: weights of true positives, false positives and false negatives."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


def probation_length(n: int) -> int:
    """Rows at the start of a file that are never scored: ``min(floor(0.15 n), 750)``."""
    return int(min(math.floor(PROBATION_FRACTION * n), PROBATION_CAP))


def scaled_sigmoid(y: npt.ArrayLike) -> np.ndarray:
    """``2/(1+exp(5y)) - 1``, and exactly ``-1`` for ``y > 3`` (NAB's cut-off); vectorised."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, val)


MAX_TP = float(scaled_sigmoid(-1.0))  # sigma at a window's first row, ~0.98661


def window_indices(timestamps: np.ndarray, windows: Sequence[Sequence[Any]]) -> list[tuple[int, int]]:
    """Snap ``windows`` (pairs of anything ``np.datetime64`` accepts) to inclusive row ranges.

    ``timestamps (n,)`` must be sorted. Windows that contain no row are dropped. Raises
    ``ValueError`` if windows overlap (NAB's windows never do and the scoring assumes it).
    """
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    out: list[tuple[int, int]] = []
    for start, end in windows:
        lo = int(np.searchsorted(ts, np.datetime64(_ts(start), "ns"), side="left"))
        hi = int(np.searchsorted(ts, np.datetime64(_ts(end), "ns"), side="right")) - 1
        if hi >= lo:
            out.append((lo, hi))
    out.sort()
    for (_, a_hi), (b_lo, _) in itertools.pairwise(out):
        if b_lo <= a_hi:
            raise ValueError(f"overlapping label windows at rows {a_hi} / {b_lo}")
    return out


def _ts(value: Any) -> Any:
    """Accept NAB's 'YYYY-MM-DD HH:MM:SS.ffffff' strings, datetimes and datetime64."""
    if isinstance(value, str):
        return value.replace(" ", "T")
    return value


@dataclass
class PointTable:
    """Per-row unweighted NAB reward of one file, ready for any profile and any threshold.

    ``sigma (n,)``: scaled sigmoid of the row's position (TP rows positive, FP rows <= 0);
    ``window (n,)``: index of the window holding the row, -1 outside every window;
    ``probation``: rows ``< probation`` are ignored; ``n_windows``: scorable windows.
    """

    sigma: np.ndarray
    window: np.ndarray
    probation: int
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.sigma)

    @property
    def scorable(self) -> list[int]:
        """Indices of windows with at least one row after probation."""
        return [k for k, (_, hi) in enumerate(self.windows) if hi >= self.probation]

    @property
    def n_windows(self) -> int:
        return len(self.scorable)

    def weights(self, profile: Profile) -> np.ndarray:
        """Profile-weighted reward of a detection on each row ``(n,)`` (0 during probation)."""
        w = np.where(self.window >= 0, self.sigma * profile.a_tp / MAX_TP, self.sigma * profile.a_fp)
        w[: self.probation] = 0.0
        return w


def point_table(n: int, windows_idx: list[tuple[int, int]], probation: int | None = None) -> PointTable:
    """Build the :class:`PointTable` of a file with ``n`` rows and inclusive row windows."""
    probation = probation_length(n) if probation is None else probation
    sigma = np.empty(n)
    window = np.full(n, -1, dtype=np.int64)
    rows = np.arange(n)
    prev_end: int | None = None
    prev_width: int | None = None
    cursor = 0
    for k, (lo, hi) in enumerate(sorted(windows_idx)):
        _fill_fp(sigma, rows, cursor, lo, prev_end, prev_width)
        width = hi - lo + 1
        sigma[lo : hi + 1] = scaled_sigmoid(-(hi - rows[lo : hi + 1] + 1) / width)
        window[lo : hi + 1] = k
        prev_end, prev_width, cursor = hi, width, hi + 1
    _fill_fp(sigma, rows, cursor, n, prev_end, prev_width)
    return PointTable(sigma, window, probation, sorted(windows_idx))


def _fill_fp(sigma: np.ndarray, rows: np.ndarray, a: int, b: int, prev_end: int | None, prev_width: int | None) -> None:
    """Rows ``[a, b)`` outside any window: -1 before the first window, else the sigmoid of the
    distance from the previous window's end (scaled by its width)."""
    if b <= a:
        return
    if prev_end is None or prev_width is None:
        sigma[a:b] = -1.0
    else:
        sigma[a:b] = scaled_sigmoid(np.abs(rows[a:b] - prev_end) / float(max(prev_width - 1, 1)))


@dataclass
class FileScore:
    """NAB outcome of one file for one profile and one set of detections."""

    raw: float
    n_windows: int
    tp: int  # windows detected
    fn: int  # windows missed
    fp: int  # detections outside windows (after probation)

    def null(self, profile: Profile) -> float:
        return -profile.a_fn * self.n_windows

    def perfect(self, profile: Profile) -> float:
        return profile.a_tp * self.n_windows


def score_detections(detections: npt.ArrayLike, table: PointTable, profile: Profile) -> FileScore:
    """Raw NAB score of boolean ``detections (n,)`` on one file."""
    det = np.asarray(detections, dtype=bool).copy()
    if det.shape != (table.n,):
        raise ValueError(f"detections shape {det.shape} != ({table.n},)")
    det[: table.probation] = False
    w = table.weights(profile)
    fp_mask = det & (table.window < 0)
    raw = float(w[fp_mask].sum())
    tp = fn = 0
    for k in table.scorable:
        hit = det & (table.window == k)
        if hit.any():
            raw += float(w[hit].max())
            tp += 1
        else:
            raw -= profile.a_fn
            fn += 1
    return FileScore(raw, table.n_windows, tp, fn, int(fp_mask.sum()))


def normalised(raw: float, n_windows: int, profile: Profile) -> float:
    """``100 (S - S_null) / (S_perfect - S_null)``; NaN when there is no window at all."""
    null, perfect = -profile.a_fn * n_windows, profile.a_tp * n_windows
    if perfect == null:
        return float("nan")
    return 100.0 * (raw - null) / (perfect - null)


def sweep_threshold(scores: list[np.ndarray], tables: list[PointTable], profile: Profile) -> tuple[float, float]:
    """Corpus-wide threshold maximising the summed raw score; returns ``(threshold, raw_total)``.

    Exact sweep: all scored rows of all files sorted by anomaly score, descending; lowering the
    threshold past a row adds its FP cost, or raises its window's best TP (a window's first
    detection also removes its ``-A_FN``). ``threshold = inf`` means "detect nothing".
    """
    vals, gains, gids = [], [], []
    n_windows = 0
    for s, t in zip(scores, tables):
        s = np.asarray(s, dtype=np.float64)
        keep = np.arange(t.n) >= t.probation
        vals.append(s[keep])
        gains.append(t.weights(profile)[keep])
        win = t.window[keep]
        gids.append(np.where(win >= 0, win + n_windows, -1))
        n_windows += len(t.windows)
    n_scorable = sum(t.n_windows for t in tables)
    base = -profile.a_fn * n_scorable
    if not vals or sum(len(v) for v in vals) == 0:
        return float("inf"), base
    v, g, gid = np.concatenate(vals), np.concatenate(gains), np.concatenate(gids)
    v = np.nan_to_num(v, nan=-np.inf)
    order = np.argsort(-v, kind="stable")
    v, g, gid = v[order], g[order], gid[order]
    delta = np.where(gid < 0, g, 0.0)
    in_win = np.flatnonzero(gid >= 0)
    if len(in_win):
        wg, wid = g[in_win], gid[in_win]
        # running best TP per window in sweep order, via a stable sort by window id
        o = np.argsort(wid, kind="stable")
        wid_s, wg_s = wid[o], wg[o]
        starts = np.r_[True, wid_s[1:] != wid_s[:-1]]
        grp = np.cumsum(starts) - 1
        best = _group_cummax(wg_s, grp)
        prev = np.where(starts, np.nan, np.r_[np.nan, best[:-1]])
        d = np.where(starts, best + profile.a_fn, best - prev)
        back = np.empty_like(d)
        back[o] = d
        delta[in_win] = back
    total = base + np.cumsum(delta)
    last_of_tie = np.r_[v[1:] != v[:-1], True]
    cand_thr = np.r_[np.inf, v[last_of_tie]]
    cand_val = np.r_[base, total[last_of_tie]]
    cand_val = np.where(np.isneginf(cand_thr), -np.inf, cand_val)  # NaN scores never detect
    best_i = int(np.argmax(cand_val))  # first max = highest threshold among ties
    return float(cand_thr[best_i]), float(cand_val[best_i])


def _group_cummax(x: np.ndarray, grp: np.ndarray) -> np.ndarray:
    """Cumulative max of ``x`` restarting at each new value of contiguous group ids ``grp``."""
    offset = grp.astype(np.float64) * (np.abs(x).max() * 2 + 10.0)
    return np.maximum.accumulate(x + offset) - offset


# --------------------------------------------------------------------------- window P/R/F1


def window_prf(flags: npt.ArrayLike, table: PointTable) -> WindowPRF:
    """Window precision/recall counts of boolean ``flags (n,)`` after probation (``models.forecasting.evaluation``)."""
    f = np.asarray(flags, dtype=bool).copy()
    f[: table.probation] = False
    return _window_prf(f, table.window, table.scorable)


# --------------------------------------------------------------------------- corpus report


@dataclass
class CorpusScore:
    """Normalised corpus score of one profile for one way of thresholding."""

    profile: str
    threshold: float | None  # None: the detector's own flags
    raw: float
    normalised: float
    per_file: dict[str, float]  # normalised per file (NaN for files without windows)
    tp: int
    fp: int
    fn: int


def score_corpus(
    files: dict[str, tuple[np.ndarray, np.ndarray, PointTable]], profile: Profile, *, optimise: bool
) -> CorpusScore:
    """Score ``files: name -> (anomaly_score (n,), flags (n,), table)`` for one profile.

    ``optimise=False`` uses the detector's own ``flags``; ``optimise=True`` sweeps one corpus-wide
    threshold on ``anomaly_score`` using the labels (NAB scoreboard procedure).
    """
    names = list(files)
    thr = None
    if optimise:
        thr, _ = sweep_threshold([files[n][0] for n in names], [files[n][2] for n in names], profile)
    raw_total, w_total, tp, fp, fn = 0.0, 0, 0, 0, 0
    per_file: dict[str, float] = {}
    for name in names:
        score, flags, table = files[name]
        det = flags if thr is None else (np.nan_to_num(np.asarray(score, float), nan=-np.inf) >= thr)
        fs = score_detections(det, table, profile)
        raw_total += fs.raw
        w_total += fs.n_windows
        tp, fp, fn = tp + fs.tp, fp + fs.fp, fn + fs.fn
        per_file[name] = normalised(fs.raw, fs.n_windows, profile)
    return CorpusScore(profile.name, thr, raw_total, normalised(raw_total, w_total, profile), per_file, tp, fp, fn)
