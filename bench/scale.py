"""The scale phase (issue 14's "Scale" figures), relay only.

Three parts, each on fresh edges of its own, each recorded as failed (with the reason) rather
than ending the bench:

* ``streams`` — idle open streams on one node: ``relay edge --workers N`` (N = 8) with 25
  ``relay tcp`` agents of 4,000 streams each (100,000), against ``--workers 1`` with 4 such
  agents (16,000, what one process holds under this machine's descriptor limit). Each agent
  forwards to a holder upstream of its own, and a load-generator process per agent
  (``python -m bench.memload streams``) runs that holder and opens the agent's visitor
  connections, in steps, from a source address of its own. A TCP endpoint listens only in
  the worker that holds its agent, so each worker's visitor sockets are those of its agents:
  agents are restarted (bounded) until no worker holds more than 4 (16,000 sockets). After
  each step: every holder has accepted as many connections as were opened, the workers'
  ``relay_streams_open`` sum to the total, and a sample of streams echo 16 random bytes end
  to end; then the RSS of every edge process (supervisor and workers, summed), the agents'
  and /proc/net/sockstat. Bytes per stream: least-squares slope over the points.
* ``sessions`` — idle agent sessions: 10,000 ``relay.agent.client.Agent`` sessions (each
  binding an http name) from 4 processes (``python -m bench.memload sessions``), in steps,
  on ``--workers 8`` and on one process; the workers' ``relay_agent_sessions`` must sum to
  the total at every step. Bytes per session: the slope.
* ``admit`` — 1,000 agents at once: a fresh edge (``--workers 1``, then ``2``) and 1,000
  clients of relay's wire protocol (bench/sessions.py's: TLS, Auth → AuthOk, Bind tcp →
  Bound) in 4 processes (``python -m bench.scale admit``), all released at one wall-clock
  instant; the time until the last is bound, sessions/s = 1,000 ÷ that time, failures by
  kind, the edge's CPU (all its processes) over that time and its counters.

Machine limits: the hard RLIMIT_NOFILE (20,000 here, not raisable without CAP_SYS_RESOURCE)
bounds every process, so the streams are spread over worker processes, agents and load
generators that each stay well under it; the ephemeral port range bounds connections per
(source address, destination) pair, so each load generator connects from its own address in
127.0.1.0/24 and each holder listens on its own in 127.0.2.0/24. Only 127.0.0.0/8 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import queue
import re
import resource
import socket
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.memory import PAGE, LineProc, rss_bytes, slope, sockstat
from bench.procs import (
    CLK_TCK,
    BenchError,
    Proc,
    free_port_in_range,
    listening_ports,
    own_cpu_ticks,
    wait_until,
)
from bench.sessions import machine_busy_ticks
from bench.workers import WorkersEdge

#: Worker processes of the big edge (streams and sessions). Idle connections need little
#: CPU, so more workers than the 2 cores is fine; 8 keeps each one's share of 100,000
#: streams (12,500 on average, at most AGENTS_PER_WORKER x STREAMS_PER_AGENT) under the
#: descriptor limit.
WORKERS = 8
#: Agents (and load generators) of each streams edge, by its number of workers.
STREAM_AGENTS = {1: 4, WORKERS: 25}
STREAMS_PER_AGENT = 4000
#: No worker may hold more agents than this: 4 x 4,000 = 16,000 visitor sockets, the most
#: one process may hold here with room for its links, listeners and files.
AGENTS_PER_WORKER = 4
#: Fractions of each agent's streams opened at each step (and a point at 0).
STEP_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Visitor connections per load generator echo-checked at each step.
PROBES = 20
#: Restarts of agents allowed to get every worker under its quota, and the time for it.
MAX_RESTARTS = 80
PLACEMENT_BUDGET_S = 240.0
SESSIONS = 10_000
SESSION_PROCS = 4
SESSION_STEP_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Handshakes in flight per load-generator process. With 200 (memload's default) x 4 on 8
#: workers sharing 2 cores, a worker's loop fell more than 5 s behind and a bind's name
#: claim to the supervisor timed out (RLY_201): what is measured here is idle sessions.
SESSION_PENDING = 25
ADMIT_AGENTS = 1000
ADMIT_PROCS = 4
ADMIT_WORKERS = (1, 2)
#: Seconds between launching the admission processes and the instant they all connect.
ADMIT_MARGIN_S = 4.0
#: Bound on one admission (every client's connect, handshake, Auth and Bind).
ADMIT_TIMEOUT_S = 60.0
#: Edge ports: TCP endpoints of the streams agents, of the admitted agents (1,000 random-port
#: binds need a range well over 1,000), and the rest (the sessions edges bind none).
STREAM_PORTS = (24000, 24199)
ADMIT_PORTS = (25000, 26999)
OTHER_PORTS = (24200, 24209)
#: What `relay edge` must not do during the phase: refuse a session for the default limit
#: (10,000 sessions per process) or keep a stopped agent's port reserved for a minute.
EDGE_YAML = "max_sessions: 1000000\nreclaim_grace: 0\n"
TOKEN_ENV = "RELAY_BENCH_SCALE_TOKEN"
SETTLE_S = 2.0
_SESSION_LINE = re.compile(r"session (s_\w+) established")
#: Edge series read from every worker's admin /metrics: gauges (now) and counters.
GAUGES = ("relay_streams_open", "relay_agent_sessions")
COUNTERS = (
    "relay_agent_sessions_opened_total",
    "relay_auth_failures_total",
    "relay_auth_source_blocks_total",
    "relay_agent_links_refused_total",
    "relay_binds_refused_total",
    "relay_tls_handshakes_total",
)


@dataclass(frozen=True)
class ScaleMode:
    streams_per_agent: int
    sessions: int
    admit_reps: int


MODES = {
    "quick": ScaleMode(streams_per_agent=STREAMS_PER_AGENT, sessions=SESSIONS, admit_reps=3),
    "full": ScaleMode(streams_per_agent=STREAMS_PER_AGENT, sessions=SESSIONS, admit_reps=5),
}


def machine_limits() -> dict[str, Any]:
    """What bounds the phase on this machine, read when it runs."""

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "rlimit_nofile_soft": soft,
        "rlimit_nofile_hard": hard,
        "file_max": read("/proc/sys/fs/file-max"),
        "ip_local_port_range": read("/proc/sys/net/ipv4/ip_local_port_range"),
        "somaxconn": read("/proc/sys/net/core/somaxconn"),
        "tcp_max_syn_backlog": read("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
    }


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """The named series of one admin /metrics, summed per name and label set."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        raise BenchError(f"GET 127.0.0.1:{port}/metrics: {e}") from e
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] in names:
            with contextlib.suppress(ValueError):
                out[series] = out.get(series, 0.0) + float(value)
    return out


