"""Event schema: every raw message becomes exactly one Event or one Rejection with a precise reason."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import events
from pipeline.events import Event, Reason, Rejection, encode_event, parse_event, parse_timestamp


def test_valid_iso_event():
    result = parse_event(b'{"series": "cpu-1", "ts": "2014-02-14 14:30:00", "value": 0.132}', b"cpu-1")
    assert result == Event("cpu-1", 1392388200.0, 0.132)


@pytest.mark.parametrize(
    "ts, expected",
    [
        (1392388200, 1392388200.0),  # epoch seconds
        (1392388200000, 1392388200.0),  # epoch milliseconds
        (1392388200.5, 1392388200.5),
        ("2014-02-14T14:30:00Z", 1392388200.0),
        ("2014-02-14T15:30:00+01:00", 1392388200.0),
    ],
)
def test_timestamp_forms(ts, expected):
    assert parse_timestamp(ts) == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", Reason.MALFORMED_JSON),
        (b"", Reason.MALFORMED_JSON),
        (b"[1, 2]", Reason.NOT_AN_OBJECT),
        (b'{"ts": 1, "value": 1}', Reason.MISSING_FIELD),
        (b'{"series": "a", "value": 1}', Reason.MISSING_FIELD),
        (b'{"series": "a", "ts": 1}', Reason.MISSING_FIELD),
        (b'{"series": 7, "ts": 1, "value": 1}', Reason.WRONG_TYPE),
        (b'{"series": "a", "ts": 1, "value": "12"}', Reason.WRONG_TYPE),
        (b'{"series": "a", "ts": 1, "value": true}', Reason.WRONG_TYPE),
        (b'{"series": "a", "ts": [1], "value": 1}', Reason.WRONG_TYPE),
        (b'{"series": "a", "ts": 1, "value": NaN}', Reason.NON_FINITE_VALUE),
        (b'{"series": "a", "ts": 1, "value": Infinity}', Reason.NON_FINITE_VALUE),
        (b'{"series": "a", "ts": 1, "value": -Infinity}', Reason.NON_FINITE_VALUE),
        (b'{"series": "a", "ts": 1, "value": 1e300}', Reason.VALUE_OUT_OF_RANGE),
        (b'{"series": "a", "ts": 1, "value": -9007199254740993}', Reason.VALUE_OUT_OF_RANGE),
        (b'{"series": "", "ts": 1, "value": 1}', Reason.BAD_SERIES_ID),
        (b'{"series": "   ", "ts": 1, "value": 1}', Reason.BAD_SERIES_ID),
        (b'{"series": "a", "ts": "yesterday", "value": 1}', Reason.BAD_TIMESTAMP),
        (b'{"series": "a", "ts": -5, "value": 1}', Reason.BAD_TIMESTAMP),
        (b'{"series": "a", "ts": 1e300, "value": 1}', Reason.BAD_TIMESTAMP),
    ],
)
def test_rejections_name_the_problem(raw, reason):
    result = parse_event(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason, result.detail
    assert result.raw == raw
    assert result.detail


def test_oversize_series_id_and_message():
    long_id = "x" * 300
    assert parse_event(encode_event(long_id, 1, 1.0)).reason == Reason.BAD_SERIES_ID
    big = b'{"series": "a", "ts": 1, "value": 1, "pad": "' + b"p" * 70_000 + b'"}'
    assert parse_event(big).reason == Reason.OVERSIZE_MESSAGE


def test_key_must_match_series():
    assert parse_event(encode_event("a", 1, 1.0), key=b"b").reason == Reason.KEY_MISMATCH
    assert isinstance(parse_event(encode_event("a", 1, 1.0), key=b"a"), Event)


def test_every_reason_is_listed():
    result_reasons = {
        Reason.MALFORMED_JSON,
        Reason.NOT_AN_OBJECT,
        Reason.MISSING_FIELD,
        Reason.WRONG_TYPE,
        Reason.NON_FINITE_VALUE,
        Reason.VALUE_OUT_OF_RANGE,
        Reason.BAD_SERIES_ID,
        Reason.BAD_TIMESTAMP,
        Reason.OVERSIZE_MESSAGE,
        Reason.KEY_MISMATCH,
    }
    assert result_reasons <= set(events.REJECTION_REASONS)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512), st.one_of(st.none(), st.binary(max_size=32)))
def test_arbitrary_bytes_never_raise(raw, key):
    result = parse_event(raw, key)
    assert isinstance(result, (Event, Rejection))
    if isinstance(result, Rejection):
        assert result.reason in events.REJECTION_REASONS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(series=json_values | st.text(max_size=300), ts=json_values, value=json_values)
def test_arbitrary_payloads_never_raise_and_events_are_finite(series, ts, value):
    raw = json.dumps({"series": series, "ts": ts, "value": value}).encode()  # may hold NaN/Infinity literals
    result = parse_event(raw)
    assert isinstance(result, (Event, Rejection))
    if isinstance(result, Event):
        assert math.isfinite(result.value) and math.isfinite(result.ts)
        assert isinstance(result.series, str) and result.series.strip()


@pytest.mark.parametrize("key", [None, b"\xed\xa0\x80"], ids=["no-key", "key"])
@pytest.mark.parametrize(
    "raw",
    [
        b'{"series": "\\ud800", "ts": 1700000000, "value": 1}',
        b'{"series": "\xed\xa0\x80", "ts": 1700000000, "value": 1}',
    ],
    ids=["escape", "raw-bytes"],
)
def test_a_lone_surrogate_in_the_series_id_is_a_bad_series_id(raw, key):
    result = parse_event(raw, key)
    assert isinstance(result, Rejection) and result.reason == Reason.BAD_SERIES_ID, result


@pytest.mark.parametrize(
    "raw",
    [
        b'{"series": "a", "ts": 1700000000, "value": ' + b"9" * 400 + b"}",
        b'{"series": "a", "ts": 1700000000, "value": -' + b"9" * 400 + b"}",
        b'{"series": "a", "ts": 1700000000, "value": 1e400}',
    ],
)
def test_numbers_beyond_a_double_are_out_of_range_not_non_finite(raw):
    assert parse_event(raw).reason == Reason.VALUE_OUT_OF_RANGE


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf" + encode_event("a", 1700000000, 1.0),  # UTF-8 BOM
        '{"series": "a", "ts": 1700000000, "value": 1}'.encode("utf-16"),  # UTF-16 with BOM
        '{"series": "a", "ts": 1700000000, "value": 1}'.encode("utf-16-le"),  # UTF-16 without BOM
        '{"series": "a", "ts": 1700000000, "value": 1}'.encode("utf-32"),
        b'{"series": "a\xff", "ts": 1700000000, "value": 1}',  # invalid UTF-8
    ],
)
def test_only_utf8_without_a_bom_is_json_here(raw):
    assert parse_event(raw).reason == Reason.MALFORMED_JSON
