"""Replay labelled series through the live scorer's ``StreamingDetector``, NAB rules.

Long (about 470 lines) because it holds the replay's config and result types, the per-file replay
(split into model, rows and result steps) and the parallel corpus runner.

Per file (one series, rows in time order):

* rows ``[0, P)`` with ``P = min(floor(0.15 n), 750)`` are NAB's probationary period: the first
  model is ``models.forecasting.training.fit`` on exactly those rows, and they are fed to the detector with
  ``alert=False`` (state only, never a flag);
* the remaining rows are fed in chunks through ``StreamingDetector.process`` - the code the Kafka
  scorer runs - so every score comes from state built only from the past;
* every ``retrain_every`` rows after probation (0 = never) the model is re-fitted on all rows seen
  so far (warm-started from the serving model, as the retraining DAG does) and installed with
  ``StreamingDetector.swap_model`` between two chunks;
* the anomaly score in [0, 1] and the flag are the detector's own ``BatchResult.score`` /
  ``is_anomaly`` (``threshold_method="likelihood"``: ``models.detection.thresholds.error_likelihood``), i.e.
  exactly what the live scorer would have emitted; ``ReplayConfig.post`` holds overrides of its
  ``LikelihoodConfig`` (passed as ``DetectorConfig.likelihood``).

Rows whose timestamp or value cannot be parsed are dropped at load time and counted (``dropped``);
rows the detector refuses (duplicate / out-of-order timestamp) get score 0 and are counted too.
``run_corpus`` runs files in parallel worker processes (one torch thread each) with a rich bar;
a file that fails is reported with its error, the others still complete.

Which model serves a file (``ReplayConfig.model_source``: a per-file model, a fleet model trained on
other series, or the fleet model fine-tuned on the probation) is described in
``pipeline.backtest.fleet``; the per-file model (the default) needs ``probation >= window + 8`` rows.

Warm-up (``ReplayConfig.warmup``). A series may flag only once (a) the detector has taken
``DetectorConfig.warmup_events`` values (default: the model window) and (b) the likelihood step has
seen ``LikelihoodConfig.warmup`` errors (default 100). Both count every row fed, the probationary rows
included, so on a file of n rows with probation P = min(floor(0.15 n), 750) the first row that may
flag is max(P, window, 100): row 100 of a 100-row file (it never flags), row 100 of a 400-row file
(P = 60). ``warmup="probation"`` caps both at P, so every series may flag from the first row after
NAB's probation (the likelihood statistics then rest on P errors only: 15 on a 100-row file).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.backtest import fleet as fleet_mod
from pipeline.backtest.nab_scoring import probation_length, window_indices

if TYPE_CHECKING:
    from collections.abc import Iterator

    from models.detection.detector import DetectorConfig, StreamingDetector
    from models.forecasting.bundle import ModelBundle
    from models.forecasting.forecasters import ForecasterConfig

WARMUPS = ("default", "probation")


@dataclass
class ReplayConfig:
    """How a backtest replays one series (picklable: sent to worker processes)."""

    kind: str = "many-to-many"
    window: int = 32
    hidden: int = 32
    calendar: bool = (
        False  # models.forecasting.calendar time-of-day/week input features (ForecasterConfig.calendar_features)
    )
    calendar_week: bool = True  # with calendar: include the day-of-week columns (ForecasterConfig.calendar_week)
    epochs: int = 10
    retrain_every: int = 0  # rows between re-fits after probation; 0 = only the probation model
    retrain_epochs: int = 3
    chunk: int = 256  # rows per StreamingDetector.process call
    seed: int = 0
    detector: dict = field(default_factory=dict)  # DetectorConfig overrides
    post: dict = field(default_factory=dict)  # LikelihoodConfig overrides (-> DetectorConfig.likelihood)
    fit: dict = field(
        default_factory=dict
    )  # extra models.forecasting.training.fit keyword arguments (batch_size, lr, ...)
    model: dict = field(default_factory=dict)  # extra ForecasterConfig fields (residual, layers, ...)
    model_source: str = "per-file"  # "per-file" | "fleet" | "fleet-finetune" (pipeline.backtest.fleet)
    fleet_registry: str | None = None  # fleet model from a registry root (its champion of fleet_model) ...
    fleet_model: str | None = None  # ... unless a bundle is passed to run_corpus / replay_file (fleet=)
    fleet_normalizer: str = "probation"  # series unseen by the fleet model: "probation" (mean, std) | "online"
    warmup: str = "default"  # "default": warm-ups as configured | "probation": capped at the probation length

    def __post_init__(self) -> None:
        if self.model_source not in fleet_mod.MODEL_SOURCES:
            raise ValueError(f"model_source must be one of {fleet_mod.MODEL_SOURCES}, got {self.model_source!r}")
        if self.fleet_normalizer not in fleet_mod.FLEET_NORMALIZERS:
            raise ValueError(
                f"fleet_normalizer must be one of {fleet_mod.FLEET_NORMALIZERS}, got {self.fleet_normalizer!r}"
            )
        if self.warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {WARMUPS}, got {self.warmup!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SeriesResult:
    """Everything a backtest produced for one file; arrays are ``(n,)`` in row order."""

    name: str  # NAB key: "<group>/<file>.csv"
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray
    predicted: np.ndarray  # detector forecast, raw units (NaN where none)
    error: np.ndarray  # |value - predicted|, raw units
    detector_score: np.ndarray  # StreamingDetector's score as emitted (NaN where refused)
    detector_flag: np.ndarray  # StreamingDetector's is_anomaly
    detector_threshold: float
    anomaly_score: np.ndarray  # the detector's score for NAB: 0 in probation / refused rows
    flag: np.ndarray  # the detector's flag (its own threshold)
    threshold: float  # the detector's threshold (anomaly_score units)
    label: np.ndarray  # bool: row inside a labelled window
    windows: list[tuple[int, int]]  # inclusive row ranges of the label windows
    probation: int
    dropped: int = 0  # unparseable rows removed at load
    refused: int = 0  # rows the detector refused (duplicate/out-of-order)
    retrains: int = 0
    fit_seconds: float = 0.0
    replay_seconds: float = 0.0
    model: str = "per-file"  # what served the file: per-file | fleet | fleet-finetune


def load_series(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """NAB CSV (``timestamp,value``) -> ``(timestamps datetime64[ns] (n,), values (n,), dropped)``.

    Unparseable timestamps and non-finite values are dropped (counted), rows sorted by time.
    """
    import pandas as pd

    df = pd.read_csv(path)
    if "timestamp" not in df.columns or "value" not in df.columns:
        raise ValueError(f"{path}: expected columns timestamp,value; got {list(df.columns)}")
    ts = pd.to_datetime(df["timestamp"], errors="coerce")
    val = pd.to_numeric(df["value"], errors="coerce")
    ok = ts.notna() & np.isfinite(val.to_numpy(dtype=np.float64, na_value=np.nan))
    ts, val = ts[ok], val[ok]
    order = np.argsort(ts.to_numpy(), kind="stable")
    return ts.to_numpy()[order].astype("datetime64[ns]"), val.to_numpy(dtype=np.float64)[order], int((~ok).sum())


def nab_key(path: Path) -> str:
    """``data/realTraffic/speed_7578.csv`` -> ``realTraffic/speed_7578.csv`` (the labels' key)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block (training and scoring) with torch at ``n`` threads, then restore the count.
    ``fit`` is told the same count (``num_threads``) and restores what it found on return."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def forecaster_config(cfg: ReplayConfig) -> ForecasterConfig:
    """The ``ForecasterConfig`` a replay trains (per-file model, fleet model)."""
    from models.forecasting.forecasters import ForecasterConfig

    return ForecasterConfig(
        kind=cfg.kind,
        window=cfg.window,
        hidden=cfg.hidden,
        calendar_features=cfg.calendar,
        calendar_week=cfg.calendar_week,
        **cfg.model,
    )


@dataclass
class _Series:
    """One file as the replay feeds it: the series id, values ``(n,)`` and their epoch seconds ``(n,)``."""

    name: str
    values: np.ndarray
    epoch_s: np.ndarray
    probation: int


@dataclass
class _Replayed:
    """What the detector emitted over a file's rows, all ``(n,)``, and what the replay counted."""

    predicted: np.ndarray
    error: np.ndarray
    score: np.ndarray
    flag: np.ndarray
    refused: int = 0
    retrains: int = 0
    retrain_seconds: float = 0.0


def _fit(
    config: ForecasterConfig,
    data: _Series,
    rows: int,
    epochs: int,
    cfg: ReplayConfig,
    fit_kwargs: dict[str, Any],
    warm_start: ModelBundle | None = None,
) -> ModelBundle:
    """``models.forecasting.training.fit`` on the first ``rows`` values of the file (quiet, CPU)."""
    from models.forecasting.training import fit

    bundle, _ = fit(
        config,
        {data.name: data.values[:rows]},
        epochs=epochs,
        seed=cfg.seed,
        warm_start=warm_start,
        progress=False,
        device="cpu",
        name="backtest",
        timestamps={data.name: data.epoch_s[:rows]},
        **fit_kwargs,
    )
    return bundle


def _first_model(
    cfg: ReplayConfig, fleet: ModelBundle | None, data: _Series, fit_kwargs: dict[str, Any]
) -> tuple[ModelBundle, str]:
    """The model serving the file from its first row, and its source (``SeriesResult.model``)."""
    p = data.probation
    if fleet is None:
        return _fit(forecaster_config(cfg), data, p, cfg.epochs, cfg, fit_kwargs), "per-file"
    if cfg.model_source == "fleet-finetune" and p >= fleet_mod.min_train_rows(fleet.config.window):
        return _fit(fleet.config, data, p, cfg.retrain_epochs, cfg, fit_kwargs, warm_start=fleet), "fleet-finetune"
    return fleet_mod.for_series(fleet, data.name, data.values[:p], cfg.fleet_normalizer), "fleet"


def _replay_rows(
    det: StreamingDetector, bundle: ModelBundle, cfg: ReplayConfig, data: _Series, fit_kwargs: dict[str, Any]
) -> _Replayed:
    """Feed the file's rows in chunks (probation with ``alert=False``), re-fitting every
    ``retrain_every`` rows after probation and swapping the model in between two chunks."""
    n, probation = len(data.values), data.probation
    out = _Replayed(np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool))
    retrain_at = set(range(probation + cfg.retrain_every, n, cfg.retrain_every)) if cfg.retrain_every > 0 else set()
    cuts = sorted({0, probation, n} | retrain_at | set(range(0, n, cfg.chunk)))
    for a, b in itertools.pairwise(cuts):
        if a in retrain_at and a >= fleet_mod.min_train_rows(int(bundle.config.window)):
            t2 = time.perf_counter()
            bundle = _fit(bundle.config, data, a, cfg.retrain_epochs, cfg, fit_kwargs, warm_start=bundle)
            det.swap_model(bundle)
            out.retrain_seconds += time.perf_counter() - t2
            out.retrains += 1
        res = det.process([data.name] * (b - a), data.epoch_s[a:b], data.values[a:b], alert=a >= probation)
        out.predicted[a:b], out.error[a:b] = res.predicted, res.error
        out.score[a:b], out.flag[a:b] = res.score, res.is_anomaly
        out.refused += int(np.sum(res.status >= 2))
    return out


