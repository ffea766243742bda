"""The sessions phase (issue 13): how many agent sessions a relay edge admits per second.

Three closed-loop workloads against a real `relay edge` (started as `bench/contestants.py`
starts it), each with a bounded number of concurrent clients for a fixed duration:

* ``handshake`` — TCP connect + TLS handshake to the agent port (full handshake, no
  resumption, the agent's own TLS settings and certificate check), then close: the floor;
* ``auth`` — the same, then yamux stream 1 opened with an Auth, wait for AuthOk, close;
* ``bind`` — the same as ``auth``, then one Bind (tcp, port chosen by the edge), wait for
  Bound, close.

The load generator is this module run as worker processes (`python -m bench.sessions
worker ...`), written for the bench from the wire protocol (relay.protocol's messages over
a minimal yamux framing): its CPU is read from /proc beside the edge's, so a reader can see
when the client and not the edge is the limit. Only successes that complete inside the
measured window count; failures are counted by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import struct
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.contestants import Relay
from bench.procs import CLK_TCK, BenchError, Proc
from relay.protocol import (
    Auth,
    AuthError,
    AuthOk,
    Bind,
    BindError,
    Bound,
    CertStatus,
    Message,
    MessageReader,
    Notice,
    protocol_of,
)

#: The three workloads, in the order the report shows them.
MODES = ("handshake", "auth", "bind")
MODE_LABELS = {
    "handshake": "TLS handshake, then close",
    "auth": "TLS + yamux + Auth → AuthOk, then close",
    "bind": "TLS + yamux + Auth → AuthOk + Bind tcp → Bound, then close",
}
#: Concurrent clients over all worker processes (each runs CLIENTS / PROCS of them).
CLIENTS = 16
#: Worker processes. A Python TLS client pays more CPU per handshake than the edge does
#: (measured here: about 1.6 vs 1.0 ms), so one process would set the pace of the handshake
#: workload; two let the generator take what the machine has left beside the edge.
PROCS = 2
#: Seconds the clients run before the measured window opens (connections at steady state).
RAMP_S = 0.5
#: Seconds between launching the workers and opening the window (imports, TLS context).
START_MARGIN_S = 1.5
#: Bound on each cycle (connect + handshake + replies) and on each close.
STEP_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
TOKEN_ENV = "RELAY_BENCH_SESSIONS_TOKEN"

# yamux (relay/mux.py speaks the same framing): version, type, flags, stream id, length.
_HDR = struct.Struct(">BBHII")
_DATA, _WINDOW_UPDATE, _PING, _GO_AWAY = 0, 1, 2, 3
_SYN, _ACK = 1, 2
_CONTROL_STREAM = 1


# --------------------------------------------------------------------------- worker side


class _Fail(Exception):
    """A cycle failed in a way the edge told us about (wrong reply, GoAway, close)."""


class _Link(asyncio.Protocol):
    """The agent side of one link: yamux frames in, control messages of stream 1 out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.reader = MessageReader()
        self.messages: list[Message] = []
        self.problem: str | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TLS transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= _HDR.size:
            _v, kind, flags, stream_id, length = _HDR.unpack_from(self.buf)
            if kind == _DATA:
                if len(self.buf) < _HDR.size + length:
                    break
                payload = bytes(self.buf[_HDR.size : _HDR.size + length])
                del self.buf[: _HDR.size + length]
                if stream_id == _CONTROL_STREAM and payload:
                    try:
                        self.messages += self.reader.feed(payload)
                    except Exception as exc:  # relay.errors.ProtocolViolation
                        self.problem = f"bad control message: {exc}"
                continue
            del self.buf[: _HDR.size]
            if kind == _PING and flags & _SYN and self.transport is not None:
                # An agent answers the edge's pings; a short session rarely sees one.
                self.transport.write(_HDR.pack(0, _PING, _ACK, 0, length))
            elif kind == _GO_AWAY:
                self.problem = f"edge sent GoAway({length})"
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.problem is None and not self.messages:
            self.problem = f"edge closed the link ({exc!r})" if exc else "edge closed the link"
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def reply(self) -> Message:
        """The next answer on the control stream; notices are informational, not answers."""
        while True:
            while not self.messages:
                if self.problem is not None:
                    raise _Fail(self.problem)
                self.waiter = self.loop.create_future()
                await self.waiter
            message = self.messages.pop(0)
            if not isinstance(message, Notice | CertStatus):
                return message


