"""What presence reads from Redis is bounded before it is parsed, in bytes and in what the
parse would make of them (relay/cluster/presence.py ``_fits``): ``[[],[],...]`` is three
bytes per list and some 64 bytes of Python objects each, so a names key or an event within
its byte cap would cost every node that reads it ~20 times its size before its item count
is checked. Such a payload is refused unparsed; valid ones at the caps, brackets, commas
and colons inside their strings included, are still taken."""

from __future__ import annotations

import hashlib
import json
import logging
import tracemalloc
from collections.abc import Callable
from functools import partial

import pytest

from relay.cluster import presence as presence_module
from relay.cluster.presence import NodeInfo, Presence

A = NodeInfo("a", "r1", "10.0.0.1:7443")


def node_key(blob: bytes) -> bytes:
    version = hashlib.sha256(blob).hexdigest()[:16]
    return json.dumps({"region": "r1", "link": "10.0.0.9:7443", "version": version}).encode()


def peak_of(work: Callable[[], object]) -> tuple[object, int]:
    """What ``work`` returns, and the most memory it held at once."""
    tracemalloc.start()
    try:
        got = work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return got, peak


def test_a_names_key_is_refused_unparsed_when_it_would_expand_past_max_names() -> None:
    hostile = [
        b"[" + b",".join([b"[]"] * 1_500_000) + b"]",  # lists: ~64 bytes each of 3
        b"[" + b",".join([b'"ab"'] * 1_000_000) + b"]",  # strings: ~60 bytes each of 5
    ]
    for blob in hostile:
        assert len(blob) < presence_module.MAX_NAMES_KEY
        parsed, peak = peak_of(partial(presence_module._parse, "evil", node_key(blob), blob))
        assert parsed is None
        assert peak < 4 * len(blob), f"refusing {len(blob)} bytes peaked at {peak} bytes"

    # MAX_NAMES names, each with every separator JSON has inside its strings (a rewrite
    # with a port, an agent id of brackets, braces and commas): all taken.
    share = 'agent:[{"a":1},[2]]\\'
    name = ["sni", "x.example.com", "tls", "localhost:8080", "owner-1", share]
    names = [[name[0], f"n{i}.example.com", *name[2:]] for i in range(presence_module.MAX_NAMES)]
    blob = json.dumps(names, separators=(",", ":")).encode()
    assert len(blob) < presence_module.MAX_NAMES_KEY
    parsed = presence_module._parse("good", node_key(blob), blob)
    assert parsed is not None
    _, got = parsed
    assert len(got) == presence_module.MAX_NAMES
    assert (got[7].hostname, got[7].host_rewrite, got[7].share) == (
        "n7.example.com",
        "localhost:8080",
        share,
    )
    # One name more is refused, unparsed or not.
    names.append(names[0])
    blob = json.dumps(names, separators=(",", ":")).encode()
    assert presence_module._parse("good", node_key(blob), blob) is None


def test_an_event_is_refused_unparsed_when_it_would_expand_past_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[dict[str, str]] = []
    node = Presence("redis://127.0.0.1:1", A, list, on_event=got.append)
    caplog.set_level(logging.DEBUG, logger="relay.cluster.presence")
    data = b"[" + b",".join([b"[]"] * 1_500_000) + b"]"
    assert len(data) < presence_module.MAX_EVENT
    _, peak = peak_of(lambda: node._event(data))
    assert peak < 4 * len(data), f"refusing {len(data)} bytes peaked at {peak} bytes"
    many = json.dumps({f"k{i}": "v" for i in range(1_000_000)}).encode()
    _, peak = peak_of(lambda: node._event(many))
    assert peak < 4 * len(many), f"refusing {len(many)} bytes peaked at {peak} bytes"
    assert got == []
    # Said once, however many come.
    refused = [m for m in caplog.messages if "ignoring an event of" in m]
    assert len(refused) == 1, refused

    # An answer listing many sessions is one long string of JSON: its brackets, braces,
    # commas and colons are not values of the event, and it is delivered.
    sessions = [{"id": f"s{i}", "tunnels": [{"url": f"https://t{i}.example.com"}]}
                for i in range(50_000)]  # fmt: skip
    answer = {"event": "answer", "ask": "q1", "node": "b", "body": json.dumps(sessions)}
    node._event(json.dumps(answer).encode())
    assert got == [answer]
