"""A hostile agent for end-to-end tests: raw yamux frames over TLS to a real edge.

Speaks just enough of the protocol to misbehave on purpose (open streams it must not,
ping without reading, send control messages no agent would), with the edge's own CA.
"""

from __future__ import annotations

import json
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from relay.protocol import PROTOCOL_VERSION, Auth, Message

DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
CONTROL_STREAM = 1


def frame(kind: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BBHII", 0, kind, flags, stream_id, length) + payload


def control_message(message: Message | bytes, *, syn: bool = False) -> bytes:
    """A control message as the agent sends it: a data frame on stream 1 (with SYN when it
    opens the stream) carrying the 4-byte length and the JSON body."""
    body = message if isinstance(message, bytes) else message.to_wire()[4:]
    wire = struct.pack(">I", len(body)) + body
    return frame(DATA, SYN if syn else 0, CONTROL_STREAM, len(wire), wire)


def tls_link(
    address: tuple[str, int],
    ca_file: Path,
    *,
    timeout: float = 10.0,
    alpn: tuple[str, ...] = ("relay/1",),
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(address, timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def authenticate(
    link: ssl.SSLSocket,
    token: str,
    *,
    timeout: float = 10.0,
    version: str = "hostile/0",
    protocol: int = PROTOCOL_VERSION,
    agent_id: str = "a_hostile",
) -> bytes:
    """Open the control stream with an Auth and read until the edge says auth_ok; what
    the edge sent, from the auth_ok on."""
    auth = Auth(token=token, agent_id=agent_id, version=version, protocol=protocol)
    link.sendall(control_message(auth, syn=True))
    link.settimeout(timeout)
    seen = b""
    deadline = time.monotonic() + timeout
    while b'"auth_ok"' not in seen or not seen.rstrip().endswith(b"}"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no auth_ok; got {seen[:200]!r}")
        chunk = link.recv(65536)
        if not chunk:
            raise ConnectionError(f"edge closed the link before auth_ok; got {seen[:200]!r}")
        seen += chunk
    return seen[seen.index(b'{"type":"auth_ok"') :]


def read_until_closed(link: ssl.SSLSocket, *, timeout: float = 10.0) -> bytes:
    """Everything the edge sends until it closes the link (a reset counts as closing)."""
    link.settimeout(timeout)
    seen = b""
    try:
        while chunk := link.recv(65536):
            seen += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return seen


def send_until_closed(
    link: ssl.SSLSocket, frames: Callable[[int], bytes], *, seconds: float
) -> float | None:
    """Send ``frames(i)`` batches (never reading) for up to ``seconds``; return how long
    the edge took to close the link from the first batch, or None if it never did."""
    link.settimeout(5.0)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds:
        try:
            link.sendall(frames(i))
        except (OSError, ssl.SSLError):  # reset, broken pipe, TLS EOF: the edge hung up
            return time.monotonic() - started
        i += 1
    return None


class LatencyProbe:
    """Small echo round trips through a live tunnel on one connection, timed, until the
    block ends: what a real visitor feels while something else goes on. It runs in a
    process of its own, so the test's flooding threads cannot delay it on the GIL."""

    def __init__(self, port: int, *, interval: float = 0.01) -> None:
        self.port = port
        self.interval = interval
        self.samples: list[float] = []
        self.failure: str | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LatencyProbe:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.agent_wire", str(self.port), str(self.interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        proc = self._proc
        assert proc is not None
        try:
            out, _ = proc.communicate("stop\n", timeout=30)  # EOF on stdin ends it
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
        result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        self.samples = result.get("samples", [])
        self.failure = result.get("failure") or (None if result else f"probe said: {out!r}")

    def p99(self) -> float:
        return statistics.quantiles(self.samples, n=100)[98]


def _probe(port: int, interval: float) -> None:
    """The probe process: round trips until stdin has a line (or closes), then one JSON
    line with the samples (seconds) and any failure."""
    samples: list[float] = []
    failure = None
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(100_000):  # bounded; stopped long before
                if stop.is_set():
                    break
                message = b"%08d" % i * 8
                started = time.monotonic()
                sock.sendall(message)
                got = b""
                while len(got) < len(message):
                    chunk = sock.recv(len(message) - len(got))
                    if not chunk:
                        raise ConnectionError("tunnel closed")
                    got += chunk
                samples.append(time.monotonic() - started)
                if got != message:
                    raise AssertionError(f"echo mismatch: {got!r} != {message!r}")
                time.sleep(interval)
    except Exception as exc:
        failure = repr(exc)
    print(json.dumps({"samples": samples, "failure": failure}), flush=True)


if __name__ == "__main__":
    _probe(int(sys.argv[1]), float(sys.argv[2]))
