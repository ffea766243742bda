"""relay/cluster/handoff.py: a visitor's socket and what was read of it go to another
worker in one datagram; anything else sent to an inbox is dropped, not served. A visitor
that waited for a worker that never took it is answered by the sending worker
(relay/edge/worker.py): 503 RLY_611 over HTTP, a close on the TLS port."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.cluster import handoff as handoff_module
from relay.cluster.handoff import (
    FRONTS,
    MAX_CARRIED,
    Handoff,
    HandoffError,
    Inbox,
    Outbox,
    inbox_path,
)
from relay.cluster.place import WorkerPlace
from relay.edge.http import HttpFront
from relay.edge.routes import HostRoutes
from relay.edge.worker import EdgeWorker, RemoteEndpoint
from relay.error_pages import render

pytestmark = pytest.mark.timeout(30)


@given(
    st.sampled_from(FRONTS),
    st.text(min_size=1, max_size=200),
    st.binary(max_size=4096),
    st.booleans(),
)
def test_a_handoff_decodes_to_what_was_encoded(
    front: str, key: str, carried: bytes, again: bool
) -> None:
    handoff = Handoff(front, key, carried, again)
    assert Handoff.decode(handoff.encode()) == handoff


@given(st.binary(max_size=64))
def test_other_datagrams_are_refused(data: bytes) -> None:
    if data.startswith(b"RH1"):
        return
    with pytest.raises(HandoffError):
        Handoff.decode(data)


def test_carried_bytes_are_bounded() -> None:
    Handoff("http", "http:a.x", b"x" * MAX_CARRIED).encode()
    with pytest.raises(HandoffError):
        Handoff("http", "http:a.x", b"x" * (MAX_CARRIED + 1)).encode()
    with pytest.raises(HandoffError):
        Handoff("udp", "k").encode()


def test_the_socket_arrives_with_its_bytes_and_its_visitor(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[tuple[socket.socket, Handoff]] = asyncio.Queue()
        inbox = Inbox(tmp_path, 1)
        inbox.start(loop, lambda sock, handoff: got.put_nowait((sock, handoff)))
        outbox = Outbox(tmp_path, loop)
        listener = socket.create_server(("127.0.0.1", 0))
        visitor = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        try:
            visitor.sendall(b"after the head")
            outbox.send(1, accepted, Handoff("http", "http:a.x", b"GET / HTTP/1.1\r\n\r\n"))
            accepted.close()  # the sender's descriptor goes; the socket lives on
            sock, handoff = await asyncio.wait_for(got.get(), 5)
            with sock:
                assert handoff == Handoff("http", "http:a.x", b"GET / HTTP/1.1\r\n\r\n")
                assert sock.getpeername() == visitor.getsockname()
                sock.setblocking(True)
                assert sock.recv(100) == b"after the head"
                sock.sendall(b"answered by the other worker")
            assert visitor.recv(100) == b"answered by the other worker"
        finally:
            visitor.close()
            listener.close()
            inbox.close()
            outbox.close()
        assert not inbox_path(tmp_path, 1).exists()

    asyncio.run(main())


def test_an_inbox_drops_what_is_not_a_tcp_visitor(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        served: list[Handoff] = []
        inbox = Inbox(tmp_path, 0)
        inbox.start(loop, lambda sock, handoff: served.append(handoff))
        outbox = Outbox(tmp_path, loop)
        a, b = socket.socketpair()
        try:
            outbox.send(0, a, Handoff("tls", "sni:a.x"))  # a Unix socket, not a visitor
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
                raw.sendto(b"RH1 junk", str(inbox_path(tmp_path, 0)))  # no descriptor
            for _ in range(100):  # bounded: both datagrams are read within 1 s
                if inbox.rejected == 2:
                    break
                await asyncio.sleep(0.01)
            assert inbox.rejected == 2 and served == []
        finally:
            a.close()
            b.close()
            inbox.close()
            outbox.close()

    asyncio.run(main())


def test_an_inbox_closes_every_descriptor_of_a_datagram_it_refuses(tmp_path: Path) -> None:
    # Two TCP sockets in one datagram: not a handoff. Both arrive here as new descriptors,
    # and both must be closed, or each such datagram would leak two.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        served: list[Handoff] = []
        inbox = Inbox(tmp_path, 0)
        inbox.start(loop, lambda sock, handoff: served.append(handoff))
        x, y = socket.socket(), socket.socket()
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            before = len(os.listdir("/proc/self/fd"))
            rights = array.array("i", [x.fileno(), y.fileno()])
            raw.sendmsg(
                [Handoff("http", "host:a.x", b"GET / HTTP/1.1\r\n\r\n").encode()],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)],
                0,
                str(inbox_path(tmp_path, 0)),
            )
            for _ in range(100):  # bounded: the datagram is read within 1 s
                if inbox.rejected:
                    break
                await asyncio.sleep(0.01)
            assert inbox.rejected == 1 and served == []
            assert len(os.listdir("/proc/self/fd")) == before
        finally:
            for s in (x, y, raw):
                s.close()
            inbox.close()

    asyncio.run(main())


def test_a_gone_worker_is_an_error_for_the_sender(tmp_path: Path) -> None:
    async def main() -> None:
        outbox = Outbox(tmp_path, asyncio.get_running_loop())
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            with pytest.raises(HandoffError, match="worker 3"):
                outbox.send(3, listener, Handoff("tls", "sni:a.x"))
        finally:
            listener.close()
            outbox.close()

    asyncio.run(main())


def test_a_burst_past_the_kernels_queue_waits_and_arrives_whole(tmp_path: Path) -> None:
    """Linux queues only net.unix.max_dgram_qlen datagrams in an inbox (10 here): 200
    visitors sent at once while the receiver is not reading all arrive, in order, each
    with its own socket."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[tuple[socket.socket, Handoff]] = []
        inbox = Inbox(tmp_path, 2)
        outbox = Outbox(tmp_path, loop)
        listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        visitors: list[socket.socket] = []
        try:
            for i in range(200):
                visitor = socket.create_connection(listener.getsockname())
                visitors.append(visitor)
                accepted, _ = listener.accept()
                outbox.send(2, accepted, Handoff("http", f"http:{i}.x", b"%d" % i))
                accepted.close()
            assert outbox.queued > 0, "the kernel took all 200: the burst proves nothing"
            inbox.start(loop, lambda sock, handoff: got.append((sock, handoff)))
            for _ in range(500):  # bounded: 5 s
                if len(got) == 200:
                    break
                await asyncio.sleep(0.01)
            assert [h.key for _, h in got] == [f"http:{i}.x" for i in range(200)]
            assert outbox.pending() == 0
            for (sock, handoff), visitor in zip(got, visitors, strict=True):
                assert sock.getpeername() == visitor.getsockname()
                assert handoff.carried == handoff.key[5:-2].encode()
        finally:
            for sock, _ in got:
                sock.close()
            for visitor in visitors:
                visitor.close()
            listener.close()
            inbox.close()
            outbox.close()

    asyncio.run(main())


