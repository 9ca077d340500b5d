"""The epoch loop of ``models.forecasting.training.fit``: shuffled training passes, the validation
loss after each, early stopping on it, the best weights kept.

many-to-one steps once per batch of windows ``(batch, window, features)``; many-to-many runs
truncated BPTT over a batch of segments, one optimiser step per ``window`` steps, the recurrent
state carried (detached) from chunk to chunk, with a masked loss.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Any

import torch

from models.forecasting.batches import TrainingTensors
from models.forecasting.forecasters import Forecaster, ForecasterConfig

VAL_CHUNK = 8192  # many-to-one validation windows per forward pass


class EpochLoop:
    """The epoch loop: one shuffled pass over the training tensors, then the validation loss; early
    stopping on it (the training loss when there is no validation data), best weights kept."""

    def __init__(
        self,
        config: ForecasterConfig,
        model: Forecaster,
        opt: torch.optim.Optimizer,
        data: TrainingTensors,
        dev: torch.device,
        amp_dtype: torch.dtype | None,
        gen: torch.Generator,
        clip_norm: float,
    ) -> None:
        self.config, self.model, self.opt, self.data = config, model, opt, data
        self.dev, self.amp_dtype, self.gen, self.clip_norm = dev, amp_dtype, gen, clip_norm
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.best, self.best_epoch, self.bad_epochs, self.stopped = math.inf, 0, 0, False
        self.best_state: dict[str, torch.Tensor] | None = None
        self.train_time = 0.0  # seconds spent in training passes (device-synchronised)

    def run(self, epochs: int, patience: int, progress: bool) -> None:
        """Up to ``epochs`` epochs; stops after ``patience`` epochs without improvement (``stopped``)."""
        cuda = self.dev.type == "cuda"
        with _progress(progress) as bar:
            task = bar.add_task("training", total=epochs, loss=math.nan, val=math.nan) if bar else None
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                self.train_loss.append(self.train_epoch())
                if cuda:
                    torch.cuda.synchronize()
                self.train_time += time.perf_counter() - t0
                v = self.validate()
                self.val_loss.append(v)
                self._keep_best(epoch, v if not math.isnan(v) else self.train_loss[-1])
                if bar:
                    bar.update(task, advance=1, loss=self.train_loss[-1], val=v)
                if self.bad_epochs >= patience:
                    self.stopped = True
                    break

    def _keep_best(self, epoch: int, score: float) -> None:
        if score < self.best - 1e-6:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_epochs += 1

    def _autocast(self) -> torch.autocast:
        amp = self.amp_dtype
        return torch.autocast(device_type=self.dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None)

    def train_epoch(self) -> float:
        """One pass in shuffled batches; the mean training loss (one device sync per epoch)."""
        self.model.train()
        train, bs = self.data.train, self.data.batch_size
        perm = torch.randperm(len(train[0]), generator=self.gen).to(self.dev)
        total: float | torch.Tensor = 0.0  # a tensor after the first batch: summed on the device
        weight: float | torch.Tensor = 0.0
        for i in range(0, len(perm), bs):
            idx = perm[i : i + bs]
            if self.data.m2m:
                total, weight = self._m2m_batch(idx, total, weight)
            else:
                x, y = train[0][idx], train[1][idx]
                with self._autocast():
                    loss = torch.nn.functional.mse_loss(self.model(x).float(), y)
                _step(self.opt, self.model, loss, self.clip_norm)
                total, weight = total + loss.detach() * len(idx), weight + len(idx)
        return float(total / max(float(weight), 1.0))

    def _m2m_batch(
        self, idx: torch.Tensor, total: float | torch.Tensor, weight: float | torch.Tensor
    ) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Truncated BPTT over one batch of segments, ``window`` steps per optimiser step."""
        x, y, m = (t[idx] for t in self.data.train)
        window = self.config.window
        state = None
        for j in range(0, x.shape[1], window):
            sl = slice(j, j + window)
            if m[:, sl].sum() == 0:
                continue
            with self._autocast():
                pred, state = self.model(x[:, sl], state)
                loss = _masked_mse(pred, y[:, sl], m[:, sl])
            state = (state[0].detach(), state[1].detach())
            _step(self.opt, self.model, loss, self.clip_norm)
            w = m[:, sl, 0].sum()
            total, weight = total + loss.detach() * w, weight + w
        return total, weight

    @torch.no_grad()
    def validate(self) -> float:
        """Validation MSE (normalised units); NaN without validation targets."""
        self.model.eval()
        val = self.data.val
        with self._autocast():
            if self.data.m2m:
                pred, _ = self.model(val[0])
                return float(_masked_mse(pred, val[1], val[2])) if val[2].sum() > 0 else math.nan
            if len(val[0]) == 0:
                return math.nan
            preds = torch.cat([self.model(val[0][i : i + VAL_CHUNK]).float() for i in range(0, len(val[0]), VAL_CHUNK)])
            return float(torch.nn.functional.mse_loss(preds, val[1]))


def _masked_mse(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred.float() - y) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


def _step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, clip_norm: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()


def _progress(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """A rich progress bar (entered: the ``Progress``), or a context that enters to ``None``."""
    if not enabled:
        return contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} val {task.fields[val]:.4f}"),
        TimeElapsedColumn(),
    )
