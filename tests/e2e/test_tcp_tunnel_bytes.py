"""Bytes through a TCP tunnel arrive whole and in order, checked by hash."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import threading
import time
from typing import Any

import pytest

from tests.e2e.procs import Agent, EchoServer, Edge, connect, echo_roundtrip, payload


def start_agent(edge: Edge, echo: EchoServer, agents: list[Agent]) -> int:
    _, token = edge.token()
    agent = Agent(edge, token, echo.port)
    agents.append(agent)
    return agent.wait_bound()


def start_sender(
    sock: socket.socket,
    total: int,
    block: bytes,
    sent_hash: Any,
    errors: list[BaseException],
) -> threading.Thread:
    """Send ``total`` bytes in blocks, then half-close; a thread, started. Each block starts
    with its index, so a dropped or repeated block changes the hash."""

    def send() -> None:
        try:
            for i in range(total // len(block)):
                chunk = i.to_bytes(8, "big") + block[8:]
                sent_hash.update(chunk)
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_gib_on_one_stream_arrives_intact(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    port = start_agent(edge, echo, agents)
    total = 1 << 30
    block = payload(1, 1 << 20)
    sent_hash = hashlib.sha256()
    got_hash = hashlib.sha256()
    received = 0
    with connect(port, timeout=120) as sock:
        errors: list[BaseException] = []
        sender = start_sender(sock, total, block, sent_hash, errors)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += len(data)
            got_hash.update(data)
        sender.join(120)
    assert not errors
    assert received == total
    assert got_hash.hexdigest() == sent_hash.hexdigest()


@pytest.mark.timeout(180)
def test_two_hundred_concurrent_streams_each_get_their_bytes(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    port = start_agent(edge, echo, agents)

    async def one(i: int) -> tuple[str, str]:
        data = payload(1000 + i, 64 * 1024 + i * 997)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(-1), 120)
        writer.close()
        return hashlib.sha256(data).hexdigest(), hashlib.sha256(echoed).hexdigest()

    async def main() -> list[tuple[str, str]]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(main())
    assert len(results) == 200
    mismatched = [i for i, (sent, got) in enumerate(results) if sent != got]
    assert mismatched == []
    assert echo.connections == 200


def test_visitor_half_close_still_receives_the_rest(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    port = start_agent(edge, echo, agents)
    data = payload(7, 3 * 1024 * 1024 + 17)  # more than one window
    echoed = echo_roundtrip(port, data, half_close=True)
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(180)
def test_a_visitor_reading_in_bursts_gets_every_byte_in_order(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    """Stop-and-go reading fills the visitor's socket: deliveries switch between sending
    straight from the link's buffer and queueing in the transport, many times over; the
    order of bytes must not notice (and the same on the agent's upstream side)."""
    port = start_agent(edge, echo, agents)
    total = 64 << 20
    block = payload(7, 256 * 1024)
    sent_hash = hashlib.sha256()
    got_hash = hashlib.sha256()
    received = 0
    pauses = 0
    with connect(port, timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        errors: list[BaseException] = []
        sender = start_sender(sock, total, block, sent_hash, errors)
        next_pause = 1 << 20
        while True:
            data = sock.recv(48 * 1024)
            if not data:
                break
            received += len(data)
            got_hash.update(data)
            if received >= next_pause and pauses < 40:
                pauses += 1
                next_pause += 1536 * 1024
                time.sleep(0.05)  # let every buffer on the way fill up
        sender.join(60)
    assert not errors
    assert pauses == 40
    assert received == total
    assert got_hash.hexdigest() == sent_hash.hexdigest()


@pytest.mark.timeout(120)
def test_a_burst_of_visitors_while_the_agent_is_busy_all_reach_the_upstream(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    """400 visitors arrive while the agent's process is not running (SIGSTOP: a busy
    machine, compressed). When it runs again it reads all 400 stream opens at once, more
    than the accept backlog of 256; every one must still be served, not reset."""
    port = start_agent(edge, echo, agents)
    agent_pid = agents[-1].proc.pid
    count = 400

    async def main() -> list[tuple[bytes, bytes]]:
        conns = []
        os.kill(agent_pid, signal.SIGSTOP)
        try:
            for i in range(count):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                sent = i.to_bytes(4, "big") + payload(i, 60)
                writer.write(sent)
                writer.write_eof()
                conns.append((reader, writer, sent))
            await asyncio.sleep(0.5)  # the edge frames every open onto the link
        finally:
            os.kill(agent_pid, signal.SIGCONT)
        results = []
        for reader, writer, sent in conns:
            echoed = await asyncio.wait_for(reader.read(-1), 60)
            writer.close()
            results.append((sent, echoed))
        return results

    results = asyncio.run(main())
    lost = [i for i, (sent, echoed) in enumerate(results) if sent != echoed]
    assert lost == [], f"{len(lost)} of {count} visitors did not get their bytes back"
    assert echo.connections == count