def replay_file(
    path: Path,
    windows: list[Any],
    cfg: ReplayConfig,
    threads: int | None = None,
    fleet: ModelBundle | None = None,
) -> SeriesResult:
    """Replay one file; ``windows`` are the file's label windows (timestamp pairs).

    ``fleet``: the ``ModelBundle`` of ``model_source="fleet"`` / ``"fleet-finetune"`` (else the registry
    model named in ``cfg``); ignored for ``"per-file"``.
    """
    from models.detection.detector import StreamingDetector

    name = nab_key(path)
    fleet = fleet_mod.resolve_fleet(cfg, fleet)
    ts, values, dropped = load_series(path)
    n = len(values)
    probation = probation_length(n)
    if fleet is None and probation < fleet_mod.min_train_rows(cfg.window):
        raise ValueError(
            f"{name}: {n} rows give a probationary period of {probation} rows, "
            f"too short to train a window-{cfg.window} model; model_source='fleet' scores it "
            "with a model trained on other series"
        )
    data = _Series(name, values, ts.astype("datetime64[ns]").astype(np.int64) / 1e9, probation)
    fit_kwargs = {**cfg.fit, **({"num_threads": threads} if threads else {})}
    ctx = _torch_threads(threads) if threads else contextlib.nullcontext()
    with ctx:
        t0 = time.perf_counter()
        bundle, source = _first_model(cfg, fleet, data, fit_kwargs)
        fit_s = time.perf_counter() - t0
        det = StreamingDetector(bundle, detector_config(cfg, probation=probation, window=int(bundle.config.window)))
        t1 = time.perf_counter()
        out = _replay_rows(det, bundle, cfg, data, fit_kwargs)
        fit_s += out.retrain_seconds
        replay_s = time.perf_counter() - t1 - (fit_s - (t1 - t0))
    return _series_result(data, ts, windows, det, out, dropped, fit_s, replay_s, source)


