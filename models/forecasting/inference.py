"""Batch inference over whole series: aligned forecasts and per-step prediction errors.

Alignment: ``pred[t, k]`` forecasts ``values[t+1+k, 0]``. NaN policy: a NaN input step is fed to the
network as 0 (the series mean after normalisation) so recurrent state keeps advancing, and every
forecast whose input contained a NaN is set to NaN (it then covers nothing).
"""

from __future__ import annotations

import numpy as np
import torch

from models.forecasting.errors import combine_horizon_errors
from models.forecasting.forecasters import Forecaster
from models.forecasting.windows import as_2d

CHUNK = 8192  # windows per forward pass for many-to-one


@torch.no_grad()
def predict_series(model: Forecaster, values: np.ndarray) -> np.ndarray:
    """Forecasts ``(time, horizon)`` for one normalised series ``values (time,)`` or ``(time, features)``."""
    cfg = model.config
    arr = as_2d(values)
    time = len(arr)
    nan_step = np.isnan(arr).any(axis=1)
    x = torch.from_numpy(np.nan_to_num(arr, nan=0.0)).float()
    pred = np.full((time, cfg.horizon), np.nan)
    model.eval()
    if cfg.kind == "many-to-many":
        out, _ = model(x[None])
        pred[:] = out[0].double().numpy()
        bad = nan_step
    else:
        if time < cfg.window:
            return pred
        wins = x.unfold(0, cfg.window, 1).transpose(1, 2)  # (n, window, features); window i ends at i+window-1
        outs = [model(wins[i : i + CHUNK]) for i in range(0, len(wins), CHUNK)]
        pred[cfg.window - 1 :] = torch.cat(outs).double().numpy()
        bad = np.convolve(nan_step, np.ones(cfg.window), mode="full")[:time] > 0
        bad[: cfg.window - 1] = True
    pred[bad] = np.nan
    return pred


def prediction_errors(model: Forecaster, values: np.ndarray, metric: str = "abs") -> np.ndarray:
    """Per-step error ``(time,)`` of a normalised series (mean over covering forecasts; NaN when none)."""
    arr = as_2d(values)
    return combine_horizon_errors(predict_series(model, arr), arr[:, 0], metric)
