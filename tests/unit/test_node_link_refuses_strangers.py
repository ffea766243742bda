"""A node's inter-node port admits members of its cluster only, and a dialling node talks
only to members (relay/cluster/nodelink.py, ``NodeTls``): mutual TLS 1.3, both ends'
certificates signed by the cluster CA.

Real NodeLinks on 127.0.0.1, real handshakes, certificates from the project's own helper
(``relay.edge.cluster.node_certificate``), plus an expired one signed by the same CA. The
strangers are plain ``ssl`` sockets in a thread that speak yamux by hand: a SYN stream
carrying a StreamHeader and visitor bytes, i.e. an attempt to inject a visitor. The
control (``test_a_member_speaking_the_same_frames_is_heard``) shows the very same frames
deliver a visitor when the certificate is the cluster's, so every refusal below is the
certificate's doing, not a fault of the hand-made frames.

After every attack, a visitor from a real node crosses to the attacked node (over the
link it had before, and over a link dialled afresh), its bytes hash-checked both ways.
Each test runs over both TLS transports (relay/tlslink.py: direct and uvloop's).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay import _tlslink
from relay.certs.local_ca import LocalCA
from relay.cluster.nodelink import NODE_NAME, NodeLinks, NodeTls
from relay.edge.cluster import node_certificate
from relay.protocol import StreamHeader, StreamProtocol
from tests.ports import free_port

#: yamux (native/src/frame.rs): version 0, type, flags, stream id, length; big-endian.
FRAME = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
GO_AWAY_PROTOCOL_ERROR = 1
#: What a stranger's stream carries after its header: it must never reach a node's front.
INJECTED = b"GET /admin HTTP/1.1\r\nHost: victim.example\r\n\r\n"
VISITOR_HEADER = StreamHeader(
    endpoint_id="ep-forwarded", visitor_addr="203.0.113.7:40000", protocol=StreamProtocol.TCP
)
#: How long a stranger waits for the node to answer or hang up.
STRANGER_WAITS = 5.0

Frame = tuple[int, int, int, int]  # type, flags, stream id, length


def yamux_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(0, kind, flags, stream_id, len(payload)) + payload


def injected_stream(header: bytes = VISITOR_HEADER.to_wire()) -> bytes:
    """A stream opened by its first DATA frame (SYN), carrying a header and a request."""
    return yamux_frame(DATA, SYN, 1, header + INJECTED)


def payload(tag: bytes, size: int) -> bytes:
    blocks = (hashlib.sha256(tag + b"%d" % i).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    b: NodeTls  # the attacked node
    a: NodeTls  # a member linked to it before and after the attack
    c: NodeTls  # a member that dials it only after the attack
    member: NodeTls  # a member's certificate in a stranger's hands: the control
    another_cluster: NodeTls  # a node of a cluster of its own CA
    expired: NodeTls  # signed by this cluster's CA, no longer valid


def expired_certificate(ca: LocalCA, directory: Path) -> NodeTls:
    """A node certificate as ``LocalCA.issue_server_cert`` makes one, but expired."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NODE_NAME)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=31))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NODE_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = directory / "expired.pem", directory / "expired.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return NodeTls(cert_path, key_path, ca.ca_pem_path)


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    cluster = tmp_path / "cluster-ca"
    return Certificates(
        b=node_certificate(cluster, "node-b"),
        a=node_certificate(cluster, "node-a"),
        c=node_certificate(cluster, "node-c"),
        member=node_certificate(cluster, "node-m"),
        another_cluster=node_certificate(tmp_path / "other-cluster-ca", "node-x"),
        expired=expired_certificate(LocalCA.load_or_create(cluster), tmp_path),
    )


