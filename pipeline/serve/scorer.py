"""The Kafka scoring loop behind ``tsad serve`` (at-least-once).

Per poll batch (``pipeline.kafka.feed.Batch``, columns): decode + validate every message, each within
its own bytes (``pipeline.serve.decode``) -> ``StreamingDetector.process`` on all valid events at once
-> send anomaly records and dead-letter records at once (no flush per batch). Checkpoints
(``pipeline.serve.outputs``): every ``commit_interval_ms`` or ``commit_every_events`` events, before
partitions are given up and on stop, the producer is flushed, every send is checked, and only
then are the offsets of the batches produced so far committed. A send that fails for an outage
stops the scorer WITHOUT committing, so a restart re-reads what followed the last checkpoint
(duplicates after a crash: bounded by the checkpoint, see docs/architecture.md "Delivery guarantees").

Isolation: no single message can stop the scorer. An exception while decoding, scoring, or
building or producing the records of one message dead-letters that message unchanged with reason
``internal_error`` (the exception in ``tsad.detail``; ``tsad_events_rejected_total{reason=
"internal_error"}``) and the scorer goes on. Undecodable record batches are skipped with a marker
in the dead-letter topic, and partitions whose log was reset are read from the new log start
(``pipeline.kafka.feed_guard``; ``tsad_partition_resets_total``).

Accounting (``tsad_events_*``): every consumed event is exactly one of scored, warm-up (held in
state without alerting) or rejected (dead-lettered with a reason).

Fetching (``pipeline.kafka.feed``): by default the consumer runs in a child process
(``pipeline.kafka.feed_process``) that fetches the next batch while this one is scored (kafka-python's
fetch path is GIL-bound, so a thread would not overlap); ``fetch_process=False`` polls in-process.

Warm state: when partitions are assigned, the feed seeks ``replay_messages`` back before each
partition's committed offset and re-reads them as *replay*: they update series state only
(no anomaly, no dead letter, not counted as consumed; counted in ``tsad_events_warmup_total`` and
``tsad_events_replayed_total``), so a restarted or scaled-out scorer never alerts from an empty
window. Partitions kept across a rebalance keep their state; series of partitions lost are dropped.

Hot reload: between batches the ``ChampionWatcher`` is polled; a new champion is swapped in
before the next batch, so no event is lost or scored twice around a swap.

Long (~420 lines) because the loop, its checkpoints, rebalance notices and model reloads share one
state (assignment, series per partition, outputs in flight); a batch's records are built in
``pipeline.serve.batch``, decoding and scoring isolation in ``pipeline.serve.decode``/``isolate``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from kafka import KafkaProducer
from kafka.structs import TopicPartition

from models.core.settings import Settings
from models.detection.detector import BatchResult, StreamingDetector
from models.detection.routed import RoutedDetector
from models.detection.status import Status
from pipeline.events import Reason
from pipeline.kafka.feed import Batch, EventFeed, Feed, Notice, PartitionReset, Rebalance, SkippedRange
from pipeline.kafka.feed_process import MERGE_RECORDS, FetchProcess
from pipeline.metrics import ScorerMetrics, ScorerStats
from pipeline.serve.batch import AnomalyCallback, BatchRecords
from pipeline.serve.decode import DecodedBatch, decode_isolated
from pipeline.serve.isolate import process_isolated
from pipeline.serve.outputs import Outputs, Source
from pipeline.serve.reload import ChampionWatcher

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Sees every scored batch, e.g. the per-series export and the Alertmanager sink.

    ``series`` ``(n_valid,)`` ids; ``ts``, ``values`` float64 ``(n_valid,)``; ``new`` bool
    ``(n_valid,)``: new events that were not rejected as ``internal_error`` (replayed ones are False).
    """

    def observe(
        self, series: list[str], ts: np.ndarray, values: np.ndarray, result: BatchResult, new: np.ndarray
    ) -> None: ...


