"""The threshold policies the detector ships, and the registry ``DetectorConfig.threshold_method`` names.

* ``"likelihood"`` (default): ``ErrorLikelihood`` over the raw error and the value, score in [0, 1],
  flag at ``score >= threshold``; a value is an outlier (fed clipped) when its normalised error is
  beyond ``err_mean + outlier_z * err_std``; band from ``models.detection.band.likelihood_band``.
* ``"zscore"``: ``score = (error_z - err_mean) / err_std``, flag (and outlier) at ``score > threshold``.
* ``"static"``: ``score = error_z``, flag (and outlier) at ``score > threshold``.

A new policy is one class implementing ``models.detection.policy.ThresholdPolicy`` plus
``register_policy(name, PolicySpec(default_threshold, build))``; the detector is not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.detection.band import likelihood_band
from models.detection.policy import PolicyStep, RoundErrors, ThresholdPolicy
from models.detection.thresholds.error_likelihood import ErrorLikelihood

if TYPE_CHECKING:
    from models.detection.detector import DetectorConfig


class LikelihoodPolicy:
    """Anomaly likelihood + spatial check + refractory period (``ErrorLikelihood``)."""

    def __init__(self, likelihood: ErrorLikelihood, outlier_z: float):
        self.likelihood = likelihood
        self.outlier_z = outlier_z

    @property
    def threshold(self) -> float:
        return self.likelihood.threshold

    def ensure(self, capacity: int) -> None:
        self.likelihood.ensure(capacity)

    def reset(self, slots: np.ndarray) -> None:
        self.likelihood.reset(slots)

    def step(self, r: RoundErrors) -> PolicyStep:
        bound = r.error_mean + self.outlier_z * r.error_std  # error of an outlier
        lower, upper = likelihood_band(self.likelihood, r.slots, r.predicted)  # from the state before this event
        score, flag = self.likelihood.step_unique(r.slots, r.error, r.value, r.live, r.t, r.t - r.last_ts)
        flag &= r.live
        outlier = r.live & (r.error_z > bound)  # fed clipped, like a zscore flag
        return PolicyStep(score, flag, outlier, bound, lower, upper)

    def bytes_per_series(self) -> int:
        return self.likelihood.bytes_per_series()


class _Stateless:
    """Base of the policies without per-series state of their own (they read the detector's error EWMA)."""

    def __init__(self, threshold: float):
        self._threshold = threshold

    @property
    def threshold(self) -> float:
        return self._threshold

    def ensure(self, capacity: int) -> None:
        pass

    def reset(self, slots: np.ndarray) -> None:
        pass

    def bytes_per_series(self) -> int:
        return 0

    @staticmethod
    def _decide(r: RoundErrors, score: np.ndarray, bound: np.ndarray, threshold: float) -> PolicyStep:
        flag = r.live & (score > threshold)
        return PolicyStep(score, flag, flag, bound, r.predicted - bound * r.scale, r.predicted + bound * r.scale)


class ZScorePolicy(_Stateless):
    """EWMA z-score of the normalised error."""

    def step(self, r: RoundErrors) -> PolicyStep:
        thr = self._threshold
        score = (r.error_z - r.error_mean) / r.error_std
        bound = r.error_mean + thr * r.error_std  # error at the threshold
        return self._decide(r, score, bound, thr)


class StaticPolicy(_Stateless):
    """The normalised error itself against a fixed threshold."""

    def step(self, r: RoundErrors) -> PolicyStep:
        thr = self._threshold
        return self._decide(r, r.error_z, np.full_like(r.error_z, thr), thr)


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy: its default threshold and how to build it from a ``DetectorConfig``
    (``build`` raises ``ValueError`` on bad settings)."""

    default_threshold: float
    build: Callable[[DetectorConfig], ThresholdPolicy]


def _likelihood(config: DetectorConfig) -> ThresholdPolicy:
    return LikelihoodPolicy(ErrorLikelihood(config.likelihood_config()), config.outlier_z)


POLICIES: dict[str, PolicySpec] = {
    "likelihood": PolicySpec(0.5, _likelihood),
    "zscore": PolicySpec(6.0, lambda c: ZScorePolicy(c.threshold_value)),
    "static": PolicySpec(6.0, lambda c: StaticPolicy(c.threshold_value)),
}


def register_policy(name: str, spec: PolicySpec) -> None:
    """Make ``DetectorConfig(threshold_method=name)`` build ``spec``'s policy."""
    POLICIES[name] = spec


def policy_spec(name: str) -> PolicySpec:
    """The registered policy ``name`` (ValueError if none)."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"threshold_method must be one of {tuple(POLICIES)}, got {name!r}") from None
