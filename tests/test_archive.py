"""Stream archive: Parquet layout, atomic writes, dedup on read, and the archiver against a real broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kafka.structs import TopicPartition
from waiting import wait_for

from models.core.settings import Settings
from pipeline.archive.consumer import Archiver
from pipeline.archive.format import ArchiveError, list_files, read_archive, write_files
from pipeline.kafka.broker import free_port
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.publish import publish_csv, read_series_csv
from pipeline.metrics import ArchiverMetrics

REPO = Path(__file__).resolve().parent.parent
NAB_FILE = "data/realTraffic/speed_7578.csv"  # 1127 rows, 2015-09-08 .. 2015-09-17


def _frame(rows):
    return pd.DataFrame(rows, columns=["series", "ts", "value", "partition", "offset"]).astype(
        {"ts": "float64", "value": "float64", "partition": "int32", "offset": "int64"}
    )


# -- layout and reading (no broker) -----------------------------------------------------------


def test_files_are_partitioned_by_event_date_and_hour_with_offset_names(tmp_path):
    t0 = pd.Timestamp("2024-03-01T23:59:00Z").timestamp()
    frame = _frame([("a", t0, 1.0, 0, 10), ("a", t0 + 120, 2.0, 0, 11), ("b", t0, 3.0, 1, 5)])
    written = write_files(tmp_path, frame)
    names = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert [re.sub(r"-[0-9a-f]{10}\.parquet$", ".parquet", n) for n in names] == [
        "date=2024-03-01/hour=23/part-0-10-10.parquet",
        "date=2024-03-01/hour=23/part-1-5-5.parquet",
        "date=2024-03-02/hour=00/part-0-11-11.parquet",
    ]
    assert not list(tmp_path.rglob(".tmp-*"))
    back = read_archive(tmp_path)
    assert list(back.columns) == ["series", "ts", "value", "partition", "offset"]
    assert back[["series", "ts", "value"]].values.tolist() == [["a", t0, 1.0], ["a", t0 + 120, 2.0], ["b", t0, 3.0]]


def test_read_archive_removes_duplicates_and_filters_range(tmp_path):
    t0 = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    rows = [("s", t0 + 60 * i, float(i), 0, 100 + i) for i in range(90)]  # 10:00 .. 11:29
    write_files(tmp_path, _frame(rows[:50]))
    write_files(tmp_path, _frame(rows[30:]))  # a re-delivery overlapping the first write
    assert len(list_files(tmp_path)) == 3  # hour 10 twice (overlapping), hour 11 once
    everything = read_archive(tmp_path)
    assert len(everything) == 90 and everything["offset"].is_unique
    assert everything["value"].tolist() == [float(i) for i in range(90)]
    window = read_archive(tmp_path, "2024-03-01T10:30:00Z", pd.Timestamp("2024-03-01T11:00:00Z"))
    assert window["value"].tolist() == [float(i) for i in range(30, 60)]
    # hour directories outside the range are not even opened
    assert [p.parent.name for p in list_files(tmp_path, t0 + 3600, None)] == ["hour=11"]
    assert read_archive(tmp_path, t0 + 86400, None).empty


def test_rewrite_of_the_same_records_is_idempotent(tmp_path):
    t0 = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    frame = _frame([("s", t0 + i, float(i), 2, i) for i in range(10)])
    first = write_files(tmp_path, frame)
    content = first[0].read_bytes()
    second = write_files(tmp_path, frame)
    assert first == second and first[0].read_bytes() == content
    assert len(list(tmp_path.rglob("*"))) == 3  # date dir, hour dir, one file


@pytest.mark.parametrize("gap_s", [60.0, 86400.0], ids=["same-hour", "next-day"])
def test_restarted_offsets_keep_every_row_and_never_replace_a_file(tmp_path, gap_s):
    # Day 1: offsets 0-4. The broker is recreated, offsets restart: day 2 is offsets 0-4 again.
    t0 = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    day1 = _frame([("s", t0 + i, float(i), 0, i) for i in range(5)])
    day2 = _frame([("s", t0 + gap_s + 10 + i, 100.0 + i, 0, i) for i in range(5)])
    first = write_files(tmp_path, day1)
    before = first[0].read_bytes()
    second = write_files(tmp_path, day2)
    assert set(first).isdisjoint(second)  # different content never takes an existing name
    assert first[0].read_bytes() == before
    back = read_archive(tmp_path)
    assert len(back) == 10
    assert back["value"].tolist() == [float(i) for i in range(5)] + [100.0 + i for i in range(5)]
    # a real redelivery of day 2 is still read once
    write_files(tmp_path, day2.iloc[2:])
    assert len(read_archive(tmp_path)) == 10


def test_temporary_files_are_ignored_and_corrupt_files_raise_clearly(tmp_path):
    t0 = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    (path,) = write_files(tmp_path, _frame([("s", t0, 1.0, 0, 0)]))
    (path.parent / ".tmp-123-part-0-1-1.parquet").write_bytes(b"half written")
    assert len(read_archive(tmp_path)) == 1
    (path.parent / "part-0-1-1.parquet").write_bytes(b"not parquet")
    with pytest.raises(ArchiveError, match=r"part-0-1-1\.parquet"):
        read_archive(tmp_path)


def test_empty_archive_reads_as_empty_frame_with_columns(tmp_path):
    frame = read_archive(tmp_path / "missing")
    assert frame.empty and list(frame.columns) == ["series", "ts", "value", "partition", "offset"]


# -- against the embedded broker ----------------------------------------------------------------


def _publish(kafka_settings, nab_dir, bad: int = 0):
    producer = make_producer(kafka_settings)
    try:
        report = publish_csv(producer, kafka_settings.events_topic, nab_dir / NAB_FILE)
        for i in range(bad):
            producer.send(
                kafka_settings.events_topic,
                key=b"x",
                value=b"{not json" if i % 2 else b'{"series": "x", "ts": 1441712340, "value": NaN}',
            )
        producer.flush()
    finally:
        producer.close()
    return report.events


def _committed(kafka_settings) -> dict[int, int | None]:
    """Committed offset per partition of the archiver's group (None: never committed)."""
    consumer = make_consumer(kafka_settings, group_id=kafka_settings.archive_group_id)
    try:
        parts = [TopicPartition(kafka_settings.events_topic, p) for p in range(kafka_settings.partitions)]
        # (not end_offsets(): Tansu 0.x reports a wrong high watermark after large produce batches)
        return {tp.partition: consumer.committed(tp) for tp in parts}
    finally:
        consumer.close()


