"""Machine description and tool versions, written into every result."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from bench.contestants import SSHD, relay_binary
from bench.procs import BenchError, run_tool


def _first_line(argv: list[str], use_stderr: bool = False) -> str:
    try:
        r = run_tool(argv, timeout=30)
    except BenchError as e:
        return f"unavailable ({e})"
    text = (r.stderr if use_stderr else r.stdout) or r.stdout or r.stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else f"unknown (exit {r.returncode})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def relay_version() -> str:
    binary = relay_binary()
    if binary is None:
        return "not installed"
    try:
        r = run_tool([binary, "--version"], timeout=60)
    except BenchError as e:
        return f"unknown ({e})"
    out = (r.stdout or r.stderr).strip().splitlines()
    return (
        out[0] if r.returncode == 0 and out else f"unknown (`relay --version` exit {r.returncode})"
    )


def git_revision(repo: Path) -> str:
    try:
        r = run_tool(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], timeout=10)
        rev = r.stdout.strip() if r.returncode == 0 else "no commits"
        d = run_tool(["git", "-C", str(repo), "status", "--porcelain"], timeout=10)
        dirty = " (uncommitted changes)" if d.returncode == 0 and d.stdout.strip() else ""
        return rev + dirty
    except BenchError:
        return "unknown"


def describe(repo: Path) -> dict[str, Any]:
    uname = os.uname()
    return {
        "cpu_model": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": f"{uname.sysname} {uname.release} {uname.machine}",
        "memory_gib": mem_total_gib(),
        "loadavg_at_start": loadavg(),
        "versions": {
            "iperf3": _first_line(["iperf3", "--version"]),
            "haproxy": _first_line(["haproxy", "-v"]),
            "openssh_client": _first_line(["ssh", "-V"], use_stderr=True),
            "openssh_server": _first_line([SSHD, "-V"], use_stderr=True),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "relay": relay_version(),
            "relay_git": git_revision(repo),
        },
    }
