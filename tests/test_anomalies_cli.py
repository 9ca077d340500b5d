"""``tsad anomalies`` reads real anomaly records from the embedded broker: table, JSON lines, filters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.anomalies import matches, parse_since, table_row
from pipeline.kafka.clients import make_producer
from pipeline.serve.records import anomaly_value

TSAD = str(Path(sys.executable).parent / "tsad")
RECORDS = [  # series, score, model
    ("cpu-1", 0.97, "cpu"),
    ("cpu-2", 0.55, "cpu"),
    ("web-1", 0.99, "web"),
    ("cpu-3", 0.81, "cpu"),
    ("web-2", 0.60, "web"),
]


def run(settings, *args, timeout=120):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [
            TSAD,
            "anomalies",
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--anomalies-topic",
            settings.anomalies_topic,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def published(kafka_settings):
    producer = make_producer(kafka_settings)
    futures = [
        producer.send(
            kafka_settings.anomalies_topic,
            key=s.encode(),
            value=anomaly_value(
                s,
                1.7e9 + k,
                10.0 + k,
                1.0,
                9.0 + k,
                score,
                0.5,
                model,
                2,
                kafka_settings.events_topic,
                0,
                k,
                0.25,
                1.75,
            ),
        )
        for k, (s, score, model) in enumerate(RECORDS)
    ]
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    producer.close()
    return kafka_settings


@pytest.mark.integration
def test_json_lines_filtered_by_series_glob_and_min_score(published):
    done = run(
        published, "--json", "--series", "cpu-*", "--min-score", "0.8", "--since", "10m", "--exit-when-idle", "2"
    )
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["series"] for r in got) == ["cpu-1", "cpu-3"]
    assert all(r["lower"] == 0.25 and r["upper"] == 1.75 and r["model"] == "cpu" for r in got)


@pytest.mark.integration
def test_live_table_filtered_by_model_ends_after_max(published):
    done = run(published, "--model", "web", "--since", "beginning", "--max", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["event", "time", "(UTC)"] and "band" in lines[0]
    assert [line.split()[2] for line in lines[1:]] == ["web-1", "web-2"]
    assert "web v2" in lines[1] and "[0.25, 1.75]" in lines[1] and "0.990" in lines[1]


@pytest.mark.integration
def test_since_in_the_future_shows_nothing(published):
    done = run(published, "--json", "--since", "2199-01-01T00:00:00Z", "--exit-when-idle", "1")
    assert done.returncode == 0 and done.stdout == "", done.stderr


@pytest.mark.parametrize("args", [["--since", "yesterday"], ["--max", "0"]])
def test_bad_options_exit_2_with_one_line(kafka_settings, args):
    done = run(kafka_settings, *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_unknown_topic_exits_2_with_one_line(kafka_settings):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [
            TSAD,
            "anomalies",
            "--bootstrap-servers",
            kafka_settings.bootstrap_servers,
            "--anomalies-topic",
            "no-such-topic-here",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2 and "not found" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_helpers():
    assert parse_since("15m", now=1000.0) == 100.0 and parse_since("beginning") is None
    assert parse_since("2024-01-01T00:00:00Z") == 1704067200.0
    with pytest.raises(ValueError, match="--since"):
        parse_since("soon")
    record = {"series": "a-1", "model": "m", "score": 0.7}
    assert matches(record, "a-*", "m", 0.7) and not matches(record, "b-*", None, None)
    assert not matches(record, None, "x", None) and not matches(record, None, None, 0.71)
    assert "[-, -]" in table_row({"series": "s", "ts": 0, "score": 0.5, "lower": None})
