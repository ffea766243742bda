"""A worker hands a visitor to a worker holding its endpoint (relay/edge/worker.py): when
that one cannot take it (gone: its inbox is not there), another worker holding the same
endpoint (a pool, or links) does, before the visitor is refused (503 RLY_611). Real
inboxes and outbox on Unix datagram sockets; the worker's table alone, no supervisor."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from relay.cluster.handoff import Handoff, Inbox, Outbox
from relay.edge.routes import HostRoutes
from relay.edge.worker import EdgeWorker, RemoteEndpoint

pytestmark = pytest.mark.timeout(30)


def test_a_visitor_goes_to_another_holder_when_the_first_is_gone(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        place = SimpleNamespace(index=0, count=4, channel_fd=-1, run_dir=tmp_path)
        worker = EdgeWorker(SimpleNamespace(http_routes=HostRoutes()), place)  # type: ignore[arg-type]
        worker.outbox = Outbox(tmp_path, loop)
        arrived: list[tuple[socket.socket, Handoff]] = []
        inbox = Inbox(tmp_path, 2)  # worker 2 is up; 1 and 3 are gone (no inbox)
        inbox.start(loop, lambda sock, handoff: arrived.append((sock, handoff)))
        listener = socket.create_server(("127.0.0.1", 0))
        visitor = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        try:
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
        finally:
            for sock, _ in arrived:
                sock.close()
            for sock in (visitor, accepted, listener):
                sock.close()
            inbox.close()
            worker.outbox.close()

    asyncio.run(main())
