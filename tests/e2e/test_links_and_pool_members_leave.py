"""What happens to an endpoint's visitors when one of its members goes (relay/edge/members.py).

* A link PROCESS of ``--links K`` is SIGKILLed while visitors are served: the kernel closes
  its socket, so the edge hears of it at once (FIN or RST), and from the moment the process
  is dead no new visitor fails — every one of 50 back-to-back visitors, and a visitor loop
  that ran through the kill, gets its body whole (SHA-256). The streams that were on the
  killed link are cut (and told so at once, not left hanging); every other stream in
  flight finishes whole. On one edge, and on an edge of two workers where the killed link
  was the only member on its worker (its visitors are then handed to the other worker).
* A pool member that leaves gracefully — the API's restart of its session, the edge's way
  of letting a session go without cutting a stream — gets no new visitor from that moment,
  while its slow download finishes whole; then it comes back and round robin resumes. So
  does a member whose agent is stopped (SIGTERM): it drains, and exits once its
  download is done.
* A pool member whose link is saturated (its agent stopped with SIGSTOP, so it reads
  nothing and the edge's writes to it pile up until its transport pauses writing) is
  skipped: every new visitor reaches the other member; once it reads again the uploads
  that waited for it arrive whole and round robin resumes.

Members are told apart by their origins' ``x-member`` header, and which link served a
stream by the port its upstream connection came from (the link process's own sockets).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.api_calls import api_key, call
from tests.e2e.link_tap import LinkTap
from tests.e2e.origin import blob
from tests.e2e.procs import Agent, Edge
from tests.e2e.test_agent_link_processes import link_processes, upstream_ports_of
from tests.ports import free_port

pytestmark = pytest.mark.timeout(240)

#: A slow download: this many bytes, in CHUNK pieces spread over SLOW_SECONDS.
SLOW_SIZE = 384 * 1024
CHUNK = 8 * 1024
#: Long enough to outlast everything a test does while it is in flight, on a busy machine.
SLOW_SECONDS = 8.0
#: The body of an ordinary visitor: some KiB, checked by its SHA-256.
BODY_SIZE = 48 * 1024


# --- an origin that says which member it is behind -----------------------------------------


class MemberOrigin:
    """An HTTP/1.1 origin on 127.0.0.1 (a port from tests/ports.py), in threads of the test:

    GET  /blob/N                 -> N deterministic bytes (tests/e2e/origin.py ``blob``)
    GET  /slow/N/SECONDS/ID      -> the same bytes, dripped over SECONDS; ``peers[ID]`` is
                                    the port the agent's upstream connection came from
    POST /sink/ID                -> the body's SHA-256 (hex); ``asked`` has ID from its head on
    Every answer names the origin in ``x-member``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peers: dict[str, int] = {}
        self.asked: set[str] = set()
        self.stopping = threading.Event()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _head(self, size: int) -> None:
                self.send_response(200)
                self.send_header("x-member", origin.name)
                self.send_header("content-length", str(size))
                self.end_headers()

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[0] == "blob":
                    data = blob(int(parts[1]))
                    self._head(len(data))
                    self.wfile.write(data)
                elif parts[0] == "slow":
                    data, seconds = blob(int(parts[1])), float(parts[2])
                    origin.peers[parts[3]] = int(self.client_address[1])
                    self._head(len(data))
                    pieces = range(0, len(data), CHUNK)
                    with contextlib.suppress(OSError):  # the agent went: nothing to send to
                        for i in pieces:
                            if origin.stopping.is_set():
                                return
                            self.wfile.write(data[i : i + CHUNK])
                            time.sleep(seconds / len(pieces))
                else:
                    self._head(len(origin.name))
                    self.wfile.write(origin.name.encode())

            def do_POST(self) -> None:
                origin.asked.add(self.path.rsplit("/", 1)[1])
                body = self.rfile.read(int(self.headers["content-length"]))
                digest = hashlib.sha256(body).hexdigest().encode()
                self._head(len(digest))
                self.wfile.write(digest)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


# --- visitors ----------------------------------------------------------------------------------


