"""``tsad backtest --cv``: replay a corpus once per seed, then cross-validate candidates by group.

``run_cv`` replays the corpus per training seed (``replay_for_cv``: with per-file models every file
is fitted on its own probation rows; with a fleet model, the model that scores a group's files is
trained on the other groups' files only), re-scores every replay under every candidate
(``pipeline.backtest.crossval``) and aggregates the leave-one-group-out figures over seeds.
``render_cv`` prints them; ``cv_summary`` is the JSON-able headline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backtest.crossval import (
    Candidate,
    FoldScores,
    complexity,
    evaluate,
    group_of,
    held_out_contrib,
    mean_sd,
    score_candidates,
    select,
)
from pipeline.backtest.replay import ReplayConfig, SeriesResult, nab_key, run_corpus

if TYPE_CHECKING:
    from rich.console import Console


def replay_for_cv(
    files: Sequence[Path], labels: dict, cfg: ReplayConfig, *, workers: int, progress: bool = True
) -> tuple[list[SeriesResult], list[str]]:
    """One seed's replay of ``files`` in which no model has seen the group it scores.

    Per-file models only ever see their own file's probation rows, so one corpus replay does. A
    fleet model (``cfg.model_source`` ``fleet`` / ``fleet-finetune``) is trained once per group
    on the files of all the other groups, and scores that group's files.
    """
    if cfg.model_source == "per-file" or cfg.fleet_registry:  # a registry fleet model is the user's to keep apart
        return run_corpus(list(files), labels, cfg, workers=workers, progress=progress)
    from pipeline.backtest.fleet import train_fleet

    by_group: dict[str, list[Path]] = {}
    for p in files:
        by_group.setdefault(group_of(nab_key(Path(p))), []).append(Path(p))
    results: list[SeriesResult] = []
    errors: list[str] = []
    for g, members in sorted(by_group.items()):
        others = [p for h, ps in by_group.items() if h != g for p in ps]
        fleet = train_fleet(others, cfg, seed=cfg.seed, threads=1)  # 2 threads measured far slower here
        r, e = run_corpus(members, labels, cfg, workers=workers, progress=progress, fleet=fleet)
        results += r
        errors += e
    results.sort(key=lambda r: r.name)
    return results, errors


@dataclass
class CVReport:
    """Leave-one-group-out figures per candidate and seed, and the nested selection per seed."""

    seeds: list[int]
    candidates: list[Candidate]
    per: dict[str, list[FoldScores]] = field(default_factory=dict)  # candidate -> one per seed
    nested: list[FoldScores] = field(default_factory=list)
    contrib: list[dict[str, dict[str, float]]] = field(default_factory=list)  # per seed: cand -> group -> points
    errors: list[str] = field(default_factory=list)
    files: int = 0
    rule: str = "one-se"
    config: dict = field(default_factory=dict)

    def best(self) -> str:
        """The pick of ``rule`` (``crossval.select``) on the held-out contributions averaged over seeds."""
        names = [c.name for c in self.candidates]
        groups = sorted(self.contrib[0][names[0]])
        mean = {c: {g: float(np.mean([s[c][g] for s in self.contrib])) for g in groups} for c in names}
        return select(mean, {c.name: complexity(c.post) for c in self.candidates}, self.rule)


def with_variants(candidates: Sequence[Candidate], variants: dict[str, dict]) -> list[Candidate]:
    """Every candidate under every replay variant (``name -> ReplayConfig overrides``), named ``variant/candidate``."""
    if not variants:
        return list(candidates)
    return [
        Candidate(f"{v}/{c.name}", c.post, {**c.replay, **over}) for v, over in variants.items() for c in candidates
    ]


def run_cv(
    files: Sequence[Path],
    labels: dict,
    cfg: ReplayConfig,
    seeds: Sequence[int],
    candidates: Sequence[Candidate],
    *,
    workers: int = 2,
    progress: bool = True,
    rule: str = "one-se",
) -> CVReport:
    """Replay once per seed and replay variant, re-score under each candidate, cross-validate by group.

    Candidates that share ``replay`` overrides share one replay per seed. Only files every replay
    scored are compared (a file one variant cannot run is reported in ``errors`` and left out).
    """
    rep = CVReport(list(seeds), list(candidates), {c.name: [] for c in candidates}, rule=rule, config=cfg.to_dict())
    variants: dict[str, list[Candidate]] = {}
    for c in candidates:
        variants.setdefault(json.dumps(c.replay, sort_keys=True), []).append(c)
    for seed in seeds:
        scored: dict = {}
        for key, cands in variants.items():
            vcfg = replace(cfg, seed=seed, **json.loads(key))
            results, errors = replay_for_cv(files, labels, vcfg, workers=workers, progress=progress)
            rep.errors += [f"seed {seed} {key}: {e}" for e in errors]
            scored.update(score_candidates(results, cands, workers=workers, warmup=vcfg.warmup))
        common = set.intersection(*(set(sc.files) for sc in scored.values()))
        if not common:
            continue
        for sc in scored.values():
            sc.files = {n: sc.files[n] for n in sorted(common)}
        rep.files = len(common)
        per, nested = evaluate(scored, rule=rule)
        for cname, fs in per.items():
            rep.per[cname].append(fs)
        rep.nested.append(nested)
        rep.contrib.append(held_out_contrib(per, scored))
    return rep


def _ms(xs: Sequence[float]) -> str:
    m, s = mean_sd(xs)
    return f"{m:.1f} ± {s:.1f}"


def cv_summary(rep: CVReport) -> dict:
    """Headline figures (means and spreads over seeds) as a plain dict."""

    def block(runs: list[FoldScores]) -> dict:
        groups = sorted(runs[0].held_out) if runs else []
        return {
            "pooled_held_out": mean_sd([f.pooled for f in runs]),
            "pooled_held_out_own_threshold": mean_sd([f.pooled_own for f in runs]),
            "group_mean_held_out": mean_sd([f.group_mean for f in runs]),
            "in_sample": mean_sd([f.in_sample for f in runs]),
            "groups": {g: mean_sd([f.held_out[g] for f in runs]) for g in groups},
        }

    out = {
        "seeds": rep.seeds,
        "files": rep.files,
        "rule": rep.rule,
        "candidates": {c.name: {"post": c.post, "replay": c.replay} for c in rep.candidates},
        "per_candidate": {c: block(runs) for c, runs in rep.per.items() if runs},
        "nested": {**block(rep.nested), "chosen": [f.chosen for f in rep.nested]} if rep.nested else {},
        "best": rep.best() if rep.nested else None,
    }
    return out


def render_cv(rep: CVReport, console: Console | None = None) -> None:
    """Print per-candidate held-out scores (mean ± sd over seeds), the nested selection and the pick."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not rep.nested:
        console.print("[red]no replay succeeded[/red]")
        return
    groups = sorted(rep.nested[0].held_out)
    t = Table(
        title=f"Leave-one-group-out NAB score, standard profile ({rep.files} files, seeds {rep.seeds}; "
        f"mean ± sd over seeds)"
    )
    for col in ("candidate", "held-out (pooled)", "own thr.", "group mean", "in-sample", *groups):
        t.add_column(col, justify="left" if col == "candidate" else "right")

    def row(label: str, runs: list[FoldScores]) -> None:
        t.add_row(
            label,
            _ms([f.pooled for f in runs]),
            _ms([f.pooled_own for f in runs]),
            _ms([f.group_mean for f in runs]),
            _ms([f.in_sample for f in runs]),
            *(_ms([f.held_out[g] for f in runs]) for g in groups),
        )

    for c in rep.candidates:
        row(c.name, rep.per[c.name])
    row("nested choice", rep.nested)
    console.print(t)
    for seed, f in zip(rep.seeds, rep.nested):
        console.print(f"seed {seed}: chosen per held-out group: " + ", ".join(f"{g}={c}" for g, c in f.chosen.items()))
    best = rep.best()
    console.print(
        f"cross-validated choice ({rep.rule}): [bold]{best}[/bold] "
        f"{dict(next(c.post for c in rep.candidates if c.name == best))}"
    )
