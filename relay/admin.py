"""The admin listener: ``/metrics`` (Prometheus), ``/healthz`` (the process is alive),
``/readyz`` (it serves: listeners bound, store reachable, not draining) and ``/status``
(JSON for `relay status`: sessions, endpoints, recent streams).

It listens on its own address, loopback by default, never on a visitor or agent port:
what it says about the PoP is for its operator. One request per connection (Prometheus
and health checkers open one per scrape); a head larger than 8 KiB or slower than 10 s
is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httptools
from prometheus_client import CONTENT_TYPE_LATEST

from relay.errors import ListenError
from relay.metrics import Metrics

log = logging.getLogger("relay.admin")

MAX_HEAD = 8 * 1024
HEAD_TIMEOUT = 10.0
#: ``ready()`` answers (True, "") or (False, why not).
Readiness = Callable[[], tuple[bool, str]]


class AdminServer:
    def __init__(
        self, metrics: Metrics, ready: Readiness, status: Callable[[], dict[str, Any]]
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.status = status
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int, *, flag: str = "--admin-listen") -> None:
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                lambda: _AdminRequest(self), host, port, reuse_address=True
            )
        except OSError as exc:
            raise ListenError.for_address(f"{host}:{port}", flag, exc) from None
        name = self.server.sockets[0].getsockname()
        self.address = (name[0], name[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def answer(self, method: bytes, path: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"GET only\n"
        path = path.split(b"?", 1)[0]
        if path == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
        if path == b"/healthz":
            return 200, "text/plain", b"ok\n"
        if path == b"/status":
            return 200, "application/json", json.dumps(self.status()).encode()
        if path == b"/readyz":
            ready, why = self.ready()
            if ready:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {why}\n".encode()
        return 404, "text/plain", b"/metrics, /healthz, /readyz, /status\n"


_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}


class _AdminRequest(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.size = 0
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_HEAD:
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        try:
            status, content_type, body = self.server.answer(method, self.url)
        except Exception:  # a collector's bug must not take the listener down
            log.exception("admin request %s failed", self.url[:100])
            status, content_type, body = 500, "text/plain", b"internal error\n"
        head = (
            b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n"
            % (status, _REASONS.get(status, b"Error"), content_type.encode(), len(body))
        )
        self.transport.write(head if method == b"HEAD" else head + body)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
