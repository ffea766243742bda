"""Passing a visitor's socket to the worker that holds its endpoint (SCM_RIGHTS).

A worker that accepted a visitor for an endpoint another worker holds sends the socket
itself — and the bytes it already read (an HTTP head; on the TLS port nothing, the
ClientHello was only peeked) — in one datagram to that worker's inbox, a Unix datagram
socket in a directory only the edge's user can enter. No byte of the visitor's traffic
is relayed between workers afterwards: the receiver owns the socket.

A datagram is atomic and Unix datagrams are reliable (a full inbox is ``EAGAIN`` for the
sender, never a silent drop), so a handoff either arrives whole or the sender knows.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("relay.cluster")

#: Bytes read before the visitor was handed over that may travel with it. The HTTP
#: listener reads at most ``http_max_head`` plus one 16 KiB read before it routes (see
#: HttpVisitor), and ``http_max_head`` is capped well below this.
MAX_CARRIED = 160 * 1024
#: Each datagram: magic, front (its high bit: the visitor may be handed on once more),
#: key length, then the key and the carried bytes.
_MAGIC = b"RH1"
_AGAIN = 0x80
_HEAD = struct.Struct("!3sBH")
#: The receive buffer's size: the largest datagram a sender may send.
MAX_DATAGRAM = _HEAD.size + 1024 + MAX_CARRIED
#: Kernel buffer per inbox: several largest handoffs queue before a sender sees EAGAIN.
INBOX_BUFFER = 4 * MAX_DATAGRAM
#: Handoffs received per wake-up, so other work gets its turn.
PER_WAKEUP = 64
#: Descriptors one datagram may bring; a handoff brings one, more is refused.
MAX_FDS = 4
_FD = struct.Struct("i")

FRONTS = ("http", "tls", "tcp")


class HandoffError(Exception):
    """A datagram that is not a handoff, or a handoff that could not be sent."""


@dataclass(frozen=True)
class Handoff:
    """Where a handed-over visitor goes: ``front`` (``http``: the HTTP listener, with
    ``carried`` its bytes already read; ``tls``: the TLS port; ``tcp``: a TCP endpoint
    whose members here are gone while another worker's serve) and the endpoint ``key``
    it was routed by.

    ``again``: the worker it reaches may hand it on once more, when its own members of
    ``key`` take no visitors there while another worker's do. That is a visitor handed
    in the moment between a member starting to drain and the supervisor's ``where``
    reaching the sender. A visitor handed on is sent with ``again`` false, so two workers
    whose views disagree cannot pass it back and forth."""

    front: str
    key: str
    carried: bytes = b""
    again: bool = True

    def encode(self) -> bytes:
        key = self.key.encode("utf-8")
        if self.front not in FRONTS:
            raise HandoffError(f"unknown front {self.front!r}")
        if len(key) > 1024:
            raise HandoffError("endpoint key too long")
        if len(self.carried) > MAX_CARRIED:
            raise HandoffError(f"{len(self.carried)} carried bytes (at most {MAX_CARRIED})")
        front = FRONTS.index(self.front) | (_AGAIN if self.again else 0)
        return _HEAD.pack(_MAGIC, front, len(key)) + key + self.carried

    @classmethod
    def decode(cls, data: bytes) -> Handoff:
        if len(data) < _HEAD.size:
            raise HandoffError("short handoff datagram")
        magic, flagged, key_len = _HEAD.unpack_from(data)
        front = flagged & ~_AGAIN
        if magic != _MAGIC or front >= len(FRONTS) or len(data) < _HEAD.size + key_len:
            raise HandoffError("not a handoff datagram")
        end = _HEAD.size + key_len
        try:
            key = data[_HEAD.size : end].decode("utf-8")
        except UnicodeDecodeError:
            raise HandoffError("handoff key is not UTF-8") from None
        return cls(FRONTS[front], key, data[end:], bool(flagged & _AGAIN))


def inbox_path(run_dir: Path, worker: int) -> Path:
    return run_dir / f"worker-{worker}.sock"


#: Told of each visitor dropped while it waited (its front, and the duplicate descriptor
#: it was kept by, which the outbox closes right after): the owner may answer it first.
#: Called from the event loop; must not close the descriptor.
OnDropped = Callable[[str, int], None]


class Outbox:
    """Sends visitors to other workers' inboxes: one socket connected to each inbox.

    Linux queues at most ``net.unix.max_dgram_qlen`` datagrams (often 10) in an inbox,
    whatever its buffer: a burst of visitors while the receiving worker is busy gets
    EAGAIN. Those wait here, in order, with a duplicate of their descriptor, until the
    inbox has room (a connected datagram socket polls writable then), up to
    ``MAX_PENDING`` per worker; only past that, or when the worker is gone, does a send
    fail. A visitor that waited in vain (MAX_PENDING_FOR passed, its worker went, or the
    outbox closed) is given to ``on_dropped`` before its duplicate closes: the sender
    already said yes to it, so only its owner can still answer it (an HTTP visitor's
    503)."""

    def __init__(
        self,
        run_dir: Path,
        loop: asyncio.AbstractEventLoop,
        on_dropped: OnDropped | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.loop = loop
        self.on_dropped = on_dropped
        self._targets: dict[int, _Target] = {}
        #: Visitors that waited for room in an inbox (a burst met a busy worker), and of
        #: those the ones dropped: after MAX_PENDING_FOR (a worker that read none), or
        #: when their worker went or this outbox closed.
        self.queued = 0
        self.dropped = 0

    def send(self, worker: int, visitor: socket.socket | int, handoff: Handoff) -> None:
        """Hand ``visitor`` (a socket or its descriptor) to ``worker``. The caller still
        owns and closes its own descriptor: the datagram carries a duplicate. Raises
        HandoffError when the worker cannot take it (gone, or too far behind)."""
        fd = visitor if isinstance(visitor, int) else visitor.fileno()
        target = self._targets.get(worker)
        if target is None:
            target = self._targets[worker] = _Target(self, worker)
        target.send(handoff.encode(), fd, handoff.front)

    def pending(self) -> int:
        return sum(len(t.pending) for t in self._targets.values())

    def close(self) -> None:
        for target in self._targets.values():
            target.close()
        self._targets.clear()


#: Visitors waiting for room in one worker's inbox before sends to it fail, and the
#: bytes they carry (each up to MAX_CARRIED: 1,024 of those would be 165 MiB).
MAX_PENDING = 1024
MAX_PENDING_BYTES = 16 * 1024 * 1024
#: How long a visitor waits for a worker that does not read its inbox (a stalled loop,
#: a stopped process) before it is dropped: it has been waiting for an answer meanwhile.
MAX_PENDING_FOR = 10.0


class _Waiting(NamedTuple):
    """A visitor queued for a full inbox: its datagram, our duplicate of its descriptor,
    its front (what on_dropped needs to answer it) and when it was queued."""

    data: bytes
    fd: int
    front: str
    since: float


class _Target:
    def __init__(self, outbox: Outbox, worker: int) -> None:
        self.outbox = outbox
        self.worker = worker
        self.address = str(inbox_path(outbox.run_dir, worker))
        self.sock: socket.socket | None = None
        #: Oldest first.
        self.pending: collections.deque[_Waiting] = collections.deque()
        self.pending_bytes = 0
        self._watching = False
        self._expiry: asyncio.TimerHandle | None = None

    def send(self, data: bytes, fd: int, front: str) -> None:
        if self.pending:
            self._queue(data, fd, front)
            return
        try:
            self._send_now(data, fd)
        except BlockingIOError:
            self._queue(data, fd, front)

    def _send_now(self, data: bytes, fd: int) -> None:
        """Raises BlockingIOError when the inbox is full, HandoffError when it is gone."""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))]
        for attempt in range(2):
            sock = self._connected()
            try:
                sock.sendmsg([data], rights)
                return
            except (BlockingIOError, InterruptedError):
                raise BlockingIOError from None
            except OSError as exc:
                # The worker was started again: its inbox is a new socket at the same
                # path. Connect to that one, once.
                self._disconnect()
                if attempt or exc.errno not in _RECONNECT:
                    raise HandoffError(
                        f"worker {self.worker} cannot take a visitor: {exc}"
                    ) from None

    def _connected(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self.address)
            except OSError as exc:
                sock.close()
                raise HandoffError(f"worker {self.worker} cannot take a visitor: {exc}") from None
            self.sock = sock
        return self.sock

    def _disconnect(self) -> None:
        self._unwatch()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _queue(self, data: bytes, fd: int, front: str) -> None:
        if len(self.pending) >= MAX_PENDING:
            raise HandoffError(f"worker {self.worker} is {MAX_PENDING} visitors behind")
        if self.pending_bytes + len(data) > MAX_PENDING_BYTES:
            raise HandoffError(
                f"worker {self.worker} is {self.pending_bytes} bytes of visitors behind"
            )
        try:
            duplicate = os.dup(fd)
        except OSError as exc:  # at the descriptor limit
            raise HandoffError(f"cannot keep a visitor for worker {self.worker}: {exc}") from None
        loop = self.outbox.loop
        self.pending.append(_Waiting(data, duplicate, front, loop.time()))
        self.pending_bytes += len(data)
        self.outbox.queued += 1
        if self._expiry is None:
            self._expiry = loop.call_later(MAX_PENDING_FOR, self._expire)
        self._watch()

    def _expire(self) -> None:
        """Drop the visitors that waited MAX_PENDING_FOR, and look again when the next
        one's time is up."""
        self._expiry = None
        loop = self.outbox.loop
        dropped = self._drop(loop.time())
        if dropped:
            log.warning(
                "worker %d read no visitor for %gs; dropped %d waiting", self.worker,
                MAX_PENDING_FOR, dropped,
            )  # fmt: skip
        if self.pending:
            due = self.pending[0].since + MAX_PENDING_FOR - loop.time()
            self._expiry = loop.call_later(max(due, 0.0), self._expire)

    def _sent(self) -> None:
        """The oldest waiting visitor is in the inbox now: the datagram carries its own
        descriptor, so ours goes."""
        waiting = self.pending.popleft()
        self.pending_bytes -= len(waiting.data)
        os.close(waiting.fd)

    def _drop(self, now: float | None = None) -> int:
        """Drop waiting visitors, oldest first: every one, or those that have waited
        MAX_PENDING_FOR at ``now``; how many went. Each is given to the owner's
        ``on_dropped`` (an HTTP visitor is owed an answer) before our duplicate closes."""
        on_dropped = self.outbox.on_dropped
        dropped = 0
        failure: Exception | None = None
        while self.pending and (now is None or now - self.pending[0].since >= MAX_PENDING_FOR):
            waiting = self.pending.popleft()
            self.pending_bytes -= len(waiting.data)
            dropped += 1
            try:
                if on_dropped is not None:
                    on_dropped(waiting.front, waiting.fd)
            except Exception as exc:
                # The owner's bug: the other visitors must still go, and no descriptor
                # stay open; said once for the batch.
                failure = exc
            finally:
                os.close(waiting.fd)
        self.outbox.dropped += dropped
        if failure is not None:
            log.error("answering the %d dropped visitor(s) failed", dropped, exc_info=failure)
        return dropped

    def _watch(self) -> None:
        if not self._watching and self.sock is not None:
            self.outbox.loop.add_writer(self.sock.fileno(), self._writable)
            self._watching = True

    def _writable(self) -> None:
        while self.pending:
            waiting = self.pending[0]
            try:
                self._send_now(waiting.data, waiting.fd)
            except BlockingIOError:
                self._watch()  # still full (maybe a new socket): wait for writable
                return
            except HandoffError as exc:
                log.warning("%s; dropping %d waiting visitor(s)", exc, len(self.pending))
                self._drop_pending()
                return
            self._sent()
        self._unwatch()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _unwatch(self) -> None:
        if self._watching and self.sock is not None:
            self.outbox.loop.remove_writer(self.sock.fileno())
        self._watching = False

    def _drop_pending(self) -> None:
        self._drop()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def close(self) -> None:
        self._drop_pending()
        self._disconnect()


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an SCM_RIGHTS message brought (every one: the caller owns them)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += array.array("i", data[: len(data) - len(data) % _FD.size])
    return fds


#: Errors of a send to an inbox that is not there any more (its worker restarted).
_RECONNECT = frozenset((errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT, errno.EPIPE))


OnHandoff = Callable[[socket.socket, Handoff], None]


class Inbox:
    """A worker's inbox: each datagram is one visitor socket and its :class:`Handoff`."""

    def __init__(self, run_dir: Path, worker: int) -> None:
        self.path = inbox_path(run_dir, worker)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a crashed worker's inbox, before its restart
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, INBOX_BUFFER)
            self.sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
        except OSError:
            self.sock.close()
            raise
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rejected = 0
        # One receive buffer for the inbox's life: a datagram is copied out of it at its
        # own size. (socket.recv_fds allocates the largest datagram's size per call:
        # 2x the cost of a receive with relay's allocator settings, 10x with glibc's.)
        self._buffer = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buffer)
        self._ancillary = socket.CMSG_SPACE(MAX_FDS * _FD.size)

    def start(self, loop: asyncio.AbstractEventLoop, on_handoff: OnHandoff) -> None:
        self.loop = loop
        self._on_handoff = on_handoff
        loop.add_reader(self.sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(PER_WAKEUP):
            try:
                n, ancillary, flags, _ = self.sock.recvmsg_into([self._buffer], self._ancillary)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("worker inbox: %s", exc)
                return
            data = bytes(self._view[:n])
            fds = _descriptors(ancillary)
            socks = []
            for fd in fds:
                try:
                    socks.append(socket.socket(fileno=fd))
                except OSError:  # not a socket at all
                    os.close(fd)
            if len(socks) != len(fds):
                self._reject(socks, "a descriptor that is not a socket")
                continue
            if len(socks) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                self._reject(socks, "not one descriptor, or truncated")
                continue
            visitor = socks[0]
            try:
                handoff = Handoff.decode(data)
                if visitor.type != socket.SOCK_STREAM or visitor.family not in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    raise HandoffError("not a TCP socket")
            except HandoffError as exc:
                self._reject(socks, str(exc))
                continue
            visitor.setblocking(False)
            try:
                self._on_handoff(visitor, handoff)
            except Exception:
                log.exception("a handed-over visitor could not be served")
                visitor.close()

    def _reject(self, socks: list[socket.socket], why: str) -> None:
        self.rejected += 1
        log.warning("worker inbox: dropped a datagram: %s", why)
        for sock in socks:
            sock.close()

    def close(self) -> None:
        if self.loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
