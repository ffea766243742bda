"""The workers phase: `relay edge --workers 2` beside a one-process edge, relay only.

Two edges run side by side for the whole phase, each with three `relay http` agents
(subdomains ``a``, ``b`` and ``l``, plain HTTP) in front of the http phase's nginx origin:

* ``w1``: ``--workers 1``, one edge process; every agent with one link;
* ``w2``: ``--workers 2``, a supervisor and two workers, agent ``a`` on one worker and ``b``
  on the other, and agent ``l`` with ``--links 2``, one link on each worker. A link lands
  on whichever worker the kernel picks, so each session is looked up in every worker's
  admin ``/status`` and ``b`` (or ``l``) is restarted (bounded) until it is placed so.

Five closed-loop wrk workloads, the http phase's connection counts:

* ``ka``: keep-alive, split evenly over the two hostnames (one wrk process each, at once);
* ``close``: ``Connection: close`` (new connections/s), split the same way;
* ``close-one``: ``Connection: close`` to hostname ``a`` only. With two workers the kernel
  hands about half of the connections to the worker that does not hold ``a``, which passes
  each on (SCM_RIGHTS, with the request head it read): from the workers' ``handed_off``
  counters the run knows the exact fraction, and so what a handed-over visitor costs;
* ``links-ka`` and ``links-close``: keep-alive and ``Connection: close`` to hostname ``l``
  only: one agent whose two links each serve the visitors their own worker accepted (none
  handed over), against the same agent with one link on one worker.

Then the control runs of bench/workers_paced.py: the ``links-*`` workloads at fixed rates,
to compare CPU per request at equal load per process.

CPU is charged to the edge over every one of its processes (supervisor and workers, read
from /proc), the load generator's from the harness's reaped children, the agents' and the
origin's from /proc, and the machine's busy time from /proc/stat: on a shared machine the
rates depend on what the others took, the edge's CPU per request much less.
"""

from __future__ import annotations

import re
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import httpbench
from bench.contestants import START_TIMEOUT, Relay
from bench.origin import Origin
from bench.procs import (
    CLK_TCK,
    BenchError,
    Proc,
    free_port_in_range,
    get_status,
    own_cpu_ticks,
    wait_listening,
    wait_until,
)
from bench.sessions import machine_busy_ticks
from relay.cluster.place import WORKER_ENV

SUBDOMAINS = ("a", "b")
#: The agent with several links: ``--links N`` on an edge of N workers (1 on one worker).
LINKED = "l"
#: (label, hostnames loaded, Connection: close, wrk connections over all its processes).
WORKLOADS: dict[str, tuple[str, tuple[str, ...], bool, int]] = {
    "ka": ("keep-alive, 2 agents", SUBDOMAINS, False, httpbench.KA_CONNS),
    "close": ("new connections, 2 agents", SUBDOMAINS, True, httpbench.CLOSE_CONNS),
    "close-one": ("new connections, agent a only", ("a",), True, httpbench.CLOSE_CONNS),
    "links-ka": ("keep-alive, agent l (--links N)", (LINKED,), False, httpbench.KA_CONNS),
    "links-close": ("new conns, agent l (--links N)", (LINKED,), True, httpbench.CLOSE_CONNS),
}
CONFIGS = (1, 2)
#: Restarts of an agent allowed to get it (or its links) onto the other worker: each try
#: lands beside a with probability about 1/2, so 20 all failing (about 1e-6) means
#: something is wrong.
MAX_PLACEMENT_TRIES = 20
PLACEMENT_BUDGET_S = 180.0
#: Admin listeners: worker i of an edge listens on base + i, so the base is taken from a
#: range outside the kernel's ephemeral ports, where wrk's connections cannot take it.
ADMIN_PORTS = (23000, 23999)
#: Bound on one wrk run beyond its own duration.
WRK_GRACE_S = 30.0
WARMUP_S = 1.0
_SESSION_LINE = re.compile(r"session (s_\w+) established")
#: What a worker logs when another worker's inbox refused a visitor (relay/edge/worker.py).
REFUSED_LOG = "cannot take a visitor"


