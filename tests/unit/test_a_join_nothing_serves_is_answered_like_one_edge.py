"""A stream another node carried here that nothing here serves (relay/edge/cluster.py
``_route_joined``) is answered as one edge answers the visitor: the error page, then
the stream's end (relay/cluster/nodelink.py ``_answer``).

* The stream is no longer read: what the other node still sends on it (the visitor's
  request body; ``http_max_body`` is 0, no cap, by default) stops at the stream's window
  instead of flowing here to be dropped for as long as the visitor keeps sending.
* A HEAD request's page has no body (RFC 9110 §9.3.2), as one edge's: the node that
  carried it says so in the stream's header (``HEAD_REQUEST``).

X (the carrying node's side) ══ link ══ Y (the answering node), over a socket pair in
one loop.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from relay.cluster.nodelink import NodeLinks
from relay.edge.cluster import ClusterNode
from relay.edge.http import HttpFront, other_region
from relay.edge.routes import HostRoutes
from relay.protocol import StreamHeader
from tests.unit.test_joined_streams import linked, run

pytestmark = pytest.mark.timeout(60)

PAGE = b"HTTP/1.1 421 Misdirected Request\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
WINDOW = 256 * 1024  # initial_window: what X may send before Y returns credit


def test_a_stream_answered_with_a_page_takes_no_more_than_its_window_of_the_body() -> None:
    async def scenario() -> None:
        x, y, y_handler = await linked()
        sid = x.session.open_stream()
        x_channel = x.open_buffer_channel(sid)
        x.send(sid, b"JOIN-header-stand-in")
        y_sid = await asyncio.wait_for(y_handler.opened.get(), 5)
        y.open_buffer_channel(y_sid)  # as NodeLinks does for a stream that arrives
        await asyncio.sleep(0.05)
        links = SimpleNamespace(
            answered=0,
            _refuse=lambda link, s: NodeLinks._refuse(None, link, s),  # type: ignore[arg-type]
        )
        NodeLinks._answer(links, y, y_sid, PAGE)  # type: ignore[arg-type]
        assert links.answered == 1
        async with asyncio.timeout(5):
            while not x_channel.fin:
                await x_channel.wait()
        assert x_channel.take() == PAGE  # the page arrives whole, then the FIN
        before = y.session.stats()["bytes_in"]
        # The visitor goes on sending its body (as X's Pump would, reading the visitor).
        chunk = b"b" * 65536
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        while loop.time() < deadline and sent < 16 * 1024 * 1024:  # bounded both ways
            if x.session.pending_data < 1024 * 1024:
                x.send(sid, chunk)
                sent += len(chunk)
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        taken = y.session.stats()["bytes_in"] - before
        assert sent > 2 * WINDOW, f"only {sent} bytes offered: the test proves nothing"
        assert taken <= 2 * WINDOW, f"{taken} bytes taken on a stream answered and ended"

    run(scenario)


@pytest.mark.parametrize("head", [True, False])
def test_a_carried_head_request_gets_its_page_without_a_body(head: bool) -> None:
    loop = asyncio.new_event_loop()
    try:
        front = HttpFront(
            HostRoutes(),
            loop=loop,
            max_head=16384,
            max_headers=100,
            max_body=0,
            header_timeout=10,
            idle_timeout=60,
        )
        # The carrying node: the stream's header for the first request.
        route = front._carried(
            SimpleNamespace(),
            SimpleNamespace(host_rewrite=None),
            "app.pin.example.com",
            "http",
            ("192.0.2.1", 4000),
            "text/plain",
            head,
        )
        parsed = StreamHeader.parse(route[2])
        assert parsed is not None
        # The answering node: its page for that stream.
        node = SimpleNamespace(edge=SimpleNamespace(web=SimpleNamespace(http=front)))
        page = ClusterNode._unserved(
            node,  # type: ignore[arg-type]
            parsed[0],
            other_region("app.pin.example.com", "us"),
        )
        status, _, body = page.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 421 ")
        length = int(status.split(b"content-length: ")[1].split(b"\r\n")[0])
        assert length > 0  # a HEAD's head still says how long the page would be
        assert len(body) == (0 if head else length)
        assert (b"app.pin.example.com is served in region us" in body) is not head
    finally:
        loop.close()