def _series_result(
    data: _Series,
    ts: np.ndarray,
    windows: list[Any],
    det: StreamingDetector,
    out: _Replayed,
    dropped: int,
    fit_s: float,
    replay_s: float,
    source: str,
) -> SeriesResult:
    """The ``SeriesResult`` of a replayed file: NAB's score (0 in probation / refused rows) and labels."""
    n, probation = len(data.values), data.probation
    score = np.nan_to_num(out.score, nan=0.0)
    score[:probation] = 0.0
    win_idx = window_indices(ts, windows)
    label = np.zeros(n, dtype=bool)
    for lo, hi in win_idx:
        label[lo : hi + 1] = True
    threshold = float(det.config.threshold_value)
    return SeriesResult(
        name=data.name,
        timestamps=ts,
        values=data.values,
        predicted=out.predicted,
        error=out.error,
        detector_score=out.score,
        detector_flag=out.flag,
        detector_threshold=threshold,
        anomaly_score=score,
        flag=out.flag.copy(),
        threshold=threshold,
        label=label,
        windows=win_idx,
        probation=probation,
        dropped=dropped,
        refused=out.refused,
        retrains=out.retrains,
        fit_seconds=fit_s,
        replay_seconds=replay_s,
        model=source,
    )


def detector_config(cfg: ReplayConfig, probation: int | None = None, window: int | None = None) -> DetectorConfig:
    """``DetectorConfig`` of a replay: likelihood method, ``cfg.detector`` overrides, ``cfg.post`` merged
    into ``likelihood``. With ``cfg.warmup="probation"`` and a ``probation`` length, the detector's
    ``warmup_events`` (as set, else ``window``) and the likelihood ``warmup`` are capped at it."""
    from models.detection.detector import DetectorConfig
    from models.detection.thresholds.error_likelihood import LikelihoodConfig

    over: dict[str, Any] = {"threshold_method": "likelihood", **cfg.detector}
    post = dict(cfg.post)
    if "threshold" in post:  # the likelihood threshold is the detector's threshold
        over["threshold"] = post.pop("threshold")
    if post:
        over["likelihood"] = {**over.get("likelihood", {}), **post}
    if cfg.warmup == "probation" and probation is not None:
        events = over.get("warmup_events")
        events = window if events is None else events
        if events is not None:
            over["warmup_events"] = min(int(events), probation)
        lik = dict(over.get("likelihood", {}))
        lik["warmup"] = min(int(lik.get("warmup", LikelihoodConfig.warmup)), probation)
        over["likelihood"] = lik
    return DetectorConfig(**over)


