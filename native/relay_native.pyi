"""Type stub for relay_native: a sans-IO yamux session (hashicorp/yamux spec.md).

No sockets, no threads, no clock of the caller's: bytes go in through ``receive``,
application calls queue control frames and stream data, and ``take_outgoing`` hands back
the bytes to write (stream data is framed there, fairly across streams).
The session reads the monotonic clock itself (for RTT, window tuning and keepalive).

``receive`` returns *packed events*: a ``bytes`` whose length is a multiple of 16,
each event four native-endian ``uint32``: ``(kind, stream_id, a, b)``. Packing them
lets the compiled byte path walk events without allocating a Python object per frame.
"""

from typing import Final, final

__version__: Final[str]

# ---- event kinds (first uint32 of each packed event) -----------------------------
EVENT_OPENED: Final[int]    # 1: peer opened stream_id (SYN); call accept_stream() to ACK it
EVENT_DATA: Final[int]      # 2: payload for stream_id is input[a : a + b] of this receive() call
EVENT_FIN: Final[int]       # 3: peer half-closed stream_id; no more data will arrive on it
EVENT_RESET: Final[int]     # 4: peer reset (or refused) stream_id; it is gone
EVENT_WRITABLE: Final[int]  # 5: stream_id's unsent backlog fell to <= pending_low_water again
EVENT_CLOSED: Final[int]    # 6: stream_id fully closed both ways and forgotten
EVENT_GOAWAY: Final[int]    # 7: peer sent GoAway; a = code (0 normal, 1 protocol, 2 internal)
EVENT_PONG: Final[int]      # 8: a ping we sent was answered; a = round-trip time in microseconds
EVENT_ACKED: Final[int]     # 9: peer accepted a stream we opened (ACK)

GOAWAY_NORMAL: Final[int]    # 0
GOAWAY_PROTOCOL: Final[int]  # 1
GOAWAY_INTERNAL: Final[int]  # 2

class YamuxError(Exception):
    """Root of every error the session raises.

    ``goaway_code`` is the code sent in the GoAway frame (or that would be) and
    ``name`` a stable identifier such as ``"window_overflow"``. Errors of calls that
    send no GoAway (StreamLimitReached, SessionClosed, UnknownStream) report 2.
    """

    goaway_code: int
    name: str

class ProtocolError(YamuxError):
    """The peer broke the protocol. A GoAway(1) is already queued; the session is dead."""

class InvalidVersion(ProtocolError): ...
class UnknownFrameType(ProtocolError): ...
class InvalidFlags(ProtocolError): ...            # e.g. SYN+ACK together, flags on ping/goaway misuse
class InvalidStreamId(ProtocolError): ...         # wrong parity for a SYN, id 0 on a stream frame, a SYN reusing an id (or >1024 ids below the highest), a frame above the highest peer id
class DuplicateStream(ProtocolError): ...         # SYN on a live stream id
class WindowOverflow(ProtocolError): ...          # send credit would pass 2**32 - 1
class FlowControlViolation(ProtocolError): ...    # data beyond the advertised receive window (incl. oversize SYN)
class StreamResetFlood(ProtocolError): ...        # open-then-reset churn past the configured rate
class SessionBudgetExceeded(ProtocolError): ...   # reserved: the budget caps window growth instead; not raised by 0.1.0
class FrameTooLarge(ProtocolError): ...           # a data frame longer than the largest window we could ever grant
class RefusalFlood(ProtocolError): ...            # opens past the limits while our refusals pile up unread
class PeerStreamLimit(ProtocolError): ...         # a SYN past max_peer_streams

class KeepaliveTimeout(YamuxError):
    """A keepalive ping went unanswered past ``keepalive_timeout_ms``. GoAway(2) queued."""

class StreamLimitReached(YamuxError):
    """open_stream(): ``max_streams`` streams are already open. The session lives on."""

class SessionClosed(YamuxError):
    """open_stream() after GoAway was sent or received; any stream call (send, accept,
    ping, receive) after a fatal error. Existing streams keep working after a GoAway."""

class UnknownStream(YamuxError):
    """A call named a stream id that is not open (already closed, reset or never opened)."""

class StreamClosed(UnknownStream):
    """send() on a stream we already half-closed (close_stream was called)."""

