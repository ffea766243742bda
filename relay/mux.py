"""The asyncio face of a yamux session: configuration, and streams Python can await.

The byte path (visitor and upstream sockets) never comes through here: it lives in
``relay._fastpath``. This module serves the few streams Python reads itself: the control
stream, and an inbound stream until its StreamHeader is parsed.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

import relay_native

from relay._fastpath import BufferChannel, Link, Pump
from relay.errors import ProtocolViolation
from relay.protocol import Message, MessageReader


@dataclass(frozen=True)
class MuxConfig:
    """Every limit of a session, explicit. Defaults follow DESIGN.md."""

    initial_window: int = 256 * 1024
    max_window: int = 16 * 1024 * 1024
    session_budget: int = 64 * 1024 * 1024
    max_frame_payload: int = 16 * 1024
    max_streams: int = 65536
    accept_backlog: int = 256
    keepalive_interval_ms: int = 15_000
    keepalive_timeout_ms: int = 10_000
    pending_high_water: int = 1024 * 1024
    pending_low_water: int = 256 * 1024
    max_resets_per_second: int = 1000
    #: Streams the peer may open in the whole session (0: any number). The edge sets 1:
    #: its agent opens the control stream and nothing else.
    max_peer_streams: int = 0

    def new_session(self, *, client: bool) -> Any:
        return relay_native.Session(client=client, **asdict(self))

    def new_link(self, handler: Any, loop: asyncio.AbstractEventLoop, *, client: bool) -> Any:
        return Link(
            self.new_session(client=client),
            handler,
            loop,
            pending_high_water=self.pending_high_water,
        )


class StreamReset(Exception):
    """The peer reset the stream (or the link died) while we were reading it."""


class MuxStream:
    """A stream read by Python code, on top of a ``BufferChannel``."""

    def __init__(self, link: Any, channel: Any) -> None:
        self.link = link
        self.channel = channel

    @property
    def stream_id(self) -> int:
        return int(self.channel.stream_id)

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered when n < 0); b"" once the peer half-closed."""
        while True:
            if self.channel.buffered():
                return bytes(self.channel.take(n))
            if self.channel.reset:
                raise StreamReset(f"stream {self.stream_id} was reset")
            if self.channel.fin:
                return b""
            await self.channel.wait()

    def hold(self) -> None:
        self.channel.hold()

    def write(self, data: bytes) -> None:
        self.link.send(self.stream_id, data)

    def close(self) -> None:
        if not self.link.closed:
            self.link.session.close_stream(self.stream_id)
            self.link.schedule_flush()

    def reset(self) -> None:
        if not self.link.closed:
            self.link.channels.pop(self.stream_id, None)
            self.link.session.reset_stream(self.stream_id)
            self.link.schedule_flush()


#: Bytes of the control stream parsed at a time (about a hundred small messages).
CONTROL_READ = 4096


class ControlChannel:
    """Length-prefixed control messages over a MuxStream."""

    def __init__(self, stream: MuxStream) -> None:
        self.stream = stream
        self._reader = MessageReader()
        self._pending: list[Message] = []

    async def recv(self) -> Message:
        """The next message; raises ProtocolViolation on garbage and EOFError at the end.
        Reads at most CONTROL_READ bytes at a time: what the peer sent beyond them waits
        as bytes in the stream's buffer, not as parsed messages (a peer whose messages
        wait their turn could otherwise have a window's worth of objects made)."""
        while not self._pending:
            data = await self.stream.read(CONTROL_READ)
            if not data:
                raise EOFError("control stream closed")
            self._pending.extend(self._reader.feed(data))
        return self._pending.pop(0)

    def send(self, message: Message) -> None:
        self.stream.write(message.to_wire())


__all__ = [
    "BufferChannel",
    "ControlChannel",
    "Link",
    "MuxConfig",
    "MuxStream",
    "ProtocolViolation",
    "Pump",
    "StreamReset",
]