def _sysctl(path: str) -> str | None:
    """A kernel setting that bounds the workers' inboxes (Unix datagram sockets)."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (its workers, for a supervisor)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in task.read_text().split()]
        except OSError:
            continue
    return out


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class WorkersEdge(Relay):
    """A relay edge with ``--workers N`` and its http agents, each started on demand."""

    label = "relay edge"

    def __init__(
        self,
        work: Path,
        origin_port: int,
        workers: int,
        tcp_ports: tuple[int, int],
        key: str | None = None,
    ):
        # Before super(): the work directory is named by the key.
        self.key = key or f"relay-w{workers}"
        super().__init__(work, origin_port)
        self.workers = workers
        self.TCP_PORTS = tcp_ports
        self.label = f"{workers} worker" + ("s" if workers > 1 else "")
        self.admin_base = 0
        self.ca = Path()
        self.sessions: dict[str, list[str]] = {}  # agent -> its links' session ids
        self._agent_starts = 0

    def unavailable(self) -> str | None:
        why = super().unavailable()
        if why is None and "--workers" not in self.edge_help:
            return "`relay edge` has no --workers option"
        return why

    def edge_extra(self) -> list[str]:
        return ["--workers", str(self.workers)]

    def choose_admin_port(self) -> int:
        for _ in range(50):
            first = free_port_in_range(*ADMIN_PORTS)
            # With workers: the supervisor's listener at ``first``, worker i's at first + 1 + i.
            span = self.workers + 1 if self.workers > 1 else 1
            if all(_bindable(first + i) for i in range(1, span)):
                self.admin_base = first
                return first
        raise BenchError(f"no {span} consecutive free ports in {ADMIN_PORTS}")

    @property
    def edge(self) -> Proc:
        return self.procs["edge"]

    def start(self) -> None:
        self.token, self.ca = self.start_edge()
        # The agent port listens once the first worker does: wait for every worker.
        wait_until(
            f"all {self.workers} workers to answer /status",
            self._all_answer,
            START_TIMEOUT,
            [self.edge],
            interval=0.2,
        )

    def _all_answer(self) -> bool:
        try:
            self.statuses()
        except BenchError:
            return False
        return len(self.process_pids()) == self.workers + (self.workers > 1)

    # --- what the edge says -------------------------------------------------------------

    def admin_port(self, index: int) -> int:
        """Worker ``index``'s own admin listener (without workers: the edge's)."""
        return self.admin_base + (1 + index if self.workers > 1 else 0)

    def status(self, index: int) -> dict[str, Any]:
        return get_status(f"http://127.0.0.1:{self.admin_port(index)}/status", self.key)

    def statuses(self) -> list[dict[str, Any]]:
        return [self.status(i) for i in range(self.workers)]

    def process_pids(self) -> dict[str, int]:
        """The edge's processes by role: ``edge`` alone, or ``supervisor`` and ``worker i``
        (the supervisor's children, each told its index in its environment)."""
        root = self.edge.pid
        if self.workers == 1:
            return {"edge": root}
        out = {"supervisor": root}
        for pid in _children(root):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for var in env:
                name, _, value = var.decode(errors="replace").partition("=")
                if name == WORKER_ENV:
                    out[f"worker {value.split(',')[0]}"] = pid
        return out

    def handoffs(self) -> dict[str, int]:
        """The workers' handoff counters, summed (zeros for a one-process edge)."""
        out = {"handed_off": 0, "handed_in": 0, "failed": 0}
        for st in self.statuses():
            w = st.get("workers") or {}
            out["handed_off"] += sum(w.get("handed_off", {}).values())
            out["handed_in"] += sum(w.get("handed_in", {}).values())
            out["failed"] += int(w.get("handoffs_failed", 0))
        return out

    def worker_of(self, session: str) -> int | None:
        for st in self.statuses():
            if any(s.get("id") == session for s in st.get("sessions_list", [])):
                return int(st.get("worker") or 0)
        return None

    def host(self, sub: str) -> str:
        return f"{sub}.relay.localhost:{self.http_port}"

    def where(self, sub: str) -> list[int | None]:
        """The worker of each of ``sub``'s links now (None: not listed)."""
        return [self.worker_of(s) for s in self.sessions.get(sub, [])]

    # --- agents -------------------------------------------------------------------------

    def agent_command(self, sub: str) -> list[str]:
        """An http agent for ``sub``.relay.localhost (a variant may forward something else)."""
        assert self.bin is not None
        return [self.bin, "http", f"127.0.0.1:{self.origin_port}", "--no-https",
                "--subdomain", sub, *self.link_args(self.token, self.ca)]  # fmt: skip

    def start_agent(self, sub: str, links: int = 1) -> list[int]:
        """Start the agent ``sub`` with ``links`` links; the worker each link's session
        landed on, link 0 first."""
        argv = self.agent_command(sub) + (["--links", str(links)] if links > 1 else [])
        self._agent_starts += 1
        agent = Proc(f"{self.key}-agent-{sub}-{self._agent_starts}", argv, self.work)
        self.procs[f"agent {sub}"] = agent  # at once: Contestant.stop() stops it by PID
        self.config[f"agent {sub}"] = " ".join(a if a != self.token else "<token>" for a in argv)

        def established() -> bool:
            # Link 0 prints Forwarding once bound; links 1.. connect after it ("link i: …").
            out = agent.output()
            return "Forwarding" in out and len(set(_SESSION_LINE.findall(out))) >= links

        wait_until(f"agent {sub}'s {links} link(s) to forward", established, START_TIMEOUT,
                   [self.edge, agent])  # fmt: skip
        sessions = list(dict.fromkeys(_SESSION_LINE.findall(agent.output())))[:links]
        self.sessions[sub] = sessions
        where: list[int | None] = []

        def located() -> bool:
            where[:] = self.where(sub)
            return None not in where

        wait_until(f"sessions {sessions} in the workers' /status", located, 10.0,
                   [self.edge, agent])  # fmt: skip
        return [w for w in where if w is not None]

    def stop_agent(self, sub: str) -> None:
        """Stop ``sub``'s agent and wait until no worker lists its sessions any more (its
        name is then orphaned, free for the next agent of the same token)."""
        self.procs[f"agent {sub}"].stop()
        sessions = self.sessions.pop(sub)
        wait_until(f"sessions {sessions} to end",
                   lambda: all(self.worker_of(s) is None for s in sessions),
                   10.0, [self.edge])  # fmt: skip

    def agents(self) -> dict[str, Proc]:
        return {role: p for role, p in self.procs.items() if role.startswith("agent")}

    def routed(self, holders: dict[str, list[int]]) -> bool:
        """Every worker knows which other workers hold each name (the supervisor's
        ``where`` messages arrive asynchronously): a name held here and elsewhere too
        (an agent's links) is listed as well."""
        for st in self.statuses():
            elsewhere = (st.get("workers") or {}).get("elsewhere", {})
            me = st.get("worker")
            if len(elsewhere) != sum(any(w != me for w in ws) for ws in holders.values()):
                return False
        return True


def place_links(edge: WorkersEdge, sub: str, links: int) -> dict[str, Any]:
    """Start agent ``sub`` with ``links`` links, again (bounded) until they are on as many
    different workers as can be: ``{"workers": [by link], "tries": n, "ok": bool}``; the
    last try stays running, placed or not."""
    want = min(links, edge.workers)
    deadline = time.monotonic() + PLACEMENT_BUDGET_S
    where: list[int] = []
    tries = 0
    for tries in range(1, MAX_PLACEMENT_TRIES + 1):
        where = edge.start_agent(sub, links)
        if len(set(where)) == want or tries == MAX_PLACEMENT_TRIES:
            break
        if time.monotonic() > deadline:
            break
        edge.stop_agent(sub)
    return {"workers": where, "tries": tries, "ok": len(set(where)) == want}


def place_agents(edge: WorkersEdge, log: Callable[[str], None]) -> dict[str, Any]:
    """Start agents a and b, with several workers b on another worker than a; then agent
    l with a link per worker."""
    placed = {"a": edge.start_agent("a")[0]}
    deadline = time.monotonic() + PLACEMENT_BUDGET_S
    tries = 0
    for tries in range(1, MAX_PLACEMENT_TRIES + 1):
        placed["b"] = edge.start_agent("b")[0]
        if edge.workers == 1 or placed["b"] != placed["a"] or time.monotonic() > deadline:
            break
        if tries < MAX_PLACEMENT_TRIES:  # the last one stays, beside a, and is reported
            edge.stop_agent("b")
    ok = edge.workers == 1 or placed["a"] != placed["b"]
    if not ok:
        log(f"workers: agent b landed beside a (worker {placed['a']}) {tries} times; giving up")
    linked = place_links(edge, LINKED, edge.workers)
    if not linked["ok"]:
        log(f"workers: agent {LINKED}'s {edge.workers} links stayed on worker(s)"
            f" {linked['workers']} over {linked['tries']} starts; giving up")  # fmt: skip
    if edge.workers > 1:
        holders = {**{s: [w] for s, w in placed.items()}, LINKED: linked["workers"]}
        wait_until(f"{edge.key}'s workers to know where a, b and {LINKED} are",
                   lambda: edge.routed(holders), 10.0, [edge.edge])  # fmt: skip
    return {"workers": placed, "tries": tries, "ok": ok, "links": {LINKED: linked}}


class RelayLinks(WorkersEdge):
    """The bulk phase's relay TCP endpoint through one agent with ``--links 2`` on an edge
    with ``--workers 2``, one link on each worker (the agent started again, bounded, until
    so). Only the workers holding a port listen on it, so the kernel spreads the visitors
    over both and each worker serves its own on its own link: nothing is handed over."""

    key = "relay-links2"
    LINKS = 2
    #: Its own ports: it runs beside the relay contestant (20000-20100).
    PORTS = (20200, 20299)
    streams = (8,)  # the target is about 8 streams

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port, self.LINKS, self.PORTS, key=self.key)
        self.label = f"relay --links {self.LINKS}"

    def agent_command(self, sub: str) -> list[str]:
        assert self.bin is not None
        return [self.bin, "tcp", f"127.0.0.1:{self.origin_port}",
                *self.link_args(self.token, self.ca), "--remote-port", str(self.port)]  # fmt: skip

    def start(self) -> None:
        super().start()
        self.port = free_port_in_range(*self.PORTS)  # kept over the agent's restarts
        placed = place_links(self, "tcp", self.LINKS)
        self.config["placement"] = placed
        if not placed["ok"]:
            raise BenchError(f"the agent's {self.LINKS} links stayed on worker(s)"
                             f" {placed['workers']} over {placed['tries']} starts")  # fmt: skip
        agent = self.procs["agent tcp"]
        wait_listening(self.port, "relay endpoint port", START_TIMEOUT, [self.edge, agent])
        forwarding = [ln.strip() for ln in agent.output().splitlines() if "Forwarding" in ln]
        self.forwarding_line = forwarding[0] if forwarding else None
        self.config["forwarding_line"] = self.forwarding_line or "(not printed)"

    def stop(self) -> None:
        # Where the links are after the runs (a link that reconnected may have moved).
        if "tcp" in self.sessions and "edge" in self.procs and self.edge.alive():
            try:
                self.config["placement_at_end"] = self.where("tcp")
            except BenchError as e:
                self.config["placement_at_end"] = str(e)
        super().stop()


