"""CUDA training path (bf16 autocast, cuDNN); skipped without a GPU."""

import numpy as np
import pytest
import torch

from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.training import fit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["many-to-one", "many-to-many"])
def test_fit_on_cuda_uses_bf16(kind):
    t = np.arange(4000)
    x = np.sin(2 * np.pi * t / 50) + 0.1 * np.random.default_rng(0).normal(size=len(t))
    bundle, report = fit(
        ForecasterConfig(kind=kind, window=32, hidden=32), {"s": x}, epochs=15, device="cuda", progress=False
    )
    assert report.device.startswith("cuda") and report.amp_dtype == "bfloat16"
    assert torch.backends.cudnn.enabled
    assert next(bundle.forecaster.parameters()).device.type == "cpu"  # bundles are always served on CPU
    assert next(bundle.forecaster.parameters()).dtype == torch.float32
    assert report.best_val_loss < 0.1
