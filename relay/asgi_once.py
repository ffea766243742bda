"""One HTTP request through an ASGI application, whole: the admin listener reads the
request itself (with its own limits) and hands it over complete, then writes the answer
back whole. No streaming either way: the API's requests and answers are small."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]


async def call(
    app: ASGIApp,
    *,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``(status, headers, body)`` of ``app``'s answer to one request."""
    raw_path, _, query = target.partition(b"?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": client,
        "server": server,
    }
    answered = asyncio.Event()
    delivered = False
    status = 500
    answer_headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()  # the client is "gone" once the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, answer_headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            answer_headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                answered.set()

    try:
        await app(scope, receive, send)
    finally:
        answered.set()
    return status, answer_headers, b"".join(chunks)
