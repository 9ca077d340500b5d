"""Corpus report of a backtest: NAB scores (3 profiles x 2 ways of thresholding) and window P/R/F1.

* ``own``: the flags the detector raised with its own unsupervised threshold (what a user gets).
* ``optimised``: one corpus-wide threshold on ``anomaly_score`` chosen with the labels to maximise
  the score, per profile (the procedure behind NAB's public scoreboard).

Both come straight from ``StreamingDetector`` (score and ``is_anomaly``): the backtest measures
the live scorer's output, no separate post-processing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from models.forecasting.evaluation import WindowPRF
from pipeline.backtest.nab_scoring import PROFILES, point_table, score_corpus, window_prf

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.backtest.replay import SeriesResult


def _profile_scores(own: dict[str, Any], profile: Any) -> tuple[dict[str, Any], float | None]:
    """One NAB profile's scores with the detector's own threshold and the label-optimised one."""
    o = score_corpus(own, profile, optimise=False)
    b = score_corpus(own, profile, optimise=True)
    scores = {
        "own": {"score": o.normalised, "tp": o.tp, "fp": o.fp, "fn": o.fn, "per_file": o.per_file},
        "optimised": {
            "score": b.normalised,
            "threshold": b.threshold,
            "tp": b.tp,
            "fp": b.fp,
            "fn": b.fn,
            "per_file": b.per_file,
        },
    }
    return scores, b.threshold


def _prf(
    results: Sequence[SeriesResult], tables: dict[str, Any], flag_of: Callable[[SeriesResult], np.ndarray]
) -> dict[str, float]:
    """Window-level precision/recall/F1 over the corpus for the flags ``flag_of`` gives each file."""
    total = WindowPRF()
    for r in results:
        total = total + window_prf(flag_of(r), tables[r.name])
    return {
        "precision": total.precision,
        "recall": total.recall,
        "f1": total.f1,
        "caught": total.caught,
        "missed": total.missed,
        "fp_runs": total.fp_runs,
    }


def corpus_report(results: Sequence[SeriesResult]) -> dict[str, Any]:
    """Scores of a list of ``SeriesResult``; a plain dict (JSON-able after NaN cleaning)."""
    tables = {r.name: point_table(len(r.values), r.windows, r.probation) for r in results}
    own = {r.name: (r.anomaly_score, r.flag, tables[r.name]) for r in results}
    out: dict = {
        "files": len(results),
        "rows": int(sum(len(r.values) for r in results)),
        "windows": int(sum(t.n_windows for t in tables.values())),
        "nab": {},
        "prf": {},
    }
    opt_thr = {}
    for pname, profile in PROFILES.items():
        out["nab"][pname], opt_thr[pname] = _profile_scores(own, profile)
    thr = opt_thr["standard"]
    out["prf"]["own"] = _prf(results, tables, lambda r: r.flag)
    out["prf"]["optimised"] = _prf(results, tables, lambda r: np.nan_to_num(r.anomaly_score, nan=-np.inf) >= thr)
    out["timing"] = {
        "fit_seconds": float(sum(r.fit_seconds for r in results)),
        "replay_seconds": float(sum(r.replay_seconds for r in results)),
        "retrains": int(sum(r.retrains for r in results)),
        "dropped_rows": int(sum(r.dropped for r in results)),
        "refused_rows": int(sum(r.refused for r in results)),
    }
    return out


def render(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"NAB score ({report['files']} files, {report['rows']:,} rows, {report['windows']} windows)")
    t.add_column("profile")
    t.add_column("own threshold", justify="right")
    t.add_column("label-optimised", justify="right")
    t.add_column("opt. threshold", justify="right")
    for pname, d in report["nab"].items():
        thr = d["optimised"]["threshold"]
        t.add_row(
            pname,
            f"{d['own']['score']:.1f}",
            f"{d['optimised']['score']:.1f}",
            "none" if thr is None or not np.isfinite(thr) else f"{thr:.4f}",
        )
    console.print(t)
    p = Table(title="Window-level precision / recall / F1")
    for col in ("flags", "precision", "recall", "F1", "caught", "missed", "FP runs"):
        p.add_column(col, justify="right" if col != "flags" else "left")
    for key, label in (("own", "own threshold"), ("optimised", "label-optimised (standard)")):
        d = report["prf"][key]
        p.add_row(
            label,
            f"{d['precision']:.3f}",
            f"{d['recall']:.3f}",
            f"{d['f1']:.3f}",
            str(d["caught"]),
            str(d["missed"]),
            str(d["fp_runs"]),
        )
    console.print(p)
