"""The forecaster as served: ``ServingWindowForecaster`` and ``apply_precision`` (fp32 or bf16 many-to-one).

``precision="bf16"`` serves many-to-one (window) forecasters through a bfloat16 copy (~1.5-2x the
windows/s on CPUs with AVX-512 BF16, predictions differ from fp32 by ~1e-3..1e-2 normalised units);
stateful many-to-many models always stay fp32 (their recurrent state would accumulate the rounding).
"""

from __future__ import annotations

import copy
import logging
from typing import TypeVar

import torch
from torch import nn

from models.forecasting.bundle import ModelBundle

log = logging.getLogger(__name__)


PRECISIONS = ("fp32", "bf16")
_Bundle = TypeVar("_Bundle", bound=ModelBundle | None)


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
        return torch.cat([self.inner(x[i : i + c].to(self.dtype)).float() for i in range(0, n, c)])


def apply_precision(bundle: _Bundle, precision: str = "fp32") -> _Bundle:
    """Return ``bundle`` set up for serving: many-to-one wrapped in ``ServingWindowForecaster`` at
    ``precision`` ("fp32" | "bf16"); many-to-many unchanged (always fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if bundle is None or isinstance(bundle.forecaster, ServingWindowForecaster):
        return bundle
    if bundle.kind != "many-to-one":
        if precision != "fp32":
            log.info(
                "precision %s applies to many-to-one models only; %s v%s stays fp32",
                precision,
                getattr(bundle, "name", "?"),
                getattr(bundle, "version", "?"),
            )
        return bundle
    bundle.forecaster = ServingWindowForecaster(bundle.forecaster, precision)
    return bundle
