"""The JetStream adapter: typed acks, ack metadata, and the one home of nats-py internals."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventstore import ServerError
from eventstore.jetstream import (
    DUPLICATE_ID,
    WRONG_LAST_SEQUENCE,
    Ack,
    Refusal,
    parse_ack,
    parse_reply,
    parse_time,
    recorded_at,
)

PACKAGE = Path(__file__).resolve().parent.parent / "eventstore"
NATS_PRIVATES = {
    "_parse_header_lines", "_build_message", "_send_command", "_flush_pending", "_flush_queue",
    "_pending_data_size", "_max_pending_size",
}  # fmt: skip


def test_a_single_ack() -> None:
    """A publish's ack is an Ack at its sequence, first and last the same."""
    ack = parse_ack(b'{"stream":"EVENTS","seq":7}')
    assert ack == Ack("EVENTS", 7, False, 1)
    assert isinstance(ack, Ack) and ack.first_seq == 7


def test_a_duplicate_ack() -> None:
    """The server's duplicate flag is kept."""
    ack = parse_ack(b'{"stream":"EVENTS","seq":3,"duplicate":true}')
    assert isinstance(ack, Ack) and ack.duplicate and ack.seq == 3


def test_a_batch_ack_counts_back_to_its_first_sequence() -> None:
    """An atomic batch's ack names its last sequence and its size: the first one follows."""
    ack = parse_ack(b'{"stream":"EVENTS","seq":110,"batch":"b-1","count":10}', 10)
    assert isinstance(ack, Ack) and (ack.first_seq, ack.seq, ack.batch_size) == (101, 110, 10)


def test_a_refusal_is_typed_with_its_code() -> None:
    """An error reply is a Refusal with the named JetStream code, nothing raised."""
    reply = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"}}'
    assert parse_ack(reply) == Refusal(WRONG_LAST_SEQUENCE, "wrong last sequence: 4")
    dup = parse_ack(b'{"error":{"code":400,"err_code":10201,"description":"duplicate"}}', 5)
    assert isinstance(dup, Refusal) and dup.code == DUPLICATE_ID


def test_an_empty_reply_opens_a_batch() -> None:
    """The empty answer to a batch's first message is an Ack at seq 0."""
    assert parse_ack(b"", 4) == Ack(seq=0, batch_size=4)


@pytest.mark.parametrize("data", [b"not json", b"[1,2]", b'{"seq":"x"}'])
def test_an_unreadable_ack_is_a_server_error(data: bytes) -> None:
    """A reply that is not an ack is ServerError, never a decoder's error."""
    with pytest.raises(ServerError, match="unreadable acknowledgement"):
        parse_ack(data)


def test_ack_subjects_with_and_without_domain() -> None:
    """Stream sequence and timestamp come from the ack subject, with or without a domain."""
    plain = "$JS.ACK.EVENTS.cons.1.42.42.1700000000123456789.0"
    domain = "$JS.ACK.hub.acc.EVENTS.cons.1.42.42.1700000000123456789.0.tok"
    assert parse_reply(plain) == (42, 1700000000123456)
    assert parse_reply(domain) == (42, 1700000000123456)


def test_both_ways_of_reading_time_agree() -> None:
    """A direct get's timestamp and a consumer's ack timestamp give the same datetime."""
    at = parse_time("2023-11-14T22:13:20.123456789Z")
    assert at == recorded_at(1700000000123456)
    assert at.tzinfo is not None and at == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)


def _modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def test_only_the_adapter_touches_nats_py_internals() -> None:
    """No eventstore module but jetstream.py names a private attribute of nats-py."""
    offenders = []
    for path in _modules():
        if path.name == "jetstream.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = node.attr if isinstance(node, ast.Attribute) else None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = node.value
            if named in NATS_PRIVATES:
                offenders.append(f"{path.name}:{node.lineno}")  # type: ignore[attr-defined]
    assert not offenders


def test_only_the_adapter_catches_nats_errors() -> None:
    """nats-py's error modules are imported by jetstream.py alone: one translation table."""
    importers = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n in ("nats.errors", "nats.js.errors") for n in names):
                importers.append(path.name)
    assert set(importers) == {"jetstream.py"}
