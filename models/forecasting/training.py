"""``fit``: train one global forecaster on many series and calibrate its validation errors.

* Split: the LAST ``val_fraction`` of every series is validation (time-ordered, never shuffled);
  normalisers are fitted on the training part only.
* many-to-one: shuffled windows ``(batch, window, features)`` -> ``(batch, horizon)``; windows with
  a NaN are dropped (see ``models.forecasting.windows``).
* many-to-many: each series is cut into contiguous segments of ``window * tbptt_chunks`` steps;
  a batch of segments is fed ``window`` steps at a time, the recurrent state carried (detached)
  from chunk to chunk (truncated BPTT), with a masked loss at every step (NaN targets masked,
  NaN inputs fed as 0 and their step masked).
* Device "auto": CUDA if present (bf16 autocast, cuDNN RNN, large batches, data moved once via
  pinned memory), else CPU with ``min(2, cpu_count)`` threads. Seeded; reproducible on CPU.
* AdamW, grad-norm clipping, early stopping on validation loss (best weights restored).

The steps of a run, in order: ``_setup_device``, ``split_series``, ``_build_model``,
``training_tensors`` (``models.forecasting.batches``), ``EpochLoop.run`` (``models.forecasting.epochs``:
train and validate each epoch, keep the best weights), ``calibrate``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from models.forecasting.batches import TrainingTensors, split_series, training_tensors
from models.forecasting.bundle import ModelBundle
from models.forecasting.calibration import calibrate
from models.forecasting.epochs import EpochLoop
from models.forecasting.forecasters import Forecaster, ForecasterConfig, build_forecaster


@dataclass
class TrainReport:
    """Summary of one ``fit`` call (losses are MSE in normalised units)."""

    epochs: int
    best_epoch: int
    train_loss: list[float]
    val_loss: list[float]
    best_val_loss: float
    wall_time_s: float
    device: str
    amp_dtype: str | None
    windows: int  # training targets per epoch (many-to-many: time steps with a loss)
    windows_per_s: float
    stopped_early: bool
    n_series: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How one ``fit`` call trains: its keyword arguments but the model's name, warm start and timestamps."""

    epochs: int = 30
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    batch_size: int | None = None  # windows (many-to-one) / segments (many-to-many) per step
    lr: float = 3e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0  # max gradient norm; 0 disables clipping
    val_fraction: float = 0.2
    patience: int = 5  # epochs without improvement before stopping early
    tbptt_chunks: int = 4  # many-to-many: chunks of ``window`` steps per training segment
    calibration_k: float = 5.0  # calibrated threshold = error mean + k * error std
    num_threads: int | None = None  # CPU: torch intra-op threads (default min(2, cpu_count))


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" -> cuda when available else cpu; "cuda" without a GPU raises."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    return dev


# Long only in its signature: the public training API, one keyword per knob (grouped into TrainConfig inside).
def fit(
    config: ForecasterConfig,
    series: dict[str, np.ndarray],
    *,
    epochs: int = 30,
    device: str = "auto",
    seed: int = 0,
    warm_start: ModelBundle | None = None,
    progress: bool = True,
    name: str = "default",
    batch_size: int | None = None,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    clip_norm: float = 1.0,
    val_fraction: float = 0.2,
    patience: int = 5,
    tbptt_chunks: int = 4,
    calibration_k: float = 5.0,
    num_threads: int | None = None,
    timestamps: dict[str, np.ndarray] | None = None,
) -> tuple[ModelBundle, TrainReport]:
    """Train ``config`` on ``series`` (id -> ``(time,)`` or ``(time, features)`` raw values).

    Returns the bundle (eval, CPU, normalisers + calibration filled) and a ``TrainReport``.
    ``warm_start``: start from that bundle's weights (its config must match ``config``'s architecture).
    ``batch_size`` defaults to 256 windows / 16 segments on CPU, 4096 / 256 on CUDA.
    ``num_threads`` (CPU) defaults to ``min(2, cpu_count)``; use 1 on an oversubscribed host (torch's
    intra-op threads spin, so 2 threads competing with other busy processes can be 10x slower).
    The process-wide torch thread count is restored on return.
    ``timestamps``: id -> ``(time,)`` epoch seconds or datetime64 of every row of ``series[id]``;
    required when ``config.calendar_features`` (the calendar columns are appended after
    normalisation, see ``models.forecasting.calendar``), ignored otherwise.
    """
    _check_inputs(config, series, timestamps)
    train = TrainConfig(
        epochs=epochs,
        device=device,
        seed=seed,
        progress=progress,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
        val_fraction=val_fraction,
        patience=patience,
        tbptt_chunks=tbptt_chunks,
        calibration_k=calibration_k,
        num_threads=num_threads,
    )
    with _torch_threads_restored():
        return _fit(config, series, train, warm_start=warm_start, name=name, timestamps=timestamps)