class Scorer:
    """Consumes ``settings.kafka.events_topic`` in the scorer group and scores it with ``detector``.

    ``fetch_process=True`` (default): the consumer lives in a child process
    (``pipeline.kafka.feed_process.FetchProcess``) that fetches the next batch while this one is scored,
    so kafka-python's GIL-bound fetch path and the scoring use two cores. ``False``: one thread
    polls, scores and commits in turn (``pipeline.kafka.feed.EventFeed`` in-process). Same semantics.
    """

    def __init__(
        self,
        settings: Settings,
        detector: StreamingDetector | RoutedDetector,
        metrics: ScorerMetrics | None = None,
        *,
        watcher: ChampionWatcher | Sequence[ChampionWatcher] | None = None,
        replay_messages: int = 20_000,
        poll_timeout_ms: int = 200,
        on_anomaly: AnomalyCallback | None = None,
        producer: KafkaProducer | None = None,
        fetch_process: bool = True,
    ) -> None:
        from pipeline.kafka.clients import make_producer

        self.settings = settings
        self.kafka = settings.kafka
        self.detector = detector
        self.metrics = metrics if metrics is not None else ScorerMetrics()
        self.watchers: list[ChampionWatcher] = (
            [] if watcher is None else [watcher] if isinstance(watcher, ChampionWatcher) else list(watcher)
        )
        self.observers: list[Observer] = []  # the per-series export, alert sinks
        self.poll_timeout_ms = poll_timeout_ms
        self.on_anomaly = on_anomaly
        self.stats: ScorerStats = self.metrics.stats  # the one source of truth of the metrics
        self._series_by_tp: dict[TopicPartition, set[str]] = defaultdict(set)
        self._evictions_since_prune = 0
        self._owned: set[TopicPartition] = set()  # current assignment (from the feed's notices)
        self.latency_log: list[tuple[np.ndarray, float]] | None = None
        self.producer = producer or make_producer(self.kafka, linger_ms=5)
        self.outputs = Outputs(
            self.producer,
            self.kafka,
            settings.max_message_bytes,
            commit_interval_ms=settings.commit_interval_ms,
            commit_every_events=settings.commit_every_events,
            on_internal_error=self._late_internal_error,
        )
        self.feed = self._make_feed(fetch_process, replay_messages, poll_timeout_ms)
        self._record_model_info()

    def _make_feed(self, fetch_process: bool, replay_messages: int, poll_timeout_ms: int) -> Feed:
        if fetch_process:
            return FetchProcess(
                self.kafka,
                replay_messages=replay_messages,
                poll_timeout_ms=poll_timeout_ms,
                merge_records=max(min(MERGE_RECORDS, self.settings.commit_every_events), self.kafka.max_poll_records),
                before_revoke_ack=self.checkpoint,
            )
        # inside the rebalance callback only the producer may be flushed; the commit follows it
        return EventFeed(
            self.kafka,
            replay_messages=replay_messages,
            poll_timeout_ms=poll_timeout_ms,
            before_revoke=lambda _revoked: self.producer.flush(),
        )

    # ------------------------------------------------------------------ model
    def _record_model_info(self) -> None:
        d, st = self.detector, self.stats
        st.model_info = {"name": d.model_name, "kind": str(d.bundle.kind), "version": str(d.model_version)}
        if d.model_version is not None:  # a model without a version: gauge unchanged
            st.model_version = float(d.model_version)
        st.last_reload_s = time.time()
        for det in d.detectors.values() if isinstance(d, RoutedDetector) else [d]:
            # per-model counters exist from the start (at 0), so rate() sees a model's first anomaly
            st.model_scored[det.model_name] += 0
            st.model_anomalies[det.model_name] += 0
            if det.model_version is not None:
                st.model_serving_version[det.model_name] = float(det.model_version)

    def check_reload(self, force: bool = False) -> None:
        """Swap in newly promoted champions (called between batches); each routed model on its own."""
        for watcher in self.watchers:
            self._reload(watcher, force)

    def _reload(self, watcher: ChampionWatcher, force: bool) -> None:
        outcome = watcher.poll(force=force)
        if outcome is None:
            return
        st = self.stats
        if outcome.bundle is None:
            if outcome.pointer_error:
                st.pointer_errors += 1
                st.model_reloads[watcher.name, "pointer_error"] += 1
            else:
                st.reload_failures += 1
                st.model_reloads[watcher.name, "refused"] += 1
            return
        bundle = outcome.bundle
        try:
            self.detector.swap_model(bundle)
        except Exception as error:
            watcher.refuse(bundle.version)
            st.reload_failures += 1
            st.model_reloads[watcher.name, "refused"] += 1
            log.error("refusing model %s v%s: %s", bundle.name, bundle.version, error)
            return
        watcher.accepted(bundle.version)
        st.model_reloads[watcher.name, "loaded"] += 1
        self._record_model_info()
        log.info("now serving %s v%s (%s)", bundle.name, bundle.version, bundle.kind)

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> ScorerStats:
        """Poll and score until ``stop`` is set (or no message came for ``idle_exit_s``); commit and close.

        On ``stop`` the batch being scored is finished, and a last checkpoint flushes, checks and
        commits everything produced; batches fetched but not scored yet are left uncommitted
        (re-read by the next owner). After a ``ProduceFailed`` nothing more is committed.
        """
        self.stats.up = True
        try:
            last_message = time.monotonic()
            while not stop.is_set():
                self.check_reload()
                items = self.feed.poll(self.poll_timeout_ms)
                for item in items:
                    if isinstance(item, Batch):
                        self._score(item)
                        last_message = time.monotonic()
                    else:
                        self._notice(item)
                self._advance_checkpoint()
                self._record_feed_state()
                if not items and idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
            self.checkpoint()
        finally:
            self.stats.up = False
            self.close()
        return self.stats

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
            self.producer.close(timeout=10)
        finally:
            self.feed.close()
            self._record_feed_state()

    def _advance_checkpoint(self) -> None:
        """Commit the sealed checkpoint once all its sends are acknowledged, and seal the current
        one when it is due, but not while the previous commit is in flight: at most one checkpoint
        is ever produced-but-uncommitted besides the current one. Waits for the broker only when
        the current checkpoint is full (``commit_every_events``) while the previous one is still
        open (back-pressure when scoring outruns acknowledgements or commits)."""
        out = self.outputs
        full = out.pending.events >= out.commit_every_events
        done = out.acknowledged()
        while done is None and out.sealed is not None and full:
            self.producer.flush()
            done = out.acknowledged()
        if done is not None and done[0]:
            self.feed.commit(*done)
        if out.sealed is None and out.due():
            if self.feed.commit_in_flight:
                if not full:
                    return
                self.feed.wait_committed()
            out.seal()

    def checkpoint(self) -> bool:
        """Flush, check every send, then commit the offsets produced so far (see ``pipeline.serve.outputs``);
        blocking: before partitions are given up, and on stop."""
        offsets, epoch = self.outputs.checkpoint()
        if not offsets:
            return False
        return bool(self.feed.commit(offsets, epoch))

    def _notice(self, item: Notice) -> None:
        if isinstance(item, Rebalance):
            self.checkpoint()  # (fetch process: done before the revoke was acknowledged; in-process: now)
            self._rebalanced(item)
        elif isinstance(item, PartitionReset):
            log.warning(
                "partition log reset on %s (%s): scoring from the new log start",
                sorted(f"{tp.topic}-{tp.partition}" for tp in item.tps),
                item.why,
            )
            for tp in item.tps:
                self.stats.partition_resets[tp.topic] += 1
        elif isinstance(item, SkippedRange):
            tp = item.tp
            self.stats.undecodable_batches += 1
            self.stats.skipped_offsets += item.end - item.start
            if tp in self._owned or not self._owned:
                self.outputs.marker(Reason.UNDECODABLE_BATCH, item.detail, tp.partition, item.start, item.end - 1)
                self.outputs.add({tp: item.end}, item.epoch, 0)

    def _rebalanced(self, notice: Rebalance) -> None:
        """Drop the state of series on partitions lost to another scorer."""
        for tp in notice.lost:
            self.detector.forget(self._series_by_tp.pop(tp, set()))
            self.stats.lag.pop((tp.topic, tp.partition), None)
        self._owned = set(notice.assigned)

    def _record_feed_state(self) -> None:
        """Lag of the partitions we own and the commit count, as the feed last reported them."""
        lag = self.feed.lag()
        if lag:
            for tp, behind in lag.items():
                if tp in self._owned:
                    self.stats.lag[tp.topic, tp.partition] = behind
        self.stats.commits = self.feed.commits

    def _late_internal_error(self, source: Source, detail: str) -> None:
        """An input message dead-lettered at a checkpoint (its output record was refused); it stays
        counted as scored too (counters only go up)."""
        self.stats.rejected[Reason.INTERNAL_ERROR] += 1

    def _score(self, batch: Batch) -> bool:
        """Decode, score and send one batch's records (committed at a later checkpoint).

        Returns False when nothing of the batch is on a partition still assigned to us.
        """
        if not self._owned.issuperset(batch.tps):
            batch = batch.restricted(self._owned)
            if not len(batch):
                return False
        t0 = time.perf_counter()
        settings = self.settings
        dec = decode_isolated(batch.values, batch.keys, settings.max_message_bytes, settings.max_series_id_length)
        new = np.ones(len(dec.valid_pos), dtype=bool) if batch.replay is None else ~batch.replay[dec.valid_pos]
        result, failures = process_isolated(self.detector, dec.series, dec.ts, dec.values, new)
        decided_at = time.time()
        records = BatchRecords(
            batch,
            dec,
            result,
            new,
            outputs=self.outputs,
            stats=self.stats,
            kafka=self.kafka,
            on_anomaly=self.on_anomaly,
        )
        records.send_all(failures)
        self.outputs.add(batch.commit_offsets, batch.epoch, len(batch))
        is_new = self._count_events(records)
        if self.observers:
            self._notify(dec, result, is_new)
        self.stats.evicted += int(result.evicted)
        self._observe_latency(batch, dec, result, is_new, decided_at)
        self._track_series(batch, dec, result.evicted)
        self._count_batch(len(batch), t0)
        return True

    def _count_events(self, records: BatchRecords) -> np.ndarray:
        """Add a sent batch to the event accounting; returns ``is_new`` ``(n_valid,)``: new events
        that did not become ``internal_error`` (scored, warm-up or rejected by the detector)."""
        stats, status, new, replay = self.stats, records.result.status, records.new, records.batch.replay
        ok = ~records.failed[records.dec.valid_pos]
        is_new = new & ok
        n_scored = int(np.count_nonzero(status[is_new] == Status.SCORED))
        n_warm_new = int(np.count_nonzero(status[is_new] == Status.WARMUP))
        n_replayed = int(np.count_nonzero(status[~new & ok] == Status.WARMUP)) if replay is not None else 0
        n_new = len(records.batch) - (int(replay.sum()) if replay is not None else 0)
        stats.consumed += n_new
        stats.scored += n_scored
        stats.warmup += n_warm_new + n_replayed
        stats.replayed += n_replayed
        stats.anomalies += records.anomalies
        self._count_scored_per_model(records.result, is_new & (status == Status.SCORED))
        return is_new

    def _observe_latency(
        self, batch: Batch, dec: DecodedBatch, result: BatchResult, is_new: np.ndarray, decided_at: float
    ) -> None:
        """End-to-end latency (record timestamp -> decision) of the new events scored or warmed up."""
        status = result.status
        decided = is_new & ((status == Status.SCORED) | (status == Status.WARMUP))
        if not decided.any():
            return
        ts_ms = batch.timestamps[dec.valid_pos[decided]].astype(np.float64)
        latency = np.maximum(decided_at - ts_ms / 1000.0, 0.0)
        self.stats.latency.observe_many(latency)
        if self.latency_log is not None:  # benchmarks: (end-to-end, poll returned -> decided) per event
            self.latency_log.append((latency, decided_at - batch.polled_at))

    def _track_series(self, batch: Batch, dec: DecodedBatch, evicted: int) -> None:
        """Remember which series live on which partition (to drop them if the partition goes)."""
        bounds = np.searchsorted(dec.valid_pos, np.cumsum([0, *batch.sizes]))
        series = dec.series
        for k, tp in enumerate(batch.tps):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if b > a:
                self._series_by_tp[tp].update(series[a:b])
        if evicted:
            self._evictions_since_prune += int(evicted)
            if self._evictions_since_prune > max(self.detector.tracked_series, 1024):
                self._prune_series_by_tp()

    def _count_batch(self, n: int, t0: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.tracked_series = self.detector.tracked_series
        stats.batch_size.observe(n)
        elapsed = time.perf_counter() - t0
        stats.busy_s += elapsed
        stats.batch_duration.observe(elapsed)

    def _count_scored_per_model(self, result: BatchResult, scored: np.ndarray) -> None:
        """``tsad_model_events_scored_total{model}`` from a batch's routes."""
        if result.route is None:
            n = int(np.count_nonzero(scored))
            if n:
                self.stats.model_scored[result.model] += n
            return
        counts = np.bincount(result.route[scored], minlength=len(result.routes))
        per_model: dict[str, int] = {}
        for (model, _version, _group), c in zip(result.routes, counts.tolist()):
            per_model[model] = per_model.get(model, 0) + c
        for model, c in per_model.items():
            if c:
                self.stats.model_scored[model] += c

    def _notify(self, dec: DecodedBatch, result: BatchResult, is_new: np.ndarray) -> None:
        """Hand the batch to the observers (per-series export, alert sinks); one failing never stops scoring."""
        for observer in self.observers:
            try:
                observer.observe(dec.series, dec.ts, dec.values, result, is_new)
            except Exception as error:
                log.error("observer %s failed: %s: %s", type(observer).__name__, type(error).__name__, error)

    def _prune_series_by_tp(self) -> None:
        """Drop evicted series from the partition -> series map (bounded memory under series churn)."""
        tracked = self.detector.store.ids.keys()
        for ids in self._series_by_tp.values():
            ids.intersection_update(tracked)
        self._evictions_since_prune = 0