def slab_bytes() -> dict[str, int]:
    """The kernel's slab memory (/proc/meminfo ``Slab`` and ``SUnreclaim``): where its
    socket structures live. Machine-wide: whatever else runs moves it too."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Slab", "SUnreclaim"):
                out[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _addr_port(host: str) -> int:
    """A TCP port free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ScaleEdge(WorkersEdge):
    """``relay edge --workers N`` with this phase's edge.yaml."""

    def __init__(self, work: Path, workers: int, tcp_ports: tuple[int, int], key: str):
        super().__init__(work, 9, workers, tcp_ports, key=key)

    def unavailable(self) -> str | None:
        why = super().unavailable()
        if why is None and "--config" not in self.edge_help:
            return "`relay edge` has no --config (needed for max_sessions, reclaim_grace)"
        return why

    def edge_extra(self) -> list[str]:
        cfg = self.work / "edge.yaml"
        cfg.write_text(EDGE_YAML)
        return [*super().edge_extra(), "--config", str(cfg)]

    def start(self) -> None:
        self.token, self.ca = self.start_edge()
        # N workers import relay at once on 2 cores: more time than one edge needs.
        wait_until(f"all {self.workers} workers to answer /status", self._all_answer,
                   30.0 + 5.0 * self.workers, [self.edge], interval=0.3)  # fmt: skip

    def admin_ports(self) -> list[int]:
        return [self.admin_port(i) for i in range(self.workers)]

    def series(self, names: tuple[str, ...]) -> list[dict[str, float]]:
        """``names`` of every worker's /metrics, worker 0 first."""
        return [scrape(p, names) for p in self.admin_ports()]

    def gauge(self, name: str) -> list[int]:
        """One gauge of every worker, worker 0 first."""
        return [int(sum(v for k, v in m.items() if k.split("{")[0] == name))
                for m in self.series((name,))]  # fmt: skip

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.series(COUNTERS):
            for k, v in m.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def worker_pids(self) -> list[int]:
        """Worker i's pid at index i (the edge itself with one worker)."""
        pids = self.process_pids()
        if self.workers == 1:
            return [pids["edge"]]
        return [pids[f"worker {i}"] for i in range(self.workers)]

    def memory(self) -> dict[str, Any]:
        pids = self.process_pids()
        rss = {role: rss_bytes(pid) for role, pid in pids.items()}
        if any(v is None for v in rss.values()):
            raise BenchError(f"an edge process is gone: {rss}")
        return {"total": sum(v for v in rss.values() if v), "by_process": rss}