@final
class OutgoingBuffer:
    """The bytes ``Session.take_outgoing()`` hands out, moved out of the session (no copy).

    Read-only, 1-D, format ``"B"`` buffer-protocol object: ``memoryview(buf)``,
    ``bytes(buf)`` (one copy), ``bytearray += buf``, ``sock.send(buf)`` and
    ``struct.unpack_from(fmt, buf)`` all work. ``len(buf)`` is its size, so an empty one is
    falsy. asyncio's selector transports accept only bytes/bytearray/memoryview:
    ``transport.write(memoryview(buf))`` (zero-copy; the view keeps ``buf`` alive).
    It is not ``bytes``: ``buf == b"..."`` is identity comparison, and it has no slicing
    of its own (slice a ``memoryview`` of it instead).
    """

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

class Session:
    def __init__(
        self,
        *,
        client: bool,
        initial_window: int = 256 * 1024,
        max_window: int = 16 * 1024 * 1024,
        session_budget: int = 64 * 1024 * 1024,
        max_frame_payload: int = 16 * 1024,
        max_streams: int = 65536,
        accept_backlog: int = 256,
        keepalive_interval_ms: int = 30_000,
        keepalive_timeout_ms: int = 10_000,
        pending_high_water: int = 1024 * 1024,
        pending_low_water: int = 256 * 1024,
        max_resets_per_second: int = 1000,
        max_peer_streams: int = 0,
    ) -> None:
        """``client`` opens odd stream ids, the server even ones.

        ``max_peer_streams``: the most streams the peer may open in the whole session
        (0: no limit but ``max_streams``); one more is ``PeerStreamLimit`` (GoAway 1),
        raised before anything is allocated for it. An edge allows its agent 1.

        ``keepalive_interval_ms = 0`` disables keepalive pings. ``initial_window`` must be
        at least 256 KiB (the spec's default). Bad values raise ``ValueError``.
        """

    # --- input --------------------------------------------------------------------------
    def receive(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed bytes read from the link; return packed events (see module doc).

        Partial frames are fine: up to 11 header bytes are kept for the next call, and
        payload is reported as it arrives (an EVENT_DATA may hold part of a frame).
        On a protocol violation: GoAway(1) is queued in the outgoing buffer and a
        ``ProtocolError`` subclass is raised; events before the fault are lost, the
        session is dead.
        """

    def take_events(self) -> bytes:
        """Packed events caused by calls rather than input (EVENT_CLOSED when
        close_stream() completes a close the peer had half-done) since the last
        receive()/take_events(); receive() returns these first too."""

    # --- streams ------------------------------------------------------------------------
    def open_stream(self) -> int:
        """Open a stream; queue its SYN (a WindowUpdate carrying extra credit if the
        window is larger than 256 KiB). Returns the new stream id."""

    def accept_stream(self, stream_id: int) -> None:
        """ACK a stream the peer opened (EVENT_OPENED). When ``accept_backlog`` streams
        are still unaccepted at the start of a ``receive`` call, the session itself resets
        every stream the peer opens in that call. Opens within one call are not counted
        against each other: the application gets no chance to accept mid-call."""

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue data (copied) in the stream's backlog; take_outgoing() frames it (split at
        ``max_frame_payload``, within the send window, round-robin with other streams).
        Direct framing: a send of at least 8 KiB on a stream with no backlog, while no
        other stream waits, is framed at once into the outgoing buffer (within the send
        window, up to 256 KiB queued): one copy, not two.

        Returns the part of the backlog beyond the stream's send window, i.e. the bytes
        waiting for the peer's credit (bytes within the window are committed to the next
        take_outgoing()). When it passes ``pending_high_water`` the caller should stop
        reading its source until EVENT_WRITABLE, which receive() reports when credit brings
        that number down to ``pending_low_water``."""

    def close_stream(self, stream_id: int) -> None:
        """Half-close our side. The FIN goes out as its own empty WindowUpdate frame right
        after the frame carrying the last byte of the backlog (in the same take_outgoing(),
        or first in the next one if the budget ran out; never on a data frame, as hashicorp
        sends it). Closing twice is a no-op."""

    def reset_stream(self, stream_id: int) -> None:
        """Reset (RST) at once, dropping any backlog. Resetting an unknown id is a no-op."""

    def set_read_paused(self, stream_id: int, paused: bool) -> None:
        """While paused, received payload of the stream counts as unconsumed and no
        window credit is returned for it: the peer stops once the window is used up.
        Unpausing returns the credit (window update once half the window is consumed)."""

    # --- session ------------------------------------------------------------------------
    def ping(self) -> int:
        """Queue a ping (SYN); its answer arrives as EVENT_PONG. Returns the opaque value."""

    def tick(self) -> int:
        """Drive timers: send a keepalive ping when due; raise KeepaliveTimeout when an
        outstanding ping is older than the timeout. Returns milliseconds until the next
        call is useful."""

    def go_away(self, code: int = 0) -> None:
        """Queue GoAway(code): no new streams either way; existing streams go on."""

    def go_away_draining(self, code: int = 0) -> None:
        """Queue GoAway(code) and a ping behind it, for a side whose live streams finish:
        streams the peer opened before it read the GoAway are still accepted, until the
        ping's answer (``goaway_crossing`` turns False); later ones are refused."""

    def take_outgoing(self, max_bytes: int | None = None) -> OutgoingBuffer:
        """Bytes to write to the link, as an OutgoingBuffer that owns them (``len() == 0``
        if nothing is sendable).

        First every queued frame (window updates, SYN/ACK, FIN, RST, ping answers, GoAway,
        and data frames ``send`` framed directly) in queueing order, then stream data
        framed now, round-robin across streams
        that have backlog and send window: one frame of at most ``max_frame_payload`` per
        stream per round; the rotation continues across calls. Per stream: SYN/ACK before
        its first data, FIN after its last byte, nothing after RST.

        ``max_bytes`` (frame headers included): the result is never longer, except that it
        is never empty while something is sendable: if not even one frame fits, exactly
        one is returned (a 12-byte control frame, or a 13-byte data frame with one payload
        byte). The last data frame may be shortened to fill the budget (a directly framed
        one is split; its rest stays queued first). ``None`` (default):
        everything sendable, moved out without a copy.

        Answers the peer provokes are queued only while the outgoing buffer holds less
        than 320 KiB (``MAX_UNSENT_ANSWERS``): past it, pings are dropped unanswered and an
        open past the limits raises ``RefusalFlood`` (a peer that does not read)."""

    @property
    def outgoing_len(self) -> int:
        """Bytes already framed and waiting: control frames and directly framed data.
        Other stream data is framed by take_outgoing(); see ``has_sendable``/``pending_data``."""
    @property
    def has_events(self) -> bool:
        """Calls queued events (e.g. EVENT_CLOSED) that take_events() would return: the
        byte path checks this once per flush, so a close completed by a call does not wait
        for the link's next input."""
    @property
    def has_sendable(self) -> bool:
        """Some stream has backlog within its send window (O(1)). Flush when
        ``outgoing_len or has_sendable``."""
    @property
    def pending_data(self) -> int:
        """Payload bytes take_outgoing() could frame now: the sum over streams of
        min(backlog, send window). Headers and window-blocked bytes are not counted."""
    @property
    def stream_count(self) -> int: ...
    @property
    def is_closed(self) -> bool:
        """True after a fatal error or once GoAway went both ways and no stream is left."""
    @property
    def local_went_away(self) -> bool: ...
    @property
    def goaway_crossing(self) -> bool:
        """After ``go_away_draining``: the peer may still be opening streams it opened
        before reading our GoAway (they are accepted)."""
    @property
    def remote_went_away(self) -> bool: ...
    @property
    def rtt_us(self) -> int:
        """Smoothed round-trip time from pings, 0 until measured."""

    def direct_room(self, stream_id: int) -> int | None:
        """Bytes a ``send`` on the stream would frame at once now (one copy). None when
        every send takes the backlog whatever the reader does (other streams wait, it has
        a backlog, it is closed or unknown); 0 while the outgoing buffer is full or the
        send window spent. A reader that reads no more than this, and waits for the next
        take while it is 0, keeps a lone bulk stream on the one-copy path."""

    def stream_window(self, stream_id: int) -> tuple[int, int]:
        """(receive window, send window) of a stream, for tests and metrics."""

    def stats(self) -> dict[str, int]:
        """Monotonic counters: frames_in, frames_out, bytes_in, bytes_out (payload),
        data_frames_in, data_frames_out, window_updates_in, window_updates_out,
        pings_in, pings_out, streams_opened_local, streams_opened_remote,
        streams_reset_local, streams_reset_remote, streams_refused (peer-opened streams
        answered with RST: goaway, max_streams, or more than accept_backlog left
        unaccepted after the previous receive), window_stalls (times a stream had backlog
        and zero send window), window_grows, window_shrinks, bytes_framed_directly (payload
        ``send`` framed at once, a part of bytes_out), protocol_errors, goaways_out,
        goaways_in."""
