"""The retraining DAG's task bodies as plain functions: JSON-able dicts in and out (Airflow XCom
between tasks), the typed contracts of ``pipeline.retrain.contracts`` inside.

``dags/retrain_forecasters.py`` only wires these into tasks and turns ``NotEnoughDataError`` and
``NoCandidateError`` into skips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from models.core.settings import Settings, load_settings
from pipeline.retrain.contracts import Candidate, Decision, Job, Plan


class NoCandidateError(Exception):
    """A model has no candidate this run (its training was skipped)."""


def run_settings(params: Mapping[str, Any] | None = None) -> Settings:
    """The settings of one DAG run: the environment, then the run's non-None params (retraining knobs)."""
    return load_settings(retrain=dict(params or {}))


def plan_task(settings: Settings, interval_start: datetime | str, interval_end: datetime | str) -> dict[str, Any]:
    from pipeline.retrain.plan import plan

    return plan(settings, interval_start, interval_end).to_dict()


def train_task(settings: Settings, the_plan: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    from pipeline.retrain.train import train_candidate

    return train_candidate(settings, Plan.from_dict(dict(the_plan)), Job.from_dict(dict(job))).to_dict()


def candidate_for(candidates: Iterable[Mapping[str, Any] | None] | None, name: str) -> dict[str, Any]:
    """This model's candidate among the mapped ``train`` results (skipped trainings leave none)."""
    found = [dict(c) for c in (candidates or []) if c and c.get("name") == name]
    if not found:
        raise NoCandidateError(f"{name}: no candidate this run (training skipped)")
    if len(found) > 1:
        raise ValueError(f"{name}: {len(found)} candidates, expected one")
    return found[0]


def promote_task(settings: Settings, the_plan: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, Any]:
    from pipeline.retrain.promote import promote_if_better

    decision = promote_if_better(settings, Plan.from_dict(dict(the_plan)), Candidate.from_dict(dict(candidate)))
    return decision.to_dict()


def record_task(settings: Settings, decisions: Iterable[Mapping[str, Any] | None]) -> str:
    """Figures of the models that have a decision (a skipped promotion leaves none)."""
    from pipeline.retrain.figures import record_figures

    return record_figures(settings, [Decision.from_dict(dict(d)) for d in decisions if d])
