"""The forecaster side of a detector round: the forecast of each event, and feeding what was accepted.

One object per served model kind, chosen when the model is (``forecast_step``), so the round does
not branch on the kind:

* ``WindowStep`` (many-to-one): re-runs the model on the series' last ``window`` values
  ``(m, window, features)``; nothing to feed (the ring buffer is the state).
* ``RecurrentStep`` (many-to-many): the forecast is the one the model emitted when it stepped the
  previous value (``SeriesStateStore.pred``); feeding steps the model one value ``(m, features)``.
  The outputs of a round (slots, h, c, pred) stay in ``carry`` while the next round steps the very
  same slots (the usual case: every series once per round) and are scattered into the store
  otherwise, and by ``flush`` at the end of a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from models.detection.series_state import SeriesStateStore

Inputs = Callable[[np.ndarray, np.ndarray], torch.Tensor]  # (z, times) -> model input, see StreamingDetector._inputs


class ForecasterStep(Protocol):
    def forecast(self, slots: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Normalised forecast ``(m,)`` float64 of each slot's next value from the history before it."""
        ...

    def feed(self, slots: np.ndarray, fed_z: np.ndarray, t: np.ndarray) -> None:
        """Take the accepted normalised values ``(m,)`` (times ``t (m,)``) into the model state."""

    def flush(self) -> None:
        """Write what is held back into the store (end of a batch)."""


class WindowStep:
    """Many-to-one: the model re-reads the input window of every event."""

    def __init__(
        self, store: SeriesStateStore, forecaster: Any, window: int, clip_z: float, calendar: bool, inputs: Inputs
    ):
        self.store, self.forecaster, self.window = store, forecaster, window
        self.clip_z, self.calendar, self.inputs = clip_z, calendar, inputs

    def forecast(self, slots: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        w, store = self.window, self.store
        win, valid = store.windows(slots, w)
        zw = np.where(valid, (win - mean[:, None]) / std[:, None], 0.0)  # (m, window)
        np.clip(zw, -self.clip_z, self.clip_z, out=zw)
        times = store.window_times(slots, w) if self.calendar else zw
        out = self.forecaster(self.inputs(zw, times))
        return np.asarray(out[:, 0].numpy().astype(np.float64))

    def feed(self, slots: np.ndarray, fed_z: np.ndarray, t: np.ndarray) -> None:
        pass

    def flush(self) -> None:
        pass


@dataclass(slots=True)
class _Carry:
    slots: np.ndarray
    h: torch.Tensor  # (layers, m, hidden)
    c: torch.Tensor
    pred: np.ndarray  # (m,) float32


class RecurrentStep:
    """Many-to-many: O(1) per event, the recurrent state stepped by each fed value."""

    def __init__(self, store: SeriesStateStore, forecaster: Any, inputs: Inputs):
        self.store, self.forecaster, self.inputs = store, forecaster, inputs
        self.carry: _Carry | None = None

    def forecast(self, slots: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        carry = self.carry
        if carry is not None and carry.slots.tobytes() != slots.tobytes():
            self.flush()
            carry = None
        return (self.store.pred[slots] if carry is None else carry.pred).astype(np.float64)

    def feed(self, slots: np.ndarray, fed_z: np.ndarray, t: np.ndarray) -> None:
        carry, store = self.carry, self.store
        if carry is None:
            state = (torch.from_numpy(store.rnn[0][:, slots]), torch.from_numpy(store.rnn[1][:, slots]))
        else:
            state = (carry.h, carry.c)
        pred, (h, c) = self.forecaster.step(self.inputs(fed_z, t), state)
        self.carry = _Carry(slots, h, c, pred[:, 0].numpy())

    def flush(self) -> None:
        carry = self.carry
        if carry is not None:
            s = carry.slots
            self.store.rnn[0][:, s] = carry.h.numpy()
            self.store.rnn[1][:, s] = carry.c.numpy()
            self.store.pred[s] = carry.pred
            self.carry = None
