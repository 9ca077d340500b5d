"""Per-series state for the streaming detector, in preallocated numpy arrays indexed by slot.

Just over 300 lines: slot allocation, eviction, the ring buffer and the online normaliser share
the same arrays.

One slot per tracked series. ``SeriesStateStore`` maps series ids to slots, grows its arrays by
doubling (up to ``max_series``), and evicts the least recently seen series when the cap is hit.
Everything the detector needs per series lives here so it can be gathered and scattered with a
slot index array ``idx (n,)``:

* ``ring (capacity, ring_length)`` float32: the last values fed into the model, raw units (the
  ring position is ``count % ring_length``). Used for many-to-one windows and to rebuild a
  recurrent state after a model swap.
* ``count`` int64: values taken into state so far (warm-up and ring position); ``last_ts`` float64;
  ``interval`` float32: the series' last positive timestamp step (s). The ring keeps no timestamps:
  ``window_times`` reconstructs them as ``last_ts - k * interval`` (exact on a regular series), for
  models with calendar features (many-to-one windows, state rebuild after a model swap).
* ``mean``/``m2`` float64 and ``fixed``: the series' normaliser. ``fixed`` series use the
  training (mean, std) kept in ``mean``/``std``; the others are normalised online (Welford on
  the fed values: ``std = sqrt(m2 / count)``). A training normaliser without a usable scale (the
  series was flat in training: ``has_scale`` is False) is not fixed: a series that only starts to
  move after training would otherwise sit at +-clip_z for good, its forecast stuck at the old level.
* ``err_mean``/``err_var`` float32: O(1) running (EWMA) statistics of the normalised forecast
  error, the threshold state.
* ``pred`` float32: the model's normalised forecast of the series' next value (many-to-many).
* ``rnn``: a list of recurrent state arrays ``(layers, capacity, hidden)`` float32, e.g. (h, c)
  for an LSTM; empty for a many-to-one model.

Eviction never takes a series of the batch being processed. A batch that alone holds more distinct
series than ``max_series`` is still served whole: capacity grows past the cap for that batch (memory
is bounded by the batch size) and later batches evict back down to ``max_series``.

Values fed to ``push`` are clamped to +-``models.core.limits.MAX_ABS_VALUE`` (the events' own bound), so Welford's float64
sums stay finite; the detector also bounds each fed value to +-``clip_z`` normalised units once a
series' scale is known, so one huge value cannot inflate the online std for good.

Per series this is 4*ring_length + 8*len(rnn)*layers*hidden/2 + ~64 bytes: 704 bytes for a
many-to-many LSTM with hidden 64 (ring 32: ``models.detection.detector.REBUILD_STEPS``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from models.core.limits import MAX_ABS_VALUE
from models.core.streaming import clip as _clip

_INITIAL_CAPACITY = 1024
# Up to this many slots are allocated at once with np.zeros (calloc: pages become resident only
# when a slot is first used, so memory follows the series actually tracked); beyond, arrays double.
_PREALLOCATE_UP_TO = 1_000_000
FLAT_STD = 1e-6  # a training std at or below FLAT_STD * max(|mean|, 1) is a flat series (float rounding at most)


def has_scale(mean: float, std: float) -> bool:
    """A training normaliser ``(mean, std)`` the detector may fix: finite, with a spread beyond rounding
    (``models.forecasting.windows.SeriesNormalizer.fit`` floors a constant series' std at 1e-6)."""
    mean, std = float(mean), float(std)
    return math.isfinite(mean) and math.isfinite(std) and std > FLAT_STD * max(abs(mean), 1.0)


class SeriesStateStore:
    """Slots for up to ``max_series`` series; ``slots(ids)`` finds or allocates them."""

    def __init__(
        self,
        ring_length: int,
        max_series: int = 100_000,
        rnn_shapes: tuple = (),
        err_mean: float = 0.5,
        err_var: float = 0.25,
    ):
        if ring_length < 1 or max_series < 1:
            raise ValueError("ring_length and max_series must be >= 1")
        self.ring_length = ring_length
        self.max_series = max_series
        self.rnn_shapes = tuple(rnn_shapes)  # ((layers, hidden), ...) one per recurrent tensor
        self.init_err_mean = float(err_mean)
        self.init_err_var = float(err_var)
        self.ids: dict[str, int] = {}
        self.slot_ids: list[str | None] = []
        self._free: list[int] = []  # recycled slots; never-used slots start at _next_unused
        self._next_unused = 0
        self._stamp = 0
        self.evicted_total = 0
        self.capacity = 0
        self._alloc(max_series if max_series <= _PREALLOCATE_UP_TO else _INITIAL_CAPACITY)

    # ------------------------------------------------------------------ storage
    def _alloc(self, capacity: int) -> None:
        old = self.capacity
        L = self.ring_length

        def grown(
            arr: np.ndarray | None, shape_tail: tuple[int, ...], dtype: npt.DTypeLike, fill: float, axis: int = 0
        ) -> np.ndarray:
            del fill  # every slot is initialised by _init_slot when it is handed out
            new_shape = list(shape_tail)
            new_shape.insert(axis, capacity)
            out = np.zeros(new_shape, dtype=dtype)
            if arr is not None and old:
                index = [slice(None)] * out.ndim
                index[axis] = slice(0, old)
                out[tuple(index)] = arr
            return out

        def g(name: str) -> np.ndarray | None:  # the array allocated so far (None on the first call)
            return getattr(self, name, None)

        self.ring = grown(g("ring"), (L,), np.float32, 0.0)
        self.count = grown(g("count"), (), np.int64, 0)  # 0: no value yet (last_ts meaningless)
        self.last_ts = grown(g("last_ts"), (), np.float64, -np.inf)
        self.interval = grown(g("interval"), (), np.float32, 0.0)
        self.mean = grown(g("mean"), (), np.float64, 0.0)
        self.m2 = grown(g("m2"), (), np.float64, 0.0)
        self.std = grown(g("std"), (), np.float32, 1.0)
        self.fixed = grown(g("fixed"), (), np.bool_, False)
        self.err_mean = grown(g("err_mean"), (), np.float32, self.init_err_mean)
        self.err_var = grown(g("err_var"), (), np.float32, self.init_err_var)
        self.pred = grown(g("pred"), (), np.float32, 0.0)
        self.last_seen = grown(g("last_seen"), (), np.int64, 0)

        old_rnn = g("rnn") or [None] * len(self.rnn_shapes)
        self.rnn = [grown(arr, shape, np.float32, 0.0, axis=1) for arr, shape in zip(old_rnn, self.rnn_shapes)]
        self.slot_ids.extend([None] * (capacity - old))
        self.capacity = capacity

    def reset_rnn(self, rnn_shapes: tuple) -> None:
        """Replace the recurrent state arrays (new model shape); all zero."""
        self.rnn_shapes = tuple(rnn_shapes)
        self.rnn = [np.zeros((layers, self.capacity, hidden), np.float32) for layers, hidden in self.rnn_shapes]

    def bytes_per_series(self) -> int:
        """Array bytes held per slot (excluding the id string and dict entry)."""
        arrays = [
            self.ring,
            self.count,
            self.last_ts,
            self.interval,
            self.mean,
            self.m2,
            self.std,
            self.fixed,
            self.err_mean,
            self.err_var,
            self.pred,
            self.last_seen,
        ]
        total = sum(a.nbytes for a in arrays) + sum(a.nbytes for a in self.rnn)
        return total // max(self.capacity, 1)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ slots
    def slots(
        self, series_ids: list[str], fixed_normalizers: Mapping[str, Sequence[float]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots ``(n,)`` for ``series_ids`` (allocating new ones) and a bool mask of new series.

        New series take their normaliser from ``fixed_normalizers[series] -> (mean, std)`` when
        present (seen in training) and it has a scale (``has_scale``), else are normalised online. When the cap is hit, the least
        recently seen series not in this call are evicted (``evicted_total``).
        """
        self._stamp += 1
        try:  # common case: every series already tracked (C-level lookups, no generator)
            idx = np.fromiter(map(self.ids.__getitem__, series_ids), dtype=np.int64, count=len(series_ids))
        except KeyError:
            get = self.ids.get
            idx = np.fromiter((get(s, -1) for s in series_ids), dtype=np.int64, count=len(series_ids))
        new_mask = idx < 0
        if new_mask.any():
            positions = np.flatnonzero(new_mask)
            new_ids = list(dict.fromkeys(series_ids[i] for i in positions))
            # Touch the series of this batch that already exist, so eviction spares them.
            self.last_seen[idx[~new_mask]] = self._stamp
            self._make_room(len(new_ids))
            for series in new_ids:
                if self._free:
                    slot = self._free.pop()
                else:
                    slot = self._next_unused
                    self._next_unused += 1
                self.ids[series] = slot
                self.slot_ids[slot] = series
                self._init_slot(slot, (fixed_normalizers or {}).get(series))
            for i in positions:
                idx[i] = self.ids[series_ids[i]]
        self.last_seen[idx] = self._stamp
        return idx, new_mask

    def _available(self) -> int:
        return len(self._free) + self.capacity - self._next_unused

    def _make_room(self, needed: int) -> None:
        """Free or allocate ``needed`` slots, evicting only series not seen in the current batch.

        Tracked series are kept to ``max_series`` by evicting the least recently seen ones whose
        ``last_seen`` is older than this batch's stamp. When that is not enough (the batch alone
        needs more than ``max_series`` slots), capacity grows past the cap instead of evicting a
        series being scored; the excess is evicted by a later batch.
        """
        excess = len(self.ids) + needed - self.max_series
        if excess > 0:
            used = np.array(list(self.ids.values()), dtype=np.int64)
            idle = used[self.last_seen[used] < self._stamp]
            k = min(excess, len(idle))
            if k:
                self.evict_slots(idle[np.argpartition(self.last_seen[idle], k - 1)[:k]])
        while self._available() < needed:
            target = min(self.capacity * 2, self.max_series)
            if target <= self.capacity:  # over the cap for this batch only
                target = self.capacity + needed - self._available()
            self._alloc(target)

    def _init_slot(self, slot: int, normalizer: Sequence[float] | None) -> None:
        self.ring[slot] = 0.0
        self.count[slot] = 0
        self.last_ts[slot] = 0.0
        self.interval[slot] = 0.0
        self.err_mean[slot] = self.init_err_mean
        self.err_var[slot] = self.init_err_var
        self.pred[slot] = 0.0
        for arr in self.rnn:
            arr[:, slot] = 0.0
        if normalizer is not None and has_scale(normalizer[0], normalizer[1]):
            mean, std = float(normalizer[0]), float(normalizer[1])
            self.mean[slot], self.std[slot], self.fixed[slot] = mean, max(std, 1e-6), True
        else:
            self.mean[slot], self.m2[slot], self.std[slot], self.fixed[slot] = 0.0, 0.0, 1.0, False

    def evict_slots(self, slots: np.ndarray) -> int:
        """Forget the series in ``slots``; returns how many were dropped."""
        dropped = 0
        for slot in np.asarray(slots, dtype=np.int64).tolist():
            series = self.slot_ids[slot]
            if series is None:
                continue
            del self.ids[series]
            self.slot_ids[slot] = None
            self._free.append(slot)
            dropped += 1
        self.evicted_total += dropped
        return dropped

    def forget(self, series_ids: Iterable[str]) -> int:
        """Drop the named series (e.g. partitions revoked); not counted as evictions."""
        slots = [self.ids[s] for s in series_ids if s in self.ids]
        before = self.evicted_total
        dropped = self.evict_slots(np.array(slots, dtype=np.int64))
        self.evicted_total = before
        return dropped

    # ------------------------------------------------------------------ values
    def normalize(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values ``(n,)`` or ``(n, w)`` in the normalised units of their series ``idx (n,)``."""
        mean, std = self.mean[idx], self.std[idx].astype(np.float64)
        if values.ndim == 2:
            mean, std = mean[:, None], std[:, None]
        return (values - mean) / std

    def push(
        self,
        idx: np.ndarray,
        ts: np.ndarray,
        fed: np.ndarray,
        *,
        count: np.ndarray | None = None,
        last_ts: np.ndarray | None = None,
        fixed: np.ndarray | None = None,
    ) -> None:
        """Append fed values ``(n,)`` (raw units, distinct slots) to the rings and online normalisers.

        ``count``, ``last_ts``, ``fixed`` ``(n,)``: the slots' current values when the caller already
        gathered them (saves the gathers; must be current).
        """
        fed = _clip(fed, -MAX_ABS_VALUE, MAX_ABS_VALUE)
        if count is None:
            count = self.count[idx]
        if last_ts is None:
            last_ts = self.last_ts[idx]
        if fixed is None:
            fixed = self.fixed[idx]
        self.ring[idx, count % self.ring_length] = fed
        step = ts - last_ts
        stepped = (count > 0) & (step > 0)
        if np.count_nonzero(stepped) == len(stepped):
            self.interval[idx] = step
        elif np.count_nonzero(stepped):
            self.interval[idx[stepped]] = step[stepped]
        self.last_ts[idx] = ts
        new_count = count + 1
        self.count[idx] = new_count
        online = ~fixed
        if np.count_nonzero(online) == len(online):
            o, x, n = idx, fed, new_count.astype(np.float64)
        elif np.count_nonzero(online):
            o = idx[online]
            x = fed[online]
            n = new_count[online].astype(np.float64)
        else:
            return
        old = self.mean[o]
        delta = x - old
        mean = old + delta / n
        m2 = self.m2[o] + delta * (x - mean)
        self.m2[o] = m2
        self.mean[o] = mean
        std = np.sqrt(m2 / n)
        self.std[o] = np.maximum(std, 1e-3 * np.maximum(np.abs(mean), 1.0))

    def window_times(self, idx: np.ndarray, length: int) -> np.ndarray:
        """Timestamps ``(n, length)`` epoch s of the values ``windows(idx, length)`` returns, oldest first,
        reconstructed from ``last_ts`` and ``interval`` (a gap inside the window is not seen)."""
        back = (length - 1 - np.arange(length, dtype=np.float64))[None, :]
        return self.last_ts[idx][:, None] - back * self.interval[idx].astype(np.float64)[:, None]

    def windows(self, idx: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Last ``length`` fed values per slot ``(n, length)`` raw units, oldest first, and a validity mask."""
        count = self.count[idx]
        cols = count[:, None] - length + np.arange(length)[None, :]
        valid = cols >= 0
        values = self.ring[idx[:, None], cols % self.ring_length]
        return values, valid