def _control_frame(message: Message, *, syn: bool) -> bytes:
    wire = message.to_wire()  # 4-byte length + JSON: the control stream's framing
    return _HDR.pack(0, _DATA, _SYN if syn else 0, _CONTROL_STREAM, len(wire)) + wire


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, _Fail):
        return str(exc)
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return f"no reply within {STEP_TIMEOUT:g} s"
    if isinstance(exc, OSError):
        return type(exc).__name__ + (f" ({exc.strerror})" if exc.strerror else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class _Tally:
    ok: int = 0  # successes completed inside the window
    ok_all: int = 0  # successes, ramp and tail included
    failures: dict[str, int] = field(default_factory=dict)  # inside the window, by kind
    failures_all: int = 0
    close_timeouts: int = 0


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from relay.tls import client_context  # here: the harness needs no TLS (cryptography)

    loop = asyncio.get_running_loop()
    token = os.environ.get(TOKEN_ENV, "")
    host, _, port_s = args.edge.rpartition(":")
    port = int(port_s)
    ctx = client_context(ca_file=Path(args.ca_file))
    # The window in this process's monotonic clock (the harness gave wall-clock times so
    # that several workers open and close it together).
    w_start = time.monotonic() + (args.start - time.time())
    w_end = w_start + args.duration
    tally = _Tally()
    seq = 0

    async def cycle() -> None:
        nonlocal seq
        seq += 1
        agent_id = f"a_bench_{os.getpid()}_{seq}"  # one per session: nothing to take back
        transport: asyncio.Transport | None = None
        link: _Link | None = None
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                transport, link = await loop.create_connection(
                    lambda: _Link(loop),
                    host,
                    port,
                    ssl=ctx,
                    server_hostname="localhost",
                    ssl_handshake_timeout=STEP_TIMEOUT,
                )
                ssl_object = transport.get_extra_info("ssl_object")
                alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
                protocol = protocol_of(alpn)
                if protocol is None:
                    raise _Fail(f"the edge agreed to no relay protocol (ALPN {alpn!r})")
                if args.mode != "handshake":
                    auth = Auth(token=token, agent_id=agent_id, version="relay-bench/sessions",
                                hostname="bench", protocol=protocol)  # fmt: skip
                    transport.write(_control_frame(auth, syn=True))
                    got = await link.reply()
                    if isinstance(got, AuthError):
                        raise _Fail(f"auth_error {got.code}")
                    if not isinstance(got, AuthOk):
                        raise _Fail(f"expected auth_ok, got {got.TYPE}")
                if args.mode == "bind":
                    # As the agent does: the Bind goes after AuthOk, not pipelined with Auth.
                    bind = Bind(1, "tcp", remote_port=0, upstream="127.0.0.1:9")
                    transport.write(_control_frame(bind, syn=False))
                    got = await link.reply()
                    if isinstance(got, BindError):
                        raise _Fail(f"bind_error {got.code}")
                    if not isinstance(got, Bound):
                        raise _Fail(f"expected bound, got {got.TYPE}")
            done = time.monotonic()
            tally.ok_all += 1
            if w_start <= done < w_end:
                tally.ok += 1
        finally:
            if transport is not None and link is not None:
                # TLS close_notify, then wait until the edge has closed its side too, so
                # a client never has more than one link open (the concurrency bound).
                transport.close()
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await asyncio.shield(link.closed)
                except TimeoutError:
                    tally.close_timeouts += 1
                    transport.abort()

    async def client() -> None:
        while time.monotonic() < w_end:
            try:
                await cycle()
            except Exception as exc:  # counted by kind; the client goes on
                tally.failures_all += 1
                if w_start <= time.monotonic() < w_end:
                    kind = _error_kind(exc)
                    tally.failures[kind] = tally.failures.get(kind, 0) + 1
                await asyncio.sleep(0.01)  # a refusing edge must not make this spin

    begin = w_start - RAMP_S
    late = time.monotonic() - begin
    if late < 0:
        await asyncio.sleep(-late)
    await asyncio.gather(*(client() for _ in range(args.clients)))
    return {
        "ok": tally.ok,
        "ok_all": tally.ok_all,
        "failures": tally.failures,
        "failures_all": tally.failures_all,
        "close_timeouts": tally.close_timeouts,
        "clients": args.clients,
        "late_s": round(max(late, 0.0), 3),  # > 0: started after its ramp should have
    }


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sessions worker")
    p.add_argument("--edge", required=True, help="HOST:PORT of the agent listener")
    p.add_argument("--ca-file", required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--start", type=float, required=True, help="window start, Unix time")
    p.add_argument("--duration", type=float, required=True)
    args = p.parse_args(argv)
    import uvloop

    try:
        result = uvloop.run(_worker(args))
    except Exception as exc:  # reported to the harness, which records it
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


# --------------------------------------------------------------------------- harness side


class SessionsEdge(Relay):
    """A relay edge for this phase only: its own data directory and token, and the two
    settings that would otherwise end the measurement rather than describe it."""

    key = "relay-sessions"
    label = "relay edge"
    #: As many ports as the edge's default range (20000-20999): a random-port Bind picks
    #: among the free ports of the range, so its cost is measured at the default size.
    TCP_PORTS = (21000, 21999)

    def unavailable(self) -> str | None:
        why = super().unavailable()
        if why is None and "--config" not in self.edge_help:
            return "`relay edge` has no --config (needed for max_sessions, reclaim_grace)"
        return why

    def edge_extra(self) -> list[str]:
        cfg = self.work / "edge.yaml"
        cfg.write_text(EDGE_YAML)
        return ["--config", str(cfg)]

    def admin_port(self) -> int | None:
        argv = self.config.get("edge", "").split()
        if "--admin-listen" in argv:
            return int(argv[argv.index("--admin-listen") + 1].rpartition(":")[2])
        return None


#: max_sessions far above what 16 clients can hold open; reclaim_grace 0 releases a closed
#: session's endpoint at once (the default 60 s would keep each bound port reserved for a
#: minute, and at hundreds of binds/s the 1,000-port range runs out within seconds). The
#: per-source failed-auth guard stays at its defaults: every client authenticates
#: correctly, so it must count nothing (the counters below check it).
EDGE_YAML = "max_sessions: 1000000\nreclaim_grace: 0\n"

#: Edge counters read before and after each run (admin /metrics), to prove the guard and
#: the session limit did not interfere and to compare the edge's count with the client's.
COUNTERS = (
    "relay_agent_sessions_opened_total",
    "relay_auth_failures_total",
    "relay_auth_source_blocks_total",
    "relay_agent_links_refused_total",
    "relay_binds_refused_total",
    "relay_tls_handshakes_total",
)


def machine_busy_ticks() -> int | None:
    """Non-idle CPU ticks of the whole machine (/proc/stat, all CPUs): with the edge's and
    the load generator's own, it shows how much other work took on a shared machine."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    return sum(ticks[:8]) - ticks[3] - ticks[4]


def scrape(admin_port: int | None) -> dict[str, float]:
    """Selected counters from the edge's /metrics, summed per name and label set."""
    if admin_port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] in COUNTERS:
            with contextlib.suppress(ValueError):
                out[series] = out.get(series, 0.0) + float(value)
    return out


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters that moved during a run (series that did not are left out)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


@dataclass
class SessionRun:
    mode: str
    rep: int  # 0: warm-up, not counted
    seconds: float
    ok: int = 0  # successes inside the window
    ok_all: int = 0  # successes, ramp and tail included (what the edge's counters see)
    failures: dict[str, int] = field(default_factory=dict)
    close_timeouts: int = 0
    edge_cpu_s: float | None = None
    gen_cpu_s: list[float] = field(default_factory=list)  # per worker process
    machine_cpu_s: float | None = None  # every process on the machine, these included
    edge_counters: dict[str, float] = field(default_factory=dict)
    late_s: float = 0.0
    error: str | None = None

    @property
    def rate(self) -> float | None:
        return self.ok / self.seconds if self.error is None and self.seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rep": self.rep,
            "seconds": self.seconds,
            "ok": self.ok,
            "ok_all": self.ok_all,
            "per_s": self.rate,
            "failures": self.failures,
            "close_timeouts": self.close_timeouts,
            "edge_cpu_s": self.edge_cpu_s,
            "load_generator_cpu_s": self.gen_cpu_s,
            "machine_cpu_s": self.machine_cpu_s,
            "edge_counters": self.edge_counters,
            "late_s": self.late_s,
            "error": self.error,
        }


