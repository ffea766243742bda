"""AcceptLoop at the descriptor limit: a connection stays queued, yet the process neither
spins nor floods its log, and serves the connection once descriptors are free again.

The limit is real: a child process lowers its own RLIMIT_NOFILE and fills the table
(tests/unit/accept_limit_child.py). CPU time is read from /proc for the child, over a
second of being stuck; the bound is generous (a spinning loop uses the whole second).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = [sys.executable, "-m", "tests.unit.accept_limit_child"]
STUCK_FOR = 1.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def read_json(stream: IO[str], deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise EOFError("child closed stdout")
        line = line.strip()
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise TimeoutError("no line from the child in time")


@pytest.mark.timeout(60)
def test_accept_loop_pauses_at_the_descriptor_limit_and_serves_the_queued_connection() -> None:
    child = subprocess.Popen(
        CHILD,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_lines: list[str] = []
    reader = threading.Thread(
        target=lambda: log_lines.extend(iter(child.stderr.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    client: socket.socket | None = None
    try:
        assert child.stdout is not None and child.stdin is not None
        deadline = time.monotonic() + 30
        port = read_json(child.stdout, deadline)["port"]
        assert read_json(child.stdout, deadline)["full"] > 0
        message = os.urandom(64)
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(message)  # queued in the child's backlog: it has no descriptor left
        time.sleep(0.2)  # the child has tried and failed to accept by now
        lines_before = len(log_lines)
        cpu_before = cpu_seconds(child.pid)
        time.sleep(STUCK_FOR)
        cpu_used = cpu_seconds(child.pid) - cpu_before
        lines_during = len(log_lines) - lines_before
        child.stdin.write("free\n")
        child.stdin.flush()
        assert read_json(child.stdout, deadline)["freed"] > 0
        served = read_json(child.stdout, deadline)["served"]
        client.settimeout(10)
        answer = b""
        while len(answer) < 64:
            chunk = client.recv(64)
            if not chunk:
                break
            answer += chunk
        child.stdin.write("quit\n")
        child.stdin.flush()
        child.wait(10)
    finally:
        if client is not None:
            client.close()
        if child.poll() is None:
            child.kill()
            child.wait(5)
        reader.join(5)
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    expected = hashlib.sha256(message).hexdigest()
    assert served == expected and answer == expected.encode()
    # One warning for the whole episode, naming the listener and the limit; nothing
    # more while stuck; one INFO line once accepting works again.
    warnings = [line for line in log_lines if line.startswith("WARNING")]
    assert len(warnings) == 1, log_lines
    assert "descriptor limit reached (RLIMIT_NOFILE " in warnings[0]
    assert "pausing accepts on test port 127.0.0.1:" in warnings[0]
    assert lines_during == 0, log_lines
    assert sum("accepting again on test port" in line for line in log_lines) == 1, log_lines
    assert cpu_used < 0.3, f"{cpu_used:.2f} CPU-s in {STUCK_FOR} s while stuck"
