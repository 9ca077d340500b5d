"""Leave-one-group-out cross-validation of detector choices: scores on data the choice never saw.

Long (about 430 lines) because candidates, their re-scoring, the per-fold figures and the
selection rule are one procedure; ``cv_run`` runs it and renders the report.

A backtest on one corpus rewards whatever was tuned on that corpus. This module measures the
*procedure* instead: every choice made from labelled data (a candidate post-processing config,
the corpus-wide threshold) is made on all groups but one and scored on the held-out group.

* **Groups** are the corpus's top-level folders (NAB: ``artificialWithAnomaly``, ``realTweets``,
  ...): the first component of a result's NAB key ``<group>/<file>.csv``. A group without any
  scorable window cannot be scored alone (NAB's normalisation divides by its windows); it stays
  in every training fold and is not a held-out fold.
* **Candidates** are named ``LikelihoodConfig`` overrides. The forecast errors of one replay do not
  depend on them (the detector's state update uses the error z-score, not the likelihood), so a
  candidate is applied by re-scoring the stored errors, values and times with the live
  ``models.detection.thresholds.error_likelihood.ErrorLikelihood`` (:func:`likelihood_scores`: the
  files of one config side by side, one ``step_unique`` per row index; checked equal to the live
  scores for the default config by :func:`rescore` and its test).
* **Per candidate** (``candidate_table``): the threshold is chosen on the training groups (NAB's
  label-optimised sweep), applied to the held-out group; also the detector's own threshold. The
  pooled held-out score sums the held-out raw scores of all folds (one NAB score over the corpus);
  the in-sample score sweeps the threshold on everything.
* **Nested** (``nested_selection``): the candidate *and* the threshold are chosen on the training
  groups of each fold, so the figure includes the cost of choosing.

Seeds: each training seed is one replay; figures are reported as mean and spread over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.detection.thresholds.error_likelihood import ErrorLikelihood, LikelihoodConfig
from pipeline.backtest.nab_scoring import (
    PROFILES,
    PointTable,
    Profile,
    normalised,
    point_table,
    score_detections,
    sweep_threshold,
)

if TYPE_CHECKING:
    from pipeline.backtest.replay import SeriesResult


@dataclass(frozen=True)
class Candidate:
    """A named set of ``LikelihoodConfig`` overrides (``post``), listed simplest first."""

    name: str
    post: dict = field(default_factory=dict)
    replay: dict = field(default_factory=dict)  # ReplayConfig overrides (model source, size, ...): its own replay


# Each step of the likelihood that was added on the development corpus is a switch here, written
# out both ways so the grid does not depend on the current defaults; the simplest candidate (all
# added steps off) is first, so ties go to fewer steps.
_STEPS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "slow": ({"slow_alpha": 0.04, "short_weight": 0.5}, {"slow_alpha": None}),
    "tod": ({"seasonal_bins": 24}, {"seasonal_bins": None}),
    "rep": ({"repeat_bins": 24}, {"repeat_bins": None}),
}


def switch_grid() -> list[Candidate]:
    """All on/off combinations of the slow time scale, the time-of-day context and daily repeats."""
    out = []
    for mask in range(8):
        on = [k for i, k in enumerate(_STEPS) if mask >> i & 1]
        post: dict = {}
        for k, (when_on, when_off) in _STEPS.items():
            post.update(when_on if k in on else when_off)
        out.append(Candidate("+".join(on) or "base", post))
    out.sort(key=lambda c: (complexity(c.post), c.name))  # fewest knobs first
    return out


def candidates_from_json(text: str, base: dict | None = None) -> list[Candidate]:
    """``{"name": {overrides}, ...}`` (in order) -> candidates, each on top of ``base``; empty text:
    :func:`switch_grid`. Every candidate is validated as a ``LikelihoodConfig`` (ValueError if bad)."""
    import json

    base = dict(base or {})
    if text.strip():
        spec = json.loads(text)
        if not isinstance(spec, dict) or not spec or not all(isinstance(v, dict) for v in spec.values()):
            raise ValueError("--candidates must be a JSON object of {name: {LikelihoodConfig overrides}}")
        cands = [Candidate(str(k), {**base, **v}) for k, v in spec.items()]
    else:
        cands = [Candidate(c.name, {**base, **c.post}) for c in switch_grid()]
    for c in cands:
        try:
            LikelihoodConfig(**c.post)
        except TypeError as exc:
            raise ValueError(f"candidate {c.name!r}: {exc}") from exc
    return cands


def group_of(name: str) -> str:
    """``realTweets/Twitter_volume_AAPL.csv`` -> ``realTweets`` (the corpus group of a NAB key)."""
    return name.split("/", 1)[0] if "/" in name else ""


@dataclass(frozen=True)
class StoredRows:
    """One series' rows as the likelihood saw them, all ``(n,)``: raw error, value, may-alert, epoch s."""

    errors: np.ndarray
    values: np.ndarray
    alert: np.ndarray
    times: np.ndarray


