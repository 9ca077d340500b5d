"""Step 2 of a retraining run, per job: fit a candidate, evaluate it and the champion on the held-out
slice, register it unpromoted (idempotent per interval)."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from models.core.settings import Settings
from pipeline.retrain.contracts import Candidate, Job, NotEnoughDataError, Plan
from pipeline.retrain.evaluate import evaluate, label_windows, load_champion
from pipeline.retrain.series import SeriesSet, job_series

if TYPE_CHECKING:
    from models.forecasting.bundle import ModelBundle
    from models.forecasting.training import TrainReport
    from models.registry import ModelRegistry

log = logging.getLogger(__name__)


def idempotency_key(kind: str, the_plan: Plan) -> str:
    """The key a candidate is registered under: a re-run of the interval finds it."""
    return f"{kind}:{the_plan.interval_start}:{the_plan.interval_end}"


def _already_trained(registry: ModelRegistry, job: Job, key: str) -> Candidate | None:
    for row in registry.list(job.name):
        if row.idempotency_key == key and row.ok:
            log.info("%s: interval already trained as v%d (key %s); nothing to do", job.name, row.version, key)
            return Candidate(job, row.version, row.metrics, reused=True)
    return None


def _fit(settings: Settings, job: Job, data: SeriesSet, cut: float) -> tuple[ModelBundle, TrainReport]:
    """Fit ``job``'s forecaster on the values of ``data`` before ``cut``."""
    from models.forecasting.forecasters import ForecasterConfig
    from models.forecasting.training import fit

    knobs = settings.retrain
    train = {sid: values[: int(np.searchsorted(ts, cut))] for sid, (ts, values) in data.series.items()}
    config = ForecasterConfig(kind=job.kind, window=knobs.window, hidden=knobs.hidden, layers=knobs.layers)
    return fit(
        config,
        train,
        epochs=knobs.epochs,
        device=knobs.device,
        seed=knobs.seed,
        progress=False,
        name=job.name,
        batch_size=knobs.batch_size,
    )


def _holdout_metrics(
    settings: Settings, registry: ModelRegistry, bundle: ModelBundle, data: SeriesSet, the_plan: Plan
) -> dict[str, Any]:
    """The candidate's and the current champion's held-out figures, as stored in meta.json ``metrics``."""
    labels = label_windows(settings.retrain.labels) if settings.retrain.labels else None
    candidate = evaluate(bundle, data, the_plan.cut, labels)
    champion, why_not = load_champion(registry, bundle.name)
    champion_figures = evaluate(champion, data, the_plan.cut, labels) if champion is not None else None
    return {
        "holdout_nmae": candidate["nmae"],
        "holdout_f1": candidate["f1"],
        "holdout_series": candidate["series"],
        "holdout_from": the_plan.cut_iso,
        "champion_version": champion.version if champion is not None else None,
        "champion_holdout_nmae": champion_figures["nmae"] if champion_figures else None,
        "champion_holdout_f1": champion_figures["f1"] if champion_figures else None,
        "champion_note": why_not,
    }


def train_candidate(settings: Settings, the_plan: Plan, job: Job) -> Candidate:
    """Fit, evaluate against the champion, register (unpromoted). Re-runs return the registered version."""
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    key = idempotency_key(job.kind, the_plan)
    done = _already_trained(registry, job, key)
    if done is not None:
        return done

    data = job_series(settings, job, the_plan.start, the_plan.end, the_plan.series)
    if not data.series:
        raise NotEnoughDataError(f"{job.name}: no eligible series match pattern {list(job.patterns)!r}")
    bundle, report = _fit(settings, job, data, the_plan.cut)
    metrics = _holdout_metrics(settings, registry, bundle, data, the_plan)
    metrics.update(
        train_device=report.device,
        train_epochs=report.epochs,
        train_wall_time_s=report.wall_time_s,
        train_windows_per_s=report.windows_per_s,
        evaluated_at=datetime.now(UTC).isoformat(),
    )
    version = registry.register(
        bundle,
        metrics,
        idempotency_key=key,
        data_range=(the_plan.start, the_plan.end),
        interval_id=f"{the_plan.interval_start}/{the_plan.interval_end}",
    )
    log.info(
        "%s: registered candidate v%d (nMAE %.4f vs champion %s) trained on %s in %.1fs",
        job.name,
        version,
        metrics["holdout_nmae"] or math.nan,
        metrics["champion_holdout_nmae"],
        report.device,
        report.wall_time_s,
    )
    return Candidate(job, version, {**bundle.metrics, **metrics}, reused=False)
