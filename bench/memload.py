"""Load generator for the memory scenarios, run as its own process by the harness.

    python -m bench.memload sessions --edge H:P --token T --ca-file CA --steps 100,200
        Opens idle agent sessions from ONE process with relay's own agent code (one
        `relay.agent.client.Agent` per session, each binding one http endpoint named
        PREFIX<i> (--name-prefix, default `m`), all in one uvloop loop), at most
        --max-pending (200) of them handshaking at a time. After each step (when that many
        Agents are connected) it prints `ready N` and waits for a line on stdin.

    python -m bench.memload streams --port P --holder-port H --steps 5000,10000
        Runs a holder upstream on --holder-host (127.0.0.1):H that accepts connections, holds
        them and echoes what it is sent, and opens idle visitor connections to 127.0.0.1:P (a
        relay TCP endpoint forwarding to H), from --source ADDR if given (bound before
        connect with IP_BIND_ADDRESS_NO_PORT, so the port is chosen per destination). With
        --wait-first it waits for a line on stdin before the first step. After each step
        (when the holder has accepted as many connections as were opened) it sends 16
        random bytes on --probe K visitor connections picked at random and checks each gets
        them back (through the edge, the agent and the holder), then prints
        `ready N accepted M probes OK/K`. With --rst every socket is closed with a reset
        (SO_LINGER 0): tens of thousands of closes leave no TIME_WAIT behind.

Both print `error ...` and exit non-zero on failure; both exit when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import socket
import struct
import sys
from pathlib import Path

#: Linux: bind() reserves no port; connect() picks one unique for the 4-tuple.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: SO_LINGER on, 0 s: close() sends a reset and leaves no TIME_WAIT.
RESET_LINGER = struct.pack("ii", 1, 0)
PROBE_BYTES = 16


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def wait_stdin() -> bool:
    """Wait for one line on stdin; False at EOF."""
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    return bool(line)


async def sessions(args: argparse.Namespace) -> int:
    from relay.agent.client import Agent, AgentOptions, EndpointSpec

    host, _, port = args.edge.rpartition(":")
    agents: list[Agent] = []
    tasks: list[asyncio.Task[None]] = []
    quiet = lambda line: None  # noqa: E731

    async def start(i: int) -> None:
        spec = EndpointSpec(
            "http", "127.0.0.1", args.upstream_port, subdomain=f"{args.name_prefix}{i}"
        )
        a = Agent(
            AgentOptions(
                edge_host=host,
                edge_port=int(port),
                token=args.token,
                endpoints=(spec,),
                ca_file=Path(args.ca_file),
                server_name="localhost",
            ),
            status=quiet,
        )
        agents.append(a)
        tasks.append(asyncio.create_task(a.run()))

    def up() -> int:
        return sum(1 for a in agents if a.sessions_started_ok)

    try:
        opened = 0
        loop = asyncio.get_running_loop()
        for target in [int(x) for x in args.steps.split(",")]:
            deadline = loop.time() + args.timeout
            while opened < target:
                # At most --max-pending handshakes in flight: a burst the edge cannot
                # answer within its handshake timeout would only make agents retry.
                while opened - up() >= args.max_pending and loop.time() < deadline:
                    await asyncio.sleep(0.02)
                batch = min(50, target - opened)
                for _ in range(batch):
                    await start(opened)
                    opened += 1
                await asyncio.sleep(0.05)
            while up() < target or sum(1 for a in agents if a.connected) < target:
                dead = [t for t in tasks if t.done()]
                if dead:
                    exc = dead[0].exception()
                    say(f"error agent ended: {exc!r}")
                    return 1
                if loop.time() > deadline:
                    n = sum(1 for a in agents if a.connected)
                    say(f"error only {n}/{target} sessions up after {args.timeout:.0f} s")
                    return 1
                await asyncio.sleep(0.1)
            say(f"ready {target}")
            if not await wait_stdin():
                break
        return 0
    finally:
        for a in agents:
            a.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


class _Held(asyncio.Protocol):
    """One upstream connection the holder accepted: held, and what it is sent echoed."""

    def __init__(self, held: list[asyncio.Transport], rst: bool) -> None:
        self.held = held
        self.rst = rst
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        held: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self.transport = held
        if self.rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
        self.held.append(held)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


async def _probe(loop: asyncio.AbstractEventLoop, s: socket.socket, timeout: float) -> bool:
    """Send PROBE_BYTES random bytes on a visitor connection; True if they come back."""
    sent = os.urandom(PROBE_BYTES)
    got = b""
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_sendall(s, sent)
            while len(got) < len(sent):
                chunk = await loop.sock_recv(s, len(sent) - len(got))
                if not chunk:
                    return False
                got += chunk
    except (OSError, TimeoutError):
        return False
    return got == sent


async def streams(args: argparse.Namespace) -> int:
    held: list[asyncio.Transport] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Held(held, args.rst),
        args.holder_host,
        args.holder_port,
        backlog=4096,
        reuse_address=True,
    )
    say("holder listening")
    visitors: list[socket.socket] = []
    try:
        if args.wait_first and not await wait_stdin():
            return 0
        for target in [int(x) for x in args.steps.split(",")]:
            while len(visitors) < target:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    if args.rst:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
                    if args.source:
                        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                        s.bind((args.source, 0))
                    await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", args.port)), 10)
                except (OSError, TimeoutError) as e:
                    s.close()
                    say(f"error connect #{len(visitors)}: {e!r}")
                    return 1
                visitors.append(s)
                if len(visitors) % 200 == 0:
                    # Pace: let the edge accept and the holder catch up (accept-queue overflow
                    # would otherwise leave connections waiting on SYN-ACK retransmits).
                    pace = loop.time() + 10
                    while len(held) < len(visitors) - 200 and loop.time() < pace:
                        await asyncio.sleep(0.01)
            deadline = loop.time() + args.timeout
            while len(held) < target:
                if loop.time() > deadline:
                    say(f"error holder accepted {len(held)}/{target} after {args.timeout:.0f} s")
                    return 1
                await asyncio.sleep(0.05)
            sample = random.sample(visitors, min(args.probe, len(visitors)))
            ok = await asyncio.gather(*(_probe(loop, s, 10.0) for s in sample))
            say(f"ready {target} accepted {len(held)} probes {sum(ok)}/{len(sample)}")
            if not await wait_stdin():
                break
        return 0
    finally:
        for s in visitors:
            s.close()
        for w in held:
            w.close()
        server.close()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memload")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sessions")
    s.add_argument("--edge", required=True)
    s.add_argument("--token", required=True)
    s.add_argument("--ca-file", required=True)
    s.add_argument("--upstream-port", type=int, default=9)
    s.add_argument("--name-prefix", default="m")
    s.add_argument("--max-pending", type=int, default=200)
    s.add_argument("--steps", required=True)
    s.add_argument("--timeout", type=float, default=120)
    t = sub.add_parser("streams")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--holder-port", type=int, required=True)
    t.add_argument("--holder-host", default="127.0.0.1")
    t.add_argument("--source", default="", help="local address of the visitor connections")
    t.add_argument("--probe", type=int, default=0, help="visitors echo-checked per step")
    t.add_argument("--wait-first", action="store_true")
    t.add_argument("--rst", action="store_true")
    t.add_argument("--steps", required=True)
    t.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    _raise_nofile()
    import uvloop

    fn = sessions if args.cmd == "sessions" else streams
    return uvloop.run(fn(args))


if __name__ == "__main__":
    sys.exit(main())