def measure(
    edge: SessionsEdge, token: str, ca: Path, mode: str, rep: int, duration: float, seq: int
) -> SessionRun:
    """One run: PROCS workers, CLIENTS clients in all, CPU of the edge and the workers read
    from /proc at the window's edges."""
    run = SessionRun(mode, rep, duration)
    before = scrape(edge.admin_port())
    start = time.time() + START_MARGIN_S
    per = [CLIENTS // PROCS + (1 if i < CLIENTS % PROCS else 0) for i in range(PROCS)]
    env = {**os.environ, TOKEN_ENV: token}  # not on the command line, not in the results
    workers: list[Proc] = []
    try:
        for i, n in enumerate(per):
            argv = [sys.executable, "-m", "bench.sessions", "worker",
                    "--edge", f"127.0.0.1:{edge.edge_port}", "--ca-file", str(ca),
                    "--mode", mode, "--clients", str(n), "--start", f"{start:.6f}",
                    "--duration", f"{duration:g}"]  # fmt: skip
            workers.append(Proc(f"sessions-{seq}-{mode}-{i}", argv, edge.work, env))
        edge_proc = edge.procs["edge"]
        time.sleep(max(0.0, start - time.time()))
        m0, e0, g0 = machine_busy_ticks(), edge_proc.cpu_ticks(), [w.cpu_ticks() for w in workers]
        time.sleep(max(0.0, start + duration - time.time()))
        m1, e1, g1 = machine_busy_ticks(), edge_proc.cpu_ticks(), [w.cpu_ticks() for w in workers]
        run.edge_cpu_s = (e1 - e0) / CLK_TCK
        if m0 is not None and m1 is not None:
            run.machine_cpu_s = (m1 - m0) / CLK_TCK
        run.gen_cpu_s = [(b - a) / CLK_TCK for a, b in zip(g0, g1, strict=True)]
        for w in workers:
            if w.wait(STEP_TIMEOUT + CLOSE_TIMEOUT + 30) is None:
                raise BenchError(f"{w.name} did not finish within the run's bound")
        for w in workers:
            lines = [ln for ln in w.output().splitlines() if ln.startswith("{")]
            if not lines:
                raise BenchError(f"{w.name} printed no result: {w.describe_exit()}")
            res = json.loads(lines[-1])
            if res.get("error"):
                raise BenchError(f"{w.name}: {res['error']}")
            run.ok += int(res["ok"])
            run.ok_all += int(res["ok_all"])
            for kind, n in res["failures"].items():
                run.failures[kind] = run.failures.get(kind, 0) + int(n)
            run.close_timeouts += int(res["close_timeouts"])
            run.late_s = max(run.late_s, float(res["late_s"]))
        if not edge_proc.alive():
            raise BenchError(edge_proc.describe_exit())
        if run.late_s > RAMP_S:
            # Its clients were not running when the window opened: the count is short.
            raise BenchError(f"a worker started {run.late_s:.2f} s late (window undercounted)")
    except BenchError as e:
        run.error = str(e)
    finally:
        for w in workers:
            w.stop()
    time.sleep(0.2)  # let the edge finish closing the last links before the next count
    run.edge_counters = counter_delta(before, scrape(edge.admin_port()))
    return run


def progress_line(run: SessionRun) -> str:
    rep = "warm-up" if run.rep == 0 else f"rep {run.rep}"
    head = f"sessions {rep:<7} {run.mode:<9}"
    if run.error:
        return f"{head} FAILED: {run.error.splitlines()[0]}"
    fails = sum(run.failures.values())
    edge = f"{run.edge_cpu_s / run.seconds:.2f}" if run.edge_cpu_s is not None else "?"
    gen = sum(run.gen_cpu_s) / run.seconds
    cpu_ms = (
        f"  edge {run.edge_cpu_s * 1e3 / run.ok:.2f} CPU-ms each"
        if run.edge_cpu_s is not None and run.ok
        else ""
    )
    return (
        f"{head} {run.rate or 0:8.0f}/s{cpu_ms}  cores: edge {edge}, load generator {gen:.2f}"
        + (f"  failures {fails}" if fails else "")
    )


def run_sessions(
    tmp: Path,
    duration: float,
    reps: int,
    warmup: float,
    log: Callable[[str], None],
    res: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The phase: a fresh edge, one warm-up run per workload, then `reps` repetitions of
    the three workloads, order rotated per repetition. Results go into `res` as they come
    (an interrupted run keeps the runs done so far)."""
    res = {} if res is None else res
    res.update(
        {
            "config": {
                "clients": CLIENTS,
                "processes": PROCS,
                "duration_s": duration,
                "reps": reps,
                "warmup_s": warmup,
                "ramp_s": RAMP_S,
                "modes": MODE_LABELS,
            },
            "runs": [],
        }
    )
    edge = SessionsEdge(tmp / "sessions", 9)
    why = edge.unavailable()
    if why:
        log(f"sessions: skipping: {why}")
        res["skipped"] = why
        return res
    try:
        log("sessions: starting a relay edge for this phase (its own data dir and token)")
        try:
            token, ca = edge.start_edge()
        except BenchError as e:
            log(f"sessions: skipping: the edge failed to start: {e}")
            res.update(skipped=f"edge failed to start: {str(e).splitlines()[0]}", logs=edge.logs())
            return res
        res["edge"] = {**edge.config, "edge.yaml": EDGE_YAML}
        per_run = START_MARGIN_S + 0.5
        est = len(MODES) * (warmup + per_run + reps * (duration + per_run))
        log(
            f"sessions: {len(MODES)} workloads x (1 warm-up + {reps} reps), {CLIENTS} clients in"
            f" {PROCS} processes, {duration:g} s each, about {est / 60:.1f} min"
        )
        seq = 0

        def one(mode: str, rep: int, secs: float) -> None:
            nonlocal seq
            seq += 1
            run = measure(edge, token, ca, mode, rep, secs, seq)
            res["runs"].append(run.to_json())
            log(progress_line(run))

        for mode in MODES:
            one(mode, 0, warmup)
        for rep in range(1, reps + 1):
            shift = (rep - 1) % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                one(mode, rep, duration)
        if not edge.procs["edge"].alive():
            res["died"] = edge.procs["edge"].describe_exit()
            res["logs"] = edge.logs()
    finally:
        edge.stop()
    return res


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    print("usage: python -m bench.sessions worker --edge H:P --ca-file CA --mode M ...",
          file=sys.stderr)  # fmt: skip
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
