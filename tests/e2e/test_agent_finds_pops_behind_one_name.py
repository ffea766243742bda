"""An agent given one DNS name for its edge (``--edge pops.example:7000``) that resolves to
several PoPs: it connects to one of them, and when that PoP dies it reconnects to
another address of the same name and serves again within 5 s (hash-checked).

Each PoP is a namespace with its own address; the agent's machine is a namespace too,
and the name is resolved there from its own hosts file (``ip netns exec`` puts
``/etc/netns/<namespace>/hosts`` in place of ``/etc/hosts`` for the processes it starts;
the test writes that file and removes it). The two PoPs share one data directory (one
control plane: the same tokens, the same CA).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import (
    RELAY,
    EchoServer,
    Proc,
    echo_roundtrip,
    free_port,
    free_port_range,
    payload,
)
from tests.e2e.test_cluster_in_namespaces import NsEdge
from tests.netns import Netns, Network, network  # noqa: F401

pytestmark = pytest.mark.timeout(180)

NAME = "pops.relay.test"


@contextlib.contextmanager
def hosts_file(space: Netns, lines: list[str]) -> Iterator[None]:
    """``space``'s own /etc/hosts for what ``ip netns exec`` starts there."""
    folder = Path("/etc/netns") / space.name
    made_parent = not folder.parent.exists()
    folder.mkdir(parents=True, exist_ok=False)
    try:
        (folder / "hosts").write_text("\n".join(["127.0.0.1 localhost", *lines]) + "\n")
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                folder.parent.rmdir()


def holder(pops: list[NsEdge]) -> NsEdge | None:
    """The PoP that lists a live agent session now (None: none yet)."""
    for edge in pops:
        with contextlib.suppress(OSError):
            if edge.worker_status()["sessions_list"]:
                return edge
    return None


def test_an_agent_reaches_another_address_of_its_edge_name_when_one_dies(
    network: Network,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = network.add("home")
    spaces = [network.add("pop1"), network.add("pop2")]
    data_dir = tmp_path / "shared"
    listen_port = free_port()
    tcp_ports = free_port_range(10)  # the same on both: the agent asks for one of them
    pops = [NsEdge(s, data_dir, listen_port=listen_port, ports=tcp_ports) for s in spaces]
    port = tcp_ports[0] + 3
    echo: EchoServer | None = None
    agent: Proc | None = None
    try:
        for edge in pops:
            edge.start()  # one after the other: the first makes the shared data directory
        with home.entered():
            echo = EchoServer()
        _, token = pops[0].token()
        entries = [f"{s.address} {NAME}" for s in spaces]
        with hosts_file(home, entries):
            agent = Proc(
                home.command(
                    [*RELAY, "tcp", f"127.0.0.1:{echo.port}",
                     "--edge", f"{NAME}:{listen_port}", "--token", token,
                     "--ca-file", str(pops[0].ca_file), "--server-name", "localhost",
                     "--remote-port", str(port)]
                )
            )  # fmt: skip
            agent.wait_line("Forwarding", timeout=30)
            first = holder(pops)
            assert first is not None, agent.text()
            data = payload(1, 200_000)
            got = echo_roundtrip(port, data, address=first.host)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

            other = pops[1 - pops.index(first)]
            assert first.proc is not None
            first.proc.kill()  # SIGKILL by pid: the PoP dies without a word
            killed = time.monotonic()
            served = None
            while time.monotonic() - killed < 10 and served is None:
                if holder([other]) is other:
                    data = payload(2, 200_000)
                    with contextlib.suppress(OSError):
                        got = echo_roundtrip(port, data, address=other.host, timeout=5)
                        if hashlib.sha256(got).digest() == hashlib.sha256(data).digest():
                            served = time.monotonic() - killed
                time.sleep(0.1)
            assert served is not None, agent.text()
            assert served < 5.0, (served, agent.text())
            # It said where it went: first one address of the name, then the other.
            established = [ln for ln in agent.text().splitlines() if "established" in ln]
            assert f"{first.host}:{listen_port}" in established[0], established
            assert f"{other.host}:{listen_port}" in established[-1], established
    finally:
        if agent is not None:
            agent.stop()
        if echo is not None:
            echo.close()
        for edge in pops:
            edge.stop()
