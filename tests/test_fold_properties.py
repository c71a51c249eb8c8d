"""The fold's fast paths agree with the log's reference definitions, for any input (hypothesis).

``projections.fold`` compares and merges vector clocks on plain dicts and decodes messages with
a subject cache and in-place field setting, for speed; what they decide must be exactly what
``eventstore.VectorClock`` and ``eventstore.decode_message`` decide.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import (
    Envelope,
    Event,
    InvalidEvent,
    Order,
    StoredMessage,
    Transition,
    VectorClock,
    decode_message,
    encode_id,
)
from eventstore.events import encode_envelope
from projections.fold import MessageDecoder, concurrent, merge_clock

PREFIX = "ev"
T0 = datetime(2025, 1, 13, 10, 30, tzinfo=UTC)

producers = st.sampled_from(["a", "b", "c", "d", "agent-1"])
counters = st.integers(min_value=0, max_value=6) | st.integers(min_value=0, max_value=2**63 - 1)
clocks = st.dictionaries(producers, counters, max_size=5)
positive_clocks = st.dictionaries(producers, st.integers(min_value=1, max_value=9), max_size=5)


@given(clocks, clocks)
def test_concurrent_agrees_with_vector_clock_compare(a: dict[str, int], b: dict[str, int]) -> None:
    """``concurrent(a, b)`` is ``VectorClock(a).compare(b) is CONCURRENT``, zeros included."""
    assert concurrent(a, b) == (VectorClock(a).compare(b) is Order.CONCURRENT)
    assert concurrent(a, b) == concurrent(b, a)


@given(clocks | st.none(), clocks)
def test_merge_clock_agrees_with_vector_clock_merge(
    a: dict[str, int] | None, b: dict[str, int]
) -> None:
    """``merge_clock`` is the entry-wise max of ``VectorClock.merge``, never mutates its
    inputs, and hands back ``a`` itself when ``b`` adds nothing."""
    before_a, before_b = dict(a or {}), dict(b)
    merged = merge_clock(a, b)
    assert VectorClock(merged) == VectorClock(a or {}).merge(b)
    assert (a or {}) == before_a and b == before_b
    if a and all(v <= a.get(k, 0) for k, v in b.items()):
        assert merged is a


@given(positive_clocks, clocks)
def test_merge_clock_of_a_fold_clock_is_exactly_the_vector_clock(
    a: dict[str, int], b: dict[str, int]
) -> None:
    """On the clocks a fold holds (no zero entries), the merge is the same dict, no zeros."""
    assert merge_clock(a, b) == VectorClock(a).merge(b).to_dict()


def _envelope(draw: Any, aggregate_id: str) -> bytes:
    vclock = draw(clocks)
    transition = draw(st.none() | st.tuples(st.sampled_from(["A", "B"]), st.just("C")))
    env = Envelope(
        id=draw(st.sampled_from(["e1", "0190a7b2-7d3c-7000-8000-000000000001"])),
        type=draw(st.sampled_from(["Created", "Changed"])),
        aggregate_type="agent",
        aggregate_id=aggregate_id,
        version=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        occurred_at=T0,
        producer=draw(producers),
        lamport=draw(counters),
        vclock=vclock,
        transition=Transition(*transition) if transition else None,
        data=draw(st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4))),
    )
    return encode_envelope(env)


def _damaged(body: bytes, draw: Any) -> bytes:
    """A body changed the ways hostile writers change them."""
    kind = draw(st.sampled_from(["keep", "cut", "json", "deep", "field"]))
    if kind == "cut":
        return body[: draw(st.integers(min_value=0, max_value=max(0, len(body) - 1)))]
    if kind == "json":
        return json.dumps(draw(st.recursive(st.none() | st.integers(), st.lists))).encode()
    if kind == "deep":
        depth: int = draw(st.integers(min_value=200, max_value=300))
        return body[:-1] + b',"data2":' + b"[" * depth + b"]" * depth + b"}"
    if kind == "field":
        obj = json.loads(body)
        obj[draw(st.sampled_from(["version", "vclock", "lamport", "id"]))] = draw(
            st.none() | st.integers() | st.text(max_size=3) | st.just(-1)
        )
        return json.dumps(obj).encode()
    return body


@st.composite
def messages(draw: Any) -> StoredMessage:
    aggregate_id = draw(st.sampled_from(["a1", "x.y", "with space", "ü"]))
    body = _damaged(_envelope(draw, aggregate_id), draw)
    named = draw(st.sampled_from([aggregate_id, "a1", "other"]))
    subject = draw(
        st.sampled_from(
            [
                f"{PREFIX}.agent.{encode_id(named)}",
                f"{PREFIX}.agent",
                f"other.agent.{encode_id(named)}",
                f"{PREFIX}.Bad Type.a1",
            ]
        )
    )
    seq = draw(st.integers(min_value=1, max_value=2**40))
    recorded = T0 + timedelta(microseconds=draw(st.integers(min_value=0, max_value=10**9)))
    return StoredMessage(seq, subject, body, recorded, None)


def _reference(msg: StoredMessage) -> Event | None:
    try:
        return decode_message(PREFIX, msg)
    except InvalidEvent:
        return None


@settings(max_examples=300)
@given(messages())
def test_message_decoder_agrees_with_decode_message(msg: StoredMessage) -> None:
    """``MessageDecoder.key`` + ``event`` accept exactly what ``decode_message`` accepts, and
    give the same event (with the log's sequence and time)."""
    decoder = MessageDecoder(PREFIX)
    expected = _reference(msg)
    key = decoder.key(msg.subject)
    if key is None:
        assert expected is None
        return
    try:
        got: Event | None = decoder.event(msg, key)
    except InvalidEvent:
        got = None
    assert got == expected
    if got is not None:
        assert (got.seq, got.recorded_at) == (msg.seq, msg.recorded_at)
        assert decoder.event(msg, decoder.key(msg.subject) or key) == expected  # cached key
