"""The Kafka scoring loop behind ``tsad serve`` (at-least-once).

Per poll batch: decode + validate every message (one orjson call for the whole batch when it
parses cleanly, else message by message) -> ``StreamingDetector.process`` on all valid events at
once -> produce anomaly records and dead-letter records -> flush and check every send ->
commit the batch's offsets. Offsets are committed only after everything the batch produced was
acknowledged; a send that still fails after retries stops the scorer WITHOUT committing, so a
restart re-reads the batch (duplicates only from that last batch).

Accounting (``tsad_events_*``): every consumed event is exactly one of scored, warm-up (held in
state without alerting) or rejected (dead-lettered with a reason).

Warm state: when partitions are assigned, the scorer seeks ``replay_messages`` back before each
partition's committed offset and re-reads them as *replay*: they update series state only
(no anomaly, no dead letter, not counted as consumed; counted in ``tsad_events_warmup_total`` and
``tsad_events_replayed_total``), so a restarted or scaled-out scorer never alerts from an empty
window. Partitions kept across a rebalance keep their state; series of partitions lost are dropped.

Hot reload: between batches the ``ChampionWatcher`` is polled; a new champion is swapped in
before the next batch, so no event is lost or scored twice around a swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson
from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from pipeline.events import (
    DUPLICATE_TIMESTAMP, MALFORMED_JSON, MAX_MESSAGE_BYTES, MAX_SERIES_ID_LENGTH, OUT_OF_ORDER, Event, Rejection,
    parse_event, validate_payload,
)
from pipeline.metrics import ScorerMetrics
from pipeline.records import anomaly_value, dead_letter_headers
from pipeline.scoring import DUPLICATE, OUT_OF_ORDER as ST_OUT_OF_ORDER, SCORED, WARMUP, StreamingDetector

log = logging.getLogger(__name__)
_LAG_INTERVAL_S = 1.0


class ProduceFailed(RuntimeError):
    """Some records of a batch were not acknowledged after retries; the batch is not committed."""


@dataclass
class ScorerStats:
    """Running totals (the same numbers as the metrics, for the demo and tests)."""

    consumed: int = 0
    scored: int = 0
    warmup: int = 0
    replayed: int = 0
    rejected: dict = field(default_factory=lambda: defaultdict(int))
    anomalies: int = 0
    batches: int = 0
    commits: int = 0
    busy_s: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def observe_many(histogram, values: np.ndarray) -> None:
    """Add many observations to a prometheus_client Histogram in O(buckets) (falls back to a loop)."""
    if len(values) == 0:
        return
    try:
        bounds = histogram._upper_bounds  # noqa: SLF001 - no public bulk observe in prometheus_client
        buckets = histogram._buckets  # noqa: SLF001
        counts = np.bincount(np.searchsorted(np.asarray(bounds[:-1]), values, side="left"), minlength=len(bounds))
        for bucket, c in zip(buckets, counts.tolist()):
            if c:
                bucket.inc(c)
        histogram._sum.inc(float(np.sum(values)))  # noqa: SLF001
    except AttributeError:
        for v in values.tolist():
            histogram.observe(v)


@dataclass
class DecodedBatch:
    """Columns of the valid events of a batch and the rejections, by position in the batch."""

    series: list = field(default_factory=list)
    ts: list = field(default_factory=list)
    values: list = field(default_factory=list)
    valid_pos: list = field(default_factory=list)
    rejections: list = field(default_factory=list)  # (position, Rejection)


_MAX_EXACT_INT = 2**53
_MS_CUTOFF, _MAX_TS = 1e11, 7_258_118_400.0


def decode_batch(records, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_series_id_length: int = MAX_SERIES_ID_LENGTH) -> DecodedBatch:
    """Decode and validate a poll batch; same verdicts as ``pipeline.events.parse_event``.

    One ``orjson.loads`` for the whole batch when every value is a JSON object that parses
    (count checked), else message by message. The common case (numeric ts and value, plain
    series id) is accepted inline; anything else goes through ``validate_payload`` /
    ``parse_event`` (the schema's reference implementation) so reasons stay exact.
    """
    out = DecodedBatch()
    values = [r.value for r in records]
    payloads = None
    if all(v is not None and 0 < len(v) <= max_message_bytes and v[:1] == b"{" and v[-1:] == b"}" for v in values):
        try:
            payloads = orjson.loads(b"[" + b",".join(values) + b"]")
        except orjson.JSONDecodeError:
            payloads = None
        if payloads is not None and len(payloads) != len(values):
            payloads = None
    s_app, t_app, v_app, p_app = out.series.append, out.ts.append, out.values.append, out.valid_pos.append
    if payloads is not None:
        for i, (p, r) in enumerate(zip(payloads, records)):
            if type(p) is dict:
                sid, t, v = p.get("series"), p.get("ts"), p.get("value")
                tt, tv = type(t), type(v)
                if (type(sid) is str and (tv is float or (tv is int and -_MAX_EXACT_INT < v < _MAX_EXACT_INT))
                        and (tt is float or (tt is int and -_MAX_EXACT_INT < t < _MAX_EXACT_INT))
                        and 0 < len(sid) <= max_series_id_length and not sid.isspace()
                        and (r.key is None or r.key == sid.encode())):
                    t = float(t)
                    if t >= _MS_CUTOFF or t <= -_MS_CUTOFF:
                        t /= 1000.0
                    if 0.0 <= t <= _MAX_TS:
                        s_app(sid)
                        t_app(t)
                        v_app(float(v))
                        p_app(i)
                        continue
            try:
                item = validate_payload(p, r.value, r.key, max_series_id_length=max_series_id_length)
            except Exception as error:  # noqa: BLE001 - never raise on bad input
                item = Rejection(MALFORMED_JSON, f"unexpected error while validating: {error}", bytes(r.value))
            _add(out, i, item)
    else:
        for i, r in enumerate(records):
            _add(out, i, parse_event(r.value, r.key, max_message_bytes=max_message_bytes,
                                     max_series_id_length=max_series_id_length))
    return out


def _add(out: DecodedBatch, i: int, item) -> None:
    if type(item) is Event:
        out.series.append(item.series)
        out.ts.append(item.ts)
        out.values.append(item.value)
        out.valid_pos.append(i)
    else:
        out.rejections.append((i, item))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, scorer: "Scorer"):
        self.scorer = scorer

    def on_partitions_revoked(self, revoked):
        self.scorer._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.scorer._on_assigned(assigned)


class Scorer:
    """Consumes ``settings.kafka.events_topic`` in the scorer group and scores it with ``detector``."""

    def __init__(self, settings, detector: StreamingDetector, metrics: ScorerMetrics | None = None, *,
                 watcher=None, replay_messages: int = 20_000, poll_timeout_ms: int = 200,
                 on_anomaly=None, consumer=None, producer=None):
        from pipeline.kafka_clients import make_consumer, make_producer

        self.settings = settings
        self.kafka = settings.kafka
        self.detector = detector
        self.metrics = metrics or ScorerMetrics()
        self.watcher = watcher
        self.replay_messages = replay_messages
        self.poll_timeout_ms = poll_timeout_ms
        self.on_anomaly = on_anomaly
        self.stats = ScorerStats()
        self._replay_end: dict[TopicPartition, int] = {}
        self._revoked: set[TopicPartition] = set()
        self._pending_warm: set[TopicPartition] = set()
        self._series_by_tp: dict[TopicPartition, set[str]] = defaultdict(set)
        self._next_lag = 0.0
        self.latency_log: list | None = None
        self.consumer = consumer or make_consumer(self.kafka, group_id=self.kafka.group_id)
        self.consumer.subscribe([self.kafka.events_topic], listener=_Listener(self))
        self.producer = producer or make_producer(self.kafka, linger_ms=5)
        self._publish_model_info()

    # ------------------------------------------------------------------ rebalance
    def _on_revoked(self, revoked) -> None:
        self._revoked = set(revoked)
        log.info("partitions revoked: %s", sorted((tp.partition for tp in revoked)))

    def _on_assigned(self, assigned) -> None:
        # Runs on kafka-python's IO thread: no blocking consumer calls here. The replay seek is
        # done by the loop right after this poll returns (``_start_replay``).
        assigned = set(assigned)
        lost = self._revoked - assigned
        for tp in lost:
            self.detector.forget(self._series_by_tp.pop(tp, set()))
            self._replay_end.pop(tp, None)
            if self._has_lag(tp):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        kept = self._revoked & assigned
        self._revoked = set()
        self._pending_warm |= assigned - kept
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

    def _start_replay(self, batch: dict) -> dict:
        """Seek newly assigned partitions back ``replay_messages`` before their committed offset.

        Records this poll already returned for those partitions are dropped (not processed, not
        committed): the seek re-reads them right after the replay.
        """
        pending, self._pending_warm = self._pending_warm, set()
        if self.replay_messages <= 0:
            return batch
        assigned = self.consumer.assignment()
        for tp in pending:
            if tp not in assigned:
                continue
            try:
                committed = self.consumer.committed(tp)
            except KafkaError as error:
                log.warning("cannot read committed offset of %s, no warm replay: %s", tp, error)
                continue
            if not committed:
                continue
            self.consumer.seek(tp, max(committed - self.replay_messages, 0))
            self._replay_end[tp] = committed
            batch.pop(tp, None)
        if self._replay_end:
            log.info("warm replay up to committed offsets %s",
                     {tp.partition: end for tp, end in self._replay_end.items()})
        return batch

    def _has_lag(self, tp) -> bool:
        try:
            return (tp.topic, str(tp.partition)) in self.metrics.consumer_lag._metrics  # noqa: SLF001
        except AttributeError:
            return False

    # ------------------------------------------------------------------ model
    def _publish_model_info(self) -> None:
        d = self.detector
        self.metrics.model_info.info({"name": d.model_name, "kind": str(d.bundle.kind), "version": str(d.model_version)})
        try:
            self.metrics.model_version.set(float(d.model_version))
        except (TypeError, ValueError):
            pass
        self.metrics.last_reload.set(time.time())

    def check_reload(self, force: bool = False) -> None:
        """Swap in a newly promoted champion (called between batches)."""
        if self.watcher is None:
            return
        outcome = self.watcher.poll(force=force)
        if outcome is None:
            return
        if outcome.bundle is None:
            self.metrics.reload_failures.inc()
            return
        bundle = outcome.bundle
        try:
            self.detector.swap_model(bundle)
        except Exception as error:  # noqa: BLE001 - unservable: refuse, keep the old model
            self.watcher.refuse(bundle.version)
            self.metrics.reload_failures.inc()
            log.error("refusing model %s v%s: %s", bundle.name, bundle.version, error)
            return
        self.watcher.accepted(bundle.version)
        self._publish_model_info()
        log.info("now serving %s v%s (%s)", bundle.name, bundle.version, bundle.kind)

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> ScorerStats:
        """Poll and score until ``stop`` is set (or no message came for ``idle_exit_s``); commit and close."""
        self.metrics.up.set(1)
        last_message = time.monotonic()
        try:
            while not stop.is_set():
                self.check_reload()
                batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.kafka.max_poll_records)
                if self._pending_warm:
                    batch = self._start_replay(batch)
                if batch:
                    self.process_batch(batch)
                    last_message = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
                self._update_lag()
        finally:
            self.metrics.up.set(0)
            self.close()
        return self.stats

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
            self.producer.close(timeout=10)
        finally:
            self.consumer.close(autocommit=False)

    def _update_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_lag:
            return
        self._next_lag = now + _LAG_INTERVAL_S
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=0)
            except Exception:  # noqa: BLE001 - position unknown yet
                continue
            if position is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(high - position, 0))

    def process_batch(self, batch: dict) -> None:
        """Score, produce, flush, commit one poll batch (``{TopicPartition: [ConsumerRecord]}``)."""
        t0, wall0 = time.perf_counter(), time.time()
        records = [r for recs in batch.values() for r in recs]
        n = len(records)
        replay = np.zeros(n, dtype=bool)
        if self._replay_end:
            pos = 0
            for tp, recs in batch.items():
                end = self._replay_end.get(tp)
                if end is not None:
                    offs = np.fromiter((r.offset for r in recs), dtype=np.int64, count=len(recs))
                    replay[pos:pos + len(recs)] = offs < end
                    if len(recs) and recs[-1].offset + 1 >= end:
                        del self._replay_end[tp]
                pos += len(recs)
        dec = decode_batch(records, self.settings.max_message_bytes, self.settings.max_series_id_length)
        valid_pos = dec.valid_pos
        vp = np.asarray(valid_pos, dtype=np.int64)
        alert = ~replay[vp] if len(vp) else np.zeros(0, dtype=bool)
        result = self.detector.process(dec.series, dec.ts, dec.values, alert=alert)
        decided_at = time.time()
        futures = []
        stats, metrics = self.stats, self.metrics
        topic_out, topic_dl = self.kafka.anomalies_topic, self.kafka.dead_letter_topic
        send = self.producer.send

        # rejected by validation (not replay)
        for i, item in dec.rejections:
            if not replay[i]:
                r = records[i]
                futures.append(send(topic_dl, key=r.key, value=item.raw,
                                    headers=dead_letter_headers(item.reason, item.detail, r.topic, r.partition, r.offset)))
                stats.rejected[item.reason] += 1
                metrics.events_rejected.labels(item.reason).inc()
        status = result.status
        new = alert
        # rejected by the detector: duplicate / out-of-order timestamps
        for j in np.flatnonzero(new & ((status == DUPLICATE) | (status == ST_OUT_OF_ORDER))).tolist():
            r = records[valid_pos[j]]
            reason = DUPLICATE_TIMESTAMP if status[j] == DUPLICATE else OUT_OF_ORDER
            detail = f"series {dec.series[j]!r}: timestamp {dec.ts[j]} " + (
                "equals the last accepted one" if reason == DUPLICATE_TIMESTAMP else "is older than the last accepted one")
            futures.append(send(topic_dl, key=r.key, value=r.value,
                                headers=dead_letter_headers(reason, detail, r.topic, r.partition, r.offset)))
            stats.rejected[reason] += 1
            metrics.events_rejected.labels(reason).inc()
        # anomalies
        for j in np.flatnonzero(result.is_anomaly).tolist():
            r, sid = records[valid_pos[j]], dec.series[j]
            value = anomaly_value(sid, dec.ts[j], dec.values[j], float(result.predicted[j]), float(result.error[j]),
                                  float(result.score[j]), result.threshold, result.model, result.model_version,
                                  r.topic, r.partition, r.offset)
            futures.append(send(topic_out, key=sid.encode("utf-8"), value=value))
            if self.on_anomaly is not None:
                self.on_anomaly(orjson.loads(value))
        self._await(futures)

        n_scored = int(((status == SCORED) & new).sum())
        n_warm_new = int(((status == WARMUP) & new).sum())
        n_replayed = int(((status == WARMUP) & ~new).sum())
        n_new = int(n - replay.sum())
        n_anom = int(result.is_anomaly.sum())
        stats.consumed += n_new
        stats.scored += n_scored
        stats.warmup += n_warm_new + n_replayed
        stats.replayed += n_replayed
        stats.anomalies += n_anom
        metrics.events_consumed.inc(n_new)
        metrics.events_scored.inc(n_scored)
        metrics.events_warmup.inc(n_warm_new + n_replayed)
        if hasattr(metrics, "events_replayed"):
            metrics.events_replayed.inc(n_replayed)
        metrics.anomalies.inc(n_anom)
        if result.evicted:
            metrics.series_evicted.inc(result.evicted)
        decided = new & ((status == SCORED) | (status == WARMUP))
        if decided.any():
            ts_ms = np.fromiter((records[valid_pos[j]].timestamp for j in np.flatnonzero(decided).tolist()),
                                dtype=np.float64)
            latency = np.maximum(decided_at - ts_ms / 1000.0, 0.0)
            observe_many(metrics.end_to_end_latency, latency)
            if self.latency_log is not None:  # benchmarks: (end-to-end, time inside the scorer) per event
                self.latency_log.append((latency, decided_at - wall0))

        # remember which series live on which partition (to drop them if the partition goes)
        part_of = np.repeat(np.arange(len(batch)), [len(recs) for recs in batch.values()])
        tps = list(batch)
        for k, tp in enumerate(tps):
            mine = np.flatnonzero(part_of[vp] == k) if len(vp) else []
            if len(mine):
                self._series_by_tp[tp].update(dec.series[j] for j in mine.tolist())
        self._commit(batch)
        stats.batches += 1
        metrics.tracked_series.set(self.detector.tracked_series)
        metrics.batch_size.observe(n)
        elapsed = time.perf_counter() - t0
        stats.busy_s += elapsed
        metrics.batch_duration.observe(elapsed)

    def _await(self, futures) -> None:
        """Flush and make sure every send of the batch was acknowledged (retrying failed ones)."""
        if not futures:
            return
        self.producer.flush()
        failed = [f for f in futures if f.failed()]
        if failed:
            raise ProduceFailed(f"{len(failed)} of {len(futures)} records not acknowledged: {failed[0].exception}")

    @retry(retry=retry_if_exception_type(KafkaError), stop=stop_after_attempt(3),
           wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
    def _commit_offsets(self, offsets) -> None:
        self.consumer.commit(offsets)

    def _commit(self, batch: dict) -> None:
        offsets = {}
        for tp, recs in batch.items():
            if not recs:
                continue
            nxt = recs[-1].offset + 1
            if nxt <= self._replay_end.get(tp, -1):
                continue  # replay only: the committed offset is already past these
            offsets[tp] = OffsetAndMetadata(nxt, "", -1)
        if not offsets:
            return
        try:
            self._commit_offsets(offsets)
        except CommitFailedError as error:
            # the group rebalanced under us: the new owner re-reads this batch (at-least-once)
            log.warning("commit failed after rebalance, batch will be re-read: %s", error)
            return
        self.stats.commits += 1
        self.metrics.commits.inc()
