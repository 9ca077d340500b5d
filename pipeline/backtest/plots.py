"""One PNG per series (matplotlib, Agg): value + forecast, anomaly score + threshold, flags, windows.

Top panel: value and the detector's forecast, labelled windows shaded, the probationary period
greyed, the detector's flags as red markers. Bottom panel: the post-processed anomaly score in
[0, 1] with the detector's own threshold (dashed) and, when given, the label-optimised one (dotted).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.backtest.replay import SeriesResult


def _shade_spans(result: SeriesResult, ax: Any, ax2: Any) -> None:
    """Shade the labelled windows (gold) and the probation rows (grey) on both panels."""
    t = result.timestamps
    for k, (lo, hi) in enumerate(result.windows):
        for a in (ax, ax2):
            a.axvspan(
                t[lo], t[hi], color="gold", alpha=0.3, lw=0, label="labelled window" if (k == 0 and a is ax) else None
            )
    if result.probation:
        for a in (ax, ax2):
            a.axvspan(
                t[0],
                t[result.probation - 1],
                color="grey",
                alpha=0.15,
                lw=0,
                label="probation (training)" if a is ax else None,
            )


def plot_series(result: SeriesResult, out_dir: Path, optimised_threshold: float | None = None) -> Path:
    """Write ``out_dir/<group>/<file>.png`` for one ``SeriesResult``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group, _, file = result.name.rpartition("/")
    path = Path(out_dir) / group / (Path(file).stem + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    t = result.timestamps
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(14, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot(t, result.values, lw=0.7, color="tab:blue", label="value")
    ax.plot(t, result.predicted, lw=0.7, color="tab:orange", alpha=0.8, label="forecast")
    _shade_spans(result, ax, ax2)
    f = np.flatnonzero(result.flag)
    ax.scatter(t[f], result.values[f], color="red", s=30, zorder=5, label=f"flag ({len(f)})")
    ax.set_ylabel("value")
    ax.set_title(
        f"{result.name}  -  {len(result.windows)} windows, {len(f)} flags, {result.retrains} retrains", fontsize=10
    )
    ax.legend(loc="upper left", fontsize=8, ncol=5)
    ax2.plot(t, result.anomaly_score, lw=0.7, color="tab:purple", label="anomaly score")
    ax2.axhline(result.threshold, color="red", ls="--", lw=0.8, label=f"own threshold {result.threshold:.2f}")
    if optimised_threshold is not None and np.isfinite(optimised_threshold):
        ax2.axhline(
            optimised_threshold, color="black", ls=":", lw=0.8, label=f"label-optimised {optimised_threshold:.3f}"
        )
    ax2.scatter(t[f], result.anomaly_score[f], color="red", s=12, zorder=5)
    ax2.set_ylim(-0.02, 1.05)
    ax2.set_ylabel("score")
    ax2.legend(loc="upper left", fontsize=8, ncol=3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
