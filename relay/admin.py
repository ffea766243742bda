"""The admin listener: ``/metrics`` (Prometheus), ``/healthz`` (the process is alive),
``/readyz`` (it serves: listeners bound, store reachable, not draining), ``/status``
(JSON for `relay status`: sessions, endpoints, recent streams) and, when a control-plane
API is given, everything under ``/api/`` (relay/control/api, docs/api.md).

It listens on its own address, loopback by default, never on a visitor or agent port:
what it says about the PoP is for its operator. One request per connection (Prometheus
and health checkers open one per scrape); a head larger than 8 KiB, a body larger than
64 KiB or a request slower than 10 s is dropped (an API body over the limit gets 413).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

import httptools
from prometheus_client import CONTENT_TYPE_LATEST

from relay import asgi_once
from relay.errors import ListenError
from relay.metrics import Metrics

log = logging.getLogger("relay.admin")

MAX_HEAD = 8 * 1024
MAX_BODY = 64 * 1024
#: The whole request, head and body, must arrive within this.
HEAD_TIMEOUT = 10.0
#: Paths the control-plane API answers, when there is one.
API_PREFIX = b"/api/"
#: ``ready()`` answers (True, "") or (False, why not).
Readiness = Callable[[], tuple[bool, str]]


class AdminServer:
    def __init__(
        self,
        metrics: Metrics,
        ready: Readiness,
        status: Callable[[], dict[str, Any]],
        api: Callable[[], asgi_once.ASGIApp] | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.status = status
        # Built on the first API request: FastAPI takes half a second to load, which an
        # edge nobody asks through the API should not spend at every start.
        self._make_api = api
        self._api: asgi_once.ASGIApp | None = None
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        flag: str = "--admin-listen",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                lambda: _AdminRequest(self), host, port, reuse_address=True, ssl=ssl_context
            )
        except OSError as exc:
            raise ListenError.for_address(f"{host}:{port}", flag, exc) from None
        name = self.server.sockets[0].getsockname()
        self.address = (name[0], name[1])

    @property
    def serves_api(self) -> bool:
        return self._make_api is not None

    def api(self) -> asgi_once.ASGIApp:
        if self._api is None:
            assert self._make_api is not None
            self._api = self._make_api()
        return self._api

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


_REASONS = {
    200: b"OK",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    503: b"Service Unavailable",
}
_TOO_LARGE = (
    b'{"code":"RLY_401","message":"request body larger than %d bytes","request_id":"-"}' % MAX_BODY
)


class _AdminRequest(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head_size = 0
        self.head_done = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.answering = False
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.answering:
            return  # one request per connection: whatever follows it is not read
        if not self.head_done:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
        except _Refused:
            pass
        else:
            if not self.head_done and self.head_size > MAX_HEAD:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        # The head may have ended inside a read that also carried body bytes: measure it
        # by what it held (each header line has ": " and CRLF around its parts).
        if len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > MAX_HEAD:
            self.transport.close()
            raise _Refused
        if self.parser.get_method() not in (b"GET", b"HEAD") and not self._is_api():
            return  # answered 405 at the end
        length = next((v for n, v in self.headers if n.lower() == b"content-length"), b"0")
        if not length.strip().isdigit() or int(length) > MAX_BODY:
            self._too_large()

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > MAX_BODY:  # chunked bodies have no length up front
            self._too_large()
        self.body.append(chunk)

    def _too_large(self) -> None:
        self._write(413, "application/json", _TOO_LARGE, head_only=False)
        raise _Refused

    def _is_api(self) -> bool:
        return self.server.serves_api and self.url.startswith(API_PREFIX)

    def on_message_complete(self) -> None:
        if self.answering:
            return
        self.answering = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._is_api():
            self.task = asyncio.get_running_loop().create_task(self._answer_api())
            return
        method = self.parser.get_method()
        try:
            status, content_type, body = self.server.answer(method, self.url)
        except Exception:  # a collector's bug must not take the listener down
            log.exception("admin request %s failed", self.url[:100])
            status, content_type, body = 500, "text/plain", b"internal error\n"
        self._write(status, content_type, body, head_only=method == b"HEAD")

    async def _answer_api(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        try:
            status, headers, body = await asgi_once.call(
                self.server.api(),
                method=method,
                target=self.url,
                headers=self.headers,
                body=b"".join(self.body),
                client=_address(self.transport.get_extra_info("peername")),
                server=_address(self.transport.get_extra_info("sockname")),
            )
        except Exception:
            log.exception("API request %s failed", self.url[:100])
            status, headers, body = 500, [], b"internal error\n"
        kept = b"".join(
            b"%b: %b\r\n" % (n, v)
            for n, v in headers
            if n.lower() not in (b"content-length", b"connection", b"transfer-encoding")
        )
        head = b"HTTP/1.1 %d %b\r\n%bcontent-length: %d\r\nconnection: close\r\n\r\n" % (
            status,
            _REASONS.get(status, b"Error"),
            kept,
            len(body),
        )
        if not self.transport.is_closing():
            self.transport.write(head if method == "HEAD" else head + body)
            self.transport.close()

    def _write(self, status: int, content_type: str, body: bytes, *, head_only: bool) -> None:
        self.answering = True
        head = (
            b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n"
            % (status, _REASONS.get(status, b"Error"), content_type.encode(), len(body))
        )
        self.transport.write(head if head_only else head + body)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _Refused(Exception):
    """Raised out of a parser callback to stop parsing a request already answered."""


def _address(name: Any) -> tuple[str, int] | None:
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return None
