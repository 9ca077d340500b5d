"""Model routing (models/routing.py, routed.py): one config, first match wins, per-model hot reload.

The integration test runs the real scorer on the embedded broker with two routed models: a new
version of one is hot-reloaded while the other keeps serving, and a corrupt version of the other
is refused while both keep scoring; anomaly records and per-model metrics name the right model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
from test_scorer import T0, publish, read_topic, signal
from test_scoring import make_bundle
from waiting import wait_for

from models.core.settings import Settings, load_settings
from models.detection.detector import DetectorConfig, StreamingDetector
from models.detection.routed import RoutedDetector
from models.forecasting.forecasters import ForecasterConfig
from models.forecasting.training import fit
from models.registry import ModelRegistry
from models.routing import Routing, RoutingError
from pipeline.events import encode_event
from pipeline.metrics import ScorerMetrics
from pipeline.retrain.contracts import plan_jobs, retrain_groups
from pipeline.retrain.series import SeriesSet, select_job_series
from pipeline.serve.scorer import Scorer
from pipeline.serve.serving_models import build_detector

TSAD = str(Path(sys.executable).parent / "tsad")
CONFIG = {
    "routes": [
        {"group": "cpu", "match": ["cpu-*", "ec2_cpu_*"]},
        {"group": "web", "match": "web-*", "model": "web"},
        {"group": "cpu2", "match": "cpu*", "model": "cpu-many-to-many"},
    ],
    "default": "cpu",
}


def write(tmp_path, data, name="routing.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else __import__("yaml").safe_dump(data))
    return path


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["routing.yaml", "routing.json"])
def test_first_match_wins_and_the_default_takes_the_rest(tmp_path, name):
    r = Routing.load(write(tmp_path, CONFIG, name))
    assert r.model_of("cpu-1") == "cpu-many-to-many" and r.group_of("cpu-1") == "cpu"
    assert r.model_of("ec2_cpu_x") == "cpu-many-to-many"
    assert r.model_of("web-7") == "web" and r.group_of("web-7") == "web"
    assert r.group_of("cpuX") == "cpu2"  # first match: "cpu-*" does not match, "cpu*" does
    assert r.model_of("disk-1") == "cpu-many-to-many" and r.group_of("disk-1") == "cpu"  # default
    assert r.models == ["cpu-many-to-many", "web"]  # bounded model label
    assert r.retrain_groups() == {"cpu": ["cpu-*", "ec2_cpu_*", "*"], "web": ["web-*"], "cpu2": ["cpu*"]}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"routes": []}, "'default' is required"),
        ({"routes": [{"match": "a*"}], "default": "d"}, "expected {group"),
        ({"routes": [{"group": "a", "match": []}], "default": "d"}, "'match' must be"),
        ({"routes": [{"group": "../x", "match": "a"}], "default": "d"}, "group must be a name"),
        ({"routes": [], "default": "d", "serve_kind": "lstm"}, "serve_kind"),
        ({"routes": [], "default": "d", "extra": 1}, "unknown keys"),
        (
            {
                "routes": [{"group": "a", "match": "x", "model": "m1"}, {"group": "a", "match": "y", "model": "m2"}],
                "default": "d",
            },
            "two models",
        ),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_routing_is_one_clear_error(tmp_path, data, message):
    with pytest.raises(RoutingError, match=message.replace("(", r"\(").replace("{", r"\{")):
        Routing.load(write(tmp_path, data))


def test_serve_with_a_bad_routing_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "routing.yaml"
    bad.write_text("routes: [unclosed\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    good = str(write(tmp_path, CONFIG))
    for args in (
        ["--routing", str(bad)],
        ["--routing", str(tmp_path / "missing.yaml")],
        ["--routing", good, "--model", "x"],
        ["--routing", good, "--registry", str(tmp_path / "empty-registry")],
    ):  # no champion: names it
        done = subprocess.run(
            [TSAD, "serve", *args, "--metrics-port", "0"], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cpu-many-to-many" in done.stderr  # the first routed model without a champion


def test_the_dag_trains_each_group_on_the_series_routed_to_it(tmp_path):
    path = write(tmp_path, CONFIG)
    settings = load_settings(routing=str(path), retrain={"kinds": ["many-to-many"], "groups": {"ignored": "*"}})
    jobs = {job.group: job for job in plan_jobs(settings)}
    assert set(jobs) == {"cpu", "web", "cpu2"} and jobs["web"].name == "web-many-to-many"
    data = SeriesSet({s: (np.zeros(1), np.zeros(1)) for s in ("cpu-1", "cpuX", "web-1", "disk")})
    assert set(select_job_series(settings, data, jobs["cpu"]).series) == {"cpu-1", "disk"}
    assert set(select_job_series(settings, data, jobs["cpu2"]).series) == {"cpuX"}
    groups = {g: list(p) for g, p in retrain_groups(settings).items()}
    assert groups == Routing.load(path).retrain_groups()
    legacy = load_settings(retrain={"groups": {"a": "cpu*"}, "kinds": ["many-to-one"]})
    assert retrain_groups(legacy) == {"a": ("cpu*",)}  # the fallback without a routing file
    assert set(select_job_series(legacy, data, plan_jobs(legacy)[0]).series) == {"cpu-1", "cpuX"}


# ---------------------------------------------------------------- detector


def test_routed_detector_equals_one_detector_per_model():
    routing = Routing.from_dict(
        {"routes": [{"group": "a", "match": "a-*", "model": "ma"}], "default": {"group": "b", "model": "mb"}}
    )
    ba, bb = make_bundle("many-to-many", seed=0), make_bundle("many-to-one", seed=1)
    ba.name, bb.name = "ma", "mb"
    routed = RoutedDetector(routing, {"ma": StreamingDetector(ba), "mb": StreamingDetector(bb)})
    alone = {"ma": StreamingDetector(ba), "mb": StreamingDetector(bb)}
    rng = np.random.default_rng(0)
    ids = ["a-1", "b-1", "a-2", "b-2"] * 30
    ts = np.repeat(np.arange(30.0), 4)
    values = rng.normal(size=len(ids))
    r = routed.process(ids, ts, values)
    assert [r.model_at(j)[0] for j in range(4)] == ["ma", "mb", "ma", "mb"]
    assert r.routes[r.route[0]][2] == "a" and r.routes[r.route[1]][2] == "b"
    for name, prefix in (("ma", "a-"), ("mb", "b-")):
        sel = [j for j, s in enumerate(ids) if s.startswith(prefix)]
        ref = alone[name].process([ids[j] for j in sel], ts[sel], values[sel])
        np.testing.assert_array_equal(r.predicted[sel], ref.predicted)
        np.testing.assert_array_equal(r.lower[sel], ref.lower)
    assert routed.tracked_series == 4 and "a-1" in routed.store.ids
    assert routed.forget(["a-1", "b-1"]) == 2 and routed.tracked_series == 2


# ---------------------------------------------------------------- scorer on the broker


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Registry with champions ``cpu`` v1 and ``web`` v1, and a second ``web`` version (v2) not promoted."""
    root = tmp_path_factory.mktemp("registry")
    reg = ModelRegistry(root)
    cfg = ForecasterConfig(kind="many-to-many", window=16, hidden=16)
    train = {"svc-0": signal(np.arange(400), 0.0)}
    for name in ("cpu", "web"):
        bundle, _ = fit(cfg, train, epochs=3, progress=False, name=name, seed=0)
        reg.promote(name, reg.register(bundle))
    bundle, _ = fit(cfg, train, epochs=3, progress=False, name="web", seed=1)
    return reg, reg.register(bundle)


