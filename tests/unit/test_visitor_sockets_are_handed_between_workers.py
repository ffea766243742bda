"""relay/cluster/handoff.py: a visitor's socket and what was read of it go to another
worker in one datagram; anything else sent to an inbox is dropped, not served."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

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

pytestmark = pytest.mark.timeout(30)


@given(
    st.sampled_from(FRONTS),
    st.text(min_size=1, max_size=200),
    st.binary(max_size=4096),
)
def test_a_handoff_decodes_to_what_was_encoded(front: str, key: str, carried: bytes) -> None:
    handoff = Handoff(front, key, carried)
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
            assert outbox.pending() == 0 and outbox.expired == waiting
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
