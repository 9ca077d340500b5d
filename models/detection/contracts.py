"""What the detector reads from a served model bundle: the ``ServedBundle`` Protocol.

``models.forecasting.bundle.ModelBundle`` (what the registry loads) satisfies it; tests and
benchmarks may hand any object with the same attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from models.forecasting.calibration import Calibration


class ServedConfig(Protocol):
    """The forecaster settings the detector needs (``models.forecasting.forecasters.ForecasterConfig``)."""

    @property
    def window(self) -> int: ...
    @property
    def layers(self) -> int: ...
    @property
    def hidden(self) -> int: ...
    @property
    def features(self) -> int: ...
    @property
    def calendar_features(self) -> bool: ...
    @property
    def calendar_week(self) -> bool: ...


class ServedBundle(Protocol):
    """A model as the detector serves it: identity, forecaster, per-series normalisers, calibration
    (read-only here: the detector never writes to a bundle)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str:
        """``"many-to-one"`` | ``"many-to-many"`` (``models.core.kinds``)."""
        ...

    @property
    def version(self) -> int | None: ...
    @property
    def config(self) -> ServedConfig: ...
    @property
    def forecaster(self) -> Any:
        """``nn.Module``: many-to-one ``(batch, window, features) -> (batch, horizon)``; many-to-many
        ``(batch, time, features), state -> (batch, time, 1), state`` and ``step``."""
        ...

    @property
    def normalizers(self) -> Mapping[str, Sequence[float]]:
        """Series id -> ``(mean, std)`` fitted in training."""
        ...

    @property
    def calibration(self) -> Calibration | None:
        """Validation error statistics (read by ``detector._calibration_error_stats``)."""
        ...