def _check_inputs(
    config: ForecasterConfig, series: dict[str, np.ndarray], timestamps: dict[str, np.ndarray] | None
) -> None:
    if not series:
        raise ValueError("no training series")
    if config.calendar_features:
        missing = [sid for sid in series if timestamps is None or sid not in timestamps]
        if missing:
            raise ValueError(f"calendar_features needs timestamps for every series; missing {missing[:3]}")


@contextlib.contextmanager
def _torch_threads_restored() -> Iterator[None]:
    """Restore the process-wide torch thread count on exit (training on CPU sets its own)."""
    threads_before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)


def _fit(
    config: ForecasterConfig,
    series: dict[str, np.ndarray],
    train: TrainConfig,
    *,
    warm_start: ModelBundle | None,
    name: str,
    timestamps: dict[str, np.ndarray] | None,
) -> tuple[ModelBundle, TrainReport]:
    """The steps of ``fit``, in order (see the module docstring)."""
    t_start = time.perf_counter()
    dev = _setup_device(train.device, train.num_threads)
    torch.manual_seed(train.seed)  # before the model is built: its initial weights
    gen = torch.Generator().manual_seed(train.seed)  # the epochs' shuffles
    amp_dtype = torch.bfloat16 if dev.type == "cuda" else None

    split = split_series(config, series, train.val_fraction, timestamps)
    model = _build_model(config, warm_start, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    data = training_tensors(config, split, train.tbptt_chunks, train.batch_size, dev)
    loop = EpochLoop(config, model, opt, data, dev, amp_dtype, gen, train.clip_norm)
    loop.run(train.epochs, train.patience, train.progress)
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    model = model.cpu().float().eval()

    calibration = calibrate(model, split.normed, split.cuts, k=train.calibration_k)
    report = _report(loop, data, train, dev, amp_dtype, n_series=len(series), wall_time_s=time.perf_counter() - t_start)
    metrics = {
        "val_mse": loop.best,
        "val_abs_error_mean": calibration.error_mean if calibration else None,
        "epochs": report.epochs,
    }
    bundle = ModelBundle(
        name=name,
        kind=config.kind,
        config=config,
        forecaster=model,
        normalizers=split.normalizers,
        calibration=calibration,
        metrics=metrics,
    )
    return bundle, report


def _report(
    loop: EpochLoop,
    data: TrainingTensors,
    train: TrainConfig,
    dev: torch.device,
    amp_dtype: torch.dtype | None,
    *,
    n_series: int,
    wall_time_s: float,
) -> TrainReport:
    return TrainReport(
        epochs=len(loop.train_loss),
        best_epoch=loop.best_epoch,
        train_loss=loop.train_loss,
        val_loss=loop.val_loss,
        best_val_loss=loop.best,
        wall_time_s=wall_time_s,
        device=str(dev),
        amp_dtype=str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        windows=data.n_targets,
        windows_per_s=data.n_targets * len(loop.train_loss) / max(loop.train_time, 1e-9),
        stopped_early=loop.stopped,
        n_series=n_series,
        extra={"batch_size": data.batch_size, "lr": train.lr, "seed": train.seed},
    )


def _setup_device(device: str, num_threads: int | None) -> torch.device:
    """The training device, set up: cuDNN autotuning on CUDA, the intra-op thread count on CPU."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(num_threads or min(2, os.cpu_count() or 1))
    return dev


def _build_model(config: ForecasterConfig, warm_start: ModelBundle | None, dev: torch.device) -> Forecaster:
    """Fresh weights from the global torch RNG, or ``warm_start``'s (same architecture), on ``dev``."""
    model = build_forecaster(config)
    if warm_start is not None:
        if _arch(warm_start.config) != _arch(config):
            raise ValueError(f"warm start architecture {warm_start.config} does not match {config}")
        model.load_state_dict(warm_start.forecaster.state_dict())
    model.to(dev)
    return model


def _arch(cfg: ForecasterConfig) -> tuple[object, ...]:
    return (
        cfg.kind,
        cfg.horizon,
        cfg.hidden,
        cfg.layers,
        cfg.cell,
        cfg.features,
        cfg.decoder,
        cfg.calendar_features,
        cfg.calendar_week,
    )