def likelihood_scores(cfg: LikelihoodConfig, series: Sequence[StoredRows]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(scores (n,), flags (n,))`` of each series under one ``ErrorLikelihood(cfg)``, the series side by
    side (slot k = k-th longest series): row ``t`` of every series still running is one ``step_unique``
    call, so the arithmetic is the live detector's. Each row's ``dt`` is the step from the row before."""
    order = sorted(range(len(series)), key=lambda k: -len(series[k].errors))
    lengths = np.array([len(series[k].errors) for k in order], dtype=np.int64)
    steps = int(lengths[0]) if len(lengths) else 0
    cols = {name: np.full((steps, len(order)), np.nan) for name in ("errors", "values", "times", "dt")}
    alert = np.zeros((steps, len(order)), dtype=bool)  # (time, series): row t contiguous
    for slot, k in enumerate(order):
        rows, n = series[k], int(lengths[slot])
        cols["errors"][:n, slot], cols["values"][:n, slot], cols["times"][:n, slot] = (
            rows.errors,
            rows.values,
            rows.times,
        )
        cols["dt"][:n, slot] = np.diff(rows.times, prepend=-np.inf)
        alert[:n, slot] = rows.alert
    scores, flags = np.zeros((steps, len(order))), np.zeros((steps, len(order)), dtype=bool)
    lik = ErrorLikelihood(cfg)
    lik.ensure(len(order))
    slots = np.arange(len(order), dtype=np.int64)
    running = np.searchsorted(-lengths, -np.arange(steps), side="left")  # series with more than t rows
    for t in range(steps):
        m = int(running[t])
        e, v, ts, dt = (cols[c][t, :m] for c in ("errors", "values", "times", "dt"))
        scores[t, :m], flags[t, :m] = lik.step_unique(slots[:m], e, v, alert[t, :m], ts, dt)
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0, dtype=bool))] * len(series)
    for slot, k in enumerate(order):
        n = int(lengths[slot])
        out[k] = (scores[:n, slot].copy(), flags[:n, slot].copy())
    return out


def _config(result: SeriesResult, post: dict[str, Any], warmup: str) -> LikelihoodConfig:
    """``LikelihoodConfig(**post)``; with ``warmup="probation"`` its warm-up capped at the file's probation."""
    if warmup == "probation":
        post = {**post, "warmup": min(int(post.get("warmup", LikelihoodConfig.warmup)), result.probation)}
    return LikelihoodConfig(**post)


def _stored_rows(result: SeriesResult) -> StoredRows:
    """The rows of ``result`` that reached the likelihood (refused rows never did)."""
    kept = np.isfinite(result.detector_score)
    times = result.timestamps.astype("datetime64[ns]").astype(np.int64)[kept] / 1e9
    alert = (np.arange(len(result.values)) >= result.probation)[kept]
    return StoredRows(result.error[kept], result.values[kept], alert, times)


def _as_reported(result: SeriesResult, s: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and flags of the kept rows -> ``(n,)`` as the backtest reports them (0 in probation / refused)."""
    n = len(result.values)
    kept = np.isfinite(result.detector_score)
    score, flag = np.zeros(n), np.zeros(n, dtype=bool)
    score[kept], flag[kept] = s, f
    score[: result.probation] = 0.0
    return score, flag


def rescore_many(
    results: Sequence[SeriesResult], post: dict[str, Any], warmup: str = "default"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`rescore` of every result, those with the same config scored side by side."""
    cfgs = [_config(r, post, warmup) for r in results]
    groups: dict[str, list[int]] = {}
    for k, cfg in enumerate(cfgs):
        groups.setdefault(repr(cfg), []).append(k)
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0, dtype=bool))] * len(results)
    for ks in groups.values():
        scored = likelihood_scores(cfgs[ks[0]], [_stored_rows(results[k]) for k in ks])
        for k, (s, f) in zip(ks, scored, strict=True):
            out[k] = _as_reported(results[k], s, f)
    return out


