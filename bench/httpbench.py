"""HTTP scenarios: closed-loop maximum (wrk), fixed-rate latency (oha, latency-corrected),
new connections per second (`Connection: close`), 100 MiB / 1 MiB downloads hash-checked, and
head-of-line (small requests at a fixed rate beside a 100 MiB download on the same tunnel).

Every tool runs bounded (`run_tool` timeouts); every failure becomes a failed measurement with
its error, never a missing one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import tools
from bench.procs import CLK_TCK, BenchError, Proc, run_tool

PATH_OK = "/"
WRK_THREADS = 1
KA_CONNS = 50
CLOSE_CONNS = 20
OHA_CONNS = 50


@dataclass
class HttpMeasurement:
    scenario: str  # ka-max | close-max | ka-lat | close-lat | hol-base | hol-bulk | download
    contestant: str
    rep: int
    ok: bool
    rate: float | None = None  # target rate (fixed-rate scenarios)
    rps: float | None = None  # achieved requests/s
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, p99.9, max
    connect_ms: dict[str, float] = field(default_factory=dict)  # oha DNS+dialup (new conns)
    cpu_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float = 0.0

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_s.values())

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["cpu_seconds_per_1k_requests"] = (
            self.cpu_total / (self.requests / 1000) if self.cpu_s and self.requests else None
        )
        return d


def url(port: int, path: str = PATH_OK) -> str:
    return f"http://127.0.0.1:{port}{path}"


def _cpu(procs: Mapping[str, Proc]) -> dict[str, int]:
    return {role: p.cpu_ticks() for role, p in procs.items()}


def _run_charged(
    argv: list[str], timeout: float, procs: Mapping[str, Proc], m: HttpMeasurement
) -> str:
    """Run a load generator; charge the CPU the contestant's processes spent meanwhile to
    ``m``; its stdout (BenchError if it failed)."""
    before = _cpu(procs)
    r = run_tool(argv, timeout=timeout)
    after = _cpu(procs)
    m.cpu_s = {k: (after[k] - before[k]) / CLK_TCK for k in procs}
    if r.returncode != 0:
        raise BenchError(f"{Path(argv[0]).name} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return r.stdout


def _check_alive(procs: Mapping[str, Proc]) -> None:
    for role, p in procs.items():
        if not p.alive():
            raise BenchError(f"{role}: {p.describe_exit()}")


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {"errors": {}, "latency_ms": {}}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if not m:
        raise BenchError("wrk printed no request count: " + out.strip()[-300:])
    res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError("wrk printed no Requests/sec")
    res["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for k, v in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            if int(v):
                res["errors"][k] = int(v)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"]["non-2xx"] = int(m.group(1))
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M):
        res["latency_ms"][f"p{pct}"] = _ms(val)
    return res


def wrk(
    scenario: str,
    contestant: str,
    rep: int,
    port: int,
    host: str | None,
    duration: float,
    procs: Mapping[str, Proc],
    close: bool,
) -> HttpMeasurement:
    m = HttpMeasurement(scenario, contestant, rep, ok=False)
    t0 = time.monotonic()
    try:
        _check_alive(procs)
        conns = CLOSE_CONNS if close else KA_CONNS
        argv = ["wrk", f"-t{WRK_THREADS}", f"-c{conns}", f"-d{duration:g}s", "--latency",
                "--timeout", "5s"]  # fmt: skip
        if host:
            argv += ["-H", f"Host: {host}"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(url(port))
        res = parse_wrk(_run_charged(argv, duration + 30, procs, m))
        m.requests, m.rps = res["requests"], res["rps"]
        m.error_kinds = res["errors"]
        m.errors = sum(res["errors"].values())
        m.latency_ms = res["latency_ms"]
        m.extra = {"argv": argv, "connections": conns}
        m.ok = m.requests > 0
        if not m.ok:
            m.error = "wrk completed 0 requests"
        _check_alive(procs)
    except BenchError as e:
        m.ok, m.error = False, str(e)
    m.wall_s = time.monotonic() - t0
    return m


# --------------------------------------------------------------------------- oha


def oha_binary() -> str | None:
    return tools.local_bin("oha")


def oha_version() -> str:
    b = oha_binary()
    return tools.version_of([b, "--version"]) if b else "not installed"


def parse_oha(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchError(f"oha printed no valid JSON ({e}): {text.strip()[-200:]}") from e
    s = data.get("summary", {})
    pct = data.get("latencyPercentiles", {})
    status = data.get("statusCodeDistribution", {}) or {}
    errs = data.get("errorDistribution", {}) or {}
    ok = sum(int(v) for k, v in status.items() if str(k).startswith("2"))
    bad_status = {f"status {k}": int(v) for k, v in status.items() if not str(k).startswith("2")}
    kinds = {**{str(k)[:80]: int(v) for k, v in errs.items()}, **bad_status}
    lat = {}
    for k in ("p50", "p90", "p99", "p99.9"):
        if pct.get(k) is not None:
            lat[k] = float(pct[k]) * 1e3
    if s.get("slowest") is not None:
        lat["max"] = float(s["slowest"]) * 1e3
    conn = {}
    dial = (data.get("details") or {}).get("DNSDialup") or {}
    for k in ("average", "fastest", "slowest"):
        if dial.get(k) is not None:
            conn[k] = float(dial[k]) * 1e3
    return {
        "requests": ok + sum(kinds.values()),
        "ok": ok,
        "rps": float(s.get("requestsPerSec") or 0.0),
        "errors": sum(kinds.values()),
        "error_kinds": kinds,
        "latency_ms": lat,
        "connect_ms": conn,
        "success_rate": s.get("successRate"),
    }


def oha(
    scenario: str,
    contestant: str,
    rep: int,
    port: int,
    host: str | None,
    duration: float,
    rate: float,
    procs: Mapping[str, Proc],
    close: bool = False,
    conns: int = OHA_CONNS,
    path: str = PATH_OK,
) -> HttpMeasurement:
    m = HttpMeasurement(scenario, contestant, rep, ok=False, rate=rate)
    t0 = time.monotonic()
    try:
        exe = oha_binary()
        if exe is None:
            raise BenchError("oha not installed")
        _check_alive(procs)
        argv = [exe, "-z", f"{duration:g}s", "-q", f"{rate:.0f}", "-c", str(conns),
                "--latency-correction", "--no-tui", "--output-format", "json",
                "-w", "-t", "10s"]  # fmt: skip
        if host:
            argv += ["-H", f"Host: {host}"]
        if close:
            argv += ["--disable-keepalive"]
        argv.append(url(port, path))
        res = parse_oha(_run_charged(argv, duration + 40, procs, m))
        m.requests, m.rps, m.errors = res["requests"], res["rps"], res["errors"]
        m.error_kinds, m.latency_ms, m.connect_ms = (
            res["error_kinds"],
            res["latency_ms"],
            res["connect_ms"],
        )
        m.extra = {"argv": argv, "success_rate": res["success_rate"], "ok_responses": res["ok"]}
        m.ok = res["ok"] > 0
        if not m.ok:
            m.error = "no 2xx response"
        _check_alive(procs)
    except BenchError as e:
        m.ok, m.error = False, str(e)
    m.wall_s = time.monotonic() - t0
    return m


# --------------------------------------------------------------------------- downloads


def fetch_sha256(port: int, host: str | None, path: str, timeout: float = 60.0) -> tuple[str, int]:
    """GET a file through the contestant; (sha256 hex, bytes). Raises BenchError."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path, headers={"Host": host or "localhost"})
        r = c.getresponse()
        if r.status != 200:
            raise BenchError(f"GET {path}: HTTP {r.status}")
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        c.close()
        return h.hexdigest(), n
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"GET {path}: {e!r}") from e


