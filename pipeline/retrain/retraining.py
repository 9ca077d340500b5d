"""Retraining logic behind the Airflow DAG ``dags/retrain_forecasters.py``, as plain functions.

Flow for one data interval (every step idempotent for that interval):

1. ``plan(settings, interval_start, interval_end)``: the training range is
   ``[min(interval_start, interval_end - lookback), interval_end)``; the held-out slice is its most
   recent ``holdout_fraction`` (by time, over all series). Raises ``NotEnoughDataError`` (the DAG
   turns it into a skip) when no series has ``min_points`` values before the cut and
   ``min_holdout_points`` after it.
2. ``train_candidate(settings, plan, job)`` for each job = (model group, kind): fits the forecaster
   (``models.forecasting.training.fit``, device "auto": CUDA when present, else CPU) on the training part of
   the group's series, evaluates it and the current champion on the held-out slice
   (``evaluate``), and registers it (not promoted) with the figures in meta.json ``metrics``,
   under ``idempotency_key = f"{kind}:{interval_start}:{interval_end}"``. A re-run finds that
   version and neither trains nor writes anything.
3. ``promote_if_better(settings, plan, candidate)``: promotes through ``ModelRegistry.promote``
   (atomic pointer) when there is no usable champion, or the candidate's held-out normalised MAE
   is lower by ``min_improvement`` (relative) and, with labels configured, its detection F1 is not
   lower. A champion trained on newer data is never replaced by an older interval's candidate.
   Running scorers hot-reload the new champion.
4. ``record_figures(settings, outcomes)``: ``RetrainMetrics`` (last success, candidate/champion
   error, promotions = champion changes in the registry) pushed to ``TSAD_PUSHGATEWAY_URL`` when
   set, else written atomically to ``TSAD_RETRAIN_TEXTFILE`` (node-exporter textfile collector).

Registry names are ``f"{group}-{kind}"`` (e.g. ``default-many-to-one``); serve one with
``tsad serve --model default-many-to-one``. Errors are "normalised MAE": mean absolute error in raw
units divided by the series' std over the training part (the same scale for candidate and
champion), averaged over series. Shapes: series values ``(time,)``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

KINDS = ("many-to-one", "many-to-many")


class NotEnoughDataError(Exception):
    """The archive holds too little data for the interval; the message says what was found."""


class RetrainSettings(BaseSettings):
    """Retraining knobs: environment ``TSAD_RETRAIN_*`` (paths: ``TSAD_ARCHIVE_DIR`` etc.), then DAG params."""

    model_config = SettingsConfigDict(env_prefix="TSAD_RETRAIN_", extra="ignore", populate_by_name=True)

    archive_dir: str = Field("var/archive", validation_alias="TSAD_ARCHIVE_DIR")
    registry_dir: str = Field("var/registry", validation_alias="TSAD_REGISTRY_DIR")
    pushgateway_url: str | None = Field(None, validation_alias="TSAD_PUSHGATEWAY_URL")
    textfile: str = "var/metrics/tsad_retrain.prom"
    groups: dict[str, str] = {"default": "*"}  # group -> fnmatch pattern over series ids (JSON in env)
    # routing file (models.routing): when set, its groups replace ``groups`` and each group trains on
    # exactly the series routed to it (first matching route), as ``tsad serve --routing`` scores them
    routing: str | None = Field(None, validation_alias="TSAD_ROUTING")
    kinds: list[str] = list(KINDS)  # JSON list in env
    lookback_hours: float = 24 * 7
    holdout_fraction: float = 0.2
    min_points: int = 256  # values per series before the held-out cut
    min_holdout_points: int = 32
    window: int = 64
    hidden: int = 64
    layers: int = 1
    epochs: int = 10
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    labels: str | None = None  # NAB combined_windows.json: enables detection F1
    min_improvement: float = 0.0  # relative nMAE improvement a candidate needs

    def jobs(self) -> list[dict]:
        """One training job per (group, kind), in a stable order."""
        for kind in self.kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        groups: dict = self.groups
        if self.routing:
            from models.routing import Routing

            groups = Routing.load(self.routing).retrain_groups()
        return [
            {"group": g, "pattern": p, "kind": k, "name": model_name(g, k)}
            for g, p in sorted(groups.items())
            for k in self.kinds
        ]


def select_job_series(settings: RetrainSettings, data: SeriesSet, job: dict) -> SeriesSet:
    """The series ``job`` trains on: those the routing file routes to its group, else those matching
    its glob(s) (``TSAD_RETRAIN_GROUPS``, overlapping groups allowed)."""
    if settings.routing:
        from models.routing import Routing

        routing = Routing.load(settings.routing)
        return SeriesSet({s: v for s, v in data.series.items() if routing.group_of(s) == job["group"]})
    patterns = [job["pattern"]] if isinstance(job["pattern"], str) else list(job["pattern"])
    return SeriesSet({s: v for s, v in data.series.items() if any(fnmatch.fnmatchcase(s, p) for p in patterns)})


def model_name(group: str, kind: str) -> str:
    return f"{group}-{kind}"


def load_settings(params: dict | None = None) -> RetrainSettings:
    """Environment settings overridden by non-None DAG params."""
    return RetrainSettings(**{k: v for k, v in (params or {}).items() if v is not None})


# -- plan --------------------------------------------------------------------------------------


def _iso(moment: datetime | str) -> str:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass
class SeriesSet:
    """Regularised series of the training range: id -> (grid epoch seconds (time,), values (time,))."""

    series: dict[str, tuple[np.ndarray, np.ndarray]]

    def select(self, pattern: str) -> SeriesSet:
        return SeriesSet({s: v for s, v in self.series.items() if fnmatch.fnmatchcase(s, pattern)})


def load_series(archive_dir: str, start: str, end: str) -> SeriesSet:
    """Archive events in [start, end) per series, on a regular grid (gaps NaN, duplicate ts: last)."""
    from models.forecasting.windows import regularize
    from pipeline.archive.format import read_archive

    frame = read_archive(archive_dir, start, end)
    out = {}
    for sid, group in frame.groupby("series", sort=True):
        ts_ns = np.rint(group["ts"].to_numpy() * 1e9).astype(np.int64)
        grid, values = regularize(ts_ns, group["value"].to_numpy())
        out[str(sid)] = (grid / 1e9, values)
    return SeriesSet(out)


def plan(settings: RetrainSettings, interval_start, interval_end) -> dict:
    """Training range, held-out cut and per-series counts for a data interval (JSON-able dict)."""
    end = datetime.fromisoformat(_iso(interval_end))
    start = min(datetime.fromisoformat(_iso(interval_start)), end - timedelta(hours=settings.lookback_hours))
    data = load_series(settings.archive_dir, start.isoformat(), end.isoformat())
    if not data.series:
        raise NotEnoughDataError(
            f"no archived events in [{start.isoformat()}, {end.isoformat()}) under {settings.archive_dir}"
        )
    t_min = min(ts[0] for ts, _ in data.series.values())
    t_max = max(ts[-1] for ts, _ in data.series.values())
    cut = t_min + (t_max - t_min) * (1.0 - settings.holdout_fraction)
    eligible, counts = [], {}
    for sid, (ts, values) in data.series.items():
        ok = ~np.isnan(values)
        n_train, n_hold = int((ok & (ts < cut)).sum()), int((ok & (ts >= cut)).sum())
        counts[sid] = [n_train, n_hold]
        if n_train >= settings.min_points and n_hold >= settings.min_holdout_points:
            eligible.append(sid)
    if not eligible:
        raise NotEnoughDataError(
            f"too little data in [{start.isoformat()}, {end.isoformat()}): {len(data.series)} series, "
            f"none with >= {settings.min_points} values before the held-out cut and >= "
            f"{settings.min_holdout_points} after it (train/held-out counts: {dict(list(counts.items())[:5])})"
        )
    return {
        "interval_start": _iso(interval_start),
        "interval_end": _iso(interval_end),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "cut": cut,
        "cut_iso": _iso(datetime.fromtimestamp(cut, UTC)),
        "series": eligible,
        "counts": counts,
    }


# -- evaluation --------------------------------------------------------------------------------


def _label_windows(path: str | None) -> dict[str, list[tuple[float, float]]]:
    """NAB label windows keyed by series id (file stem) -> [(start, end) epoch seconds]."""
    from models.forecasting.data import load_label_windows

    if not path:
        return {}
    return {Path(key).stem: windows for key, windows in load_label_windows(path).items()}


def _event_counts(ts: np.ndarray, flags: np.ndarray, windows: list[tuple[float, float]]) -> tuple[int, int, int]:
    """(tp, fp, fn) by ``models.forecasting.evaluation.window_prf``: windows with rows in ``ts`` caught/missed, FP runs."""
    from models.forecasting.evaluation import window_of_rows, window_prf

    prf = window_prf(flags, window_of_rows(ts, windows))
    return prf.caught, prf.fp_runs, prf.missed


def evaluate(bundle, data: SeriesSet, cut: float, labels: dict | None = None) -> dict:
    """Held-out figures of ``bundle`` on ``data`` after time ``cut``: nmae (and f1 with labels)."""
    from models.forecasting.inference import prediction_errors
    from models.forecasting.windows import SeriesNormalizer

    window = int(bundle.config.window)
    # many-to-one needs one window of context; many-to-many a burn-in for its recurrent state
    context = window if bundle.kind == "many-to-one" else 8 * window
    threshold = (bundle.calibration or {}).get("threshold")
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
            a, b, d = _event_counts(ts[c:], flags, labels[sid])
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


def _champion(registry, name: str):
    """(bundle, None) for the current champion, (None, reason) when there is none or it cannot load."""
    from models.registry import RegistryError

    try:
        version = registry.champion(name)
        if version is None:
            return None, "no champion"
        return registry.load(name, version), None
    except RegistryError as error:
        return None, f"champion unusable: {error}"


# -- train -------------------------------------------------------------------------------------


def idempotency_key(kind: str, the_plan: dict) -> str:
    return f"{kind}:{the_plan['interval_start']}:{the_plan['interval_end']}"


def train_candidate(settings: RetrainSettings, the_plan: dict, job: dict) -> dict:
    """Fit, evaluate against the champion, register (unpromoted). Re-runs return the registered version."""
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    name, kind = job["name"], job["kind"]
    key = idempotency_key(kind, the_plan)
    for row in registry.list(name):
        if row.idempotency_key == key and row.ok:
            log.info("%s: interval already trained as v%d (key %s); nothing to do", name, row.version, key)
            return {**job, "version": row.version, "metrics": row.metrics, "reused": True}

    import torch  # noqa: F401 - heavy imports only when we really train

    from models.forecasting.forecasters import ForecasterConfig
    from models.forecasting.training import fit

    data = load_series(settings.archive_dir, the_plan["start"], the_plan["end"])
    data = SeriesSet(
        {s: v for s, v in select_job_series(settings, data, job).series.items() if s in set(the_plan["series"])}
    )
    if not data.series:
        raise NotEnoughDataError(f"{name}: no eligible series match pattern {job['pattern']!r}")
    cut = the_plan["cut"]
    train = {sid: values[: int(np.searchsorted(ts, cut))] for sid, (ts, values) in data.series.items()}
    config = ForecasterConfig(kind=kind, window=settings.window, hidden=settings.hidden, layers=settings.layers)
    bundle, report = fit(
        config,
        train,
        epochs=settings.epochs,
        device=settings.device,
        seed=settings.seed,
        progress=False,
        name=name,
        batch_size=settings.batch_size,
    )
    labels = _label_windows(settings.labels) if settings.labels else None
    candidate_figures = evaluate(bundle, data, cut, labels)
    champion, why_not = _champion(registry, name)
    champion_figures = evaluate(champion, data, cut, labels) if champion is not None else None
    metrics = {
        "holdout_nmae": candidate_figures["nmae"],
        "holdout_f1": candidate_figures["f1"],
        "holdout_series": candidate_figures["series"],
        "holdout_from": the_plan["cut_iso"],
        "champion_version": champion.version if champion is not None else None,
        "champion_holdout_nmae": champion_figures["nmae"] if champion_figures else None,
        "champion_holdout_f1": champion_figures["f1"] if champion_figures else None,
        "champion_note": why_not,
        "train_device": report.device,
        "train_epochs": report.epochs,
        "train_wall_time_s": report.wall_time_s,
        "train_windows_per_s": report.windows_per_s,
        "evaluated_at": datetime.now(UTC).isoformat(),
    }
    version = registry.register(
        bundle,
        metrics,
        idempotency_key=key,
        data_range=(the_plan["start"], the_plan["end"]),
        interval_id=f"{the_plan['interval_start']}/{the_plan['interval_end']}",
    )
    log.info(
        "%s: registered candidate v%d (nMAE %.4f vs champion %s) trained on %s in %.1fs",
        name,
        version,
        candidate_figures["nmae"] or math.nan,
        metrics["champion_holdout_nmae"],
        report.device,
        report.wall_time_s,
    )
    return {**job, "version": version, "metrics": {**bundle.metrics, **metrics}, "reused": False}


# -- promote -----------------------------------------------------------------------------------


@dataclass
class Decision:
    name: str
    candidate: int
    champion_before: int | None
    promoted: bool
    reason: str
    candidate_nmae: float | None
    champion_nmae: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def decide(metrics: dict, min_improvement: float) -> tuple[bool, str]:
    """Is the candidate (its registered held-out figures) better than the champion it was compared to?"""
    cand, champ = metrics.get("holdout_nmae"), metrics.get("champion_holdout_nmae")
    if metrics.get("champion_version") is None:
        return True, metrics.get("champion_note") or "no champion"
    if cand is None:
        return False, "candidate has no held-out error"
    if champ is not None and not cand < champ * (1.0 - min_improvement):
        return False, f"held-out nMAE {cand:.4f} not better than champion's {champ:.4f}"
    f1, champ_f1 = metrics.get("holdout_f1"), metrics.get("champion_holdout_f1")
    if f1 is not None and champ_f1 is not None and f1 < champ_f1:
        return False, f"detection F1 {f1:.3f} below champion's {champ_f1:.3f}"
    return True, f"held-out nMAE {cand:.4f} < champion's {champ if champ is not None else float('nan'):.4f}"


def promote_if_better(settings: RetrainSettings, the_plan: dict, candidate: dict) -> Decision:
    """Promote the candidate when it beats the champion it was evaluated against (atomic, via the registry).

    If the champion changed since the evaluation (another run promoted meanwhile), the candidate is
    re-evaluated against the new champion first.
    """
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    name, version = candidate["name"], candidate["version"]
    metrics = dict(registry.meta(name, version).get("metrics", {}))
    current = registry.champion(name)
    base = Decision(
        name, version, current, False, "", metrics.get("holdout_nmae"), metrics.get("champion_holdout_nmae")
    )
    if current == version:
        base.reason = "already champion"
        return base
    if current is not None and current > version:
        champ_meta = registry.meta(name, current)
        champ_end = (champ_meta.get("data_range") or [None, None])[1]
        if champ_end is not None and champ_end > the_plan["end"]:
            base.reason = f"champion v{current} was trained on newer data (to {champ_end})"
            return base
    if current != metrics.get("champion_version"):
        champion, why_not = _champion(registry, name)
        if champion is None:
            metrics.update(champion_version=None, champion_note=why_not)
        else:
            data = load_series(settings.archive_dir, the_plan["start"], the_plan["end"]).select(candidate["pattern"])
            data = SeriesSet({s: v for s, v in data.series.items() if s in set(the_plan["series"])})
            labels = _label_windows(settings.labels) if settings.labels else None
            figures = evaluate(champion, data, the_plan["cut"], labels)
            metrics.update(
                champion_version=current, champion_holdout_nmae=figures["nmae"], champion_holdout_f1=figures["f1"]
            )
            base.champion_nmae = figures["nmae"]
    ok, reason = decide(metrics, settings.min_improvement)
    base.reason = reason
    if ok:
        registry.promote(name, version)
        base.promoted = True
        log.info("%s: promoted v%d (%s)", name, version, reason)
    else:
        log.info("%s: kept champion v%s (%s)", name, current, reason)
    return base


# -- figures for ops ----------------------------------------------------------------------------


def record_figures(settings: RetrainSettings, decisions: list[dict], now: float | None = None) -> str:
    """Push (``pushgateway_url``) or write (``textfile``) RetrainMetrics; returns where they went."""
    from prometheus_client import push_to_gateway, write_to_textfile

    from models.registry import ModelRegistry
    from pipeline.metrics import RetrainMetrics

    metrics = RetrainMetrics()
    registry = ModelRegistry(settings.registry_dir)
    now = time.time() if now is None else now
    for d in decisions:
        name = d["name"]
        metrics.last_success.labels(model=name).set(now)
        if d.get("candidate_nmae") is not None:
            metrics.candidate_error.labels(model=name).set(d["candidate_nmae"])
        if d.get("champion_nmae") is not None:
            metrics.champion_error.labels(model=name).set(d["champion_nmae"])
        # a counter over runs: every champion change the registry remembers (history + current)
        pointer = Path(settings.registry_dir) / name / "champion.json"  # {"version", "history"}
        history = json.loads(pointer.read_text()).get("history", []) if pointer.is_file() else []
        changes = len(history) + (1 if registry.champion(name) is not None else 0)
        metrics.promotions.labels(model=name).inc(changes)
    if settings.pushgateway_url:
        push_to_gateway(settings.pushgateway_url, job="tsad_retrain", registry=metrics.registry)
        return settings.pushgateway_url
    path = Path(settings.textfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), metrics.registry)  # writes a temp file and renames it into place
    return str(path)
