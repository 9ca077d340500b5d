"""The scorer's batch decoder gives exactly the verdicts of ``pipeline.events.parse_event``."""

from __future__ import annotations

from collections import namedtuple

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events import Event, parse_event
from pipeline.scorer import decode_batch

Rec = namedtuple("Rec", "key value")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01 00:00:00", "  ", "", "x" * 300]),
    st.sampled_from([1_700_000_000, 1_700_000_000_000, 1.7e9, 7_258_118_401, -1, 10**11, 10**11 - 1]),
)
payloads = st.fixed_dictionaries({}, optional={"series": scalars, "ts": scalars, "value": scalars, "extra": scalars})


def verdict(item):
    return ("ok", item.series, item.ts, item.value) if isinstance(item, Event) else ("rej", item.reason)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(payloads, st.sampled_from([None, "key-match", b"other"])), min_size=1, max_size=8),
       st.booleans())
def test_batch_decode_equals_parse_event(items, spoil):
    records = []
    for payload, key in items:
        raw = orjson.dumps(payload)
        k = payload.get("series", "").encode() if key == "key-match" and isinstance(payload.get("series"), str) else (
            key if isinstance(key, bytes) else None)
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
    records = [Rec(None, b'{"series": "a", "ts": 1700000000, "value": 1, "x": "}'),
               Rec(None, b'{"y": "'), Rec(None, b'"}')]
    dec = decode_batch(records)
    assert [verdict(parse_event(r.value)) for r in records] == [("rej", rej.reason) for _, rej in dec.rejections]
