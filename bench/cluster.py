"""The cluster phase: a visitor carried from one edge node to another, relay only.

Two `relay edge` nodes of one region share presence through one redis-server (started by
the harness on 127.0.0.1): node a on 127.0.0.2 and node b on 127.0.0.3, every listener of
a node on its own address, one data directory for both (their tokens and the cluster CA;
a is started first and waited for). One `relay http ORIGIN --no-https --subdomain far`
agent is connected to b only, in front of the http phase's nginx origin. Once a's
``/status`` shows b's name (``cluster.presence.remote_names`` ≥ 1, bounded), the same
visitor is measured two ways, alternated within each repetition:

* ``forwarded``: it connects to a, which carries it to b over their node link (TLS + yamux,
  relay/cluster/nodelink.py), where b serves it as if it had connected there;
* ``direct``: it connects to b.

Workloads, the http phase's run lengths:

* ``down``: the origin's 100 MiB file downloaded over and over on one keep-alive
  connection for the run's length (the harness's own client, reading into one buffer:
  no hashing on the timed path; each path's first download, in the warm-up, is
  SHA-256 checked), Gbit/s of whole files over the time they took;
* ``up``: 1 MiB POST bodies (nginx's default ``client_max_body_size``) pipelined on one
  keep-alive connection for the run's length, then a ``GET /`` whose answer comes only
  once nginx has read every body: Gbit/s of body bytes up to that answer;
* ``ka``: wrk closed loop, keep-alive, the http phase's connection count: req/s and CPU
  per request;
* ``lat``: oha open loop at a fixed rate (``--latency-correction``, coordinated-omission
  correct), half the slower path's median keep-alive maximum: p50 … max.

CPU of each node, the agent, the origin and redis from ``/proc/PID/stat`` around every run,
the load generator's (wrk/oha: reaped children; the bulk client: this process) and the
machine's busy time beside them; a's and b's node-link counters (visitors forwarded,
received, failed) around every run say that forwarded runs were forwarded and direct
ones were not.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import select
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import httpbench
from bench.contestants import START_TIMEOUT, Relay
from bench.origin import FILES, Origin
from bench.procs import CLK_TCK, BenchError, Proc, get_status, run_tool, wait_until
from bench.sessions import machine_busy_ticks

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_HOST = "127.0.0.1"
#: Each node on a loopback address of its own, as a PoP would be on a host of its own.
NODE_HOSTS = {"a": "127.0.0.2", "b": "127.0.0.3"}
REGION = "eu"
SUBDOMAIN = "far"
HOSTNAME = f"{SUBDOMAIN}.relay.localhost"
#: The two ways to the agent: the node the visitor connects to.
PATHS = {"forwarded": "a", "direct": "b"}
#: (label, unit) of each workload.
WORKLOADS: dict[str, tuple[str, str]] = {
    "down": ("bulk download, 100 MiB files", "Gbit/s"),
    "up": ("bulk upload, 1 MiB POST bodies", "Gbit/s"),
    "ka": ("keep-alive maximum (wrk)", "req/s"),
    "lat": ("fixed-rate latency (oha)", "ms"),
}
#: The closed-loop workloads, alternated within each repetition; ``lat`` follows them.
MAX_WORKLOADS = ("down", "up", "ka")
BULK_FILE = "100m.bin"
UPLOAD_BODY = 1 << 20
#: The fixed rate: this fraction of the slower path's median keep-alive maximum.
RATE_FRACTION = 0.5
PRESENCE_TIMEOUT = 20.0
#: Socket timeout of the bulk client, and what a bulk run may take past its length.
IO_TIMEOUT = 30.0
BULK_GRACE_S = 60.0
MAX_FILES = 10_000
MAX_UPLOADS = 100_000
MAX_HEAD = 64 * 1024
#: Bound on one wrk/oha run beyond its own duration.
TOOL_GRACE_S = 40.0
WARMUP_S = 1.0
#: Node roles whose CPU is read around every run (besides the load generator's).
ROLES = ("node a", "node b", "agent", "origin", "redis")


def _hex_address(host: str) -> str:
    """``host`` as /proc/net/tcp writes it (little-endian hex)."""
    return socket.inet_aton(host)[::-1].hex().upper()


def listening(host: str, port: int) -> bool:
    """A TCP listener on ``host``:``port`` (IPv4), from /proc/net/tcp."""
    want = f"{_hex_address(host)}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(len(p) > 3 and p[1] == want and p[3] == "0A" for p in map(str.split, lines))


def free_port_on(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes


class Redis:
    """One redis-server on 127.0.0.1, no persistence, stopped by PID."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: Proc | None = None

    @staticmethod
    def unavailable() -> str | None:
        if not os.access(REDIS_SERVER, os.X_OK):
            return (
                f"{REDIS_SERVER} is not installed (apt-get install redis-server;"
                " bench/setup.sh installs it)"
            )
        return None

    @property
    def url(self) -> str:
        return f"redis://{REDIS_HOST}:{self.port}/0"

    def start(self) -> None:
        self.port = free_port_on(REDIS_HOST)
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", REDIS_HOST, "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir)]  # fmt: skip
        self.proc = Proc("redis", argv, self.dir)
        wait_until(f"redis-server to answer PING on {REDIS_HOST}:{self.port}", self._pong,
                   START_TIMEOUT, [self.proc], interval=0.1)  # fmt: skip

    def _pong(self) -> bool:
        try:
            with socket.create_connection((REDIS_HOST, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def version(self) -> str:
        r = run_tool([REDIS_SERVER, "--version"])
        return (r.stdout or r.stderr).strip() or "unknown"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Node(Relay):
    """One edge node of the cluster, every listener on its own loopback address."""

    label = "relay edge node"

    def __init__(
        self,
        work: Path,
        origin_port: int,
        name: str,
        data_dir: Path,
        redis_url: str,
        tcp_ports: tuple[int, int],
    ) -> None:
        self.key = f"node-{name}"  # before super(): the work directory is named by it
        super().__init__(work, origin_port)
        self.name = name
        self.host = NODE_HOSTS[name]
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.TCP_PORTS = tcp_ports
        self.label = f"node {name} ({self.host})"
        self.admin_port = 0
        self.cluster_port = 0
        self.ca = data_dir / "ca" / "ca.pem"

    def unavailable(self) -> str | None:
        why = super().unavailable()
        if why is None and "--cluster-redis" not in self.edge_help:
            return "`relay edge` has no --cluster-redis option"
        return why

    @property
    def edge(self) -> Proc:
        return self.procs["edge"]

    def start(self) -> None:
        if not self.edge_help:
            why = self.unavailable()
            if why:
                raise BenchError(why)
        assert self.bin is not None
        h = self.host
        self.edge_port, self.http_port = free_port_on(h), free_port_on(h)
        self.admin_port, self.cluster_port = free_port_on(h), free_port_on(h)
        lo, hi = self.TCP_PORTS
        argv = [
            self.bin, "edge", "--data-dir", str(self.data_dir),
            "--listen", f"{h}:{self.edge_port}",
            "--tcp-ports", f"{lo}-{hi}", "--tcp-bind", h,
            "--drain-timeout", "1",
            "--admin-listen", f"{h}:{self.admin_port}",
            "--http-listen", f"{h}:{self.http_port}",
            "--https-listen", f"{h}:{free_port_on(h)}",
            "--base-domain", "relay.localhost",
            "--region", REGION, "--node-id", self.name,
            "--cluster-redis", self.redis_url,
            "--cluster-listen", f"{h}:{self.cluster_port}",
            "--workers", "1",  # one process per node, as the direct edge it is compared with
        ]  # fmt: skip
        edge = self._spawn("edge", argv)
        self.config = {"edge": " ".join(argv)}
        for port, what in ((self.edge_port, "agents"), (self.cluster_port, "other nodes"),
                           (self.http_port, "visitors")):  # fmt: skip
            wait_until(f"node {self.name} to listen for {what} on {h}:{port}",
                       partial(listening, h, port), START_TIMEOUT, [edge])  # fmt: skip
        wait_until(f"{self.ca} to exist", self.ca.exists, START_TIMEOUT, [edge])
        wait_until(f"node {self.name}'s /status to show its cluster block", self._joined,
                   START_TIMEOUT, [edge], interval=0.2)  # fmt: skip

    def _joined(self) -> bool:
        try:
            presence = self.cluster().get("presence") or {}
        except BenchError:
            return False
        return presence.get("redis") == "connected"

    def status(self) -> dict[str, Any]:
        return get_status(f"http://{self.host}:{self.admin_port}/status", f"node {self.name}")

    def cluster(self) -> dict[str, Any]:
        block = self.status().get("cluster")
        if not isinstance(block, dict):
            raise BenchError(f"node {self.name}: /status has no cluster block")
        return block

    def links(self) -> dict[str, Any]:
        links = self.cluster().get("links")
        return links if isinstance(links, dict) else {}

    def start_agent(self, token: str) -> Proc:
        """The `relay http` agent of hostname ``far``, connected to this node only."""
        assert self.bin is not None
        argv = [self.bin, "http", f"127.0.0.1:{self.origin_port}", "--no-https",
                "--subdomain", SUBDOMAIN, "--edge", f"{self.host}:{self.edge_port}",
                "--token", token, "--ca-file", str(self.ca),
                "--server-name", "localhost"]  # fmt: skip
        agent = self._spawn("agent", argv)  # stopped by PID with this node, before its edge
        self.config["agent"] = " ".join(a if a != token else "<token>" for a in argv)
        wait_until("the agent to forward", lambda: "Forwarding" in agent.output(),
                   START_TIMEOUT, [self.edge, agent])  # fmt: skip
        lines = [ln.strip() for ln in agent.output().splitlines() if "Forwarding" in ln]
        self.config["forwarding_line"] = lines[0] if lines else "(not printed)"
        return agent


# --------------------------------------------------------------------------- HTTP client


def _parse_head(head: bytes) -> int:
    """The Content-Length of a response head (up to its blank line). BenchError unless a
    200 with a Content-Length."""
    lines = head.decode("latin-1").split("\r\n")
    if not re.match(r"HTTP/1\.[01] 200 ", lines[0] + " "):
        raise BenchError(f"response {lines[0]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "transfer-encoding":
            raise BenchError(f"response with Transfer-Encoding {value.strip()}")
    if length is None:
        raise BenchError("response without Content-Length")
    return length


def _check(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise BenchError(f"{what}: out of time")


def _read_head(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """One response head from ``sock``: its Content-Length and the bytes read past it."""
    data = b""
    while b"\r\n\r\n" not in data:
        _check(deadline, "reading a response head")
        if len(data) > MAX_HEAD:
            raise BenchError(f"response head over {MAX_HEAD} bytes")
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("connection closed before a response head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return _parse_head(head), rest


def _connect(addr: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((addr, port), timeout=IO_TIMEOUT)
    except OSError as e:
        raise BenchError(f"connect {addr}:{port}: {e}") from e


def download_sha256(addr: str, port: int, path: str) -> tuple[str, int]:
    """GET ``path`` once through ``addr``:``port``: (SHA-256, bytes)."""
    req = f"GET {path} HTTP/1.1\r\nHost: {HOSTNAME}\r\nConnection: close\r\n\r\n".encode()
    h = hashlib.sha256()
    deadline = time.monotonic() + BULK_GRACE_S
    try:
        with _connect(addr, port) as s:
            s.sendall(req)
            length, rest = _read_head(s, deadline)
            h.update(rest)
            got = len(rest)
            while got < length:
                _check(deadline, f"GET {path}")
                chunk = s.recv(min(1 << 20, length - got))
                if not chunk:
                    raise BenchError(f"GET {path}: closed after {got} of {length} bytes")
                h.update(chunk)
                got += len(chunk)
    except OSError as e:
        raise BenchError(f"GET {path}: {e!r}") from e
    return h.hexdigest(), got


def bulk_download(addr: str, port: int, secs: float) -> tuple[int, int, float]:
    """The 100 MiB file again and again on one keep-alive connection for ``secs`` (whole
    files): (bytes, files, seconds)."""
    req = f"GET /files/{BULK_FILE} HTTP/1.1\r\nHost: {HOSTNAME}\r\n\r\n".encode()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = files = 0
    try:
        with _connect(addr, port) as s:
            t0 = time.monotonic()
            deadline = t0 + secs + BULK_GRACE_S
            while files < MAX_FILES:
                s.sendall(req)
                length, rest = _read_head(s, deadline)
                if len(rest) > length:
                    raise BenchError("bytes past the response body")
                left = length - len(rest)
                while left > 0:
                    _check(deadline, f"{files + 1} files")
                    n = s.recv_into(view[: min(left, len(buf))])
                    if not n:
                        raise BenchError(f"closed with {left} bytes of a file to come")
                    left -= n
                total += length
                files += 1
                now = time.monotonic()
                if now - t0 >= secs:
                    break
                _check(deadline, f"{files} files")
            return total, files, time.monotonic() - t0
    except OSError as e:
        raise BenchError(f"download: {e!r}") from e


class _Responses:
    """Counts the complete content-length framed 200 responses fed to it."""

    def __init__(self) -> None:
        self.buf = b""
        self.done = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            length = _parse_head(self.buf[:end])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.done += 1
        if len(self.buf) > MAX_HEAD:
            raise BenchError(f"response head over {MAX_HEAD} bytes")


def bulk_upload(addr: str, port: int, secs: float) -> tuple[int, int, float]:
    """1 MiB POST bodies pipelined on one keep-alive connection for ``secs``, then a
    ``GET /`` whose answer follows every body: (body bytes, requests, seconds)."""
    body = os.urandom(UPLOAD_BODY)
    post = (f"POST / HTTP/1.1\r\nHost: {HOSTNAME}\r\nContent-Length: {UPLOAD_BODY}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    sync = f"GET / HTTP/1.1\r\nHost: {HOSTNAME}\r\n\r\n".encode()
    answers = _Responses()
    sent = 0
    try:
        with _connect(addr, port) as s:
            readable = select.poll()
            readable.register(s, select.POLLIN)
            t0 = time.monotonic()
            deadline = t0 + secs + BULK_GRACE_S
            while sent < MAX_UPLOADS:
                _check(deadline, f"{sent} uploads")
                s.sendall(post)
                s.sendall(body)
                sent += 1
                # Take the answers that came (nginx answers before it has read a body).
                # (Polled: on a socket with a timeout MSG_DONTWAIT would wait for it.)
                for _ in range(MAX_UPLOADS):
                    if not readable.poll(0):
                        break
                    chunk = s.recv(65536)
                    if not chunk:
                        raise BenchError(f"closed after {answers.done} of {sent} answers")
                    answers.feed(chunk)
                if time.monotonic() - t0 >= secs:
                    break
            s.sendall(sync)
            while answers.done < sent + 1:
                if time.monotonic() > deadline:
                    raise BenchError(f"{answers.done} of {sent + 1} answers within the run")
                chunk = s.recv(65536)
                if not chunk:
                    raise BenchError(f"closed after {answers.done} of {sent + 1} answers")
                answers.feed(chunk)
            return sent * UPLOAD_BODY, sent, time.monotonic() - t0
    except OSError as e:
        raise BenchError(f"upload: {e!r}") from e


# --------------------------------------------------------------------------- one run


@dataclass
class CRun:
    path: str  # forwarded | direct
    workload: str  # down | up | ka | lat
    rep: int  # 0: warm-up, not counted
    seconds: float  # the run's length as asked
    elapsed_s: float | None = None  # as measured (bulk: the whole files' time)
    rate: float | None = None  # lat: the fixed rate asked
    requests: int = 0
    bytes: int = 0
    gbps: float | None = None
    rps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # by role (ROLES)
    load_cpu_s: float | None = None  # wrk/oha (reaped children) or this harness (bulk)
    machine_cpu_s: float | None = None
    links: dict[str, int] = field(default_factory=dict)  # node-link counters' deltas
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _usage_s() -> float:
    """CPU of this harness and its reaped children (the load generator of a run)."""
    out = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        out += r.ru_utime + r.ru_stime
    return out


class Cluster:
    """What the phase started: the origin, redis, both nodes and the agent."""

    def __init__(self, origin: Origin, redis: Redis, nodes: dict[str, Node]) -> None:
        self.origin = origin
        self.redis = redis
        self.nodes = nodes

    def procs(self) -> dict[str, Proc]:
        a, b = self.nodes["a"], self.nodes["b"]
        assert self.origin.proc is not None and self.redis.proc is not None
        return {"node a": a.edge, "node b": b.edge, "agent": b.procs["agent"],
                "origin": self.origin.proc, "redis": self.redis.proc}  # fmt: skip

    def counters(self) -> dict[str, int]:
        a, b = self.nodes["a"].links(), self.nodes["b"].links()
        return {
            "a_forwarded": int(a.get("forwarded", 0)),
            "a_failed": int(a.get("failed", 0)),
            "b_received": int(b.get("received", 0)),
            "b_forwarded": int(b.get("forwarded", 0)),
        }

    def visitor(self, path: str) -> tuple[str, int]:
        node = self.nodes[PATHS[path]]
        return node.host, node.http_port


def measure(cl: Cluster, path: str, workload: str, rep: int, secs: float,
            rate: float | None = None) -> CRun:  # fmt: skip
    """One run of ``workload`` through ``path``, CPU and the link counters read around it."""
    run = CRun(path, workload, rep, secs, rate=rate)
    addr, port = cl.visitor(path)
    procs = cl.procs()
    try:
        for role, p in procs.items():
            if not p.alive():
                raise BenchError(f"{role}: {p.describe_exit()}")
        c0 = cl.counters()
        t0 = {role: p.cpu_ticks() for role, p in procs.items()}
        u0, m0 = _usage_s(), machine_busy_ticks()
        if workload == "down":
            run.bytes, run.requests, run.elapsed_s = bulk_download(addr, port, secs)
        elif workload == "up":
            run.bytes, run.requests, run.elapsed_s = bulk_upload(addr, port, secs)
        elif workload == "ka":
            _wrk(run, addr, port, secs)
        else:
            _oha(run, addr, port, secs, rate or 0.0)
        u1, m1 = _usage_s(), machine_busy_ticks()
        t1 = {role: p.cpu_ticks() for role, p in procs.items()}
        c1 = cl.counters()
        run.cpu_s = {role: (t1[role] - t0[role]) / CLK_TCK for role in procs}
        run.load_cpu_s = u1 - u0
        if m0 is not None and m1 is not None:
            run.machine_cpu_s = (m1 - m0) / CLK_TCK
        run.links = {k: c1[k] - c0[k] for k in c0}
        if run.bytes and run.elapsed_s:
            run.gbps = run.bytes * 8 / run.elapsed_s / 1e9
            run.rps = run.requests / run.elapsed_s
        if not run.requests:
            raise BenchError("no request completed")
        for role, p in procs.items():
            if not p.alive():
                raise BenchError(f"{role}: {p.describe_exit()}")
    except BenchError as e:
        run.error = str(e)
    return run


def _wrk(run: CRun, addr: str, port: int, secs: float) -> None:
    argv = ["wrk", f"-t{httpbench.WRK_THREADS}", f"-c{httpbench.KA_CONNS}", f"-d{secs:g}s",
            "--latency", "--timeout", "5s", "-H", f"Host: {HOSTNAME}",
            f"http://{addr}:{port}/"]  # fmt: skip
    r = run_tool(argv, timeout=secs + TOOL_GRACE_S)
    if r.returncode != 0:
        raise BenchError(f"wrk exited {r.returncode}: {r.stderr.strip()[-300:]}")
    res = httpbench.parse_wrk(r.stdout)
    run.requests, run.rps, run.elapsed_s = res["requests"], res["rps"], secs
    run.error_kinds, run.errors = res["errors"], sum(res["errors"].values())
    run.latency_ms = res["latency_ms"]


def _oha(run: CRun, addr: str, port: int, secs: float, rate: float) -> None:
    exe = httpbench.oha_binary()
    if exe is None:
        raise BenchError("oha not installed")
    argv = [exe, "-z", f"{secs:g}s", "-q", f"{rate:.0f}", "-c", str(httpbench.OHA_CONNS),
            "--latency-correction", "--no-tui", "--output-format", "json", "-w", "-t", "10s",
            "-H", f"Host: {HOSTNAME}", f"http://{addr}:{port}/"]  # fmt: skip
    r = run_tool(argv, timeout=secs + TOOL_GRACE_S)
    if r.returncode != 0:
        raise BenchError(f"oha exited {r.returncode}: {r.stderr.strip()[-300:]}")
    res = httpbench.parse_oha(r.stdout)
    run.requests, run.rps, run.elapsed_s = res["ok"], res["rps"], secs
    run.errors, run.error_kinds = res["errors"], res["error_kinds"]
    run.latency_ms = res["latency_ms"]


def progress_line(run: CRun) -> str:
    rep = "warm-up" if run.rep == 0 else f"rep {run.rep}"
    head = f"cluster {rep:<7} {run.workload:<4} {run.path:<9}"
    if run.error:
        return f"{head} FAILED: {run.error.splitlines()[0]}"
    # The nodes' CPU: a + b when forwarded, b alone when direct (as the report counts it).
    cpu = run.cpu_s
    nodes = cpu.get("node b", 0.0) + (cpu.get("node a", 0.0) if run.path == "forwarded" else 0.0)
    if run.workload in ("down", "up"):
        what = f"{run.gbps or 0:6.2f} Gbit/s  nodes {nodes / (run.bytes / 1e9):.2f} CPU-s/GB"
    else:
        what = f"{run.rps or 0:8.0f} req/s  nodes {nodes * 1e6 / run.requests:6.1f} CPU-µs/req"
        if run.workload == "lat":
            lat = run.latency_ms
            what += f"  p50 {lat.get('p50', 0):.2f} p99 {lat.get('p99', 0):.2f} ms"
    fwd = run.links.get("a_forwarded", 0)
    errors = f"  errors {run.errors}" if run.errors else ""
    return f"{head} {what}  a forwarded {fwd}{errors}"


# --------------------------------------------------------------------------- the phase


def _rotated(items: tuple[str, ...] | list[str], k: int) -> list[str]:
    k %= max(len(items), 1)
    return list(items[k:]) + list(items[:k])


def run_cluster(
    tmp: Path,
    duration: float,
    lat_duration: float,
    reps: int,
    log: Callable[[str], None],
    res: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The phase: origin, redis, node a, node b and the agent (on b); a hash-checked
    download and a warm-up run of each workload through each path; ``reps`` repetitions
    of the closed-loop workloads, paths alternated (order rotated per repetition and
    workload); then ``reps`` of the fixed-rate one at half the slower path's keep-alive
    maximum. Runs go into ``res`` as they come; everything is stopped by PID."""
    res = {} if res is None else res
    res.update(
        config={
            "duration_s": duration,
            "lat_duration_s": lat_duration,
            "reps": reps,
            "warmup_s": WARMUP_S,
            "region": REGION,
            "hosts": {"redis": REDIS_HOST, **{f"node {k}": v for k, v in NODE_HOSTS.items()}},
            "paths": {p: f"visitor at node {n}" for p, n in PATHS.items()},
            "hostname": HOSTNAME,
            "workloads": {k: {"label": v[0], "unit": v[1]} for k, v in WORKLOADS.items()},
            "upload_body_bytes": UPLOAD_BODY,
            "wrk": f"wrk -t{httpbench.WRK_THREADS} -c{httpbench.KA_CONNS} (keep-alive)",
            "oha": f"oha -q RATE -c{httpbench.OHA_CONNS} --latency-correction -w",
            "rate_fraction": RATE_FRACTION,
        },
        runs=[],
    )
    work = tmp / "cluster"
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    origin, redis = Origin(work), Redis(work)
    nodes: dict[str, Node] = {}
    try:
        why = Redis.unavailable()
        probe = Node(work, 0, "a", data_dir, "", (0, 0))
        why = why or probe.unavailable()
        if why:
            log(f"cluster: skipping: {why}")
            res["skipped"] = why
            return res
        log(f"cluster: starting redis-server on {REDIS_HOST}, node a on {NODE_HOSTS['a']},"
            f" node b on {NODE_HOSTS['b']} (region {REGION}), an http agent on b")  # fmt: skip
        try:
            origin.start()
            redis.start()
            res["redis"] = {"url": redis.url, "version": redis.version()}
            # The first node makes the shared data directory's CAs: one after the other.
            for name, ports in (("a", (22100, 22109)), ("b", (22110, 22119))):
                node = Node(work, origin.port, name, data_dir, redis.url, ports)
                nodes[name] = node
                node.edge_help = probe.edge_help
                node.start()
            b = nodes["b"]
            b.start_agent(b._create_token(data_dir))
            t0 = time.monotonic()
            wait_until("node a to learn of b's name (/status cluster.presence.remote_names)",
                       lambda: _remote_names(nodes["a"]) >= 1, PRESENCE_TIMEOUT,
                       [nodes["a"].edge, b.edge, b.procs["agent"]], interval=0.1)  # fmt: skip
            res["presence_seconds"] = round(time.monotonic() - t0, 2)
        except BenchError as e:
            log(f"cluster: skipping: failed to start: {e}")
            res.update(skipped=f"failed to start: {str(e).splitlines()[0]}",
                       start_error=str(e), logs=_logs(nodes, redis))  # fmt: skip
            return res
        res["nodes"] = {n: {"config": node.config, "pid": node.edge.pid, "host": node.host}
                        for n, node in nodes.items()}  # fmt: skip
        res["presence_at_start"] = {n: node.cluster().get("presence") for n, node in nodes.items()}
        log(f"cluster: node a knows b's name after {res['presence_seconds']:.1f} s")
        assert origin.proc is not None
        cl = Cluster(origin, redis, nodes)

        # Correctness first (it also dials a's link to b): every origin file through each path.
        checks: dict[str, Any] = {}
        for path in PATHS:
            addr, port = cl.visitor(path)
            checks[path] = {}
            for name in FILES:
                try:
                    sha, n = download_sha256(addr, port, f"/files/{name}")
                    ok = sha == origin.sha256[name]
                    checks[path][name] = {"bytes": n, "match": ok}
                except BenchError as e:
                    checks[path][name] = {"error": str(e), "match": False}
            log(f"cluster: {path}: downloads " + ", ".join(
                f"{k} {'sha256 OK' if v['match'] else v.get('error', 'MISMATCH')}"
                for k, v in checks[path].items()))  # fmt: skip
        res["downloads"] = checks
        if not all(v["match"] for c in checks.values() for v in c.values()):
            bad = [f"{p} {k}" for p, c in checks.items() for k, v in c.items() if not v["match"]]
            res.update(skipped=f"hash-checked downloads failed: {', '.join(bad)}",
                       logs=_logs(nodes, redis), links_at_end=_links(nodes))  # fmt: skip
            log(f"cluster: skipping: {res['skipped']}")
            return res

        def one(path: str, workload: str, rep: int, secs: float, rate: float | None = None) -> None:
            run = measure(cl, path, workload, rep, secs, rate)
            res["runs"].append(run.to_json())
            log(progress_line(run))
            time.sleep(0.2)

        per = len(PATHS) * (len(MAX_WORKLOADS) * (duration + 0.5) + lat_duration + 1.0)
        est = len(PATHS) * (len(MAX_WORKLOADS) * (WARMUP_S + 0.5)) + reps * per
        log(f"cluster: {len(MAX_WORKLOADS) + 1} workloads x {len(PATHS)} paths x (1 warm-up +"
            f" {reps} reps), about {est / 60:.1f} min")  # fmt: skip
        paths = list(PATHS)
        for workload in MAX_WORKLOADS:
            for path in paths:
                one(path, workload, 0, WARMUP_S)
        for rep in range(1, reps + 1):
            for wi, workload in enumerate(_rotated(MAX_WORKLOADS, rep - 1)):
                for path in _rotated(paths, rep - 1 + wi):
                    one(path, workload, rep, duration)
        maxima: dict[str, float | None] = {}
        for p in paths:
            v = [r["rps"] for r in res["runs"] if r["path"] == p and r["workload"] == "ka"
                 and r["rep"] > 0 and not r["error"] and r["rps"]]  # fmt: skip
            maxima[p] = statistics.median(v) if v else None
        res["ka_max"] = maxima
        known = [v for v in maxima.values() if v]
        if len(known) < len(paths):
            res["latency_skipped"] = "a keep-alive maximum is missing"
        elif httpbench.oha_binary() is None:
            res["latency_skipped"] = "oha not installed"
        else:
            rate = round(RATE_FRACTION * min(known), -1)
            res["rate"] = rate
            log(f"cluster: fixed rate {rate:.0f} req/s ({RATE_FRACTION:g} x the slower path's"
                " keep-alive maximum)")  # fmt: skip
            for path in paths:
                one(path, "lat", 0, WARMUP_S, rate)
            for rep in range(1, reps + 1):
                for path in _rotated(paths, rep - 1):
                    one(path, "lat", rep, lat_duration, rate)
        res["links_at_end"] = _links(nodes)
        res["presence_at_end"] = {n: node.cluster().get("presence") for n, node in nodes.items()}
        died = {f"node {n}": node.procs[r].describe_exit() for n, node in nodes.items()
                for r in node.procs if not node.procs[r].alive()}  # fmt: skip
        if redis.proc is not None and not redis.proc.alive():
            died["redis"] = redis.proc.describe_exit()
        if died:
            res["died"] = died
            res["logs"] = _logs(nodes, redis)
    except BenchError as e:
        log(f"cluster: stopped early: {e}")
        res["error"] = str(e)
        res["logs"] = _logs(nodes, redis)
    finally:
        for node in reversed(list(nodes.values())):
            node.stop()
        redis.stop()
        origin.stop()
    return res


def _remote_names(node: Node) -> int:
    try:
        presence = node.cluster().get("presence") or {}
    except BenchError:
        return 0
    return int(presence.get("remote_names") or 0)


def _links(nodes: dict[str, Node]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, node in nodes.items():
        try:
            out[n] = node.links()
        except BenchError as e:
            out[n] = str(e)
    return out


def _logs(nodes: dict[str, Node], redis: Redis) -> dict[str, str]:
    out = {f"node {n} {role}": p.tail(40) for n, node in nodes.items()
           for role, p in node.procs.items()}  # fmt: skip
    if redis.proc is not None:
        out["redis"] = redis.proc.tail(20)
    return out
