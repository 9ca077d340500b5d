"""What the detector reads from a served model bundle: the ``ServedBundle`` Protocol.

``models.forecasting.bundle.ModelBundle`` (what the registry loads) satisfies it; tests and
benchmarks may hand any object with the same attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class ServedConfig(Protocol):
    """The forecaster settings the detector needs (``models.forecasting.forecasters.ForecasterConfig``)."""

    window: int
    layers: int
    hidden: int
    features: int
    calendar_features: bool
    calendar_week: bool


class ServedBundle(Protocol):
    """A model as the detector serves it: identity, forecaster, per-series normalisers, calibration."""

    name: str
    kind: str  # "many-to-one" | "many-to-many" (models.core.kinds)
    version: int | None
    config: ServedConfig
    forecaster: Any  # nn.Module: many-to-one ``(batch, window, features) -> (batch, horizon)``;
    # many-to-many ``(batch, time, features), state -> (batch, time, 1), state`` and ``step``
    normalizers: Mapping[str, Sequence[float]]  # series id -> (mean, std)
    calibration: Any  # validation error statistics (read by ``detector._calibration_error_stats``)
