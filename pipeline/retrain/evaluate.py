"""Held-out figures of a model on a plan's series: normalised MAE, and detection F1 with NAB labels.

Errors are "normalised MAE": mean absolute error in raw units divided by the series' std over the
training part (the same scale for candidate and champion), averaged over series. Shapes: series
values ``(time,)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.retrain.series import SeriesSet

if TYPE_CHECKING:
    from models.forecasting.bundle import ModelBundle
    from models.registry import ModelRegistry

LabelWindows = dict[str, list[tuple[float, float]]]


def label_windows(path: str | None) -> LabelWindows:
    """NAB label windows keyed by series id (file stem) -> [(start, end) epoch seconds]."""
    from models.forecasting.data import load_label_windows

    if not path:
        return {}
    return {Path(key).stem: windows for key, windows in load_label_windows(path).items()}


def event_counts(ts: np.ndarray, flags: np.ndarray, windows: list[tuple[float, float]]) -> tuple[int, int, int]:
    """(tp, fp, fn) by ``models.forecasting.evaluation.window_prf``: windows with rows in ``ts`` caught/missed, FP runs."""
    from models.forecasting.evaluation import window_of_rows, window_prf

    prf = window_prf(flags, window_of_rows(ts, windows))
    return prf.caught, prf.fp_runs, prf.missed


def evaluate(bundle: ModelBundle, data: SeriesSet, cut: float, labels: LabelWindows | None = None) -> dict[str, Any]:
    """Held-out figures of ``bundle`` on ``data`` after time ``cut``: nmae (and f1 with labels)."""
    from models.forecasting.inference import prediction_errors
    from models.forecasting.windows import SeriesNormalizer

    window = int(bundle.config.window)
    # many-to-one needs one window of context; many-to-many a burn-in for its recurrent state
    context = window if bundle.kind == "many-to-one" else 8 * window
    threshold = bundle.calibration.threshold if bundle.calibration else None
    per_series: list[float] = []
    tp = fp = fn = 0
    for sid, (ts, values) in data.series.items():
        c = int(np.searchsorted(ts, cut))
        scale = SeriesNormalizer.fit(values[:c])
        norm = bundle.normalizer(sid) or scale
        lo = max(c - context, 0)
        e_norm = prediction_errors(bundle.forecaster, norm.transform(values[lo:]))[c - lo :]
        ok = ~np.isnan(e_norm)
        if not ok.any():
            continue
        per_series.append(float(np.mean(e_norm[ok]) * norm.std / scale.std))
        if labels is not None and threshold is not None and sid in labels:
            flags = np.where(ok, e_norm, 0.0) > threshold
            a, b, d = event_counts(ts[c:], flags, labels[sid])
            tp, fp, fn = tp + a, fp + b, fn + d
    figures: dict[str, Any] = {
        "nmae": float(np.mean(per_series)) if per_series else None,
        "series": len(per_series),
        "f1": None,
    }
    if labels is not None and threshold is not None and tp + fp + fn > 0:
        from models.forecasting.evaluation import WindowPRF

        f1 = WindowPRF(tp, fn, fp).f1  # nan when precision or recall is undefined: counts as 0 here
        figures.update(f1=0.0 if math.isnan(f1) else f1, tp=tp, fp=fp, fn=fn)
    return figures


def load_champion(registry: ModelRegistry, name: str) -> tuple[ModelBundle | None, str | None]:
    """(bundle, None) for the current champion, (None, reason) when there is none or it cannot load."""
    from models.registry import RegistryError

    try:
        version = registry.champion(name)
        if version is None:
            return None, "no champion"
        return registry.load(name, version), None
    except RegistryError as error:
        return None, f"champion unusable: {error}"
