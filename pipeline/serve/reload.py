"""Hot reload: watch a model's champion pointer in the registry and load a newly promoted version.

``ChampionWatcher.poll()`` is called by the scorer between batches. At most every
``interval_s`` it reads the champion pointer (``models/registry.py``, a small JSON file replaced
atomically); when the champion differs from the version serving, it loads that version. A version
that fails to load (``CorruptModelError`` or anything else) is refused once and remembered, so the
old model keeps serving and the watcher does not retry it every batch; a later promotion is tried.

``precision="bf16"`` serves many-to-one (window) forecasters through a bfloat16 copy
(``ServingWindowForecaster``: ~1.5-2x the windows/s on CPUs with AVX-512 BF16, predictions differ
from fp32 by ~1e-3..1e-2 normalised units); stateful many-to-many models always stay fp32 (their
recurrent state would accumulate the rounding).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from models.forecasting.bundle import ModelBundle
from models.forecasting.serving import PRECISIONS, apply_precision
from models.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class ReloadOutcome:
    """What one poll found: a bundle to swap in, or a refused version with the error."""

    bundle: ModelBundle | None = None
    refused_version: int | None = None
    error: str = ""
    pointer_error: bool = False  # the champion pointer could not be read (nothing refused)


class ChampionWatcher:
    """Follows ``registry.champion(name)``; ``serving`` is the version in use."""

    def __init__(
        self, registry: ModelRegistry, name: str, serving: int | None, interval_s: float = 1.0, precision: str = "fp32"
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.registry = registry
        self.name = name
        self.serving = serving
        self.interval_s = interval_s
        self.refused: set[int] = set()
        self._next_check = 0.0

    def load_initial(self) -> ModelBundle:
        """The current champion bundle (raises when there is none or it cannot be loaded)."""
        bundle = apply_precision(self.registry.load(self.name), self.precision)
        self.serving = bundle.version
        return bundle

    def poll(self, force: bool = False) -> ReloadOutcome | None:
        """A new champion to serve or refuse, or None when nothing changed (cheap; call every batch)."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return None
        self._next_check = now + self.interval_s
        try:
            version = self.registry.champion(self.name)
        except Exception as error:
            log.warning("cannot read champion pointer of %s: %s", self.name, error)
            return ReloadOutcome(error=f"{type(error).__name__}: {error}", pointer_error=True)
        if version is None or version == self.serving or version in self.refused:
            return None
        try:
            bundle = apply_precision(self.registry.load(self.name, version), self.precision)
        except Exception as error:
            self.refused.add(version)
            log.error("refusing %s v%s: %s", self.name, version, error)
            return ReloadOutcome(refused_version=version, error=f"{type(error).__name__}: {error}")
        return ReloadOutcome(bundle=bundle)

    def accepted(self, version: int | None) -> None:
        self.serving = version

    def refuse(self, version: int | None) -> None:
        if version is not None:
            self.refused.add(version)
