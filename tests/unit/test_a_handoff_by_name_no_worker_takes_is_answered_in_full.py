"""A worker hands a visitor to the worker holding its Host from its head's bytes, before
parsing it. When every worker holding that name refuses it at once (gone, or too far
behind), the visitor is parsed and routed here after all: its 503 RLY_611 is the page
its request gets (a HEAD none of the body, an Accept its format), and its connection
ends cleanly after it. Answered straight from the bytes, the page would ignore the
request.

A real EdgeWorker (worker 0 of two, its outbox and inbox on Unix sockets) behind a real
uvloop HTTP listener; worker 1 holds the name and its inbox is gone.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import uvloop

from relay._httpfront import HttpVisitor
from relay.error_pages import render
from tests.unit.test_visitor_sockets_are_handed_between_workers import (
    worker_and_stalled_sibling,
)

NAME = "a.example.com"
MESSAGE = "the agent serving this host cannot be reached"


async def answer_to(tmp_path: Path, request: bytes) -> tuple[bytes, str, dict[str, int]]:
    """What a visitor sending ``request`` in one write receives, how its connection ended
    (``eof`` or ``reset``), and worker 0's handoff counters."""
    loop = asyncio.get_running_loop()
    async with worker_and_stalled_sibling(tmp_path) as (worker, sibling):
        sibling.close()  # worker 1 is gone: a hand-over to it is refused at once
        front = worker.edge.web.http
        front.serve_elsewhere(worker)
        worker._where(f"http:{NAME}", (1,))  # worker 1 holds the name
        server = await loop.create_server(lambda: HttpVisitor(front, "http"), "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            got, end = b"", "eof"
            try:
                async with asyncio.timeout(5):
                    while chunk := await reader.read(65536):
                        got += chunk
            except ConnectionResetError:
                end = "reset"
            writer.close()
        finally:
            server.close()
        counters = {"handed_off": worker.handed_off["http"], "failed": worker.handoffs_failed}
        return got, end, counters


@pytest.mark.parametrize(
    ("method", "accept"),
    [("GET", None), ("HEAD", None), ("GET", "application/json")],
    ids=["get", "head", "json"],
)
def test_a_visitor_no_worker_takes_gets_the_page_its_request_asks_for(
    tmp_path: Path, method: str, accept: str | None
) -> None:
    request = f"{method} / HTTP/1.1\r\nHost: {NAME}\r\n".encode()
    if accept is not None:
        request += f"Accept: {accept}\r\n".encode()
    got, end, counters = uvloop.run(answer_to(tmp_path, request + b"\r\n"))
    assert end == "eof", f"the connection was reset after {got[:80]!r}"
    found = re.search(rb"\r\nx-relay-request-id: ([0-9a-f]+)\r\n", got)
    assert found is not None, got[:300]
    expected = render(
        503,
        "RLY_611",
        MESSAGE,
        accept=accept,
        request_id=found.group(1).decode(),
        head=method == "HEAD",
    )
    assert got == expected
    # Tried from the bytes once, not again after the parse: one visitor, one failure.
    assert counters["handed_off"] == 0
    assert counters["failed"] == 1
