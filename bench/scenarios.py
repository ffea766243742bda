"""Scenarios and the iperf3 runner.

Each measurement starts a fresh one-off iperf3 server (`-s -1`) on the origin port, waits until it
listens (checked in /proc/net/tcp, so no stray probe connection reaches it), runs the client
against the contestant's visitor port with `--json`, and samples the contestant's CPU around the
client run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import CLK_TCK, BenchError, Proc, run_tool, wait_listening


@dataclass(frozen=True)
class Scenario:
    key: str
    streams: int
    reverse: bool

    @property
    def label(self) -> str:
        n = "1 stream" if self.streams == 1 else f"{self.streams} streams"
        d = "download (service→visitor, -R)" if self.reverse else "upload (visitor→service)"
        return f"{n}, {d}"

    def iperf_args(self) -> list[str]:
        return ["-P", str(self.streams), *(["-R"] if self.reverse else [])]


SCENARIOS: list[Scenario] = [
    Scenario("tcp-1-up", 1, False),
    Scenario("tcp-1-down", 1, True),
    Scenario("tcp-8-up", 8, False),
    Scenario("tcp-8-down", 8, True),
]


@dataclass
class Measurement:
    scenario: str
    contestant: str
    rep: int  # 0 = warm-up (not counted)
    ok: bool
    gbps: float | None = None
    bytes: int | None = None
    seconds: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds during the run
    error: str | None = None
    wall_s: float = 0.0

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_s.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "contestant": self.contestant,
            "rep": self.rep,
            "ok": self.ok,
            "gbit_per_s": self.gbps,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_s,
            "cpu_seconds_per_gb": (
                self.cpu_total / (self.bytes / 1e9)
                if self.ok and self.bytes and self.cpu_s
                else None
            ),
            "error": self.error,
            "wall_seconds": round(self.wall_s, 3),
        }


def parse_iperf_json(text: str) -> tuple[float, int, float]:
    """(bits/s, bytes, seconds) of end.sum_received; raises BenchError on an iperf3 error."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchError(f"iperf3 printed no valid JSON ({e})") from e
    if data.get("error"):
        raise BenchError(f"iperf3: {data['error']}")
    try:
        rx = data["end"]["sum_received"]
        return float(rx["bits_per_second"]), int(rx["bytes"]), float(rx["seconds"])
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(f"iperf3 JSON has no end.sum_received ({e!r})") from e


def measure(
    scenario: Scenario,
    contestant: str,
    rep: int,
    visitor_port: int,
    origin_port: int,
    duration: float,
    cpu_procs: Mapping[str, Proc],
    log_dir: Path,
    seq: int,
) -> Measurement:
    """One iperf3 run through a contestant; failures come back as a failed Measurement."""
    m = Measurement(scenario.key, contestant, rep, ok=False)
    t0 = time.monotonic()
    server: Proc | None = None
    try:
        for role, p in cpu_procs.items():
            if not p.alive():
                raise BenchError(f"{role}: {p.describe_exit()}")
        server = Proc(
            f"iperf3-server-{seq:03d}",
            ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(origin_port)],
            log_dir,
        )
        wait_listening(origin_port, "iperf3 server", 10.0, [server])
        before = {role: p.cpu_ticks() for role, p in cpu_procs.items()}
        argv = [
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            str(visitor_port),
            "-t",
            f"{duration:g}",
            "--connect-timeout",
            "5000",
            "-J",
            *scenario.iperf_args(),
        ]
        proc = run_tool(argv, timeout=duration + 30)
        after = {role: p.cpu_ticks() for role, p in cpu_procs.items()}
        m.cpu_s = {role: (after[role] - before[role]) / CLK_TCK for role in cpu_procs}
        try:
            bps, nbytes, secs = parse_iperf_json(proc.stdout)
        except BenchError as e:
            if proc.returncode != 0 and not proc.stdout.strip():
                err = proc.stderr.strip().splitlines()
                raise BenchError(f"iperf3 exited {proc.returncode}: {' '.join(err[-3:])}") from e
            raise
        if proc.returncode != 0:
            raise BenchError(f"iperf3 exited {proc.returncode}")
        if nbytes <= 0:
            raise BenchError("iperf3 received 0 bytes")
        m.ok, m.gbps, m.bytes, m.seconds = True, bps / 1e9, nbytes, secs
        # The one-off server exits by itself after the test; give it a moment.
        server.wait(5.0)
    except BenchError as e:
        m.error = str(e)
    finally:
        if server is not None:
            server.stop()
        m.wall_s = time.monotonic() - t0
    return m
