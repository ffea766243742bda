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
        drain_timeout=2.0,
    )
    edge = Edge(config)
    await edge.start()
    assert edge.address is not None and edge.ca_file is not None
    click.echo(f"edge:    listening for agents on 127.0.0.1:{edge.address[1]} (TLS 1.2+)")
    click.echo(f"service: a small web server on 127.0.0.1:{service_port}")

    bound = asyncio.Event()

    def status(line: str) -> None:
        click.echo(f"agent:   {line}")
        if line.startswith("Forwarding"):
            bound.set()

    agent = Agent(
        AgentOptions(
            edge_host="127.0.0.1",
            edge_port=edge.address[1],
            token=token,
            endpoints=(EndpointSpec("tcp", "127.0.0.1", service_port),),
            ca_file=edge.ca_file,
            server_name="localhost",
        ),
        status=status,
    )
    agent_task = asyncio.ensure_future(agent.run())
    await asyncio.wait_for(bound.wait(), 15)
    endpoint = next(iter(agent.bound.values()))
    click.echo("")
    click.echo(f"public address: {endpoint.url}")
    click.echo(f"try it:         curl http://127.0.0.1:{endpoint.remote_port}/")
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
