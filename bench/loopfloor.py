"""The event-loop floor: the cheapest HTTP responder Python on uvloop can be.

relay's edge and agent are Python processes on uvloop. At a fixed, moderate request rate every
request wakes each of them twice (a read on each side), and the fixed cost of one wake-up —
libuv's poll, uvloop's callback into Python, the first touch of cold caches — is paid in full
each time. This responder measures that cost alone: one process, one wake-up per request, no
relaying, no TLS, no parsing beyond finding where each request ends. Its CPU per request at the
same fixed rate as the contestants is the floor below which no uvloop process can go, and so
says how much of relay's CPU per request is the loop's and how much is relay's own.

Run as ``python -m bench.loopfloor --port N``; it prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path
from typing import cast

import uvloop

from bench.contestants import START_TIMEOUT, Contestant
from bench.procs import free_port, wait_listening

#: Same status, body and shape of headers as the origin's `return 200 "ok"`.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench-loopfloor\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 2\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"ok"
)
END_OF_HEAD = b"\r\n\r\n"
#: A request head longer than this without its end is not one oha sends; the connection closes.
MAX_HEAD = 16 * 1024


class RequestCounter:
    """Counts request heads that end in a byte stream read in arbitrary pieces.

    Requests carry no body (oha's GET), so each ``\\r\\n\\r\\n`` ends one. The bytes of an
    unfinished head are kept and searched again with the next piece, so an end split across
    two reads is found, once.
    """

    def __init__(self) -> None:
        #: Bytes of a head whose end has not arrived yet.
        self.unfinished = b""

    def feed(self, data: bytes) -> int:
        """Heads completed by `data`. Raises ValueError past MAX_HEAD without an end."""
        window = self.unfinished + data
        last = window.rfind(END_OF_HEAD)
        self.unfinished = window[last + len(END_OF_HEAD) :] if last >= 0 else window
        if len(self.unfinished) > MAX_HEAD:
            raise ValueError(f"request head longer than {MAX_HEAD} bytes")
        return window.count(END_OF_HEAD)


class Responder(asyncio.Protocol):
    """Answers each request with RESPONSE. The usual read (whole requests, nothing pending) is
    a handful of bytecodes: the floor should be the loop's cost, not this protocol's."""

    def __init__(self) -> None:
        self._counter = RequestCounter()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if not self._counter.unfinished and data.endswith(END_OF_HEAD):
            self._transport.write(RESPONSE * data.count(END_OF_HEAD))
            return
        try:
            done = self._counter.feed(data)
        except ValueError:
            self._transport.close()
            return
        if done:
            self._transport.write(RESPONSE * done)


class LoopFloor(Contestant):
    """The responder above as a row of the fixed-rate table: not a tunnel, a yardstick."""

    key = "loopfloor"
    label = "uvloop floor"
    summary = "a do-nothing HTTP responder on uvloop (one process, one wake-up per request)"

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port)
        self.port = 0

    def start(self) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "bench.loopfloor", "--port", str(self.port)]
        # `-m bench.loopfloor` must find this package wherever the harness was started from.
        repo = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
        }
        p = self._spawn("responder", argv, env)
        wait_listening(self.port, "uvloop floor responder", START_TIMEOUT, [p])
        self.config = {"argv": argv, "python": sys.version.split()[0], "uvloop": version("uvloop")}

    def visitor_port(self) -> int:
        return self.port


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(Responder, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    uvloop.run(serve(ap.parse_args().port))


if __name__ == "__main__":
    main()
