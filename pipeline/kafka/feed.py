"""The Kafka side of the scorer: consumer group, warm replay, batches as columns, commits, lag.

``EventFeed`` owns one kafka-python consumer in the scorer's group. ``poll()`` returns, in order,
the rebalance notices (``Rebalance``) and at most one ``Batch`` of records as plain columns (so a
batch pickles cheaply to another process, see ``pipeline.kafka.feed_process``), and notices of
partition resets (``PartitionReset``) and undecodable record batches skipped (``SkippedRange``).
The scorer produces a batch's outputs at once and, at its next checkpoint, once every output is
acknowledged, calls ``commit(offsets, epoch)`` (at-least-once).

Log resets (a broker that restarted empty, a topic deleted and recreated): a partition whose topic
id changed, or whose position jumped back without a seek of ours (the consumer's offset reset
after the log end fell below our position), or, where the broker gives no topic ids, whose end
offset fell below what we handed out while the group's committed offset is gone or past it, is
*reset*: logged at WARNING, reported as a ``PartitionReset`` and read from its new log start as
new events (never as replay). Each reset bumps an *epoch*: offsets acknowledged for batches read
before a partition's reset are never committed on its new log (``commit(offsets, epoch)``).

Undecodable record batches (a codec error, a corrupt batch): the partition that fails is found by
probing, the first readable offset after the bad batch by exponential then binary search; the
bad range is skipped (logged at ERROR, reported as ``SkippedRange``: the scorer counts it, writes
a marker to the dead-letter topic and commits past it), so such a batch cannot crash-loop the
scorer.

Warm state: when partitions are assigned, the feed seeks ``replay_messages`` back before each new
partition's committed offset; the records before that offset come back marked ``replay`` (the
scorer steps them into state only: no anomaly, no dead letter, not counted as consumed).
Partitions kept across a rebalance whose position moved back behind what was already handed out
(eager rebalancing restarts from the committed offset) are re-read as replay too, so no event is
scored twice by one scorer.

This module imports no torch: it is what the fetch process of ``pipeline.kafka.feed_process`` runs.

Long (~520 lines) because warm replay, log-reset detection and commits all read and write the same
per-partition bookkeeping inside one consumer's poll; the undecodable-batch probing is apart
(``pipeline.kafka.feed_guard``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Protocol

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata, TopicPartition
from tenacity import retry, retry_if_exception_type, retry_if_not_exception_type, stop_after_attempt, wait_exponential

from models.core.settings import KafkaSettings
from pipeline.kafka.feed_guard import (
    PartitionReset,
    SkippedRange,
    is_data_error,
    refresh_metadata,
    skip_undecodable,
    topic_id,
)

__all__ = ["Batch", "EventFeed", "Feed", "Notice", "PartitionReset", "Rebalance", "SkippedRange"]

log = logging.getLogger(__name__)
_LOST_TO_REBALANCE = (CommitFailedError, RebalanceInProgressError)  # the new owner re-reads: not retried
LAG_INTERVAL_S = 1.0
# Consumer options of the scorer (the benchmark's raw baseline uses the same ones).
CONSUMER_OVERRIDES: dict = {}
_VALUE, _KEY, _OFFSET, _TIMESTAMP = (
    attrgetter("value"),
    attrgetter("key"),
    attrgetter("offset"),
    attrgetter("timestamp"),
)


@dataclass
class Batch:
    """One poll batch as columns, partition by partition.

    ``tps`` the partitions in batch order and ``sizes`` their record counts; per record (n,):
    ``values`` list of bytes, ``keys`` list of bytes | None, ``offsets`` int64, ``timestamps`` int64
    (producer timestamp, epoch ms); ``replay`` bool (n,) or None (nothing replayed);
    ``commit_offsets`` {tp: next offset} to commit once the batch's outputs are acknowledged
    (partitions whose records are all replay are absent); ``polled_at`` epoch s; ``epoch`` the
    feed's reset epoch when the batch was read (see ``EventFeed.commit``).
    """

    tps: list
    sizes: list
    values: list
    keys: list
    offsets: np.ndarray
    timestamps: np.ndarray
    replay: np.ndarray | None
    commit_offsets: dict
    polled_at: float
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.values)

    def partitions(self) -> np.ndarray:
        """Partition number of every record, int64 (n,)."""
        return np.repeat(np.array([tp.partition for tp in self.tps], dtype=np.int64), self.sizes)

    @staticmethod
    def merged(batches: list[Batch]) -> Batch:
        """Consecutive batches as one (a partition may appear more than once in ``tps``); the later
        commit offset of a partition wins, ``polled_at`` is the earliest (latency is not hidden),
        ``epoch`` the earliest (offsets of a partition reset in between are then not committed)."""
        if len(batches) == 1:
            return batches[0]
        replay = None
        if any(b.replay is not None for b in batches):
            replay = np.concatenate([b.replay if b.replay is not None else np.zeros(len(b), bool) for b in batches])
        commit: dict = {}
        for b in batches:
            commit.update(b.commit_offsets)
        return Batch(
            list(chain.from_iterable(b.tps for b in batches)),
            list(chain.from_iterable(b.sizes for b in batches)),
            list(chain.from_iterable(b.values for b in batches)),
            list(chain.from_iterable(b.keys for b in batches)),
            np.concatenate([b.offsets for b in batches]),
            np.concatenate([b.timestamps for b in batches]),
            replay,
            commit,
            min(b.polled_at for b in batches),
            min(b.epoch for b in batches),
        )

    def restricted(self, owned: set) -> Batch:
        """The part of this batch on partitions in ``owned`` (the others were lost in a rebalance)."""
        keep = [k for k, tp in enumerate(self.tps) if tp in owned]
        starts = np.cumsum([0, *self.sizes]).tolist()
        parts = [slice(starts[k], starts[k + 1]) for k in keep]
        take = np.concatenate([np.arange(s.start, s.stop) for s in parts]) if parts else np.zeros(0, np.int64)
        return Batch(
            [self.tps[k] for k in keep],
            [self.sizes[k] for k in keep],
            list(chain.from_iterable(self.values[s] for s in parts)),
            list(chain.from_iterable(self.keys[s] for s in parts)),
            self.offsets[take],
            self.timestamps[take],
            None if self.replay is None else self.replay[take],
            {tp: o for tp, o in self.commit_offsets.items() if tp in owned},
            self.polled_at,
            self.epoch,
        )


@dataclass
class Rebalance:
    """Partitions ``lost`` to another scorer and the new ``assigned`` set (after a rebalance)."""

    lost: set = field(default_factory=set)
    assigned: set = field(default_factory=set)


Notice = Rebalance | PartitionReset | SkippedRange


class Feed(Protocol):
    """What the scorer reads through: ``EventFeed`` in-process, or ``FetchProcess`` over a child."""

    commits: int  # commits made so far

    @property
    def commit_in_flight(self) -> bool: ...

    def poll(self, timeout_ms: int = ...) -> list[Notice | Batch]: ...

    def commit(self, offsets: dict[TopicPartition, int], epoch: int | None = None) -> bool: ...

    def wait_committed(self, timeout_s: float = ...) -> None: ...

    def lag(self) -> dict[TopicPartition, int] | None: ...

    def close(self) -> None: ...


class _Listener(ConsumerRebalanceListener):
    def __init__(self, feed: EventFeed):
        self.feed = feed

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.feed._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.feed._on_assigned(set(assigned))


class EventFeed:
    """The scorer's consumer: ``poll() -> [Rebalance..., Batch?]``, ``commit(offsets)``, ``lag()``.

    ``before_revoke(revoked)`` is called inside the rebalance, before partitions are given up: the
    fetch process uses it to wait for the scorer's acknowledgements and commit them first.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        replay_messages: int = 20_000,
        poll_timeout_ms: int = 200,
        consumer: KafkaConsumer | None = None,
        before_revoke: Callable[[set[TopicPartition]], None] | None = None,
    ) -> None:
        from pipeline.kafka.clients import make_consumer

        self.kafka = kafka
        self.replay_messages = replay_messages
        self.poll_timeout_ms = poll_timeout_ms
        self.before_revoke = before_revoke
        self.commits = 0
        self._replay_end: dict[TopicPartition, int] = {}
        self._handed_upto: dict[TopicPartition, int] = {}
        self._expected: dict[TopicPartition, int] = {}  # next offset the consumer should return
        self._pending_kept: dict[TopicPartition, int | None] = {}  # kept in a rebalance: check first
        self._epoch = 0
        self._epoch_of: dict[TopicPartition, int] = {}  # epoch of each partition's last reset
        self._topic_id: object = None
        self._async_commits: list = []  # futures of commits sent with commit_async
        self._revoked: set[TopicPartition] = set()
        self._pending_warm: set[TopicPartition] = set()
        self._notices: list[Notice] = []
        self._next_lag = 0.0
        self.consumer = consumer or make_consumer(kafka, group_id=kafka.group_id, **CONSUMER_OVERRIDES)
        self.consumer.subscribe([kafka.events_topic], listener=_Listener(self))

    # ------------------------------------------------------------------ rebalance (inside poll)
    def _on_revoked(self, revoked: set) -> None:
        if self.before_revoke is not None:
            self.before_revoke(revoked)
        self._revoked = revoked
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: set) -> None:
        lost = self._revoked - assigned
        for tp in lost:
            self._replay_end.pop(tp, None)
            self._handed_upto.pop(tp, None)
            self._pending_kept.pop(tp, None)
        self._expected.clear()  # positions now come from the committed offsets
        for tp in self._revoked & assigned:
            # a kept partition restarts from its committed offset: what was already handed out
            # past it is re-read as replay (state only; repeated timestamps are skipped), unless its
            # log was reset meanwhile (checked outside this callback, before the next batch)
            self._pending_kept[tp] = self._handed_upto.get(tp)
        self._pending_warm |= assigned - self._revoked
        self._revoked = set()
        self._notices.append(Rebalance(lost, assigned))
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

    def _start_replay(self, batch: dict) -> dict:
        """Seek newly assigned partitions back ``replay_messages`` before their committed offset.

        Records this poll already returned for those partitions are dropped (not handed out, not
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
            self._expected[tp] = max(committed - self.replay_messages, 0)
            self._replay_end[tp] = committed
            batch.pop(tp, None)
        if self._replay_end:
            log.info("warm replay up to committed offsets %s", {tp.partition: e for tp, e in self._replay_end.items()})
        return batch

    # ------------------------------------------------------------------ batches
    def poll(self, timeout_ms: int | None = None) -> list[Notice | Batch]:
        """Notices (``Rebalance``, ``PartitionReset``, ``SkippedRange``, in order) then at most one ``Batch``."""
        try:
            records = self.consumer.poll(
                timeout_ms=self.poll_timeout_ms if timeout_ms is None else timeout_ms,
                max_records=self.kafka.max_poll_records,
            )
        except Exception as error:
            if not is_data_error(error):
                raise
            self._notices.extend(skip_undecodable(self.consumer, error, self._epoch))
            records = {}
        if self._pending_kept:
            self._check_kept()
        else:
            self._check_topic_id()
        if self._pending_warm:
            records = self._start_replay(records)
        out: list[Notice | Batch] = list(self._notices)
        self._notices = []
        if records:
            batch = self._columns(records)
            if len(batch):
                out.append(batch)
        return out

    # ------------------------------------------------------------------ log resets
    def _reset(self, tps: set, why: str) -> None:
        """Partitions whose log was reset: read on from the new log as new events, never replay."""
        if not tps:
            return
        self._epoch += 1
        for tp in tps:
            self._epoch_of[tp] = self._epoch
            self._replay_end.pop(tp, None)
            self._handed_upto.pop(tp, None)
            self._expected.pop(tp, None)
            self._pending_kept.pop(tp, None)
        log.warning(
            "log reset on %s partitions %s (%s): scoring their events from the new log start",
            self.kafka.events_topic,
            sorted(tp.partition for tp in tps),
            why,
        )
        self._notices.append(PartitionReset(set(tps), why))

    def _check_topic_id(self) -> bool:
        """Reset every assigned partition when the topic id changed (the topic was recreated)."""
        current = topic_id(self.consumer, self.kafka.events_topic)
        if current is None:
            return False
        previous, self._topic_id = self._topic_id, current
        if previous is None or previous == current:
            return False
        # every partition read from the old topic: those assigned, and those between a revoke and
        # their re-assignment (a rebalance may span polls) whose read positions would else be kept
        known = set(self.consumer.assignment()) | set(self._handed_upto) | set(self._pending_kept) | self._revoked
        self._reset(
            {tp for tp in known if tp.topic == self.kafka.events_topic},
            f"topic id changed from {previous} to {current}",
        )
        return True

    def _check_kept(self) -> None:
        """Partitions kept across a rebalance: reset if their log was reset, else replay up to
        what was already handed out (called outside the rebalance callback, before any batch)."""
        kept, self._pending_kept = self._pending_kept, {}
        refresh_metadata(self.consumer)
        if self._check_topic_id():
            return
        if self._topic_id is None:  # no topic ids from this broker: compare end and committed offsets
            suspects = [tp for tp, upto in kept.items() if upto is not None]
            try:
                ends = self.consumer.end_offsets(suspects) if suspects else {}
                reset = set()
                for tp in suspects:
                    end, committed = ends.get(tp), self.consumer.committed(tp)
                    if end is not None and end < kept[tp] and (committed is None or committed > end):
                        reset.add(tp)
            except KafkaError as error:
                log.warning("cannot check kept partitions for a log reset: %s", error)
                reset = set()
            self._reset(reset, "end offset fell below the position already read")
            kept = {tp: upto for tp, upto in kept.items() if tp not in reset}
        for tp, upto in kept.items():
            if upto is not None and upto > self._replay_end.get(tp, -1):
                self._replay_end[tp] = upto

    def _columns(self, records: dict) -> Batch:
        polled_at = time.time()
        tps = [tp for tp, recs in records.items() if recs]
        lists = [records[tp] for tp in tps]
        jumped = {
            tp
            for tp, recs in zip(tps, lists)
            if self._expected.get(tp) is not None and recs[0].offset < self._expected[tp]
        }
        self._reset(jumped, "the position jumped back without a seek (log end fell below it)")
        flat = list(chain.from_iterable(lists))
        n = len(flat)
        offsets = np.fromiter(map(_OFFSET, flat), dtype=np.int64, count=n)
        timestamps = np.fromiter(map(_TIMESTAMP, flat), dtype=np.int64, count=n)
        sizes = [len(recs) for recs in lists]
        replay = None
        if self._replay_end:
            replay = np.zeros(n, dtype=bool)
            pos = 0
            for tp, size in zip(tps, sizes):
                end = self._replay_end.get(tp)
                if end is not None:
                    replay[pos : pos + size] = offsets[pos : pos + size] < end
                    if offsets[pos + size - 1] + 1 >= end:
                        del self._replay_end[tp]
                pos += size
            if not replay.any():
                replay = None
        commit = {}
        for tp, recs in zip(tps, lists):
            nxt = recs[-1].offset + 1
            self._handed_upto[tp] = nxt
            self._expected[tp] = nxt
            if nxt > self._replay_end.get(tp, -1):  # else replay only: the committed offset is past these
                commit[tp] = nxt
        return Batch(
            tps,
            sizes,
            list(map(_VALUE, flat)),
            list(map(_KEY, flat)),
            offsets,
            timestamps,
            replay,
            commit,
            polled_at,
            self._epoch,
        )

    # ------------------------------------------------------------------ commits, lag
    @retry(
        retry=retry_if_exception_type(KafkaError) & retry_if_not_exception_type(_LOST_TO_REBALANCE),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.2, max=2),
        reraise=True,
    )
    def _commit_sync(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.consumer.commit(offsets)

    def current(self, offsets: dict, epoch: int | None) -> dict:
        """``offsets`` less the partitions reset since ``epoch`` (read from a log that is gone)."""
        if epoch is None:
            return dict(offsets)
        return {tp: o for tp, o in offsets.items() if self._epoch_of.get(tp, 0) <= epoch}

    def commit(self, offsets: dict, epoch: int | None = None) -> bool:
        """Commit ``{tp: next offset}`` of acknowledged batches read at ``epoch`` synchronously
        (partitions still assigned and not reset since ``epoch`` only). Returns True when a commit
        was made. A commit lost to a rebalance only means the new owner re-reads those records
        (at-least-once).
        """
        assigned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in self.current(offsets, epoch).items() if tp in assigned}
        if not offsets:
            return False
        try:
            self._commit_sync(offsets)
        except _LOST_TO_REBALANCE as error:
            log.warning("commit lost to a rebalance, those records will be re-read: %s", error)
            return False
        self.commits += 1
        return True

    def commit_async(self, offsets: dict, epoch: int | None = None, tag: dict | None = None) -> bool:
        """Send a commit of ``offsets`` (as ``commit``) without waiting for it; ``settled_commits()``
        tells when it finished (and returns ``tag``, e.g. what to commit again, if it failed).
        False when there was nothing to commit."""
        assigned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in self.current(offsets, epoch).items() if tp in assigned}
        if not offsets:
            return False
        self._async_commits.append((self.consumer.commit_async(offsets), tag if tag is not None else offsets))
        return True

    def settled_commits(self) -> tuple[int, dict]:
        """``(how many commits sent with commit_async finished since the last call, the merged
        tags of those that failed)``: successes are counted in ``commits``; the caller commits
        failed offsets again (a later checkpoint may not hold those partitions)."""
        done = [(f, o) for f, o in self._async_commits if f.is_done]
        if not done:
            return 0, {}
        self._async_commits = [(f, o) for f, o in self._async_commits if not f.is_done]
        failed: dict = {}
        for future, offsets in done:
            if future.succeeded():
                self.commits += 1
            else:
                log.warning("commit failed (%s); committing those offsets again", future.exception)
                failed.update(offsets)
        return len(done), failed

    commit_in_flight = False  # ``commit`` is synchronous: never one in flight (cf. ``FetchProcess``)

    def wait_committed(self, timeout_s: float = 60.0) -> None:
        """Nothing to wait for here (``commit`` is synchronous); the ``Feed`` interface."""

    def wait_commits(self, timeout_s: float = 10.0) -> tuple[int, dict]:
        """Wait (bounded) for the commits in flight (kafka-python's IO thread completes them)."""
        deadline = time.monotonic() + timeout_s
        while any(not f.is_done for f, _ in self._async_commits) and time.monotonic() < deadline:
            time.sleep(0.01)  # the futures complete on kafka-python's IO thread; nothing to poll
        return self.settled_commits()

    def lag(self, force: bool = False) -> dict | None:
        """``{tp: messages behind the end offset}``, at most once per ``LAG_INTERVAL_S`` (else None)."""
        now = time.monotonic()
        if not force and now < self._next_lag:
            return None
        self._next_lag = now + LAG_INTERVAL_S
        out = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=0)
            except Exception:
                continue
            if position is not None:
                out[tp] = max(high - position, 0)
        if not out:
            self._next_lag = 0.0  # nothing known yet (no fetch answered): try again at the next poll
            return None
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False)
