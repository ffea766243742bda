"""A worker hands a visitor to a worker holding its endpoint (relay/edge/worker.py): when
that one cannot take it (gone: its inbox is not there), another worker holding the same
endpoint (a pool, or links) does, before the visitor is refused (503 RLY_611). Real
inboxes and outbox on Unix datagram sockets; the worker's table alone, no supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from relay.cluster.handoff import Handoff, Inbox, Outbox
from relay.edge.routes import HostRoutes
from relay.edge.worker import EdgeWorker, RemoteEndpoint

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def worker_2_and_a_visitor(
    worker: EdgeWorker, tmp_path: Path
) -> AsyncIterator[tuple[list[tuple[socket.socket, Handoff]], socket.socket, socket.socket]]:
    """``worker``'s outbox, worker 2's inbox (what arrives there), and one visitor (its
    socket, and the edge's accepted one), all closed after."""
    loop = asyncio.get_running_loop()
    worker.outbox = Outbox(tmp_path, loop)
    arrived: list[tuple[socket.socket, Handoff]] = []
    inbox = Inbox(tmp_path, 2)
    inbox.start(loop, lambda sock, handoff: arrived.append((sock, handoff)))
    listener = socket.create_server(("127.0.0.1", 0))
    visitor = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        yield arrived, visitor, accepted
    finally:
        for sock, _ in arrived:
            sock.close()
        for sock in (visitor, accepted, listener):
            sock.close()
        inbox.close()
        worker.outbox.close()


def test_a_visitor_goes_to_another_holder_when_the_first_is_gone(tmp_path: Path) -> None:
    async def main() -> None:
        place = SimpleNamespace(index=0, count=4, channel_fd=-1, run_dir=tmp_path)
        worker = EdgeWorker(SimpleNamespace(http_routes=HostRoutes()), place)  # type: ignore[arg-type]
        # Worker 2 is up; 1 and 3 are gone (no inbox).
        async with worker_2_and_a_visitor(worker, tmp_path) as (arrived, _, accepted):
            pooled = RemoteEndpoint("http", "a.example.com", (1, 2))
            for _ in range(4):  # whichever of the two comes first in turn
                assert worker._send(accepted.fileno(), Handoff("http", pooled.key), pooled)
            for _ in range(100):  # bounded: all arrive within 1 s
                if len(arrived) == 4:
                    break
                await asyncio.sleep(0.01)
            assert [h.key for _, h in arrived] == [pooled.key] * 4
            assert worker.handed_off["http"] == 4 and worker.handoffs_failed == 0
            nowhere = RemoteEndpoint("http", "b.example.com", (1, 3))
            assert not worker._send(accepted.fileno(), Handoff("http", nowhere.key), nowhere)
            assert worker.handoffs_failed == 1

    asyncio.run(main())


def _member(taking: bool) -> SimpleNamespace:
    """An endpoint here with one member, whose session takes visitors or drains."""
    return SimpleNamespace(
        members=[SimpleNamespace(session=SimpleNamespace(accepting_visitors=taking))]
    )


@pytest.mark.parametrize(
    ("family", "name", "front"),
    [("http", "a.example.com", "http"), ("sni", "a.example.com", "tls"), ("tcp", "20000", "tcp")],
)
@pytest.mark.parametrize("here", ["draining", "gone", "taking"])
@pytest.mark.parametrize("again", [True, False])
def test_a_visitor_handed_to_a_draining_member_goes_on_once(
    tmp_path: Path, family: str, name: str, front: str, here: str, again: bool
) -> None:
    """Handed here while the member here drains (the sender had not heard yet), or is
    gone: it goes on to the other worker holding the key, with its bytes, once. Handed on
    already (``again`` false), or a member here takes visitors: it is served here."""

    async def main() -> None:
        key = f"{family}:{name}"
        served: list[tuple[str, bytes]] = []
        web = SimpleNamespace(
            adopt_http=lambda conn, carried: served.append(("http", carried)),
            tls_front=SimpleNamespace(adopt=lambda conn: served.append(("tls", b""))),
        )
        local = {"draining": _member(False), "taking": _member(True), "gone": None}[here]
        edge = SimpleNamespace(web=web, by_key={key: local} if local is not None else {})
        place = SimpleNamespace(index=1, count=3, channel_fd=-1, run_dir=tmp_path)
        worker = EdgeWorker(edge, place)  # type: ignore[arg-type]
        worker._where(key, (1, 2))  # worker 2 holds it too, as the supervisor said
        head = b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n" if front == "http" else b""
        async with worker_2_and_a_visitor(worker, tmp_path) as (arrived, visitor, accepted):
            worker._handed_in(accepted, Handoff(front, key, head, again))
            goes_on = again and here != "taking"
            for _ in range(100):  # bounded: a handoff arrives within 1 s
                if arrived or not goes_on:
                    break
                await asyncio.sleep(0.01)
            if goes_on:
                assert [h for _, h in arrived] == [Handoff(front, key, head, again=False)]
                assert arrived[0][0].getpeername() == visitor.getsockname()
                assert accepted.fileno() == -1  # this worker's descriptor is closed
                assert worker.handed_off[front] == 1 and served == []
            else:
                assert arrived == [] and worker.handed_off[front] == 0
                # Served here. A TCP visitor's endpoint would adopt it; this stand-in is
                # none, so the worker closes it.
                assert served == ([] if front == "tcp" else [(front, head)])
            assert worker.handed_in[front] == 1

    asyncio.run(main())
