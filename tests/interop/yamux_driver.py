"""Drive a ``relay_native.Session`` over a real TCP socket on 127.0.0.1.

Single-threaded and deterministic: a non-blocking socket, ``selectors`` and a loop
bounded by a deadline and an iteration count. The driver feeds ``receive``, writes
``take_outgoing``, calls ``tick``, records per-stream received bytes and FIN/RESET
flags, and answers the streams the Go peer opens (ops ECHO, AFTR and CTRL of the
stream protocol described in goyamux/main.go).
"""

from __future__ import annotations

import hashlib
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import relay_native as rn

HEADER = struct.Struct(">4sQHH")  # op, size, a, b — the goyamux stream header
READ_CHUNK = 1 << 20
FEED_CHUNK = 256 * 1024
MAX_ITERATIONS = 2_000_000


class PeerGone(AssertionError):
    """The Go peer closed or broke the connection while we still expected traffic."""


def stream_header(op: str, size: int = 0, a: int = 0, b: int = 0) -> bytes:
    return HEADER.pack(op.encode(), size, a, b)


@dataclass
class Stream:
    sid: int
    local: bool  # opened by us
    recv: bytearray = field(default_factory=bytearray)
    fin: bool = False  # peer half-closed
    reset: bool = False  # peer reset (or refused)
    closed: bool = False  # EVENT_CLOSED
    acked: bool = False  # EVENT_ACKED
    writable_events: int = 0
    data_after_fin: int = 0  # bytes seen after EVENT_FIN/EVENT_RESET/our reset: must stay 0
    local_reset: bool = False  # we reset it
    # outgoing data the driver feeds into the session, respecting the backlog
    pending: deque[memoryview] = field(default_factory=deque)
    fin_requested: bool = False
    fin_sent: bool = False
    backlog: int = 0  # last value returned by Session.send
    sent: int = 0  # bytes handed to Session.send
    # for streams the peer opened: the op from its header, once known
    op: str | None = None
    answered_fin: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.recv).hexdigest()


