"""An origin web server for HTTP tests, in a thread of the test process (127.0.0.1 only).

GET  /headers         -> JSON of the request line and headers it received
GET  /blob/N[?chunked] -> N deterministic bytes (payload seed 99), content-length or chunked
POST|PUT /sink        -> JSON {"size", "sha256"} of the body (content-length or chunked)
GET  /anything-else   -> "origin ok"
WebSocket echo        -> a second port, ``ws_port``
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from websockets.asyncio.server import serve

from tests.e2e.procs import payload

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