def download_check(
    contestant: str,
    port: int,
    host: str | None,
    expected: Mapping[str, str],
    procs: Mapping[str, Proc],
) -> HttpMeasurement:
    """Each origin file once through the contestant, SHA-256 compared; MB/s of the 100 MiB."""
    m = HttpMeasurement("download", contestant, 1, ok=False)
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    try:
        for name, sha in expected.items():
            before = _cpu(procs)
            t = time.monotonic()
            got, n = fetch_sha256(port, host, f"/files/{name}")
            dt = time.monotonic() - t
            after = _cpu(procs)
            results[name] = {
                "bytes": n,
                "sha256": got,
                "match": got == sha,
                "seconds": round(dt, 3),
                "mbyte_per_s": round(n / dt / 1e6, 1) if dt > 0 else None,
                "cpu_s": {k: (after[k] - before[k]) / CLK_TCK for k in procs},
            }
        bad = [k for k, v in results.items() if not v["match"]]
        m.ok = not bad
        m.errors = len(bad)
        if bad:
            m.error = f"SHA-256 mismatch: {', '.join(bad)}"
    except BenchError as e:
        m.error = str(e)
        m.errors = 1
    m.extra = {"files": results}
    m.wall_s = time.monotonic() - t0
    return m


class BulkLoop:
    """Download the 100 MiB file through a port in a loop (background thread), hashing each."""

    def __init__(self, port: int, host: str | None, expected: str) -> None:
        self.port, self.host, self.expected = port, host, expected
        self.stop_flag = threading.Event()
        self.done = 0
        self.bad = 0
        self.errors: list[str] = []
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                got, n = fetch_sha256(self.port, self.host, "/files/100m.bin", timeout=30)
                self.bytes += n
                self.done += 1
                if got != self.expected:
                    self.bad += 1
            except BenchError as e:
                self.errors.append(str(e))
                time.sleep(0.1)

    def __enter__(self) -> BulkLoop:
        self.thread.start()
        time.sleep(0.3)  # let the transfer ramp up
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(40)
