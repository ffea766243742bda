"""Processes, ports and CPU accounting for the harness.

Every process the harness starts is a `Proc`: started in its own session, stopped by PID (SIGTERM,
bounded wait, SIGKILL), together with any descendants it left behind (also by PID, after checking
the PID still names the same process). Waits are bounded everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A tool or contestant failed; the run records it and goes on."""


#: How long a GET of an edge's admin /status may take.
STATUS_TIMEOUT = 5.0


def get_status(url: str, who: str) -> dict[str, Any]:
    """An edge's admin ``/status`` (a JSON object), or BenchError naming ``who``."""
    try:
        with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT) as answer:
            data = json.loads(answer.read())
    except (OSError, ValueError) as e:
        raise BenchError(f"{who}: GET {url}: {e}") from e
    if not isinstance(data, dict):
        raise BenchError(f"{who}: {url} is not a JSON object")
    return data


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _is_gone(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def descendants(root: int) -> list[int]:
    """PIDs of all live descendants of `root` (not including root)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def own_cpu_ticks(pid: int) -> int | None:
    """utime+stime of one process (not its children), or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else None


def tree_cpu_ticks(root: int) -> int:
    """utime+stime+cutime+cstime summed over `root` and its live descendants.

    A reaped child's time moves into its parent's cutime/cstime, so the sum stays continuous
    while processes inside the tree come and go.
    """
    total = 0
    for pid in [root, *descendants(root)]:
        fields = _stat_fields(pid)
        if fields:
            total += sum(int(x) for x in fields[11:15])
    return total


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state on 127.0.0.1 or the wildcard address (IPv4 and IPv6)."""
    ports: set[int] = set()
    ok_addrs = {
        "0100007F",  # 127.0.0.1
        "00000000",  # 0.0.0.0
        "00000000000000000000000000000000",  # ::
        "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
    }
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4 or parts[3] != "0A":
                continue
            addr, _, port = parts[1].partition(":")
            if addr in ok_addrs:
                ports.add(int(port, 16))
    return ports


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_in_range(lo: int, hi: int, exclude: Iterable[int] = ()) -> int:
    """A free TCP port on 127.0.0.1 in [lo, hi]."""
    skip = set(exclude) | listening_ports()
    candidates = [p for p in range(lo, hi + 1) if p not in skip]
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError(f"no free TCP port in {lo}-{hi}")


# --------------------------------------------------------------------------- processes


class Proc:
    """A process started by the harness, logging to files, stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        self._files: list[IO[bytes]] = [
            self.stdout_path.open("wb"),
            self.stderr_path.open("wb"),
        ]
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._files[0],
                stderr=self._files[1],
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        except OSError as e:
            self._close_files()
            raise BenchError(f"{name}: cannot start {self.argv[0]}: {e}") from e
        self.pid = self.popen.pid
        self._stopped = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll()

    def cpu_ticks(self) -> int:
        return tree_cpu_ticks(self.pid)

    def output(self) -> str:
        """stdout + stderr so far."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def tail(self, lines: int = 15) -> str:
        text = self.output().strip().splitlines()
        return "\n".join(text[-lines:])

    def describe_exit(self) -> str:
        rc = self.returncode()
        tail = " / ".join(ln.strip() for ln in self.tail(3).splitlines() if ln.strip())
        return f"{self.name} (pid {self.pid}) exited with code {rc}" + (
            f" (last output: {tail})" if tail else " and printed nothing"
        )

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to `timeout`, SIGKILL; then the same for leftover descendants."""
        if self._stopped:
            return
        self._stopped = True
        try:
            left = [(pid, _start_time(pid)) for pid in descendants(self.pid)]
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        self.popen.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.popen.wait(timeout)
            _stop_pids(left, timeout)
        finally:
            self._close_files()

    def _close_files(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()


def _stop_pids(pids: list[tuple[int, int | None]], timeout: float) -> None:
    """Terminate the given (pid, start time) pairs that still name the same process."""
    mine = [(pid, st) for pid, st in pids if st is not None and _start_time(pid) == st]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [(pid, st) for pid, st in mine if not _is_gone(pid) and _start_time(pid) == st]
        if not live:
            return
        for pid, _ in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_is_gone(pid) or _start_time(pid) != st for pid, st in live):
                return
            time.sleep(0.05)


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    watch: Sequence[Proc] = (),
    interval: float = 0.05,
) -> None:
    """Poll `check()` until true; fail fast if a watched process exits; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        for p in watch:
            if not p.alive():
                raise BenchError(f"waiting for {what}: {p.describe_exit()}")
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_listening(port: int, what: str, timeout: float, watch: Sequence[Proc] = ()) -> None:
    wait_until(
        f"{what} to listen on 127.0.0.1:{port}", lambda: port in listening_ports(), timeout, watch
    )


def run_tool(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion (bounded); never raises for a non-zero exit."""
    try:
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{argv[0]} timed out after {timeout:.0f} s") from e
    except OSError as e:
        raise BenchError(f"cannot run {argv[0]}: {e}") from e
