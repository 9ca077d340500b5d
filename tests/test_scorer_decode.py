"""The scorer's batch decoder gives exactly the verdicts of ``pipeline.events.parse_event``."""

from __future__ import annotations

from collections import namedtuple

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from record_helpers import decode_batch

from pipeline.events import Event, parse_event

Rec = namedtuple("Rec", "key value")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01 00:00:00", "  ", "", "x" * 300]),
    st.sampled_from([1_700_000_000, 1_700_000_000_000, 1.7e9, 7_258_118_401, -1, 10**11, 10**11 - 1]),
)
payloads = st.fixed_dictionaries({}, optional={"series": scalars, "ts": scalars, "value": scalars, "extra": scalars})


def verdict(item):
    return ("ok", item.series, item.ts, item.value) if isinstance(item, Event) else ("rej", item.reason)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(payloads, st.sampled_from([None, "key-match", b"other"])), min_size=1, max_size=8), st.booleans()
)
def test_batch_decode_equals_parse_event(items, spoil):
    records = []
    for payload, key in items:
        raw = orjson.dumps(payload)
        k = (
            payload.get("series", "").encode()
            if key == "key-match" and isinstance(payload.get("series"), str)
            else (key if isinstance(key, bytes) else None)
        )
        records.append(Rec(k, raw))
    if spoil:  # one bad message forces the per-message path for the whole batch
        records.append(Rec(None, b"{broken"))
    dec = decode_batch(records)
    got = {}
    for j, i in enumerate(dec.valid_pos):
        got[i] = ("ok", dec.series[j], dec.ts[j], dec.values[j])
    for i, rej in dec.rejections:
        got[i] = ("rej", rej.reason)
    assert sorted(got) == list(range(len(records)))
    for i, r in enumerate(records):
        assert got[i] == verdict(parse_event(r.value, r.key)), (r, got[i])


def test_concatenation_cannot_shift_message_boundaries():
    # two fragments that are invalid alone but valid JSON when joined must not become events
    records = [
        Rec(None, b'{"series": "a", "ts": 1700000000, "value": 1, "x": "}'),
        Rec(None, b'{"y": "'),
        Rec(None, b'"}'),
    ]
    dec = decode_batch(records)
    assert [verdict(parse_event(r.value)) for r in records] == [("rej", rej.reason) for _, rej in dec.rejections]


def test_the_three_merging_messages_of_issue_15_stay_apart():
    records = [
        Rec(b"s", b'{"a":"}'),
        Rec(b"s", b'{",  "series":"s","ts":1700000000,"value":5}'),
        Rec(b"s", b'{"q":1},{"r":2}'),
    ]
    dec = decode_batch(records)
    assert len(dec.valid_pos) == 0
    assert [(i, rej.reason) for i, rej in dec.rejections] == [
        (0, "malformed_json"),
        (1, "malformed_json"),
        (2, "malformed_json"),
    ]


valid_event = st.builds(
    lambda s, t, v: orjson.dumps({"series": s, "ts": t, "value": v}),
    st.sampled_from(["a", "b", "s-1"]),
    st.integers(1_600_000_000, 1_800_000_000),
    st.floats(-1e6, 1e6, allow_nan=False),
)
fragments = st.sampled_from(
    [
        b'{"a":"}',
        b'{",  "series":"s","ts":1700000000,"value":5}',
        b'{"q":1},{"r":2}',
        b'{"series": "a", "ts": 1700000000, "value": 1, "x": "}',
        b'{"y": "',
        b'"}',
        b"{",
        b"}",
        b"{}",
        b'{"series":"\\ud800","ts":1,"value":1}',
        b"\xef\xbb\xbf{}",
        b"[1]",
        b"null",
    ]
)
message = st.one_of(st.binary(max_size=64), valid_event, fragments, st.none())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(message, st.sampled_from([None, b"a", b"s", b"\xed\xa0\x80"])), min_size=1, max_size=12))
def test_batch_decoder_agrees_with_parse_event_on_arbitrary_bytes(items):
    """Differential: arbitrary bytes per message; verdicts equal to parse_event's, message by message."""
    records = [Rec(key, value) for value, key in items]
    dec = decode_batch(records)
    got = {int(i): ("ok", dec.series[j], dec.ts[j], dec.values[j]) for j, i in enumerate(dec.valid_pos)}
    got.update({i: ("rej", rej.reason) for i, rej in dec.rejections})
    assert sorted(got) == list(range(len(records)))
    for i, r in enumerate(records):
        assert got[i] == verdict(parse_event(r.value, r.key)), (i, r, got[i])
