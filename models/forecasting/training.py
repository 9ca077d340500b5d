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
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from models.forecasting.bundle import ModelBundle
from models.forecasting.calendar import with_calendar
from models.forecasting.calibration import calibrate
from models.forecasting.forecasters import ForecasterConfig, build_forecaster
from models.forecasting.windows import SeriesNormalizer, as_2d, sequence_targets, sliding_windows


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
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" -> cuda when available else cpu; "cuda" without a GPU raises."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    return dev


def split_point(n: int, val_fraction: float) -> int:
    """Index where validation starts (last ``val_fraction`` of a series of length ``n``)."""
    return int(round(n * (1.0 - val_fraction)))


def _m2o_data(cfg: ForecasterConfig, normed: dict[str, np.ndarray], cuts: dict[str, int]):
    """Training and validation windows: X ``(n, window, features)``, y ``(n, horizon)``."""
    tr, va = [], []
    for sid, arr in normed.items():
        cut = cuts[sid]
        tr.append(sliding_windows(arr[:cut], cfg.window, cfg.horizon))
        # validation targets start at ``cut``; their input windows may reach back into the train part
        va.append(sliding_windows(arr[max(cut - cfg.window, 0) :], cfg.window, cfg.horizon))
    cat = lambda parts, i: torch.from_numpy(np.concatenate([p[i] for p in parts])).float()  # noqa: E731
    return (cat(tr, 0), cat(tr, 1)), (cat(va, 0), cat(va, 1))


def _m2m_tensors(arrs: list[np.ndarray], horizon: int, length: int):
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


def _m2m_data(cfg: ForecasterConfig, normed, cuts, tbptt_chunks: int):
    """Training segments (contiguous, ``window * tbptt_chunks`` long) and full validation sequences."""
    seg = cfg.window * tbptt_chunks
    pieces = []
    for sid, arr in normed.items():
        train = arr[: cuts[sid]]
        pieces += [train[s : s + seg] for s in range(0, len(train), seg) if len(train[s : s + seg]) > 1]
    train = _m2m_tensors(pieces, cfg.horizon, seg)
    # validation: whole series (state from the start), loss only where all targets lie in the val part
    full = list(normed.values())
    val_x, val_y, val_m = _m2m_tensors(full, cfg.horizon, max(len(a) for a in full))
    for i, sid in enumerate(normed):
        val_m[i, : cuts[sid]] = 0.0
    return train, (val_x, val_y, val_m)