class Visit:
    """One request through the edge on a connection of its own (``connection: close``):
    its status and ``x-member`` once the head is in, its whole body (content-length) or the
    error that cut it, and when it started and ended (time.monotonic())."""

    def __init__(
        self, port: int, host: str, path: str, body: bytes | None = None, timeout: float = 30.0
    ) -> None:
        method = "GET" if body is None else "POST"
        length = b"" if body is None else b"content-length: %d\r\n" % len(body)
        self.request = (
            f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n".encode()
            + length
            + b"\r\n"
            + (body or b"")
        )
        self.port = port
        self.timeout = timeout
        self.status = 0
        self.member = ""
        self.body = b""
        self.error: BaseException | None = None
        self.started = 0.0
        self.ended = 0.0
        self.head = threading.Event()
        self.done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Visit:
        """In a thread of its own."""
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def run(self) -> Visit:
        self.started = time.monotonic()
        deadline = self.started + self.timeout
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock:
                sock.sendall(self.request)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += self._recv(sock, deadline, "before its head")
                head, _, rest = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                self.status = int(lines[0].split()[1])
                fields = {
                    k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)
                }
                self.member = fields.get("x-member", "")
                self.head.set()
                length = int(fields.get("content-length", "0"))
                while len(rest) < length:
                    rest += self._recv(sock, deadline, f"after {len(rest)} of {length} bytes")
                self.body = rest
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self.done.set()
        return self

    @staticmethod
    def _recv(sock: socket.socket, deadline: float, where: str) -> bytes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no end {where}")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed {where}")
        return chunk

    def wait_head(self, timeout: float) -> bool:
        """Until its head is in (True) or it ended or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.done.is_set():
            if self.head.wait(0.01):
                return True
        return self.head.is_set()

    def whole(self, size: int) -> bool:
        """A 200 with every byte of a ``size`` blob."""
        return (
            self.error is None
            and self.status == 200
            and hashlib.sha256(self.body).digest() == hashlib.sha256(blob(size)).digest()
        )

    @property
    def code(self) -> str:
        """The RLY_ code of an error page, for a failure's message ("" for none)."""
        found = re.search(rb"RLY_[0-9]{3}", self.body) if self.status != 200 else None
        return found.group().decode() if found else ""

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def fetch(port: int, host: str, size: int = BODY_SIZE, timeout: float = 20.0) -> Visit:
    return Visit(port, host, f"/blob/{size}", timeout=timeout).run()


class VisitorLoop:
    """Back-to-back visitors (one at a time, each hash-checked), in a thread, until
    stopped (at most ``limit`` of them)."""

    def __init__(self, port: int, host: str, limit: int = 3000) -> None:
        self.visits: list[Visit] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, host, limit), daemon=True)
        self._thread.start()

    def _run(self, port: int, host: str, limit: int) -> None:
        for _ in range(limit):
            if self._stop.is_set():
                return
            self.visits.append(fetch(port, host, timeout=15))

    def stop(self) -> list[Visit]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.visits


# --- processes, sessions, sockets ----------------------------------------------------------


def web(
    edge: Edge,
    agents: list[Agent],
    token: str,
    upstream: int,
    name: str,
    *flags: str,
    via: str | None = None,
) -> Agent:
    agent = Agent(
        edge,
        token,
        upstream,
        kind="http",
        extra=["--no-https", "--subdomain", name, *flags],
        via=via,
    )
    agents.append(agent)
    agent.wait_bound()
    return agent


def assert_round_robin(edge: Edge, host: str) -> None:
    """Ten visitors: five to member a, five to member b."""
    seen = Counter(fetch(edge.http_port, host).member for _ in range(10))
    assert seen == Counter({"a": 5, "b": 5}), seen


def slow_download_from_a(edge: Edge, host: str) -> Visit:
    """A slow download served by member a of two (a, then b, take turns), under way."""
    for _ in range(3):  # b served the last one: the next visitor is a's
        if fetch(edge.http_port, host).member == "b":
            break
    download = Visit(edge.http_port, host, f"/slow/{SLOW_SIZE}/{SLOW_SECONDS}/0").start()
    assert download.wait_head(10), download.error
    assert (download.status, download.member) == (200, "a")
    return download


