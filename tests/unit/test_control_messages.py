"""Control messages round-trip, and every malformed input is a ProtocolViolation."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ProtocolViolation, RelayError
from relay.protocol import (
    MAX_CONTROL_MESSAGE,
    Auth,
    AuthOk,
    Bind,
    Bound,
    CertStatus,
    Message,
    MessageReader,
    Notice,
    Stop,
    decode_message,
)

SAMPLES: list[Message] = [
    Auth(token="rly_x_y", agent_id="a_1", version="relay-agent/0.1.0", hostname="box"),
    AuthOk(session_id="s_1", edge_version="0.1.0", region="eu", token_id="t1"),
    AuthOk("s_2", "0.1.0", "eu", "t1", worker=3, workers=4, beside=0b101),
    AuthOk("s_3", "0.1.0", "eu", "t1", pop="fra-1"),
    Bind(request_id=1, kind="tcp", remote_port=20001, upstream="127.0.0.1:22"),
    Bound(request_id=1, endpoint_id="ep_1", url="tcp://127.0.0.1:20001", remote_port=20001),
    Stop(code="RLY_102", message="token revoked"),
    CertStatus("ep_1", "app.example.com", "failed", "acme", code="RLY_805", message="down"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_message_round_trips_through_the_wire(message: Message) -> None:
    reader = MessageReader()
    assert reader.feed(message.to_wire()) == [message]


def test_reader_reassembles_messages_split_at_every_byte() -> None:
    wire = b"".join(m.to_wire() for m in SAMPLES)
    reader = MessageReader()
    out: list[Message] = []
    for i in range(len(wire)):
        out += reader.feed(wire[i : i + 1])
    assert out == SAMPLES


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "nope"}',
        b'{"type": "bind"}',
        b'{"type": "bind", "request_id": "1", "kind": "tcp"}',
        b'{"type": "bind", "request_id": true, "kind": "tcp"}',
        b'{"type": "bind", "request_id": 1, "kind": "tcp", "surprise": 1}',
        b"\xff\xfe",
    ],
)
def test_malformed_message_is_a_protocol_violation(body: bytes) -> None:
    with pytest.raises(ProtocolViolation) as excinfo:
        decode_message(body)
    assert excinfo.value.code == "RLY_301"


@pytest.mark.parametrize("depth", [5, 100, 60_000])
def test_nesting_deeper_than_the_limit_is_a_protocol_violation(depth: int) -> None:
    """A 60,000-deep body before auth once ended in a RecursionError traceback."""
    body = b'{"type": "notice", "level": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ProtocolViolation, match="nests deeper"):
        decode_message(body)


def test_brackets_inside_strings_are_not_nesting() -> None:
    body = b'{"type": "notice", "level": "warn", "message": "[[[[[[[[{{{{{{{{ \\" [["}'
    assert decode_message(body) == Notice("warn", '[[[[[[[[{{{{{{{{ " [[')


def test_oversize_length_prefix_is_refused_before_buffering() -> None:
    reader = MessageReader()
    with pytest.raises(ProtocolViolation):
        reader.feed(struct.pack(">I", MAX_CONTROL_MESSAGE + 1))


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_but_relay_errors(data: bytes) -> None:
    reader = MessageReader()
    with contextlib.suppress(RelayError):
        reader.feed(data)


def test_auth_ok_carries_a_place_only_to_a_link_told_one() -> None:
    """An agent that predates placement refuses unknown fields: an auth_ok without a
    worker count (link 0, an edge of one process) has the fields it always had."""
    plain = json.loads(AuthOk("s_1", "0.1.0", "eu", "t1").to_wire()[4:])
    assert set(plain) == {"type", "session_id", "edge_version", "region", "token_id"}
    placed = json.loads(AuthOk("s_1", "0.1.0", "eu", "t1", worker=1, workers=2).to_wire()[4:])
    assert (placed["worker"], placed["workers"]) == (1, 2)
    # Its PoP's name only to an agent of protocol 2 (the edge leaves it empty otherwise).
    assert "pop" not in placed
    named = json.loads(AuthOk("s_1", "0.1.0", "eu", "t1", pop="fra-1").to_wire()[4:])
    assert named["pop"] == "fra-1" and "worker" not in named