def _point(edge: ScaleEdge, count: int, gauge: str, others: dict[str, list[int]]) -> dict[str, Any]:
    """One measurement after a step: the edge's RSS (each process and the sum), what each
    worker counts, descriptors, the other processes' RSS and the kernel's sockets."""
    time.sleep(SETTLE_S)
    mem = edge.memory()
    per_worker = edge.gauge(gauge)
    fds = [_fd_count(pid) for pid in edge.worker_pids()]
    other_rss = {
        role: sum(v for pid in pids if (v := rss_bytes(pid)) is not None)
        for role, pids in others.items()
    }
    other_fds = {
        role: max((v for pid in pids if (v := _fd_count(pid)) is not None), default=0)
        for role, pids in others.items()
    }
    return {
        "count": count,
        "edge_rss": mem["total"],
        "edge_rss_by_process": mem["by_process"],
        "edge_counts_by_worker": per_worker,
        "edge_count": sum(per_worker),
        "worker_fds": fds,
        "rss": other_rss,
        "max_fds": other_fds,
        "sockstat": sockstat(),
        "slab": slab_bytes(),
    }


def _slopes(points: list[dict[str, Any]], edge: ScaleEdge) -> dict[str, Any]:
    """Bytes per unit: the edge (all processes), each worker (against its own count), the
    other processes and the kernel's TCP memory."""
    out: dict[str, Any] = {
        "edge_bytes_per_unit": slope([(p["count"], p["edge_rss"]) for p in points]),
    }
    if edge.workers > 1:
        per: list[float] = []
        for i in range(edge.workers):
            pts = [
                (p["edge_counts_by_worker"][i], p["edge_rss_by_process"].get(f"worker {i}") or 0)
                for p in points
            ]
            if len({x for x, _ in pts}) > 1 and (s := slope(pts)) is not None:
                per.append(s)
        out["worker_bytes_per_unit"] = per
    for role in points[0]["rss"]:
        # Points where the role's processes run (the sessions' load generators start after 0).
        pts = [(p["count"], p["rss"][role]) for p in points if p["rss"][role]]
        out[f"{role}_bytes_per_unit"] = slope(pts)
    tm = [(p["count"], p["sockstat"].get("tcp_mem", 0) * PAGE) for p in points]
    out["kernel_tcp_mem_bytes_per_unit"] = slope(tm)
    sl = [(p["count"], p["slab"]["SUnreclaim"]) for p in points if "SUnreclaim" in p["slab"]]
    out["kernel_slab_bytes_per_unit"] = slope(sl) if len(sl) == len(points) else None
    return out


def _stop_lines(lps: list[LineProc]) -> None:
    """Close every helper's stdin first (they all start closing at once), then reap each."""
    for lp in lps:
        with contextlib.suppress(OSError, ValueError):
            if lp.p.stdin:
                lp.p.stdin.close()
    for lp in lps:
        lp.stop()


