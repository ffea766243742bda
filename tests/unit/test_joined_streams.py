"""Two streams on two links joined by ``relay._fastpath.Joint`` (as a node joins a stream
from another node to its agent's): bytes both ways arrive whole (hash-checked), FIN and
RST cross the joint, and a receiver that stops reading holds the sender back instead of
growing the joint's buffers.

X ══ link 1 ══ Y ─joint─ Y ══ link 2 ══ Z, each link over a socket pair in one loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from relay._fastpath import BufferChannel, Joint
from relay.mux import MuxConfig
from tests.unit.test_agent_visitor_streams import EdgeSide

MUX = MuxConfig()


class Handler(EdgeSide):
    """A link's Python side: accepts and records the streams the peer opens."""

    def __init__(self) -> None:
        self.link: Any = None
        self.opened: asyncio.Queue[int] = asyncio.Queue()

    def stream_opened(self, stream_id: int) -> None:
        self.link.session.accept_stream(stream_id)
        self.opened.put_nowait(stream_id)


#: Every link a scenario made, aborted when it ends (their keepalive timers would
#: otherwise keep the loop from closing).
MADE: list[Any] = []


async def linked() -> tuple[Any, Any, Handler]:
    """A link over a socket pair: (client side, server side, the server's handler)."""
    loop = asyncio.get_running_loop()
    one, two = socket.socketpair()
    handler = Handler()
    client = MUX.new_link(Handler(), loop, client=True)
    server = MUX.new_link(handler, loop, client=False)
    await loop.connect_accepted_socket(lambda: client, one)
    await loop.connect_accepted_socket(lambda: server, two)
    MADE.extend((client, server))
    return client, server, handler


class Joined:
    """X's stream on link 1, joined at Y to Z's stream on link 2."""

    x: Any
    z: Any
    x_channel: BufferChannel
    z_channel: BufferChannel
    ends: tuple[Joint, Joint]

    @classmethod
    async def make(cls) -> Joined:
        self = cls()
        self.x, y1, y1_handler = await linked()
        y2, self.z, z_handler = await linked()
        x_stream = self.x.session.open_stream()
        self.x_channel = self.x.open_buffer_channel(x_stream)
        self.x.send(x_stream, b"")  # the SYN goes out with the first flush
        y_stream = await asyncio.wait_for(y1_handler.opened.get(), 5)
        y2_stream = y2.session.open_stream()
        self.ends = Joint.join(y1, y_stream, y2, y2_stream)
        y2.schedule_flush()
        z_stream = await asyncio.wait_for(z_handler.opened.get(), 5)
        self.z_channel = self.z.open_buffer_channel(z_stream)
        return self


async def read_all(channel: BufferChannel, size: int, within: float = 20) -> bytes:
    got = bytearray()
    async with asyncio.timeout(within):
        while len(got) < size and not channel.reset:
            if channel.buffered() == 0:
                if channel.fin:
                    break
                await channel.wait()
            got += channel.take()
    return bytes(got)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        try:
            await asyncio.wait_for(scenario(), 60)
        finally:
            links, MADE[:] = list(MADE), []
            for link in links:
                if link.transport is not None:
                    link.transport.abort()
            await asyncio.sleep(0)

    uvloop.run(bounded())


def test_bytes_cross_the_joint_whole_both_ways_and_fin_follows() -> None:
    async def scenario() -> None:
        j = await Joined.make()
        up = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(200_000))  # 6.4 MB
        down = up[::-1][:3_000_000]
        j.x.send(j.x_channel.stream_id, up)
        j.z.send(j.z_channel.stream_id, down)
        got_up, got_down = await asyncio.gather(
            read_all(j.z_channel, len(up)), read_all(j.x_channel, len(down))
        )
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        j.x.session.close_stream(j.x_channel.stream_id)
        j.x.schedule_flush()
        async with asyncio.timeout(5):
            while not j.z_channel.fin:
                await j.z_channel.wait()

    run(scenario)


def test_a_reset_on_one_side_resets_the_other() -> None:
    async def scenario() -> None:
        j = await Joined.make()
        j.z.session.reset_stream(j.z_channel.stream_id)
        j.z.schedule_flush()
        async with asyncio.timeout(5):
            while not j.x_channel.reset:
                await j.x_channel.wait()
        assert all(end.done for end in j.ends)

    run(scenario)


def test_a_receiver_that_does_not_read_holds_the_sender_back() -> None:
    async def scenario() -> None:
        j = await Joined.make()
        near, _far = j.ends
        # Z reads nothing: its channel fills, then link 2's stream backlog at Y, then
        # the joint withholds link 1's credit, and X's bytes wait at X.
        chunk = b"\0" * 65536
        for _ in range(400):  # 25 MiB offered, bounded
            j.x.send(j.x_channel.stream_id, chunk)
            await asyncio.sleep(0)
        async with asyncio.timeout(10):
            while not near.held:
                await asyncio.sleep(0.01)
        # Reading resumes the flow: everything offered arrives, in order.
        got = await read_all(j.z_channel, 400 * 65536)
        assert got == chunk * 400
        assert not near.held

    run(scenario)
