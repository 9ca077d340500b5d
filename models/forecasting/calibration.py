"""The validation error statistics of a trained forecaster: ``Calibration``, and ``calibrate`` that pools them.

All numbers are absolute prediction errors in normalised units (per-series z-units), pooled over the
validation part (last fraction) of every training series. ``threshold = error_mean + k * error_std``
is the default static threshold; the quantiles let a caller pick another. The streaming detector
seeds its per-series error statistics from ``error_mean`` / ``error_std``. A bundle with no
validation errors to pool has no calibration (``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from models.forecasting.errors import ewma
from models.forecasting.forecasters import Forecaster
from models.forecasting.inference import prediction_errors

ALPHA = 0.1  # EWMA smoothing used for the smoothed-error statistics


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Validation error statistics, stored in the registry's meta.json under ``calibration``.

    Units: every error figure is an absolute forecast error in normalised units. Only ``error_mean``
    and ``error_std`` are always present; the rest is ``None`` in hand-made or old bundles that did
    not record it.
    """

    error_mean: float  # mean |forecast error|
    error_std: float  # standard deviation of |forecast error|
    n: int | None = None  # validation errors pooled (NaN errors excluded)
    k: float | None = None  # threshold multiplier
    threshold: float | None = None  # error_mean + k * error_std: the default static threshold
    q50: float | None = None  # quantiles of |forecast error|: median
    q90: float | None = None
    q99: float | None = None
    q999: float | None = None  # 99.9 %
    error_max: float | None = None
    ewma_alpha: float | None = None  # EWMA weight of the smoothed errors below
    smoothed_mean: float | None = None  # mean of the EWMA-smoothed errors
    smoothed_std: float | None = None
    metric: Literal["abs"] = "abs"  # point error the statistics are over

    def to_dict(self) -> dict[str, Any]:
        """One JSON key per fact (the field names); facts not recorded are left out."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration | None:
        """Read a stored calibration (``to_dict``'s keys, or a legacy spelling); ``None`` when it holds
        no error statistics (an empty one, or one pooled over no validation errors).

        Raises ``TypeError``/``ValueError`` on values that are not numbers.
        """
        # The one place that reads legacy spellings. Bundles written before this class stored the
        # mean/std twice ("mean"/"std" beside "error_mean"/"error_std") and the maximum as "max";
        # hand-written calibrations used "mean_error"/"mae" and "std_error". First spelling wins.
        mean = _first(data, "error_mean", "mean", "mean_error", "mae")
        std = _first(data, "error_std", "std", "std_error")
        if mean is None or std is None:
            return None
        n = data.get("n")
        return cls(
            error_mean=float(mean),
            error_std=float(std),
            n=None if n is None else int(n),
            k=_float_or_none(data.get("k")),
            threshold=_float_or_none(data.get("threshold")),
            q50=_float_or_none(data.get("q50")),
            q90=_float_or_none(data.get("q90")),
            q99=_float_or_none(data.get("q99")),
            q999=_float_or_none(data.get("q999")),
            error_max=_float_or_none(_first(data, "error_max", "max")),
            ewma_alpha=_float_or_none(data.get("ewma_alpha")),
            smoothed_mean=_float_or_none(data.get("smoothed_mean")),
            smoothed_std=_float_or_none(data.get("smoothed_std")),
        )


def _first(data: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first of ``keys`` present in ``data`` (``None`` if none is)."""
    return next((data[key] for key in keys if key in data), None)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def calibrate(
    model: Forecaster, normed: dict[str, np.ndarray], cuts: dict[str, int], k: float = 5.0
) -> Calibration | None:
    """Pool validation errors of ``model`` over ``normed`` series (validation starts at ``cuts[id]``)."""
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


def stats(errors: np.ndarray, smoothed: np.ndarray, k: float) -> Calibration | None:
    """Statistics of the validation ``errors (n,)`` and their EWMA ``smoothed (n,)`` (NaN ignored);
    ``None`` when every error is NaN."""
    e = errors[~np.isnan(errors)]
    s = smoothed[~np.isnan(smoothed)]
    if len(e) == 0:
        return None
    mean, std = float(e.mean()), float(e.std())
    return Calibration(
        n=len(e),
        error_mean=mean,
        error_std=std,
        q50=float(np.quantile(e, 0.5)),
        q90=float(np.quantile(e, 0.9)),
        q99=float(np.quantile(e, 0.99)),
        q999=float(np.quantile(e, 0.999)),
        error_max=float(e.max()),
        k=k,
        threshold=mean + k * std,
        ewma_alpha=ALPHA,
        smoothed_mean=float(s.mean()),
        smoothed_std=float(s.std()),
    )
