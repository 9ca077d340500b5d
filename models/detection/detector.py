"""Kafka-free streaming anomaly detector: per-series state, one batched model call per round.

Composition: a forecaster step of the served model's kind (``models.detection.forecast_step``) and
a threshold policy (``models.detection.policy.ThresholdPolicy``; the shipped ones and their registry
in ``models.detection.policies``), both chosen when the detector (or model) is set, never per round.
The detector owns the series state (``models.detection.series_state``) and the error statistics.
Long (about 600 lines) because it also holds the public result and config types (``BatchResult``,
``DetectorConfig``) and the model swap with its state rebuild.

``StreamingDetector.process(series_ids, ts, values, alert=True) -> BatchResult`` takes a batch of
events (any mix of series, in arrival order) and, for every event, decides one status:

* ``SCORED``: forecast error turned into a score and compared with the threshold (may be an anomaly);
* ``WARMUP``: taken into state without alerting (the series has fewer than ``warmup_events`` values,
  or ``alert`` was False for it, e.g. a replay after a rebalance);
* ``DUPLICATE``: same timestamp as the series' last accepted event (dropped, state unchanged);
* ``OUT_OF_ORDER``: older than the series' last accepted event (dropped, state unchanged).

How an event is scored (all in the series' normalised units ``z = (value - mean) / std``):

1. Events are grouped into *rounds*: round k holds the k-th event of each series in the batch
   (stable argsort), so repeated events of one series are stepped in order; each round is one
   gather -> model call -> scatter over slot indices.
2. Forecast of this value, made from the history before it (``ForecasterStep.forecast``). Many-to-many: the forecast the model
   emitted when it stepped the previous value (kept per series; stepping costs O(1) per event).
   Many-to-one: the model re-runs the last ``window`` values (zero = mean before the series has
   that many).
3. ``error = |z - forecast|`` (normalised units) with per-series EWMA error statistics ``err_mean``,
   ``err_std`` (O(1) state, seeded from the bundle's calibration). The score, by the policy that
   ``threshold_method`` names (``ThresholdPolicy.step``: score, flag, outlier, band):

   * ``"likelihood"`` (default; what the NAB backtest measures): ``models.detection.thresholds.error_likelihood.ErrorLikelihood`` over the raw
     error ``|value - predicted|`` and the value: anomaly likelihood of the recent errors (Numenta
     style) or 1.0 for a value outside the range seen so far ("spatial" check), in [0, 1]; flag at
     ``score >= threshold`` (0.5) with a refractory period after each flag (score 0 during it).
     The value counts as an *outlier* for the state update below when
     ``error_z > err_mean + outlier_z * err_std``.
   * ``"zscore"``: ``score = (error - err_mean) / err_std``, anomaly when ``score > threshold`` (6.0).
   * ``"static"``: ``score = error``, anomaly when ``score > threshold`` (6.0).

   Warm-up events (and ``alert=False``) never flag; they still update every statistic.
4. State update. A flagged (zscore/static) or outlier (likelihood) value is NOT fed as is (a spike
   would disturb the next forecasts):
   ``flagged_update="clip"`` (default) feeds the forecast moved toward the value by the threshold
   error, so a real level shift is followed within a few steps; ``"predict"`` feeds the forecast;
   ``"raw"`` feeds the value. The error statistics take the error clipped the same way.
   The fed value (raw units) goes into the series' ring buffer and online normaliser.

Calendar features: when the bundle's ``config.calendar_features`` is set, the model input of every
event is ``[z, models.forecasting.calendar.calendar_features(ts)]`` (built per round, vectorised); windows and
the state rebuild take their timestamps from ``SeriesStateStore.window_times`` (last ts and step).

Series seen in training use the bundle's (mean, std); others, and a series that was flat in training
(no scale to fix, ``models.detection.series_state.has_scale``), are normalised online (Welford over the fed
values). ``swap_model(bundle)`` replaces the model between batches and rebuilds every
series' recurrent state by running its ring buffer through the new model (a many-to-many series
keeps its last ``REBUILD_STEPS`` = 32 values for that; a many-to-one series its input window).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.core.kinds import KINDS
from models.core.limits import MAX_ABS_VALUE
from models.core.streaming import clip as _clip
from models.core.streaming import rounds
from models.detection.contracts import ServedBundle
from models.detection.forecast_step import ForecasterStep, RecurrentStep, WindowStep
from models.detection.policies import policy_spec
from models.detection.policy import PolicyStep, RoundErrors, ThresholdPolicy
from models.detection.series_state import SeriesStateStore, has_scale
from models.detection.status import STATUS_NAMES, Status
from models.detection.thresholds.error_likelihood import LikelihoodConfig
from models.forecasting.calendar import calendar_dim, calendar_features
from models.forecasting.calibration import Calibration

# Hot path: models.core.streaming.clip (np.clip without its Python wrapper), and
# np.count_nonzero(mask) as the cheap any()/all() test of a mask.
_REBUILD_CHUNK = 4096
# Values a many-to-many series keeps to rebuild its recurrent state after a model swap: the model is
# trained with a loss at every step from a zero state on, so 32 steps of warm-up are within what it
# learnt; keeping a whole window (64 at the served size) would cost 128 B more per series.
REBUILD_STEPS = 32


@dataclass
class DetectorConfig:
    """Tunables of ``StreamingDetector`` (stable; the backtest sets these too)."""

    warmup_events: int | None = None  # values a series needs before it may alert (None: model window)
    threshold_method: str = "likelihood"  # a models.detection.policies name: "likelihood": ErrorLikelihood score
    # in [0, 1] | "zscore": EWMA z-score of the error | "static": raw normalised error
    threshold: float | None = None  # anomaly threshold (None: 0.5 likelihood, 6.0 zscore/static)
    outlier_z: float = 6.0  # likelihood: error z-score above which a value is fed clipped
    likelihood: dict[str, Any] = field(default_factory=dict)  # LikelihoodConfig overrides (likelihood method)
    error_alpha: float = 0.02  # EWMA weight of the per-series error statistics
    min_error_std: float = 0.05  # floor of the per-series error std (normalised units)
    flagged_update: str = "clip"  # what a flagged value feeds into state: "clip" | "predict" | "raw"
    clip_z: float = 20.0  # normalised inputs are clipped to +-clip_z
    max_series: int = 100_000  # tracked-series cap; least recently seen evicted beyond it
    ring_length: int | None = None  # raw values kept per series (None: what the model needs, ring_needed)
    initial_error_mean: float | None = None  # seed of the error statistics (None: bundle calibration)
    initial_error_std: float | None = None

    def __post_init__(self) -> None:
        spec = policy_spec(self.threshold_method)
        if self.threshold is None:
            self.threshold = spec.default_threshold
        self.policy()  # fail fast on bad policy settings (e.g. likelihood overrides, a threshold outside [0, 1])
        if self.flagged_update not in ("clip", "predict", "raw"):
            raise ValueError(f"flagged_update must be 'clip', 'predict' or 'raw', got {self.flagged_update!r}")
        if not 0 < self.error_alpha <= 1:
            raise ValueError("error_alpha must be in (0, 1]")
        if not (isinstance(self.max_series, numbers.Integral) and self.max_series >= 1):
            raise ValueError(f"max_series must be an int >= 1, got {self.max_series!r}")
        if self.warmup_events is not None and self.warmup_events < 0:
            raise ValueError(f"warmup_events must be >= 0 or None, got {self.warmup_events!r}")
        if self.ring_length is not None and self.ring_length < 1:
            raise ValueError(f"ring_length must be >= 1 or None, got {self.ring_length!r}")
        for name in ("clip_z", "min_error_std", "outlier_z"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not math.isfinite(float(self.threshold)):
            raise ValueError(f"threshold must be finite, got {self.threshold!r}")
        for name in ("initial_error_mean", "initial_error_std"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")

    @property
    def threshold_value(self) -> float:
        """``threshold`` as a float (set by ``__post_init__``)."""
        return float(self.threshold if self.threshold is not None else math.nan)

    def policy(self) -> ThresholdPolicy:
        """A fresh threshold policy of ``threshold_method`` (``models.detection.policies``)."""
        return policy_spec(self.threshold_method).build(self)

    def likelihood_config(self) -> LikelihoodConfig:
        """The ``ErrorLikelihood`` settings: ``likelihood`` overrides, threshold from ``threshold``."""
        extra = {k: v for k, v in self.likelihood.items() if k != "threshold"}
        try:
            return LikelihoodConfig(threshold=self.threshold_value, **extra)
        except TypeError as exc:
            raise ValueError(f"bad likelihood settings: {exc}") from exc


@dataclass
class BatchResult:
    """Per-event outcome arrays, all ``(n,)`` in input order. NaN where not scored."""

    status: np.ndarray  # int8: Status.SCORED / Status.WARMUP / Status.DUPLICATE / Status.OUT_OF_ORDER
    predicted: np.ndarray  # float64, raw units
    error: np.ndarray  # float64, |value - predicted| in raw units
    score: np.ndarray  # float64
    threshold: float
    is_anomaly: np.ndarray  # bool
    model: str = ""
    model_version: int | str | None = None
    evicted: int = 0  # series evicted to make room during this batch
    counts: dict = field(default_factory=dict)
    lower: np.ndarray | None = None  # float64, raw units: the band considered normal (``models.detection.band``)
    upper: np.ndarray | None = None
    route: np.ndarray | None = None  # int per event: index into ``routes`` (``models.routing``); None: one model
    routes: list = field(default_factory=list)  # [(model name, version, group)] of a routed batch

    def model_at(self, j: int) -> tuple[str, object]:
        """(model name, version) that scored event ``j``."""
        if self.route is None:
            return self.model, self.model_version
        name, version, _group = self.routes[int(self.route[j])]
        return name, version

    def band_at(self, j: int) -> tuple[float, float]:
        """(lower, upper) of event ``j`` (NaN when unknown)."""
        if self.lower is None or self.upper is None:
            return math.nan, math.nan
        return float(self.lower[j]), float(self.upper[j])

    def __len__(self) -> int:
        return len(self.status)


def _calibration_error_stats(cal: Calibration | None) -> tuple[float, float]:
    """(mean, std) of the normalised validation error from a bundle's ``Calibration``; (0.3, 0.3) when
    the bundle has none or its figures are unusable (not finite, std <= 0)."""
    if cal is None:
        return 0.3, 0.3
    mean, std = float(cal.error_mean), float(cal.error_std)
    if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        return 0.3, 0.3
    return mean, std


def ring_needed(bundle: ServedBundle) -> int:
    """Raw values per series a bundle needs: a many-to-one model its input window; a many-to-many model
    at most :data:`REBUILD_STEPS` (only to rebuild its recurrent state after a model swap)."""
    window = int(bundle.config.window)
    return window if bundle.kind == "many-to-one" else min(window, REBUILD_STEPS)


def _feed_raw(step: PolicyStep, z: np.ndarray, fz: np.ndarray, err: np.ndarray, clip_z: float) -> np.ndarray:
    return z  # already within +-clip_z


def _feed_predict(step: PolicyStep, z: np.ndarray, fz: np.ndarray, err: np.ndarray, clip_z: float) -> np.ndarray:
    return np.asarray(_clip(np.where(step.outlier, fz, z), -clip_z, clip_z))


def _feed_clip(step: PolicyStep, z: np.ndarray, fz: np.ndarray, err: np.ndarray, clip_z: float) -> np.ndarray:
    reach = np.minimum(err, np.maximum(step.bound, 0.0))
    return np.asarray(_clip(np.where(step.outlier, fz + np.sign(z - fz) * reach, z), -clip_z, clip_z))


# ``flagged_update`` -> what an outlier feeds (normalised): the value, the forecast, or the forecast
# moved toward the value by the outlier bound
_FEED_OUTLIER: dict[str, Callable[[PolicyStep, np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]] = {
    "raw": _feed_raw,
    "predict": _feed_predict,
    "clip": _feed_clip,
}


@dataclass(slots=True)
class _Outputs:
    """The per-event output arrays of one ``process`` call, all ``(n,)``; rounds write their rows."""

    status: np.ndarray
    predicted: np.ndarray
    error: np.ndarray
    score: np.ndarray
    flags: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Outputs:
        predicted, error, score, lower, upper = (np.full(n, np.nan) for _ in range(5))
        return cls(
            np.full(n, Status.WARMUP, dtype=np.int8), predicted, error, score, np.zeros(n, dtype=bool), lower, upper
        )

    def record(self, p: np.ndarray, warm: np.ndarray, errors: RoundErrors, step: PolicyStep) -> None:
        self.status[p] = warm  # Status.WARMUP (1) where warm, else Status.SCORED (0)
        self.predicted[p] = errors.predicted
        self.error[p] = errors.error
        self.score[p] = step.score
        self.lower[p], self.upper[p] = step.lower, step.upper
        self.flags[p] = step.flag


@dataclass(slots=True)
class _Round:
    """The events of one round that were admitted: batch positions ``p``, slots ``s`` and their
    times, value counts and previous times, all ``(m,)``."""

    p: np.ndarray
    s: np.ndarray
    t: np.ndarray
    count: np.ndarray
    last: np.ndarray


class StreamingDetector:
    """Scores events of many series against one forecaster; see the module docstring.

    Composition: a ``ForecasterStep`` of the served model's kind (``models.detection.forecast_step``)
    and a ``ThresholdPolicy`` (``models.detection.policies``; ``policy`` overrides the one
    ``config.threshold_method`` names), both chosen here, not per round.
    """

    def __init__(
        self, bundle: ServedBundle, config: DetectorConfig | None = None, policy: ThresholdPolicy | None = None
    ):
        self.config = config or DetectorConfig()
        self._check_bundle(bundle)
        self.bundle = bundle
        needed = ring_needed(bundle)
        ring = max(self.config.ring_length or needed, needed)
        mean, std = self._seed(bundle)
        self.store = SeriesStateStore(ring, self.config.max_series, self._rnn_shapes(bundle), mean, std * std)
        self.policy = policy if policy is not None else self.config.policy()
        self._feed_outlier = _FEED_OUTLIER[self.config.flagged_update]
        self._forecaster = self._forecaster_step(bundle)

    # ------------------------------------------------------------------ model
    @staticmethod
    def _check_bundle(bundle: ServedBundle) -> None:
        for attr in ("kind", "config", "forecaster"):
            if not hasattr(bundle, attr):
                raise ValueError(f"model bundle has no '{attr}'")
        if bundle.kind not in KINDS:
            raise ValueError(f"unknown model kind {bundle.kind!r}")
        config = bundle.config
        features = int(config.features)
        calendar = bool(config.calendar_features)
        need = 1 + calendar_dim(bool(config.calendar_week)) if calendar else 1
        if features != need:
            raise ValueError(
                "the streaming detector serves univariate models (features=1, or value + "
                f"calendar columns with calendar_features): expected {need}, got features={features}"
            )
        if bundle.kind == "many-to-many" and not hasattr(bundle.forecaster, "step"):
            raise ValueError("a many-to-many forecaster must have step()")

    def _forecaster_step(self, bundle: ServedBundle) -> ForecasterStep:
        if bundle.kind == "many-to-many":
            return RecurrentStep(self.store, bundle.forecaster, self._inputs)
        window = int(bundle.config.window)
        calendar = bool(bundle.config.calendar_features)
        return WindowStep(self.store, bundle.forecaster, window, self.config.clip_z, calendar, self._inputs)

    @staticmethod
    def _rnn_shapes(bundle: ServedBundle) -> tuple[tuple[int, int], ...]:
        if bundle.kind != "many-to-many":
            return ()
        shape = (int(bundle.config.layers), int(bundle.config.hidden))
        return (shape, shape)  # (h, c)

    def _seed(self, bundle: ServedBundle) -> tuple[float, float]:
        mean, std = _calibration_error_stats(bundle.calibration)
        if self.config.initial_error_mean is not None:
            mean = self.config.initial_error_mean
        if self.config.initial_error_std is not None:
            std = self.config.initial_error_std
        return mean, std

    @property
    def calendar(self) -> bool:
        """The serving model takes ``models.forecasting.calendar`` features of each event's ``ts`` after its value."""
        return bool(self.bundle.config.calendar_features)

    def _inputs(self, z: np.ndarray, times: np.ndarray) -> torch.Tensor:
        """Model input from normalised values ``(n,)`` or ``(n, w)`` and their epoch-s times (same shape):
        ``(n, features)`` / ``(n, w, features)`` float32, calendar columns appended when the model asks."""
        x = z.astype(np.float32)[..., None]
        if self.calendar:
            week = bool(self.bundle.config.calendar_week)
            cal = calendar_features(times.reshape(-1), week).reshape((*times.shape, calendar_dim(week)))
            x = np.concatenate([x, cal], axis=-1)
        return torch.from_numpy(x)

    @property
    def window(self) -> int:
        return int(self.bundle.config.window)

    @property
    def warmup_events(self) -> int:
        return self.config.warmup_events if self.config.warmup_events is not None else self.window

    @property
    def model_name(self) -> str:
        return str(self.bundle.name or "")

    @property
    def model_version(self) -> int | None:
        return self.bundle.version

    @property
    def normalizers(self) -> Mapping[str, Sequence[float]]:
        return self.bundle.normalizers or {}

    def swap_model(self, bundle: ServedBundle) -> None:
        """Serve ``bundle`` from the next batch on; rebuild recurrent state from the ring buffers.

        Raises ``ValueError`` (and keeps the old model) when the bundle cannot be served.
        """
        self._check_bundle(bundle)
        store = self.store
        needed = ring_needed(bundle)
        if needed > store.ring_length:
            self._resize_ring(needed)
        mean, std = self._seed(bundle)
        old_bundle, old_seed, old_step = self.bundle, (store.init_err_mean, store.init_err_var), self._forecaster
        self.bundle = bundle
        try:
            self._forecaster = self._forecaster_step(bundle)
            store.init_err_mean, store.init_err_var = mean, std * std
            slots = np.array(sorted(store.ids.values()), dtype=np.int64)
            self._refresh_normalizers(slots)
            store.reset_rnn(self._rnn_shapes(bundle))
            store.pred[:] = 0.0
            if bundle.kind == "many-to-many" and len(slots):
                self._rebuild_state(slots)
        except Exception:
            self.bundle, self._forecaster = old_bundle, old_step
            store.init_err_mean, store.init_err_var = old_seed
            store.reset_rnn(self._rnn_shapes(old_bundle))
            self._refresh_normalizers(np.array(sorted(store.ids.values()), dtype=np.int64))
            if old_bundle.kind == "many-to-many" and len(store.ids):
                self._rebuild_state(np.array(sorted(store.ids.values()), dtype=np.int64))
            raise

    def _resize_ring(self, length: int) -> None:
        store = self.store
        slots = np.arange(store.capacity)
        values, valid = store.windows(slots, store.ring_length)
        ring = np.zeros((store.capacity, length), np.float32)
        # place the last ring_length values so that position count % length finds them
        cols = store.count[:, None] - store.ring_length + np.arange(store.ring_length)[None, :]
        rows = np.broadcast_to(slots[:, None], cols.shape)
        ring[rows[valid], cols[valid] % length] = values[valid]
        store.ring, store.ring_length = ring, length

    def _refresh_normalizers(self, slots: np.ndarray) -> None:
        """Series known to the serving bundle use its (mean, std) (if it has a scale: ``has_scale``); the
        others go online."""
        store, norms = self.store, self.normalizers
        for slot in slots.tolist():
            norm = norms.get(store.slot_ids[slot])
            if norm is not None and has_scale(norm[0], norm[1]):
                m, s = norm[0], norm[1]
                store.mean[slot], store.std[slot], store.fixed[slot] = float(m), max(float(s), 1e-6), True
            elif store.fixed[slot]:
                values, valid = store.windows(np.array([slot]), store.ring_length)
                v = values[valid].astype(np.float64)
                n = int(store.count[slot])
                mu = float(v.mean()) if len(v) else 0.0
                var = float(v.var()) if len(v) else 0.0
                store.mean[slot], store.m2[slot], store.fixed[slot] = mu, var * n, False
                store.std[slot] = max(math.sqrt(var), 1e-3 * max(abs(mu), 1.0))

    @torch.inference_mode()
    def _rebuild_state(self, slots: np.ndarray) -> None:
        """Run each series' ring buffer (oldest first) through the many-to-many model from zero state."""
        store, model = self.store, self.bundle.forecaster
        length = store.ring_length
        lengths = np.minimum(store.count[slots], length)
        for n in np.unique(lengths).tolist():
            group = slots[lengths == n]
            if n == 0:
                continue
            for start in range(0, len(group), _REBUILD_CHUNK):
                s = group[start : start + _REBUILD_CHUNK]
                values, _ = store.windows(s, n)
                z = np.clip(store.normalize(s, values.astype(np.float64)), -self.config.clip_z, self.config.clip_z)
                times = store.window_times(s, n) if self.calendar else z
                pred, (h, c) = model(self._inputs(z, times), None)
                store.rnn[0][:, s] = h.numpy()
                store.rnn[1][:, s] = c.numpy()
                store.pred[s] = pred[:, -1, 0].numpy()

    # ------------------------------------------------------------------ scoring
    def process(self, series_ids: list[str], ts: Any, values: Any, alert: Any = True) -> BatchResult:
        """Score one batch of events in arrival order; see the module docstring.

        ``series_ids`` list of n str; ``ts (n,)`` epoch seconds; ``values (n,)`` finite floats;
        ``alert`` bool or bool array ``(n,)`` (False: warm-up only, never an anomaly).
        """
        n = len(series_ids)
        ts = np.asarray(ts, dtype=np.float64).reshape(n)
        values = np.asarray(values, dtype=np.float64).reshape(n)
        alert_arr = np.broadcast_to(np.asarray(alert, dtype=bool), (n,))
        noalert = None if alert_arr.all() else ~alert_arr
        out = _Outputs.empty(n)
        evicted_before = self.store.evicted_total
        if n:
            idx, new = self.store.slots(list(series_ids), self.normalizers)
            self.policy.ensure(self.store.capacity)
            if new.any():  # a new series (maybe in an evicted series' slot) starts fresh
                self.policy.reset(np.unique(idx[new]))
            with torch.inference_mode():
                try:
                    for positions in rounds(idx):
                        self._round(positions, idx[positions], ts, values, noalert, out)
                finally:
                    self._forecaster.flush()
        counts = {name: int((out.status == code).sum()) for code, name in STATUS_NAMES.items()}
        counts["anomalies"] = int(out.flags.sum())
        return BatchResult(
            out.status,
            out.predicted,
            out.error,
            out.score,
            float(self.policy.threshold),
            out.flags,
            self.model_name,
            self.model_version,
            self.store.evicted_total - evicted_before,
            counts,
            out.lower,
            out.upper,
        )

    def _round(
        self,
        p: np.ndarray,
        s: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        noalert: np.ndarray | None,
        out: _Outputs,
    ) -> None:
        """One round: distinct slots ``s (m,)`` at batch positions ``p (m,)``; ``noalert`` bool ``(n,)`` or
        None (every event may alert). Forecast, policy, outputs, then what goes into state.
        Hot path: masks are applied only when some row needs them."""
        r = self._admit(p, s, ts[p], out.status)
        if r is None:
            return
        store, cfg = self.store, self.config
        x = _clip(values[r.p], -MAX_ABS_VALUE, MAX_ABS_VALUE)  # the event bound, for Kafka-free callers too
        fixed = store.fixed[r.s]
        mean, std, z = self._normalise(r, x, fixed)
        fz = self._forecaster.forecast(r.s, mean, std)  # forecast of this value from the history before it
        err = np.abs(z - fz)
        e_mean = store.err_mean[r.s].astype(np.float64)
        e_var32 = store.err_var[r.s]
        e_std = np.maximum(np.sqrt(e_var32.astype(np.float64)), cfg.min_error_std)
        warm = r.count < self.warmup_events
        if noalert is not None:
            warm |= noalert[r.p]
        pred_raw = fz * std + mean
        errors = RoundErrors(r.s, r.t, r.last, x, pred_raw, np.abs(x - pred_raw), err, e_mean, e_std, std, ~warm)
        step = self.policy.step(errors)
        out.record(r.p, warm, errors, step)
        # what goes into state
        fed_z = self._fed_z(step, z, fz, err)
        over = step.outlier | (err > step.bound)
        e_in = np.where(over, np.maximum(step.bound, e_mean + e_std), err) if np.count_nonzero(over) else err
        self._learn_errors(r, e_in, e_mean, e_var32)
        self._forecaster.feed(r.s, fed_z, r.t)
        self._push(r, x, mean, std, fixed, step.outlier, fed_z)

    def _admit(self, p: np.ndarray, s: np.ndarray, t: np.ndarray, status: np.ndarray) -> _Round | None:
        """Drop (and mark) duplicate and out-of-order events; None when none is left."""
        store = self.store
        count = store.count[s]
        last = store.last_ts[s]
        late = t <= last
        if np.count_nonzero(late):
            seen = count > 0
            dup = seen & (t == last)
            ooo = seen & (t < last)
            if np.count_nonzero(dup) or np.count_nonzero(ooo):
                status[p[dup]] = Status.DUPLICATE
                status[p[ooo]] = Status.OUT_OF_ORDER
                keep = ~(dup | ooo)
                p, s, t, count, last = p[keep], s[keep], t[keep], count[keep], last[keep]
                if not len(p):
                    return None
        return _Round(p, s, t, count, last)

    def _normalise(self, r: _Round, x: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, std, z)`` ``(m,)`` float64 of the round's values; an online normaliser starts at the
        series' first value."""
        store = self.store
        zero = r.count == 0
        if np.count_nonzero(zero):
            first = zero & ~fixed
            if np.count_nonzero(first):
                store.mean[r.s[first]] = x[first]
        mean, std = store.mean[r.s], store.std[r.s].astype(np.float64)
        clip_z = self.config.clip_z
        return mean, std, _clip((x - mean) / std, -clip_z, clip_z)

    def _fed_z(self, step: PolicyStep, z: np.ndarray, fz: np.ndarray, err: np.ndarray) -> np.ndarray:
        """The normalised value the forecaster takes: ``z``, or for an outlier what ``flagged_update`` says."""
        if not np.count_nonzero(step.outlier):
            return z  # already within +-clip_z
        return self._feed_outlier(step, z, fz, err, self.config.clip_z)

    def _learn_errors(self, r: _Round, e_in: np.ndarray, e_mean: np.ndarray, e_var32: np.ndarray) -> None:
        """EWMA of the (clipped) normalised errors, for series past half their warm-up."""
        store, a = self.store, self.config.error_alpha
        learn = r.count >= max(self.warmup_events // 2, 1)
        if np.count_nonzero(learn) == len(learn):
            d = e_in - e_mean
            store.err_mean[r.s] = e_mean + a * d
            store.err_var[r.s] = (1 - a) * (e_var32 + a * d * d)
        elif np.count_nonzero(learn):
            ls = r.s[learn]
            d = e_in[learn] - e_mean[learn]
            store.err_mean[ls] = e_mean[learn] + a * d
            store.err_var[ls] = (1 - a) * (e_var32[learn] + a * d * d)

    def _push(
        self,
        r: _Round,
        x: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        fixed: np.ndarray,
        outlier: np.ndarray,
        fed_z: np.ndarray,
    ) -> None:
        """Ring buffer and normaliser take the fed value (raw units). Unflagged values go in as they are,
        but bounded to +-clip_z normalised units once the series' scale is known (fixed normaliser, or
        >= 2 values online), warm-up included: one huge value must not inflate the online std (and
        blind the series) for good."""
        reach = self.config.clip_z * std
        kept = _clip(x, mean - reach, mean + reach)
        bounded = fixed | (r.count >= 2)
        if np.count_nonzero(bounded) < len(bounded):
            kept = np.where(bounded, kept, x)
        fed = np.where(outlier, fed_z * std + mean, kept) if np.count_nonzero(outlier) else kept
        self.store.push(r.s, r.t, fed, count=r.count, last_ts=r.last, fixed=fixed)

    # ------------------------------------------------------------------ housekeeping
    def forget(self, series_ids: Iterable[str]) -> int:
        """Drop the state of ``series_ids`` (e.g. their partitions were revoked)."""
        return self.store.forget(series_ids)

    @property
    def tracked_series(self) -> int:
        return len(self.store)

    def state_bytes_per_series(self) -> int:
        return self.store.bytes_per_series() + self.policy.bytes_per_series()
