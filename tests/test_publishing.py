"""Atomic batches whose middle is written as one buffer: byte for byte what nats-py's
``publish`` sends, and stored by a real server exactly as such a batch."""

from __future__ import annotations

from typing import Any

import nats
import pytest
from nats.aio.client import Client

from eventstore import AppendRequest, EventStore, InvalidEvent, NewEvent, StreamSettings
from eventstore.publishing import hpub_frames, publish_batch

_CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("t.agent.a", b'{"x":1}', {"Nats-Msg-Id": "019a-1"}),
    ("t.agent.b", b"", {"Nats-Msg-Id": "id-2", "Nats-Expected-Last-Subject-Sequence": "0"}),
    ("t.agent.c", b"x" * 300, {"Nats-Msg-Id": "été-3"}),  # a non-ASCII id: bytes, not chars
    ("t.agent.ünï", b"{}", {"Nats-Msg-Id": "id-4"}),  # a readable non-ASCII subject
    ("t.agent.d", b"{}", {"Nats-Msg-Id": " padded ", "Eventstore-State": "  Run ning "}),
    ("t.agent.e", b"{}", {"Nats-Msg-Id": "id-6", "X-Line": "a\r\nb", " Spaced ": "v"}),
    ("t.agent.f", b"{}", {"Nats-Msg-Id": "id-7", "Eventstore-State": "naïve\x85"}),
]


async def _nats_py_frame(subject: str, body: bytes, headers: dict[str, str]) -> bytes:
    """What ``Client.publish`` puts on the wire for one message (its own encoder)."""
    client = Client()
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    client._send_command = capture  # type: ignore[method-assign]
    await client._send_publish(subject, "", body, len(body), headers)
    return b"".join(sent)


async def test_frames_are_what_nats_py_would_send() -> None:
    """Each frame (ids ASCII or not, values stripped, CR/LF made spaces, odd header names
    trimmed) equals nats-py's own encoding of the message with its batch headers."""
    expected = b""
    for i, (subject, body, headers) in enumerate(_CASES, 2):
        full = headers | {"Nats-Batch-Id": "b-1", "Nats-Batch-Sequence": str(i)}
        expected += await _nats_py_frame(subject, body, full)
    assert hpub_frames(_CASES, "b-1", 2, 1 << 20) == expected


def test_an_oversized_message_or_a_bad_header_name_is_refused() -> None:
    """A body past the server's limit, or a header name NATS cannot carry, is InvalidEvent
    before anything is written."""
    with pytest.raises(InvalidEvent, match="at most 10"):
        hpub_frames([("t.a", b"x" * 11, {"Nats-Msg-Id": "a"})], "b", 2, 10)
    with pytest.raises(InvalidEvent, match="header name"):
        hpub_frames([("t.a", b"{}", {"Bad:Name": "v"})], "b", 2, 100)


async def test_a_batch_is_stored_whole_with_its_headers(
    nats_url: str, settings: StreamSettings
) -> None:
    """A batch of 50 (first and last by request, 48 in one write) is stored as 50 messages in
    order, each with its own dedup id and the expectation where it was put."""
    async with await EventStore.connect(nats_url, producer="p", stream=settings):
        pass  # creates the stream (atomic batches allowed)
    nc = await nats.connect(nats_url)
    try:
        msgs = [
            (f"{settings.prefix}.agent.a{i % 7}", b'{"n":%d}' % i, {"Nats-Msg-Id": f"m-{i}"})
            for i in range(50)
        ]
        for i in range(7):
            msgs[i][2]["Nats-Expected-Last-Subject-Sequence"] = "0"

        async def ask(s: str, b: bytes, h: dict[str, str], t: float, _: Any) -> bytes:
            reply = await nc.request(s, b, timeout=t, headers=h)
            data: bytes = reply.data
            return data

        ack = await publish_batch(nc, msgs, "batch-1", 5.0, ask)
        assert not hasattr(ack, "code"), ack
        js = nc.jetstream()
        stored = [await js.get_msg(settings.name, seq) for seq in range(1, 51)]
        assert [m.data for m in stored] == [m[1] for m in msgs]
        assert [m.subject for m in stored] == [m[0] for m in msgs]
        assert [(m.headers or {}).get("Nats-Msg-Id") for m in stored] == [
            f"m-{i}" for i in range(50)
        ]
        again = await publish_batch(nc, msgs, "batch-2", 5.0, ask)  # same ids: refused whole
        assert getattr(again, "code", None) in (10071, 10201), again
        info = await js.stream_info(settings.name)
        assert info.state.messages == 50
    finally:
        await nc.close()


async def test_an_append_many_batch_reads_back_intact(
    nats_url: str, settings: StreamSettings
) -> None:
    """Appends batched by the committer (one write for each batch's middle) read back as the
    events appended: each aggregate's in the order given, with versions 1, 2, ..."""
    async with await EventStore.connect(nats_url, producer="p", stream=settings) as s:
        results = await s.append_many(
            [
                AppendRequest("agent", f"x{i % 13}", [NewEvent("Did", {"i": i}, id=f"ev-{i}")])
                for i in range(700)
            ]
        )
        assert all(not isinstance(r, Exception) for r in results)
        got = [e async for e in s.read_all()]
        assert sorted(e.data["i"] for e in got) == list(range(700))
        for k in range(13):  # each aggregate's appends in the order given, versions 1, 2, ...
            mine = [e for e in got if e.aggregate_id == f"x{k}"]
            assert [e.id for e in mine] == [f"ev-{i}" for i in range(k, 700, 13)]
            assert [e.version for e in mine] == list(range(1, len(mine) + 1))