class Driver:
    def __init__(self, sock: socket.socket, session: rn.Session, *, high_water: int) -> None:
        self.sock = sock
        self.session = session
        self.high_water = high_water
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ)
        self.want_write = False
        self.wbuf = bytearray()
        self.rbuf = bytearray(READ_CHUNK)
        self.streams: dict[int, Stream] = {}
        self.opened_by_peer: list[int] = []
        self.ctrl_sid: int | None = None
        self.verdict: bytes | None = None  # what the Go peer wrote on its control stream
        self.goaways: list[int] = []
        self.pongs: list[int] = []
        self.eof = False
        self.link_error: OSError | None = None
        self.describe_peer: Callable[[], str] = lambda: ""
        self.event_counts: dict[int, int] = {}

    # ---- application side ---------------------------------------------------------

    def open(self, header: bytes = b"", data: bytes = b"", *, fin: bool = False) -> Stream:
        sid = self.session.open_stream()
        st = self.streams[sid] = Stream(sid, local=True)
        self.write(sid, header + data, fin=fin)
        return st

    def write(self, sid: int, data: bytes | bytearray | memoryview, *, fin: bool = False) -> None:
        """Queue data for sid; the pump feeds it to the session as the backlog allows."""
        st = self.streams[sid]
        assert not st.fin_requested, f"stream {sid}: write after close"
        if len(data):
            st.pending.append(memoryview(data))
        st.fin_requested = fin

    def finish(self, sid: int) -> None:
        self.streams[sid].fin_requested = True

    def reset(self, sid: int) -> None:
        st = self.streams[sid]
        st.pending.clear()
        st.local_reset = True
        self.session.reset_stream(sid)

    def finished(self, sid: int) -> bool:
        """Closed both ways and forgotten by the session.

        EVENT_CLOSED comes out of receive(); when our FIN is the second one the stream
        ends in close_stream(), so the session no longer knowing the id counts too.
        """
        st = self.streams[sid]
        if st.closed:
            return True
        if not (st.fin and st.fin_sent) or self.wbuf:
            return False
        try:
            self.session.stream_window(sid)
        except rn.UnknownStream:
            return True
        return False

    # ---- the loop -------------------------------------------------------------------

    def run_until(
        self, pred: Callable[[], bool], *, timeout: float, what: str, allow_eof: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(MAX_ITERATIONS):
            self._feed()
            self._flush()
            if pred():
                return
            if self.eof or self.link_error:
                if allow_eof:
                    return
                raise PeerGone(
                    f"link closed ({self.link_error or 'EOF'}) while waiting for {what}\n"
                    f"{self.describe_peer()}"
                )
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; {self.summary()}\n"
                    f"{self.describe_peer()}"
                )
            self._pump(min(0.02, deadline - now))
        raise AssertionError(f"iteration limit reached waiting for {what}")

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end, timeout=seconds + 5, what="time to pass")

    def summary(self) -> str:
        parts = []
        for st in self.streams.values():
            parts.append(
                f"{st.sid}{'L' if st.local else 'R'}:{st.op or ''} recv={len(st.recv)} "
                f"sent={st.sent} backlog={st.backlog} fin={st.fin} rst={st.reset} "
                f"closed={st.closed} pending={sum(len(m) for m in st.pending)}"
            )
        return "streams: " + "; ".join(parts) + f"; goaways={self.goaways} eof={self.eof}"

    def close(self) -> None:
        try:
            self.selector.close()
        finally:
            self.sock.close()

    # ---- internals ----------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        self.session.tick()
        for _key, mask in self.selector.select(timeout):
            if mask & selectors.EVENT_READ:
                self._read()
            if mask & selectors.EVENT_WRITE:
                self._flush()

    def _read(self) -> None:
        for _ in range(8):  # bounded per pump so writes are not starved
            try:
                n = self.sock.recv_into(self.rbuf)
            except BlockingIOError:
                return
            except OSError as e:
                self.link_error = e
                return
            if n == 0:
                self.eof = True
                return
            view = memoryview(self.rbuf)[:n]
            events = self.session.receive(view)
            self._handle(events, view)
            self._feed()
            self._flush()

    def _handle(self, events: bytes, data: memoryview) -> None:
        assert len(events) % 16 == 0, f"packed events of length {len(events)}"
        for kind, sid, a, b in struct.iter_unpack("=4I", events):
            self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
            if kind == rn.EVENT_OPENED:
                assert sid not in self.streams, f"EVENT_OPENED for known stream {sid}"
                self.streams[sid] = Stream(sid, local=False)
                self.opened_by_peer.append(sid)
                self.session.accept_stream(sid)
            elif kind == rn.EVENT_DATA:
                st = self.streams.get(sid)
                assert st is not None, f"EVENT_DATA for unknown stream {sid}"
                assert a + b <= len(data), f"EVENT_DATA {a}+{b} beyond input of {len(data)}"
                if st.fin or st.reset or st.local_reset:
                    st.data_after_fin += b
                st.recv += data[a : a + b]
                if not st.local:
                    self._serve(st)
            elif kind == rn.EVENT_FIN:
                st = self.streams[sid]
                assert not st.fin, f"second EVENT_FIN on stream {sid}"
                st.fin = True
                if not st.local:
                    self._serve(st)
            elif kind == rn.EVENT_RESET:
                st = self.streams.setdefault(sid, Stream(sid, local=False))
                st.reset = True
                st.pending.clear()
            elif kind == rn.EVENT_WRITABLE:
                st = self.streams[sid]
                st.writable_events += 1
                st.backlog = 0
            elif kind == rn.EVENT_CLOSED:
                self.streams[sid].closed = True
            elif kind == rn.EVENT_GOAWAY:
                self.goaways.append(a)
            elif kind == rn.EVENT_PONG:
                self.pongs.append(a)
            elif kind == rn.EVENT_ACKED:
                self.streams[sid].acked = True
            else:
                raise AssertionError(f"unknown event kind {kind} (stream {sid}, {a}, {b})")

    def _serve(self, st: Stream) -> None:
        """Answer a stream the Go peer opened, by the op in its header."""
        if st.op is None:
            if len(st.recv) < HEADER.size:
                assert not st.fin, f"stream {st.sid}: FIN before a full header"
                return
            op, _size, _a, _b = HEADER.unpack_from(st.recv)
            st.op = op.decode()
            del st.recv[: HEADER.size]
            if st.op == "CTRL":
                self.ctrl_sid = st.sid
            else:
                assert st.op in ("ECHO", "AFTR"), f"stream {st.sid}: unexpected op {st.op!r}"
        if st.op == "ECHO" and st.recv:
            self.write(st.sid, bytes(st.recv))
            st.recv.clear()
        if st.fin and not st.answered_fin:
            st.answered_fin = True
            if st.op == "AFTR":
                self.write(st.sid, bytes(st.recv), fin=True)
            elif st.op == "CTRL":
                self.verdict = bytes(st.recv)
                self.finish(st.sid)
            else:
                self.finish(st.sid)

    def _feed(self) -> None:
        for st in self.streams.values():
            if st.reset or st.local_reset or st.fin_sent:
                continue
            while st.pending and st.backlog <= self.high_water:
                head = st.pending[0]
                chunk, rest = head[:FEED_CHUNK], head[FEED_CHUNK:]
                st.backlog = self.session.send(st.sid, chunk)
                st.sent += len(chunk)
                if len(rest):
                    st.pending[0] = rest
                else:
                    st.pending.popleft()
            if st.fin_requested and not st.pending:
                self.session.close_stream(st.sid)
                st.fin_sent = True

    def _flush(self) -> None:
        out = self.session.take_outgoing()
        if out:
            self.wbuf += out
        while self.wbuf:
            try:
                n = self.sock.send(self.wbuf)
            except BlockingIOError:
                break
            except OSError as e:
                self.link_error = e
                self.wbuf.clear()
                break
            del self.wbuf[:n]
        want = bool(self.wbuf)
        if want != self.want_write:
            self.want_write = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.selector.modify(self.sock, events)


def split_duplex_reply(st: Stream, size: int) -> dict[str, Any]:
    """Parse a DPLX reply: Q (size bytes) | sha256(Q) | sha256(P) | len(P) u64."""
    body = bytes(st.recv)
    assert len(body) == size + 72, f"stream {st.sid}: DPLX reply of {len(body)} B, want {size + 72}"
    q = body[:size]
    return {
        "q_ok": hashlib.sha256(q).digest() == body[size : size + 32],
        "peer_sha_of_ours": body[size + 32 : size + 64].hex(),
        "peer_len_of_ours": int.from_bytes(body[size + 64 :], "big"),
    }
