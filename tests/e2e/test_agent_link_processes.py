"""`relay tcp --links 3`: links 1 and 2 each run in a process of their own (so one agent
uses more than one core), started with the token on stdin, never on their command line;
a link process that is killed is started again and its link serves again; the agent's
stop ends every link process. On an edge of two workers the links take both workers,
whichever worker the kernel gives each connection first."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, free_port, payload
from tests.e2e.test_admin_listener import sample
from tests.e2e.test_edge_workers import worker_pids
from tests.e2e.test_relay_status import status_once

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def edge(edge_of_two_workers: Edge) -> Edge:
    return edge_of_two_workers


def link_processes(agent: Agent) -> list[int]:
    pid = agent.proc.proc.pid
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return sorted(
        p
        for p in children
        if b"relay.agent.link_process" in Path(f"/proc/{p}/cmdline").read_bytes()
    )


def sessions(edge: Edge) -> int:
    return sum(int(edge.worker_status(w)["sessions"]) for w in range(2))


def wait_for(what: str, done: object, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def echoes(port: int, count: int) -> None:
    for i in range(count):
        data = payload(i, 40_000)
        back = echo_roundtrip(port, data, timeout=10)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest(), i


def start_linked(
    edge: Edge, agents: list[Agent], token: str, upstream: int, links: int, *extra: str
) -> tuple[Agent, int]:
    """An agent with ``links`` links in front of ``upstream``, once every link has its
    session: (the agent, its endpoint's port)."""
    agent = Agent(edge, token, upstream, extra=["--links", str(links), *extra])
    agents.append(agent)
    port = agent.wait_bound()
    agent.proc.wait_all(*(f"link {i}: session" for i in range(1, links)))
    return agent, port


def test_links_run_in_processes_of_their_own(edge: Edge, agents: list[Agent]) -> None:
    echo = EchoServer()
    try:
        _, token = edge.token()
        agent, port = start_linked(edge, agents, token, echo.port, 3)
        wait_for("3 sessions at the edge", lambda: sessions(edge) == 3)
        first = link_processes(agent)
        assert len(first) == 2, first
        for pid in first:  # the token travels on stdin, not where `ps` shows it
            assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        echoes(port, 20)

        os.kill(first[0], signal.SIGKILL)
        agent.proc.wait_line("its process ended; starting it again", 15)
        wait_for("the link process started again", lambda: len(link_processes(agent)) == 2)
        assert first[0] not in link_processes(agent)
        wait_for("its link back at the edge", lambda: sessions(edge) == 3)
        echoes(port, 20)

        now = link_processes(agent)
        agent.proc.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(20) == 0, agent.proc.text()
        for pid in now:
            wait_for(
                f"link process {pid} to end", lambda pid=pid: not Path(f"/proc/{pid}").exists()
            )
    finally:
        echo.close()


def per_worker(edge: Edge) -> list[int]:
    return [int(edge.worker_status(w)["sessions"]) for w in range(2)]


def test_links_take_a_worker_each(edge: Edge, agents: list[Agent]) -> None:
    """Seven starts of an agent: with 2 links each worker holds one, with 3 links neither
    worker is left out. The kernel picks a worker per connection by a hash: without the
    placement all seven would pass about once in 85 runs ((1/2)^6 * 3/4)."""
    echo = EchoServer()
    try:
        _, token = edge.token()
        for start, links in enumerate((2, 3, 2, 2, 2, 2, 2)):
            agent, port = start_linked(edge, agents, token, echo.port, links)
            wait_for(f"{links} sessions at the edge", lambda n=links: sum(per_worker(edge)) == n)
            where = per_worker(edge)
            assert (where == [1, 1]) if links == 2 else (min(where) >= 1), (start, where)
            echoes(port, 1)
            assert agent.proc.stop() == 0, agent.proc.text()
            wait_for("the agent's sessions to end", lambda: sum(per_worker(edge)) == 0)
    finally:
        echo.close()


def failures(admin: int) -> tuple[float, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    total = sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "relay_agent_upstream_failures_total"
    )
    return total, text


def test_the_agents_metrics_speak_for_every_link(edge: Edge, agents: list[Agent]) -> None:
    """`--links 2 --admin-listen`: visitors whose upstream refuses them, served by the
    link on the worker that accepted each (about half by each link): the agent's
    /metrics counts every one and says both links are connected; its /status lists
    both links and every refusal, and `relay status` shows them."""
    _, token = edge.token()
    admin = free_port()
    nothing = free_port()  # nothing listens here: every visitor's dial fails
    _, port = start_linked(edge, agents, token, nothing, 2, "--admin-listen", f"127.0.0.1:{admin}")
    wait_for("a link on each worker", lambda: per_worker(edge) == [1, 1])
    visitors = 20
    for _ in range(visitors):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"hello")
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(100) == b""  # closed: the upstream refused
    wait_for("every refusal counted", lambda: failures(admin)[0] == visitors, within=10)
    _, text = failures(admin)
    assert sample(text, "relay_agent_links") == 2
    assert sample(text, "relay_agent_links_connected") == 2
    assert sample(text, "relay_agent_connected") == 1
    assert sample(text, "relay_endpoints", kind="tcp") == 1
    # /status: both links, and the refusals of both in its recent streams.
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as answer:
        status = json.loads(answer.read())
    assert [(r["link"], r["connected"]) for r in status["links"]] == [(0, True), (1, True)]
    assert status["links"][1]["worker"] in (0, 1)
    # The edge named its PoP to both links (protocol 2): its host name and --listen.
    pop_name = f"{socket.gethostname()}/{edge.address}"
    assert [r["pop_name"] for r in status["links"]] == [pop_name, pop_name], status["links"]
    assert len(status["recent"]) == visitors
    assert all(s["outcome"] != "ok" for s in status["recent"]), status["recent"]
    shown = status_once(admin)
    assert "LINK" in shown and shown.count(" connected ") == 2, shown
    assert shown.count(pop_name) == 2, shown
    # /readyz asks every link (relay/agent/links.py; the rule: the unit tests of links_ready).
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=10) as answer:
        assert (answer.status, answer.read()) == (200, b"ready\n")


