"""pipeline/retrain/ without Airflow: planning, skip reasons, evaluation, promotion rules, figures."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.core.settings import Settings, load_settings
from pipeline.archive.format import write_files
from pipeline.retrain.contracts import Candidate, Decision, NotEnoughDataError, plan_jobs
from pipeline.retrain.evaluate import event_counts, label_windows, load_champion
from pipeline.retrain.figures import record_figures
from pipeline.retrain.plan import plan
from pipeline.retrain.promote import decide, promote_if_better
from pipeline.retrain.train import train_candidate

SERIES_FILE = "data/realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
END = "2014-03-01T00:00:00+00:00"


def _archive(root: Path, nab_dir: Path, rows: int | None = None) -> None:
    frame = pd.read_csv(nab_dir / SERIES_FILE)[:rows]
    ts = (pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC") - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(
        seconds=1
    )
    write_files(
        root,
        pd.DataFrame(
            {
                "series": "ec2_cpu_utilization_24ae8d",
                "ts": ts,
                "value": frame["value"],
                "partition": 0,
                "offset": np.arange(len(frame)),
            }
        ),
    )


def _settings(tmp_path, **overrides) -> Settings:
    return load_settings(
        archive_dir=str(tmp_path / "archive"),
        registry_dir=str(tmp_path / "registry"),
        retrain={
            "textfile": str(tmp_path / "retrain.prom"),
            "pushgateway_url": None,
            "hidden": 16,
            "window": 32,
            "epochs": 2,
            "lookback_hours": 24 * 16,
            **overrides,
        },
    )


def test_plan_skips_with_a_reason_when_the_archive_is_empty_or_too_short(tmp_path, nab_dir):
    settings = _settings(tmp_path)
    with pytest.raises(NotEnoughDataError, match="no archived events"):
        plan(settings, END, END)
    _archive(tmp_path / "archive", nab_dir, rows=200)
    with pytest.raises(NotEnoughDataError, match=r"too little data.*>= 256 values"):
        plan(settings, END, END)


def test_plan_extends_a_point_interval_back_by_the_lookback_and_holds_out_the_latest_slice(tmp_path, nab_dir):
    _archive(tmp_path / "archive", nab_dir)
    the_plan = plan(_settings(tmp_path), END, END)
    assert the_plan.start == "2014-02-13T00:00:00+00:00" and the_plan.end == END
    n_train, n_hold = the_plan.counts["ec2_cpu_utilization_24ae8d"]
    assert n_train + n_hold == 4032 and abs(n_hold / 4032 - 0.2) < 0.01
    assert the_plan.series == ("ec2_cpu_utilization_24ae8d",)
    assert type(the_plan).from_dict(the_plan.to_dict()) == the_plan  # the XCom round trip
    wide = plan(_settings(tmp_path, lookback_hours=1), "2014-02-01T00:00:00+00:00", END)
    assert wide.start == "2014-02-01T00:00:00+00:00"  # a long interval is used as it is
    import pendulum  # what Airflow passes as data_interval_start/end

    end = pendulum.datetime(2014, 3, 1, tz="UTC")
    assert plan(_settings(tmp_path), end, end) == the_plan


def test_decide_rules():
    assert decide({"champion_version": None, "holdout_nmae": 0.5}, 0.0) == (True, "no champion")
    better = {"champion_version": 1, "holdout_nmae": 0.4, "champion_holdout_nmae": 0.5}
    assert decide(better, 0.0)[0] is True
    assert decide(better, 0.25)[0] is False  # needs 25 % better
    assert decide({**better, "holdout_nmae": 0.5}, 0.0)[0] is False  # equal is not better
    ok, reason = decide({**better, "holdout_f1": 0.5, "champion_holdout_f1": 0.8}, 0.0)
    assert not ok and "F1" in reason


def test_event_counts_window_hits_misses_and_false_alarm_runs():
    ts = np.arange(20, dtype=float)
    flags = np.zeros(20, dtype=bool)
    flags[[3, 4, 12, 15]] = True  # 3-4: one run outside windows; 12 inside window A; 15 outside
    tp, fp, fn = event_counts(ts, flags, [(10.0, 13.0), (17.0, 18.0), (100.0, 110.0)])
    assert (tp, fp, fn) == (1, 2, 1)


def test_event_counts_match_the_backtest_window_prf():
    from models.forecasting.evaluation import window_of_rows, window_prf

    ts = np.arange(30, dtype=float)
    flags = np.random.default_rng(0).random(30) < 0.3
    windows = [(5.0, 8.0), (20.0, 24.0)]
    prf = window_prf(flags, window_of_rows(ts, windows))
    assert event_counts(ts, flags, windows) == (prf.caught, prf.fp_runs, prf.missed)


def test_label_windows_keyed_by_series_stem(nab_dir):
    labels = label_windows(str(nab_dir / "labels" / "combined_windows.json"))
    assert "ec2_cpu_utilization_24ae8d" in labels and all(a < b for a, b in labels["ec2_cpu_utilization_24ae8d"])


def test_corrupt_champion_is_reported_unusable_not_raised(tmp_path):
    import json

    import torch

    from models.forecasting.bundle import ModelBundle
    from models.forecasting.forecasters import ForecasterConfig, build_forecaster
    from models.registry import ModelRegistry

    torch.manual_seed(0)
    config = ForecasterConfig(kind="many-to-one", window=8, hidden=8)
    registry = ModelRegistry(tmp_path)
    version = registry.register(
        ModelBundle(name="m", kind=config.kind, config=config, forecaster=build_forecaster(config).eval())
    )
    registry.promote("m", version)
    meta_path = tmp_path / "m" / "v0001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["normalizers"] = {"a": {"mean": 1.0}}  # KeyError before the registry wrapped it
    meta_path.write_text(json.dumps(meta))
    bundle, why = load_champion(registry, "m")
    assert bundle is None and why.startswith("champion unusable")


def test_train_promote_rerun_and_refusal_of_a_worse_candidate(tmp_path, nab_dir):
    from models.registry import ModelRegistry

    _archive(tmp_path / "archive", nab_dir)
    settings = _settings(tmp_path, kinds=["many-to-one"], labels=str(nab_dir / "labels" / "combined_windows.json"))
    the_plan = plan(settings, END, END)
    (job,) = plan_jobs(settings)
    candidate = train_candidate(settings, the_plan, job)
    assert candidate.version == 1 and not candidate.reused
    assert Candidate.from_dict(candidate.to_dict()) == candidate  # the XCom round trip
    assert candidate.metrics["holdout_nmae"] > 0 and candidate.metrics["train_device"] in (
        "cpu",
        "cuda",
        "cuda:0",
    )
    assert candidate.metrics["holdout_f1"] is not None  # labels configured
    decision = promote_if_better(settings, the_plan, candidate)
    assert decision.promoted and decision.reason == "no champion"

    registry = ModelRegistry(settings.registry_dir)
    files = sorted(p.name for p in (Path(settings.registry_dir) / job.name).rglob("*"))
    again = train_candidate(settings, the_plan, job)
    assert again.version == 1 and again.reused
    assert not promote_if_better(settings, the_plan, again).promoted
    assert sorted(p.name for p in (Path(settings.registry_dir) / job.name).rglob("*")) == files

    # A candidate evaluated when there was no champion (e.g. a parallel run) but worse than the
    # champion now in place: re-evaluated against it and refused.
    from models.forecasting.bundle import ModelBundle
    from models.forecasting.forecasters import build_forecaster

    champion = registry.load(job.name)
    untrained = ModelBundle(
        name=job.name,
        kind="many-to-one",
        config=champion.config,
        forecaster=build_forecaster(champion.config).eval(),
        calibration=champion.calibration,
    )
    version = registry.register(
        untrained, {"holdout_nmae": 99.0, "champion_version": None}, data_range=(the_plan.start, the_plan.end)
    )
    refused = promote_if_better(settings, the_plan, Candidate(job, version, {}, reused=False))
    assert not refused.promoted and "not better" in refused.reason
    assert refused.champion_nmae == pytest.approx(candidate.metrics["holdout_nmae"])
    assert registry.champion(job.name) == 1


def test_record_figures_textfile_and_pushgateway(tmp_path):
    decisions = [Decision("default-many-to-one", 1, None, True, "no champion", 0.3, 0.4)]
    settings = _settings(tmp_path)
    where = record_figures(settings, decisions, now=1700000000.0)
    text = Path(where).read_text()
    assert 'tsad_retrain_last_success_timestamp_seconds{model="default-many-to-one"} 1.7e+09' in text
    assert 'tsad_retrain_candidate_error{model="default-many-to-one"} 0.3' in text
    assert 'tsad_retrain_champion_error{model="default-many-to-one"} 0.4' in text

    received = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self):
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"])).decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"127.0.0.1:{server.server_port}"
        assert record_figures(_settings(tmp_path, pushgateway_url=url), decisions) == url
    finally:
        server.shutdown()
    ((path, body),) = received
    assert path == "/metrics/job/tsad_retrain"
    assert 'tsad_retrain_candidate_error{model="default-many-to-one"} 0.3' in body
