"""Messages between the supervisor and one worker: JSON objects, one per packet, over an
inherited ``SOCK_SEQPACKET`` socket pair (packets keep their bounds; the pair needs no
address and no one else can reach it)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("relay.cluster")

#: The largest message: a claim or a notice is well under 2 KiB; a worker's banner too.
#: A worker's ``state`` report names every member of a key, so the members one key may
#: have on an edge process are derived from this (relay/edge/members.py
#: MAX_MEMBERS_PER_KEY).
MAX_MESSAGE = 64 * 1024
#: The most one end keeps queued (bytes of encoded messages) for a peer that does not
#: read: a SIGSTOPped worker or supervisor, or one whose loop is stuck. Far above a
#: normal burst: a worker's start queues the whole ``where`` table (about 100 bytes a
#: name, so some 300,000 names) while it imports. Python's overhead per queued message
#: at most about doubles the memory. See :class:`Channel` for what a full queue does.
MAX_QUEUED = 32 * 1024 * 1024

Message = dict[str, Any]


class ChannelError(Exception):
    """A packet that is not a message of this channel."""


def encode(message: Message) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ChannelError(f"message of {len(data)} bytes (at most {MAX_MESSAGE})")
    return data


def decode(data: bytes) -> Message:
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChannelError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ChannelError("not a message (an object with an 'op')")
    return message


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the worker's end, inheritable)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


class Channel:
    """One end. ``on_message`` gets each message; ``on_closed`` once, when the other end
    is gone (its process exited).

    What the kernel does not take waits in a queue of at most ``max_queued`` bytes. A
    message that would pass it means the peer reads nothing (stuck). With ``on_full``
    (the supervisor's end) the channel closes, freeing the queue, and calls it once: the
    supervisor kills that worker and starts it afresh. Without (a worker's end: it
    cannot restart its supervisor, and draining every worker for a supervisor that may
    only be paused would cut every visitor) such messages are dropped and logged once
    per stall: a claim then times out, a state report is lost until the key's next one.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Message], None],
        on_closed: Callable[[], None],
        *,
        on_full: Callable[[], None] | None = None,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self._on_full = on_full
        self.max_queued = max_queued
        self._queue: collections.deque[bytes] = collections.deque()
        #: Bytes in ``_queue``.
        self.queued = 0
        #: Messages dropped since the peer last read (no ``on_full`` only).
        self.dropped = 0
        self._closed = False
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: Message) -> None:
        if self._closed:
            return
        data = encode(message)
        if self.queued + len(data) > self.max_queued:
            self._full()
            return
        self._queue.append(data)
        self.queued += len(data)
        if len(self._queue) == 1:
            self._flush()

    def _full(self) -> None:
        if self._on_full is not None:
            self.close()
            self._on_full()
            return
        if not self.dropped:
            log.error(
                "the other end of a channel reads nothing (%d bytes queued); dropping "
                "messages to it until it reads again",
                self.queued,
            )
        self.dropped += 1

    def _flush(self) -> None:
        while self._queue:
            try:
                self.sock.send(self._queue[0])
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._writable)
                return
            except OSError:
                self._close()
                return
            self.queued -= len(self._queue.popleft())
        if self.dropped:  # every queued message went: the peer reads again
            log.warning(
                "the other end of a channel reads again; %d messages were dropped", self.dropped
            )
            self.dropped = 0

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._flush()

    def _readable(self) -> None:
        for _ in range(256):
            try:
                data = self.sock.recv(MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close()
                return
            if not data:
                self._close()
                return
            try:
                message = decode(data)
            except ChannelError as exc:
                log.warning("dropped a message: %s", exc)
                continue
            self._on_message(message)
            if self._closed:
                return

    def _close(self) -> None:
        if self._closed:
            return
        self.close()
        self._on_closed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self.queued = 0
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