def sessions_by_worker(edge: Edge) -> list[set[str]] | None:
    """The session ids each worker holds (None while a worker does not answer)."""
    try:
        return [{x["id"] for x in edge.worker_status(w)["sessions_list"]} for w in range(2)]
    except OSError:
        return None


def test_links_spread_again_after_link_0_comes_back(edge: Edge, agents: list[Agent]) -> None:
    """Link 0's worker is killed, three times: link 0 comes back on whichever worker
    answers first (often the one link 1 is on, the killed one being started again), the
    edge restarts link 1 gracefully, and link 1 places itself again: each worker holds
    one link again. Without the edge's restart, each round would end so about half the
    time."""
    echo = EchoServer()
    try:
        _, token = edge.token()
        agent, port = start_linked(edge, agents, token, echo.port, 2)
        wait_for("a link on each worker", lambda: per_worker(edge) == [1, 1])
        for round_ in range(3):
            leaders = re.findall(r"^session (s_\w+) established", agent.proc.text(), re.M)
            held = sessions_by_worker(edge)
            assert held is not None
            worker = next(w for w in range(2) if leaders[-1] in held[w])
            os.kill(worker_pids(edge)[worker], signal.SIGKILL)

            def spread(before: int = len(leaders)) -> bool:
                now = re.findall(r"^session (s_\w+) established", agent.proc.text(), re.M)
                held = sessions_by_worker(edge)
                return len(now) > before and held is not None and [len(h) for h in held] == [1, 1]

            wait_for(f"link 0 back and the links spread (round {round_})", spread, within=30)
            echoes(port, 2)
    finally:
        echo.close()


def alive(pid: int) -> bool:
    """The process runs (a zombie nobody reaped yet does not: it serves nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def upstream_ports_of(pid: int, upstream: int) -> set[int]:
    """The local ports of process ``pid``'s TCP connections to 127.0.0.1:``upstream``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and fields[2] == f"0100007F:{upstream:04X}":
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def upstream_connections(pid: int, upstream: int) -> int:
    """How many TCP connections process ``pid`` holds to 127.0.0.1:``upstream`` (each is
    a visitor's stream its link carries)."""
    return len(upstream_ports_of(pid, upstream))