def _await_ready(lps: list[LineProc], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    return [lp.expect("ready", max(1.0, deadline - time.monotonic())) for lp in lps]


# --------------------------------------------------------------------------- streams


@dataclass
class StreamAgent:
    index: int
    port: int
    holder_host: str
    holder_port: int
    source: str
    proc: Proc | None = None
    session: str | None = None
    worker: int | None = None
    starts: int = 0


def _start_agent(edge: ScaleEdge, a: StreamAgent) -> None:
    assert edge.bin is not None
    a.starts += 1
    argv = [edge.bin, "tcp", f"{a.holder_host}:{a.holder_port}",
            *edge.link_args(edge.token, edge.ca), "--remote-port", str(a.port)]  # fmt: skip
    a.proc = Proc(f"{edge.key}-agent-{a.index}-{a.starts}", argv, edge.work)
    edge.procs[f"agent {a.index}"] = a.proc  # Contestant.stop() stops it by PID
    a.session, a.worker = None, None


def _await_agents(edge: ScaleEdge, agents: list[StreamAgent]) -> None:
    """Until every agent forwards and its session is listed by a worker (bounded)."""

    def up() -> bool:
        for a in agents:
            assert a.proc is not None
            out = a.proc.output()
            if a.session is None and "Forwarding" in out:
                found = _SESSION_LINE.findall(out)
                a.session = found[0] if found else None
        return all(a.session for a in agents)

    procs = [a.proc for a in agents if a.proc is not None]
    wait_until(f"{len(agents)} agents to forward", up, 60.0 + 2.0 * len(agents),
               [edge.edge, *procs], interval=0.2)  # fmt: skip

    def located() -> bool:
        where: dict[str, int] = {}
        for st in edge.statuses():
            for s in st.get("sessions_list", []):
                where[s["id"]] = int(st.get("worker") or 0)
        for a in agents:
            a.worker = where.get(a.session or "")
        return all(a.worker is not None for a in agents)

    wait_until("the agents' sessions in the workers' /status", located, 20.0, [edge.edge],
               interval=0.2)  # fmt: skip


def _ended(edge: ScaleEdge, agents: list[StreamAgent]) -> bool:
    """No worker lists any of ``agents``' sessions any more."""
    gone = {a.session for a in agents}
    listed = {s.get("id") for st in edge.statuses() for s in st.get("sessions_list", [])}
    return not gone & listed


def place_agents(edge: ScaleEdge, agents: list[StreamAgent], log: Callable[[str], None]) -> int:
    """Start the agents; restart those over a worker's quota until none is. Restarts."""
    for a in agents:
        _start_agent(edge, a)
    _await_agents(edge, agents)
    restarts = 0
    deadline = time.monotonic() + PLACEMENT_BUDGET_S
    while True:
        by_worker: dict[int, list[StreamAgent]] = {}
        for a in agents:
            by_worker.setdefault(a.worker or 0, []).append(a)
        over = [a for members in by_worker.values() for a in members[AGENTS_PER_WORKER:]]
        if not over:
            return restarts
        if restarts + len(over) > MAX_RESTARTS or time.monotonic() > deadline:
            counts = {w: len(m) for w, m in sorted(by_worker.items())}
            raise BenchError(f"agents per worker {counts} still over {AGENTS_PER_WORKER} after"
                             f" {restarts} restarts")  # fmt: skip
        restarts += len(over)
        for a in over:
            assert a.proc is not None
            a.proc.stop()
        ended = functools.partial(_ended, edge, over)
        wait_until("restarted agents' sessions to end", ended, 20.0, [edge.edge], interval=0.2)
        for a in over:
            _start_agent(edge, a)
        _await_agents(edge, over)
        log(f"scale: restarted {len(over)} agent(s) over a worker's quota ({restarts} so far)")


def streams_run(
    tmp: Path, workers: int, per_agent: int, log: Callable[[str], None]
) -> dict[str, Any]:
    n_agents = STREAM_AGENTS[workers]
    total = n_agents * per_agent
    steps = [round(per_agent * f) for f in STEP_FRACTIONS]
    res: dict[str, Any] = {
        "workers": workers,
        "agents": n_agents,
        "streams_per_agent": per_agent,
        "target": total,
        "steps": [s * n_agents for s in steps],
        "points": [],
        "ok": False,
    }
    edge = ScaleEdge(tmp / "scale", workers, STREAM_PORTS, key=f"streams-w{workers}")
    lps: list[LineProc] = []
    t0 = time.monotonic()
    try:
        why = edge.unavailable()
        if why:
            raise BenchError(why)
        edge.start()
        res["edge"] = edge.config["edge"]
        ports: list[int] = []
        agents: list[StreamAgent] = []
        for i in range(n_agents):
            ports.append(free_port_in_range(*STREAM_PORTS, exclude=ports))
            holder = f"127.0.2.{i + 1}"
            agents.append(StreamAgent(i, ports[-1], holder, _addr_port(holder), f"127.0.1.{i + 1}"))
        for a in agents:
            argv = [sys.executable, "-m", "bench.memload", "streams", "--port", str(a.port),
                    "--holder-host", a.holder_host, "--holder-port", str(a.holder_port),
                    "--source", a.source, "--steps", ",".join(map(str, steps)),
                    "--probe", str(PROBES), "--wait-first", "--rst",
                    "--timeout", "120"]  # fmt: skip
            lps.append(LineProc(argv, edge.work / f"memload-{a.index}.err"))
        for lp in lps:
            lp.expect("holder listening", 60)
        res["restarts"] = place_agents(edge, agents, log)
        res["placement"] = {a.index: a.worker for a in agents}
        per_worker: dict[int, int] = {}
        for a in agents:
            per_worker[a.worker or 0] = per_worker.get(a.worker or 0, 0) + 1
        res["agents_per_worker"] = [per_worker.get(i, 0) for i in range(workers)]
        res["agent_config"] = edge.config.get("agent 0", "")
        wanted = {a.port for a in agents}
        wait_until("the agents' endpoint ports to listen", lambda: wanted <= listening_ports(),
                   20.0, [edge.edge])  # fmt: skip
        res["setup_s"] = round(time.monotonic() - t0, 1)
        others = {
            "agents": [a.proc.pid for a in agents if a.proc is not None],
            "load_generators": [lp.p.pid for lp in lps],
        }
        res["points"].append({**_point(edge, 0, "relay_streams_open", others), "probes": [0, 0]})
        log(f"scale: streams, {workers} worker(s): {n_agents} agents placed"
            f" {res['agents_per_worker']} ({res['restarts']} restarts), opening"
            f" {res['steps']}")  # fmt: skip
        for k, n in enumerate(steps):
            t_step = time.monotonic()
            for lp in lps:
                lp.next_step()
            lines = _await_ready(lps, 120.0 + n * 0.05)
            opened_s = time.monotonic() - t_step
            probes = [0, 0]
            for line in lines:
                m = re.search(r"probes (\d+)/(\d+)", line)
                if m:
                    probes[0] += int(m.group(1))
                    probes[1] += int(m.group(2))
            count = n * n_agents
            pt = _point(edge, count, "relay_streams_open", others)
            pt.update(probes=probes, open_s=round(opened_s, 1))
            res["points"].append(pt)
            for role, proc in edge.procs.items():
                if not proc.alive():
                    raise BenchError(f"{role}: {proc.describe_exit()}")
            log(f"scale: streams {count:,} open in {opened_s:.0f} s: edge counts"
                f" {pt['edge_count']:,}, probes {probes[0]}/{probes[1]} echoed, edge RSS"
                f" {pt['edge_rss'] / 2**20:.0f} MiB")  # fmt: skip
            if pt["edge_count"] != count:
                raise BenchError(f"step {k + 1}: the workers count {pt['edge_count']} open streams,"
                                 f" the load generators {count}")  # fmt: skip
            if probes[0] != probes[1]:
                raise BenchError(f"step {k + 1}: {probes[1] - probes[0]} of {probes[1]} probes"
                                 " did not come back")  # fmt: skip
        res.update(_slopes(res["points"], edge))
        res["ok"] = res["edge_bytes_per_unit"] is not None
    except BenchError as e:
        res["error"] = str(e)
        res["logs"] = {r: p.tail(10) for r, p in edge.procs.items() if r in ("edge", "agent 0")}
    finally:
        t_stop = time.monotonic()
        _stop_lines(lps)
        edge.stop()
        res["teardown_s"] = round(time.monotonic() - t_stop, 1)
        res["wall_s"] = round(time.monotonic() - t0, 1)
    return res


# --------------------------------------------------------------------------- sessions


def sessions_run(tmp: Path, workers: int, total: int, log: Callable[[str], None]) -> dict[str, Any]:
    per = [total // SESSION_PROCS + (1 if i < total % SESSION_PROCS else 0)
           for i in range(SESSION_PROCS)]  # fmt: skip
    res: dict[str, Any] = {
        "workers": workers,
        "processes": SESSION_PROCS,
        "target": total,
        "steps": [round(total * f) for f in SESSION_STEP_FRACTIONS],
        "points": [],
        "ok": False,
    }
    edge = ScaleEdge(tmp / "scale", workers, OTHER_PORTS, key=f"sessions-w{workers}")
    lps: list[LineProc] = []
    t0 = time.monotonic()
    try:
        why = edge.unavailable()
        if why:
            raise BenchError(why)
        edge.start()
        res["edge"] = edge.config["edge"]
        others: dict[str, list[int]] = {"load_generators": []}
        res["points"].append(_point(edge, 0, "relay_agent_sessions", others))
        for i, n in enumerate(per):
            steps = [round(n * f) for f in SESSION_STEP_FRACTIONS]
            argv = [sys.executable, "-m", "bench.memload", "sessions",
                    "--edge", f"127.0.0.1:{edge.edge_port}", "--token", edge.token,
                    "--ca-file", str(edge.ca), "--steps", ",".join(map(str, steps)),
                    "--name-prefix", f"w{workers}p{i}-", "--max-pending", str(SESSION_PENDING),
                    "--timeout", "300"]  # fmt: skip
            lps.append(LineProc(argv, edge.work / f"memload-sessions-{i}.err"))
        others["load_generators"] = [lp.p.pid for lp in lps]
        log(f"scale: sessions, {workers} worker(s): {SESSION_PROCS} processes of Agents,"
            f" steps {res['steps']}")  # fmt: skip
        for k, count in enumerate(res["steps"]):
            t_step = time.monotonic()
            if k:
                for lp in lps:
                    lp.next_step()
            _await_ready(lps, 300.0)
            opened_s = time.monotonic() - t_step
            pt = _point(edge, count, "relay_agent_sessions", others)
            pt["open_s"] = round(opened_s, 1)
            res["points"].append(pt)
            if not edge.edge.alive():
                raise BenchError(edge.edge.describe_exit())
            log(f"scale: sessions {count:,} up in {opened_s:.0f} s: edge counts"
                f" {pt['edge_count']:,}, edge RSS {pt['edge_rss'] / 2**20:.0f} MiB")  # fmt: skip
            if pt["edge_count"] != count:
                raise BenchError(f"step {k + 1}: the workers count {pt['edge_count']} sessions,"
                                 f" the load generators {count}")  # fmt: skip
        res.update(_slopes(res["points"], edge))
        res["ok"] = res["edge_bytes_per_unit"] is not None
    except BenchError as e:
        res["error"] = str(e)
        res["logs"] = {"edge": edge.procs["edge"].tail(10)} if "edge" in edge.procs else {}
    finally:
        _stop_lines(lps)
        edge.stop()
        res["wall_s"] = round(time.monotonic() - t0, 1)
    return res


# --------------------------------------------------------------------------- admission


async def _admit(args: argparse.Namespace) -> dict[str, Any]:
    from bench.sessions import _control_frame, _error_kind, _Fail, _Link
    from relay.protocol import Auth, AuthError, AuthOk, Bind, BindError, Bound, protocol_of
    from relay.tls import client_context

    loop = asyncio.get_running_loop()
    token = os.environ.get(TOKEN_ENV, "")
    host, _, port_s = args.edge.rpartition(":")
    ctx = client_context(ca_file=Path(args.ca_file))
    start = time.monotonic() + (args.start - time.time())
    links: list[asyncio.Transport] = []

    async def one(i: int) -> float:
        async with asyncio.timeout(args.timeout):
            transport, link = await loop.create_connection(
                lambda: _Link(loop), host, int(port_s), ssl=ctx, server_hostname="localhost",
                ssl_handshake_timeout=args.timeout,
            )  # fmt: skip
            links.append(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            protocol = protocol_of(alpn)
            if protocol is None:
                raise _Fail(f"the edge agreed to no relay protocol (ALPN {alpn!r})")
            auth = Auth(token=token, agent_id=f"a_scale_{os.getpid()}_{i}",
                        version="relay-bench/scale", hostname="bench",
                        protocol=protocol)  # fmt: skip
            transport.write(_control_frame(auth, syn=True))
            got = await link.reply()
            if isinstance(got, AuthError):
                raise _Fail(f"auth_error {got.code}: {got.message}")
            if not isinstance(got, AuthOk):
                raise _Fail(f"expected auth_ok, got {got.TYPE}")
            transport.write(_control_frame(Bind(1, "tcp", remote_port=0,
                                                upstream="127.0.0.1:9"), syn=False))  # fmt: skip
            got = await link.reply()
            if isinstance(got, BindError):
                raise _Fail(f"bind_error {got.code}: {got.message}")
            if not isinstance(got, Bound):
                raise _Fail(f"expected bound, got {got.TYPE}")
        return float(time.monotonic() - start)

    wait = start - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)
    late = time.monotonic() - start
    got = await asyncio.gather(*(one(i) for i in range(args.clients)), return_exceptions=True)
    done = sorted(g for g in got if isinstance(g, float))
    failures: dict[str, int] = {}
    for g in got:
        if isinstance(g, BaseException):
            kind = _error_kind(g) if not isinstance(g, TimeoutError) else "timed out"
            failures[kind] = failures.get(kind, 0) + 1
    result = {"done_s": done, "failures": failures, "late_s": round(late, 4),
              "clients": args.clients}  # fmt: skip
    say("result " + json.dumps(result))
    # Hold every session until the harness has read the edge's counters.
    await loop.run_in_executor(None, sys.stdin.readline)
    for t in links:
        t.close()
    await asyncio.sleep(0.5)
    return {}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def admit_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale admit")
    p.add_argument("--edge", required=True, help="HOST:PORT of the agent listener")
    p.add_argument("--ca-file", required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--start", type=float, required=True, help="when all connect, Unix time")
    p.add_argument("--timeout", type=float, default=ADMIT_TIMEOUT_S)
    args = p.parse_args(argv)
    import uvloop

    try:
        uvloop.run(_admit(args))
    except Exception as exc:  # reported to the harness, which records it
        say(f"error {type(exc).__name__}: {exc}")
        return 1
    return 0


@dataclass
class AdmitRun:
    workers: int
    rep: int
    agents: int
    admitted: int = 0
    seconds: float | None = None  # from the release until the last agent was bound
    per_s: float | None = None
    latency_s: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    late_s: float = 0.0
    edge_cpu_s: float | None = None
    edge_cpu_by_process: dict[str, float] = field(default_factory=dict)
    gen_cpu_s: float | None = None
    machine_cpu_s: float | None = None
    sessions_held: int | None = None  # the workers' relay_agent_sessions after it
    sessions_by_worker: list[int] = field(default_factory=list)
    edge_counters: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _at(samples: list[tuple[float, dict[str, int]]], t: float) -> dict[str, int]:
    """The first sample taken at or after ``t`` (the last one if none)."""
    for when, values in samples:
        if when >= t:
            return values
    return samples[-1][1]


def _cpu_sample(edge: ScaleEdge, pids: dict[str, int], gens: list[int]) -> dict[str, int]:
    out = {"edge": edge.edge.cpu_ticks(), "machine": machine_busy_ticks() or 0}
    for role, pid in pids.items():
        out[f"own {role}"] = own_cpu_ticks(pid) or 0
    out["gen"] = sum(own_cpu_ticks(pid) or 0 for pid in gens)
    return out


def admit_run(tmp: Path, workers: int, rep: int) -> AdmitRun:
    run = AdmitRun(workers, rep, ADMIT_AGENTS)
    edge = ScaleEdge(tmp / "scale", workers, ADMIT_PORTS, key=f"admit-w{workers}-{rep}")
    lps: list[LineProc] = []
    try:
        why = edge.unavailable()
        if why:
            raise BenchError(why)
        edge.start()
        pids = edge.process_pids()
        before = edge.counters()
        start = time.time() + ADMIT_MARGIN_S
        env = {**os.environ, TOKEN_ENV: edge.token}
        per = [ADMIT_AGENTS // ADMIT_PROCS + (1 if i < ADMIT_AGENTS % ADMIT_PROCS else 0)
               for i in range(ADMIT_PROCS)]  # fmt: skip
        for i, n in enumerate(per):
            argv = [sys.executable, "-m", "bench.scale", "admit",
                    "--edge", f"127.0.0.1:{edge.edge_port}", "--ca-file", str(edge.ca),
                    "--clients", str(n), "--start", f"{start:.6f}"]  # fmt: skip
            lps.append(LineProc(argv, edge.work / f"admit-{i}.err", env=env))
        gens = [lp.p.pid for lp in lps]
        time.sleep(max(0.0, start - time.time()))
        t_start = time.time()
        samples = [(t_start, _cpu_sample(edge, pids, gens))]
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + ADMIT_TIMEOUT_S + 15.0
        while len(results) < len(lps):
            for i, lp in enumerate(lps):
                if i in results:
                    continue
                with contextlib.suppress(queue.Empty):
                    line = lp.lines.get_nowait()
                    if line is None:
                        raise BenchError(f"admission process {i} exited {lp.p.poll()}")
                    if line.startswith("error"):
                        raise BenchError(f"admission process {i}: {line}")
                    if line.startswith("result "):
                        results[i] = json.loads(line.removeprefix("result "))
            samples.append((time.time(), _cpu_sample(edge, pids, gens)))
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(results)} of {len(lps)} admission processes"
                                 " reported in time")  # fmt: skip
            time.sleep(0.05)
        done = sorted(t for r in results.values() for t in r["done_s"])
        for r in results.values():
            for kind, n in r["failures"].items():
                run.failures[kind] = run.failures.get(kind, 0) + int(n)
            run.late_s = max(run.late_s, float(r["late_s"]))
        run.admitted = len(done)
        if done:
            run.seconds = done[-1]
            run.per_s = len(done) / done[-1]
            run.latency_s = {
                "p50": statistics.median(done),
                "p90": done[int(0.9 * (len(done) - 1))],
                "max": done[-1],
            }
            a, b = samples[0][1], _at(samples, t_start + done[-1])
            run.edge_cpu_s = (b["edge"] - a["edge"]) / CLK_TCK
            run.edge_cpu_by_process = {
                role: (b[f"own {role}"] - a[f"own {role}"]) / CLK_TCK for role in pids
            }
            run.gen_cpu_s = (b["gen"] - a["gen"]) / CLK_TCK
            run.machine_cpu_s = (b["machine"] - a["machine"]) / CLK_TCK
        # Every admitted session still held: the edge's count says so.
        run.sessions_by_worker = edge.gauge("relay_agent_sessions")
        run.sessions_held = sum(run.sessions_by_worker)
        after = edge.counters()
        run.edge_counters = {k: v - before.get(k, 0.0) for k, v in after.items()
                             if v - before.get(k, 0.0)}  # fmt: skip
        if run.late_s > 0.1:
            raise BenchError(f"an admission process started {run.late_s:.2f} s late")
        if not edge.edge.alive():
            raise BenchError(edge.edge.describe_exit())
    except BenchError as e:
        run.error = str(e)
    finally:
        _stop_lines(lps)
        edge.stop()
    return run


