"""The scorer's batch decoder: message values and keys in, columns of valid events and rejections out.

``decode_columns`` gives, message by message, exactly the verdicts of
``pipeline.events.parse_event`` (the schema's reference implementation; a differential property
test holds them equal on arbitrary bytes). Every message is parsed **within its own bytes**: one
``orjson.loads`` call per message (mapped at C level), never a join of several messages into one
JSON text, so no run of invalid neighbours can merge into a valid-looking object. The common
case (numeric ts and value, plain series id, matching key) is then checked column-wise with numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from models.core.limits import MAX_ABS_VALUE, MAX_MESSAGE_BYTES, MAX_SERIES_ID_LENGTH
from pipeline.events import MAX_TS, MILLISECONDS_CUTOFF, MIN_TS, Event, Reason, Rejection, parse_event, validate_payload

log = logging.getLogger(__name__)


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


_SERIES, _TS, _VALUE = itemgetter("series"), itemgetter("ts"), itemgetter("value")
_NUMBER_TYPES = {int, float}
_UNPARSED = object()  # per-message marker: this one goes through parse_event


def _fast_columns(
    payloads: list[Any], keys: list[bytes | None], max_series_id_length: int
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray] | None:
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
    if (
        set(map(type, sids)) != {str}
        or not set(map(type, tss)) <= _NUMBER_TYPES
        or not set(map(type, vals)) <= _NUMBER_TYPES
    ):
        return None
    try:
        t = np.array(tss, dtype=np.float64)
        v = np.array(vals, dtype=np.float64)
        encoded = list(map(str.encode, sids))
    except (OverflowError, ValueError, TypeError, UnicodeError):
        return None
    lengths = np.fromiter(map(len, sids), dtype=np.int64, count=n)
    with np.errstate(invalid="ignore"):
        ok = (
            (lengths > 0)
            & (lengths <= max_series_id_length)
            & (np.abs(v) < MAX_ABS_VALUE)
            & (np.abs(t) < MAX_ABS_VALUE)  # 2**53: larger epoch numbers take the per-message path
        )
        big = np.abs(t) >= MILLISECONDS_CUTOFF
        if big.any():
            t = np.where(big, t / 1000.0, t)
        ok &= (t >= MIN_TS) & (t <= MAX_TS)
    if any(map(str.isspace, sids)):
        ok &= ~np.fromiter(map(str.isspace, sids), dtype=bool, count=n)
    if encoded != keys:  # a key that is given must equal the series id
        ok &= ~np.fromiter((k is not None and k != e for k, e in zip(keys, encoded)), dtype=bool, count=n)
    return ok, sids, t, v


def _loads_each(values: list, max_message_bytes: int) -> tuple[list, bool]:
    """Each value parsed on its own: ``(payloads, clean)``; a value that is None, oversize or not
    strict JSON gets ``_UNPARSED`` (``parse_event`` decides it) and makes ``clean`` False."""
    if None not in values and max(map(len, values)) <= max_message_bytes:
        try:
            return list(map(orjson.loads, values)), True
        except orjson.JSONDecodeError:
            pass
    payloads = []
    for raw in values:
        if raw is None or len(raw) > max_message_bytes:
            payloads.append(_UNPARSED)
            continue
        try:
            payloads.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            payloads.append(_UNPARSED)
    return payloads, False


def decode_one(
    raw: bytes | None,
    key: bytes | None,
    payload: object = _UNPARSED,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_series_id_length: int = MAX_SERIES_ID_LENGTH,
) -> Event | Rejection:
    """The verdict on one message (``payload``: its value already parsed by orjson, if it was)."""
    try:
        if payload is _UNPARSED:
            return parse_event(raw, key, max_message_bytes=max_message_bytes, max_series_id_length=max_series_id_length)
        return validate_payload(
            payload, raw if raw is not None else b"", key, max_series_id_length=max_series_id_length
        )  # (a parsed payload always has its raw bytes)
    except Exception as error:
        return Rejection(
            Reason.INTERNAL_ERROR,
            f"while decoding: {type(error).__name__}: {error}",
            bytes(raw) if raw is not None else b"",
        )


def decode_columns(
    values: list,
    keys: list,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_series_id_length: int = MAX_SERIES_ID_LENGTH,
) -> DecodedBatch:
    """Decode and validate a batch's message values (bytes) and keys (bytes | None); same verdicts as
    ``pipeline.events.parse_event``, message by message (see the module docstring)."""
    n = len(values)
    out = DecodedBatch()
    if n == 0:
        return out
    payloads, clean = _loads_each(values, max_message_bytes)
    fast = _fast_columns(payloads, keys, max_series_id_length) if clean else None
    if fast is not None:
        ok, sids, t, v = fast
        if ok.all():
            out.series, out.ts, out.values, out.valid_pos = sids, t, v, np.arange(n, dtype=np.int64)
            return out
        for i in np.flatnonzero(~ok).tolist():
            item = decode_one(values[i], keys[i], payloads[i], max_message_bytes, max_series_id_length)
            if type(item) is Event:
                ok[i], sids[i], t[i], v[i] = True, item.series, item.ts, item.value
            else:
                out.rejections.append((i, item))
        out.series = list(compress(sids, ok.tolist()))
        out.ts, out.values, out.valid_pos = t[ok], v[ok], np.flatnonzero(ok)
        return out
    series, ts, vals, pos = [], [], [], []
    for i, (raw, key, payload) in enumerate(zip(values, keys, payloads)):
        item = decode_one(raw, key, payload, max_message_bytes, max_series_id_length)
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


def decode_isolated(
    values: list[bytes | None], keys: list[bytes | None], max_message_bytes: int, max_series_id_length: int
) -> DecodedBatch:
    """``decode_columns``, or message by message if it raises (a message whose own decoding raises
    is rejected as ``internal_error``): one message can never fail the batch."""
    try:
        return decode_columns(values, keys, max_message_bytes, max_series_id_length)
    except Exception as error:
        log.error("batch decode failed (%s: %s); decoding message by message", type(error).__name__, error)
    items = [
        decode_one(raw, key, max_message_bytes=max_message_bytes, max_series_id_length=max_series_id_length)
        for raw, key in zip(values, keys)
    ]
    events = [(i, item) for i, item in enumerate(items) if isinstance(item, Event)]
    return DecodedBatch(
        [event.series for _, event in events],
        np.array([event.ts for _, event in events], dtype=np.float64),
        np.array([event.value for _, event in events], dtype=np.float64),
        np.array([i for i, _ in events], dtype=np.int64),
        [(i, item) for i, item in enumerate(items) if isinstance(item, Rejection)],
    )