def test_a_restarted_workers_new_inbox_is_found(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[Handoff] = []
        outbox = Outbox(tmp_path, loop)
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            for generation in range(2):  # the worker dies and comes back
                inbox = Inbox(tmp_path, 1)
                inbox.start(loop, lambda sock, handoff: (got.append(handoff), sock.close()))
                outbox.send(1, listener, Handoff("tls", f"sni:{generation}.x"))
                for _ in range(100):
                    if len(got) == generation + 1:
                        break
                    await asyncio.sleep(0.01)
                inbox.close()
            assert [h.key for h in got] == ["sni:0.x", "sni:1.x"]
        finally:
            listener.close()
            outbox.close()

    asyncio.run(main())


@contextlib.asynccontextmanager
async def stalled_worker(
    tmp_path: Path, index: int, visitors: int
) -> AsyncIterator[tuple[Outbox, list[socket.socket]]]:
    """An outbox, ``visitors`` TCP sockets to hand over, and worker ``index``'s inbox,
    bound but never started (a worker whose loop is stuck reads nothing); all closed
    after, also when the test fails."""
    inbox = Inbox(tmp_path, index)
    outbox = Outbox(tmp_path, asyncio.get_running_loop())
    socks = [socket.socket() for _ in range(visitors)]
    try:
        yield outbox, socks
    finally:
        for sock in socks:
            sock.close()
        inbox.close()
        outbox.close()


def test_visitors_waiting_for_a_worker_that_reads_none_are_dropped_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose loop is stuck reads no inbox: the visitors queued for it do not wait
    (each holding a descriptor and its carried bytes) for ever, but are dropped once they
    waited MAX_PENDING_FOR, each duplicate closed, and counted."""
    monkeypatch.setattr(handoff_module, "MAX_PENDING_FOR", 0.3)

    async def main() -> None:
        async with stalled_worker(tmp_path, 4, 30) as (outbox, visitors):
            before = len(os.listdir("/proc/self/fd"))
            for sock in visitors:
                outbox.send(4, sock, Handoff("http", "host:a.x", b"GET / HTTP/1.1\r\n\r\n"))
            waiting = outbox.pending()
            assert waiting > 0  # past the kernel's queue: kept here, a duplicate each
            assert len(os.listdir("/proc/self/fd")) == before + waiting + 1  # + its socket
            for _ in range(100):  # bounded: dropped within 1 s
                if outbox.pending() == 0:
                    break
                await asyncio.sleep(0.01)
            assert outbox.pending() == 0 and outbox.dropped == waiting
            assert len(os.listdir("/proc/self/fd")) == before + 1

    asyncio.run(main())


def test_the_bytes_waiting_for_one_worker_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = b"GET / HTTP/1.1\r\n" + b"x-pad: " + b"p" * 8000 + b"\r\n\r\n"
    size = len(Handoff("http", "host:a.x", head).encode())
    monkeypatch.setattr(handoff_module, "MAX_PENDING_BYTES", 3 * size)

    async def main() -> None:
        async with stalled_worker(tmp_path, 5, 40) as (outbox, visitors):
            with pytest.raises(HandoffError, match="bytes of visitors behind"):
                for sock in visitors:
                    outbox.send(5, sock, Handoff("http", "host:a.x", head))
            assert outbox.pending() == 3

    asyncio.run(main())


# --- what a dropped visitor is told -----------------------------------------------------

HEAD = b"POST /upload HTTP/1.1\r\nhost: a.example.com\r\ncontent-length: 4096\r\n\r\n"


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def descriptors_back_to(before: int) -> None:
    """A refused HTTP visitor's socket lingers until the visitor closes its side
    (relay/edge/refusal.py): the loop must run to see that. Bounded: 2 s."""
    for _ in range(200):
        if open_descriptors() == before:
            return
        await asyncio.sleep(0.01)
    assert open_descriptors() == before


@contextlib.asynccontextmanager
async def worker_and_stalled_sibling(tmp_path: Path) -> AsyncIterator[tuple[EdgeWorker, Inbox]]:
    """Worker 0 of two, started as the edge starts it (its outbox given back the visitors
    it drops), with a plain-HTTP front; and worker 1's inbox, bound but never read (a
    worker whose loop is stuck). All closed after, also when the test fails."""
    loop = asyncio.get_running_loop()
    front = HttpFront(
        HostRoutes(),
        loop=loop,
        max_head=16384,
        max_headers=100,
        max_body=1 << 20,
        header_timeout=10.0,
        idle_timeout=10.0,
    )
    mine, supervisor = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    place = WorkerPlace(0, 2, mine.detach(), tmp_path)
    worker = EdgeWorker(SimpleNamespace(web=SimpleNamespace(http=front)), place)  # type: ignore[arg-type]
    worker.start(loop)
    stalled = Inbox(tmp_path, 1)
    try:
        yield worker, stalled
    finally:
        stalled.close()  # again, if the test closed it: a no-op then
        worker.close()
        assert worker.channel is not None
        worker.channel.close()  # before its other end: an end of the supervisor is a SIGTERM
        supervisor.close()


@contextlib.contextmanager
def tcp_visitors(count: int, request: bytes) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """``count`` TCP visitors on 127.0.0.1, each (its socket, the edge's accepted socket),
    each having sent ``request``; closed after."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=count)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(count):
            visitor = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            pairs.append((visitor, accepted))
            if request:
                visitor.sendall(request)
        yield pairs
    finally:
        for visitor, accepted in pairs:
            visitor.close()
            accepted.close()
        listener.close()


def read_head(sock: socket.socket) -> bytes:
    """What the HTTP listener reads before it routes: the head (the body stays unread)."""
    sock.settimeout(5)
    head = b""
    for _ in range(100):  # bounded: the head is on loopback already
        head += sock.recv(len(HEAD) - len(head))
        if len(head) == len(HEAD):
            return head
    raise AssertionError(f"only {len(head)} bytes of the head arrived")


def hand_over_http(worker: EdgeWorker, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """As HttpVisitor does: read the head, hand socket and head to worker 1, then close
    this worker's descriptor (transport.abort)."""
    holder = RemoteEndpoint("http", "a.example.com", (1,))
    for _, accepted in pairs:
        head = read_head(accepted)
        assert worker._send(accepted.fileno(), Handoff("http", holder.key, head), holder)
        accepted.close()


def read_to_the_end(sock: socket.socket) -> tuple[bytes, str]:
    """All a visitor receives, and how it ended: ``eof`` or ``reset``."""
    sock.settimeout(5)
    got = b""
    for _ in range(1000):  # bounded: a page is a few hundred bytes
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return got, "reset"
        if not data:
            return got, "eof"
        got += data
    raise AssertionError("the visitor's connection did not end")


def assert_is_the_unreachable_page(response: bytes) -> None:
    """Byte for byte the page a visitor gets when its handoff fails at once (503 RLY_611),
    up to its request id, which is random."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), response[:80]
    assert b"\r\nconnection: close\r\n" in head
    assert b"\r\nx-relay-error-code: RLY_611\r\n" in head
    assert b"\r\ncontent-length: %d\r\n" % len(body) in head
    found = re.search(rb"\r\nx-relay-request-id: ([0-9a-f]+)(?:\r\n|$)", head)
    assert found is not None
    assert response == render(
        503,
        "RLY_611",
        "the agent serving this host cannot be reached",
        accept=None,
        request_id=found.group(1).decode(),
    )


async def all_dropped(worker: EdgeWorker, waiting: int) -> None:
    """The ``waiting`` visitors queued for a stalled worker all dropped (bounded: 2 s),
    and counted as failed handoffs."""
    assert worker.outbox is not None
    for _ in range(200):
        if worker.outbox.pending() == 0:
            break
        await asyncio.sleep(0.01)
    assert worker.outbox.pending() == 0 and worker.outbox.dropped == waiting
    assert worker.handoffs_failed == waiting


def assert_told_unreachable(visitor: socket.socket) -> None:
    response, end = read_to_the_end(visitor)
    assert_is_the_unreachable_page(response)
    assert end == "eof"


def test_an_http_visitor_dropped_after_waiting_in_vain_gets_a_503_and_nothing_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker 1 reads no visitor: those queued for it are dropped after MAX_PENDING_FOR,
    and each, which has been waiting for an answer, gets the whole 503 RLY_611 page and
    then the end of the connection, as if its handoff had failed at once; the rest of its
    request unread is no reset. Every descriptor the handoff took is closed."""
    monkeypatch.setattr(handoff_module, "MAX_PENDING_FOR", 0.3)

    async def main() -> None:
        before = open_descriptors()
        async with worker_and_stalled_sibling(tmp_path) as (worker, _):
            with tcp_visitors(20, HEAD + b"b" * 1000) as pairs:
                hand_over_http(worker, pairs)
                assert worker.outbox is not None
                waiting = worker.outbox.pending()
                assert 0 < waiting < 20  # the kernel took the first, the rest wait here
                await all_dropped(worker, waiting)
                for visitor, _ in pairs[-waiting:]:
                    assert_told_unreachable(visitor)
                for visitor, _ in pairs[:-waiting]:  # in worker 1's inbox: not ours
                    with pytest.raises(BlockingIOError):
                        visitor.recv(1, socket.MSG_DONTWAIT)
        await descriptors_back_to(before)

    asyncio.run(main())


def test_an_http_visitor_waiting_for_a_worker_that_went_gets_a_503(tmp_path: Path) -> None:
    """Worker 1 goes (its inbox closed) while visitors wait for room in it: those waiting
    here get the 503 page at once, not after MAX_PENDING_FOR (10 s). Those already in its
    inbox went with it: the kernel closes them, and no worker can say anything to them."""

    async def main() -> None:
        before = open_descriptors()
        async with worker_and_stalled_sibling(tmp_path) as (worker, stalled):
            with tcp_visitors(20, HEAD) as pairs:
                hand_over_http(worker, pairs)
                assert worker.outbox is not None
                waiting = worker.outbox.pending()
                assert 0 < waiting < 20
                stalled.close()
                await all_dropped(worker, waiting)
                for visitor, _ in pairs[-waiting:]:
                    assert_told_unreachable(visitor)
                for visitor, _ in pairs[:-waiting]:
                    assert read_to_the_end(visitor)[0] == b""
        await descriptors_back_to(before)

    asyncio.run(main())


def test_a_tls_visitor_dropped_after_waiting_is_only_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the TLS port nothing was consumed and no handshake made: a visitor dropped is
    closed, with not a byte written to it (a 503 would be garbage to a TLS client)."""
    monkeypatch.setattr(handoff_module, "MAX_PENDING_FOR", 0.3)

    async def main() -> None:
        before = open_descriptors()
        async with worker_and_stalled_sibling(tmp_path) as (worker, _):
            with tcp_visitors(20, b"") as pairs:
                holder = RemoteEndpoint("sni", "a.example.com", (1,))
                for _, accepted in pairs:
                    handoff = Handoff("tls", holder.key)
                    assert worker._send(accepted.fileno(), handoff, holder)
                    accepted.close()
                assert worker.outbox is not None
                waiting = worker.outbox.pending()
                assert 0 < waiting < 20
                await all_dropped(worker, waiting)
                for visitor, _ in pairs[-waiting:]:
                    assert read_to_the_end(visitor) == (b"", "eof")
        assert open_descriptors() == before

    asyncio.run(main())


def test_http_visitors_waiting_when_the_worker_stops_get_a_503(tmp_path: Path) -> None:
    """The sending worker stops (its outbox closes) while visitors wait: each still gets
    its answer before its descriptor closes."""

    async def main() -> None:
        before = open_descriptors()
        async with worker_and_stalled_sibling(tmp_path) as (worker, _):
            with tcp_visitors(20, HEAD) as pairs:
                hand_over_http(worker, pairs)
                assert worker.outbox is not None
                waiting = worker.outbox.pending()
                assert 0 < waiting < 20
                worker.outbox.close()
                assert worker.outbox.pending() == 0
                for visitor, _ in pairs[-waiting:]:
                    assert_told_unreachable(visitor)
        await descriptors_back_to(before)

    asyncio.run(main())
