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

Optional pipelining (``Scorer(pipelined=True)``, ``tsad serve --pipelined``): a fetch thread owns
the consumer (every consumer call stays on it) and hands prepared batches through a bounded
queue; the scoring thread hands acknowledged offsets back for commit (async; sync on shutdown).
On a rebalance the batch being scored finishes first; queued records of lost partitions are
dropped uncommitted. Off by default: on 2 shared cores it measured no faster (GIL-bound).

Hot reload: between batches the ``ChampionWatcher`` is polled; a new champion is swapped in
before the next batch, so no event is lost or scored twice around a swap.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import attrgetter, itemgetter

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
from pipeline.records import anomaly_value, dead_letter_headers, dead_letter_value
from pipeline.scoring import DUPLICATE, OUT_OF_ORDER as ST_OUT_OF_ORDER, SCORED, WARMUP, StreamingDetector

log = logging.getLogger(__name__)
_LAG_INTERVAL_S = 1.0
# Consumer options of the scorer (the benchmark's raw baseline uses the same ones).
CONSUMER_OVERRIDES: dict = {}


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
_KEY, _VALUE_BYTES, _TIMESTAMP = attrgetter("key"), attrgetter("value"), attrgetter("timestamp")
_NUMBER_TYPES = {int, float}
_FIRST, _LAST = itemgetter(0), itemgetter(-1)


def _fast_columns(payloads: list, records, max_series_id_length: int):
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
    keys = list(map(_KEY, records))
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
    """Decode and validate a poll batch; same verdicts as ``pipeline.events.parse_event``.

    One ``orjson.loads`` for the whole batch when every value is a JSON object that parses
    (count checked), then column-wise checks of the common case (numeric ts and value, plain
    series id, matching key); anything else goes through ``validate_payload`` / ``parse_event``
    (the schema's reference implementation) so reasons stay exact.
    """
    n = len(records)
    out = DecodedBatch()
    if n == 0:
        return out
    values = list(map(_VALUE_BYTES, records))
    payloads = None
    if _all_objects(values, max_message_bytes):
        try:
            payloads = orjson.loads(b"[" + b",".join(values) + b"]")
        except orjson.JSONDecodeError:
            payloads = None
        if payloads is not None and len(payloads) != n:
            payloads = None
    fast = _fast_columns(payloads, records, max_series_id_length) if payloads is not None else None
    if fast is not None:
        ok, sids, t, v = fast
        if not ok.all():
            for i in np.flatnonzero(~ok).tolist():
                r = records[i]
                try:
                    item = validate_payload(payloads[i], r.value, r.key, max_series_id_length=max_series_id_length)
                except Exception as error:  # noqa: BLE001 - never raise on bad input
                    item = Rejection(MALFORMED_JSON, f"unexpected error while validating: {error}", bytes(r.value))
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
    for i, r in enumerate(records):
        if payloads is not None:
            try:
                item = validate_payload(payloads[i], r.value, r.key, max_series_id_length=max_series_id_length)
            except Exception as error:  # noqa: BLE001 - never raise on bad input
                item = Rejection(MALFORMED_JSON, f"unexpected error while validating: {error}", bytes(r.value))
        else:
            item = parse_event(r.value, r.key, max_message_bytes=max_message_bytes,
                               max_series_id_length=max_series_id_length)
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


class _Listener(ConsumerRebalanceListener):
    def __init__(self, scorer: "Scorer"):
        self.scorer = scorer

    def on_partitions_revoked(self, revoked):
        self.scorer._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.scorer._on_assigned(assigned)


class _Work:
    """One poll batch, prepared on the fetch thread for the scoring thread.

    ``records`` flat list (partition by partition); ``tps``/``sizes`` the partitions and their
    record counts in that order; ``replay`` bool ``(n,)`` or None (no replay in this batch);
    ``offsets`` what to commit once the batch's outputs are acknowledged; ``ends`` next offset per
    partition; ``polled_at`` epoch s.
    """

    __slots__ = ("records", "tps", "sizes", "replay", "offsets", "ends", "polled_at")

    def __init__(self, records, tps, sizes, replay, offsets, ends, polled_at):
        self.records, self.tps, self.sizes, self.replay = records, tps, sizes, replay
        self.offsets, self.ends, self.polled_at = offsets, ends, polled_at

    def restricted(self, owned: set) -> "_Work":
        """The part of this batch on partitions in ``owned`` (the others were lost in a rebalance)."""
        keep = [k for k, tp in enumerate(self.tps) if tp in owned]
        starts = np.cumsum([0] + self.sizes).tolist()
        records = list(chain.from_iterable(self.records[starts[k]:starts[k + 1]] for k in keep))
        replay = None
        if self.replay is not None and keep:
            replay = np.concatenate([self.replay[starts[k]:starts[k + 1]] for k in keep])
        tps = [self.tps[k] for k in keep]
        return _Work(records, tps, [self.sizes[k] for k in keep], replay,
                     {tp: o for tp, o in self.offsets.items() if tp in owned},
                     {tp: e for tp, e in self.ends.items() if tp in owned}, self.polled_at)


