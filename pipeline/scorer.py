"""The Kafka scoring loop behind ``tsad serve`` (at-least-once).

Per poll batch (``pipeline.feed.Batch``, columns): decode + validate every message (one orjson
call for the whole batch when it parses cleanly, else message by message) ->
``StreamingDetector.process`` on all valid events at once -> produce anomaly records and
dead-letter records -> flush and check every send -> commit the batch's offsets. Offsets are
committed only after everything the batch produced was acknowledged; a send that still fails
after retries stops the scorer WITHOUT committing, so a restart re-reads the batch (duplicates
only from that last batch).

Accounting (``tsad_events_*``): every consumed event is exactly one of scored, warm-up (held in
state without alerting) or rejected (dead-lettered with a reason).

Fetching (``pipeline.feed``): by default the consumer runs in a child process
(``pipeline.feed_process``) that fetches the next batch while this one is scored (kafka-python's
fetch path is GIL-bound, so a thread would not overlap); ``fetch_process=False`` polls in-process.

Warm state: when partitions are assigned, the feed seeks ``replay_messages`` back before each
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
from itertools import compress
from operator import attrgetter, itemgetter

import numpy as np
import orjson
from kafka.structs import TopicPartition

from pipeline.events import (
    DUPLICATE_TIMESTAMP, MALFORMED_JSON, MAX_MESSAGE_BYTES, MAX_SERIES_ID_LENGTH, OUT_OF_ORDER, Event, Rejection,
    parse_event, validate_payload,
)
from pipeline.feed import Batch, EventFeed, Rebalance
from pipeline.feed_process import FetchProcess
from pipeline.metrics import ScorerMetrics
from pipeline.records import anomaly_value, dead_letter_headers, dead_letter_value
from pipeline.scoring import DUPLICATE, OUT_OF_ORDER as ST_OUT_OF_ORDER, SCORED, WARMUP, StreamingDetector

log = logging.getLogger(__name__)


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
    """Columns of the valid events of a batch (in batch order) and the rejections, by position.

    ``series`` list of str; ``ts``, ``values`` float64 ``(n_valid,)``; ``valid_pos`` int64
    ``(n_valid,)`` positions in the batch; ``rejections`` list of ``(position, Rejection)``.
    """

    series: list = field(default_factory=list)
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    valid_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rejections: list = field(default_factory=list)  # (position, Rejection)


_MAX_EXACT_INT = 2**53
_MS_CUTOFF, _MAX_TS = 1e11, 7_258_118_400.0
_SERIES, _TS, _VALUE = itemgetter("series"), itemgetter("ts"), itemgetter("value")
_KEY, _VALUE_BYTES = attrgetter("key"), attrgetter("value")
_NUMBER_TYPES = {int, float}
_FIRST, _LAST = itemgetter(0), itemgetter(-1)


def _fast_columns(payloads: list, keys: list, max_series_id_length: int):
    """Column-wise checks of the common case with C-level loops (``map``, numpy).

    Returns ``(ok (n,) bool, series list, ts (n,) s, values (n,))`` where ``ok`` marks the events
    accepted here, or None when the batch needs the per-message path (rare: a non-object, a
    missing field, a wrong type). Rows not ``ok`` still need ``validate_payload``: they may be valid
    (e.g. an integer beyond 2**53, an ISO timestamp) or rejected; only that function decides.
    """
    n = len(payloads)
    if set(map(type, payloads)) != {dict}:
        return None
    try:
        sids = list(map(_SERIES, payloads))
        tss = list(map(_TS, payloads))
        vals = list(map(_VALUE, payloads))
    except KeyError:
        return None
    if (set(map(type, sids)) != {str} or not set(map(type, tss)) <= _NUMBER_TYPES
            or not set(map(type, vals)) <= _NUMBER_TYPES):
        return None
    try:
        t = np.array(tss, dtype=np.float64)
        v = np.array(vals, dtype=np.float64)
        encoded = list(map(str.encode, sids))
    except (OverflowError, ValueError, TypeError, UnicodeError):
        return None
    lengths = np.fromiter(map(len, sids), dtype=np.int64, count=n)
    with np.errstate(invalid="ignore"):
        ok = ((lengths > 0) & (lengths <= max_series_id_length)
              & (np.abs(v) < _MAX_EXACT_INT) & (np.abs(t) < _MAX_EXACT_INT))
        big = np.abs(t) >= _MS_CUTOFF
        if big.any():
            t = np.where(big, t / 1000.0, t)
        ok &= (t >= 0.0) & (t <= _MAX_TS)
    if any(map(str.isspace, sids)):
        ok &= ~np.fromiter(map(str.isspace, sids), dtype=bool, count=n)
    if encoded != keys:  # a key that is given must equal the series id
        ok &= ~np.fromiter((k is not None and k != e for k, e in zip(keys, encoded)), dtype=bool, count=n)
    return ok, sids, t, v


def _all_objects(values: list, max_message_bytes: int) -> bool:
    """Every value is ``{...}`` of 1..max bytes (so joining them cannot shift message boundaries)."""
    if None in values:
        return False
    lengths = list(map(len, values))
    if min(lengths) < 2 or max(lengths) > max_message_bytes:
        return False
    return set(map(_FIRST, values)) == {0x7B} and set(map(_LAST, values)) == {0x7D}


def decode_batch(records, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_series_id_length: int = MAX_SERIES_ID_LENGTH) -> DecodedBatch:
    """``decode_columns`` of records with ``.value`` and ``.key`` (e.g. kafka-python's ConsumerRecord)."""
    return decode_columns(list(map(_VALUE_BYTES, records)), list(map(_KEY, records)), max_message_bytes,
                          max_series_id_length)


def decode_columns(values: list, keys: list, max_message_bytes: int = MAX_MESSAGE_BYTES,
                   max_series_id_length: int = MAX_SERIES_ID_LENGTH) -> DecodedBatch:
    """Decode and validate a batch's message values (bytes) and keys (bytes | None); same verdicts as
    ``pipeline.events.parse_event``.

    One ``orjson.loads`` for the whole batch when every value is a JSON object that parses
    (count checked), then column-wise checks of the common case (numeric ts and value, plain
    series id, matching key); anything else goes through ``validate_payload`` / ``parse_event``
    (the schema's reference implementation) so reasons stay exact.
    """
    n = len(values)
    out = DecodedBatch()
    if n == 0:
        return out
    payloads = None
    if _all_objects(values, max_message_bytes):
        try:
            payloads = orjson.loads(b"[" + b",".join(values) + b"]")
        except orjson.JSONDecodeError:
            payloads = None
        if payloads is not None and len(payloads) != n:
            payloads = None
    fast = _fast_columns(payloads, keys, max_series_id_length) if payloads is not None else None
    if fast is not None:
        ok, sids, t, v = fast
        if not ok.all():
            for i in np.flatnonzero(~ok).tolist():
                try:
                    item = validate_payload(payloads[i], values[i], keys[i], max_series_id_length=max_series_id_length)
                except Exception as error:  # noqa: BLE001 - never raise on bad input
                    item = Rejection(MALFORMED_JSON, f"unexpected error while validating: {error}", bytes(values[i]))
                if type(item) is Event:
                    ok[i], sids[i], t[i], v[i] = True, item.series, item.ts, item.value
                else:
                    out.rejections.append((i, item))
            out.series = list(compress(sids, ok.tolist()))
            out.ts, out.values, out.valid_pos = t[ok], v[ok], np.flatnonzero(ok)
        else:
            out.series, out.ts, out.values, out.valid_pos = sids, t, v, np.arange(n, dtype=np.int64)
        return out
    series, ts, vals, pos = [], [], [], []
    for i, (raw, key) in enumerate(zip(values, keys)):
        if payloads is not None:
            try:
                item = validate_payload(payloads[i], raw, key, max_series_id_length=max_series_id_length)
            except Exception as error:  # noqa: BLE001 - never raise on bad input
                item = Rejection(MALFORMED_JSON, f"unexpected error while validating: {error}", bytes(raw))
        else:
            item = parse_event(raw, key, max_message_bytes=max_message_bytes, max_series_id_length=max_series_id_length)
        if type(item) is Event:
            series.append(item.series)
            ts.append(item.ts)
            vals.append(item.value)
            pos.append(i)
        else:
            out.rejections.append((i, item))
    out.series = series
    out.ts, out.values = np.array(ts, dtype=np.float64), np.array(vals, dtype=np.float64)
    out.valid_pos = np.array(pos, dtype=np.int64)
    return out


class Scorer:
    """Consumes ``settings.kafka.events_topic`` in the scorer group and scores it with ``detector``.

    ``fetch_process=True`` (default): the consumer lives in a child process
    (``pipeline.feed_process.FetchProcess``) that fetches the next batch while this one is scored,
    so kafka-python's GIL-bound fetch path and the scoring use two cores. ``False``: one thread
    polls, scores and commits in turn (``pipeline.feed.EventFeed`` in-process). Same semantics.
    """

    def __init__(self, settings, detector: StreamingDetector, metrics: ScorerMetrics | None = None, *,
                 watcher=None, replay_messages: int = 20_000, poll_timeout_ms: int = 200,
                 on_anomaly=None, producer=None, fetch_process: bool = True):
        from pipeline.kafka_clients import make_producer

        self.settings = settings
        self.kafka = settings.kafka
        self.detector = detector
        self.metrics = metrics or ScorerMetrics()
        self.watcher = watcher
        self.poll_timeout_ms = poll_timeout_ms
        self.on_anomaly = on_anomaly
        self.stats = ScorerStats()
        self._series_by_tp: dict[TopicPartition, set[str]] = defaultdict(set)
        self._evictions_since_prune = 0
        self._owned: set[TopicPartition] = set()  # current assignment (from the feed's notices)
        self._commits_seen = 0
        self.latency_log: list | None = None
        self.producer = producer or make_producer(self.kafka, linger_ms=5)
        if fetch_process:
            self.feed = FetchProcess(self.kafka, replay_messages=replay_messages, poll_timeout_ms=poll_timeout_ms)
        else:
            self.feed = EventFeed(self.kafka, replay_messages=replay_messages, poll_timeout_ms=poll_timeout_ms)
        self._publish_model_info()

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
        """Poll and score until ``stop`` is set (or no message came for ``idle_exit_s``); commit and close.

        On ``stop`` the batch being scored is finished, produced, acknowledged and committed;
        batches fetched but not scored yet are left uncommitted (re-read by the next owner).
        """
        self.metrics.up.set(1)
        try:
            last_message = time.monotonic()
            while not stop.is_set():
                self.check_reload()
                items = self.feed.poll(self.poll_timeout_ms)
                for item in items:
                    if isinstance(item, Rebalance):
                        self._rebalanced(item)
                    else:
                        self._score(item)
                        self.feed.commit(item.commit_offsets)
                        last_message = time.monotonic()
                self._publish_feed_metrics()
                if not items and idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
        finally:
            self.metrics.up.set(0)
            self.close()
        return self.stats

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
            self.producer.close(timeout=10)
        finally:
            self.feed.close()
            self._publish_feed_metrics()

    def _rebalanced(self, notice: Rebalance) -> None:
        """Drop the state of series on partitions lost to another scorer."""
        for tp in notice.lost:
            self.detector.forget(self._series_by_tp.pop(tp, set()))
            if self._has_lag(tp):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self._owned = set(notice.assigned)

    def _has_lag(self, tp) -> bool:
        try:
            return (tp.topic, str(tp.partition)) in self.metrics.consumer_lag._metrics  # noqa: SLF001
        except AttributeError:
            return False

    def _publish_feed_metrics(self) -> None:
        lag = self.feed.lag()
        if lag:
            for tp, behind in lag.items():
                if tp in self._owned:
                    self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(behind)
        commits = self.feed.commits
        if commits > self._commits_seen:
            self.metrics.commits.inc(commits - self._commits_seen)
            self._commits_seen = commits
        self.stats.commits = commits

    def _score(self, batch: Batch) -> bool:
        """Decode, score, produce and await one batch (its offsets are committed by the caller).

        Returns False when nothing of the batch is on a partition still assigned to us.
        """
        if not self._owned.issuperset(batch.tps):
            batch = batch.restricted(self._owned)
            if not len(batch):
                return False
        t0 = time.perf_counter()
        n = len(batch)
        replay = batch.replay
        keys, raw_values, offsets = batch.keys, batch.values, batch.offsets
        partitions = batch.partitions()
        topic_in = self.kafka.events_topic
        dec = decode_columns(raw_values, keys, self.settings.max_message_bytes, self.settings.max_series_id_length)
        vp = dec.valid_pos
        new = np.ones(len(vp), dtype=bool) if replay is None else ~replay[vp]
        result = self.detector.process(dec.series, dec.ts, dec.values, alert=new)
        decided_at = time.time()
        futures = []
        stats, metrics = self.stats, self.metrics
        topic_out, topic_dl = self.kafka.anomalies_topic, self.kafka.dead_letter_topic
        send = self.producer.send

        # rejected by validation (not replay)
        for i, item in dec.rejections:
            if replay is None or not replay[i]:
                value, extra = dead_letter_value(item.raw, self.settings.max_message_bytes)
                futures.append(send(topic_dl, key=keys[i], value=value, headers=dead_letter_headers(
                    item.reason, item.detail, topic_in, int(partitions[i]), int(offsets[i])) + extra))
                stats.rejected[item.reason] += 1
                metrics.events_rejected.labels(item.reason).inc()
        status = result.status
        # rejected by the detector: duplicate / out-of-order timestamps
        for j in np.flatnonzero(new & ((status == DUPLICATE) | (status == ST_OUT_OF_ORDER))).tolist():
            i = int(vp[j])
            reason = DUPLICATE_TIMESTAMP if status[j] == DUPLICATE else OUT_OF_ORDER
            detail = f"series {dec.series[j]!r}: timestamp {dec.ts[j]} " + (
                "equals the last accepted one" if reason == DUPLICATE_TIMESTAMP else "is older than the last accepted one")
            futures.append(send(topic_dl, key=keys[i], value=raw_values[i], headers=dead_letter_headers(
                reason, detail, topic_in, int(partitions[i]), int(offsets[i]))))
            stats.rejected[reason] += 1
            metrics.events_rejected.labels(reason).inc()
        # anomalies
        for j in np.flatnonzero(result.is_anomaly).tolist():
            i, sid = int(vp[j]), dec.series[j]
            value = anomaly_value(sid, float(dec.ts[j]), float(dec.values[j]), float(result.predicted[j]),
                                  float(result.error[j]), float(result.score[j]), result.threshold, result.model,
                                  result.model_version, topic_in, int(partitions[i]), int(offsets[i]))
            futures.append(send(topic_out, key=sid.encode("utf-8"), value=value))
            if self.on_anomaly is not None:
                self.on_anomaly(orjson.loads(value))
        self._await(futures)

        counts_new = np.bincount(status[new], minlength=4)
        n_scored, n_warm_new = int(counts_new[SCORED]), int(counts_new[WARMUP])
        n_replayed = int(np.count_nonzero(status[~new] == WARMUP)) if replay is not None else 0
        n_new = n - (int(replay.sum()) if replay is not None else 0)
        n_anom = int(np.count_nonzero(result.is_anomaly))
        stats.consumed += n_new
        stats.scored += n_scored
        stats.warmup += n_warm_new + n_replayed
        stats.replayed += n_replayed
        stats.anomalies += n_anom
        metrics.events_consumed.inc(n_new)
        metrics.events_scored.inc(n_scored)
        metrics.events_warmup.inc(n_warm_new + n_replayed)
        if n_replayed:
            metrics.events_replayed.inc(n_replayed)
        if n_anom:
            metrics.anomalies.inc(n_anom)
        if result.evicted:
            metrics.series_evicted.inc(result.evicted)
        decided = new & ((status == SCORED) | (status == WARMUP))
        if decided.any():
            ts_ms = batch.timestamps[vp[decided]].astype(np.float64)
            latency = np.maximum(decided_at - ts_ms / 1000.0, 0.0)
            observe_many(metrics.end_to_end_latency, latency)
            if self.latency_log is not None:  # benchmarks: (end-to-end, poll returned -> decided) per event
                self.latency_log.append((latency, decided_at - batch.polled_at))

        # remember which series live on which partition (to drop them if the partition goes)
        bounds = np.searchsorted(vp, np.cumsum([0] + batch.sizes))
        series = dec.series
        for k, tp in enumerate(batch.tps):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if b > a:
                self._series_by_tp[tp].update(series[a:b])
        if result.evicted:
            self._evictions_since_prune += int(result.evicted)
            if self._evictions_since_prune > max(self.detector.tracked_series, 1024):
                self._prune_series_by_tp()
        stats.batches += 1
        metrics.tracked_series.set(self.detector.tracked_series)
        metrics.batch_size.observe(n)
        elapsed = time.perf_counter() - t0
        stats.busy_s += elapsed
        metrics.batch_duration.observe(elapsed)
        return True

    def _prune_series_by_tp(self) -> None:
        """Drop evicted series from the partition -> series map (bounded memory under series churn)."""
        tracked = self.detector.store.ids.keys()
        for tp, ids in self._series_by_tp.items():
            ids.intersection_update(tracked)
        self._evictions_since_prune = 0

    def _await(self, futures) -> None:
        """Flush and make sure every send of the batch was acknowledged (retrying failed ones)."""
        if not futures:
            return
        self.producer.flush()
        failed = [f for f in futures if f.failed()]
        if failed:
            raise ProduceFailed(f"{len(failed)} of {len(futures)} records not acknowledged: {failed[0].exception}")
