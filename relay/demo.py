"""``relay demo``: an edge, an agent and a tiny web service on loopback, in one process.

It is README's first command: proof on a fresh machine that the pieces fit together.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import click

from relay.agent.client import Agent, AgentOptions, EndpointSpec
from relay.config import EdgeConfig
from relay.control.tokens import load_or_create_pepper
from relay.edge.ports import PortRange
from relay.edge.server import Edge, open_store, prepare_data_dir

BODY = b"hello from a service behind relay\n"


async def _hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers any HTTP request with a short text; enough for curl."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                + f"content-length: {len(BODY)}\r\n\r\n".encode()
                + BODY
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def run_demo(data_dir: Path) -> None:
    prepare_data_dir(data_dir)
    store = open_store(data_dir)
    _, token = store.create_token(description="relay demo", pepper=load_or_create_pepper(data_dir))
    store.close()
    service = await asyncio.start_server(_hello, "127.0.0.1", 0)
    service_port = service.sockets[0].getsockname()[1]
    config = EdgeConfig(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        tcp_ports=PortRange(20000, 20999),
        tcp_bind="127.0.0.1",
        public_host="127.0.0.1",
        http_listen="127.0.0.1:0",
        https_listen="127.0.0.1:0",
        base_domain="localhost",
        drain_timeout=2.0,
        admin_listen="127.0.0.1:0",
    )
    edge = Edge(config)
    await edge.start()
    assert edge.address is not None and edge.ca_file is not None
    click.echo(f"edge:    listening for agents on 127.0.0.1:{edge.address[1]} (TLS 1.2+)")
    click.echo(f"service: a small web server on 127.0.0.1:{service_port}")

    endpoints = (
        EndpointSpec("tcp", "127.0.0.1", service_port),
        EndpointSpec("http", "127.0.0.1", service_port, subdomain="demo"),
        EndpointSpec("https", "127.0.0.1", service_port, subdomain="demo"),
    )
    forwarding: list[str] = []
    bound = asyncio.Event()

    def status(line: str) -> None:
        click.echo(f"agent:   {line}")
        if line.startswith("Forwarding"):
            forwarding.append(line)
            if len(forwarding) == len(endpoints):
                bound.set()

    agent = Agent(
        AgentOptions(
            edge_host="127.0.0.1",
            edge_port=edge.address[1],
            token=token,
            endpoints=endpoints,
            ca_file=edge.ca_file,
            server_name="localhost",
        ),
        status=status,
    )
    agent_task = asyncio.ensure_future(agent.run())
    await asyncio.wait_for(bound.wait(), 15)
    by_kind = {e.spec.kind: e for e in agent.bound.values()}
    tcp_port = by_kind["tcp"].remote_port
    click.echo("")
    click.echo("public addresses (curl resolves *.localhost to this machine):")
    for kind in ("tcp", "http", "https"):
        click.echo(f"  {by_kind[kind].url}")
    click.echo("try them:")
    click.echo(f"  curl http://127.0.0.1:{tcp_port}/")
    click.echo(f"  curl {by_kind['http'].url}/")
    click.echo(f"  curl --cacert {edge.ca_file} {by_kind['https'].url}/")
    click.echo("stop with Ctrl-C")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    agent.stop()
    await edge.stop()
    agent_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await agent_task
    service.close()
