"""Kafka-free streaming anomaly detector: per-series state, one batched model call per round.

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
2. Forecast of this value, made from the history before it. Many-to-many: the forecast the model
   emitted when it stepped the previous value (kept per series; stepping costs O(1) per event).
   Many-to-one: the model re-runs the last ``window`` values (zero = mean before the series has
   that many).
3. ``error = |z - forecast|`` (normalised units) with per-series EWMA error statistics ``err_mean``,
   ``err_std`` (O(1) state, seeded from the bundle's calibration). The score, by ``threshold_method``:

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
from dataclasses import dataclass, field

import numpy as np
import torch

from models.core.streaming import rounds
from models.detection.band import likelihood_band
from models.detection.series_state import VALUE_LIMIT, SeriesStateStore, has_scale
from models.detection.thresholds.error_likelihood import ErrorLikelihood, LikelihoodConfig
from models.forecasting.calendar import calendar_dim, calendar_features

# Hot path helpers: the ufunc behind np.clip without its Python wrapper (same results), and
# np.count_nonzero(mask) as the cheap any()/all() test of a mask.
_clip = (np._core if hasattr(np, "_core") else np.core).umath.clip

SCORED, WARMUP, DUPLICATE, OUT_OF_ORDER = 0, 1, 2, 3
STATUS_NAMES = {SCORED: "scored", WARMUP: "warmup", DUPLICATE: "duplicate_timestamp", OUT_OF_ORDER: "out_of_order"}
_REBUILD_CHUNK = 4096
# Values a many-to-many series keeps to rebuild its recurrent state after a model swap: the model is
# trained with a loss at every step from a zero state on, so 32 steps of warm-up are within what it
# learnt; keeping a whole window (64 at the served size) would cost 128 B more per series.
REBUILD_STEPS = 32
THRESHOLD_METHODS = ("likelihood", "zscore", "static")
DEFAULT_THRESHOLDS = {"likelihood": 0.5, "zscore": 6.0, "static": 6.0}


@dataclass
class DetectorConfig:
    """Tunables of ``StreamingDetector`` (stable; the backtest sets these too)."""

    warmup_events: int | None = None  # values a series needs before it may alert (None: model window)
    threshold_method: str = "likelihood"  # "likelihood": ErrorLikelihood score in [0, 1] | "zscore": EWMA z-score
    # of the error | "static": raw normalised error
    threshold: float | None = None  # anomaly threshold (None: 0.5 likelihood, 6.0 zscore/static)
    outlier_z: float = 6.0  # likelihood: error z-score above which a value is fed clipped
    likelihood: dict = field(default_factory=dict)  # LikelihoodConfig overrides (likelihood method)
    error_alpha: float = 0.02  # EWMA weight of the per-series error statistics
    min_error_std: float = 0.05  # floor of the per-series error std (normalised units)
    flagged_update: str = "clip"  # what a flagged value feeds into state: "clip" | "predict" | "raw"
    clip_z: float = 20.0  # normalised inputs are clipped to +-clip_z
    max_series: int = 100_000  # tracked-series cap; least recently seen evicted beyond it
    ring_length: int | None = None  # raw values kept per series (None: what the model needs, ring_needed)
    initial_error_mean: float | None = None  # seed of the error statistics (None: bundle calibration)
    initial_error_std: float | None = None

    def __post_init__(self) -> None:
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        if self.threshold is None:
            self.threshold = DEFAULT_THRESHOLDS[self.threshold_method]
        if self.threshold_method == "likelihood":
            self.likelihood_config()  # fail fast on bad overrides / a threshold outside [0, 1]
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

    def likelihood_config(self) -> LikelihoodConfig:
        """The ``ErrorLikelihood`` settings: ``likelihood`` overrides, threshold from ``threshold``."""
        extra = {k: v for k, v in self.likelihood.items() if k != "threshold"}
        try:
            return LikelihoodConfig(threshold=float(self.threshold), **extra)
        except TypeError as exc:
            raise ValueError(f"bad likelihood settings: {exc}") from exc


@dataclass
class BatchResult:
    """Per-event outcome arrays, all ``(n,)`` in input order. NaN where not scored."""

    status: np.ndarray  # int8: SCORED / WARMUP / DUPLICATE / OUT_OF_ORDER
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


def _calibration_error_stats(calibration: object) -> tuple[float, float]:
    """(mean, std) of the normalised validation error from a bundle's ``Calibration``; (0.3, 0.3) when
    the bundle has none or its figures are unusable (not finite, std <= 0)."""
    from models.forecasting.calibration import Calibration  # belongs with the module's imports (moved on merge)

    try:  # coerce also reads the calibration dicts of bundles built by hand (transitional)
        cal = Calibration.coerce(calibration)
    except (TypeError, ValueError):
        cal = None
    if cal is None:
        return 0.3, 0.3
    mean, std = cal.error_mean, cal.error_std
    if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        return 0.3, 0.3
    return mean, std


def ring_needed(bundle) -> int:
    """Raw values per series a bundle needs: a many-to-one model its input window; a many-to-many model
    at most :data:`REBUILD_STEPS` (only to rebuild its recurrent state after a model swap)."""
    window = int(bundle.config.window)
    return window if bundle.kind == "many-to-one" else min(window, REBUILD_STEPS)


class StreamingDetector:
    """Scores events of many series against one forecaster; see the module docstring."""

    def __init__(self, bundle, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()
        self._check_bundle(bundle)
        self.bundle = bundle
        needed = ring_needed(bundle)
        ring = max(self.config.ring_length or needed, needed)
        mean, std = self._seed(bundle)
        self.store = SeriesStateStore(ring, self.config.max_series, self._rnn_shapes(bundle), mean, std * std)
        self.likelihood = (
            ErrorLikelihood(self.config.likelihood_config()) if self.config.threshold_method == "likelihood" else None
        )

    # ------------------------------------------------------------------ model
    @staticmethod
    def _check_bundle(bundle) -> None:
        for attr in ("kind", "config", "forecaster"):
            if not hasattr(bundle, attr):
                raise ValueError(f"model bundle has no '{attr}'")
        if bundle.kind not in ("many-to-one", "many-to-many"):
            raise ValueError(f"unknown model kind {bundle.kind!r}")
        features = int(getattr(bundle.config, "features", 1))
        calendar = bool(getattr(bundle.config, "calendar_features", False))
        need = 1 + calendar_dim(bool(getattr(bundle.config, "calendar_week", True))) if calendar else 1
        if features != need:
            raise ValueError(
                "the streaming detector serves univariate models (features=1, or value + "
                f"calendar columns with calendar_features): expected {need}, got features={features}"
            )
        if bundle.kind == "many-to-many" and not hasattr(bundle.forecaster, "step"):
            raise ValueError("a many-to-many forecaster must have step()")

    @staticmethod
    def _rnn_shapes(bundle) -> tuple:
        if bundle.kind != "many-to-many":
            return ()
        shape = (int(bundle.config.layers), int(bundle.config.hidden))
        return (shape, shape)  # (h, c)

    def _seed(self, bundle) -> tuple[float, float]:
        mean, std = _calibration_error_stats(getattr(bundle, "calibration", None))
        if self.config.initial_error_mean is not None:
            mean = self.config.initial_error_mean
        if self.config.initial_error_std is not None:
            std = self.config.initial_error_std
        return mean, std

    @property
    def calendar(self) -> bool:
        """The serving model takes ``models.forecasting.calendar`` features of each event's ``ts`` after its value."""
        return bool(getattr(self.bundle.config, "calendar_features", False))

    def _inputs(self, z: np.ndarray, times: np.ndarray) -> torch.Tensor:
        """Model input from normalised values ``(n,)`` or ``(n, w)`` and their epoch-s times (same shape):
        ``(n, features)`` / ``(n, w, features)`` float32, calendar columns appended when the model asks."""
        x = z.astype(np.float32)[..., None]
        if self.calendar:
            week = bool(getattr(self.bundle.config, "calendar_week", True))
            cal = calendar_features(times.reshape(-1), week).reshape(times.shape + (calendar_dim(week),))
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
        return str(getattr(self.bundle, "name", "") or "")

    @property
    def model_version(self):
        return getattr(self.bundle, "version", None)

    @property
    def normalizers(self) -> dict:
        return getattr(self.bundle, "normalizers", None) or {}

    def swap_model(self, bundle) -> None:
        """Serve ``bundle`` from the next batch on; rebuild recurrent state from the ring buffers.

        Raises ``ValueError`` (and keeps the old model) when the bundle cannot be served.
        """
        self._check_bundle(bundle)
        store = self.store
        needed = ring_needed(bundle)
        if needed > store.ring_length:
            self._resize_ring(needed)
        mean, std = self._seed(bundle)
        old_bundle, old_seed = self.bundle, (store.init_err_mean, store.init_err_var)
        self.bundle = bundle
        try:
            store.init_err_mean, store.init_err_var = mean, std * std
            slots = np.array(sorted(store.ids.values()), dtype=np.int64)
            self._refresh_normalizers(slots)
            store.reset_rnn(self._rnn_shapes(bundle))
            store.pred[:] = 0.0
            if bundle.kind == "many-to-many" and len(slots):
                self._rebuild_state(slots)
        except Exception:
            self.bundle = old_bundle
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
    def process(self, series_ids: list[str], ts, values, alert=True) -> BatchResult:
        """Score one batch of events in arrival order; see the module docstring.

        ``series_ids`` list of n str; ``ts (n,)`` epoch seconds; ``values (n,)`` finite floats;
        ``alert`` bool or bool array ``(n,)`` (False: warm-up only, never an anomaly).
        """
        n = len(series_ids)
        ts = np.asarray(ts, dtype=np.float64).reshape(n)
        values = np.asarray(values, dtype=np.float64).reshape(n)
        alert_arr = np.broadcast_to(np.asarray(alert, dtype=bool), (n,))
        noalert = None if alert_arr.all() else ~alert_arr
        status = np.full(n, WARMUP, dtype=np.int8)
        predicted = np.full(n, np.nan)
        error = np.full(n, np.nan)
        score = np.full(n, np.nan)
        flags = np.zeros(n, dtype=bool)
        band = (np.full(n, np.nan), np.full(n, np.nan))
        evicted_before = self.store.evicted_total
        if n:
            idx, new = self.store.slots(list(series_ids), self.normalizers)
            if self.likelihood is not None:
                self.likelihood.ensure(self.store.capacity)
                if new.any():  # a new series (maybe in an evicted series' slot) starts fresh
                    self.likelihood.reset(np.unique(idx[new]))
            with torch.inference_mode():
                carry = None
                try:
                    for positions in rounds(idx):
                        carry = self._round(
                            positions,
                            idx[positions],
                            ts,
                            values,
                            noalert,
                            status,
                            predicted,
                            error,
                            score,
                            flags,
                            carry,
                            band,
                        )
                finally:
                    self._write_back(carry)
        counts = {name: int((status == code).sum()) for code, name in STATUS_NAMES.items()}
        counts["anomalies"] = int(flags.sum())
        return BatchResult(
            status,
            predicted,
            error,
            score,
            float(self.config.threshold),
            flags,
            self.model_name,
            self.model_version,
            self.store.evicted_total - evicted_before,
            counts,
            band[0],
            band[1],
        )

    def _write_back(self, carry) -> None:
        """Scatter a round's model outputs kept in ``carry`` ``(slots, h, c, pred)`` into the store."""
        if carry is not None:
            s, h, c, pred = carry
            self.store.rnn[0][:, s] = h.numpy()
            self.store.rnn[1][:, s] = c.numpy()
            self.store.pred[s] = pred

    def _round(self, p, s, ts, values, noalert, status, predicted, error, score, flags, carry=None, band=None):
        """One round: distinct slots ``s (m,)`` at batch positions ``p (m,)``; ``noalert`` bool ``(n,)`` or
        None (every event may alert). Hot path: masks are applied only when some row needs them.

        Many-to-many: the model outputs of a round (``carry``: slots, h, c, pred) are kept out of the
        store while the next round steps the very same slots (the usual case: every series once per
        round), and scattered back otherwise; returns what to carry on (``process`` writes it back).
        """
        store, cfg = self.store, self.config
        t = ts[p]
        count = store.count[s]
        last = store.last_ts[s]
        late = t <= last
        if np.count_nonzero(late):
            seen = count > 0
            dup = seen & (t == last)
            ooo = seen & (t < last)
            if np.count_nonzero(dup) or np.count_nonzero(ooo):
                status[p[dup]] = DUPLICATE
                status[p[ooo]] = OUT_OF_ORDER
                keep = ~(dup | ooo)
                p, s, t, count, last = p[keep], s[keep], t[keep], count[keep], last[keep]
                if not len(p):
                    return carry
        x = _clip(values[p], -VALUE_LIMIT, VALUE_LIMIT)  # the event bound, for Kafka-free callers too
        fixed = store.fixed[s]
        zero = count == 0
        if np.count_nonzero(zero):
            first = zero & ~fixed
            if np.count_nonzero(first):  # an online normaliser starts at the series' first value
                store.mean[s[first]] = x[first]
        mean, std = store.mean[s], store.std[s].astype(np.float64)
        z = _clip((x - mean) / std, -cfg.clip_z, cfg.clip_z)
        kind = self.bundle.kind

        # forecast of this value from the history before it
        if kind == "many-to-many":
            if carry is not None and carry[0].tobytes() != s.tobytes():
                self._write_back(carry)
                carry = None
            fz = (store.pred[s] if carry is None else carry[3]).astype(np.float64)
        else:
            w = self.window
            win, valid = store.windows(s, w)
            zw = np.where(valid, (win - mean[:, None]) / std[:, None], 0.0)
            np.clip(zw, -cfg.clip_z, cfg.clip_z, out=zw)
            times = store.window_times(s, w) if self.calendar else zw
            out = self.bundle.forecaster(self._inputs(zw, times))
            fz = out[:, 0].numpy().astype(np.float64)

        err = np.abs(z - fz)
        e_mean = store.err_mean[s].astype(np.float64)
        e_var32 = store.err_var[s]
        e_std = np.maximum(np.sqrt(e_var32.astype(np.float64)), cfg.min_error_std)
        warm = count < self.warmup_events
        if noalert is not None:
            warm |= noalert[p]
        live = ~warm
        pred_raw = fz * std + mean
        err_raw = np.abs(x - pred_raw)
        if cfg.threshold_method == "likelihood":
            bound = e_mean + cfg.outlier_z * e_std  # error of an outlier
            if band is not None:  # from the state before this event
                band[0][p], band[1][p] = likelihood_band(self.likelihood, s, pred_raw)
            sc, flag = self.likelihood.step_unique(s, err_raw, x, live, t, t - last)
            flag &= live
            over = err > bound
            outlier = live & over  # fed clipped, like a zscore flag
        else:
            if cfg.threshold_method == "zscore":
                sc = (err - e_mean) / e_std
                bound = e_mean + cfg.threshold * e_std  # error at the threshold
            else:
                sc = err
                bound = np.full_like(err, cfg.threshold)
            flag = live & (sc > cfg.threshold)
            outlier = flag
            over = outlier | (err > bound)

        # outputs
        status[p] = warm  # WARMUP (1) where warm, else SCORED (0)
        predicted[p] = pred_raw
        error[p] = err_raw
        score[p] = sc
        if band is not None and cfg.threshold_method != "likelihood":
            band[0][p], band[1][p] = pred_raw - bound * std, pred_raw + bound * std
        flags[p] = flag

        # what goes into state
        any_outlier = np.count_nonzero(outlier) > 0
        if cfg.flagged_update == "raw" or not any_outlier:
            fed_z = z  # already within +-clip_z
        elif cfg.flagged_update == "predict":
            fed_z = _clip(np.where(outlier, fz, z), -cfg.clip_z, cfg.clip_z)
        else:
            reach = np.minimum(err, np.maximum(bound, 0.0))
            fed_z = _clip(np.where(outlier, fz + np.sign(z - fz) * reach, z), -cfg.clip_z, cfg.clip_z)
        e_in = np.where(over, np.maximum(bound, e_mean + e_std), err) if np.count_nonzero(over) else err
        learn = count >= max(self.warmup_events // 2, 1)
        if np.count_nonzero(learn) == len(learn):
            a = cfg.error_alpha
            d = e_in - e_mean
            store.err_mean[s] = e_mean + a * d
            store.err_var[s] = (1 - a) * (e_var32 + a * d * d)
        elif np.count_nonzero(learn):
            a = cfg.error_alpha
            ls = s[learn]
            d = e_in[learn] - e_mean[learn]
            store.err_mean[ls] = e_mean[learn] + a * d
            store.err_var[ls] = (1 - a) * (e_var32[learn] + a * d * d)
        if kind == "many-to-many":
            model = self.bundle.forecaster
            if carry is None:
                state = (torch.from_numpy(store.rnn[0][:, s]), torch.from_numpy(store.rnn[1][:, s]))
            else:
                state = (carry[1], carry[2])
            pred, (h, c) = model.step(self._inputs(fed_z, t), state)
            carry = (s, h, c, pred[:, 0].numpy())
        # Unflagged values go into the ring as they are, but bounded to +-clip_z normalised units once
        # the series' scale is known (fixed normaliser, or >= 2 values online), warm-up included: one
        # huge value must not inflate the online std (and blind the series) for good.
        reach = cfg.clip_z * std
        kept = _clip(x, mean - reach, mean + reach)
        bounded = fixed | (count >= 2)
        if np.count_nonzero(bounded) < len(bounded):
            kept = np.where(bounded, kept, x)
        store.push(
            s,
            t,
            np.where(outlier, fed_z * std + mean, kept) if any_outlier else kept,
            count=count,
            last_ts=last,
            fixed=fixed,
        )
        return carry

    # ------------------------------------------------------------------ housekeeping
    def forget(self, series_ids) -> int:
        """Drop the state of ``series_ids`` (e.g. their partitions were revoked)."""
        return self.store.forget(series_ids)

    @property
    def tracked_series(self) -> int:
        return len(self.store)

    def state_bytes_per_series(self) -> int:
        extra = self.likelihood.bytes_per_series() if self.likelihood is not None else 0
        return self.store.bytes_per_series() + extra