@pytest.mark.integration
def test_archiver_archives_valid_events_counts_invalid_and_commits(kafka_settings, nab_dir, tmp_path):
    sent = _publish(kafka_settings, nab_dir, bad=6)
    metrics = ArchiverMetrics()
    archiver = Archiver(
        Settings(kafka=kafka_settings),
        archive_dir=tmp_path,
        flush_every_events=400,
        flush_interval_s=30,
        exit_when_idle_s=2.0,
        metrics=metrics,
    )
    archiver.run()

    frame = read_archive(tmp_path)
    expected = read_series_csv(nab_dir / NAB_FILE)
    assert len(frame) == sent == len(expected)
    assert set(frame["series"]) == {"speed_7578"}
    np.testing.assert_allclose(frame["value"].to_numpy(), expected["value"].to_numpy())
    stamps = pd.to_datetime(expected["timestamp"]).dt.tz_localize("UTC")
    want_ts = ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy()
    np.testing.assert_allclose(frame["ts"].to_numpy(), want_ts)
    r = metrics.registry
    assert r.get_sample_value("tsad_archive_events_total") == sent
    assert r.get_sample_value("tsad_archive_events_rejected_total", {"reason": "malformed_json"}) == 3
    assert r.get_sample_value("tsad_archive_events_rejected_total", {"reason": "non_finite_value"}) == 3
    assert r.get_sample_value("tsad_archive_files_written_total") == len(archiver.files) >= 3  # size flushes
    # every file: right hour directory, name = its partition and first/last offset
    for path in archiver.files:
        part = pd.read_parquet(path)
        first, last = part["offset"].min(), part["offset"].max()
        assert re.fullmatch(rf"part-{part['partition'].iloc[0]}-{first}-{last}-[0-9a-f]{{10}}\.parquet", path.name)
        hours = pd.to_datetime(part["ts"], unit="s", utc=True).dt.strftime("date=%Y-%m-%d/hour=%H").unique()
        assert list(hours) == [f"{path.parent.parent.name}/{path.parent.name}"]
    committed = _committed(kafka_settings)
    (good,) = frame["partition"].unique()
    assert committed[good] >= sent
    # offsets start at 0: the committed offsets add up to every record, the 6 bad ones included
    assert sum(v for v in committed.values() if v is not None) == sent + 6

    # A second archiver in the same group finds nothing new: no new files.
    again = Archiver(Settings(kafka=kafka_settings), archive_dir=tmp_path, exit_when_idle_s=2.0)
    again.run()
    assert again.files == []


