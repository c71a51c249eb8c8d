"""The store's header parser returns exactly what nats-py's own does, on any input, whether
parsed at once or when first read (``HeaderBlock``)."""

from __future__ import annotations

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from eventstore import EventStore, NewEvent, StreamSettings
from eventstore import headers as headers_module
from eventstore.headers import HeaderBlock, parse_header_lines
from eventstore.jetstream import install_parsers as install

# Bytes that matter to the parsing: separators, every ASCII whitespace (str.isspace also
# counts \x1c-\x1f), non-ASCII and invalid UTF-8, plus ordinary name characters.
_ALPHABET = [*b"\r\n:\t\x0b\x0c\x1c\x1d\x1e\x1f -_.aZ09", 0x00, 0x7F, 0xC3, 0xA9, 0xFF, 0x80]
_block = st.lists(st.sampled_from(_ALPHABET), max_size=120).map(bytes)
_line = st.tuples(
    st.sampled_from([b"Nats-Msg-Id", b"X", b"", b" Pad ", b"Bad Name", b"caf\xc3\xa9", b"a\x1cb"]),
    st.sampled_from([b":", b": ", b":\t", b""]),
    st.sampled_from([b"v", b"  spaced  ", b"caf\xc3\xa9", b"\xff\xfe", b"a:b", b""]),
).map(b"".join)
_lines = st.lists(_line, max_size=8).map(lambda ls: b"\r\n".join(ls) + b"\r\n\r\n")


@settings(max_examples=500)
@given(st.one_of(_block, _lines))
def test_same_result_as_nats_py(raw: bytes) -> None:
    """Any block of header lines, well formed or not, parses to nats-py's exact result."""
    expected = Client._parse_header_lines(raw)
    assert parse_header_lines(raw) == expected
    assert parse_header_lines(raw) == expected  # and again, now from the remembered names
    block = HeaderBlock(raw)  # parsed when first read: the same mapping
    assert len(block) == len(expected) and bool(block) == bool(expected)
    assert block == expected and dict(block) == expected
    assert all(block.get(k) == v and k in block for k, v in expected.items())


def test_names_beyond_the_memory_bound_still_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the remembered names are at their bound, new names are checked every time."""
    monkeypatch.setattr(headers_module, "_names", {})
    monkeypatch.setattr(headers_module, "_MAX_NAMES", 2)
    raw = b"".join(b"N%d: %d\r\n" % (i, i) for i in range(10)) + b"Bad Name: x\r\n"
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)
    assert len(headers_module._names) == 2


def test_install_is_per_client_not_per_class() -> None:
    """Only the client it is installed on changes; nats-py's class keeps its parser."""
    ours, theirs = nats.NATS(), nats.NATS()
    assert install(ours)
    assert ours._parse_header_lines is parse_header_lines
    assert theirs._parse_header_lines is not parse_header_lines
    assert Client._parse_header_lines is not parse_header_lines


async def test_store_connection_reads_headers_through_it(
    nats_url: str, settings: StreamSettings
) -> None:
    """A store's connection uses the parser, and the headers JetStream stored read back."""
    async with await EventStore.connect(nats_url, producer="hdr", stream=settings) as store:
        assert store.nc._parse_header_lines is parse_header_lines
        result = await store.append("task", "h-1", NewEvent("Created"))
        batches = [b async for b in store.raw(1)]
        (msg,) = [m for b in batches for m in b]
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == result.ids[0]
        assert msg.headers["Nats-Expected-Last-Subject-Sequence"] == "0"
