"""Fixtures for the interop tests: build goyamux, start it, connect a driver to it."""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

GOYAMUX_SRC = Path(__file__).parent / "goyamux"
HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def goyamux_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("go not found: the interop tests need the Go toolchain")
    out = tmp_path_factory.mktemp("goyamux") / "goyamux"
    env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false", GOTOOLCHAIN="local")
    proc = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=GOYAMUX_SRC,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"go build of goyamux failed:\n{proc.stdout}{proc.stderr}")
    return out


class GoPeer:
    """One goyamux process; stopped by its PID (never by name)."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path

    def stderr(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-6000:]

    def describe(self) -> str:
        rc = self.proc.poll()
        return f"goyamux pid {self.proc.pid} rc={rc}; its stderr:\n{self.stderr()}"

    def read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise AssertionError(f"goyamux printed no port in {timeout}s\n{self.describe()}")
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), f"goyamux first line {line!r}\n{self.describe()}"
        return int(line)

    def wait_ok(self, timeout: float = 10) -> None:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"goyamux did not exit within {timeout}s\n{self.describe()}"
            ) from None
        assert rc == 0, f"goyamux failed with exit status {rc}\n{self.describe()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID
        try:
            self.proc.wait(10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def go_peer(
    goyamux_bin: Path, tmp_path: Path
) -> Iterator[Callable[..., tuple[GoPeer, socket.socket]]]:
    """Start goyamux and return (peer, connected socket).

    ``go_listens`` picks who dials: goyamux listens and Python connects, or the other
    way round. The yamux role is independent of it.
    """
    started: list[GoPeer] = []
    socks: list[socket.socket] = []

    def start(
        scenario: str, *, go_role: str, go_listens: bool, timeout_s: int = 60, **flags: Any
    ) -> tuple[GoPeer, socket.socket]:
        args = [
            str(goyamux_bin),
            "-scenario",
            scenario,
            "-role",
            go_role,
            "-timeout",
            f"{timeout_s}s",
        ]
        for k, v in flags.items():
            args += [f"-{k.replace('_', '-')}", str(v)]
        listener = None
        if go_listens:
            args += ["-listen", f"{HOST}:0"]
        else:
            listener = socket.create_server((HOST, 0))
            listener.settimeout(10)
            args += ["-dial", f"{HOST}:{listener.getsockname()[1]}"]
        stderr_path = tmp_path / f"goyamux-{len(started)}.stderr"
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        peer = GoPeer(proc, stderr_path)
        started.append(peer)
        try:
            if go_listens:
                port = peer.read_port(timeout=10)
                sock = socket.create_connection((HOST, port), timeout=10)
            else:
                assert listener is not None
                sock, _ = listener.accept()
        finally:
            if listener is not None:
                listener.close()
        socks.append(sock)
        return peer, sock

    try:
        yield start
    finally:
        for s in socks:
            s.close()
        for p in started:
            p.stop()
