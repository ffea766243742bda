"""The API's asks between the workers of one edge (relay/edge/worker_asks.py): an answer
larger than a channel message travels in parts, each under the channel's limit, and
comes back whole; parts out of order, too many or too large are dropped, bounded."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.cluster.channel import MAX_MESSAGE, Message, encode
from relay.edge.worker_asks import MAX_ASSEMBLING, MAX_PARTS, PART, SiblingWire


def sent_by(body: str) -> list[Message]:
    sent: list[Message] = []
    wire = SiblingWire(1, 3, sent.append)
    reply = {"event": "answer", "ask": "a1", "node": "1", "body": body}
    asyncio.run(wire.publish_to("0", reply))
    return sent


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=2000))
def test_an_answer_comes_back_whole_from_parts_under_the_channels_limit(
    items: list[str],
) -> None:
    body = json.dumps([{"id": s, "quote": '"\\'} for s in items])  # escapes grow inside JSON
    messages = sent_by(body)
    assert all(len(encode(m)) <= MAX_MESSAGE for m in messages)
    assert all(m["to"] == 0 for m in messages)
    asker = SiblingWire(0, 3, lambda _: None)
    results = [asker.take(json.loads(encode(m))) for m in messages]
    assert results[:-1] == [None] * (len(messages) - 1)
    assert results[-1] == {"event": "answer", "ask": "a1", "node": "1", "body": body}


def test_siblings_are_the_other_workers() -> None:
    assert [s.node_id for s in SiblingWire(1, 3, lambda _: None).nodes()] == ["0", "2"]


def test_a_part_out_of_order_drops_the_answer() -> None:
    messages = sent_by("x" * (3 * PART))
    assert len(messages) == 3
    asker = SiblingWire(0, 2, lambda _: None)
    assert asker.take(messages[0]) is None
    assert asker.take(messages[2]) is None  # part 1 missing: the whole answer is dropped
    assert asker.take(messages[1]) is None  # and a late part 1 starts nothing
    assert asker._parts == {}


def test_an_answer_over_the_largest_is_sent_as_nothing() -> None:
    messages = sent_by("x" * (PART * MAX_PARTS + 1))
    assert len(messages) == 1 and messages[0]["event"]["body"] == "null"


def test_a_claimed_part_count_over_the_largest_is_dropped() -> None:
    asker = SiblingWire(0, 2, lambda _: None)
    event = {"event": "answer", "ask": "a", "node": "1", "body": "x"}
    assert asker.take({"op": "answer", "event": event, "part": 0, "parts": MAX_PARTS + 1}) is None
    assert asker._parts == {}


def test_answers_being_assembled_are_bounded() -> None:
    asker = SiblingWire(0, 2, lambda _: None)
    for i in range(MAX_ASSEMBLING * 3):
        event = {"event": "answer", "ask": f"a{i}", "node": "1", "body": "x"}
        assert asker.take({"op": "answer", "event": event, "part": 0, "parts": 2}) is None
    assert len(asker._parts) == MAX_ASSEMBLING


@pytest.mark.parametrize("message", [{"op": "answer"}, {"op": "answer", "event": "x"}])
def test_a_message_without_an_answer_is_nothing(message: Message) -> None:
    assert SiblingWire(0, 2, lambda _: None).take(message) is None
