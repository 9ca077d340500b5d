"""Step 3 of a retraining run, per model: promote the candidate when it beats the champion (atomic
registry pointer), never replacing a champion trained on newer data."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from models.core.settings import Settings
from pipeline.retrain.contracts import Candidate, Decision, Plan
from pipeline.retrain.evaluate import evaluate, label_windows, load_champion
from pipeline.retrain.series import job_series

if TYPE_CHECKING:
    from models.registry import ModelRegistry

log = logging.getLogger(__name__)


def decide(metrics: dict[str, Any], min_improvement: float) -> tuple[bool, str]:
    """Is the candidate (its registered held-out figures) better than the champion it was compared to?"""
    cand, champ = metrics.get("holdout_nmae"), metrics.get("champion_holdout_nmae")
    if metrics.get("champion_version") is None:
        return True, metrics.get("champion_note") or "no champion"
    if cand is None:
        return False, "candidate has no held-out error"
    if champ is not None and not cand < champ * (1.0 - min_improvement):
        return False, f"held-out nMAE {cand:.4f} not better than champion's {champ:.4f}"
    f1, champ_f1 = metrics.get("holdout_f1"), metrics.get("champion_holdout_f1")
    if f1 is not None and champ_f1 is not None and f1 < champ_f1:
        return False, f"detection F1 {f1:.3f} below champion's {champ_f1:.3f}"
    return True, f"held-out nMAE {cand:.4f} < champion's {champ if champ is not None else float('nan'):.4f}"


def _newer_champion(registry: ModelRegistry, name: str, current: int, the_plan: Plan) -> str | None:
    """Why not to replace champion ``current``: it was trained on data newer than the plan's (else None)."""
    champ_end = (registry.meta(name, current).get("data_range") or [None, None])[1]
    if champ_end is not None and champ_end > the_plan.end:
        return f"champion v{current} was trained on newer data (to {champ_end})"
    return None


def _reevaluate_champion(
    settings: Settings,
    registry: ModelRegistry,
    the_plan: Plan,
    candidate: Candidate,
    current: int | None,
    metrics: dict[str, Any],
) -> float | None:
    """The champion changed (to ``current``) since the candidate was evaluated: put the new one's
    held-out figures into ``metrics`` (in place); returns its nMAE (None when it cannot be loaded)."""
    champion, why_not = load_champion(registry, candidate.name)
    if champion is None:
        metrics.update(champion_version=None, champion_note=why_not)
        return None
    data = job_series(settings, candidate.job, the_plan.start, the_plan.end, the_plan.series)
    labels = label_windows(settings.retrain.labels) if settings.retrain.labels else None
    figures = evaluate(champion, data, the_plan.cut, labels)
    metrics.update(champion_version=current, champion_holdout_nmae=figures["nmae"], champion_holdout_f1=figures["f1"])
    nmae: float | None = figures["nmae"]
    return nmae


def promote_if_better(settings: Settings, the_plan: Plan, candidate: Candidate) -> Decision:
    """Promote the candidate when it beats the champion it was evaluated against (atomic, via the registry).

    If the champion changed since the evaluation (another run promoted meanwhile), the candidate is
    re-evaluated against the new champion first.
    """
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    name, version = candidate.name, candidate.version
    metrics = dict(registry.meta(name, version).get("metrics", {}))
    current = registry.champion(name)
    decision = Decision(
        name, version, current, False, "", metrics.get("holdout_nmae"), metrics.get("champion_holdout_nmae")
    )
    if current == version:
        decision.reason = "already champion"
        return decision
    if current is not None and current > version:
        newer = _newer_champion(registry, name, current, the_plan)
        if newer is not None:
            decision.reason = newer
            return decision
    if current != metrics.get("champion_version"):
        nmae = _reevaluate_champion(settings, registry, the_plan, candidate, current, metrics)
        if metrics.get("champion_version") is not None:
            decision.champion_nmae = nmae
    ok, decision.reason = decide(metrics, settings.retrain.min_improvement)
    if ok:
        registry.promote(name, version)
        decision.promoted = True
        log.info("%s: promoted v%d (%s)", name, version, decision.reason)
    else:
        log.info("%s: kept champion v%s (%s)", name, current, decision.reason)
    return decision