def wait_for(what: str, done: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def serving_sessions(edge: Edge) -> list[int]:
    """Per worker: its sessions that hold an endpoint."""
    counts = []
    for worker in range(edge.workers):
        try:
            listed = edge.worker_status(worker)["sessions_list"]
        except OSError:
            return []
        counts.append(sum(1 for s in listed if s["endpoints"] >= 1))
    return counts


def warnings_of(edge: Edge) -> str:
    """The edge's warning and error lines: why a visitor failed, for a failure's message."""
    text = edge.proc.text() if edge.proc is not None else ""
    return "\n".join(line for line in text.splitlines() if " WARNING " in line or " ERROR " in line)


def draining_sessions(edge: Edge) -> list[int]:
    """Per worker: its sessions that take no new visitor (they drain)."""
    return [
        sum(1 for s in edge.worker_status(w)["sessions_list"] if s["draining"])
        for w in range(edge.workers)
    ]


def handed_off(edge: Edge) -> int:
    """HTTP visitors the workers handed to another worker, so far."""
    return sum(int(edge.worker_status(w)["workers"]["handed_off"]["http"]) for w in range(2))


def is_dead(pid: int) -> bool:
    """Every thread of ``pid`` has exited, so the kernel has closed its sockets (the last
    thread to go drops the descriptors). Not its main thread's zombie state alone: that
    comes while other threads still hold them, milliseconds before."""
    try:
        return not os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True


def session_of(agent: Agent) -> str:
    found = re.findall(r"session (s_\w+) established", agent.proc.text())
    assert found, agent.proc.text()
    return str(found[-1])


# --- (a) a link's process is killed ---------------------------------------------------------


def _kill_a_link_process_while_serving(edge: Edge, agents: list[Agent], links: int) -> None:
    origin = MemberOrigin("links")
    transfers: list[Visit] = []
    loop: VisitorLoop | None = None
    try:
        _, token = edge.token()
        agent = web(edge, agents, token, origin.port, "links", "--links", str(links))
        host = "links.relay.localhost"
        wait_for(
            "every link serving, one per worker",
            lambda: serving_sessions(edge) == ([links] if edge.workers == 1 else [1] * links),
        )
        assert all(fetch(edge.http_port, host).whole(BODY_SIZE) for _ in range(6))
        victim = link_processes(agent)[0]

        # Slow downloads in flight, until at least two are on the victim's link and two on
        # others (one edge: round robin, so 2K starts; two workers: the kernel's pick of
        # a worker per visitor — all 16 on one side comes once in 2^15).
        on_victim: list[Visit] = []
        elsewhere: list[Visit] = []
        for i in range(16):
            transfer = Visit(edge.http_port, host, f"/slow/{SLOW_SIZE}/{SLOW_SECONDS}/{i}")
            transfers.append(transfer.start())
            assert transfer.wait_head(10), transfer.error
            assert (transfer.status, transfer.member) == (200, "links"), transfer.status
            wait_for("the origin saw it", lambda: str(len(transfers) - 1) in origin.peers, 5)
            mine = origin.peers[str(i)] in upstream_ports_of(victim, origin.port)
            (on_victim if mine else elsewhere).append(transfer)
            if len(on_victim) >= 2 and len(elsewhere) >= 2:
                break
        assert len(on_victim) >= 2 and len(elsewhere) >= 2, (len(on_victim), len(elsewhere))

        handed_before = handed_off(edge) if edge.workers > 1 else 0
        loop = VisitorLoop(edge.http_port, host)
        time.sleep(0.5)  # visitors being served when the link goes
        os.kill(victim, signal.SIGKILL)
        wait_for("the link process to die", lambda: is_dead(victim), within=5)
        dead_at = time.monotonic()

        # From the moment its process is dead, no new visitor fails.
        after = [fetch(edge.http_port, host) for _ in range(50)]
        bad = [
            (n, v.status, v.error, round(v.started - dead_at, 4), v.body[:400])
            for n, v in enumerate(after)
            if not v.whole(BODY_SIZE)
        ]
        assert bad == []
        served = loop.stop()
        if edge.workers > 1:  # the killed link's worker handed its visitors over
            assert handed_off(edge) > handed_before
        late = [v for v in served if v.started >= dead_at]
        assert len(late) >= 5, len(late)
        assert [(v.status, v.error) for v in late if not v.whole(BODY_SIZE)] == []
        early = [v for v in served if v.started < dead_at]
        assert any(v.whole(BODY_SIZE) for v in early), "no visitor was served before the kill"

        # The killed link's streams are cut, and the visitor told at once; every other
        # stream in flight finishes whole.
        for transfer in transfers:
            transfer.join(SLOW_SECONDS + 20)
        for transfer in on_victim:
            assert transfer.error is not None, (
                "a stream outlived its link's process",
                transfers.index(transfer),
                origin.peers,
                [transfers.index(t) for t in on_victim],
            )
            assert transfer.ended - dead_at < 5.0, transfer.ended - dead_at
        for transfer in elsewhere:
            assert transfer.whole(SLOW_SIZE), (transfer.status, transfer.error)
            assert transfer.ended > dead_at, "it did not live through the kill"

        # The agent starts the process again; its link serves again.
        agent.proc.wait_line("its process ended; starting it again", 15)
        wait_for(
            "the link back at the edge",
            lambda: serving_sessions(edge) == ([links] if edge.workers == 1 else [1] * links),
            within=40,
        )
        assert victim not in link_processes(agent)
        assert all(fetch(edge.http_port, host).whole(BODY_SIZE) for _ in range(10))
    finally:
        if loop is not None:
            loop.stop()
        origin.close()


def test_a_killed_link_process_cuts_only_its_streams_and_no_new_visitor_fails(
    edge: Edge, agents: list[Agent]
) -> None:
    _kill_a_link_process_while_serving(edge, agents, links=3)


def test_a_killed_link_process_alone_on_its_worker_hands_new_visitors_over_at_once(
    edge_of_two_workers: Edge, agents: list[Agent]
) -> None:
    """``--links 2`` on two workers, one link each: killing link 1's process leaves its
    worker no member; the visitors that worker accepts go to the other one at once."""
    _kill_a_link_process_while_serving(edge_of_two_workers, agents, links=2)


# --- (b) a pool member leaves gracefully ---------------------------------------------------


def test_a_leaving_pool_member_gets_no_new_visitor_and_its_slow_download_finishes(
    edge: Edge, agents: list[Agent]
) -> None:
    admin = api_key(edge, ["sessions:read", "sessions:write"])
    a, b = MemberOrigin("a"), MemberOrigin("b")
    try:
        _, token = edge.token()
        first = web(edge, agents, token, a.port, "pool", "--pool")
        web(edge, agents, token, b.port, "pool", "--pool")
        host = "pool.relay.localhost"
        assert_round_robin(edge, host)  # both serve
        download = slow_download_from_a(edge, host)

        # a leaves: the edge lets its session go without cutting a stream.
        answer = call(edge, "POST", f"/api/v1/tunnel_sessions/{session_of(first)}/restart", admin)
        assert answer.status in (200, 202, 204), answer.body
        after = [fetch(edge.http_port, host) for _ in range(30)]
        assert not download.done.is_set(), "the download ended before the visitors: too fast"
        assert [(v.member, v.status, v.error) for v in after if not v.whole(BODY_SIZE)] == []
        assert Counter(v.member for v in after) == Counter({"b": 30})

        download.join(SLOW_SECONDS + 20)
        assert download.whole(SLOW_SIZE), (download.status, download.error, len(download.body))

        # Its streams done, its link closes; the agent comes back and takes its turns again.
        first.proc.wait_line("reconnected", 20)
        assert_round_robin(edge, host)
    finally:
        a.close()
        b.close()


def test_a_pool_member_stopped_with_sigterm_lets_its_slow_download_finish(
    edge: Edge, agents: list[Agent]
) -> None:
    """SIGTERM to a member's agent: it drains. The edge sends it no new visitor from that
    moment (its GoAway), its slow download finishes whole, and the agent exits 0 by
    itself once it is done; an idle member stopped the same way exits at once."""
    a, b = MemberOrigin("a"), MemberOrigin("b")
    try:
        _, token = edge.token()
        first = web(edge, agents, token, a.port, "stop", "--pool")
        second = web(edge, agents, token, b.port, "stop", "--pool")
        host = "stop.relay.localhost"
        download = slow_download_from_a(edge, host)
        os.kill(first.proc.proc.pid, signal.SIGTERM)
        first.proc.wait_line("draining 1 live stream(s)", 5)
        after = [fetch(edge.http_port, host) for _ in range(20)]
        assert not download.done.is_set(), "the download ended before the visitors: too fast"
        assert [(v.member, v.status, v.error) for v in after if not v.whole(BODY_SIZE)] == []
        assert Counter(v.member for v in after) == Counter({"b": 20})
        assert first.proc.proc.poll() is None  # still draining
        download.join(SLOW_SECONDS + 20)
        assert download.whole(SLOW_SIZE), (download.status, download.error, len(download.body))
        assert first.proc.wait(10) == 0, first.proc.text()
        # b, idle: SIGTERM stops it at once.
        os.kill(second.proc.proc.pid, signal.SIGTERM)
        started = time.monotonic()
        assert second.proc.wait(10) == 0, second.proc.text()
        assert time.monotonic() - started < 2.0
        assert "draining" not in second.proc.text()
    finally:
        a.close()
        b.close()


def test_a_draining_pool_member_gets_no_visitor_handed_from_another_worker(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """Three workers, two pool members on two of them: the third holds none and hands
    every visitor it accepts over. Member a drains (SIGTERM, a slow download live): from
    that moment the workers hand it none, so no visitor fails while it drains, and the
    worker it is on hands its own visitors to b too."""
    edge = Edge(tmp_path / "edge", workers=3).start()
    a, b = MemberOrigin("a"), MemberOrigin("b")
    try:
        _, token = edge.token()
        host = "drain3.relay.localhost"
        first = web(edge, agents, token, a.port, "drain3", "--pool")
        # The kernel picks a worker per link: b tries again until it is on another one
        # than a (each try a 2 in 3 chance; 20 misses in a row: once in 3^20).
        for _ in range(20):
            second = web(edge, agents, token, b.port, "drain3", "--pool")
            if sorted(serving_sessions(edge)) == [0, 1, 1]:
                break
            second.stop()
            agents.remove(second)
            wait_for("b's session gone", lambda: sum(serving_sessions(edge)) == 1)
        else:
            pytest.fail("the two members never landed on two workers in 20 tries")
        # Each serves: a worker's visitors go to its own member, the third's in turn.
        wait_for(
            "both members serving",
            lambda: {fetch(edge.http_port, host).member for _ in range(12)} == {"a", "b"},
        )
        for _ in range(40):  # the kernel's pick of a worker decides who serves it
            download = Visit(edge.http_port, host, f"/slow/{SLOW_SIZE}/{SLOW_SECONDS}/0").start()
            assert download.wait_head(10), download.error
            if download.member == "a":
                break
            download.join(SLOW_SECONDS + 10)
        assert download.member == "a"
        handed_before = sum(
            int(edge.worker_status(w)["workers"]["handed_off"]["http"]) for w in range(3)
        )

        os.kill(first.proc.proc.pid, signal.SIGTERM)
        first.proc.wait_line("draining 1 live stream(s)", 5)
        # Until a's worker has read the GoAway, it routes visitors to a, which serves them
        # (they were sent before it knew): not what this test is about.
        wait_for("a's worker knows a drains", lambda: any(draining_sessions(edge)))
        # At once: a visitor handed to a's worker before the supervisor has told the
        # others of the drain is handed on to b's worker (Handoff.again).
        after = [fetch(edge.http_port, host) for _ in range(60)]
        assert not download.done.is_set(), "the download ended before the visitors: too fast"
        failed = [(v.member, v.status, v.code, v.error) for v in after if not v.whole(BODY_SIZE)]
        assert failed == [], warnings_of(edge)
        assert Counter(v.member for v in after) == Counter({"b": 60})
        handed = sum(int(edge.worker_status(w)["workers"]["handed_off"]["http"]) for w in range(3))
        assert handed > handed_before  # visitors did cross workers meanwhile
        download.join(SLOW_SECONDS + 20)
        assert download.whole(SLOW_SIZE), (download.status, download.error, len(download.body))
        assert first.proc.wait(10) == 0, first.proc.text()
    finally:
        a.close()
        b.close()
        for agent in list(agents):
            agent.stop()
        edge.stop()


def test_a_second_signal_ends_the_drain_at_once(edge: Edge, agents: list[Agent]) -> None:
    """Ctrl-C twice (here SIGINT, then SIGTERM): the first drains, the second cuts the
    live stream and exits."""
    a = MemberOrigin("a")
    try:
        _, token = edge.token()
        agent = web(edge, agents, token, a.port, "twice")
        download = Visit(
            edge.http_port, "twice.relay.localhost", f"/slow/{SLOW_SIZE}/{SLOW_SECONDS}/0"
        ).start()
        assert download.wait_head(10), download.error
        os.kill(agent.proc.proc.pid, signal.SIGINT)
        agent.proc.wait_line("draining 1 live stream(s)", 5)
        os.kill(agent.proc.proc.pid, signal.SIGTERM)
        started = time.monotonic()
        assert agent.proc.wait(10) == 0, agent.proc.text()
        assert time.monotonic() - started < 2.0
        download.join(20)
        assert not download.whole(SLOW_SIZE)  # cut: the second signal did not wait
    finally:
        a.close()


def test_the_drain_ends_when_its_grace_period_does(edge: Edge, agents: list[Agent]) -> None:
    a = MemberOrigin("a")
    try:
        _, token = edge.token()
        agent = web(edge, agents, token, a.port, "grace", "--grace-period", "1")
        download = Visit(
            edge.http_port, "grace.relay.localhost", f"/slow/{SLOW_SIZE}/{SLOW_SECONDS}/0"
        ).start()
        assert download.wait_head(10), download.error
        os.kill(agent.proc.proc.pid, signal.SIGTERM)
        started = time.monotonic()
        assert agent.proc.wait(10) == 0, agent.proc.text()
        took = time.monotonic() - started
        assert 0.9 < took < 3.0, took
        assert "grace period over: closing 1 stream(s)" in agent.proc.text()
        download.join(20)
        assert not download.whole(SLOW_SIZE)
    finally:
        a.close()


@pytest.mark.parametrize("whom", ["the agent", "every process of the agent"])
def test_an_agent_with_links_drains_every_link_on_sigterm(
    edge: Edge, agents: list[Agent], whom: str
) -> None:
    """``--links 2``: slow downloads on both links, then SIGTERM to the agent alone (its
    link process hears through its stdin) or to all its processes at once (as systemd
    signals a unit): every download finishes whole and every process exits by itself."""
    a = MemberOrigin("a")
    try:
        _, token = edge.token()
        agent = web(edge, agents, token, a.port, "linked", "--links", "2")
        wait_for("the second link", lambda: len(link_processes(agent)) == 1)
        wait_for("both links' sessions", lambda: len(edge.worker_status()["sessions_list"]) == 2)
        host = "linked.relay.localhost"
        downloads = [
            Visit(edge.http_port, host, f"/slow/{SLOW_SIZE}/{SLOW_SECONDS}/{i}").start()
            for i in range(4)
        ]
        for download in downloads:
            assert download.wait_head(10), download.error
        children = link_processes(agent)
        targets = [agent.proc.proc.pid] + (children if whom != "the agent" else [])
        for pid in targets:
            os.kill(pid, signal.SIGTERM)
        agent.proc.wait_line("draining", 5)
        for download in downloads:
            download.join(SLOW_SECONDS + 20)
            assert download.whole(SLOW_SIZE), (download.error, len(download.body))
        assert agent.proc.wait(15) == 0, agent.proc.text()
        for pid in children:
            assert not Path(f"/proc/{pid}").exists(), f"link process {pid} outlived the agent"
    finally:
        a.close()


# --- (c) a pool member's link is saturated ---------------------------------------------------


#: An upload big enough to fill a stream's initial window (256 KiB) and then some.
UPLOAD = 1024 * 1024
#: How long a stopped agent may stay stopped: the edge's keepalive wants its ping answered
#: within 10 s, and so does the agent's.
STOPPED_AT_MOST = 8.0


def test_a_saturated_pool_member_is_skipped_until_it_reads_again(
    edge: Edge, agents: list[Agent]
) -> None:
    """The stopped member's agent reads nothing; uploads routed to it fill their stream
    windows, the socket buffers and then the edge's transport buffer of its link, which
    pauses writing (``write_paused``): from then on every visitor goes to the other member.
    (A running agent reads its link as fast as the edge writes it, so stopping it is how a
    test saturates a link on purpose; a stalled agent is also what the rule is for.)"""
    a, b = MemberOrigin("a"), MemberOrigin("b")
    uploads: list[Visit] = []
    try:
        _, token = edge.token()
        stalled = web(edge, agents, token, a.port, "full", "--pool")
        web(edge, agents, token, b.port, "full", "--pool")
        host = "full.relay.localhost"
        assert_round_robin(edge, host)

        data = os.urandom(UPLOAD)
        digest = hashlib.sha256(data).hexdigest().encode()
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            # Uploads, one at a time. b's origin sees its own at once; a's wait (a is
            # stopped). Round robin alternates while a's link has room, so four in a row
            # at b mean a was skipped: its link is full.
            at_b_in_a_row = 0
            for n in range(24):
                uploads.append(Visit(edge.http_port, host, f"/sink/{n}", data).start())
                deadline = time.monotonic() + 1.5
                while str(n) not in b.asked and time.monotonic() < deadline:
                    time.sleep(0.005)
                at_b_in_a_row = at_b_in_a_row + 1 if str(n) in b.asked else 0
                if at_b_in_a_row == 4 or time.monotonic() - stopped_at > STOPPED_AT_MOST / 2:
                    break
            waiting = len(uploads) - len(b.asked)
            assert at_b_in_a_row == 4, f"a's link never filled: {waiting} uploads wait for it"
            assert 1 <= waiting <= 12, waiting

            # While a's link stays full: every visitor is b's (one routed to a would wait).
            while_full = [fetch(edge.http_port, host, timeout=3) for _ in range(12)]
            assert time.monotonic() - stopped_at < STOPPED_AT_MOST, "too slow for keepalive"
            assert [(v.member, v.error) for v in while_full if not v.whole(BODY_SIZE)] == []
            assert Counter(v.member for v in while_full) == Counter({"b": 12})
        finally:
            if stalled.proc.proc.poll() is None:
                os.kill(stalled.proc.pid, signal.SIGCONT)

        # a reads again: every upload arrives whole, those that waited at a's; and a
        # takes its turns again.
        for upload in uploads:
            upload.join(30)
        answers = [(u.member, u.status, u.body == digest, u.error) for u in uploads]
        assert all(ok and status == 200 for _, status, ok, _ in answers), answers
        assert Counter(u.member for u in uploads) == Counter(
            {"a": len(uploads) - len(b.asked), "b": len(b.asked)}
        )
        assert "session lost" not in stalled.proc.text()
        assert_round_robin(edge, host)
    finally:
        a.close()
        b.close()


def test_no_visitor_fails_while_a_pool_members_goaway_crosses_them(
    edge: Edge, agents: list[Agent]
) -> None:
    """A member 50 ms away (a tap delays its link both ways) is stopped with SIGTERM while
    four loops of back-to-back visitors run. For 50 ms the edge has not heard its GoAway
    and still routes visitors to it; those streams cross the GoAway on the wire. The agent
    accepts them (it is draining: live streams finish anyway), so not one visitor is
    refused, and once the edge hears the GoAway every visitor goes to the other member."""
    a, b = MemberOrigin("a"), MemberOrigin("b")
    tap = LinkTap((edge.host, edge.listen_port), delay=0.05)
    try:
        _, token = edge.token()
        far = web(edge, agents, token, a.port, "cross", "--pool", via=tap.address)
        web(edge, agents, token, b.port, "cross", "--pool")
        # A slow download keeps a draining after its GoAway instead of stopping at once.
        host = "cross.relay.localhost"
        download = slow_download_from_a(edge, host)
        loops = [VisitorLoop(edge.http_port, host) for _ in range(4)]
        time.sleep(1.0)
        os.kill(far.proc.proc.pid, signal.SIGTERM)
        far.proc.wait_line("draining", 5)
        time.sleep(1.0)
        visits = [v for loop in loops for v in loop.stop()]
        failed = [(v.member, v.status, repr(v.error)) for v in visits if not v.whole(BODY_SIZE)]
        assert failed == [], f"{len(failed)} of {len(visits)} visitors failed: {failed[:5]}"
        members = Counter(v.member for v in visits)
        assert members["a"] > 0 and members["b"] > 0, members
        download.join(SLOW_SECONDS + 20)
        assert download.whole(SLOW_SIZE), (download.status, download.error, len(download.body))
        assert far.proc.wait(10) == 0, far.proc.text()
    finally:
        tap.close()
        a.close()
        b.close()
