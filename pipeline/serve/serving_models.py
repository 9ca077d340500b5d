"""Load the models ``tsad serve`` scores with: one champion, or the champion of every routed model.

``build_detector(registry_dir, routing, config, ...)`` returns ``(detector, watchers)``: a plain
``StreamingDetector`` and its ``ChampionWatcher`` when one model serves everything
(``Routing.single``), else a ``models.detection.routed.RoutedDetector`` with one watcher per routed model.
A model whose champion cannot be loaded raises ``ModelLoadError`` naming it.
"""

from __future__ import annotations

from pathlib import Path

from models.detection.detector import DetectorConfig, StreamingDetector
from models.detection.routed import RoutedDetector
from models.registry import ModelRegistry
from models.routing import Routing
from pipeline.serve.reload import ChampionWatcher


class ModelLoadError(RuntimeError):
    """A routed model has no loadable champion."""


def build_detector(
    registry_dir: str | Path,
    routing: Routing,
    config: DetectorConfig,
    reload_interval: float = 1.0,
    precision: str = "fp32",
) -> tuple[StreamingDetector | RoutedDetector, list[ChampionWatcher]]:
    """``(detector, [ChampionWatcher])`` for ``routing`` (see the module docstring)."""
    registry = ModelRegistry(registry_dir)
    detectors: dict[str, StreamingDetector] = {}
    watchers: list[ChampionWatcher] = []
    for name in routing.models:
        watcher = ChampionWatcher(registry, name, None, interval_s=reload_interval, precision=precision)
        try:
            bundle = watcher.load_initial()
        except Exception as error:
            raise ModelLoadError(f"cannot load the champion of model {name!r} from {registry_dir}: {error}") from error
        detectors[name] = StreamingDetector(bundle, config)
        watchers.append(watcher)
    if len(detectors) == 1 and not routing.routes:
        return next(iter(detectors.values())), watchers
    return RoutedDetector(routing, detectors), watchers
