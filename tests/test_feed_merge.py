"""Waiting batches are merged (pipeline.kafka.feed.Batch.merged, pipeline.kafka.feed_process.take_merged): order, offsets,
replay flags and the commit offsets survive; a rebalance notice is never merged across."""

from __future__ import annotations

import numpy as np
from kafka.structs import TopicPartition

from pipeline.kafka.feed import Batch, Rebalance
from pipeline.kafka.feed_process import MERGE_RECORDS, take_merged

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def _batch(tp, start, n, polled_at, replay=None):
    offsets = np.arange(start, start + n, dtype=np.int64)
    return Batch(
        [tp], [n], [b"v%d" % o for o in offsets], [b"k"] * n, offsets, offsets * 10, replay, {tp: start + n}, polled_at
    )


def test_merged_batches_keep_order_offsets_and_the_last_commit_offset():
    a, b = _batch(TP0, 0, 3, 10.0), _batch(TP1, 5, 2, 9.0, replay=np.array([True, False]))
    c = _batch(TP0, 3, 2, 11.0)
    m = Batch.merged([a, b, c])
    assert len(m) == 7 and m.values[:3] == a.values and m.values[-2:] == c.values
    assert m.partitions().tolist() == [0, 0, 0, 1, 1, 0, 0]
    assert m.offsets.tolist() == [0, 1, 2, 5, 6, 3, 4]
    assert m.replay.tolist() == [False, False, False, True, False, False, False]
    assert m.commit_offsets == {TP0: 5, TP1: 7}
    assert m.polled_at == 9.0  # the earliest: latency is not hidden
    assert Batch.merged([a]) is a


def test_take_merges_the_run_of_waiting_batches_and_stops_at_a_rebalance():
    notice = Rebalance(lost=set(), assigned={TP1})
    a, b, c = _batch(TP0, 0, 3, 1.0), _batch(TP0, 3, 3, 2.0), _batch(TP1, 0, 1, 3.0)
    first, rest = take_merged([a, b, notice, c], MERGE_RECORDS)
    assert len(first) == 1 and len(first[0]) == 6 and first[0].commit_offsets == {TP0: 6}
    second, rest = take_merged(rest, MERGE_RECORDS)
    assert second[0] is notice and second[1] is c and rest == []


def test_take_caps_a_merged_batch():
    size = MERGE_RECORDS * 6 // 10
    first, rest = take_merged([_batch(TP0, k * size, size, float(k)) for k in range(3)], MERGE_RECORDS)
    assert len(first) == 1 and len(first[0]) == 2 * size  # the run stops once it is past the cap
    second, rest = take_merged(rest, MERGE_RECORDS)
    assert len(second[0]) == size and second[0].offsets[0] == 2 * size and rest == []
