"""Fleet models for the backtest: one forecaster trained on OTHER series serves every file.

``tsad serve`` scores a new series with a model trained on other series; the backtest does the same
with ``ReplayConfig.model_source``:

* ``"per-file"`` (default): a model fitted on the file's own probationary rows (needs
  ``probation >= window + 8``, i.e. about 270 rows for window 32);
* ``"fleet"``: the fleet model as it is, no per-file training; the file's probationary rows only warm
  the detector state (``alert=False``). Runs any series of >= 100 rows (NAB's probation is then 15 rows);
* ``"fleet-finetune"``: the fleet model warm-started and fine-tuned on the probationary rows
  (``retrain_epochs`` epochs) when they are long enough to train on, else the fleet model as is.

Where the fleet model comes from: :func:`train_fleet` (the probationary rows of a list of files, each
file one series: only rows NAB lets a detector learn from, so it is leak-free even on the files it
scores; the cross-validation trains it on the other groups), or the registry
(``ReplayConfig.fleet_registry`` + ``fleet_model``: that model's champion, :func:`resolve_fleet`).

Normalisation of a series the fleet model never saw (``ReplayConfig.fleet_normalizer``):

* ``"probation"`` (default): a fixed ``(mean, std)`` from the file's own probationary rows (a per-file
  model's normaliser comes from the same rows less their validation fifth), so per-file and fleet
  differ in the model only. A probation with no
  spread (a flat stretch, a crash rate that was 0 throughout) has no scale to fix: the detector
  normalises that series online instead (below), for any model source, so it learns a scale as soon
  as the series moves.
* ``"online"``: what the live scorer does for an unseen series: Welford over the values fed to the
  detector (the probationary rows included).

Worker processes get the bundle once, pickled to bytes (:func:`pack`: 25 kB, ~3 ms to unpack, for hidden 32).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.forecasting.bundle import ModelBundle
    from pipeline.backtest.replay import ReplayConfig

MODEL_SOURCES = ("per-file", "fleet", "fleet-finetune")
FLEET_NORMALIZERS = ("probation", "online")


def min_train_rows(window: int) -> int:
    """Probationary rows a series needs before a model of ``window`` is fitted (or fine-tuned) on it."""
    return window + 8


def train_fleet(
    paths: list[Path], cfg: ReplayConfig, *, seed: int | None = None, threads: int | None = 1
) -> ModelBundle:
    """One model (``cfg``'s kind / window / hidden / calendar / model extras) fitted on the probationary
    rows of ``paths`` (each file one series, named by its NAB key), ``cfg.epochs`` epochs.

    Only probationary rows are read into training, never later ones. ``seed`` defaults to ``cfg.seed``;
    ``threads``: torch CPU threads (None: ``fit``'s default). Returns the bundle (name ``"fleet"``,
    ``meta["fleet_files"]`` the series it was trained on).
    """
    from models.forecasting.training import fit
    from pipeline.backtest.nab_scoring import probation_length
    from pipeline.backtest.replay import forecaster_config, load_series, nab_key

    if not paths:
        raise ValueError("train_fleet needs at least one file")
    series: dict[str, np.ndarray] = {}
    times: dict[str, np.ndarray] = {}
    for path in paths:
        ts, values, _ = load_series(Path(path))
        p = probation_length(len(values))
        if p < 2:
            continue
        key = nab_key(Path(path))
        series[key] = values[:p]
        times[key] = ts[:p].astype(np.int64) / 1e9
    if not series:
        raise ValueError("no file has a probationary period to train a fleet model on")
    kwargs = {**cfg.fit, **({"num_threads": threads} if threads else {})}
    bundle, _ = fit(
        forecaster_config(cfg),
        series,
        epochs=cfg.epochs,
        seed=cfg.seed if seed is None else seed,
        progress=False,
        device="cpu",
        name="fleet",
        timestamps=times,
        **kwargs,
    )
    bundle.meta = {**bundle.meta, "fleet_files": sorted(series)}
    return bundle


def resolve_fleet(cfg: ReplayConfig, fleet: ModelBundle | None) -> ModelBundle | None:
    """The fleet model a replay uses: ``fleet`` if given, else the registry champion named by
    ``cfg.fleet_registry`` / ``cfg.fleet_model``; None for ``model_source="per-file"``.

    Raises ``ValueError`` when a fleet source has no model to use.
    """
    if cfg.model_source == "per-file":
        return None
    if fleet is not None:
        return fleet
    if cfg.fleet_registry and cfg.fleet_model:
        from models.registry import ModelRegistry

        return ModelRegistry(cfg.fleet_registry).load(cfg.fleet_model)
    raise ValueError(
        f"model_source={cfg.model_source!r} needs a fleet model: pass fleet=train_fleet(...) "
        "or set fleet_registry and fleet_model"
    )


def for_series(fleet: ModelBundle, series: str, probation_values: np.ndarray, normalizer: str) -> ModelBundle:
    """The fleet bundle as it serves ``series``: a shallow copy (same forecaster) whose normalisers hold
    the series' probation ``(mean, std)`` when ``normalizer="probation"`` and the fleet did not train on
    it; otherwise a series the fleet did not train on goes online (``StreamingDetector``'s Welford
    normaliser), as does one whose probation was flat (``models.detection.series_state.has_scale``).
    """
    from models.forecasting.windows import SeriesNormalizer

    norms = dict(fleet.normalizers)
    if normalizer == "probation" and series not in norms:
        norms[series] = SeriesNormalizer.fit(probation_values)  # a flat one: the detector goes online
    return dataclasses.replace(fleet, normalizers=norms)


def pack(bundle: ModelBundle | None) -> bytes | None:
    """Bundle -> bytes for a worker process (plain pickle; tensors are copied, nothing is shared)."""
    return None if bundle is None else pickle.dumps(bundle, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes | None) -> ModelBundle | None:
    return None if blob is None else pickle.loads(blob)
