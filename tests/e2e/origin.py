"""An origin web server for HTTP tests, in a thread of the test process (127.0.0.1 only).

GET  /headers         -> JSON of the request line and headers it received
GET  /blob/N[?chunked] -> N deterministic bytes (payload seed 99), content-length or chunked
POST|PUT /sink        -> JSON {"size", "sha256"} of the body (content-length or chunked)
GET  /anything-else   -> "origin ok"
WebSocket echo        -> a second port, ``ws_port``

``RecordingOrigin`` (below) is a raw-socket origin that records every byte it receives.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httptools
from websockets.asyncio.server import serve

from tests.e2e.procs import ThreadedServer, payload

BLOB_SEED = 99


def blob(size: int) -> bytes:
    return payload(BLOB_SEED, size)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/headers":
            seen = {
                "request_line": self.requestline,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
            }
            self._send(200, json.dumps(seen).encode(), "application/json")
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._send(code, b"status %d" % code)
        elif path.startswith("/blob/"):
            size = int(path.rsplit("/", 1)[1])
            data = blob(size)
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            if query == "chunked":
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i in range(0, size, 1 << 20):
                    part = data[i : i + (1 << 20)]
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("content-length", str(size))
                self.end_headers()
                self.wfile.write(data)
        else:
            self._send(200, b"origin ok " + path.encode())

    do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(16)
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def do_POST(self) -> None:
        body = self._read_body()
        digest = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        self._send(200, json.dumps(digest).encode(), "application/json")

    do_PUT = do_POST


class Origin:
    def __init__(self) -> None:
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.http.daemon_threads = True
        self.port = int(self.http.server_address[1])
        self._http_thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._http_thread.start()
        self._loop = asyncio.new_event_loop()
        self._ws_ready = threading.Event()
        self._ws_stop: asyncio.Future[None] | None = None
        self.ws_port = 0
        self._ws_thread = threading.Thread(target=self._run_ws, daemon=True)
        self._ws_thread.start()
        if not self._ws_ready.wait(10):
            raise RuntimeError("websocket origin did not start")

    def _run_ws(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def echo(ws: object) -> None:
            async for message in ws:  # type: ignore[attr-defined]
                await ws.send(message)  # type: ignore[attr-defined]

        async def main() -> None:
            self._ws_stop = self._loop.create_future()
            async with serve(echo, "127.0.0.1", 0) as server:
                self.ws_port = next(iter(server.sockets)).getsockname()[1]
                self._ws_ready.set()
                await self._ws_stop

        self._loop.run_until_complete(main())
        self._loop.close()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        if self._ws_stop is not None:
            self._loop.call_soon_threadsafe(self._ws_stop.set_result, None)
        self._ws_thread.join(5)
        self._http_thread.join(5)


# --- a raw origin that records every byte ---------------------------------------------


@dataclass
class SeenRequest:
    """One request as a real HTTP/1.1 server behind the tunnel parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in arrival order
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


class _RequestCollector:
    """httptools callbacks: completed requests land in ``done``."""

    def __init__(self, parser_ref: list[httptools.HttpRequestParser]) -> None:
        self.parser_ref = parser_ref
        self.current = SeenRequest(b"", b"", [])
        self.done: list[SeenRequest] = []

    def on_message_begin(self) -> None:
        self.current = SeenRequest(b"", b"", [])

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.current.method = self.parser_ref[0].get_method()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.current)


class RecordingOrigin(ThreadedServer):
    """A raw-socket HTTP/1.1 origin (127.0.0.1, a thread per connection) that records every
    byte it receives and every request it parses — with httptools, as a real server would,
    so bytes smuggled past the edge show up as requests of their own.

    Each request is answered ``200`` with the body ``seen <n> <target>`` (n counts requests
    over all connections). An Upgrade request is answered with ``upgrade_status``: 101 →
    every later byte of that connection is echoed raw; anything else → an ordinary
    response, and the bytes after it are parsed as HTTP again (a server that ignores
    Upgrade, as RFC 9110 §7.8 allows). ``interim`` (e.g. a ``100 Continue`` head) is sent
    before that answer; with ``drip`` the answer's head goes out a byte at a time;
    ``answer_after`` seconds pass before it.
    """

    def __init__(
        self,
        upgrade_status: int = 101,
        interim: bytes = b"",
        drip: bool = False,
        answer_after: float = 0.0,
    ) -> None:
        self.upgrade_status = upgrade_status
        self.interim = interim
        self.drip = drip
        self.answer_after = answer_after
        self.records: list[bytearray] = []
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        super().__init__(backlog=64)

    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c) for c in self.records)

    def serve(self, conn: socket.socket) -> None:
        with self._lock:
            record = bytearray()
            self.records.append(record)
        conn.settimeout(0.2)
        parser_ref: list[httptools.HttpRequestParser] = []
        collector = _RequestCollector(parser_ref)
        parser_ref.append(httptools.HttpRequestParser(collector))
        raw = False
        with conn:
            while not self.stopping.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    record += data
                if raw:
                    conn.sendall(data)
                    continue
                rest = data
                while rest:
                    try:
                        parser_ref[0].feed_data(rest)
                        rest = b""
                    except httptools.HttpParserUpgrade as exc:
                        offset = int(exc.args[0])
                        # feed_data stopped after the Upgrade request: answer what is done.
                        self._answer(conn, collector)
                        rest = rest[offset:]
                        if self.upgrade_status == 101:
                            upgrade = (
                                b", ".join(collector.done[-1].values(b"upgrade"))
                                if (collector.done)
                                else b""
                            )
                            self._send_head(
                                conn,
                                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                                b"upgrade: %b\r\n\r\n" % upgrade,
                            )
                            raw = True
                            if rest:
                                conn.sendall(rest)
                            rest = b""
                        else:
                            parser_ref[0] = httptools.HttpRequestParser(collector)
                    except httptools.HttpParserError:
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        return
                    self._answer(conn, collector)

    def _answer(self, conn: socket.socket, collector: _RequestCollector) -> None:
        while collector.done:
            request = collector.done.pop(0)
            with self._lock:
                self.requests.append(request)
                index = len(self.requests)
            if request.values(b"upgrade") and self.upgrade_status == 101:
                continue  # answered with the 101 by the caller
            body = b"seen %d %b" % (index, request.target)
            head = b"HTTP/1.1 %b\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n"
            if request.values(b"upgrade"):
                self._send_head(conn, head % (b"%d Whatever" % self.upgrade_status, len(body)))
                conn.sendall(body)
            else:
                conn.sendall(head % (b"200 OK", len(body)) + body)

    def _send_head(self, conn: socket.socket, head: bytes) -> None:
        """The answer to an Upgrade request: after ``interim``, maybe a byte at a time."""
        time.sleep(self.answer_after)
        if self.interim:
            conn.sendall(self.interim)
        if not self.drip:
            conn.sendall(head)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(head)):
            conn.sendall(head[i : i + 1])
            time.sleep(0.002)


class NamedOrigin:
    """An origin that answers every request with its own name (which member served)."""

    def __init__(self, name: str) -> None:
        body = name.encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