def test_a_link_process_drains_and_ends_when_its_agent_is_killed(
    edge: Edge, agents: list[Agent]
) -> None:
    """The agent is SIGKILLed while its link process carries visitors: the link process
    sees its stdin end and its stdout fail, drains (GoAway: the edge sends it no new
    visitor) and exits once the grace period is over. Before, the status line of that
    drain raised BrokenPipeError on the dead agent's pipe, the stop was cut short before
    its GoAway, and the orphaned link served new visitors until the edge dropped it."""
    grace = 3.0
    echo = EchoServer()
    held: list[socket.socket] = []
    child = 0
    try:
        _, token = edge.token()
        agent, port = start_linked(
            edge, agents, token, echo.port, 2, "--grace-period", f"{grace:g}"
        )
        wait_for("2 sessions at the edge", lambda: sessions(edge) == 2)
        (child,) = link_processes(agent)
        # Visitors until the link process carries some (the edge gives each visitor to
        # the link on the worker the kernel picked: about half of them).
        for _ in range(40):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(conn)
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
            if len(held) >= 8 and upstream_connections(child, echo.port) >= 2:
                break
        assert upstream_connections(child, echo.port) >= 2, "the link process carries none"

        agent.proc.proc.kill()
        agent.proc.proc.wait(5)
        killed = time.monotonic()
        time.sleep(0.5)  # the GoAway's round trip
        # The link process drains (the held visitors keep it busy for the whole grace
        # period): new visitors are not its any more, and link 0 died with the agent, so
        # the edge has nobody to give them to.
        served = 0
        for i in range(6):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.sendall(b"y")
                    served += conn.recv(1) == b"y"
            assert alive(child) or time.monotonic() - killed > grace, i
        assert served == 0, f"{served} of 6 new visitors served by the orphaned link"
        wait_for("the link process to end", lambda: not alive(child), within=grace + 5)
        assert time.monotonic() - killed < grace + 5
        for conn in held:  # cut at the end of the grace period
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                assert conn.recv(100) == b""
        assert "Traceback" not in agent.proc.text(), agent.proc.text()
    finally:
        for conn in held:
            conn.close()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)  # the orphan a failed test leaves behind
        echo.close()


#: relay/agent/link_process.py MAX_YOUNG_DEATHS: this many link processes in a row that
#: die young end the agent.
YOUNG_DEATHS = 8
#: A sitecustomize.py, on the agent's PYTHONPATH in the crash test (no hook in relay
#: itself): every link process dies at its start, as after an upgrade that broke the
#: install, and the agent waits 10 times shorter between starts (the same schedule).
CRASHING_LINKS = """\
import os
import sys

if "relay.agent.link_process" in sys.orig_argv:
    sys.stderr.write("link process: a crash at start-up (the test's sitecustomize)\\n")
    sys.stderr.flush()
    os._exit(3)
if "relay.cli" in sys.orig_argv:
    import relay.agent.link_process as link_process

    link_process.RESTART_DELAY /= 10
    link_process.MAX_RESTART_DELAY /= 10
"""


def test_a_link_process_that_dies_at_its_start_ends_the_agent(
    edge: Edge, agents: list[Agent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every link process dies right after its start: it is started again after 1 s,
    then twice as long each time (here scaled down 10 times), up to 30 s, and the 8th
    death in a row ends the agent with RLY_404 and exit status 1. Before, it was started
    again every second, for ever."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASHING_LINKS)
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    echo = EchoServer()
    try:
        _, token = edge.token()
        agent = Agent(edge, token, echo.port, extra=["--links", "2"])
        agents.append(agent)
        agent.wait_bound()
        restarts: list[tuple[float, float]] = []  # (when it was said, the delay it says)
        for _ in range(YOUNG_DEATHS - 1):
            line = agent.proc.wait_line("link 1: its process ended; starting it again", 15)
            said = re.search(r"again in ([0-9.]+)s", line)
            assert said is not None, line
            restarts.append((time.monotonic(), float(said.group(1))))
        # relay/agent/link_process.py restart_delay, scaled: 1 s doubling up to 30 s.
        assert [d for _, d in restarts] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0], agent.proc.text()
        for (was, delay), (now, _) in itertools.pairwise(restarts):
            assert now - was >= delay - 0.05, (now - was, delay)  # it did wait
        line = agent.proc.wait_line("error RLY_404", 15)
        assert f"died within 10s of its start {YOUNG_DEATHS} times in a row" in line
        assert agent.proc.wait(15) == 1, agent.proc.text()
        assert agent.proc.text().count("a crash at start-up") == YOUNG_DEATHS
    finally:
        echo.close()
