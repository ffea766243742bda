"""relay/cluster/channel.py: supervisor ↔ worker messages keep their bounds, and what is
not a message is dropped with a warning, not acted on."""

from __future__ import annotations

import asyncio

import pytest

from relay.cluster.channel import (
    MAX_MESSAGE,
    Channel,
    ChannelError,
    Message,
    decode,
    encode,
    socket_pair,
)

pytestmark = pytest.mark.timeout(30)


def test_messages_round_trip() -> None:
    message = {"op": "claim", "id": 7, "key": "http:a.x", "token": "t", "agent": "a"}
    assert decode(encode(message)) == message


@pytest.mark.parametrize("data", [b"", b"[]", b'{"id": 1}', b"\xff", b'{"op": 3}'])
def test_what_is_not_a_message_is_refused(data: bytes) -> None:
    with pytest.raises(ChannelError):
        decode(data)


def test_an_oversized_message_is_refused() -> None:
    with pytest.raises(ChannelError):
        encode({"op": "ready", "banner": ["x" * MAX_MESSAGE]})


def test_both_ends_hear_each_other_and_the_end() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket_pair()
        heard: list[Message] = []
        closed = asyncio.Event()
        supervisor = Channel(ours, loop, heard.append, closed.set)
        worker_heard: list[Message] = []
        worker = Channel(theirs, loop, worker_heard.append, lambda: None)
        worker.sock.send(b"not json")  # dropped, the channel goes on
        for i in range(500):  # more than one socket buffer's worth, queued and flushed
            worker.send({"op": "live", "key": f"http:{i}.x", "live": True})
        supervisor.send({"op": "where", "key": "http:a.x", "workers": [0]})
        for _ in range(200):
            if len(heard) == 500 and worker_heard:
                break
            await asyncio.sleep(0.01)
        assert [m["key"] for m in heard] == [f"http:{i}.x" for i in range(500)]
        assert worker_heard == [{"op": "where", "key": "http:a.x", "workers": [0]}]
        worker.close()
        await asyncio.wait_for(closed.wait(), 5)
        supervisor.close()

    asyncio.run(main())
