"""Real processes for end-to-end tests: an edge, agents, and small upstream servers.

Everything listens on 127.0.0.1 only. Every process is stopped by its PID (SIGTERM, then
SIGKILL after a deadline), also when the test fails; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.ports import free_port, free_port_range

RELAY = [sys.executable, "-m", "relay.cli"]


def wait_for_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


class Proc:
    """A child process whose output lines are collected by a thread."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line with {needle!r}; output:\n" + self.text())
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    time.sleep(0.1)
                    if self.lines.empty():
                        raise RuntimeError(
                            f"exited {self.proc.returncode} without {needle!r}:\n" + self.text()
                        ) from None
                continue
            if needle in line:
                return line

    def text(self) -> str:
        return "\n".join(self.output)

    def wait_all(self, *needles: str, timeout: float = 20.0) -> None:
        """Until every needle is somewhere in the output, in any order (lines other
        processes of its own write, e.g. an edge's workers, come in any order)."""
        deadline = time.monotonic() + timeout
        while not all(n in self.text() for n in needles):
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in self.text()]
                raise TimeoutError(f"no line with {missing!r}; output:\n" + self.text())
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by PID; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL by PID (the process gets no chance to say goodbye)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


class Edge:
    def __init__(
        self,
        data_dir: Path,
        *,
        listen_port: int | None = None,
        ports: tuple[int, int] | None = None,
        extra: list[str] | None = None,
        global_options: list[str] | None = None,
        workers: int = 1,
        host: str = "127.0.0.1",
    ) -> None:
        """``workers``: run it as ``--workers N``; the edge's admin listener (the
        supervisor's, summing the workers') is then ``admin_port`` and worker i's
        ``admin_port`` + 1 + i (a free run of N + 1 ports). ``host``: the loopback address every
        listener of this edge binds (a PoP of its own: 127.0.0.2, 127.0.0.3, …)."""
        self.host = host
        self.data_dir = data_dir
        self.global_options = global_options or []
        self.listen_port = listen_port or free_port()
        self.ports = ports or free_port_range()
        self.http_port = free_port()
        self.https_port = free_port()
        # With workers: the supervisor's (summing) listener, then one per worker.
        self.admin_port = free_port() if workers == 1 else free_port_range(workers + 1)[0]
        self.workers = workers
        self.extra = extra or []
        self.proc: Proc | None = None

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca" / "ca.pem"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.listen_port}"

    def start(self) -> Edge:
        self.proc = Proc(
            [
                *RELAY,
                *self.global_options,
                "edge",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                self.address,
                "--tcp-ports",
                f"{self.ports[0]}-{self.ports[1]}",
                "--tcp-bind",
                self.host,
                "--http-listen",
                f"{self.host}:{self.http_port}",
                "--https-listen",
                f"{self.host}:{self.https_port}",
                "--base-domain",
                "relay.localhost",
                "--admin-listen",
                f"{self.host}:{self.admin_port}",
                # One process unless asked (relay edge's own default is one per core).
                *([] if "--workers" in self.extra else ["--workers", str(self.workers)]),
                *self.extra,
            ]
        )
        self.proc.wait_line("listening for agents", timeout=30)
        return self

    def stop(self) -> int:
        return self.proc.stop() if self.proc else 0

    def worker_status(self, worker: int = 0) -> dict[str, Any]:
        """``/status`` of worker ``worker``: its own admin listener, ``admin_port`` + 1 +
        index (one process: ``admin_port``, there is no supervisor)."""
        port = self.admin_port + (1 + worker if self.workers > 1 else 0)
        url = f"http://{self.host}:{port}/status"
        with urllib.request.urlopen(url, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
        return result

    def audit_details(self, action: str) -> list[dict[str, object]]:
        """The detail of every audit event ``action`` in the edge's (SQLite) store."""
        from relay.control.store import Store

        store = Store.open(f"sqlite:///{self.data_dir / 'relay.db'}")
        try:
            return [dict(e.detail) for e in store.audit.events() if e.action == action]
        finally:
            store.close()

    def reserve_domain(self, domain: str, region: str | None = None) -> str:
        """Reserve ``domain`` in the edge's (SQLite) store for the ``default`` account, the
        one ``relay token create`` makes tokens for: names outside the base domain, and
        wildcards, are bound only by their account; ``region``: pinned there. Returns the
        reservation's id."""
        from relay.control.store import Store

        store = Store.open(f"sqlite:///{self.data_dir / 'relay.db'}")
        try:
            return store.reserve_domain(None, domain, region=region, actor="test").id
        finally:
            store.close()

    def token(self, *extra: str) -> tuple[str, str]:
        out = subprocess.run(
            [*RELAY, "token", "create", "--data-dir", str(self.data_dir), "-o", "json", *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        obj = json.loads(out.stdout.strip().splitlines()[-1])
        return obj["id"], obj["token"]


class Agent:
    def __init__(
        self,
        edge: Edge,
        token: str,
        upstream_port: int | str,
        *,
        remote_port: int = 0,
        extra: list[str] | None = None,
        kind: str = "tcp",
        via: str | None = None,
    ) -> None:
        """``via``: the address the agent dials instead of the edge's (a tap in between)."""
        upstream = upstream_port if isinstance(upstream_port, str) else f"127.0.0.1:{upstream_port}"
        args = [
            *RELAY,
            kind,
            upstream,
            "--edge",
            via or edge.address,
            "--token",
            token,
            "--ca-file",
            str(edge.ca_file),
            "--server-name",
            "localhost",
        ]
        if remote_port:
            args += ["--remote-port", str(remote_port)]
        self.proc = Proc(args + (extra or []))
        self.remote_port = 0
        self.url = ""

    def wait_bound(self, timeout: float = 30.0) -> int:
        line = self.proc.wait_line("Forwarding", timeout)
        self.url = line.split()[1]
        self.remote_port = int(self.url.rsplit(":", 1)[1])
        return self.remote_port

    def stop(self) -> int:
        return self.proc.stop()


# --- upstream servers, in threads of the test process ------------------------------------


class ThreadedServer:
    """A test server on 127.0.0.1: one thread accepts, each connection gets a thread of
    its own running ``serve(conn)``. ``close()`` stops accepting and sets ``stopping``
    (connection threads that poll it end within their poll). Subclasses set their own
    attributes before calling ``__init__``: the first connection may arrive at once."""

    def __init__(self, backlog: int = 128) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.stopping = threading.Event()
        self._served: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self.serve, args=(conn,), daemon=True)
            self._served.append(thread)
            thread.start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        deadline = time.monotonic() + 2.0
        for thread in [self._thread, *self._served]:  # those that poll ``stopping`` end
            thread.join(max(0.0, deadline - time.monotonic()))


class EchoServer(ThreadedServer):
    """Echoes every byte; on the client's half-close, finishes and half-closes back.
    With ``ssl_context`` it is a TLS server (``handshakes`` counts completed ones)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.handshakes = 0
        super().__init__(backlog=512)

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        try:
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
                self.handshakes += 1
            with conn:
                while True:
                    data = conn.recv(262144)
                    if not data:
                        if self.ssl_context is None:
                            conn.shutdown(socket.SHUT_WR)
                        return
                    conn.sendall(data)
        except OSError:  # ssl.SSLError is an OSError too
            conn.close()


class SourceServer:
    """Writes up to ``limit`` bytes to each client as fast as the socket takes them and
    records how much it managed to write (a blocked writer shows backpressure)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.written = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        chunk = os.urandom(65536)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(0.2)
                while self.written < self.limit and not self._stop.is_set():
                    try:
                        self.written += conn.send(chunk)
                    except TimeoutError:
                        continue
                    except OSError:
                        break

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


def payload(seed: int, size: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(8, "big")).digest(size)


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs (until its own timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.05)  # the fillers' handshakes fill the queue
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


@contextlib.contextmanager
def connect(
    port: int, timeout: float = 30.0, address: str = "127.0.0.1"
) -> Iterator[socket.socket]:
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def echo_roundtrip(
    port: int,
    data: bytes,
    *,
    half_close: bool = True,
    timeout: float = 60.0,
    address: str = "127.0.0.1",
) -> bytes:
    """Send ``data`` (from a thread), half-close, read everything back until EOF."""
    with connect(port, timeout, address) as sock:
        error: list[BaseException] = []

        def send() -> None:
            try:
                view = memoryview(data)
                for i in range(0, len(view), 1 << 20):
                    sock.sendall(view[i : i + (1 << 20)])
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # surfaced below
                error.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            if not half_close and sum(map(len, chunks)) >= len(data):
                break
        sender.join(timeout)
        if error:
            raise error[0]
        return b"".join(chunks)


def echoed_whole(address: str, port: int, data: bytes, timeout: float = 10.0) -> bool:
    """An echo at ``address``:``port`` sent ``data`` back whole (SHA-256); False when it
    did not, or the connection failed (nothing serves there, or it was cut)."""
    try:
        back = echo_roundtrip(port, data, address=address, timeout=timeout)
    except OSError:
        return False
    return hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
