"""NAB-format result files: ``DIR/NAME/<group>/NAME_<file>.csv`` with ``timestamp,value,anomaly_score,label``.

This is the layout NAB's own scorer reads (``results/<detector>/<group>/<detector>_<file>.csv``).
``label`` is 1 inside a labelled window. Timestamps are written as NAB writes them
(``YYYY-MM-DD HH:MM:SS``). The corpus scores go next to them as ``NAME_scores.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.backtest.replay import SeriesResult


def result_path(out_dir: Path, detector: str, name: str) -> Path:
    """``out_dir/detector/<group>/detector_<file>.csv`` for the NAB key ``name`` = ``<group>/<file>.csv``."""
    group, _, file = name.rpartition("/")
    return Path(out_dir) / detector / group / f"{detector}_{file}"


def write_nab_csv(result: SeriesResult, out_dir: Path, detector: str) -> Path:
    """Write one ``SeriesResult`` as a NAB result CSV; returns the path."""
    import pandas as pd

    path = result_path(out_dir, detector, result.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(result.timestamps).strftime("%Y-%m-%d %H:%M:%S"),
            "value": result.values,
            "anomaly_score": np.round(np.nan_to_num(result.anomaly_score, nan=0.0), 6),
            "label": result.label.astype(int),
        }
    )
    df.to_csv(path, index=False)
    return path


def write_scores(report: dict, out_dir: Path, detector: str) -> Path:
    """Write the corpus report (``pipeline.backtest.report.corpus_report``) as JSON (NaN -> null)."""
    path = Path(out_dir) / detector / f"{detector}_scores.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2, sort_keys=True))
    return path


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
