"""Per-event outcome of the detector, ``Status``: an IntEnum stored as int8 in ``BatchResult.status``.

The scorer maps the two refusals to dead-letter reasons (``pipeline.serve.batch``); ``FAILED`` is set
only by the scorer's per-event isolation when scoring raised, never by the detector.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class Status(IntEnum):
    FAILED = -1  # scoring this event raised (pipeline.serve.isolate)
    SCORED = 0  # forecast error turned into a score and compared with the threshold
    WARMUP = 1  # taken into state without alerting
    DUPLICATE = 2  # same timestamp as the series' last accepted event: dropped
    OUT_OF_ORDER = 3  # older than the series' last accepted event: dropped


# The labels of the per-batch counts (``BatchResult.counts``); FAILED never comes out of the detector.
STATUS_NAMES: Final[dict[Status, str]] = {
    Status.SCORED: "scored",
    Status.WARMUP: "warmup",
    Status.DUPLICATE: "duplicate_timestamp",
    Status.OUT_OF_ORDER: "out_of_order",
}
