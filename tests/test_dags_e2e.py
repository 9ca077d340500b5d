"""End to end with real Airflow 3 (SQLite, ``dag.test()`` in a subprocess) and the embedded broker.

events (NAB series, shifted to 2024) -> ``tsad archive`` -> Parquet archive -> ``retrain_forecasters``
trains many-to-one and many-to-many on CPU (tiny: hidden 16, 2 epochs) -> the many-to-one candidate
beats the seeded (untrained) champion and is promoted -> a running ``tsad serve`` hot-reloads it
and reports the new version in ``tsad_model_version`` and in its anomaly records. A second run of
the same interval changes nothing: same versions, same registry files, no asset events.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pandas as pd
import pytest
from airflow_env import airflow_env, migrate, run_dag
from waiting import wait_for

from pipeline.kafka.broker import free_port
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.publish import publish_rows, read_series_csv

REPO = Path(__file__).resolve().parent.parent
SERIES_FILE = "data/realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"  # 4032 values, 5 min, 14 days
SERIES = "ec2_cpu_utilization_24ae8d"
M2O, M2M = "default-many-to-one", "default-many-to-many"
SHIFT = pd.Timestamp("2024-06-01", tz="UTC") - pd.Timestamp("2014-02-28", tz="UTC")  # data ends 2024-06-01
LOGICAL_DATE = "2024-06-02T00:00:00+00:00"


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A migrated SQLite Airflow home, shared by the DAG tests of this session."""
    home = tmp_path_factory.mktemp("airflow")
    seconds = migrate(airflow_env(home))
    print(f"airflow db migrate: {seconds:.1f}s")
    return home


def _kafka_env(kafka_settings) -> dict[str, str]:
    return {
        "TSAD_KAFKA__BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "TSAD_KAFKA__EVENTS_TOPIC": kafka_settings.events_topic,
        "TSAD_KAFKA__ANOMALIES_TOPIC": kafka_settings.anomalies_topic,
        "TSAD_KAFKA__DEAD_LETTER_TOPIC": kafka_settings.dead_letter_topic,
        "TSAD_KAFKA__GROUP_ID": kafka_settings.group_id,
        "TSAD_KAFKA__ARCHIVE_GROUP_ID": kafka_settings.archive_group_id,
        "TSAD_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "TSAD_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
    }