@pytest.fixture(params=["direct", "uvloop"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The TLS transport of every link in the test (relay/tlslink.py)."""
    kind = str(request.param)
    if kind == "direct":
        reason = _tlslink.unavailable()
        if reason is not None:
            pytest.skip(f"direct TLS link unavailable here: {reason}")
    else:
        monkeypatch.setenv("RELAY_TLS_DIRECT", "0")
    yield kind


# --- nodes --------------------------------------------------------------------------------


@dataclass
class ListeningNode:
    links: NodeLinks
    port: int
    delivered: asyncio.Queue[tuple[StreamHeader, socket.socket]]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def nothing_delivered(self) -> bool:
        return self.delivered.empty() and self.links.received == 0


def no_route(header: StreamHeader) -> bytes:
    return b""  # nothing serves it: a reset


@contextlib.asynccontextmanager
async def listening_node(tls: NodeTls) -> AsyncIterator[ListeningNode]:
    """Node B: its NodeLinks listening; each visitor it is handed lands in ``delivered``."""
    loop = asyncio.get_running_loop()
    delivered: asyncio.Queue[tuple[StreamHeader, socket.socket]] = asyncio.Queue()
    handed: list[socket.socket] = []

    def deliver(header: StreamHeader, sock: socket.socket) -> None:
        handed.append(sock)
        delivered.put_nowait((header, sock))

    links = NodeLinks(loop, tls, deliver, no_route)
    port = free_port()
    await links.listen("127.0.0.1", port)
    try:
        yield ListeningNode(links, port, delivered)
    finally:
        await links.close()
        for sock in handed:
            sock.close()


def refuse_delivery(header: StreamHeader, sock: socket.socket) -> None:
    sock.close()
    raise AssertionError("a dialling node was handed a visitor")


@contextlib.asynccontextmanager
async def dialling_node(tls: NodeTls) -> AsyncIterator[NodeLinks]:
    links = NodeLinks(asyncio.get_running_loop(), tls, refuse_delivery, no_route)
    try:
        yield links
    finally:
        await links.close()


async def read_exactly(sock: socket.socket, size: int, within: float = 10) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    async with asyncio.timeout(within):
        while len(got) < size:
            chunk = await loop.sock_recv(sock, min(65536, size - len(got)))
            if not chunk:
                break
            got += chunk
    return bytes(got)


async def visitor_crosses(dialler: NodeLinks, node: ListeningNode, tag: bytes) -> None:
    """A visitor forwarded by ``dialler`` reaches ``node`` and both directions arrive whole."""
    loop = asyncio.get_running_loop()
    visitor, dialler_end = socket.socketpair()
    visitor.setblocking(False)
    dialler_end.setblocking(False)
    failed: list[socket.socket] = []
    up, down = payload(tag + b"/up", 600_000), payload(tag + b"/down", 300_000)
    dialler.forward(node.address, VISITOR_HEADER.to_wire(), dialler_end, failed.append)
    sending = asyncio.ensure_future(loop.sock_sendall(visitor, up))
    try:
        async with asyncio.timeout(10):
            header, delivered = await node.delivered.get()
        assert header == VISITOR_HEADER
        got_up = await read_exactly(delivered, len(up))
        await asyncio.wait_for(sending, 10)
        await loop.sock_sendall(delivered, down)
        got_down = await read_exactly(visitor, len(down))
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        assert failed == []
    finally:
        sending.cancel()
        visitor.close()


# --- strangers ----------------------------------------------------------------------------


@dataclass
class Stranger:
    """What one connection to a node's inter-node port saw."""

    handshake_error: str | None = None  # the client's own handshake failed
    ended_by: str | None = None  # a TLS alert or reset after the handshake
    hung_up: bool = False  # a clean EOF
    frames: list[Frame] = field(default_factory=list)
    timed_out: bool = False

    @property
    def refused(self) -> bool:
        return bool(self.handshake_error or self.ended_by or self.hung_up)

    def saw(self, kind: int, flag: int, stream_id: int) -> bool:
        return any(f[0] == kind and f[1] & flag and f[2] == stream_id for f in self.frames)


def stranger_context(cert: NodeTls | None) -> ssl.SSLContext:
    """A client that trusts any server (it is the attacker) and shows ``cert``, if any."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def connect_as_stranger(
    port: int,
    ctx: ssl.SSLContext | None,
    sends: bytes,
    done: Callable[[Stranger], bool] = lambda seen: False,
    hold: threading.Event | None = None,
) -> Stranger:
    """Connect (TLS with ``ctx``, or plain TCP when None), send ``sends``, then read the
    node's frames until ``done``, EOF, an error, or ``STRANGER_WAITS``. With ``hold``,
    stay connected after ``done`` until it is set (for as long again at most)."""
    seen = Stranger()
    deadline = time.monotonic() + STRANGER_WAITS
    with socket.create_connection(("127.0.0.1", port), timeout=STRANGER_WAITS) as raw:
        conn: socket.socket = raw
        if ctx is not None:
            try:
                conn = ctx.wrap_socket(raw, server_hostname=NODE_NAME)
            except (ssl.SSLError, OSError) as exc:
                seen.handshake_error = f"{type(exc).__name__}: {exc}"
                return seen
        buffer = b""
        try:
            conn.sendall(sends)
            for _ in range(10_000):
                if done(seen):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    seen.timed_out = True
                    break
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk:
                    seen.hung_up = True
                    break
                buffer += chunk
                while len(buffer) >= FRAME.size:
                    _version, kind, flags, stream_id, length = FRAME.unpack_from(buffer)
                    size = FRAME.size + (length if kind == DATA else 0)
                    if len(buffer) < size:
                        break
                    seen.frames.append((kind, flags, stream_id, length))
                    buffer = buffer[size:]
            if hold is not None and done(seen):
                hold.wait(STRANGER_WAITS)
        except TimeoutError:
            seen.timed_out = True
        except (ssl.SSLError, OSError) as exc:
            seen.ended_by = f"{type(exc).__name__}: {exc}"
        finally:
            if conn is not raw:
                conn.close()
    return seen


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 60)

    uvloop.run(bounded())


async def eventually(condition: Callable[[], bool], within: float = 5) -> None:
    """Wait until ``condition()`` holds (bounded: 100 looks in ``within`` seconds)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(within / 100)
    assert condition()


def handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]


# --- the listening side -------------------------------------------------------------------


def test_a_member_speaking_the_same_frames_is_heard(certs: Certificates, transport: str) -> None:
    """The control: the strangers' frames, with a member's certificate, deliver a visitor
    (so the refusals below are the certificates' doing)."""

    async def scenario() -> None:
        async with listening_node(certs.b) as b:
            release = threading.Event()
            try:
                connecting = asyncio.to_thread(
                    connect_as_stranger,
                    b.port,
                    stranger_context(certs.member),
                    injected_stream(),
                    lambda seen: seen.saw(WINDOW_UPDATE, ACK, 1),
                    release,
                )
                stranger = asyncio.ensure_future(connecting)
                async with asyncio.timeout(10):
                    header, delivered = await b.delivered.get()
                assert header == VISITOR_HEADER
                assert await read_exactly(delivered, len(INJECTED)) == INJECTED
            finally:
                release.set()
            seen = await stranger
            assert seen.saw(WINDOW_UPDATE, ACK, 1), seen  # the node accepted the stream
            assert b.links.received == 1

    run(scenario)


#: Who knocks, and the reason the node gives for its refusal (relay.tlslink's log line,
#: written by the direct transport; uvloop's handshakes log nothing).
STRANGERS = {
    "no-certificate": (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    "another-cluster": ("another_cluster", "self-signed certificate in certificate chain"),
    "expired": ("expired", "certificate has expired"),
}


@pytest.mark.parametrize("who", list(STRANGERS))
def test_a_stranger_is_refused_before_any_stream_and_members_still_cross(
    who: str, certs: Certificates, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder, reason = STRANGERS[who]
    cert: NodeTls | None = getattr(certs, holder) if holder is not None else None
    caplog.set_level(logging.INFO, logger="relay.tlslink")

    async def scenario() -> None:
        async with listening_node(certs.b) as b, dialling_node(certs.a) as a:
            await visitor_crosses(a, b, b"before")
            seen = await asyncio.to_thread(
                connect_as_stranger, b.port, stranger_context(cert), injected_stream()
            )
            assert seen.refused and not seen.timed_out, seen
            assert seen.frames == [], seen  # not one yamux frame: no session was started
            assert b.delivered.empty() and b.links.received == 1  # only the member's visitor
            assert b.links.status()["links_in"] == 1  # only a's link
            if transport == "direct":
                [line] = handshake_failures(caplog)
                assert line.startswith("node link from") and reason in line, line
                assert b.links.status()["refused"] == 1
            await visitor_crosses(a, b, b"after, same link")
            async with dialling_node(certs.c) as c:
                await visitor_crosses(c, b, b"after, new link")
            assert b.links.received == 3

    run(scenario)


def test_plain_tcp_to_the_node_port_is_refused(certs: Certificates, transport: str) -> None:
    """No TLS at all: yamux frames in the clear are never read as yamux."""

    async def scenario() -> None:
        async with listening_node(certs.b) as b, dialling_node(certs.a) as a:
            seen = await asyncio.to_thread(connect_as_stranger, b.port, None, injected_stream())
            assert seen.refused and not seen.timed_out, seen
            assert seen.frames == [], seen
            assert b.nothing_delivered()
            if transport == "direct":
                assert b.links.status()["refused"] == 1
            await visitor_crosses(a, b, b"after")

    run(scenario)


MALFORMED_HEADERS = {
    # length field beyond MAX_STREAM_HEADER
    "length-out-of-range": b"\xff\xff" + b"\x00" * 16,
    # version 1, protocol 0x7f, then three empty fields
    "unknown-protocol": b"\x00\x08\x01\x7f" + b"\x00\x00" * 3,
    # two fields where three at least are needed
    "too-few-fields": b"\x00\x06\x01\x00" + b"\x00\x00" * 2,
}


@pytest.mark.parametrize("header", list(MALFORMED_HEADERS))
def test_a_member_with_a_malformed_stream_header_gets_that_stream_reset(
    header: str, certs: Certificates, transport: str
) -> None:
    async def scenario() -> None:
        async with listening_node(certs.b) as b, dialling_node(certs.a) as a:
            seen = await asyncio.to_thread(
                connect_as_stranger,
                b.port,
                stranger_context(certs.member),
                injected_stream(MALFORMED_HEADERS[header]),
                lambda seen: seen.saw(WINDOW_UPDATE, RST, 1) or seen.saw(DATA, RST, 1),
            )
            assert seen.saw(WINDOW_UPDATE, RST, 1) or seen.saw(DATA, RST, 1), seen
            assert b.nothing_delivered()
            await visitor_crosses(a, b, b"after")

    run(scenario)


def test_a_member_whose_stream_ends_inside_its_header_gets_it_reset(
    certs: Certificates, transport: str
) -> None:
    async def scenario() -> None:
        async with listening_node(certs.b) as b, dialling_node(certs.a) as a:
            half = VISITOR_HEADER.to_wire()[:5]
            seen = await asyncio.to_thread(
                connect_as_stranger,
                b.port,
                stranger_context(certs.member),
                yamux_frame(DATA, SYN | FIN, 1, half),
                lambda seen: seen.saw(WINDOW_UPDATE, RST, 1) or seen.saw(DATA, RST, 1),
            )
            assert seen.saw(WINDOW_UPDATE, RST, 1) or seen.saw(DATA, RST, 1), seen
            assert b.nothing_delivered()
            await visitor_crosses(a, b, b"after")

    run(scenario)


def test_a_member_speaking_garbage_loses_its_link_and_nothing_else(
    certs: Certificates, transport: str
) -> None:
    async def scenario() -> None:
        async with listening_node(certs.b) as b, dialling_node(certs.a) as a:
            await visitor_crosses(a, b, b"before")
            garbage = b"\x16\x03\x01 this is not yamux " + payload(b"garbage", 4096)
            seen = await asyncio.to_thread(
                connect_as_stranger, b.port, stranger_context(certs.member), garbage
            )
            assert seen.refused and not seen.timed_out, seen
            # The node's session pings on start; then it says GoAway(protocol error).
            assert all(kind in (PING, GO_AWAY) for kind, *_ in seen.frames), seen
            assert seen.frames[-1] == (GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR), seen
            assert b.delivered.empty() and b.links.received == 1
            await eventually(lambda: b.links.status()["links_in"] == 1)  # the stranger's gone
            await visitor_crosses(a, b, b"after")

    run(scenario)


# --- the dialling side --------------------------------------------------------------------


@dataclass
class Listened:
    handshake_error: str | None = None
    received: bytes = b""


def listen_as_impostor(listener: socket.socket, cert: NodeTls) -> Listened:
    """Accept one connection with ``cert`` (requiring nothing of the client) and keep
    every byte it sends after the handshake, until EOF or ``STRANGER_WAITS``."""
    heard = Listened()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    listener.settimeout(STRANGER_WAITS)
    raw, _address = listener.accept()
    deadline = time.monotonic() + STRANGER_WAITS
    with raw:
        raw.settimeout(STRANGER_WAITS)
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            heard.handshake_error = f"{type(exc).__name__}: {exc}"
            return heard
        with conn:
            try:
                for _ in range(10_000):
                    left = deadline - time.monotonic()
                    if left <= 0 or INJECTED in heard.received:
                        break
                    conn.settimeout(left)
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    for opaque in pings_in(heard.received, chunk):
                        conn.sendall(FRAME.pack(0, PING, ACK, 0, opaque))
                    heard.received += chunk
            except (ssl.SSLError, OSError):
                pass
    return heard


def pings_in(before: bytes, chunk: bytes) -> list[int]:
    """The opaque values of the PING SYN frames that end in ``chunk`` (frames parsed from
    the start of what was received): a dialling node starts no visitor on a link until
    its first ping is answered."""
    data, at, found = before + chunk, 0, []
    while len(data) - at >= FRAME.size:
        _version, kind, flags, _stream, length = FRAME.unpack_from(data, at)
        size = FRAME.size + (length if kind == DATA else 0)
        if len(data) - at < size:
            break
        if kind == PING and flags & SYN and at + size > len(before):
            found.append(length)
        at += size
    return found


IMPOSTORS = {
    "another-cluster": ("another_cluster", False),
    "expired": ("expired", False),
    # the control: a member's certificate does get the visitor's bytes
    "member": ("member", True),
}


def test_a_node_whose_certificate_is_refused_after_its_handshake_fails_the_dial(
    certs: Certificates, transport: str
) -> None:
    """In TLS 1.3 the dialling side's handshake completes before the listening node has
    checked its certificate; the refusal is an alert after it. The dial still fails as
    a dial: the visitor gets the failure callback (a 503 page, not a reset), the node is
    not dialled again at once, and the listening node never sees the visitor."""

    async def scenario() -> None:
        async with listening_node(certs.b) as b, dialling_node(certs.expired) as a:
            visitor, dialler_end = socket.socketpair()
            failed: list[socket.socket] = []
            try:
                dialler_end.setblocking(False)
                a.forward(b.address, VISITOR_HEADER.to_wire(), dialler_end, failed.append)
                await eventually(lambda: bool(failed))
                assert failed == [dialler_end]
                assert a.failures == 1 and a.forwarded == 0
                assert a.status()["links_out"] == []
                assert a.unreachable(b.address)
                again, again_end = socket.socketpair()
                try:
                    a.forward(b.address, VISITOR_HEADER.to_wire(), again_end, failed.append)
                    assert failed == [dialler_end, again_end]  # at once: no second dial
                finally:
                    again.close()
                assert b.nothing_delivered()
            finally:
                visitor.close()

    run(scenario)


def test_a_node_certificate_issued_again_is_shown_to_new_links(
    certs: Certificates, transport: str, tmp_path: Path
) -> None:
    """``NodeLinks.reload_tls``, as a node calls it when it issues its certificate again
    (ClusterNode.renew_certificate): new handshakes show the new certificate, both ways,
    and visitors still cross over the link made before and over a new one."""

    def shown_by(port: int) -> bytes:
        ctx = stranger_context(certs.member)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with raw, ctx.wrap_socket(raw, server_hostname=NODE_NAME) as conn:
            cert = conn.getpeercert(binary_form=True)
            assert cert is not None
            return cert

    async def scenario() -> None:
        async with listening_node(certs.b) as b, dialling_node(certs.a) as a:
            await visitor_crosses(a, b, b"before")
            first = await asyncio.to_thread(shown_by, b.port)
            renewed = node_certificate(tmp_path / "cluster-ca", "node-b")
            b.links.reload_tls(renewed)
            second = await asyncio.to_thread(shown_by, b.port)
            assert second != first
            assert renewed.cert.read_bytes().startswith(ssl.DER_cert_to_PEM_cert(second).encode())
            await visitor_crosses(a, b, b"after, same link")
            async with dialling_node(certs.c) as c:
                c.reload_tls(node_certificate(tmp_path / "cluster-ca", "node-c"))
                await visitor_crosses(c, b, b"after, new link")

    run(scenario)


@pytest.mark.parametrize("impostor", list(IMPOSTORS))
def test_a_dialling_node_sends_a_visitor_only_to_a_member(
    impostor: str, certs: Certificates, transport: str
) -> None:
    holder, member = IMPOSTORS[impostor]
    cert: NodeTls = getattr(certs, holder)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        port = free_port()
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", port))
            listener.listen(1)
            listening = asyncio.ensure_future(asyncio.to_thread(listen_as_impostor, listener, cert))
            async with dialling_node(certs.a) as a:
                visitor, dialler_end = socket.socketpair()
                failed: list[socket.socket] = []
                try:
                    dialler_end.setblocking(False)
                    visitor.setblocking(False)
                    # What the visitor sent is there before a dials (and may be dropped).
                    await loop.sock_sendall(visitor, INJECTED)
                    a.forward(
                        f"127.0.0.1:{port}", VISITOR_HEADER.to_wire(), dialler_end, failed.append
                    )
                    heard = await listening
                    if member:
                        assert heard.handshake_error is None, heard
                        assert INJECTED in heard.received
                        return
                    assert heard.handshake_error is not None, heard  # a's alert ended it
                    assert heard.received == b""  # not one byte after a handshake
                    await eventually(lambda: bool(failed))
                    assert failed == [dialler_end]
                    assert a.failures == 1 and a.forwarded == 0
                    assert a.status()["links_out"] == []
                    assert a.unreachable(f"127.0.0.1:{port}")
                    # a closed the visitor (a reset: what it had sent was never read)
                    with contextlib.suppress(ConnectionResetError):
                        assert await read_exactly(visitor, 1) == b""
                finally:
                    visitor.close()
        finally:
            listener.close()

    run(scenario)