def rescore(result: SeriesResult, post: dict[str, Any], warmup: str = "default") -> tuple[np.ndarray, np.ndarray]:
    """Re-score one ``SeriesResult``'s stored errors with ``LikelihoodConfig(**post)``.

    ``warmup``: the replay's ``ReplayConfig.warmup``; with ``"probation"`` the likelihood warm-up is
    capped at the file's probation length, as the replay did.

    Returns ``(anomaly_score (n,), flags (n,))`` as the backtest reports them: 0 during probation
    and on rows the detector refused (duplicate / out-of-order timestamps, left out of the stream).
    """
    return rescore_many([result], post, warmup)[0]


def _rescore_job(args: tuple[Sequence[SeriesResult], dict[str, Any], str]) -> list[tuple[np.ndarray, np.ndarray]]:
    return rescore_many(*args)


@dataclass
class Scored:
    """One seed's results under one candidate: per file ``(score (n,), flags (n,), table)``."""

    files: dict[str, tuple[np.ndarray, np.ndarray, PointTable]]  # (Files)
    post: dict | None = None  # the candidate's LikelihoodConfig overrides (None: not a likelihood candidate)


def score_candidates(
    results: Sequence, candidates: Sequence[Candidate], *, workers: int = 1, warmup: str = "default"
) -> dict[str, Scored]:
    """Re-score every result under every candidate (``workers`` processes); ``warmup`` as in :func:`rescore`."""
    tables = {r.name: point_table(len(r.values), r.windows, r.probation) for r in results}
    jobs = [(results, c.post, warmup) for c in candidates]  # one job per candidate: its files side by side
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outs = list(pool.map(_rescore_job, jobs))
    else:
        outs = [_rescore_job(j) for j in jobs]
    by_cand: dict[str, Scored] = {c.name: Scored({}, c.post) for c in candidates}
    for c, scored in zip(candidates, outs, strict=True):
        for r, (s, f) in zip(results, scored, strict=True):
            by_cand[c.name].files[r.name] = (s, f, tables[r.name])
    return by_cand


def _raw(files: dict, names: list[str], profile: Profile, thr: float | None) -> tuple[float, int]:
    """Summed raw NAB score and scorable windows of ``names``; ``thr=None``: the detector's flags."""
    raw, wins = 0.0, 0
    for n in names:
        score, flags, table = files[n]
        det = flags if thr is None else (np.nan_to_num(score, nan=-np.inf) >= thr)
        fs = score_detections(det, table, profile)
        raw, wins = raw + fs.raw, wins + fs.n_windows
    return raw, wins


def _sweep(files: dict, names: list[str], profile: Profile) -> float:
    thr, _ = sweep_threshold([files[n][0] for n in names], [files[n][2] for n in names], profile)
    return thr


