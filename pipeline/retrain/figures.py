"""Step 4 of a retraining run: its figures for operations (``RetrainMetrics``), pushed to a Pushgateway
or written to the node-exporter textfile collector."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from models.core.settings import Settings
from pipeline.retrain.contracts import Decision


def record_figures(settings: Settings, decisions: Iterable[Decision], now: float | None = None) -> str:
    """Push (``retrain.pushgateway_url``) or write (``retrain.textfile``) RetrainMetrics; returns where they went."""
    from prometheus_client import push_to_gateway, write_to_textfile

    from models.registry import ModelRegistry
    from pipeline.metrics import RetrainMetrics

    metrics = RetrainMetrics()
    registry = ModelRegistry(settings.registry_dir)
    now = time.time() if now is None else now
    for d in decisions:
        metrics.last_success.labels(model=d.name).set(now)
        if d.candidate_nmae is not None:
            metrics.candidate_error.labels(model=d.name).set(d.candidate_nmae)
        if d.champion_nmae is not None:
            metrics.champion_error.labels(model=d.name).set(d.champion_nmae)
        # a counter over runs: every champion change the registry remembers (history + current)
        pointer = Path(settings.registry_dir) / d.name / "champion.json"  # {"version", "history"}
        history = json.loads(pointer.read_text()).get("history", []) if pointer.is_file() else []
        changes = len(history) + (1 if registry.champion(d.name) is not None else 0)
        metrics.promotions.labels(model=d.name).inc(changes)
    knobs = settings.retrain
    if knobs.pushgateway_url:
        push_to_gateway(knobs.pushgateway_url, job="tsad_retrain", registry=metrics.registry)
        return knobs.pushgateway_url
    path = Path(knobs.textfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), metrics.registry)  # writes a temp file and renames it into place
    return str(path)