_END = object()  # fetch thread -> scoring thread: no more batches


class Scorer:
    """Consumes ``settings.kafka.events_topic`` in the scorer group and scores it with ``detector``.

    ``pipelined=True``: a fetch thread owns the consumer (poll, seek, commit, lag) and hands
    prepared batches to the thread calling ``run`` through a queue of ``queue_batches``; the
    scoring thread hands acknowledged offsets back (measured no faster on 2 busy cores: both
    threads are GIL-bound). ``pipelined=False`` (default): one thread does
    poll -> score -> commit in turn (same semantics, fewer moving parts).
    """

    def __init__(self, settings, detector: StreamingDetector, metrics: ScorerMetrics | None = None, *,
                 watcher=None, replay_messages: int = 20_000, poll_timeout_ms: int = 200,
                 on_anomaly=None, consumer=None, producer=None, pipelined: bool = False, queue_batches: int = 1):
        from pipeline.kafka_clients import make_consumer, make_producer

        self.settings = settings
        self.kafka = settings.kafka
        self.detector = detector
        self.metrics = metrics or ScorerMetrics()
        self.watcher = watcher
        self.replay_messages = replay_messages
        self.poll_timeout_ms = poll_timeout_ms
        self.on_anomaly = on_anomaly
        self.pipelined = pipelined
        self.stats = ScorerStats()
        self._replay_end: dict[TopicPartition, int] = {}
        self._processed_upto: dict[TopicPartition, int] = {}
        self._revoked: set[TopicPartition] = set()
        self._pending_warm: set[TopicPartition] = set()
        self._series_by_tp: dict[TopicPartition, set[str]] = defaultdict(set)
        self._evictions_since_prune = 0
        self._next_lag = 0.0
        self._owned: set[TopicPartition] = set()  # current assignment, as the scoring thread sees it
        self._busy = threading.Lock()    # held while the detector is used (a batch, a reload, a forget)
        self._state = threading.Lock()   # replay / assignment bookkeeping shared with rebalance callbacks
        self._work_q: queue.Queue = queue.Queue(maxsize=max(queue_batches, 1))
        self._done_q: queue.SimpleQueue = queue.SimpleQueue()  # offsets whose outputs are acknowledged
        self._halt = threading.Event()
        self._fetch_error: BaseException | None = None
        self.latency_log: list | None = None
        self.consumer = consumer or make_consumer(self.kafka, group_id=self.kafka.group_id, **CONSUMER_OVERRIDES)
        self.consumer.subscribe([self.kafka.events_topic], listener=_Listener(self))
        self.producer = producer or make_producer(self.kafka, linger_ms=5)
        self._publish_model_info()

    # ------------------------------------------------------------------ rebalance
    # kafka-python runs these on its IO thread while the fetch thread waits in poll(): no
    # consumer calls here. The batch being scored finishes first (``_busy``). Batches already
    # queued keep their records of partitions we keep (kafka-python keeps those positions, so
    # they are not fetched again); records of lost partitions are dropped when scored
    # (``_Work.restricted``) and not committed: their new owner reads them from the committed offset.
    def _on_revoked(self, revoked) -> None:
        with self._busy, self._state:
            self._revoked = set(revoked)
        log.info("partitions revoked: %s", sorted((tp.partition for tp in revoked)))

    def _on_assigned(self, assigned) -> None:
        assigned = set(assigned)
        with self._busy, self._state:
            lost = self._revoked - assigned
            for tp in lost:
                self.detector.forget(self._series_by_tp.pop(tp, set()))
                self._replay_end.pop(tp, None)
                self._processed_upto.pop(tp, None)
                if self._has_lag(tp):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            kept = self._revoked & assigned
            for tp in kept:
                # Should a kept partition restart from its committed offset (behind what was already
                # stepped into state while a commit was in flight), those records are re-read as
                # replay (state-only; their repeated timestamps are skipped), not as new events.
                upto = self._processed_upto.get(tp)
                if upto is not None and upto > self._replay_end.get(tp, -1):
                    self._replay_end[tp] = upto
            self._revoked = set()
            self._owned = assigned
            self._pending_warm |= assigned - kept
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

    def _start_replay(self, batch: dict) -> dict:
        """Seek newly assigned partitions back ``replay_messages`` before their committed offset.

        Records this poll already returned for those partitions are dropped (not processed, not
        committed): the seek re-reads them right after the replay.
        """
        with self._state:
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
            with self._state:
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
        """Poll and score until ``stop`` is set (or no message came for ``idle_exit_s``); commit and close.

        On ``stop`` the batch being scored is finished, produced, acknowledged and committed;
        batches fetched but not scored yet are left uncommitted (re-read by the next owner).
        """
        self.metrics.up.set(1)
        try:
            if self.pipelined:
                self._run_pipelined(stop, idle_exit_s)
            else:
                self._run_sequential(stop, idle_exit_s)
        finally:
            self.metrics.up.set(0)
            try:
                self._commit_done(sync=True)
            finally:
                self.close()
        return self.stats

    def _run_sequential(self, stop: threading.Event, idle_exit_s: float | None) -> None:
        last_message = time.monotonic()
        while not stop.is_set():
            with self._busy:
                self.check_reload()
            batch = self._poll()
            if batch:
                work = self._prepare(batch)
                with self._busy:
                    self._score(work)
                self._done_q.put(work.offsets)
                self._commit_done(sync=True)
                last_message = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                break
            self._update_lag()

    def _run_pipelined(self, stop: threading.Event, idle_exit_s: float | None) -> None:
        fetcher = threading.Thread(target=self._fetch_loop, args=(stop, idle_exit_s), name="tsad-fetch", daemon=True)
        fetcher.start()
        try:
            while not stop.is_set():
                with self._busy:
                    self.check_reload()
                try:
                    work = self._work_q.get(timeout=0.1)
                except queue.Empty:
                    if not fetcher.is_alive() and self._work_q.empty():
                        break
                    continue
                if work is _END:
                    break
                with self._busy:
                    scored = self._score(work)
                if scored:
                    self._done_q.put(work.offsets)
        finally:
            self._halt.set()
            fetcher.join(60)
        if self._fetch_error is not None:
            raise self._fetch_error

    def _fetch_loop(self, stop: threading.Event, idle_exit_s: float | None) -> None:
        """(fetch thread) poll, prepare, hand over; commit what the scoring thread acknowledged."""
        last_message = time.monotonic()
        try:
            while not (stop.is_set() or self._halt.is_set()):
                self._commit_done(sync=False)
                batch = self._poll()
                if batch:
                    work = self._prepare(batch)
                    last_message = time.monotonic()
                    while not (stop.is_set() or self._halt.is_set()):
                        try:
                            self._work_q.put(work, timeout=0.1)
                            break
                        except queue.Full:
                            self._commit_done(sync=False)
                elif idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
                self._update_lag()
        except BaseException as error:  # noqa: BLE001 - handed to the scoring thread, raised by run()
            self._fetch_error = error
            log.error("fetch thread failed: %s", error)
        finally:
            while not self._halt.is_set():
                try:
                    self._work_q.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _poll(self) -> dict:
        batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.kafka.max_poll_records)
        if self._pending_warm:
            batch = self._start_replay(batch)
        return batch

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

    def _prepare(self, batch: dict) -> _Work:
        """(fetch thread) Flatten a poll batch; mark replayed records; offsets to commit after it."""
        polled_at = time.time()
        tps = [tp for tp, recs in batch.items() if recs]
        lists = [batch[tp] for tp in tps]
        records = list(chain.from_iterable(lists))
        sizes = [len(recs) for recs in lists]
        replay = None
        offsets, ends = {}, {}
        with self._state:
            if self._replay_end:
                replay = np.zeros(len(records), dtype=bool)
                pos = 0
                for tp, recs in zip(tps, lists):
                    end = self._replay_end.get(tp)
                    if end is not None:
                        if recs[-1].offset < end:
                            replay[pos:pos + len(recs)] = True
                        else:
                            offs = np.fromiter((r.offset for r in recs), dtype=np.int64, count=len(recs))
                            replay[pos:pos + len(recs)] = offs < end
                        if recs[-1].offset + 1 >= end:
                            del self._replay_end[tp]
                    pos += len(recs)
                if not replay.any():
                    replay = None
            for tp, recs in zip(tps, lists):
                nxt = recs[-1].offset + 1
                ends[tp] = nxt
                if nxt <= self._replay_end.get(tp, -1):
                    continue  # replay only: the committed offset is already past these
                offsets[tp] = OffsetAndMetadata(nxt, "", -1)
        return _Work(records, tps, sizes, replay, offsets, ends, polled_at)

    def process_batch(self, batch: dict) -> None:
        """Score, produce, flush and commit one poll batch (``{TopicPartition: [ConsumerRecord]}``) inline."""
        work = self._prepare(batch)
        with self._busy:
            self._score(work)
        self._done_q.put(work.offsets)
        self._commit_done(sync=True)

    def _score(self, work: _Work) -> bool:
        """(scoring thread, holding ``_busy``) Decode, score, produce and await one batch.

        Returns False when nothing of the batch is on a partition still assigned to us.
        """
        if not self._owned.issuperset(work.tps):
            work = work.restricted(self._owned)
            if not work.records:
                return False
        t0 = time.perf_counter()
        records = work.records
        n = len(records)
        replay = work.replay
        dec = decode_batch(records, self.settings.max_message_bytes, self.settings.max_series_id_length)
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
                r = records[i]
                value, extra = dead_letter_value(item.raw, self.settings.max_message_bytes)
                futures.append(send(topic_dl, key=r.key, value=value, headers=dead_letter_headers(
                    item.reason, item.detail, r.topic, r.partition, r.offset) + extra))
                stats.rejected[item.reason] += 1
                metrics.events_rejected.labels(item.reason).inc()
        status = result.status
        # rejected by the detector: duplicate / out-of-order timestamps
        for j in np.flatnonzero(new & ((status == DUPLICATE) | (status == ST_OUT_OF_ORDER))).tolist():
            r = records[vp[j]]
            reason = DUPLICATE_TIMESTAMP if status[j] == DUPLICATE else OUT_OF_ORDER
            detail = f"series {dec.series[j]!r}: timestamp {dec.ts[j]} " + (
                "equals the last accepted one" if reason == DUPLICATE_TIMESTAMP else "is older than the last accepted one")
            futures.append(send(topic_dl, key=r.key, value=r.value,
                                headers=dead_letter_headers(reason, detail, r.topic, r.partition, r.offset)))
            stats.rejected[reason] += 1
            metrics.events_rejected.labels(reason).inc()
        # anomalies
        for j in np.flatnonzero(result.is_anomaly).tolist():
            r, sid = records[vp[j]], dec.series[j]
            value = anomaly_value(sid, float(dec.ts[j]), float(dec.values[j]), float(result.predicted[j]),
                                  float(result.error[j]), float(result.score[j]), result.threshold, result.model,
                                  result.model_version, r.topic, r.partition, r.offset)
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
            ts_ms = np.fromiter(map(_TIMESTAMP, records), dtype=np.float64, count=n)[vp[decided]]
            latency = np.maximum(decided_at - ts_ms / 1000.0, 0.0)
            observe_many(metrics.end_to_end_latency, latency)
            if self.latency_log is not None:  # benchmarks: (end-to-end, poll returned -> decided) per event
                self.latency_log.append((latency, decided_at - work.polled_at))

        # remember which series live on which partition (to drop them if the partition goes)
        bounds = np.searchsorted(vp, np.cumsum([0] + work.sizes))
        series = dec.series
        for k, tp in enumerate(work.tps):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if b > a:
                self._series_by_tp[tp].update(series[a:b])
        if result.evicted:
            self._evictions_since_prune += int(result.evicted)
            if self._evictions_since_prune > max(self.detector.tracked_series, 1024):
                self._prune_series_by_tp()
        self._processed_upto.update(work.ends)
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

    @retry(retry=retry_if_exception_type(KafkaError), stop=stop_after_attempt(3),
           wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
    def _commit_offsets(self, offsets) -> None:
        self.consumer.commit(offsets)

    def _commit_done(self, sync: bool) -> None:
        """(consumer's thread) Commit the offsets of every batch acknowledged so far.

        ``sync=False`` (steady state, pipelined): ``commit_async`` and go on polling; a lost async
        commit only means re-reading (at-least-once). ``sync=True``: on shutdown and in the
        sequential loop.
        """
        offsets = {}
        while True:
            try:
                offsets.update(self._done_q.get_nowait())  # later batches carry larger offsets
            except queue.Empty:
                break
        if not offsets:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: om for tp, om in offsets.items() if tp in assigned}
        if not offsets:
            return
        if not sync:
            self.consumer.commit_async(offsets, callback=self._on_commit)
            return
        try:
            self._commit_offsets(offsets)
        except CommitFailedError as error:
            # the group rebalanced under us: the new owner re-reads this batch (at-least-once)
            log.warning("commit failed after rebalance, batch will be re-read: %s", error)
            return
        self.stats.commits += 1
        self.metrics.commits.inc()

    def _on_commit(self, offsets, response) -> None:
        if isinstance(response, Exception):
            log.warning("async commit failed, those batches will be re-read: %s", response)
            return
        self.stats.commits += 1
        self.metrics.commits.inc()
