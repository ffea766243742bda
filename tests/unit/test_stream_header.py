"""The per-visitor StreamHeader: compact, bounded, strict."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import RelayError, UnsupportedVersion
from relay.protocol import MAX_STREAM_HEADER, StreamHeader, StreamProtocol

text = st.text(max_size=60)


@given(
    text, text, st.sampled_from(list(StreamProtocol)), text, st.dictionaries(text, text, max_size=4)
)
def test_header_round_trips(
    endpoint: str, addr: str, proto: StreamProtocol, name: str, extra: dict[str, str]
) -> None:
    header = StreamHeader(endpoint, addr, proto, name, extra)
    wire = header.to_wire() + b"payload"
    parsed = StreamHeader.parse(wire)
    assert parsed is not None
    assert parsed[0] == header
    assert wire[parsed[1] :] == b"payload"


def test_header_parses_the_same_from_bytes_bytearray_and_memoryview() -> None:
    header = StreamHeader("ep_1", "[::1]:5", StreamProtocol.HTTP, "a.example", {"accept": "*/*"})
    wire = header.to_wire() + b"GET / HTTP/1.1\r\n"
    used = len(wire) - len(b"GET / HTTP/1.1\r\n")
    for data in (wire, bytearray(wire), memoryview(wire)):
        assert StreamHeader.parse(data) == (header, used)


def test_partial_header_asks_for_more() -> None:
    wire = StreamHeader("ep_1", "127.0.0.1:5000").to_wire()
    for cut in range(len(wire)):
        assert StreamHeader.parse(wire[:cut]) is None


def test_unknown_version_is_refused() -> None:
    wire = bytearray(StreamHeader("ep_1", "1.2.3.4:5").to_wire())
    wire[2] = 9
    with pytest.raises(UnsupportedVersion):
        StreamHeader.parse(bytes(wire))


def test_oversize_header_length_is_refused() -> None:
    with pytest.raises(RelayError):
        StreamHeader.parse((MAX_STREAM_HEADER + 1).to_bytes(2, "big") + b"\x01\x01")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_relay_errors(data: bytes) -> None:
    with contextlib.suppress(RelayError):
        StreamHeader.parse(data)
