"""A private network of Linux network namespaces for tests: one bridge, and one namespace
per machine (an edge node, Redis, PostgreSQL, an agent's host), each joined to the bridge
by a veth pair and given its own address in a /24 of 10.231.0.0/16 that no route of this
machine covers. The test process itself keeps the bridge's own address (``gateway``):
its visitors come from there, and it reaches every namespace's listeners through it.

Names carry the test process's id (namespaces ``rlytest-<pid>-<label>``, links
``rlyt<pid>b`` for the bridge and ``rlyt<pid>v<i>`` for the host side of each veth), so
parallel runs do not clash. Leftovers of a run whose process is gone (a crash, a SIGKILL)
are removed when the next network is made; everything made is removed on close, also
when the test fails. Without root (CAP_NET_ADMIN, CAP_NET_RAW) the fixture skips.

Processes run in a namespace two ways, both keeping the process's own id (stopped by it):

* ``space.popen(cmd)``: ``ip netns exec NS cmd…``; ``ip`` enters the namespace and then
  execs the command in the same process, so the id ``Popen`` holds is the command's.
* ``with space.entered(): …``: only the calling *thread* enters the namespace (setns(2)
  on that thread), so everything it starts meanwhile is born there: a child process
  (``Edge.start()``, ``Agent(…)`` of tests/e2e/procs.py unchanged), a listening socket
  (an origin server's), a thread. The thread is put back on leaving.

:class:`Capture` counts the packets and bytes on the host side of chosen veths (every
packet into or out of a namespace crosses its veth) with AF_PACKET raw sockets, by
interface, addresses, protocol and ports: what the tests say did or did not cross
between machines is read off the wire, not off the programs' own counters.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Namespaces are ``rlytest-<pid>-<label>``; links ``rlyt<pid>b`` / ``rlyt<pid>v<i>``
#: (at most 15 characters: a pid has at most 7 digits).
NS_PREFIX = "rlytest"
LINK_PREFIX = "rlyt"
#: The private range the test subnets are cut from (a /24 each).
RANGE = ipaddress.IPv4Network("10.231.0.0/16")
#: Every ``ip`` call's deadline (seconds).
IP_TIMEOUT = 10.0
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6

_NS_RE = re.compile(rf"{NS_PREFIX}-(\d+)-[A-Za-z0-9_]+")
_LINK_RE = re.compile(rf"{LINK_PREFIX}(\d+)(?:b|v\d+)")
_libc = ctypes.CDLL(None, use_errno=True)


def ip_command() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = ip_command()
    if binary is None:
        raise RuntimeError("no ip command")
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why no private network can be made here (the fixture skips with it), or None."""
    if ip_command() is None:
        return "no ip command (iproute2)"
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    probe = f"{NS_PREFIX}-{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
    except OSError as exc:
        return f"cannot open an AF_PACKET socket (CAP_NET_RAW): {exc}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Remove namespaces and links of this naming whose run's process is gone, or that
    carry this process's own id (a pid reused after a crash). Returns what it removed."""
    removed = []
    mine = os.getpid()
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split(" ", 1)[0]
        match = _NS_RE.fullmatch(name)
        if match and (int(match[1]) == mine or not _alive(int(match[1]))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 3:
            continue
        name = parts[1].strip().split("@", 1)[0]
        match = _LINK_RE.fullmatch(name)
        if match and (int(match[1]) == mine or not _alive(int(match[1]))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


_ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit"}


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix this machine routes or has an address in (the default route
    aside: it covers everything and says nothing)."""
    found = []
    lines = _ip("-4", "route", "show", "table", "all").stdout.splitlines()
    lines += [
        line.split()[3] for line in _ip("-4", "-o", "addr", "show").stdout.splitlines() if line
    ]
    for line in lines:
        words = line.split()
        if not words:
            continue
        word = words[1] if words[0] in _ROUTE_TYPES and len(words) > 1 else words[0]
        if word == "default":
            continue
        with contextlib.suppress(ValueError):
            found.append(ipaddress.IPv4Network(word, strict=False))
    return found


def pick_subnet() -> ipaddress.IPv4Network:
    """A /24 of :data:`RANGE` that overlaps nothing routed here (tried from a place the
    pid picks, so parallel runs start apart)."""
    used = _networks_in_use()
    subnets = list(RANGE.subnets(new_prefix=24))
    start = os.getpid() % len(subnets)
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if candidate.network_address.packed[2] == 0:
            continue
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError(f"every /24 of {RANGE} overlaps a route of this machine")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@dataclass
class Netns:
    """One namespace of a :class:`Network`: a machine with its own address."""

    label: str
    name: str
    address: str
    veth: str  # the host side of its veth pair (on the bridge): where it is captured

    def command(self, args: Sequence[str]) -> list[str]:
        binary = ip_command()
        assert binary is not None
        return [binary, "netns", "exec", self.name, *args]

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``args`` started in this namespace; the ``Popen``'s pid is the command's own
        (``ip netns exec`` execs it), so :func:`stop_process` stops it by that id."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.command(args), **kwargs)
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in this namespace meanwhile: processes, sockets and threads
        it makes are born here (and stay here). Back where it was on leaving."""
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(saved)
        finally:
            os.close(saved)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM by its id, SIGKILL if it does not exit in time; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


# --- capture ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """Packets seen on ``interface`` from ``src``:``sport`` to ``dst``:``dport`` (ports 0
    for protocols without them, and for fragments after the first)."""

    interface: str
    src: str
    dst: str
    protocol: int  # 6 TCP, 17 UDP, 1 ICMP, …
    sport: int
    dport: int


@dataclass(frozen=True)
class Tally:
    packets: int = 0
    bytes: int = 0  # IP bytes: headers and payload (the whole of a GSO/GRO packet)

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.packets + other.packets, self.bytes + other.bytes)

    def __sub__(self, other: Tally) -> Tally:
        return Tally(self.packets - other.packets, self.bytes - other.bytes)


@dataclass(frozen=True)
class Snapshot:
    """What a :class:`Capture` had counted at one moment; ``later - earlier`` is what
    crossed in between."""

    flows: dict[Flow, Tally]
    drops: int  # packets the kernel dropped for want of room in a capture socket
    other: int  # frames that were not IPv4 (ARP, IPv6 neighbour discovery, …)
    overflow: Tally = field(default_factory=Tally)  # past the flow table's bound

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        flows = {}
        for flow, tally in self.flows.items():
            diff = tally - earlier.flows.get(flow, Tally())
            if diff.packets:
                flows[flow] = diff
        return Snapshot(
            flows, self.drops - earlier.drops, self.other - earlier.other,
            self.overflow - earlier.overflow,
        )  # fmt: skip

    def select(
        self,
        one: Iterable[str],
        other: Iterable[str],
        *,
        port: int | None = None,
        interface: str | None = None,
    ) -> Snapshot:
        """The flows between any address of ``one`` and any of ``other``, both ways; with
        ``port``, only those to or from that port on ``other``'s side; with
        ``interface``, only as seen there."""
        left, right = set(one), set(other)
        flows = {}
        for flow, tally in self.flows.items():
            if interface is not None and flow.interface != interface:
                continue
            outward = flow.src in left and flow.dst in right
            inward = flow.src in right and flow.dst in left
            if port is not None:
                outward = outward and flow.dport == port
                inward = inward and flow.sport == port
            if outward or inward:
                flows[flow] = tally
        return Snapshot(flows, self.drops, self.other, self.overflow)

    def total(self) -> Tally:
        return sum(self.flows.values(), Tally())

    def between(
        self,
        one: Iterable[str],
        other: Iterable[str],
        *,
        port: int | None = None,
        interface: str | None = None,
    ) -> Tally:
        """The sum of :meth:`select`'s flows."""
        return self.select(one, other, port=port, interface=interface).total()

    def from_to(
        self,
        src: str,
        dst: str,
        *,
        sport: int | None = None,
        dport: int | None = None,
        interface: str | None = None,
    ) -> Tally:
        """Packets one way only: from ``src`` (``sport``) to ``dst`` (``dport``)."""
        total = Tally()
        for flow, tally in self.flows.items():
            if interface is not None and flow.interface != interface:
                continue
            if flow.src != src or flow.dst != dst:
                continue
            if sport in (None, flow.sport) and dport in (None, flow.dport):
                total += tally
        return total


class Capture:
    """Counts every packet seen on ``interfaces`` (AF_PACKET, ETH_P_ALL: both ways) in a
    thread, until :meth:`stop` or ``max_seconds``, keyed by :class:`Flow`. Only the
    headers are read (128 bytes with MSG_TRUNC, which still gives the packet's length).
    At most ``max_flows`` flows are kept apart; the rest are summed in ``overflow``."""

    def __init__(
        self, interfaces: Sequence[str], *, max_seconds: float = 300.0, max_flows: int = 10_000
    ) -> None:
        self.interfaces = list(interfaces)
        self.max_seconds = max_seconds
        self.max_flows = max_flows
        self._lock = threading.Lock()
        self._flows: dict[tuple[str, bytes, bytes, int, int, int], list[int]] = {}
        self._overflow = [0, 0]
        self._other = 0
        self._drops = 0
        self._drained_at = 0.0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._sockets: list[tuple[socket.socket, str]] = []
        self._selector = selectors.DefaultSelector()
        try:
            for name in self.interfaces:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                self._sockets.append((sock, name))
                with contextlib.suppress(OSError):  # SO_RCVBUFFORCE: past rmem_max (root)
                    sock.setsockopt(socket.SOL_SOCKET, 33, 32 * 1024 * 1024)
                sock.bind((name, 0))
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, name)
        except BaseException:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _close_sockets(self) -> None:
        with contextlib.suppress(Exception):
            self._selector.close()
        for sock, _ in self._sockets:
            sock.close()

    def _run(self) -> None:
        buf = bytearray(128)
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                began = time.monotonic()
                empty = True
                for sock, name in self._sockets:
                    empty = self._drain(sock, name, buf) and empty
                if empty:
                    # Every packet queued before ``began`` has been counted.
                    self._drained_at = began
                    self._selector.select(0.05)
        except BaseException as exc:  # surfaced by snapshot()
            self._error = exc
        finally:
            self._ended.set()

    def _drain(self, sock: socket.socket, name: str, buf: bytearray) -> bool:
        """Count what ``sock`` holds (at most 4096 packets a round): whether it is empty."""
        for _ in range(4096):
            try:
                size = sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
            except BlockingIOError:
                stats = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
                dropped = struct.unpack("II", stats)[1]  # reading resets the kernel's count
                if dropped:
                    with self._lock:
                        self._drops += dropped
                return True
            self._count(name, buf, size)
        return False

    def _count(self, name: str, buf: bytearray, size: int) -> None:
        got = min(size, len(buf))
        off = 14
        ethertype = buf[12] << 8 | buf[13] if got >= 14 else 0
        if ethertype == 0x8100 and got >= 18:
            ethertype, off = buf[16] << 8 | buf[17], 18
        if ethertype != 0x0800 or got < off + 20:
            with self._lock:
                self._other += 1
            return
        ihl = (buf[off] & 0x0F) * 4
        protocol = buf[off + 9]
        first_fragment = ((buf[off + 6] & 0x1F) << 8 | buf[off + 7]) == 0
        sport = dport = 0
        if protocol in (6, 17) and first_fragment and got >= off + ihl + 4:
            sport = buf[off + ihl] << 8 | buf[off + ihl + 1]
            dport = buf[off + ihl + 2] << 8 | buf[off + ihl + 3]
        key = (name, bytes(buf[off + 12 : off + 16]), bytes(buf[off + 16 : off + 20]), protocol,
               sport, dport)  # fmt: skip
        length = size - off
        with self._lock:
            tally = self._flows.get(key)
            if tally is None:
                if len(self._flows) >= self.max_flows:
                    self._overflow[0] += 1
                    self._overflow[1] += length
                    return
                tally = self._flows[key] = [0, 0]
            tally[0] += 1
            tally[1] += length

    def snapshot(self, timeout: float = 5.0) -> Snapshot:
        """Everything counted so far, once every packet that crossed before this call has
        been read (bounded: ``timeout``)."""
        asked = time.monotonic()
        while self._drained_at < asked:
            if self._error is not None:
                raise RuntimeError(f"capture failed: {self._error!r}")
            if self._ended.is_set():
                raise RuntimeError("the capture has ended (stopped, or past max_seconds)")
            if time.monotonic() - asked > timeout:
                raise TimeoutError(f"the capture did not catch up within {timeout} s")
            time.sleep(0.01)
        with self._lock:
            flows = {
                Flow(k[0], socket.inet_ntoa(k[1]), socket.inet_ntoa(k[2]), k[3], k[4], k[5]):
                    Tally(v[0], v[1])
                for k, v in self._flows.items()
            }  # fmt: skip
            return Snapshot(flows, self._drops, self._other, Tally(*self._overflow))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_sockets()


