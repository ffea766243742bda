"""A PoP that answers at two addresses is one PoP to an agent's links.

An agent with ``--links 2`` is given three addresses: two of PoP 1 (its edge listens on
every address of its machine, and that machine has two) and one of PoP 2. PoP 2 is down
when the agent starts, so both links connect to PoP 1, one at each address. When PoP 2
comes up, the link beside the lower one moves there without cutting a stream
(relay/agent/link_process.py ``spread``, every 10 s): it knows it is beside link 0
because PoP 1's edge told both links its name (``AuthOk.pop``, protocol 2). An agent that
knew PoPs only by address took two addresses for two PoPs, stayed, and PoP 1's death
then cost both links a reconnect.

Each PoP and the agent's host is a namespace of its own (tests/netns.py); PoP 1's edge
listens for agents on 0.0.0.0 inside its namespace, which holds nothing but its two
addresses and loopback.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.e2e.procs import (
    RELAY,
    EchoServer,
    Proc,
    echoed_whole,
    free_port,
    free_port_range,
    payload,
)
from tests.e2e.test_cluster_in_namespaces import NsEdge
from tests.netns import Network, network  # noqa: F401

pytestmark = pytest.mark.timeout(180)

#: PoP 2 up → the next look of ``spread`` (at most 10 s), a probe, the drain of the
#: idle link, a reconnect; 10 s more for a loaded host.
MOVE_WITHIN = 10 + 10.0


class EveryAddressEdge(NsEdge):
    """An edge whose agent listener is on every address of its namespace."""

    @property
    def address(self) -> str:
        return f"0.0.0.0:{self.listen_port}"


def sessions(edge: NsEdge) -> int:
    with contextlib.suppress(OSError):
        return len(edge.worker_status()["sessions_list"])
    return -1


def test_a_link_beside_another_at_a_second_address_of_its_pop_moves_to_a_free_pop(
    network: Network,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = network.add("home")
    space1, space2 = network.add("pop1"), network.add("pop2")
    second = network.add_address(space1)  # PoP 1's other address
    listen_port = free_port()
    tcp_ports = free_port_range(10)  # the same on both: the agent asks for one of them
    port = tcp_ports[0] + 4
    data_dir = tmp_path / "shared"
    pop1 = EveryAddressEdge(space1, data_dir, listen_port=listen_port, ports=tcp_ports)
    pop2 = NsEdge(space2, data_dir, listen_port=listen_port, ports=tcp_ports)
    echo: EchoServer | None = None
    agent: Proc | None = None
    try:
        pop1.start()  # first: it makes the shared data directory
        _, token = pop1.token()
        with home.entered():
            echo = EchoServer()
        edges = ",".join(
            f"{host}:{listen_port}" for host in (space1.address, second, space2.address)
        )
        agent = Proc(
            home.command(
                [*RELAY, "tcp", f"127.0.0.1:{echo.port}", "--links", "2",
                 "--edge", edges, "--token", token, "--ca-file", str(pop1.ca_file),
                 "--server-name", "localhost", "--remote-port", str(port)]
            )
        )  # fmt: skip
        agent.wait_all("Forwarding", "link 1: session", timeout=30)
        assert sessions(pop1) == 2, agent.text()  # PoP 2 is down: both links on PoP 1
        said = [line for line in agent.text().splitlines() if "established" in line]
        assert any(f"{second}:{listen_port}" in line for line in said), said
        assert echoed_whole(space1.address, port, payload(1, 100_000), timeout=5), agent.text()

        pop2.start()
        started = time.monotonic()
        while time.monotonic() - started < MOVE_WITHIN:
            if sessions(pop2) == 1 and sessions(pop1) == 1:
                break
            time.sleep(0.2)
        assert (sessions(pop1), sessions(pop2)) == (1, 1), agent.text()
        assert "moving to another PoP" in agent.text(), agent.text()
        assert echoed_whole(space2.address, port, payload(2, 100_000), timeout=5), agent.text()
        assert echoed_whole(space1.address, port, payload(3, 100_000), timeout=5), agent.text()
    finally:
        if agent is not None:
            agent.stop()
        if echo is not None:
            echo.close()
        pop1.stop()
        pop2.stop()