class _CrashBeforeCommit(Archiver):
    """Files are renamed into place but the process 'dies' before the offset commit."""

    def _commit(self, last_offset):
        raise SystemExit("crash")


@pytest.mark.integration
def test_crash_between_write_and_commit_rearchives_without_duplicates_on_read(kafka_settings, nab_dir, tmp_path):
    sent = _publish(kafka_settings, nab_dir)
    crashed = _CrashBeforeCommit(
        Settings(kafka=kafka_settings), archive_dir=tmp_path, flush_every_events=300, exit_when_idle_s=2.0
    )
    with pytest.raises(SystemExit):
        crashed.run()
    assert crashed.files and _committed(kafka_settings) == dict.fromkeys(range(4))
    # the restarted archiver re-reads everything, in smaller polls, so its files are cut elsewhere
    small_polls = kafka_settings.model_copy(update={"max_poll_records": 500})
    redo = Archiver(Settings(kafka=small_polls), archive_dir=tmp_path, flush_every_events=500, exit_when_idle_s=2.0)
    redo.run()
    on_disk = sum(len(pd.read_parquet(p)) for p in list_files(tmp_path))
    assert on_disk > sent  # the re-delivered records are on disk twice ...
    frame = read_archive(tmp_path)
    assert len(frame) == sent and not frame.duplicated(["partition", "offset"]).any()  # ... read once


def _env(kafka_settings, archive_dir):
    return {
        **os.environ,
        "TSAD_KAFKA__BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "TSAD_KAFKA__EVENTS_TOPIC": kafka_settings.events_topic,
        "TSAD_KAFKA__ARCHIVE_GROUP_ID": kafka_settings.archive_group_id,
        "TSAD_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "TSAD_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
        "TSAD_ARCHIVE_DIR": str(archive_dir),
    }


@pytest.mark.integration
def test_cli_serves_metrics_and_sigterm_flushes_and_commits_before_exit(kafka_settings, nab_dir, tmp_path):
    sent = _publish(kafka_settings, nab_dir)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "archive",
            "--flush-interval-s",
            "600",
            "--flush-every-events",
            "100000",
            "--metrics-port",
            str(port),
        ],
        env=_env(kafka_settings, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        for needle, what in (
            ("partitions assigned: [0, 1, 2, 3]", "every partition assigned"),
            ("buffering events", "valid events fetched"),
        ):
            try:
                wait_for(
                    lambda n=needle: any(n in line for line in lines), deadline - time.monotonic(), what, proc=proc
                )
            except AssertionError as error:
                raise AssertionError(f"{error}\n{''.join(lines)}") from None
        # nothing may be flushed yet (size and time limits are far)
        assert not list_files(tmp_path)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "tsad_archive_events_total 0.0" in body
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    assert proc.returncode == 0, out
    flushed = read_archive(tmp_path)
    assert len(flushed) > 0, out  # SIGTERM wrote the buffer ...
    committed = _committed(kafka_settings)
    for partition, offsets in flushed.groupby("partition")["offset"]:
        assert committed[partition] == offsets.max() + 1  # ... and committed exactly what it wrote
    # whatever was not read before SIGTERM is picked up by the next run, nothing twice
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "archive", "--exit-when-idle", "2", "--metrics-port", "0"],
        env=_env(kafka_settings, tmp_path),
        capture_output=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    frame = read_archive(tmp_path)
    assert len(frame) == sent


@pytest.mark.integration
def test_cli_exit_when_idle(kafka_settings, nab_dir, tmp_path):
    sent = _publish(kafka_settings, nab_dir, bad=2)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "archive", "--exit-when-idle", "2", "--metrics-port", "0"],
        env=_env(kafka_settings, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"archived {sent} events" in done.stdout
    assert len(read_archive(tmp_path)) == sent
