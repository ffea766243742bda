"""A tap on the links between edge nodes: each node advertises its tap's address, so every
byte another node sends it crosses the tap, which counts connections and bytes (they are
TLS: the tap sees who talks to whom and how much, never what). ``silence()`` stands for a
partition that drops every packet: the tap stops passing bytes either way, on live
connections and new ones, without closing anything, until ``restore()``. ``delay``
holds every chunk that long before passing it on, in order: a link across a distance
(this kernel has no netem)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

from tests.e2e.procs import ThreadedServer


class LinkTap(ThreadedServer):
    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay
        self.bytes_in = 0  # towards the node behind the tap
        self.bytes_out = 0
        self._lock = threading.Lock()
        #: Set: nothing passes (what arrives stays in the kernel's buffers unread).
        self.silent = threading.Event()
        super().__init__()

    def silence(self) -> None:
        self.silent.set()

    def restore(self) -> None:
        self.silent.clear()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        while self.silent.is_set() and not self.stopping.is_set():
            time.sleep(0.05)  # a dial into the partition: no answer, no refusal
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            conn.close()
            return
        back = threading.Thread(target=self._copy, args=(upstream, conn, False), daemon=True)
        back.start()
        self._copy(conn, upstream, True)
        back.join(5)
        conn.close()
        upstream.close()

    def _copy(self, src: socket.socket, dst: socket.socket, inward: bool) -> None:
        src.settimeout(0.2)  # polls ``stopping``: ends within a poll of close()
        if self.delay > 0:
            dst = _Delayed(dst, self.delay, self.stopping)  # type: ignore[assignment]
        try:
            while not self.stopping.is_set():
                if self.silent.is_set():
                    time.sleep(0.05)
                    continue
                try:
                    chunk = src.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                with self._lock:
                    if inward:
                        self.bytes_in += len(chunk)
                    else:
                        self.bytes_out += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Delayed:
    """A socket's sending side whose every chunk leaves ``delay`` seconds after it was
    given, in order (a thread sends them); ``shutdown`` comes after the last chunk."""

    def __init__(self, sock: socket.socket, delay: float, stopping: threading.Event) -> None:
        self.sock = sock
        self.delay = delay
        self.stopping = stopping
        self.chunks: queue.Queue[tuple[float, bytes | None]] = queue.Queue()
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def sendall(self, chunk: bytes) -> None:
        self.chunks.put((time.monotonic() + self.delay, chunk))

    def shutdown(self, how: int) -> None:
        self.chunks.put((time.monotonic() + self.delay, None))
        self.thread.join(self.delay + 5)
        self.sock.shutdown(how)

    def _send(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stopping.is_set():
                try:
                    due, chunk = self.chunks.get(timeout=0.2)
                except queue.Empty:
                    continue
                time.sleep(max(0.0, due - time.monotonic()))
                if chunk is None:
                    return
                self.sock.sendall(chunk)
