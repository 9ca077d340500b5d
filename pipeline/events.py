"""The event schema: raw Kafka bytes in, a validated ``Event`` or a ``Rejection`` out.

An event is the JSON object ``{"series": str, "ts": ISO-8601 string | epoch seconds | epoch
milliseconds, "value": number}``, published with the series id as the message key.
``parse_event`` never raises: every input becomes exactly one ``Event`` or one ``Rejection``
whose ``reason`` (a short, fixed code usable as a metric label) and ``detail`` (human text)
say what was wrong. Timestamps are normalised to float epoch seconds (UTC).

Encoding: a message must be UTF-8 JSON (RFC 8259) without a byte-order mark; UTF-16/32, a BOM
and invalid UTF-8 are ``malformed_json``. A series id holding a lone surrogate (the escape
``\\ud800`` or its raw bytes ED A0 80) is ``bad_series_id``: ids must be well-formed Unicode. A number too large for a double
(a 400-digit integer, ``1e400``) is ``value_out_of_range``; only the literals NaN and ±Infinity
are ``non_finite_value``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import orjson

from models.core.limits import MAX_ABS_VALUE, MAX_MESSAGE_BYTES, MAX_SERIES_ID_LENGTH

# Epoch values above this are taken as milliseconds (1e11 s is the year 5138).
MILLISECONDS_CUTOFF = 1e11
# Accept timestamps between 1970 and 2200 (seconds).
MIN_TS, MAX_TS = 0.0, 7_258_118_400.0


class Reason(StrEnum):
    """Why a message went to the dead-letter topic: a closed set of short codes, the ``reason``
    label of ``tsad_events_rejected_total`` and the ``tsad.reason`` header (the value's string)."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE_VALUE = "non_finite_value"
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    BAD_SERIES_ID = "bad_series_id"
    BAD_TIMESTAMP = "bad_timestamp"
    OVERSIZE_MESSAGE = "oversize_message"
    KEY_MISMATCH = "key_mismatch"
    # assigned later in the pipeline (per-series ordering, by the detector)
    DUPLICATE_TIMESTAMP = "duplicate_timestamp"
    OUT_OF_ORDER = "out_of_order"
    # any exception while handling one message in the scorer (decode, score, build or produce records)
    INTERNAL_ERROR = "internal_error"
    # a dead-letter marker standing for the offsets of a record batch that could not be decoded
    # (``pipeline.kafka.feed_guard``): not an event rejection
    UNDECODABLE_BATCH = "undecodable_batch"


# The reasons an event can be rejected with (all but the marker), in the order above.
REJECTION_REASONS = tuple(reason for reason in Reason if reason is not Reason.UNDECODABLE_BATCH)


class _OverflowedNumber(float):
    """A JSON number literal too large for a double (e.g. ``1e400``): infinite here, but out of
    range rather than non-finite in the sender's intent."""


def _parse_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _OverflowedNumber(value)


def _lenient_loads(raw: bytes) -> object:
    """Python's json with NaN/Infinity literals, on UTF-8 text (a BOM or another encoding fails)."""
    text = raw.decode("utf-8", "surrogatepass")  # invalid UTF-8 raises; encoded surrogates reach well_formed
    return json.loads(text, parse_float=_parse_float)


def well_formed(text: str) -> bool:
    """True when ``text`` holds no surrogate code point (it encodes to UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event. ``ts`` is epoch seconds (UTC)."""

    series: str
    ts: float
    value: float


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a raw message is not a valid event. ``raw`` is the original bytes, untouched."""

    reason: Reason
    detail: str
    raw: bytes


def parse_timestamp(ts: object) -> float | None:
    """Epoch seconds for an ISO-8601 string or an epoch number (s or ms); None if unusable."""
    if isinstance(ts, bool):
        return None
    if isinstance(ts, (int, float)):
        try:
            seconds = float(ts)
        except OverflowError:
            return None
        if not math.isfinite(seconds):
            return None
        if abs(seconds) >= MILLISECONDS_CUTOFF:
            seconds /= 1000.0
    elif isinstance(ts, str):
        text = ts.strip()
        if not text or len(text) > 64:
            return None
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            seconds = parsed.timestamp()
        except (OverflowError, OSError, ValueError):
            return None
    else:
        return None
    if not (MIN_TS <= seconds <= MAX_TS):
        return None
    return seconds


def _reject(reason: Reason, detail: str, raw: bytes) -> Rejection:
    return Rejection(reason, detail, raw)


def parse_event(
    raw: bytes | None,
    key: bytes | None = None,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_series_id_length: int = MAX_SERIES_ID_LENGTH,
) -> Event | Rejection:
    """Validate one message value (and its key, when given). Never raises."""
    raw_bytes = bytes(raw) if raw is not None else b""
    try:
        if len(raw_bytes) > max_message_bytes:
            return _reject(
                Reason.OVERSIZE_MESSAGE, f"message is {len(raw_bytes)} bytes, limit {max_message_bytes}", raw_bytes
            )
        try:
            payload = orjson.loads(raw_bytes)
        except orjson.JSONDecodeError as error:
            # Python's json.dumps writes NaN/Infinity literals; accept them here only so the
            # rejection names the real problem (non-finite value) rather than "malformed".
            try:
                payload = _lenient_loads(raw_bytes)
            except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                return _reject(Reason.MALFORMED_JSON, f"not valid UTF-8 JSON: {error}", raw_bytes)
        return validate_payload(payload, raw_bytes, key, max_series_id_length=max_series_id_length)
    except Exception as error:
        return _reject(
            Reason.MALFORMED_JSON, f"unexpected error while parsing: {type(error).__name__}: {error}", raw_bytes
        )


def validate_payload(
    payload: object,
    raw: bytes,
    key: bytes | None = None,
    *,
    max_series_id_length: int = MAX_SERIES_ID_LENGTH,
) -> Event | Rejection:
    """Validate an already-decoded JSON payload (used by the batch decoder)."""
    if not isinstance(payload, dict):
        return _reject(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(payload).__name__}", raw)
    for field in ("series", "ts", "value"):
        if field not in payload:
            return _reject(Reason.MISSING_FIELD, f"missing field '{field}'", raw)
    series, ts, value = payload["series"], payload["ts"], payload["value"]
    if not isinstance(series, str):
        return _reject(Reason.WRONG_TYPE, f"'series' must be a string, got {type(series).__name__}", raw)
    if not series.strip() or len(series) > max_series_id_length:
        return _reject(Reason.BAD_SERIES_ID, f"'series' must be 1..{max_series_id_length} characters, not blank", raw)
    if not well_formed(series):
        return _reject(Reason.BAD_SERIES_ID, "'series' is not well-formed Unicode (lone surrogate)", raw)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _reject(Reason.WRONG_TYPE, f"'value' must be a number, got {type(value).__name__}", raw)
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a double
        return _reject(
            Reason.VALUE_OUT_OF_RANGE, "|value| must be below 2**53, got an integer beyond a double's range", raw
        )
    if type(value) is _OverflowedNumber:
        return _reject(
            Reason.VALUE_OUT_OF_RANGE, "|value| must be below 2**53, got a number beyond a double's range", raw
        )
    value = number
    if not math.isfinite(value):
        return _reject(Reason.NON_FINITE_VALUE, "'value' is NaN or infinite", raw)
    if abs(value) >= MAX_ABS_VALUE:
        return _reject(Reason.VALUE_OUT_OF_RANGE, f"|value| must be below 2**53, got {value:g}", raw)
    if not isinstance(ts, (str, int, float)) or isinstance(ts, bool):
        return _reject(
            Reason.WRONG_TYPE, f"'ts' must be an ISO-8601 string or epoch number, got {type(ts).__name__}", raw
        )
    seconds = parse_timestamp(ts)
    if seconds is None:
        return _reject(Reason.BAD_TIMESTAMP, f"unparseable or out-of-range timestamp {str(ts)[:64]!r}", raw)
    if key is not None and key != series.encode("utf-8"):
        return _reject(Reason.KEY_MISMATCH, "message key does not match the 'series' field", raw)
    return Event(series=series, ts=seconds, value=value)


def encode_event(series: str, ts: float | str, value: float) -> bytes:
    """JSON bytes of one event, as a publisher sends it."""
    return orjson.dumps({"series": series, "ts": ts, "value": value})