def _masked_mse(pred, y, mask):
    return ((pred.float() - y) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


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
    if not series:
        raise ValueError("no training series")
    if config.calendar_features:
        missing = [sid for sid in series if timestamps is None or sid not in timestamps]
        if missing:
            raise ValueError(f"calendar_features needs timestamps for every series; missing {missing[:3]}")
    threads_before = torch.get_num_threads()
    try:
        return _fit(
            config,
            series,
            epochs=epochs,
            device=device,
            seed=seed,
            warm_start=warm_start,
            progress=progress,
            name=name,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            val_fraction=val_fraction,
            patience=patience,
            tbptt_chunks=tbptt_chunks,
            calibration_k=calibration_k,
            num_threads=num_threads,
            timestamps=timestamps,
        )
    finally:
        torch.set_num_threads(threads_before)


def _fit(
    config,
    series,
    *,
    epochs,
    device,
    seed,
    warm_start,
    progress,
    name,
    batch_size,
    lr,
    weight_decay,
    clip_norm,
    val_fraction,
    patience,
    tbptt_chunks,
    calibration_k,
    num_threads,
    timestamps=None,
):
    t_start = time.perf_counter()
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(num_threads or min(2, os.cpu_count() or 1))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    amp_dtype = torch.bfloat16 if cuda else None

    raw = {sid: as_2d(v) for sid, v in series.items()}
    cuts = {sid: split_point(len(a), val_fraction) for sid, a in raw.items()}
    normalizers = {sid: SeriesNormalizer.fit(a[: cuts[sid]]) for sid, a in raw.items()}
    normed = {sid: normalizers[sid].transform(a) for sid, a in raw.items()}
    if config.calendar_features:  # (time, 1) values -> (time, 1 + calendar_dim); calendar columns unnormalised
        normed = {sid: with_calendar(a, timestamps[sid], config.calendar_week) for sid, a in normed.items()}

    model = build_forecaster(config)
    if warm_start is not None:
        if _arch(warm_start.config) != _arch(config):
            raise ValueError(f"warm start architecture {warm_start.config} does not match {config}")
        model.load_state_dict(warm_start.forecaster.state_dict())
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    m2m = config.kind == "many-to-many"
    if m2m:
        train, val = _m2m_data(config, normed, cuts, tbptt_chunks)
        bs = batch_size or (256 if cuda else 16)
        n_targets = int(train[2][..., 0].sum())
    else:
        train, val = _m2o_data(config, normed, cuts)
        bs = batch_size or (4096 if cuda else 256)
        n_targets = len(train[0])
    if len(train[0]) == 0:
        raise ValueError("no training windows: series too short for the window, or all windows contain NaN")
    if cuda:
        train = tuple(t.pin_memory().to(dev, non_blocking=True) for t in train)
        val = tuple(t.pin_memory().to(dev, non_blocking=True) for t in val)

    def autocast():
        return torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)

    def train_epoch() -> float:
        model.train()
        perm = torch.randperm(len(train[0]), generator=gen).to(dev)
        total, weight = 0.0, 0.0
        for i in range(0, len(perm), bs):
            idx = perm[i : i + bs]
            if m2m:
                x, y, m = (t[idx] for t in train)
                state = None
                for j in range(0, x.shape[1], config.window):
                    sl = slice(j, j + config.window)
                    if m[:, sl].sum() == 0:
                        continue
                    with autocast():
                        pred, state = model(x[:, sl], state)
                        loss = _masked_mse(pred, y[:, sl], m[:, sl])
                    state = (state[0].detach(), state[1].detach())
                    _step(opt, model, loss, clip_norm)
                    w = m[:, sl, 0].sum()
                    total, weight = total + loss.detach() * w, weight + w
            else:
                x, y = train[0][idx], train[1][idx]
                with autocast():
                    loss = torch.nn.functional.mse_loss(model(x).float(), y)
                _step(opt, model, loss, clip_norm)
                total, weight = total + loss.detach() * len(idx), weight + len(idx)
        return float(total / max(float(weight), 1.0))  # one device sync per epoch

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        with autocast():
            if m2m:
                pred, _ = model(val[0])
                return float(_masked_mse(pred, val[1], val[2])) if val[2].sum() > 0 else math.nan
            if len(val[0]) == 0:
                return math.nan
            preds = torch.cat([model(val[0][i : i + 8192]).float() for i in range(0, len(val[0]), 8192)])
            return float(torch.nn.functional.mse_loss(preds, val[1]))

    train_losses, val_losses = [], []
    best, best_epoch, best_state, bad_epochs, stopped = math.inf, 0, None, 0, False
    train_time = 0.0
    with _progress(progress) as bar:
        task = bar.add_task("training", total=epochs, loss=math.nan, val=math.nan) if bar else None
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            train_losses.append(train_epoch())
            if cuda:
                torch.cuda.synchronize()
            train_time += time.perf_counter() - t0
            v = val_loss()
            val_losses.append(v)
            score = v if not math.isnan(v) else train_losses[-1]
            if score < best - 1e-6:
                best, best_epoch, bad_epochs = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            if bar:
                bar.update(task, advance=1, loss=train_losses[-1], val=v)
            if bad_epochs >= patience:
                stopped = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().float().eval()

    calibration = calibrate(model, normed, cuts, k=calibration_k)
    report = TrainReport(
        epochs=len(train_losses),
        best_epoch=best_epoch,
        train_loss=train_losses,
        val_loss=val_losses,
        best_val_loss=best,
        wall_time_s=time.perf_counter() - t_start,
        device=str(dev),
        amp_dtype=str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        windows=n_targets,
        windows_per_s=n_targets * len(train_losses) / max(train_time, 1e-9),
        stopped_early=stopped,
        n_series=len(series),
        extra={"batch_size": bs, "lr": lr, "seed": seed},
    )
    metrics = {
        "val_mse": best,
        "val_abs_error_mean": calibration.error_mean if calibration else None,
        "epochs": report.epochs,
    }
    bundle = ModelBundle(
        name=name,
        kind=config.kind,
        config=config,
        forecaster=model,
        normalizers=normalizers,
        calibration=calibration,
        metrics=metrics,
    )
    return bundle, report


def _arch(cfg: ForecasterConfig) -> tuple:
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


def _step(opt, model, loss, clip_norm: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} val {task.fields[val]:.4f}"),
        TimeElapsedColumn(),
    )
