"""One scorer, many models: ``RoutedDetector`` scores each series with the model its route names.

It has the interface the scorer uses of ``models.detection.detector.StreamingDetector`` (``process``,
``forget``, ``swap_model``, ``tracked_series``, ``store.ids``, ``model_name``/``model_version``/
``bundle`` of the default route), and holds one ``StreamingDetector`` per routed model (its own
series state, likelihood and model). ``process`` splits a batch by model (``models.routing``,
first matching route), scores each part in one call (batched per model, events of a series stay
in order) and merges the results back in batch order; ``BatchResult.route`` says which route
scored each event and ``BatchResult.routes`` lists ``(model, version, group)`` per route.

``swap_model(bundle)`` swaps only the detector of ``bundle.name``: each model is hot-reloaded on
its own, and a bad version of one (refused by ``ChampionWatcher`` or by ``swap_model``) leaves
every other model serving.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.detection.contracts import ServedBundle
from models.detection.detector import BatchResult, DetectorConfig, StreamingDetector
from models.detection.status import STATUS_NAMES, Status
from models.routing import Routing


@dataclass(frozen=True)
class RoutedStore:
    """The part of ``SeriesStateStore`` the scorer reads of a routed detector."""

    ids: ChainMap[str, int]  # series id -> slot in its own model's store


class RoutedDetector:
    """``StreamingDetector`` per model of ``routing``; see the module docstring."""

    def __init__(self, routing: Routing, detectors: dict[str, StreamingDetector]) -> None:
        missing = [m for m in routing.models if m not in detectors]
        if missing:
            raise ValueError(f"no detector for routed models {missing}")
        self.routing = routing
        self.detectors = detectors
        self.default = detectors[routing.default.model]
        self.config: DetectorConfig = self.default.config
        self._route_model = np.array([routing.models.index(r.model) for r in routing.all_routes], dtype=np.int64)
        self._model_names = routing.models

    # the default route's model stands for the scorer's unlabelled model metrics
    @property
    def bundle(self) -> ServedBundle:
        return self.default.bundle

    @property
    def model_name(self) -> str:
        return self.default.model_name

    @property
    def model_version(self) -> int | None:
        return self.default.model_version

    @property
    def store(self) -> RoutedStore:
        """The union of the models' series (``store.ids``: series id -> slot in its own model)."""
        return RoutedStore(ChainMap(*(d.store.ids for d in self.detectors.values())))

    @property
    def tracked_series(self) -> int:
        return sum(d.tracked_series for d in self.detectors.values())

    def state_bytes_per_series(self) -> int:
        return max(d.state_bytes_per_series() for d in self.detectors.values())

    def forget(self, series_ids: Iterable[str]) -> int:
        ids = list(series_ids)
        return sum(d.forget(ids) for d in self.detectors.values())

    def swap_model(self, bundle: ServedBundle) -> None:
        """Serve ``bundle`` for its model (``bundle.name``) from the next batch on; others unchanged."""
        name = str(bundle.name)
        if name not in self.detectors:
            raise ValueError(f"model {name!r} is not routed (routed: {self._model_names})")
        self.detectors[name].swap_model(bundle)

    def routes_now(self) -> list[tuple[str, object, str]]:
        """``(model, version, group)`` per route (``BatchResult.routes``)."""
        return [(r.model, self.detectors[r.model].model_version, r.group) for r in self.routing.all_routes]

    def process(self, series_ids: list[str], ts: Any, values: Any, alert: Any = True) -> BatchResult:
        """Score a batch, each event with its route's model; results in batch order."""
        n = len(series_ids)
        ts = np.asarray(ts, dtype=np.float64).reshape(n)
        values = np.asarray(values, dtype=np.float64).reshape(n)
        alert_arr = np.broadcast_to(np.asarray(alert, dtype=bool), (n,))
        route_of = self.routing.route_of
        route = np.fromiter((route_of(s) for s in series_ids), dtype=np.int64, count=n)
        model = self._route_model[route] if n else np.zeros(0, dtype=np.int64)
        status = np.full(n, Status.WARMUP, dtype=np.int8)
        predicted, error, score = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        lower, upper = np.full(n, np.nan), np.full(n, np.nan)
        flags = np.zeros(n, dtype=bool)
        evicted, threshold = 0, self.config.threshold_value
        present = np.unique(model).tolist() if n else []
        for m in present:
            sel = np.flatnonzero(model == m) if len(present) > 1 else np.arange(n)
            det = self.detectors[self._model_names[m]]
            part = [series_ids[i] for i in sel.tolist()] if len(present) > 1 else list(series_ids)
            r = det.process(part, ts[sel], values[sel], alert=alert_arr[sel])
            status[sel], predicted[sel], error[sel], score[sel], flags[sel] = (
                r.status,
                r.predicted,
                r.error,
                r.score,
                r.is_anomaly,
            )
            if r.lower is not None:
                lower[sel], upper[sel] = r.lower, r.upper
            evicted += r.evicted
            threshold = r.threshold
        counts = {name: int((status == code).sum()) for code, name in STATUS_NAMES.items()}
        counts["anomalies"] = int(flags.sum())
        return BatchResult(
            status,
            predicted,
            error,
            score,
            threshold,
            flags,
            self.model_name,
            self.model_version,
            evicted,
            counts,
            lower,
            upper,
            route,
            self.routes_now(),
        )