_WORKER_FLEET: ModelBundle | None = None  # the fleet bundle of this worker process (unpickled once, by _worker_init)


def _worker_init(fleet_blob: bytes | None = None) -> None:
    import torch

    global _WORKER_FLEET
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_FLEET = fleet_mod.unpack(fleet_blob)


def _replay_job(
    path: str, windows: list[Any], cfg: ReplayConfig, fleet: ModelBundle | None = None
) -> tuple[SeriesResult | None, str | None]:
    try:
        fleet = fleet if fleet is not None else _WORKER_FLEET
        return replay_file(Path(path), windows, cfg, threads=1, fleet=fleet), None
    except Exception as exc:  # reported per file; the corpus run goes on
        return None, f"{nab_key(Path(path))}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"


def _labelled_jobs(paths: list[Path], labels: dict[str, list], errors: list[str]) -> list[tuple[Path, list]]:
    """``(path, windows)`` per labelled file, biggest first (better packing); unlabelled files go to ``errors``."""
    jobs = []
    for p in paths:
        key = nab_key(p)
        if key not in labels:
            errors.append(f"{key}: not in the labels file")
            continue
        jobs.append((p, labels[key]))
    jobs.sort(key=lambda j: -Path(j[0]).stat().st_size)
    return jobs


def _progress_bar(progress: bool) -> Any:
    """The backtest's rich progress bar (disabled when ``progress`` is false)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]backtest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        disable=not progress,
    )


def run_corpus(
    paths: list[Path],
    labels: dict[str, list],
    cfg: ReplayConfig,
    *,
    workers: int = 2,
    progress: bool = True,
    fleet: ModelBundle | None = None,
) -> tuple[list[SeriesResult], list[str]]:
    """Replay ``paths`` (largest first, ``workers`` processes); returns ``(results, errors)``.

    ``labels`` maps NAB keys to window lists; a file missing from it is an error (not silently
    scored as anomaly-free). ``fleet``: the fleet ``ModelBundle`` of a fleet ``model_source`` (else the
    registry model named in ``cfg`` is loaded once here); sent to each worker once, pickled.
    """
    fleet = fleet_mod.resolve_fleet(cfg, fleet)
    errors: list[str] = []
    jobs = _labelled_jobs(paths, labels, errors)
    results: list[SeriesResult] = []
    bar = _progress_bar(progress)
    with bar:
        task = bar.add_task("backtest", total=len(jobs), last="")
        if workers <= 1:
            for p, w in jobs:
                r, err = _replay_job(str(p), w, cfg, fleet)
                _collect(r, err, results, errors)
                bar.update(task, advance=1, last=nab_key(Path(p)))
        else:
            with ProcessPoolExecutor(
                max_workers=workers, initializer=_worker_init, initargs=(fleet_mod.pack(fleet),)
            ) as pool:
                futs = {pool.submit(_replay_job, str(p), w, cfg): p for p, w in jobs}
                for fut in as_completed(futs):
                    r, err = fut.result()
                    _collect(r, err, results, errors)
                    bar.update(task, advance=1, last=nab_key(Path(futs[fut])))
    results.sort(key=lambda r: r.name)
    return results, errors


def _collect(r: SeriesResult | None, err: str | None, results: list[SeriesResult], errors: list[str]) -> None:
    if err is not None:
        errors.append(err)
    elif r is not None:
        results.append(r)


def find_csvs(paths: list[Path]) -> list[Path]:
    """Expand directories into the CSV files below them (sorted); files are kept as given."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        out.extend(sorted(p.rglob("*.csv")) if p.is_dir() else [p])
    return out