@dataclass
class FoldScores:
    """Held-out figures of one candidate (or of the nested selection) on one seed."""

    held_out: dict[str, float]  # group -> normalised score, threshold chosen on the other groups
    held_out_own: dict[str, float]  # group -> normalised score with the detector's own flags
    pooled: float  # one NAB score over all held-out folds together (optimised thr)
    pooled_own: float  # the same with the detector's own flags
    in_sample: float  # threshold swept on all files
    chosen: dict[str, str] = field(default_factory=dict)  # nested: group -> chosen candidate
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def group_mean(self) -> float:
        return float(np.mean(list(self.held_out.values()))) if self.held_out else math.nan


def folds(names: Sequence[str], tables: dict[str, PointTable]) -> dict[str, list[str]]:
    """Group -> its files, for groups with at least one scorable window (the held-out folds)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(group_of(n), []).append(n)
    return {g: ns for g, ns in sorted(groups.items()) if sum(tables[n].n_windows for n in ns) > 0}


# Parameters each added step brings (what the one-standard-error rule counts as complexity).
STEP_KNOBS = {
    "slow_alpha": ("slow_alpha", "short_weight"),
    "seasonal_bins": ("seasonal_bins", "seasonal_days"),
    "repeat_bins": ("repeat_bins",),
}
RULES = ("one-se", "max")


def complexity(post: dict) -> int:
    """Knobs of the steps a candidate has switched on (0: none of the added steps)."""
    cfg = LikelihoodConfig(**post)
    return sum(len(knobs) for step, knobs in STEP_KNOBS.items() if getattr(cfg, step) is not None)


def select(contrib: dict[str, dict[str, float]], complexity_of: dict[str, int], rule: str = "one-se") -> str:
    """Pick a candidate from its per-group contributions to a pooled score (``cand -> group -> points``).

    ``"max"``: the highest total. ``"one-se"`` (Breiman's one-standard-error rule): every candidate
    whose total is within one standard error of the best one's, the error taken over groups of the
    paired differences (``sqrt(G) * sd``), is eligible; the one with the fewest knobs wins, then the
    higher total, then the earlier listed. Groups are the units that vary between corpora, so a
    step must beat the simpler detector by more than the group-to-group noise to be kept.
    """
    names = list(contrib)
    total = {c: sum(contrib[c].values()) for c in names}
    best = max(names, key=lambda c: (round(total[c], 9), -names.index(c)))
    if rule == "max":
        return best
    groups = sorted(contrib[best])
    eligible = []
    for c in names:
        d = np.array([contrib[c][g] - contrib[best][g] for g in groups])
        se = math.sqrt(len(d)) * float(d.std(ddof=1)) if len(d) > 1 else 0.0
        if total[c] >= total[best] - se - 1e-9:
            eligible.append(c)
    return min(eligible, key=lambda c: (complexity_of[c], -round(total[c], 9), names.index(c)))


def _contrib(f: dict, by_group: dict[str, list[str]], profile: Profile, thr: float) -> dict[str, float]:
    """Each group's share of a pooled normalised score at threshold ``thr`` (points; they add up to
    the pooled score minus its constant)."""
    raws = {g: _raw(f, ns, profile, thr) for g, ns in by_group.items()}
    wins = sum(w for _, w in raws.values())
    scale = 100.0 / ((profile.a_tp + profile.a_fn) * max(wins, 1))
    return {g: raw * scale for g, (raw, _) in raws.items()}


def _groups(names: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(group_of(n), []).append(n)
    return out


Files = dict[str, tuple[np.ndarray, np.ndarray, PointTable]]  # file -> (score (n,), flags (n,), table)


@dataclass
class _HeldOut:
    """Held-out figures over the folds: per group (threshold from the other groups, and the detector's
    own flags) and pooled (raw scores and windows summed over the folds, in fold order)."""

    held: dict[str, float] = field(default_factory=dict)
    held_own: dict[str, float] = field(default_factory=dict)
    raw: float = 0.0
    raw_own: float = 0.0
    wins: int = 0

    def add(self, g: str, f: Files, test: list[str], profile: Profile, thr: float) -> None:
        raw, wins = _raw(f, test, profile, thr)
        raw_o, _ = _raw(f, test, profile, None)
        self.held[g], self.held_own[g] = normalised(raw, wins, profile), normalised(raw_o, wins, profile)
        self.raw, self.raw_own, self.wins = self.raw + raw, self.raw_own + raw_o, self.wins + wins

    def scores(self, profile: Profile, in_sample: float, **extra: Any) -> FoldScores:
        pooled = normalised(self.raw, self.wins, profile)
        pooled_own = normalised(self.raw_own, self.wins, profile)
        return FoldScores(self.held, self.held_own, pooled, pooled_own, in_sample, **extra)


def _candidate_scores(
    f: Files,
    names: list[str],
    fold_of: dict[str, list[str]],
    profile: Profile,
    train_contrib: dict[str, dict[str, float]],
) -> FoldScores:
    """One candidate's held-out figures (threshold swept on each fold's training groups); fills
    ``train_contrib`` (fold -> training group -> points) for the nested selection."""
    out, thrs = _HeldOut(), {}
    for g, test in fold_of.items():
        train = [n for n in names if n not in set(test)]
        thr = _sweep(f, train, profile)
        train_contrib[g] = _contrib(f, _groups(train), profile, thr)
        out.add(g, f, test, profile, thr)
        thrs[g] = thr
    thr_all = _sweep(f, names, profile)
    ins_raw, ins_w = _raw(f, names, profile, thr_all)
    return out.scores(profile, normalised(ins_raw, ins_w, profile), thresholds=thrs)


def evaluate(
    by_cand: dict[str, Scored], profile: Profile = PROFILES["standard"], rule: str = "one-se"
) -> tuple[dict[str, FoldScores], FoldScores]:
    """Leave-one-group-out figures for every candidate, and for the nested selection.

    Per candidate: threshold chosen on the training groups. Nested: candidate (by ``rule``, see
    :func:`select`) and threshold chosen on the training groups only.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    first = next(iter(by_cand.values())).files
    names = sorted(first)
    tables = {n: first[n][2] for n in names}
    fold_of = folds(names, tables)
    cx = {c: complexity(sc.post) if sc.post is not None else 0 for c, sc in by_cand.items()}
    per: dict[str, FoldScores] = {}
    train_contrib: dict[str, dict[str, dict[str, float]]] = {g: {} for g in fold_of}  # fold -> cand -> group
    for cname, sc in by_cand.items():
        contrib: dict[str, dict[str, float]] = {}
        per[cname] = _candidate_scores(sc.files, names, fold_of, profile, contrib)
        for g in fold_of:
            train_contrib[g][cname] = contrib[g]
    nested, chosen, thrs = _HeldOut(), {}, {}
    for g, test in fold_of.items():
        pick = select(train_contrib[g], cx, rule)
        chosen[g], thrs[g] = pick, per[pick].thresholds[g]
        nested.add(g, by_cand[pick].files, test, profile, thrs[g])
    in_best = max(by_cand, key=lambda c: (round(per[c].in_sample, 9), -list(by_cand).index(c)))
    return per, nested.scores(profile, per[in_best].in_sample, chosen=chosen, thresholds=thrs)


def held_out_contrib(
    per: dict[str, FoldScores], by_cand: dict[str, Scored], profile: Profile = PROFILES["standard"]
) -> dict[str, dict[str, float]]:
    """Per candidate, each held-out group's points in the pooled held-out score (threshold from the other groups)."""
    first = next(iter(by_cand.values())).files
    names = sorted(first)
    fold_of = folds(names, {n: first[n][2] for n in names})
    wins = sum(first[n][2].n_windows for ns in fold_of.values() for n in ns)
    scale = 100.0 / ((profile.a_tp + profile.a_fn) * max(wins, 1))
    return {
        c: {g: _raw(by_cand[c].files, test, profile, per[c].thresholds[g])[0] * scale for g, test in fold_of.items()}
        for c in per
    }


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
