"""An edge whose HTTP or TLS port is taken says so in one line (RLY_403, the address and the
flag) and exits 4, instead of a traceback. A real ``relay edge`` process on 127.0.0.1, its
port held by a listening socket of the test."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.procs import RELAY, free_port, free_port_range


@pytest.mark.timeout(90)
@pytest.mark.parametrize("flag", ["--http-listen", "--https-listen"])
def test_an_edge_whose_web_port_is_taken_exits_4_with_rly_403(tmp_path: Path, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        listeners = {
            "--http-listen": f"127.0.0.1:{free_port()}",
            "--https-listen": f"127.0.0.1:{free_port()}",
        }
        listeners[flag] = busy
        low, high = free_port_range()
        done = subprocess.run(
            [
                *RELAY,
                "edge",
                "--data-dir",
                str(tmp_path / "edge"),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--tcp-ports",
                f"{low}-{high}",
                "--tcp-bind",
                "127.0.0.1",
                *(part for pair in listeners.items() for part in pair),
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,  # run() kills the child (by its PID) if it hangs
        )
    output = done.stdout + done.stderr
    assert done.returncode == 4, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "RLY_403" in line]
    assert len(lines) == 1, output
    assert busy in lines[0] and flag in lines[0], lines