def _seconds(stamps: pd.Series) -> pd.Series:
    return (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def _seed_untrained_champion(registry_dir: Path) -> int:
    """v1 of the many-to-one model: an untrained network (the candidate must beat it)."""
    import torch

    from models.forecasting.bundle import ModelBundle
    from models.forecasting.calibration import Calibration
    from models.forecasting.forecasters import ForecasterConfig, build_forecaster
    from models.registry import ModelRegistry

    torch.manual_seed(0)
    config = ForecasterConfig(kind="many-to-one", window=32, hidden=16)
    bundle = ModelBundle(
        name=M2O,
        kind=config.kind,
        config=config,
        forecaster=build_forecaster(config).eval(),
        calibration=Calibration(error_mean=0.5, error_std=0.5, threshold=3.0),
    )
    registry = ModelRegistry(registry_dir)
    version = registry.register(bundle, {"note": "seed"})
    registry.promote(M2O, version)
    return version


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _metric(port: int, name: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.integration
def test_archive_retrain_promote_hot_reload_and_idempotent_rerun(airflow_home, kafka_settings, nab_dir, tmp_path):
    archive_dir, registry_dir, textfile = tmp_path / "archive", tmp_path / "registry", tmp_path / "retrain.prom"
    kafka_env = _kafka_env(kafka_settings)
    env = {**os.environ, **kafka_env, "TSAD_ARCHIVE_DIR": str(archive_dir), "TSAD_REGISTRY_DIR": str(registry_dir)}

    # 1. the stream: a NAB series, shifted so it ends the day before the interval
    frame = read_series_csv(nab_dir / SERIES_FILE)
    stamps = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC") + SHIFT
    producer = make_producer(kafka_settings)
    try:
        publish_rows(producer, kafka_settings.events_topic, SERIES, _seconds(stamps).tolist(), frame["value"])
    finally:
        producer.close()

    # 2. tsad archive
    archived = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "archive", "--exit-when-idle", "2", "--metrics-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert archived.returncode == 0, archived.stdout + archived.stderr
    assert f"archived {len(frame)} events" in archived.stdout

    # 3. a scorer serving the (untrained) champion v1
    assert _seed_untrained_champion(registry_dir) == 1
    port = free_port()
    with open(tmp_path / "serve.log", "w") as serve_log:  # the child writes to its own copy of the descriptor
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "serve",
                "--model",
                M2O,
                "--metrics-port",
                str(port),
                "--reload-interval",
                "0.5",
            ],
            env=env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        _wait(lambda: _metric(port, "tsad_model_version") == 1.0, 60, serve, tmp_path)

        # 4. the DAG, in real Airflow (subprocess with its own AIRFLOW_HOME)
        dag_env = airflow_env(
            airflow_home,
            {
                **kafka_env,
                "TSAD_ARCHIVE_DIR": str(archive_dir),
                "TSAD_REGISTRY_DIR": str(registry_dir),
                "TSAD_RETRAIN_TEXTFILE": str(textfile),
                "TSAD_RETRAIN_EPOCHS": "2",
                "TSAD_RETRAIN_HIDDEN": "16",
                "TSAD_RETRAIN_WINDOW": "32",
                "TSAD_RETRAIN_LOOKBACK_HOURS": str(24 * 15),
                "TSAD_RETRAIN_DEVICE": "auto",
                "TSAD_RETRAIN_LABELS": str(nab_dir / "labels" / "combined_windows.json"),
            },
        )
        dag_env.pop("TSAD_PUSHGATEWAY_URL", None)
        started = time.perf_counter()
        first = run_dag(dag_env, "retrain_forecasters", LOGICAL_DATE)
        first_s = time.perf_counter() - started
        assert first["state"] == "success", first["log"][-5000:]
        assert all(state == "success" for state in first["tasks"].values()), first["tasks"]
        assert set(first["tasks"]) >= {"plan", "train[0]", "train[1]", f"promote__{M2O}", f"promote__{M2M}", "record"}
        assert first["asset_events"] == [f"tsad://registry/{M2M}", f"tsad://registry/{M2O}"]

        from models.registry import ModelRegistry

        registry = ModelRegistry(registry_dir)
        assert registry.champion(M2O) == 2 and registry.champion(M2M) == 1
        meta = registry.meta(M2O, 2)
        assert meta["idempotency_key"] == f"many-to-one:{LOGICAL_DATE}:{LOGICAL_DATE}"
        figures = meta["metrics"]
        assert figures["champion_version"] == 1
        assert figures["holdout_nmae"] < figures["champion_holdout_nmae"]
        import torch

        # device "auto": CUDA when present (none on the dev machine), else CPU; same code either way
        assert figures["train_device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
        prom = textfile.read_text()
        assert f'tsad_retrain_last_success_timestamp_seconds{{model="{M2O}"}}' in prom
        assert f'tsad_retrain_candidate_error{{model="{M2O}"}} {figures["holdout_nmae"]}' in prom
        assert f'tsad_retrain_champion_error{{model="{M2O}"}}' in prom

        # 5. the running scorer hot-reloads v2 and stamps it on its anomaly records
        _wait(lambda: _metric(port, "tsad_model_version") == 2.0, 30, serve, tmp_path)
        last = stamps.iloc[-1]
        tail = [
            (float(_seconds(pd.Series([last + pd.Timedelta(minutes=5 * i)])).iloc[0]), float(frame["value"].iloc[-1]))
            for i in range(1, 6)
        ]
        tail.append((tail[-1][0] + 300, 1e6))  # a spike no forecaster can call normal
        producer = make_producer(kafka_settings)
        try:
            publish_rows(producer, kafka_settings.events_topic, SERIES, [t for t, _ in tail], [v for _, v in tail])
        finally:
            producer.close()
        spike = _find_anomaly(kafka_settings, tail[-1][0], timeout_s=30)
        assert spike["model"] == M2O and spike["model_version"] == 2
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()

    # 6. the same interval again: no new versions, no changed files, no asset events
    before = _snapshot(registry_dir)
    started = time.perf_counter()
    second = run_dag(dag_env, "retrain_forecasters", LOGICAL_DATE)
    second_s = time.perf_counter() - started
    assert second["state"] == "success", second["log"][-5000:]
    assert second["asset_events"] == []
    assert second["tasks"][f"publish__{M2O}"] == "skipped"
    assert registry.versions(M2O) == [1, 2] and registry.versions(M2M) == [1]
    assert _snapshot(registry_dir) == before

    # 7. a group whose pattern matches no series: its train/promote are skipped, not failed, and
    #    neither the other group's promotion nor ``record`` is blocked
    groups = {
        "TSAD_RETRAIN_GROUPS": '{"default": "ec2_*", "empty": "nothing_*"}',
        "TSAD_RETRAIN_KINDS": '["many-to-one"]',
    }
    textfile.unlink()
    third = run_dag({**dag_env, **groups}, "retrain_forecasters", LOGICAL_DATE)
    assert third["state"] == "success", third["log"][-5000:]
    tasks = third["tasks"]
    assert tasks["train[0]"] == "success" and tasks["train[1]"] == "skipped", tasks
    assert tasks[f"promote__{M2O}"] == "success" and tasks["promote__empty-many-to-one"] == "skipped", tasks
    assert tasks["record"] == "success", tasks
    prom = textfile.read_text()
    assert f'tsad_retrain_last_success_timestamp_seconds{{model="{M2O}"}}' in prom and "empty-many-to-one" not in prom
    print(f"dag.test first run {first_s:.1f}s, re-run {second_s:.1f}s")


def _wait(condition, timeout_s: float, proc, tmp_path) -> None:
    wait_for(condition, timeout_s, "the scorer's model version", proc=proc, log=tmp_path / "serve.log", interval=0.25)


def _find_anomaly(kafka_settings, ts: float, timeout_s: float) -> dict:
    consumer = make_consumer(
        kafka_settings, [kafka_settings.anomalies_topic], group_id=f"{kafka_settings.group_id}-probe"
    )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    value = orjson.loads(record.value)
                    if value["series"] == SERIES and abs(value["ts"] - ts) < 1e-3:
                        return value
    finally:
        consumer.close()
    raise AssertionError(f"no anomaly record for the spike at ts={ts} within {timeout_s}s")
