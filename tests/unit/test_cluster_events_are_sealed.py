"""Events between cluster nodes (stop or restart a session, reload, check credentials)
go through Redis pub/sub sealed with a key derived from the cluster CA's private key
(relay/cluster/event_seal.py): a node takes only events sealed with its cluster's key,
sent on the channel they arrived on, at most MAX_AGE old, and each once. Anything else
that can PUBLISH on the cluster's Redis is ignored, logged once per reason.

The seal alone first (sans-IO, on a clock the test moves), then two nodes' presence on a
real redis-server."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.cluster.event_seal import MAX_AGE, EventSeal, event_key
from relay.cluster.presence import Presence
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.unit.test_cluster_presence import A, B, eventually, raw_client, raw_numsub, running

pytestmark = pytest.mark.timeout(30)

KEY = event_key(b"the cluster CA's private key, as DER")
OTHER = event_key(b"another cluster's CA key")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@given(st.binary(max_size=2048), st.sampled_from(["relay:events", "relay:to:b"]))
def test_an_event_opens_as_it_was_sealed_once(event: bytes, channel: str) -> None:
    clock = Clock()
    sender, receiver = EventSeal(KEY, clock), EventSeal(KEY, clock)
    sealed = sender.seal(channel, event)
    assert receiver.open(channel, sealed) == event
    assert receiver.open(channel, sealed) is None and receiver.refusal == "replayed"


def test_what_is_not_sealed_by_this_cluster_for_this_channel_now_is_refused() -> None:
    clock = Clock()
    mine, theirs = EventSeal(KEY, clock), EventSeal(OTHER, clock)
    event = b'{"event": "ask", "op": "stop", "session": "sess_1"}'
    receiver = EventSeal(KEY, clock)

    def refusal(data: bytes, channel: str = "relay:events") -> str:
        assert receiver.open(channel, data) is None
        return receiver.refusal

    assert refusal(event) == "not sealed"
    assert refusal(b"RS1 12 34") == "malformed seal"
    assert refusal(theirs.seal("relay:events", event)).startswith("wrong seal")
    sealed = mine.seal("relay:events", event)
    assert refusal(sealed.replace(b"sess_1", b"sess_2")).startswith("wrong seal")
    # One node's message, published again to all of them.
    assert refusal(mine.seal("relay:to:b", event)).startswith("wrong seal")
    late = mine.seal("relay:events", event)
    clock.now += MAX_AGE + 1
    assert refusal(late).startswith("sent more than")
    early = mine.seal("relay:events", event)
    clock.now -= 2 * MAX_AGE + 2
    assert refusal(early).startswith("sent more than")


def test_replays_are_remembered_for_as_long_as_events_are_taken() -> None:
    clock = Clock()
    sender, receiver = EventSeal(KEY, clock), EventSeal(KEY, clock)
    first = sender.seal("relay:events", b"{}")
    assert receiver.open("relay:events", first) == b"{}"
    for i in range(3000):  # the table is pruned as it grows, never of live nonces
        clock.now += MAX_AGE / 3000
        assert receiver.open("relay:events", sender.seal("relay:events", b"%d" % i))
    clock.now -= MAX_AGE / 2  # the first event is still young enough to be taken
    assert receiver.open("relay:events", first) is None
    assert receiver.refusal == "replayed"


@pytest.mark.asyncio
async def test_a_node_takes_its_clusters_events_and_nothing_else(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[dict[str, str]] = []
    a = Presence(redis_server.url, A, list, heartbeat=0.3, on_event=got.append, seal=EventSeal(KEY))
    b = Presence(redis_server.url, B, list, heartbeat=0.3, seal=EventSeal(KEY))
    stranger = Presence(redis_server.url, B, list, heartbeat=0.3, seal=EventSeal(OTHER))
    captured: list[bytes] = []
    with raw_client(redis_server) as r:
        listener = r.pubsub()
        listener.subscribe("relay:events")
        async with running(a, b):
            await eventually(
                lambda: raw_numsub(redis_server, "relay:events") == 3, 3, "all subscribed"
            )
            await b.publish_event({"event": "ask", "op": "stop", "session": "sess_1"})
            await eventually(lambda: len(got) == 1, 2, "a gets b's event")
            for _ in range(20):  # bounded: what the raw subscriber got so far
                message = listener.get_message(timeout=0.1)
                if message is not None and message["type"] == "message":
                    captured.append(message["data"])
                    break
            assert captured, "the raw subscriber saw nothing"
            with caplog.at_level(logging.WARNING, logger="relay.cluster"):
                r.publish("relay:events", b'{"event": "ask", "op": "stop", "session": "s2"}')
                r.publish("relay:events", captured[0])  # a replay
                await stranger.start()
                await stranger.publish_event({"event": "ask", "op": "reload"})
                await stranger.stop()
                await b.publish_to("a", {"event": "last"})
                await eventually(lambda: len(got) == 2, 2, "a gets b's direct event")
        listener.close()
    assert got == [{"event": "ask", "op": "stop", "session": "sess_1"}, {"event": "last"}]
    # Said once by each of a and b (both subscribe), per reason.
    said = [r.getMessage() for r in caplog.records if "ignoring an event" in r.getMessage()]
    assert Counter(s.split(": ", 2)[2] for s in said) == {
        "not sealed (said once)": 2,
        "replayed (said once)": 2,
        "wrong seal (another cluster's CA, or forged) (said once)": 2,
    }
