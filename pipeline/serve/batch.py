"""The records one scored batch sends, each input message on its own: ``BatchRecords``.

After the detector scored a batch, the scorer sends, in this order: dead letters of events whose
scoring raised (``internal_error``), of events validation rejected, of events the detector
rejected (duplicate or out-of-order timestamps), then the anomaly records. An exception while
building or sending the records of one message dead-letters that message unchanged as
``internal_error`` (the stage and exception in ``tsad.detail``) and the batch goes on; only
``ProduceFailed`` (an outage) propagates. Replayed events (``new`` False) send nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from models.core.settings import KafkaSettings
from models.detection.detector import BatchResult
from models.detection.status import Status
from pipeline.events import Reason
from pipeline.kafka.feed import Batch
from pipeline.metrics import ScorerStats
from pipeline.serve.decode import DecodedBatch
from pipeline.serve.outputs import Outputs, ProduceFailed, Source
from pipeline.serve.records import anomaly_value

log = logging.getLogger(__name__)
# detector statuses that dead-letter an event: (reason, how its timestamp compares)
_DETECTOR_REJECTIONS = {
    Status.DUPLICATE: (Reason.DUPLICATE_TIMESTAMP, "equals the last accepted one"),
    Status.OUT_OF_ORDER: (Reason.OUT_OF_ORDER, "is older than the last accepted one"),
}
AnomalyCallback = Callable[[dict[str, Any]], None]


class BatchRecords:
    """Sends one scored batch's dead letters and anomaly records (see the module docstring).

    ``batch`` has ``n`` messages; ``dec`` its decoded events (``n_valid``, positions
    ``dec.valid_pos``); ``result`` the detector's verdicts ``(n_valid,)``; ``new`` ``(n_valid,)``
    bool, False for replayed events. ``failed`` ``(n,)`` marks the messages that became
    ``internal_error`` after decoding; ``anomalies`` counts the anomaly records sent.
    """

    def __init__(
        self,
        batch: Batch,
        dec: DecodedBatch,
        result: BatchResult,
        new: np.ndarray,
        *,
        outputs: Outputs,
        stats: ScorerStats,
        kafka: KafkaSettings,
        on_anomaly: AnomalyCallback | None = None,
    ) -> None:
        self.batch, self.dec, self.result, self.new = batch, dec, result, new
        self.outputs, self.stats, self.kafka, self.on_anomaly = outputs, stats, kafka, on_anomaly
        self.partitions = batch.partitions()
        self.failed = np.zeros(len(batch), dtype=bool)
        self.anomalies = 0

    def send_all(self, failures: list[tuple[int, BaseException]]) -> None:
        """Every record of the batch, in the order of the module docstring."""
        self.scoring_failures(failures)
        self.validation_rejections()
        self.detector_rejections()
        self.anomaly_records()

    # ------------------------------------------------------------------ one message
    def source(self, i: int) -> Source:
        """The input message at batch position ``i`` (its key, bytes and coordinates)."""
        raw = self.batch.values[i]
        return Source(
            self.batch.keys[i],
            bytes(raw) if raw is not None else b"",
            int(self.partitions[i]),
            int(self.batch.offsets[i]),
        )

    def reject(self, i: int, reason: Reason, detail: str) -> None:
        """Dead-letter message ``i`` with ``reason`` and count it."""
        self.outputs.dead_letter(self.source(i), reason, detail)
        self.stats.rejected[reason] += 1

    def isolate(self, i: int, stage: str, error: BaseException) -> None:
        """Message ``i`` failed at ``stage``: dead-letter it as ``internal_error`` (an outage raises)."""
        if isinstance(error, ProduceFailed):
            raise error
        detail = f"{stage}: {type(error).__name__}: {error}"
        log.error(
            "message %s/%d/%d dead-lettered as %s: %s",
            self.kafka.events_topic,
            int(self.partitions[i]),
            int(self.batch.offsets[i]),
            Reason.INTERNAL_ERROR,
            detail,
        )
        self.failed[i] = True
        self.reject(i, Reason.INTERNAL_ERROR, detail)

    # ------------------------------------------------------------------ the steps
    def scoring_failures(self, failures: list[tuple[int, BaseException]]) -> None:
        """Events whose scoring raised (``process_isolated``): ``internal_error``."""
        vp = self.dec.valid_pos
        for j, error in failures:
            if self.new[j]:
                self.isolate(int(vp[j]), "scoring", error)
            else:
                self.failed[int(vp[j])] = True  # a replayed event: state only, nothing to dead-letter

    def validation_rejections(self) -> None:
        """Messages validation rejected (not replayed ones), with their reason."""
        replay = self.batch.replay
        for i, item in self.dec.rejections:
            if replay is None or not replay[i]:
                try:
                    self.reject(i, item.reason, item.detail)
                except Exception as error:
                    self.isolate(i, "dead-lettering", error)

    def detector_rejections(self) -> None:
        """New events the detector refused: duplicate or out-of-order timestamps."""
        dec, status = self.dec, self.result.status
        for j in np.flatnonzero(self.new & ((status == Status.DUPLICATE) | (status == Status.OUT_OF_ORDER))).tolist():
            i = int(dec.valid_pos[j])
            reason, how = _DETECTOR_REJECTIONS[Status(int(status[j]))]
            try:
                detail = f"series {dec.series[j]!r}: timestamp {dec.ts[j]} {how}"
                self.reject(i, reason, detail)
            except Exception as error:
                self.isolate(i, "dead-lettering", error)

    def anomaly_records(self) -> None:
        """One record per new anomaly on the anomalies topic, keyed by series."""
        for j in np.flatnonzero(self.result.is_anomaly & self.new).tolist():
            i = int(self.dec.valid_pos[j])
            try:
                self._anomaly_record(i, j)
            except Exception as error:
                self.isolate(i, "building or producing its anomaly record", error)

    def _anomaly_record(self, i: int, j: int) -> None:
        dec, result = self.dec, self.result
        sid = dec.series[j]
        model, version = result.model_at(j)
        lower, upper = result.band_at(j)
        value = anomaly_value(
            sid,
            float(dec.ts[j]),
            float(dec.values[j]),
            float(result.predicted[j]),
            float(result.error[j]),
            float(result.score[j]),
            result.threshold,
            model,
            version,
            self.kafka.events_topic,
            int(self.partitions[i]),
            int(self.batch.offsets[i]),
            lower,
            upper,
        )
        self.outputs.send(self.kafka.anomalies_topic, sid.encode("utf-8"), value, self.source(i))
        self.anomalies += 1
        self.stats.model_anomalies[model] += 1
        if self.on_anomaly is not None:
            self.on_anomaly(orjson.loads(value))
