"""OwnKey (relay/cluster/own_key.py): another live process writing this node's presence
key is said, at most once a minute, with what it says of itself; the first write (the key
may hold this node's own from before a restart), a Redis restarted empty, and an older
value of this very process (a Redis restored from its files, a promoted replica that
missed a write) are not taken for it."""

from __future__ import annotations

import json

from relay.cluster.own_key import SAY_AGAIN_AFTER, OwnKey
from tests.unit.test_refused_binds_have_a_budget_per_token import Clock

FIELDS = {"region": "eu", "link": "10.0.0.1:7100", "version": "v1", "count": 0}


def other_value(link: str = "10.0.0.2:7100") -> bytes:
    return json.dumps({**FIELDS, "link": link, "instance": "f00d"}).encode()


def test_this_process_alone_is_never_taken_for_another() -> None:
    own = OwnKey("fra-1", Clock())
    before_restart = other_value()  # this node's own value, from before it restarted
    value = own.value(FIELDS)
    assert own.written(value, before_restart) is None  # the first write is not judged
    for _ in range(5):
        assert own.written(value, value) is None
    assert own.written(value, None) is None  # a Redis restarted empty, or a key expired
    # The names changed (a new value each time) and Redis went back to an older one of
    # this process (restored from its files, or a replica that missed the last write).
    older = own.value({**FIELDS, "version": "v0"})
    newer = own.value({**FIELDS, "version": "v2"})
    assert own.written(newer, value) is None
    assert own.written(own.value({**FIELDS, "version": "v3"}), older) is None
    assert own.conflicts == 0 and own.other == {}


def test_another_writer_is_said_once_a_minute_while_it_lasts() -> None:
    clock = Clock()
    own = OwnKey("fra-1", clock)
    value = own.value(FIELDS)
    own.written(value, None)
    said = own.written(value, other_value())
    assert said is not None
    assert "relay:node:fra-1" in said and "link 10.0.0.2:7100, region eu" in said
    assert "give each PoP its own node_id" in said
    assert own.conflicts == 1 and own.other["link"] == "10.0.0.2:7100"
    # The other keeps writing: counted each time, said again only after a minute.
    clock.now += SAY_AGAIN_AFTER / 2
    assert own.written(value, other_value()) is None
    clock.now += SAY_AGAIN_AFTER / 2
    assert own.written(value, other_value()) is not None
    assert own.conflicts == 3


def test_what_the_other_writer_says_of_itself_is_bounded() -> None:
    own = OwnKey("fra-1", Clock())
    own.written(own.value(FIELDS), None)
    said = own.written(own.value(FIELDS), other_value(link="x" * 10_000))
    assert said is not None and len(said) < 600
    # Not a node's value at all: counted, said nothing of (and within the minute).
    assert own.written(own.value(FIELDS), b"\xff not json") is None
    assert own.other == {}
    assert own.conflicts == 2


def test_each_process_marks_its_value_as_its_own() -> None:
    one, two = OwnKey("fra-1"), OwnKey("fra-1")
    assert one.value(FIELDS) != two.value(FIELDS)  # same fields, another process
    assert json.loads(one.value(FIELDS))["link"] == "10.0.0.1:7100"
