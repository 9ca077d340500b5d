"""StreamingDetector (models/detection/detector.py): statuses, rounds, streaming == batch, warm-up, eviction, swap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from likelihood_oracle import score_series

from models.detection.detector import DetectorConfig, StreamingDetector
from models.detection.policies import POLICIES, LikelihoodPolicy, PolicySpec, register_policy
from models.detection.policy import PolicyStep, RoundErrors
from models.detection.status import Status
from models.forecasting.calibration import Calibration
from models.forecasting.forecasters import ForecasterConfig, build_forecaster


@dataclass
class FakeBundle:
    """The ``models.detection.contracts.ServedBundle`` attributes, without a registry behind them."""

    name: str
    kind: str
    version: int | None
    config: Any
    forecaster: Any
    normalizers: dict[str, tuple[float, float]] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)


def make_bundle(kind: str, window: int = 16, hidden: int = 16, version: int = 1, normalizers=None, seed: int = 0):
    torch.manual_seed(seed)
    config = ForecasterConfig(kind=kind, window=window, hidden=hidden)
    model = build_forecaster(config).eval()
    return FakeBundle(
        name="test",
        kind=kind,
        version=version,
        config=config,
        forecaster=model,
        normalizers=normalizers or {},
        calibration=Calibration(error_mean=0.3, error_std=0.2),
    )


@pytest.mark.parametrize("kind", ["many-to-many", "many-to-one"])
def test_streaming_predictions_equal_batch_scoring(kind):
    rng = np.random.default_rng(0)
    seq = rng.normal(size=80)
    bundle = make_bundle(kind, normalizers={"a": (0.0, 1.0)})
    det = StreamingDetector(bundle, DetectorConfig(flagged_update="raw", clip_z=1e9))
    got = []
    for chunk in np.array_split(np.arange(80), 7):  # uneven chunks, like a backtest replay
        res = det.process(["a"] * len(chunk), chunk.astype(float), seq[chunk])
        got.append(res.predicted)
    got = np.concatenate(got)
    x = torch.tensor(seq, dtype=torch.float32)[None, :, None]
    with torch.no_grad():
        if kind == "many-to-many":
            pred, _ = bundle.forecaster(x)
            expected = np.r_[0.0, pred[0, :-1, 0].numpy()]
            np.testing.assert_allclose(got, expected, atol=1e-5)
        else:
            w = bundle.config.window
            windows = torch.stack([x[0, t - w : t] for t in range(w, 80)])
            expected = bundle.forecaster(windows)[:, 0].numpy()
            np.testing.assert_allclose(got[w:], expected, atol=1e-5)


def test_rounds_interleaved_series_match_separate_runs():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=40), rng.normal(size=40)
    bundle = make_bundle("many-to-many")
    together = StreamingDetector(bundle)
    ids = ["a"] * 40 + ["b"] * 40
    order = rng.permutation(80)
    # keep each series in time order while mixing the two
    ts = np.r_[np.arange(40), np.arange(40)].astype(float)
    vals = np.r_[a, b]
    mixed = np.argsort(np.where(np.arange(80) < 40, np.arange(80) * 2, (np.arange(80) - 40) * 2 + 1), kind="stable")
    del order
    res = together.process([ids[i] for i in mixed], ts[mixed], vals[mixed])
    alone = StreamingDetector(bundle)
    ra = alone.process(["a"] * 40, ts[:40], a)
    rb = alone.process(["b"] * 40, ts[40:], b)
    back = np.empty(80)
    back[mixed] = res.predicted
    np.testing.assert_allclose(back, np.r_[ra.predicted, rb.predicted], atol=1e-5)


def test_rounds_match_the_naive_definition():
    from models.core.streaming import rounds

    rng = np.random.default_rng(11)
    for n in (0, 1, 2, 7, 200):
        idx = rng.integers(0, max(n // 3, 1), size=n)
        seen: dict[int, int] = {}
        occurrence = []
        for i in idx.tolist():
            occurrence.append(seen.get(i, 0))
            seen[i] = occurrence[-1] + 1
        occurrence = np.array(occurrence, dtype=np.int64)
        want = [np.flatnonzero(occurrence == r) for r in range(int(occurrence.max()) + 1)] if n else []
        got = rounds(idx)
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
    assert [r.tolist() for r in rounds(np.array([5, 6, 7]))] == [[0, 1, 2]]


def test_duplicate_and_out_of_order_are_dropped_and_counts_add_up():
    det = StreamingDetector(make_bundle("many-to-many"), DetectorConfig(warmup_events=3))
    res = det.process(["s"] * 7, [1, 2, 2, 3, 1, 4, 5], [1.0, 2, 9, 3, 4, 5, 6])
    assert res.status.tolist() == [
        Status.WARMUP,
        Status.WARMUP,
        Status.DUPLICATE,
        Status.WARMUP,
        Status.OUT_OF_ORDER,
        Status.SCORED,
        Status.SCORED,
    ]
    assert (
        res.counts["scored"] + res.counts["warmup"] + res.counts["duplicate_timestamp"] + res.counts["out_of_order"]
        == 7
    )
    assert det.store.count[det.store.ids["s"]] == 5


def test_spike_flagged_after_warmup_and_not_before():
    bundle = make_bundle("many-to-many")
    det = StreamingDetector(bundle, DetectorConfig(warmup_events=32, threshold_method="zscore", threshold=5.0))
    t = np.arange(300, dtype=float)
    vals = np.sin(t / 5.0) + 0.01 * np.random.default_rng(2).normal(size=300)
    vals[10] += 50  # inside warm-up: never flagged
    vals[250] += 50
    res = det.process(["s"] * 300, t, vals)
    assert not res.is_anomaly[:32].any()
    assert res.is_anomaly[250]
    assert res.status[250] == Status.SCORED and res.score[250] > res.threshold
    # the flagged spike is not fed raw: the next forecasts stay close to the signal
    assert res.error[251] < 5


def test_alert_false_is_warmup_only():
    det = StreamingDetector(make_bundle("many-to-one"), DetectorConfig(warmup_events=1))
    vals = np.r_[np.zeros(50), 100.0]
    res = det.process(["s"] * 51, np.arange(51.0), vals, alert=False)
    assert (res.status == Status.WARMUP).all() and not res.is_anomaly.any()


def test_unseen_series_normalised_online():
    det = StreamingDetector(make_bundle("many-to-many"))
    vals = 1000.0 + 5.0 * np.random.default_rng(3).normal(size=500)
    det.process(["new"] * 500, np.arange(500.0), vals)
    slot = det.store.ids["new"]
    assert abs(det.store.mean[slot] - vals.mean()) < 2
    assert 3 < det.store.std[slot] < 7
    assert not det.store.fixed[slot]


def test_eviction_of_least_recently_seen():
    det = StreamingDetector(make_bundle("many-to-many"), DetectorConfig(max_series=3))
    det.process(["a", "b", "c"], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    det.process(["a", "c"], [2.0, 2.0], [1.0, 1.0])
    res = det.process(["d"], [1.0], [1.0])
    assert res.evicted == 1
    assert set(det.store.ids) == {"a", "c", "d"}


def test_eviction_spares_series_of_the_current_batch():
    # max_series=2, tracked {a, b}; the batch [a, c, d] must not evict "a" (it is being scored)
    det = StreamingDetector(make_bundle("many-to-many"), DetectorConfig(max_series=2))
    det.process(["a", "b"], [1.0, 1.0], [1.0, 1.0])
    res = det.process(["a", "c", "d"], [2.0, 2.0, 2.0], [1.0, 5.0, 9.0])
    slots = [det.store.ids[s] for s in ("a", "c", "d")]
    assert len(set(slots)) == 3  # three distinct slots: nothing in the batch shares state
    assert "b" not in det.store.ids and res.evicted == 1
    assert det.store.count[det.store.ids["a"]] == 2  # a's history kept
    # over the cap for that batch only: the next batch evicts back down to max_series
    det.process(["e"], [1.0], [1.0])
    assert len(det.store) == 2 and "e" in det.store.ids


def test_batch_with_more_new_series_than_max_series_is_scored_not_raised():
    det = StreamingDetector(make_bundle("many-to-one"), DetectorConfig(max_series=2))
    ids = [f"s{i}" for i in range(5)]
    res = det.process(ids, np.ones(5), np.arange(5.0))
    assert (res.status == Status.WARMUP).all()
    assert len({det.store.ids[s] for s in ids}) == 5  # each its own state
    res = det.process(ids, np.full(5, 2.0), np.arange(5.0))  # re-read after a crash-loop would be fine too
    assert (res.status == Status.WARMUP).all() and len(det.store) == 5
    det.process(["x"], [1.0], [0.0])
    assert len(det.store) == 2


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_series=0),
        dict(max_series=2.5),
        dict(clip_z=0),
        dict(clip_z=float("nan")),
        dict(min_error_std=-1),
        dict(outlier_z=float("inf")),
        dict(warmup_events=-1),
        dict(ring_length=0),
        dict(threshold=float("nan")),
        dict(initial_error_std=-1.0),
    ],
)
def test_detector_config_is_validated(bad):
    with pytest.raises(ValueError):
        DetectorConfig(**bad)


@pytest.mark.parametrize("kind", ["many-to-many", "many-to-one"])
def test_huge_value_during_warmup_does_not_blind_the_series(kind):
    det = StreamingDetector(
        make_bundle(kind), DetectorConfig(warmup_events=32, threshold_method="zscore", threshold=5.0)
    )
    t = np.arange(400, dtype=float)
    vals = np.sin(t / 5.0) + 0.01 * np.random.default_rng(2).normal(size=400)
    vals[10] = 1e12  # inside warm-up: never flagged, but must not wreck the normaliser
    vals[350] += 10
    res = det.process(["s"] * 400, t, vals)
    slot = det.store.ids["s"]
    assert np.isfinite([det.store.mean[slot], det.store.m2[slot], det.store.std[slot]]).all()
    assert det.store.std[slot] < 100
    assert np.isfinite(res.score[res.status == Status.SCORED]).all()
    assert not res.is_anomaly[:32].any()
    assert res.is_anomaly[350]


def test_values_beyond_the_event_bound_keep_the_state_finite():
    det = StreamingDetector(make_bundle("many-to-many"), DetectorConfig(warmup_events=4))
    res = det.process(["s"] * 4, np.arange(4.0), [1e300, -1e300, 1.0, 2.0])
    slot = det.store.ids["s"]
    assert np.isfinite([det.store.mean[slot], det.store.m2[slot], det.store.std[slot]]).all()
    assert np.isfinite(res.predicted).all()


def test_state_under_one_kib_per_series():
    det = StreamingDetector(make_bundle("many-to-many", window=64, hidden=64))
    assert det.state_bytes_per_series() < 1024
    # a many-to-many series keeps only the values its state rebuild uses; many-to-one its whole window
    assert det.store.ring_length == 32
    assert StreamingDetector(make_bundle("many-to-one", window=64)).store.ring_length == 64


def test_swap_model_rebuilds_state_from_ring_buffer():
    rng = np.random.default_rng(4)
    seq = rng.normal(size=30)
    old, new = make_bundle("many-to-many", seed=0, version=1), make_bundle("many-to-many", seed=1, version=2)
    det = StreamingDetector(old, DetectorConfig(flagged_update="raw"))
    det.process(["a"] * 30, np.arange(30.0), seq)
    det.swap_model(new)
    assert det.model_version == 2
    fresh = StreamingDetector(new, DetectorConfig(flagged_update="raw"))
    fresh.process(["a"] * 30, np.arange(30.0), seq)
    r1 = det.process(["a"], [30.0], [0.5])
    r2 = fresh.process(["a"], [30.0], [0.5])
    # ring holds the last `window` values; after 30 > 16 events the rebuilt state has seen 16 of them
    assert abs(r1.predicted[0] - r2.predicted[0]) < 0.2


def test_swap_refuses_unservable_bundle():
    det = StreamingDetector(make_bundle("many-to-many"))
    bad = FakeBundle(name="x", kind="weird", version=9, config=None, forecaster=None)
    with pytest.raises(ValueError):
        det.swap_model(bad)
    assert det.model_version == 1


def test_refused_swap_keeps_the_old_error_seed():
    det = StreamingDetector(make_bundle("many-to-many"))
    seed = (det.store.init_err_mean, det.store.init_err_var)
    bad = make_bundle("many-to-many", version=2)
    bad.calibration = Calibration(error_mean=5.0, error_std=3.0)

    def broken(*args, **kwargs):
        raise RuntimeError("model blew up")

    det.process(["a"] * 5, np.arange(5.0), np.ones(5))
    bad.forecaster.forward = broken  # the rebuild fails mid-swap
    with pytest.raises(RuntimeError):
        det.swap_model(bad)
    assert det.model_version == 1
    assert (det.store.init_err_mean, det.store.init_err_var) == seed
    det.process(["new"], [1.0], [1.0])  # a new series is seeded from the serving model
    slot = det.store.ids["new"]
    assert det.store.err_mean[slot] == pytest.approx(seed[0])


# ---------------------------------------------------------------- threshold_method="likelihood"
LIK = dict(threshold_method="likelihood", warmup_events=32, likelihood={"warmup": 50, "refractory": 40})


def test_likelihood_flags_a_spike_once_and_matches_the_module_on_the_detectors_errors():
    det = StreamingDetector(make_bundle("many-to-many", normalizers={"s": (0.0, 1.0)}), DetectorConfig(**LIK))
    t = np.arange(400, dtype=float)
    vals = np.sin(t / 5.0) + 0.05 * np.random.default_rng(2).normal(size=400)
    vals[300] += 8.0
    vals[310] += 8.0  # same incident: inside the refractory period
    parts = [det.process(["s"] * len(c), t[c], vals[c]) for c in np.array_split(np.arange(400), 9)]
    score = np.concatenate([r.score for r in parts])
    flag = np.concatenate([r.is_anomaly for r in parts])
    error = np.concatenate([r.error for r in parts])
    status = np.concatenate([r.status for r in parts])
    assert parts[0].threshold == 0.5 and np.all((score >= 0) & (score <= 1))
    assert np.flatnonzero(flag).tolist() == [300] and score[310] == 0.0
    # the detector's score is exactly the likelihood module run on its raw errors and values
    ref_s, ref_f = score_series(
        error, det.config.likelihood_config(), values=vals, alert=status == Status.SCORED, times=t
    )
    np.testing.assert_allclose(score, ref_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(flag, ref_f)
    # the outlier is fed clipped, not raw: the next forecasts stay near the signal
    assert error[301] < 3


def test_likelihood_state_is_small_and_reset_for_a_reused_slot():
    det = StreamingDetector(
        make_bundle("many-to-many", window=64, hidden=64), DetectorConfig(threshold_method="likelihood", max_series=2)
    )
    assert det.state_bytes_per_series() < 1024
    det.process(["a"] * 60, np.arange(60.0), np.arange(60.0))
    assert isinstance(det.policy, LikelihoodPolicy)
    lik = det.policy.likelihood
    slot_a = det.store.ids["a"]
    assert lik.count[slot_a] == 60
    det.process(["b", "c"], [1.0, 1.0], [1.0, 1.0])  # "a" evicted, its slot reused
    slot = det.store.ids.get("b") if det.store.ids.get("b") == slot_a else det.store.ids["c"]
    assert slot == slot_a and lik.count[slot] == 1 and lik.hi[slot] == 1.0
    # the time-of-day context starts afresh too: one bin seen (this value), no residual yet
    assert lik.profile is not None
    assert lik.ccount[slot] == 0 and (lik.profile.level[slot] != 65535).sum() == 1


def test_likelihood_config_errors_are_clear():
    with pytest.raises(ValueError, match="threshold"):
        DetectorConfig(threshold_method="likelihood", threshold=6.0)
    with pytest.raises(ValueError, match="likelihood"):
        DetectorConfig(threshold_method="likelihood", likelihood={"nope": 1})
    assert DetectorConfig(threshold_method="likelihood").threshold == 0.5
    assert DetectorConfig().threshold_method == "likelihood" and DetectorConfig().threshold == 0.5
    assert DetectorConfig(threshold_method="zscore").threshold == 6.0


# ---------------------------------------------------------------- calendar features (models/forecasting/calendar.py)
def make_calendar_bundle(kind: str, window: int = 16, hidden: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    config = ForecasterConfig(kind=kind, window=window, hidden=hidden, calendar_features=True)
    model = build_forecaster(config).eval()
    return FakeBundle(
        name="cal",
        kind=kind,
        version=1,
        config=config,
        forecaster=model,
        normalizers={"a": (0.0, 1.0)},
        calibration=Calibration(error_mean=0.3, error_std=0.2),
    )


@pytest.mark.parametrize("kind", ["many-to-many", "many-to-one"])
def test_calendar_features_streaming_equal_batch(kind):
    """The detector feeds [z, calendar(ts)] exactly as training builds it (models.forecasting.calendar.with_calendar)."""
    from models.forecasting.calendar import with_calendar

    rng = np.random.default_rng(7)
    seq = rng.normal(size=80)
    ts = 1.7e9 + 3600.0 * np.arange(80)  # hourly: the calendar columns change every step
    bundle = make_calendar_bundle(kind)
    det = StreamingDetector(bundle, DetectorConfig(flagged_update="raw", clip_z=1e9))
    got = np.concatenate(
        [det.process(["a"] * len(c), ts[c], seq[c]).predicted for c in np.array_split(np.arange(80), 7)]
    )
    x = torch.from_numpy(with_calendar(seq[:, None], ts).astype(np.float32))[None]
    with torch.no_grad():
        if kind == "many-to-many":
            pred, _ = bundle.forecaster(x)
            np.testing.assert_allclose(got, np.r_[0.0, pred[0, :-1, 0].numpy()], atol=1e-5)
        else:
            w = bundle.config.window
            expected = bundle.forecaster(torch.stack([x[0, t - w : t] for t in range(w, 80)]))[:, 0].numpy()
            np.testing.assert_allclose(got[w:], expected, atol=1e-5)
    # the same values at other times of day give other forecasts: the features are really used
    other = StreamingDetector(bundle, DetectorConfig(flagged_update="raw", clip_z=1e9))
    shifted = other.process(["a"] * 80, ts + 6 * 3600.0, seq).predicted
    assert np.abs(shifted[20:] - got[20:]).max() > 1e-3


def test_calendar_swap_rebuild_matches_a_continuous_run():
    """With the ring covering the whole history, a rebuilt state equals the state of a detector that
    streamed everything (timestamps come back from last_ts and the series' step)."""
    rng = np.random.default_rng(8)
    seq, ts = rng.normal(size=40), 1.7e9 + 1800.0 * np.arange(41)
    bundle = make_calendar_bundle("many-to-many")
    det = StreamingDetector(bundle, DetectorConfig(flagged_update="raw", ring_length=64))
    det.process(["a"] * 40, ts[:40], seq)
    np.testing.assert_allclose(det.store.window_times(np.array([0]), 40)[0], ts[:40])
    ref = det.process(["b"], [ts[0]], [0.0])  # another series, just to have two slots
    assert ref.counts["scored"] + ref.counts["warmup"] == 1
    before = det.store.pred[det.store.ids["a"]]
    det.swap_model(make_calendar_bundle("many-to-many"))  # same weights (seed 0)
    assert abs(det.store.pred[det.store.ids["a"]] - before) < 1e-5
    det.swap_model(make_bundle("many-to-many"))  # a plain model can take over (and back)
    assert det.model_name == "test" and not det.calendar
    det.swap_model(make_calendar_bundle("many-to-many"))
    assert abs(det.store.pred[det.store.ids["a"]] - before) < 1e-5


def test_calendar_bundle_with_wrong_feature_count_is_refused():
    bundle = make_calendar_bundle("many-to-many")
    bundle.config = ForecasterConfig(kind="many-to-many", window=16, hidden=16, features=3)
    with pytest.raises(ValueError, match="features"):
        StreamingDetector(bundle)


def test_online_normaliser_of_unseen_series_matches_numpy():
    """SeriesStateStore's Welford (series never seen in training) equals numpy's mean/std."""
    from models.detection.series_state import SeriesStateStore

    rng = np.random.default_rng(0)
    store = SeriesStateStore(ring_length=8, max_series=16)
    ids = [f"s{k}" for k in range(5)]
    values = {sid: rng.normal(3 + k, 2, size=60) for k, sid in enumerate(ids)}
    for t in range(60):
        idx, _ = store.slots(ids)
        store.push(idx, np.full(5, 1000.0 + t), np.array([values[sid][t] for sid in ids]))
    idx, _ = store.slots(ids)
    for k, sid in enumerate(ids):
        assert store.mean[idx[k]] == pytest.approx(values[sid].mean())
        assert store.std[idx[k]] == pytest.approx(values[sid].std(), rel=1e-5)


# ---------------------------------------------------------------- threshold policies (models/detection/policies.py)
class _EveryOther:
    """A policy the detector has never heard of: flags every second live event, band = forecast +- 1."""

    threshold = 0.5

    def __init__(self) -> None:
        self.calls = 0

    def ensure(self, capacity: int) -> None:
        pass

    def reset(self, slots: np.ndarray) -> None:
        pass

    def step(self, r: RoundErrors) -> PolicyStep:
        self.calls += 1
        score = np.full(len(r.slots), float(self.calls % 2))
        flag = r.live & (score > self.threshold)
        return PolicyStep(
            score, flag, np.zeros_like(flag), np.full(len(r.slots), np.inf), r.predicted - 1, r.predicted + 1
        )

    def bytes_per_series(self) -> int:
        return 0


def test_a_new_policy_plugs_in_by_registry_or_by_argument():
    register_policy("every-other", PolicySpec(0.5, lambda config: _EveryOther()))
    try:
        det = StreamingDetector(
            make_bundle("many-to-many", normalizers={"s": (0.0, 1.0)}),
            DetectorConfig(threshold_method="every-other", warmup_events=2),
        )
        assert isinstance(det.policy, _EveryOther) and det.config.threshold == 0.5
        r = det.process(["s"] * 6, np.arange(6.0), np.zeros(6))
        assert r.is_anomaly.tolist() == [False, False, True, False, True, False]  # live from the third event
        np.testing.assert_array_equal(r.upper - r.lower, 2.0)
    finally:
        POLICIES.pop("every-other")
    with pytest.raises(ValueError, match="threshold_method"):
        DetectorConfig(threshold_method="every-other")
    own = _EveryOther()
    det = StreamingDetector(
        make_bundle("many-to-many", normalizers={"s": (0.0, 1.0)}),
        DetectorConfig(threshold_method="zscore", warmup_events=2),
        policy=own,
    )
    r = det.process(["s"] * 6, np.arange(6.0), np.zeros(6))
    assert det.policy is own and own.calls == 6
    assert r.is_anomaly.tolist() == [False, False, True, False, True, False]  # the injected policy decides
    assert r.threshold == 0.5  # and its threshold is the one reported, not the config's zscore default
