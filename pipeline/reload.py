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

import copy
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class ReloadOutcome:
    """What one poll found: a bundle to swap in, or a refused version with the error."""

    bundle: object | None = None
    refused_version: int | None = None
    error: str = ""
    pointer_error: bool = False  # the champion pointer could not be read (nothing refused)


PRECISIONS = ("fp32", "bf16")


WINDOW_CHUNK = 256  # windows per nn.LSTM call: ~30 % more windows/s than thousands at once (measured)


class ServingWindowForecaster(nn.Module):
    """A many-to-one forecaster as served: ``x (batch, window, features)`` fp32 -> ``(batch, horizon)`` fp32.

    Runs the windows in chunks of ``chunk`` (nn.LSTM materialises every input projection of the
    batch; smaller chunks stay in cache), through a bfloat16 copy when ``precision="bf16"``.
    Rows are independent, so chunking does not change the fp32 predictions.
    """

    def __init__(self, forecaster: nn.Module, precision: str = "fp32", chunk: int = WINDOW_CHUNK):
        super().__init__()
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.precision = precision
        self.inner = copy.deepcopy(forecaster).to(self.dtype).eval() if precision == "bf16" else forecaster
        self.config = getattr(forecaster, "config", None)
        self.chunk = max(int(chunk), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], self.chunk
        if n <= c:
            return self.inner(x.to(self.dtype)).float()
        return torch.cat([self.inner(x[i:i + c].to(self.dtype)).float() for i in range(0, n, c)])


def apply_precision(bundle, precision: str = "fp32"):
    """Return ``bundle`` set up for serving: many-to-one wrapped in ``ServingWindowForecaster`` at
    ``precision`` ("fp32" | "bf16"); many-to-many unchanged (always fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if bundle is None or isinstance(bundle.forecaster, ServingWindowForecaster):
        return bundle
    if bundle.kind != "many-to-one":
        if precision != "fp32":
            log.info("precision %s applies to many-to-one models only; %s v%s stays fp32",
                     precision, getattr(bundle, "name", "?"), getattr(bundle, "version", "?"))
        return bundle
    bundle.forecaster = ServingWindowForecaster(bundle.forecaster, precision)
    return bundle


class ChampionWatcher:
    """Follows ``registry.champion(name)``; ``serving`` is the version in use."""

    def __init__(self, registry, name: str, serving: int | None, interval_s: float = 1.0, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.registry = registry
        self.name = name
        self.serving = serving
        self.interval_s = interval_s
        self.refused: set[int] = set()
        self._next_check = 0.0

    def load_initial(self):
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
        except Exception as error:  # noqa: BLE001 - an unreadable pointer must not stop scoring
            log.warning("cannot read champion pointer of %s: %s", self.name, error)
            return ReloadOutcome(error=f"{type(error).__name__}: {error}", pointer_error=True)
        if version is None or version == self.serving or version in self.refused:
            return None
        try:
            bundle = apply_precision(self.registry.load(self.name, version), self.precision)
        except Exception as error:  # noqa: BLE001 - corrupt or unloadable: refuse, keep serving
            self.refused.add(version)
            log.error("refusing %s v%s: %s", self.name, version, error)
            return ReloadOutcome(refused_version=version, error=f"{type(error).__name__}: {error}")
        return ReloadOutcome(bundle=bundle)

    def accepted(self, version: int) -> None:
        self.serving = version

    def refuse(self, version: int) -> None:
        self.refused.add(version)
