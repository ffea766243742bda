"""Memory slopes of the relay edge: RSS per idle agent session and per idle open stream.

Sessions: a fresh edge; RSS (VmRSS) at 0 sessions, then after each step of idle sessions opened
by `python -m bench.memload sessions` (many `Agent`s in one process). Streams: a fresh edge and a
`relay tcp` agent forwarding to a holder upstream; idle visitor connections opened in steps by
`python -m bench.memload streams`. Slope = least-squares bytes per session / stream over the
points. Kernel socket memory (/proc/net/sockstat `TCP mem`, pages) is recorded separately.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.contestants import Relay
from bench.procs import BenchError, free_port

PAGE = os.sysconf("SC_PAGE_SIZE")
SETTLE_S = 1.5


def raise_nofile(n: int = 65536) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in ((max(n, hard), max(n, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            return
        except (ValueError, OSError):
            continue


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def sockstat() -> dict[str, int]:
    """TCP fields of /proc/net/sockstat (mem in pages) and the socket count."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            parts = line.split()
            if parts[0] in ("TCP:", "sockets:"):
                kv = parts[1:]
                for k, v in zip(kv[::2], kv[1::2], strict=False):
                    out[f"{parts[0].rstrip(':').lower()}_{k}"] = int(v)
    except (OSError, ValueError):
        pass
    return out


def slope(points: list[tuple[int, int]]) -> float | None:
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / den


class LineProc:
    """A helper process with stdin/stdout pipes; stopped by PID in stop()."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log.open("wb")
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"memload: no `{prefix}` within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError(f"memload exited {self.p.poll()} before `{prefix}`")
            if line.startswith("error"):
                raise BenchError(f"memload: {line}")
            if line.startswith(prefix):
                return line

    def next_step(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("next\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.p.stdin:
                self.p.stdin.close()
        try:
            self.p.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(5)
        self.log.close()


def _measure(pids: dict[str, int]) -> dict[str, int | None]:
    time.sleep(SETTLE_S)
    return {role: rss_bytes(pid) for role, pid in pids.items()}


def sessions_slope(work: Path, steps: list[int]) -> dict[str, Any]:
    res: dict[str, Any] = {"steps": steps, "points": [], "ok": False}
    relay = Relay(work / "mem-sessions", 9)
    why = relay.unavailable()
    if why:
        return {**res, "error": why}
    lp: LineProc | None = None
    try:
        token, ca = relay.start_edge()
        edge = relay.procs["edge"]
        res["edge_argv"] = relay.config["edge"]
        k0 = sockstat()
        r0 = _measure({"edge": edge.pid})
        res["points"].append({"sessions": 0, "rss": r0, "sockstat": k0})
        argv = [sys.executable, "-m", "bench.memload", "sessions",
                "--edge", f"127.0.0.1:{relay.edge_port}", "--token", token,
                "--ca-file", str(ca), "--steps", ",".join(map(str, steps))]  # fmt: skip
        lp = LineProc(argv, relay.work / "memload.err")
        for i, n in enumerate(steps):
            lp.expect("ready", 60 + n * 0.2)
            pt = _measure({"edge": edge.pid, "memload": lp.p.pid})
            res["points"].append({"sessions": n, "rss": pt, "sockstat": sockstat()})
            if not edge.alive():
                raise BenchError(edge.describe_exit())
            if i + 1 < len(steps):
                lp.next_step()
        pts = [(p["sessions"], p["rss"]["edge"]) for p in res["points"] if p["rss"].get("edge")]
        res["edge_bytes_per_session"] = slope(pts)
        lpts = [
            (p["sessions"], p["rss"]["memload"]) for p in res["points"] if p["rss"].get("memload")
        ]
        res["agent_bytes_per_session"] = slope(lpts)  # memload: Agents in one process
        tm = [(p["sessions"], p["sockstat"].get("tcp_mem", 0) * PAGE) for p in res["points"]]
        res["kernel_tcp_mem_bytes_per_session"] = slope(tm)
        res["ok"] = res["edge_bytes_per_session"] is not None
    except BenchError as e:
        res["error"] = str(e)
        res["logs"] = relay.logs()
    finally:
        if lp is not None:
            lp.stop()
        relay.stop()
    return res


def streams_slope(work: Path, steps: list[int]) -> dict[str, Any]:
    res: dict[str, Any] = {"steps": steps, "points": [], "ok": False}
    holder = free_port()
    relay = Relay(work / "mem-streams", holder)
    why = relay.unavailable()
    if why:
        return {**res, "error": why}
    lp: LineProc | None = None
    try:
        relay.start()
        edge, agent = relay.procs["edge"], relay.procs["agent"]
        res["config"] = dict(relay.config)
        port = relay.visitor_port()
        k0 = sockstat()
        r0 = _measure({"edge": edge.pid, "agent": agent.pid})
        res["points"].append({"streams": 0, "rss": r0, "sockstat": k0})
        argv = [sys.executable, "-m", "bench.memload", "streams", "--port", str(port),
                "--holder-port", str(holder), "--steps", ",".join(map(str, steps)),
                "--timeout", "30"]  # fmt: skip
        lp = LineProc(argv, relay.work / "memload.err")
        lp.expect("holder listening", 30)
        for i, n in enumerate(steps):
            line = lp.expect("ready", 45 + n * 0.01)
            pt = _measure({"edge": edge.pid, "agent": agent.pid, "memload": lp.p.pid})
            res["points"].append({"streams": n, "rss": pt, "sockstat": sockstat(), "line": line})
            for p in (edge, agent):
                if not p.alive():
                    raise BenchError(p.describe_exit())
            if i + 1 < len(steps):
                lp.next_step()
        for role in ("edge", "agent"):
            pts = [(p["streams"], p["rss"][role]) for p in res["points"] if p["rss"].get(role)]
            res[f"{role}_bytes_per_stream"] = slope(pts)
        tm = [(p["streams"], p["sockstat"].get("tcp_mem", 0) * PAGE) for p in res["points"]]
        # Each stream is 4 sockets here: visitor + edge side, agent side + holder.
        res["kernel_tcp_mem_bytes_per_stream_4_sockets"] = slope(tm)
        res["ok"] = res["edge_bytes_per_stream"] is not None
    except BenchError as e:
        res["error"] = str(e)
        res["logs"] = relay.logs()
    finally:
        if lp is not None:
            lp.stop()
        relay.stop()
    return res