# --------------------------------------------------------------------------- one run


@dataclass
class WRun:
    config: str  # w1 | w2
    workload: str
    rep: int  # 0: warm-up, not counted
    seconds: float
    requests: int = 0
    rps: float | None = None
    rps_by_host: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    edge_cpu_s: float | None = None  # every process of the edge
    edge_cpu_by_process: dict[str, float] = field(default_factory=dict)
    wrk_cpu_s: float | None = None
    agents_cpu_s: float | None = None
    origin_cpu_s: float | None = None
    machine_cpu_s: float | None = None
    handed_off: int = 0
    handed_in: int = 0
    handoffs_failed: int = 0
    error: str | None = None
    rate: float | None = None  # offered req/s of a paced run (bench/workers_paced.py)
    latency_ms: dict[str, float] = field(default_factory=dict)  # a paced run's percentiles

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _children_cpu_s() -> float:
    """CPU of this harness's reaped children: the wrk processes a run waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class _Snapshot:
    edge: int
    own: dict[str, int | None]
    agents: int
    origin: int
    machine: int | None
    children_s: float

    def fill(self, run: WRun, s0: _Snapshot) -> None:
        """The CPU of ``run``: from ``s0`` (its start) to this snapshot (its end)."""
        run.edge_cpu_s = (self.edge - s0.edge) / CLK_TCK
        run.edge_cpu_by_process = {
            role: (b - a) / CLK_TCK
            for role in s0.own
            if (a := s0.own[role]) is not None and (b := self.own.get(role)) is not None
        }
        run.agents_cpu_s = (self.agents - s0.agents) / CLK_TCK
        run.origin_cpu_s = (self.origin - s0.origin) / CLK_TCK
        if s0.machine is not None and self.machine is not None:
            run.machine_cpu_s = (self.machine - s0.machine) / CLK_TCK
        run.wrk_cpu_s = self.children_s - s0.children_s


def snapshot_cpu(edge: WorkersEdge, pids: dict[str, int], origin: Proc) -> _Snapshot:
    return _Snapshot(
        edge.edge.cpu_ticks(),
        {role: own_cpu_ticks(pid) for role, pid in pids.items()},
        sum(p.cpu_ticks() for p in edge.agents().values()),
        origin.cpu_ticks(),
        machine_busy_ticks(),
        _children_cpu_s(),
    )


def measure(edge: WorkersEdge, origin: Proc, workload: str, rep: int, secs: float) -> WRun:
    """One closed-loop run: a wrk process per hostname, all at once, the connections split
    evenly; CPU and the handoff counters read around it."""
    _, subs, close, conns = WORKLOADS[workload]
    run = WRun(edge.key.removeprefix("relay-"), workload, rep, secs)
    wrks: list[tuple[str, Proc]] = []
    try:
        for role, p in edge.procs.items():
            if not p.alive():
                raise BenchError(f"{role}: {p.describe_exit()}")
        pids = edge.process_pids()
        before = edge.handoffs()
        s0 = snapshot_cpu(edge, pids, origin)
        for i, sub in enumerate(subs):
            n = conns // len(subs) + (1 if i < conns % len(subs) else 0)
            argv = ["wrk", f"-t{httpbench.WRK_THREADS}", f"-c{n}", f"-d{secs:g}s", "--latency",
                    "--timeout", "5s", "-H", f"Host: {edge.host(sub)}"]  # fmt: skip
            if close:
                argv += ["-H", "Connection: close"]
            argv.append(httpbench.url(edge.http_port))
            name = f"wrk-{edge.key}-{workload}-{rep}-{sub}"
            wrks.append((sub, Proc(name, argv, edge.work)))
        for sub, w in wrks:
            if w.wait(secs + WRK_GRACE_S) is None:
                raise BenchError(f"wrk for {sub} did not finish within {secs + WRK_GRACE_S:g} s")
        s1 = snapshot_cpu(edge, pids, origin)
        after = edge.handoffs()
        if edge.process_pids() != pids:
            raise BenchError(f"the edge's processes changed during the run: {pids}")
        for sub, w in wrks:
            if w.returncode() != 0:
                raise BenchError(f"wrk for {sub} exited {w.returncode()}: {w.tail(3)}")
            res = httpbench.parse_wrk(w.output())
            run.requests += res["requests"]
            run.rps_by_host[sub] = res["rps"]
            for kind, n in res["errors"].items():
                run.errors[kind] = run.errors.get(kind, 0) + n
        run.rps = sum(run.rps_by_host.values())
        s1.fill(run, s0)
        run.handed_off = after["handed_off"] - before["handed_off"]
        run.handed_in = after["handed_in"] - before["handed_in"]
        run.handoffs_failed = after["failed"] - before["failed"]
        if not run.requests:
            raise BenchError("wrk completed 0 requests")
    except BenchError as e:
        run.error = str(e)
    finally:
        for _, w in wrks:
            w.stop()
    return run


def progress_line(run: WRun, label: str) -> str:
    rep = "warm-up" if run.rep == 0 else f"rep {run.rep}"
    head = f"workers {rep:<7} {run.workload:<11} {label:<9}"
    if run.rate is not None:
        head += f" at {run.rate:6.0f}/s"
    if run.error:
        return f"{head} FAILED: {run.error.splitlines()[0]}"
    cpu = run.edge_cpu_s or 0.0
    handed = (
        f"  handed over {run.handed_off} ({run.handed_off / run.requests:.1%} of requests)"
        if run.handed_off
        else ""
    )
    errors = f"  errors {sum(run.errors.values())}" if run.errors else ""
    return (
        f"{head} {run.rps or 0:8.0f} req/s  edge {cpu * 1e6 / run.requests:6.1f} CPU-µs/req"
        f"  cores: edge {cpu / run.seconds:.2f}, wrk {(run.wrk_cpu_s or 0) / run.seconds:.2f}"
        f"{handed}{errors}"
    )


# --------------------------------------------------------------------------- the phase


def run_workers(
    tmp: Path,
    duration: float,
    reps: int,
    log: Callable[[str], None],
    res: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The phase: the origin, both edges and their agents, one warm-up run per workload and
    edge, then ``reps`` repetitions of every workload with the edges alternated (order
    rotated per repetition and workload). Runs go into ``res`` as they come."""
    res = {} if res is None else res
    res.update(
        config={
            "duration_s": duration,
            "reps": reps,
            "warmup_s": WARMUP_S,
            "workloads": {
                k: {"label": v[0], "hosts": list(v[1]), "close": v[2], "connections": v[3]}
                for k, v in WORKLOADS.items()
            },
            "wrk": f"wrk -t{httpbench.WRK_THREADS} per hostname, connections split evenly",
            "max_placement_tries": MAX_PLACEMENT_TRIES,
            "unix_max_dgram_qlen": _sysctl("/proc/sys/net/unix/max_dgram_qlen"),
        },
        edges={},
        runs=[],
    )
    work = tmp / "workers"
    origin = Origin(work)
    edges: list[WorkersEdge] = []
    try:
        origin.start()
        assert origin.proc is not None
        origin_proc: Proc = origin.proc
        for n, ports in zip(CONFIGS, ((22000, 22009), (22010, 22019)), strict=True):
            edge = WorkersEdge(work, origin.port, n, ports)
            edges.append(edge)
            why = edge.unavailable()
            if why:
                log(f"workers: skipping: {why}")
                res["skipped"] = why
                return res
            log(f"workers: starting a relay edge with --workers {n}, agents a, b and"
                f" {LINKED} (--links {n})")  # fmt: skip
            try:
                edge.start()
                placement = place_agents(edge, log)
            except BenchError as e:
                log(f"workers: skipping: {edge.key} failed to start: {e}")
                res.update(skipped=f"{edge.key} failed to start: {str(e).splitlines()[0]}",
                           logs=edge.logs())  # fmt: skip
                return res
            res["edges"][edge.key] = {"config": edge.config, "placement": placement,
                                      "pids": edge.process_pids()}  # fmt: skip
            where, linked = placement["workers"], placement["links"][LINKED]
            log(f"workers: {edge.key}: agent a on worker {where['a']}, b on worker {where['b']}"
                f" ({placement['tries']} start(s) of b); {LINKED}'s links on worker(s)"
                f" {linked['workers']} ({linked['tries']} start(s))")  # fmt: skip

        labels = {e.key.removeprefix("relay-"): e.label for e in edges}

        def record(run: WRun) -> None:
            res["runs"].append(run.to_json())
            log(progress_line(run, labels[run.config]))
            time.sleep(0.2)

        def one(edge: WorkersEdge, workload: str, rep: int, secs: float) -> None:
            record(measure(edge, origin_proc, workload, rep, secs))

        est = len(WORKLOADS) * len(edges) * (WARMUP_S + 0.5 + reps * (duration + 0.5))
        log(f"workers: {len(WORKLOADS)} workloads x {len(edges)} edges x (1 warm-up + {reps}"
            f" reps), {duration:g} s each, about {est / 60:.1f} min")  # fmt: skip
        names = list(WORKLOADS)
        for workload in names:
            for edge in edges:
                one(edge, workload, 0, WARMUP_S)
        for rep in range(1, reps + 1):
            for wi, workload in enumerate(names[rep - 1 :] + names[: rep - 1]):
                shift = (rep - 1 + wi) % len(edges)
                for edge in edges[shift:] + edges[:shift]:
                    one(edge, workload, rep, duration)
        from bench.workers_paced import run_paced  # it builds on this module

        by_config = {e.key.removeprefix("relay-"): e for e in edges}
        run_paced(by_config, origin_proc, res, reps, duration, record, log)
        for edge in edges:
            info = res["edges"][edge.key]
            try:
                at_end = {s: edge.where(s) for s in edge.sessions}
                info["placement_at_end"] = {s: ws[0] if s != LINKED else ws
                                            for s, ws in at_end.items()}  # fmt: skip
            except BenchError as e:
                info["placement_at_end"] = str(e)
            refused = [ln for ln in edge.edge.output().splitlines() if REFUSED_LOG in ln]
            if refused:
                info["handoffs_refused_in_log"] = {"lines": len(refused), "first": refused[0]}
            dead = [role for role, p in edge.procs.items() if not p.alive()]
            if dead:
                info["died"] = {r: edge.procs[r].describe_exit() for r in dead}
                info["logs"] = edge.logs()
    finally:
        for edge in edges:
            edge.stop()
        origin.stop()
    return res