# --- the network ----------------------------------------------------------------------------


class Network:
    """A bridge with the test process's address on it, and namespaces added by
    :meth:`add`. :meth:`close` removes all of it (also what a failed ``__init__`` made)."""

    def __init__(self) -> None:
        self.tag = str(os.getpid())
        self.spaces: dict[str, Netns] = {}
        self.captures: list[Capture] = []
        self._extra = 0  # addresses added by add_address
        self.bridge = f"{LINK_PREFIX}{self.tag}b"
        self._made_bridge = False
        try:
            remove_leftovers()
            self.subnet = pick_subnet()
            self.gateway = str(self.subnet.network_address + 1)
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made_bridge = True
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def add(self, label: str) -> Netns:
        """A new namespace ``label`` on the bridge, with the next address of the subnet
        (.11, .12, …), its loopback up."""
        if label in self.spaces or not re.fullmatch(r"[A-Za-z0-9_]{1,20}", label):
            raise ValueError(f"bad or repeated namespace label {label!r}")
        index = len(self.spaces) + 1
        space = Netns(
            label,
            f"{NS_PREFIX}-{self.tag}-{label}",
            str(self.subnet.network_address + 10 + index),
            f"{LINK_PREFIX}{self.tag}v{index}",
        )
        self.spaces[label] = space  # recorded first: close() removes what was made
        _ip("netns", "add", space.name)
        _ip("link", "add", space.veth, "type", "veth", "peer", "name", "eth0", "netns", space.name)
        _ip("link", "set", space.veth, "master", self.bridge)
        _ip("link", "set", space.veth, "up")
        prefix = f"{space.address}/{self.subnet.prefixlen}"
        _ip("-n", space.name, "addr", "add", prefix, "dev", "eth0")
        _ip("-n", space.name, "link", "set", "eth0", "up")
        _ip("-n", space.name, "link", "set", "lo", "up")
        return space

    def add_address(self, space: Netns) -> str:
        """One more address of the subnet on ``space``'s eth0 (.201, .202, …): a machine
        that answers at two addresses."""
        self._extra += 1
        address = str(self.subnet.network_address + 200 + self._extra)
        _ip("-n", space.name, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        return address

    def capture(self, *spaces: Netns, max_seconds: float = 300.0) -> Capture:
        """A :class:`Capture` on the veths of ``spaces``, running until :meth:`close`."""
        made = Capture([s.veth for s in spaces], max_seconds=max_seconds)
        self.captures.append(made)
        return made

    def close(self) -> None:
        """Stop every capture, remove every veth, namespace and the bridge; raise at the
        end if something could not be removed."""
        for capture in self.captures:
            capture.stop()
        failed = []
        for space in self.spaces.values():
            _ip("link", "del", space.veth, check=False)  # both ends go
            done = _ip("netns", "del", space.name, check=False)
            if done.returncode != 0 and Path(f"/run/netns/{space.name}").exists():
                failed.append(f"{space.name}: {done.stderr.strip()}")
        if self._made_bridge:
            done = _ip("link", "del", self.bridge, check=False)
            if done.returncode != 0:
                failed.append(f"{self.bridge}: {done.stderr.strip()}")
        if failed:
            raise RuntimeError("could not remove: " + "; ".join(failed))


@pytest.fixture
def network() -> Iterator[Network]:
    """A private network for one test (see the module's doc), removed afterwards."""
    why = unavailable()
    if why:
        pytest.skip(why)
    made = Network()
    try:
        yield made
    finally:
        made.close()
