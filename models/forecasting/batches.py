"""The tensors a training run iterates over: the train/validation split of every series, its
normalisation, and the windows (many-to-one) or segments (many-to-many) cut from it.

Shapes: many-to-one inputs ``(n, window, features)``, targets ``(n, horizon)``; many-to-many
inputs ``(n, length, features)``, targets and loss mask ``(n, length, horizon)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.forecasting.calendar import with_calendar
from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.windows import SeriesNormalizer, as_2d, sequence_targets, sliding_windows

Tensors = tuple[torch.Tensor, ...]


def split_point(n: int, val_fraction: float) -> int:
    """Index where validation starts (last ``val_fraction`` of a series of length ``n``)."""
    return round(n * (1.0 - val_fraction))


@dataclass(frozen=True)
class SplitSeries:
    """Every training series split and normalised (by id)."""

    cuts: dict[str, int]  # index where the validation part starts
    normalizers: dict[str, SeriesNormalizer]  # fitted on the training part only
    normed: dict[str, np.ndarray]  # (time, features) normalised; calendar columns appended unnormalised


def split_series(
    config: ForecasterConfig,
    series: dict[str, np.ndarray],
    val_fraction: float,
    timestamps: dict[str, np.ndarray] | None,
) -> SplitSeries:
    """Split each raw series at ``split_point``, normalise it with its training part's statistics and,
    with ``config.calendar_features``, append the calendar columns of ``timestamps[id]``."""
    raw = {sid: as_2d(v) for sid, v in series.items()}
    cuts = {sid: split_point(len(a), val_fraction) for sid, a in raw.items()}
    normalizers = {sid: SeriesNormalizer.fit(a[: cuts[sid]]) for sid, a in raw.items()}
    normed = {sid: normalizers[sid].transform(a) for sid, a in raw.items()}
    if config.calendar_features:  # (time, 1) values -> (time, 1 + calendar_dim); calendar columns unnormalised
        assert timestamps is not None  # fit checked that every series has its timestamps
        normed = {sid: with_calendar(a, timestamps[sid], config.calendar_week) for sid, a in normed.items()}
    return SplitSeries(cuts, normalizers, normed)


@dataclass(frozen=True)
class TrainingTensors:
    """What the epoch loop iterates over, already on the training device."""

    m2m: bool  # many-to-many: (inputs, targets, mask) segments; else (inputs, targets) windows
    train: Tensors
    val: Tensors
    batch_size: int  # windows / segments per optimiser step
    n_targets: int  # training targets per epoch (many-to-many: time steps with a loss)


def training_tensors(
    config: ForecasterConfig, split: SplitSeries, tbptt_chunks: int, batch_size: int | None, dev: torch.device
) -> TrainingTensors:
    """Training and validation tensors for ``config.kind``; the default batch size depends on the device
    (many-to-one 256 on CPU / 4096 on CUDA, many-to-many 16 / 256 segments). Raises ``ValueError``
    when no training window is left."""
    cuda = dev.type == "cuda"
    m2m = config.kind == "many-to-many"
    train: Tensors
    val: Tensors
    if m2m:
        train, val = _m2m_data(config, split.normed, split.cuts, tbptt_chunks)
        bs = batch_size or (256 if cuda else 16)
        n_targets = int(train[2][..., 0].sum())
    else:
        train, val = _m2o_data(config, split.normed, split.cuts)
        bs = batch_size or (4096 if cuda else 256)
        n_targets = len(train[0])
    if len(train[0]) == 0:
        raise ValueError("no training windows: series too short for the window, or all windows contain NaN")
    if cuda:
        train = tuple(t.pin_memory().to(dev, non_blocking=True) for t in train)
        val = tuple(t.pin_memory().to(dev, non_blocking=True) for t in val)
    return TrainingTensors(m2m, train, val, bs, n_targets)


def _m2o_data(cfg: ForecasterConfig, normed: dict[str, np.ndarray], cuts: dict[str, int]) -> tuple[Tensors, Tensors]:
    """Training and validation windows: X ``(n, window, features)``, y ``(n, horizon)``."""
    tr, va = [], []
    for sid, arr in normed.items():
        cut = cuts[sid]
        tr.append(sliding_windows(arr[:cut], cfg.window, cfg.horizon))
        # validation targets start at ``cut``; their input windows may reach back into the train part
        va.append(sliding_windows(arr[max(cut - cfg.window, 0) :], cfg.window, cfg.horizon))

    def cat(parts: list[tuple[np.ndarray, ...]], i: int) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([p[i] for p in parts])).float()

    return (cat(tr, 0), cat(tr, 1)), (cat(va, 0), cat(va, 1))


def _m2m_tensors(arrs: list[np.ndarray], horizon: int, length: int) -> Tensors:
    """Stack sequences into inputs ``(n, length, features)``, targets/mask ``(n, length, horizon)``."""
    feats = arrs[0].shape[1]
    x = np.zeros((len(arrs), length, feats))
    y = np.full((len(arrs), length, horizon), np.nan)
    for i, a in enumerate(arrs):
        x[i, : len(a)] = a
        y[i, : len(a)] = sequence_targets(a, horizon)
        y[i, : len(a)][np.isnan(a).any(axis=1)] = np.nan
    mask = ~np.isnan(y)
    x = np.nan_to_num(x, nan=0.0)
    y = np.nan_to_num(y, nan=0.0)
    return torch.from_numpy(x).float(), torch.from_numpy(y).float(), torch.from_numpy(mask).float()


def _m2m_data(
    cfg: ForecasterConfig, normed: dict[str, np.ndarray], cuts: dict[str, int], tbptt_chunks: int
) -> tuple[Tensors, Tensors]:
    """Training segments (contiguous, ``window * tbptt_chunks`` long) and full validation sequences."""
    seg = cfg.window * tbptt_chunks
    pieces = []
    for sid, arr in normed.items():
        train = arr[: cuts[sid]]
        pieces += [train[s : s + seg] for s in range(0, len(train), seg) if len(train[s : s + seg]) > 1]
    train_tensors = _m2m_tensors(pieces, cfg.horizon, seg)
    # validation: whole series (state from the start), loss only where all targets lie in the val part
    full = list(normed.values())
    val_x, val_y, val_m = _m2m_tensors(full, cfg.horizon, max(len(a) for a in full))
    for i, sid in enumerate(normed):
        val_m[i, : cuts[sid]] = 0.0
    return train_tensors, (val_x, val_y, val_m)
