"""Static threshold: flag errors above ``mean + k * std`` of the validation errors."""

from __future__ import annotations

import numpy as np

from models.core.streaming import StreamingState


class StaticThreshold(StreamingState):
    """Score = z-score of the error vs validation ``(mean, std)``; anomalous when score > ``k``.

    Stateless, so nothing is learned from flagged points; ``update`` only grows ``n_series``.
    """

    def __init__(self, mean: float, std: float, k: float = 5.0):
        self.mean, self.std, self.k = float(mean), float(max(std, 1e-12)), float(k)
        self.threshold = self.k

    @classmethod
    def from_calibration(cls, calibration: dict, k: float | None = None, smoothed: bool = False) -> StaticThreshold:
        """From ``bundle.calibration`` (raw errors, or EWMA-smoothed ones with ``smoothed=True``)."""
        prefix = "smoothed_" if smoothed else ""
        return cls(
            calibration[prefix + "mean"], calibration[prefix + "std"], calibration.get("k", 5.0) if k is None else k
        )

    @property
    def error_threshold(self) -> float:
        """The threshold in error units: ``mean + k * std``."""
        return self.mean + self.k * self.std

    def _resize(self, n: int) -> None:
        pass

    def _update_unique(self, idx, e):
        return (e - self.mean) / self.std

    def score_batch(self, x):
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std

    def is_anomaly(self, scores) -> np.ndarray:
        return np.asarray(scores) > self.threshold