def rows(start: int, stop: int, spikes: dict):
    out = []
    for k, series in enumerate(("cpu-0", "cpu-1", "web-0", "web-1")):
        for i in range(start, stop):
            v = float(signal(np.array([i]), float(k))[0]) + spikes.get((series, i), 0.0)
            out.append((series.encode(), encode_event(series, T0 + 60 * i, v)))
    return out


@pytest.mark.integration
def test_two_routed_models_reload_independently(kafka_settings, two_models, tmp_path):
    reg, web_v2 = two_models
    routing = Routing.from_dict(
        {"routes": [{"group": "cpu", "match": "cpu-*", "model": "cpu"}], "default": {"group": "web", "model": "web"}}
    )
    detector, watchers = build_detector(reg.root, routing, DetectorConfig(), reload_interval=0.1)
    assert isinstance(detector, RoutedDetector)
    metrics = ScorerMetrics()
    scorer = Scorer(Settings(kafka=kafka_settings), detector, metrics, watcher=watchers)
    stop = threading.Event()
    thread = threading.Thread(target=scorer.run, args=(stop,), daemon=True)
    thread.start()
    m = metrics.registry.get_sample_value
    try:
        first = rows(0, 200, {("cpu-0", 150): 25.0, ("web-0", 160): 25.0})
        publish(kafka_settings, first)
        wait_for(lambda: scorer.stats.consumed == len(first), 30, "first part consumed")
        reg.promote("web", web_v2)  # web hot-reloads; cpu keeps v1
        wait_for(lambda: detector.detectors["web"].model_version == web_v2, 10, "web v2 served")
        assert detector.detectors["cpu"].model_version == 1
        # a corrupt cpu version: refused, cpu v1 and web v2 keep serving
        bad, _ = fit(
            ForecasterConfig(kind="many-to-many", window=16, hidden=16),
            {"x": signal(np.arange(100), 0.0)},
            epochs=1,
            progress=False,
            name="cpu",
        )
        v_bad = reg.register(bad)
        cpu_watcher = next(w for w in watchers if w.name == "cpu")
        cpu_watcher._next_check = float("inf")
        reg.promote("cpu", v_bad)  # promoted, then its weights damaged (as in test_scorer)
        weights = reg.root / "cpu" / f"v{v_bad:04d}" / "weights.pt"
        weights.write_bytes(weights.read_bytes()[:100])
        cpu_watcher._next_check = 0.0
        wait_for(
            lambda: (m("tsad_model_reloads_total", {"model": "cpu", "outcome": "refused"}) or 0) >= 1,
            10,
            "cpu's corrupt version refused",
        )
        second = rows(200, 400, {("cpu-1", 300): 25.0, ("web-1", 310): 25.0})
        publish(kafka_settings, second)
        wait_for(lambda: scorer.stats.consumed == len(first) + len(second), 30, "second part consumed")
    finally:
        stop.set()
        thread.join(15)
    assert detector.detectors["cpu"].model_version == 1 and detector.detectors["web"].model_version == web_v2
    assert m("tsad_model_serving_version", {"model": "cpu"}) == 1
    assert m("tsad_model_serving_version", {"model": "web"}) == web_v2
    assert m("tsad_model_reloads_total", {"model": "web", "outcome": "loaded"}) == 1
    st = scorer.stats
    assert st.consumed == st.scored + st.warmup == len(first) + len(second)
    scored = {model: m("tsad_model_events_scored_total", {"model": model}) for model in ("cpu", "web")}
    assert scored["cpu"] + scored["web"] == st.scored and scored["cpu"] > 0 and scored["web"] > 0
    anomalies = [
        orjson.loads(r.value) for r in read_topic(kafka_settings, kafka_settings.anomalies_topic, st.anomalies)
    ]
    got = {(a["series"], round((a["ts"] - T0) / 60)): (a["model"], a["model_version"]) for a in anomalies}
    assert got[("cpu-0", 150)] == ("cpu", 1) and got[("cpu-1", 300)] == ("cpu", 1)
    assert got[("web-0", 160)] == ("web", 1) and got[("web-1", 310)] == ("web", web_v2)
    for a in anomalies:
        assert a["model"] == ("cpu" if a["series"].startswith("cpu-") else "web")
        assert a["lower"] is not None and a["lower"] <= a["predicted"] <= a["upper"]
        assert not a["lower"] <= a["value"] <= a["upper"]
    per_model = sum(m("tsad_model_anomalies_total", {"model": x}) or 0 for x in ("cpu", "web"))
    assert per_model == st.anomalies == m("tsad_anomalies_total")
