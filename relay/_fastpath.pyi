"""Stub of the Cython byte path (relay/_fastpath.pyx)."""

import asyncio
from collections.abc import Callable
from typing import Any

LINK_WRITE_HIGH: int
LINK_WRITE_LOW: int
LINK_READ_BUFFER: int
PUMP_READ_BUFFER: int
CHANNEL_HIGH_WATER: int

class Channel:
    @property
    def link(self) -> Link: ...
    @property
    def stream_id(self) -> int: ...

class Link(asyncio.BufferedProtocol):
    session: Any
    transport: asyncio.Transport | None
    loop: asyncio.AbstractEventLoop
    handler: Any
    channels: dict[int, Channel]
    write_paused: bool
    #: Reading stopped: the peer left more than LINK_UNREAD_LIMIT of answers unread.
    unread_paused: bool
    closed: bool
    close_exc: BaseException | None
    pending_high_water: int
    def __init__(
        self,
        session: Any,
        handler: Any,
        loop: asyncio.AbstractEventLoop,
        pending_high_water: int = ...,
    ) -> None: ...
    def schedule_flush(self) -> None: ...
    def fail(self, exc: BaseException) -> None: ...
    def close(self, linger: float = ...) -> None: ...
    def abort(self) -> None: ...
    def open_buffer_channel(self, stream_id: int) -> BufferChannel: ...
    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int: ...
    def pump_count(self) -> int: ...

class Joint(Channel):
    """Two streams on two links joined: each end forwards what its stream receives."""

    held: bool
    done: bool
    def __init__(self, link: Link, stream_id: int, counted: bool = False) -> None: ...
    @staticmethod
    def join(
        a: Link, a_stream: int, b: Link, b_stream: int, count_a: bool = True
    ) -> tuple[Joint, Joint]: ...

class BufferChannel(Channel):
    fin: bool
    reset: bool
    closed: bool
    def __init__(self, link: Link, stream_id: int) -> None: ...
    def buffered(self) -> int: ...
    def peek(self) -> bytes: ...
    def take(self, n: int = -1) -> bytes: ...
    def hold(self) -> None: ...
    def wait(self) -> asyncio.Future[None]: ...

class Pump(Channel, asyncio.BufferedProtocol):
    transport: asyncio.Transport | None
    remote_eof: bool
    finished: bool
    #: Index into KINDS: which traffic counters this pump's bytes go to.
    kind: int
    #: The access log's name for the endpoint (None: no access log line for this pump).
    log_endpoint: str | None
    log_visitor: Any
    #: A visitor's pump: called when the session it was routed to went away before its
    #: socket connected; the protocol to serve the visitor instead (None: abort it).
    reroute: Callable[[], Any] | None
    #: Endpoint series slot, 1..MAX_ENDPOINT_SERIES (0: none); set before the connection
    #: is made, else ValueError.
    metric_slot: int
    def __init__(
        self,
        link: Link,
        stream_id: int = -1,
        header_factory: Callable[[asyncio.BaseTransport], bytes] | None = None,
        preamble: bytes = b"",
        kind: int = 0,
    ) -> None: ...

#: Endpoint kinds, in the order of the traffic counters (StreamProtocol - 1).
KINDS: tuple[str, ...]
#: Upper bounds (seconds) of the stream-open latency histogram's buckets (+Inf after).
OPEN_BUCKETS: tuple[float, ...]

def traffic() -> dict[str, Any]:
    """Counters of the byte path since the process started (see relay/_fastpath.pyx)."""

#: The most endpoints that can have metric series of their own.
MAX_ENDPOINT_SERIES: int

def endpoint_traffic(count: int) -> dict[str, list[int]]:
    """traffic()'s byte and connection counters for endpoint slots 1..count."""

def set_logging(on: bool) -> None: ...
def take_closed() -> tuple[list[tuple[Any, ...]], int]: ...
