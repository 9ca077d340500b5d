"""Scoring a batch so that one event cannot fail it: ``process_isolated``.

The detector scores a batch in one call. If that call raises, the batch is scored again one event
at a time; the events whose own call raises come back as failures (the scorer dead-letters them
as ``internal_error``) and every other event gets its result. Series state stepped by the failed
whole-batch call is not rolled back: an event it already took in may then be reported as a
duplicate timestamp by the per-event pass (this path is for bugs, not for bad input, which
validation rejects first).
"""

from __future__ import annotations

import logging

import numpy as np

from models.detection.detector import BatchResult, StreamingDetector
from models.detection.routed import RoutedDetector
from models.detection.status import Status

log = logging.getLogger(__name__)


def process_isolated(
    detector: StreamingDetector | RoutedDetector,
    series: list[str],
    ts: np.ndarray,
    values: np.ndarray,
    alert: np.ndarray,
) -> tuple[BatchResult, list[tuple[int, BaseException]]]:
    """``detector.process`` of the batch, or of each event alone if the batch fails; ``(result,
    [(index, error)])`` where failed events have status ``Status.FAILED``."""
    try:
        return detector.process(series, ts, values, alert=alert), []
    except Exception as error:
        log.error(
            "scoring a batch of %d events failed (%s: %s); scoring it event by event",
            len(series),
            type(error).__name__,
            error,
        )
    return _process_each(detector, series, ts, values, alert)


def _process_each(
    detector: StreamingDetector | RoutedDetector,
    series: list[str],
    ts: np.ndarray,
    values: np.ndarray,
    alert: np.ndarray,
) -> tuple[BatchResult, list[tuple[int, BaseException]]]:
    """``detector.process`` of each event alone, gathered into one ``BatchResult`` (long only because
    that result is built field by field)."""
    n = len(series)
    status = np.full(n, Status.FAILED, dtype=np.int8)
    predicted, err, score = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    flags = np.zeros(n, dtype=bool)
    lower, upper = np.full(n, np.nan), np.full(n, np.nan)
    route, routes = np.zeros(n, dtype=np.int64), None  # which model scored each event (routed detectors)
    failures: list[tuple[int, BaseException]] = []
    evicted, threshold = 0, float("nan")
    for j in range(n):
        try:
            r = detector.process([series[j]], ts[j : j + 1], values[j : j + 1], alert=alert[j : j + 1])
        except Exception as error:
            failures.append((j, error))
            continue
        status[j], predicted[j], err[j], score[j], flags[j] = (
            r.status[0],
            r.predicted[0],
            r.error[0],
            r.score[0],
            r.is_anomaly[0],
        )
        if r.lower is not None and r.upper is not None:
            lower[j], upper[j] = r.lower[0], r.upper[0]
        if r.route is not None:
            route[j], routes = r.route[0], r.routes
        evicted += r.evicted
        threshold = r.threshold
    if np.isnan(threshold):
        threshold = detector.config.threshold_value
    return BatchResult(
        status,
        predicted,
        err,
        score,
        threshold,
        flags,
        detector.model_name,
        detector.model_version,
        evicted,
        {},
        lower,
        upper,
        route if routes is not None else None,
        routes or [],
    ), failures
