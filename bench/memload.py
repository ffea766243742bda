"""Load generator for the memory scenarios, run as its own process by the harness.

    python -m bench.memload sessions --edge H:P --token T --ca-file CA --steps 100,200
        Opens idle agent sessions from ONE process with relay's own agent code (one
        `relay.agent.client.Agent` per session, each binding one http endpoint, all in one uvloop
        loop). After each step it prints `ready N` and waits for a line on stdin.

    python -m bench.memload streams --port P --holder-port H --steps 5000,10000
        Runs a holder upstream on 127.0.0.1:H that accepts connections and holds them, and opens
        idle visitor connections to 127.0.0.1:P (a relay TCP endpoint forwarding to H). After
        each step (when the holder has accepted as many connections as were opened) it prints
        `ready N`.

Both print `error ...` and exit non-zero on failure; both exit when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import sys
from pathlib import Path


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
        spec = EndpointSpec("http", "127.0.0.1", args.upstream_port, subdomain=f"m{i}")
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

    try:
        opened = 0
        for target in [int(x) for x in args.steps.split(",")]:
            while opened < target:
                batch = min(50, target - opened)
                for _ in range(batch):
                    await start(opened)
                    opened += 1
                await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.timeout
            while sum(1 for a in agents if a.sessions_started_ok) < target:
                dead = [t for t in tasks if t.done()]
                if dead:
                    exc = dead[0].exception()
                    say(f"error agent ended: {exc!r}")
                    return 1
                if loop.time() > deadline:
                    n = sum(1 for a in agents if a.sessions_started_ok)
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


async def streams(args: argparse.Namespace) -> int:
    held: list[asyncio.StreamWriter] = []
    accepted = 0

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        held.append(writer)

    server = await asyncio.start_server(
        hold, "127.0.0.1", args.holder_port, backlog=4096, reuse_address=True
    )
    say("holder listening")
    visitors: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    try:
        for target in [int(x) for x in args.steps.split(",")]:
            while len(visitors) < target:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
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
                    while accepted < len(visitors) - 200 and loop.time() < pace:
                        await asyncio.sleep(0.01)
            deadline = loop.time() + args.timeout
            while accepted < target:
                if loop.time() > deadline:
                    say(f"error holder accepted {accepted}/{target} after {args.timeout:.0f} s")
                    return 1
                await asyncio.sleep(0.05)
            say(f"ready {target} accepted {accepted}")
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
    s.add_argument("--steps", required=True)
    s.add_argument("--timeout", type=float, default=120)
    t = sub.add_parser("streams")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--holder-port", type=int, required=True)
    t.add_argument("--steps", required=True)
    t.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    _raise_nofile()
    import uvloop

    fn = sessions if args.cmd == "sessions" else streams
    return uvloop.run(fn(args))


if __name__ == "__main__":
    sys.exit(main())
