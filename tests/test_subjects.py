"""Aggregate ids in subjects: every id maps to one token and back, bad input is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore import EventStore, InvalidEvent, NewEvent, decode_id, encode_id
from eventstore.subjects import _NEEDS_ESCAPE_RE, _needs_escape, aggregate_subject, parse_subject

AWKWARD = [
    "a.b",
    "*",
    ">",
    "a*b>c",
    "with space",
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "del\x7f",
    "%",
    "%25",
    "%2E",
    "te_pō",
    "名前",
    "emoji-🚀",
    "nbsp\u00a0x",
    "ls\u2028x",
    "..",
    "$JS.API",
    "x" * 256,
    "é" * 128,
]

ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=80).filter(
    lambda s: len(s.encode()) <= 256
)


@given(ids)
def test_encode_decode_round_trip(value: str) -> None:
    """decode(encode(id)) == id for any id of 1-256 UTF-8 bytes."""
    token = encode_id(value)
    assert decode_id(token) == value


@given(ids)
def test_encoded_token_is_one_safe_subject_token(value: str) -> None:
    """The token never holds a separator, wildcard, whitespace or control character."""
    token = encode_id(value)
    assert token
    assert not any(c in ".*>" or c.isspace() or ord(c) < 32 for c in token)


@given(ids, ids)
def test_encoding_is_injective(a: str, b: str) -> None:
    """Two different ids never share a subject."""
    if a != b:
        assert encode_id(a) != encode_id(b)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("x" * 257, "257 UTF-8 bytes"),
        ("é" * 129, "258 UTF-8 bytes"),
        ("\ud800", "UTF-8"),
    ],
)
def test_invalid_ids_are_refused(value: str, reason: str) -> None:
    """Empty, too long or non-UTF-8 ids raise InvalidEvent with the reason."""
    with pytest.raises(InvalidEvent, match=reason):
        encode_id(value)


@pytest.mark.parametrize("token", ["%41", "%2e", "a%2", "%ZZ", "a.b", "%FF"])
def test_non_canonical_tokens_are_refused(token: str) -> None:
    """A token that is not exactly what encode_id produces is an error, not a second id."""
    with pytest.raises(InvalidEvent):
        decode_id(token)


@pytest.mark.parametrize("agg_type", ["Agent", "1agent", "a.b", "", "a b", "a*"])
def test_invalid_aggregate_types_are_refused(agg_type: str) -> None:
    """Aggregate types must match [a-z][a-z0-9_-]*."""
    with pytest.raises(InvalidEvent, match="aggregate type"):
        aggregate_subject("events", agg_type, "x")


def test_parse_subject_inverts_aggregate_subject() -> None:
    """The subject of (type, id) parses back to (type, id)."""
    for value in AWKWARD:
        assert parse_subject("events", aggregate_subject("events", "agent", value)) == (
            "agent",
            value,
        )


async def test_awkward_ids_round_trip_through_the_server(store: EventStore) -> None:
    """Every awkward id is appended, stored on its own subject, and read back intact."""
    for value in AWKWARD:
        await store.append("agent", value, NewEvent("Created", {"id": value}))
    seen = [ev async for ev in store.read_all()]
    assert [ev.aggregate_id for ev in seen] == AWKWARD
    for value in AWKWARD:
        events = [ev async for ev in store.read("agent", value)]
        assert [(e.aggregate_id, e.version, e.data) for e in events] == [(value, 1, {"id": value})]


def _escaped_one_by_one(aggregate_id: str) -> str:
    from_chars = [
        "".join(f"%{b:02X}" for b in ch.encode()) if _needs_escape(ch) else ch
        for ch in aggregate_id
    ]
    return "".join(from_chars)


@given(st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode()) <= 256))
def test_the_fast_path_encodes_as_the_character_rule_does(aggregate_id: str) -> None:
    """Ids that need no escaping skip the per-character loop: the token is still exactly what
    the per-character rule gives, for any id."""
    assert encode_id(aggregate_id) == _escaped_one_by_one(aggregate_id)


def test_every_character_is_escaped_by_the_one_rule() -> None:
    """The one-scan pattern and the per-character rule agree on every code point."""
    assert [
        c for c in range(0x110000) if bool(_NEEDS_ESCAPE_RE.match(chr(c))) != _needs_escape(chr(c))
    ] == []
