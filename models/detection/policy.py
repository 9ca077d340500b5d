"""The threshold-policy contract: forecast errors of one round in, score / flag / outlier / band out.

``StreamingDetector`` owns the forecaster step and the per-series state; a ``ThresholdPolicy`` turns
each round's errors into decisions (as darts' ``ForecastingAnomalyModel(model, scorer)`` or river's
``score_one``/``learn_one``). Every array below is ``(m,)``, one entry per event of the round, each
of a distinct series slot. The implementations and their registry live in
``models.detection.policies``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(slots=True)
class RoundErrors:
    """What the detector knows about one round's events when it asks the policy (state before them)."""

    slots: np.ndarray  # int64: series slots (distinct)
    t: np.ndarray  # float64: event times, epoch s
    last_ts: np.ndarray  # float64: each series' previous event time
    value: np.ndarray  # float64: raw value
    predicted: np.ndarray  # float64: forecast, raw units
    error: np.ndarray  # float64: |value - predicted|, raw units
    error_z: np.ndarray  # float64: |z - forecast|, normalised units
    error_mean: np.ndarray  # float64: the series' EWMA of error_z
    error_std: np.ndarray  # float64: its EWMA std, floored at min_error_std
    scale: np.ndarray  # float64: the normaliser's std (raw units per normalised unit)
    live: np.ndarray  # bool: may alert (past warm-up, alert=True)


@dataclass(slots=True)
class PolicyStep:
    """A policy's decisions for one round."""

    score: np.ndarray  # float64
    flag: np.ndarray  # bool: an anomaly (never where not live)
    outlier: np.ndarray  # bool: fed to the forecaster clipped, not as is
    bound: np.ndarray  # float64: error_z beyond which a value is an outlier (what feeding clips to)
    lower: np.ndarray  # float64, raw units: the band considered normal (``models.detection.band``)
    upper: np.ndarray


class ThresholdPolicy(Protocol):
    """Per-series scoring state over slots ``0..capacity-1``, stepped once per round."""

    @property
    def threshold(self) -> float: ...

    def ensure(self, capacity: int) -> None:
        """Make room for slots ``0..capacity-1``."""

    def reset(self, slots: np.ndarray) -> None:
        """Return ``slots`` to the fresh state (a new series in a reused slot)."""

    def step(self, errors: RoundErrors) -> PolicyStep:
        """Score one round and fold it into the state."""
        ...

    def bytes_per_series(self) -> int: ...