def admit_line(run: AdmitRun) -> str:
    head = f"scale: admit {run.agents:,} at once, {run.workers} worker(s), rep {run.rep}:"
    if run.error:
        return f"{head} FAILED: {run.error.splitlines()[0]}"
    fails = sum(run.failures.values())
    cpu = f", edge {run.edge_cpu_s:.2f} CPU-s" if run.edge_cpu_s is not None else ""
    return (
        f"{head} {run.admitted} bound in {run.seconds or 0:.2f} s = {run.per_s or 0:,.0f}"
        f" sessions/s{cpu}, failures {fails}" + (f" {run.failures}" if fails else "")
    )


# --------------------------------------------------------------------------- the phase


def run_scale(
    tmp: Path,
    mode: str,
    reps: int | None,
    log: Callable[[str], None],
    res: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The phase: streams at 1 and N workers, sessions at 1 and N workers, then admission
    at 1 and 2 workers (reps alternated). Results go into ``res`` as they come."""
    res = {} if res is None else res
    m = MODES[mode]
    admit_reps = reps or m.admit_reps
    res.update(
        config={
            "workers": WORKERS,
            "stream_agents": {str(k): v for k, v in STREAM_AGENTS.items()},
            "streams_per_agent": m.streams_per_agent,
            "agents_per_worker_max": AGENTS_PER_WORKER,
            "step_fractions": list(STEP_FRACTIONS),
            "probes_per_load_generator": PROBES,
            "sessions": m.sessions,
            "session_processes": SESSION_PROCS,
            "session_pending": SESSION_PENDING,
            "admit_agents": ADMIT_AGENTS,
            "admit_processes": ADMIT_PROCS,
            "admit_workers": list(ADMIT_WORKERS),
            "admit_reps": admit_reps,
            "admit_ports": list(ADMIT_PORTS),
            "edge_yaml": EDGE_YAML,
            "settle_s": SETTLE_S,
            "limits": machine_limits(),
            "loadavg_at_start": _loadavg(),
        },
        streams={},
        sessions={},
        admit=[],
    )
    probe = ScaleEdge(tmp / "scale", 1, OTHER_PORTS, key="probe")
    why = probe.unavailable()
    if why:
        log(f"scale: skipping: {why}")
        res["skipped"] = why
        return res
    t0 = time.monotonic()
    for workers in (1, WORKERS):
        log(f"scale: idle streams through an edge of {workers} worker(s)")
        r = _guarded(streams_run, tmp, workers, m.streams_per_agent, log)
        res["streams"][f"w{workers}"] = r
        log(f"scale: streams, {workers} worker(s): " + _slope_line(r, "stream"))
    for workers in (1, WORKERS):
        log(f"scale: idle agent sessions on an edge of {workers} worker(s)")
        r = _guarded(sessions_run, tmp, workers, m.sessions, log)
        res["sessions"][f"w{workers}"] = r
        log(f"scale: sessions, {workers} worker(s): " + _slope_line(r, "session"))
    for rep in range(1, admit_reps + 1):
        order = ADMIT_WORKERS if rep % 2 else tuple(reversed(ADMIT_WORKERS))
        for workers in order:
            try:
                run = admit_run(tmp, workers, rep)
            except Exception as e:  # a bug here must not end the bench
                run = AdmitRun(workers, rep, ADMIT_AGENTS, error=f"{type(e).__name__}: {e}")
            res["admit"].append(run.to_json())
            log(admit_line(run))
    res["config"]["loadavg_at_end"] = _loadavg()
    res["wall_s"] = round(time.monotonic() - t0, 1)
    return res


def _guarded(
    fn: Callable[[Path, int, int, Callable[[str], None]], dict[str, Any]],
    tmp: Path,
    workers: int,
    n: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """A part's result; an unexpected exception becomes its error (the bench goes on)."""
    try:
        return fn(tmp, workers, n, log)
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _slope_line(r: dict[str, Any], unit: str) -> str:
    if not r.get("ok"):
        return f"FAILED: {str(r.get('error', '?')).splitlines()[0]}"
    return (
        f"edge {r['edge_bytes_per_unit']:,.0f} B per idle {unit} over {r['target']:,}"
        f" ({r.get('wall_s', 0):.0f} s)"
    )


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["admit"]:
        return admit_main(argv[1:])
    print("usage: python -m bench.scale admit --edge H:P --ca-file CA --clients N --start T",
          file=sys.stderr)  # fmt: skip
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
