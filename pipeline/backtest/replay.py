"""Replay labelled series through the live scorer's ``StreamingDetector``, NAB rules.

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
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.backtest import fleet as fleet_mod
from pipeline.backtest.nab_scoring import probation_length, window_indices

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
def _torch_threads(n: int):
    """Run the block (training and scoring) with torch at ``n`` threads, then restore the count.
    ``fit`` is told the same count (``num_threads``) and restores what it found on return."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def forecaster_config(cfg: ReplayConfig):
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


def replay_file(path: Path, windows: list, cfg: ReplayConfig, threads: int | None = None, fleet=None) -> SeriesResult:
    """Replay one file; ``windows`` are the file's label windows (timestamp pairs).

    ``fleet``: the ``ModelBundle`` of ``model_source="fleet"`` / ``"fleet-finetune"`` (else the registry
    model named in ``cfg``); ignored for ``"per-file"``.
    """
    from models.detection.detector import StreamingDetector
    from models.forecasting.training import fit

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
    epoch_s = ts.astype("datetime64[ns]").astype(np.int64) / 1e9
    series = name

    fit_kwargs = {**cfg.fit, **({"num_threads": threads} if threads else {})}
    ctx = _torch_threads(threads) if threads else contextlib.nullcontext()
    with ctx:
        t0 = time.perf_counter()
        if fleet is None:
            bundle, _ = fit(
                forecaster_config(cfg),
                {series: values[:probation]},
                epochs=cfg.epochs,
                seed=cfg.seed,
                progress=False,
                device="cpu",
                name="backtest",
                timestamps={series: epoch_s[:probation]},
                **fit_kwargs,
            )
            source = "per-file"
        elif cfg.model_source == "fleet-finetune" and probation >= fleet_mod.min_train_rows(fleet.config.window):
            bundle, _ = fit(
                fleet.config,
                {series: values[:probation]},
                epochs=cfg.retrain_epochs,
                seed=cfg.seed,
                warm_start=fleet,
                progress=False,
                device="cpu",
                name="backtest",
                timestamps={series: epoch_s[:probation]},
                **fit_kwargs,
            )
            source = "fleet-finetune"
        else:
            bundle = fleet_mod.for_series(fleet, series, values[:probation], cfg.fleet_normalizer)
            source = "fleet"
        fit_s = time.perf_counter() - t0
        det = StreamingDetector(bundle, detector_config(cfg, probation=probation, window=int(bundle.config.window)))

        predicted, error = np.full(n, np.nan), np.full(n, np.nan)
        dscore, dflag = np.full(n, np.nan), np.zeros(n, dtype=bool)
        refused = retrains = 0
        retrain_at = set(range(probation + cfg.retrain_every, n, cfg.retrain_every)) if cfg.retrain_every > 0 else set()
        cuts = sorted({0, probation, n} | retrain_at | set(range(0, n, cfg.chunk)))
        t1 = time.perf_counter()
        for a, b in zip(cuts[:-1], cuts[1:]):
            if a in retrain_at and a >= fleet_mod.min_train_rows(int(bundle.config.window)):
                t2 = time.perf_counter()
                bundle, _ = fit(
                    bundle.config,
                    {series: values[:a]},
                    epochs=cfg.retrain_epochs,
                    seed=cfg.seed,
                    warm_start=bundle,
                    progress=False,
                    device="cpu",
                    name="backtest",
                    timestamps={series: epoch_s[:a]},
                    **fit_kwargs,
                )
                det.swap_model(bundle)
                fit_s += time.perf_counter() - t2
                retrains += 1
            res = det.process([series] * (b - a), epoch_s[a:b], values[a:b], alert=a >= probation)
            predicted[a:b], error[a:b] = res.predicted, res.error
            dscore[a:b], dflag[a:b] = res.score, res.is_anomaly
            refused += int(np.sum(res.status >= 2))
        replay_s = time.perf_counter() - t1 - (fit_s - (t1 - t0))

    score = np.nan_to_num(dscore, nan=0.0)
    score[:probation] = 0.0
    flag = dflag.copy()
    win_idx = window_indices(ts, windows)
    label = np.zeros(n, dtype=bool)
    for lo, hi in win_idx:
        label[lo : hi + 1] = True
    return SeriesResult(
        name=name,
        timestamps=ts,
        values=values,
        predicted=predicted,
        error=error,
        detector_score=dscore,
        detector_flag=dflag,
        detector_threshold=float(det.config.threshold),
        anomaly_score=score,
        flag=flag,
        threshold=float(det.config.threshold),
        label=label,
        windows=win_idx,
        probation=probation,
        dropped=dropped,
        refused=refused,
        retrains=retrains,
        fit_seconds=fit_s,
        replay_seconds=replay_s,
        model=source,
    )


def detector_config(cfg: ReplayConfig, probation: int | None = None, window: int | None = None):
    """``DetectorConfig`` of a replay: likelihood method, ``cfg.detector`` overrides, ``cfg.post`` merged
    into ``likelihood``. With ``cfg.warmup="probation"`` and a ``probation`` length, the detector's
    ``warmup_events`` (as set, else ``window``) and the likelihood ``warmup`` are capped at it."""
    from models.detection.detector import DetectorConfig
    from models.detection.thresholds.error_likelihood import LikelihoodConfig

    over = {"threshold_method": "likelihood", **cfg.detector}
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


_WORKER_FLEET = None  # the fleet bundle of this worker process (unpickled once, by _worker_init)


def _worker_init(fleet_blob: bytes | None = None) -> None:
    import torch

    global _WORKER_FLEET
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_FLEET = fleet_mod.unpack(fleet_blob)


def _replay_job(path: str, windows: list, cfg: ReplayConfig, fleet=None):
    try:
        fleet = fleet if fleet is not None else _WORKER_FLEET
        return replay_file(Path(path), windows, cfg, threads=1, fleet=fleet), None
    except Exception as exc:  # reported per file; the corpus run goes on
        return None, f"{nab_key(Path(path))}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"


def run_corpus(
    paths: list[Path],
    labels: dict[str, list],
    cfg: ReplayConfig,
    *,
    workers: int = 2,
    progress: bool = True,
    fleet=None,
) -> tuple[list[SeriesResult], list[str]]:
    """Replay ``paths`` (largest first, ``workers`` processes); returns ``(results, errors)``.

    ``labels`` maps NAB keys to window lists; a file missing from it is an error (not silently
    scored as anomaly-free). ``fleet``: the fleet ``ModelBundle`` of a fleet ``model_source`` (else the
    registry model named in ``cfg`` is loaded once here); sent to each worker once, pickled.
    """
    fleet = fleet_mod.resolve_fleet(cfg, fleet)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    errors: list[str] = []
    jobs = []
    for p in paths:
        key = nab_key(p)
        if key not in labels:
            errors.append(f"{key}: not in the labels file")
            continue
        jobs.append((p, labels[key]))
    jobs.sort(key=lambda j: -Path(j[0]).stat().st_size)  # big files first: better packing
    results: list[SeriesResult] = []
    bar = Progress(
        TextColumn("[bold]backtest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        disable=not progress,
    )
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


def _collect(r, err, results, errors) -> None:
    if err is not None:
        errors.append(err)
    else:
        results.append(r)


def find_csvs(paths: list[Path]) -> list[Path]:
    """Expand directories into the CSV files below them (sorted); files are kept as given."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        out.extend(sorted(p.rglob("*.csv")) if p.is_dir() else [p])
    return out
