"""``ModelBundle``: a trained forecaster plus everything needed to score with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.forecasting.calibration import Calibration
from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.windows import SeriesNormalizer


@dataclass(kw_only=True)
class ModelBundle:
    """What the registry stores and the scorer serves.

    ``forecaster`` is an ``nn.Module`` in eval mode on CPU; ``normalizers`` maps series id ->
    ``SeriesNormalizer(mean, std)``; ``calibration`` holds validation error statistics (normalised
    units) for the thresholds, ``None`` when there were none to pool; ``meta`` carries registry
    metadata (created_at, data range, ...).
    """

    name: str
    kind: str
    config: ForecasterConfig
    forecaster: Any
    normalizers: dict[str, SeriesNormalizer] = field(default_factory=dict)
    calibration: Calibration | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def normalizer(self, series_id: str) -> SeriesNormalizer | None:
        """Saved normaliser for ``series_id``, or None for a series unseen in training."""
        return self.normalizers.get(series_id)
