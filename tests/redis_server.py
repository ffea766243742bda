"""A real Redis server for the tests: Debian's ``redis-server`` on a free 127.0.0.1 port,
with no persistence, stopped by its process id.

``.ci/run`` installs the package (scripts/install-test-deps.sh); where it is missing the
tests that need it are skipped with that reason. A test module takes the fixture by
importing it (it is not in a conftest, so only the suites that want Redis see it)::

    from tests.redis_server import redis_server  # noqa: F401

and asks for ``redis_server: RedisServer`` in a test; the server is stopped afterwards,
also when the test fails. :meth:`RedisServer.restart` is an outage that loses every key;
:meth:`RedisServer.pause` one where Redis accepts connections but answers nothing, until
:meth:`RedisServer.resume`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import free_port

BINARY = "/usr/bin/redis-server"
#: How long the server may take to answer PING after it starts.
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


def unavailable() -> str | None:
    """Why no server can be started here, or None."""
    if not os.access(BINARY, os.X_OK):
        return f"{BINARY} is not installed (apt-get install redis-server)"
    return None


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process writing nothing but its log, in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on a free port, or on the same port again after :meth:`stop`."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        with (self.root / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    BINARY,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.root),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self.port):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server not ready: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process by its id: SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)

    def pause(self) -> None:
        """Freeze the process by its id (SIGSTOP): it keeps its port, and the kernel still
        accepts connections to it, but nothing is answered (a hung or partitioned Redis).
        A test that pauses resumes in a ``finally``: a stopped process ignores SIGTERM
        until it is continued, so :meth:`stop` would wait for the SIGKILL."""
        assert self.proc is not None and self.proc.poll() is None, "redis-server is not running"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process go on (SIGCONT, by its id)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Stop, then start on the same port with no data (nothing is saved)."""
        self.stop()
        return self.start()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "redis.log").read_text(errors="replace")[-2000:]
        return "(no log)"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty Redis for one test, stopped afterwards."""
    why = unavailable()
    if why:
        pytest.skip(why)
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
