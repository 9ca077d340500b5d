"""Validation error statistics stored in ``bundle.calibration`` for the thresholds.

All numbers are absolute prediction errors in normalised units, pooled over the validation part
(last fraction) of every training series. ``threshold = mean + k * std`` is the default static
threshold; quantiles let a caller pick another. ``error_mean``/``error_std`` repeat ``mean``/``std``
under the names the streaming scorer reads.
"""

from __future__ import annotations

import numpy as np

from models.forecasting.inference import prediction_errors

ALPHA = 0.1  # EWMA smoothing used for the smoothed-error statistics


def calibrate(model, normed: dict[str, np.ndarray], cuts: dict[str, int], k: float = 5.0) -> dict:
    """Pool validation errors of ``model`` over ``normed`` series (validation starts at ``cuts[id]``)."""
    from models.forecasting.errors import ewma

    cfg = model.config
    raw, smooth = [], []
    for sid, arr in normed.items():
        cut = cuts[sid]
        # many-to-one only needs the window before ``cut``; many-to-many needs the state from the start
        start = 0 if cfg.kind == "many-to-many" else max(cut - cfg.window - cfg.horizon, 0)
        errs = prediction_errors(model, arr[start:])
        e_s = ewma(errs, ALPHA)
        raw.append(errs[cut - start :])
        smooth.append(e_s[cut - start :])
    return stats(np.concatenate(raw), np.concatenate(smooth), k)


def stats(errors: np.ndarray, smoothed: np.ndarray, k: float) -> dict:
    e = errors[~np.isnan(errors)]
    s = smoothed[~np.isnan(smoothed)]
    if len(e) == 0:
        return {"metric": "abs", "n": 0, "k": k}
    mean, std = float(e.mean()), float(e.std())
    q = {f"q{p}": float(np.quantile(e, p / 100 if p < 100 else p / 1000)) for p in (50, 90, 99, 999)}
    return {
        "metric": "abs",
        "n": len(e),
        "mean": mean,
        "std": std,
        "error_mean": mean,
        "error_std": std,
        **q,
        "max": float(e.max()),
        "k": k,
        "threshold": mean + k * std,
        "ewma_alpha": ALPHA,
        "smoothed_mean": float(s.mean()),
        "smoothed_std": float(s.std()),
    }
