"""The wire above yamux: control-stream messages and the per-visitor StreamHeader.

Every message a peer can send is defined here and nowhere else.

* **Control messages** travel on the first stream the agent opens. Each is a 4-byte
  big-endian length followed by a UTF-8 JSON object whose ``"type"`` names the message.
  They are rare (per session, per bind), so readability beats compactness.
* **StreamHeader** is the first thing on every stream the edge opens for a visitor. It is
  per connection, so it is binary and small: a 2-byte big-endian length, then a version
  byte, a protocol byte and length-prefixed UTF-8 fields.

Decoding never trusts lengths: oversize or malformed input raises ``ProtocolViolation``
(code RLY_301) before anything is allocated for it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar

from relay.errors import ProtocolViolation, UnsupportedVersion

#: The control-protocol versions this side speaks, newest first. Each has its ALPN token
#: on the agent link, ``relay/<version>``: both sides offer all of theirs and the TLS
#: handshake settles on the newest both speak (the edge's order wins), so a newer agent
#: and an older edge, or the reverse, agree on the older one. 2 adds ``EndpointEnded``
#: and ``AuthOk.pop``; 3 an ``AuthError`` of code RLY_505 (the account holds its
#: sessions: the agent reconnects later), which an older agent would exit on.
PROTOCOL_VERSIONS = (3, 2, 1)
PROTOCOL_VERSION = PROTOCOL_VERSIONS[0]
ALPN_PROTOCOLS = tuple(f"relay/{version}" for version in PROTOCOL_VERSIONS)


def protocol_of(alpn: str | None) -> int | None:
    """The control-protocol version an agreed ALPN token names; None: not one of ours."""
    for version, token in zip(PROTOCOL_VERSIONS, ALPN_PROTOCOLS, strict=True):
        if alpn == token:
            return version
    return None


#: Largest control message accepted (a Bind with a long hostname list is far smaller).
MAX_CONTROL_MESSAGE = 64 * 1024
#: Largest StreamHeader accepted.
MAX_STREAM_HEADER = 4 * 1024
#: Deepest nesting of arrays/objects in a control message. Every message is one flat
#: object; a 60,000-deep one (64 KiB of brackets) would exhaust the JSON decoder's
#: recursion limit before authentication.
MAX_JSON_DEPTH = 4

#: The longest Host a bind may rewrite its visitors' heads to (``host_header``): a DNS
#: name (253) and a port.
MAX_HOST_HEADER = 253 + len(":65535")


def is_host_header_value(value: str) -> bool:
    """Whether ``value`` may be a bind's ``host_header``: a host[:port] of 1 to
    :data:`MAX_HOST_HEADER` visible ASCII characters. It goes into every visitor's head
    (a CR or LF would split it), and into the bounded reports and rows that carry the
    endpoint between workers and nodes."""
    return 0 < len(value) <= MAX_HOST_HEADER and all("!" <= c <= "~" for c in value)


_LEN32 = struct.Struct(">I")
_LEN16 = struct.Struct(">H")


# --------------------------------------------------------------------------------------
# control messages


@dataclass(frozen=True)
class Message:
    """Base of every control message; ``TYPE`` is its name on the wire."""

    TYPE: ClassVar[str] = ""

    def to_wire(self) -> bytes:
        body = json.dumps({"type": self.TYPE, **self._on_wire()}, separators=(",", ":")).encode()
        if len(body) > MAX_CONTROL_MESSAGE:
            raise ProtocolViolation(f"control message {self.TYPE} too large ({len(body)} bytes)")
        return _LEN32.pack(len(body)) + body

    def _on_wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Auth(Message):
    """Agent → edge, first message: who am I. ``agent_id`` is stable across reconnects of
    one agent process so the edge can hand its endpoints back to it."""

    TYPE: ClassVar[str] = "auth"
    token: str
    agent_id: str
    version: str
    protocol: int = PROTOCOL_VERSION
    hostname: str = ""
    #: Which of the agent's links this is (``--links K``: 0..K-1). Links of one agent
    #: each bind the same endpoints and share their visitors; a link reconnecting takes
    #: its own place back, never another link's.
    link: int = 0


@dataclass(frozen=True)
class AuthOk(Message):
    TYPE: ClassVar[str] = "auth_ok"
    session_id: str
    edge_version: str
    region: str
    token_id: str
    #: Told to links 1..K-1 of an agent (``Auth.link`` > 0) on an edge with workers
    #: only: which of the edge's ``workers`` holds this session, and ``beside``, a bit
    #: for each lower link of the agent that worker holds too (bit i: link i). A link
    #: beside a lower one connects again (relay/agent/placement.py). Link 0 is never
    #: told: an agent of one link has no use for it.
    worker: int = 0
    workers: int = 1
    beside: int = 0
    #: Protocol 2: the PoP this edge is (its node name, ``--node-id``), the same at every
    #: address it answers on. An agent given several addresses of one PoP (IPv4 and
    #: IPv6, a name with both) learns they are one, and keeps its links on two PoPs.
    pop: str = ""

    def _on_wire(self) -> dict[str, Any]:
        # Agents that predate the placement refuse unknown fields: only a link told
        # where it is gets them, and only an agent of protocol 2 is told its PoP.
        fields = asdict(self)
        if self.workers == 1:
            del fields["worker"], fields["workers"], fields["beside"]
        if not self.pop:
            del fields["pop"]
        return fields


@dataclass(frozen=True)
class AuthError(Message):
    TYPE: ClassVar[str] = "auth_error"
    code: str
    message: str


@dataclass(frozen=True)
class Bind(Message):
    """Agent → edge: expose an endpoint. ``remote_port`` 0 lets the edge allocate one."""

    TYPE: ClassVar[str] = "bind"
    request_id: int
    kind: str  # "tcp" | "http" | "https" | "tls"
    name: str = ""
    remote_port: int = 0  # tcp
    upstream: str = ""  # informational: shown by the edge, never dialled by it
    domain: str = ""  # http/https/tls: a full hostname, or a wildcard "*.example.com"
    subdomain: str = ""  # http/https: <subdomain>.<the edge's base domain>
    host_header: str = ""  # http/https: replace the Host header with this ("" keeps it)
    #: Share the endpoint with other agents of the same token that bind it with ``pool``
    #: too: visitors go round robin to the members (endpoint pooling).
    pool: bool = False


@dataclass(frozen=True)
class Bound(Message):
    TYPE: ClassVar[str] = "bound"
    request_id: int
    endpoint_id: str
    url: str
    remote_port: int


@dataclass(frozen=True)
class BindError(Message):
    TYPE: ClassVar[str] = "bind_error"
    request_id: int
    code: str
    message: str


@dataclass(frozen=True)
class Unbind(Message):
    TYPE: ClassVar[str] = "unbind"
    endpoint_id: str


@dataclass(frozen=True)
class Stop(Message):
    """Edge → agent: end the session and do not reconnect (e.g. token revoked)."""

    TYPE: ClassVar[str] = "stop"
    code: str
    message: str


@dataclass(frozen=True)
class Restart(Message):
    """Edge → agent: reconnect (e.g. the edge is draining for an upgrade)."""

    TYPE: ClassVar[str] = "restart"
    message: str = ""


@dataclass(frozen=True)
class Notice(Message):
    TYPE: ClassVar[str] = "notice"
    level: str
    message: str


@dataclass(frozen=True)
class EndpointEnded(Message):
    """Edge → agent (protocol 2 and later): one endpoint of the session is no longer
    served, for ``code`` (e.g. RLY_207, a reservation made while it was served took it
    away), while the session's other endpoints serve on. The agent drops it and does not
    ask for it again. (Protocol 1 agents get a ``Notice`` saying so instead.)"""

    TYPE: ClassVar[str] = "endpoint_ended"
    endpoint_id: str
    code: str
    message: str


@dataclass(frozen=True)
class CertStatus(Message):
    """Edge → agent: where an https endpoint's certificate stands, sent after Bound and
    again whenever it changes.

    ``state``: ``pending`` (being issued), ``issued`` (``expires`` is ISO 8601), ``failed``
    (``code`` RLY_8xx and ``message`` say why; the edge keeps retrying unless the code is
    one that cannot heal; ``expires`` is set when a certificate still serves: a renewal
    failed). ``issuer``: ``local`` (the edge's own CA: visitors must trust
    it), ``acme`` or ``files``.
    """

    TYPE: ClassVar[str] = "cert_status"
    endpoint_id: str
    hostname: str
    state: str
    issuer: str
    expires: str = ""
    code: str = ""
    message: str = ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Auth,
        AuthOk,
        AuthError,
        Bind,
        Bound,
        BindError,
        Unbind,
        Stop,
        Restart,
        Notice,
        EndpointEnded,
        CertStatus,
    )
}


def decode_message(body: bytes) -> Message:
    """Decode one control message body (without its length prefix)."""
    if not _nesting_within(body, MAX_JSON_DEPTH):
        raise ProtocolViolation(f"control message nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolViolation(f"control message is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolViolation("control message is not a JSON object")
    kind = obj.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolViolation(f"unknown control message type {kind!r}")
    expected = {f.name: f for f in fields(cls)}
    unknown = set(obj) - set(expected)
    if unknown:
        raise ProtocolViolation(f"{kind}: unknown fields {sorted(unknown)}")
    for name, value in obj.items():
        want = expected[name].type
        if not _type_ok(want, value):
            raise ProtocolViolation(f"{kind}.{name}: expected {want}, got {type(value).__name__}")
    try:
        return cls(**obj)
    except TypeError as exc:  # a required field is missing
        raise ProtocolViolation(f"{kind}: {exc}") from None


#: A JSON string (skipped whole: brackets inside it are text) or a bracket.
_JSON_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _nesting_within(body: bytes, limit: int) -> bool:
    """Whether no array/object in ``body`` lies deeper than ``limit`` levels."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return True  # every real message: one object, a few brackets at most
    depth = 0
    for match in _JSON_STRUCTURE.finditer(body):
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
            if depth > limit:
                return False
        elif token in (b"}", b"]"):
            depth -= 1
    return True


def _type_ok(annotation: Any, value: Any) -> bool:
    # Annotations are strings under ``from __future__ import annotations``.
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "bool":
        return isinstance(value, bool)
    return False


class MessageReader:
    """Incremental decoder for the control stream: feed bytes, take whole messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= 4:
            (length,) = _LEN32.unpack_from(self._buf)
            if length > MAX_CONTROL_MESSAGE:
                raise ProtocolViolation(
                    f"control message of {length} bytes exceeds {MAX_CONTROL_MESSAGE}"
                )
            if len(self._buf) < 4 + length:
                break
            body = bytes(self._buf[4 : 4 + length])
            del self._buf[: 4 + length]
            out.append(decode_message(body))
        return out


# --------------------------------------------------------------------------------------
# per-visitor stream header


class StreamProtocol(IntEnum):
    TCP = 1
    HTTP = 2
    HTTPS = 3
    TLS = 4


STREAM_HEADER_VERSION = 1


#: A StreamHeader's endpoint id between two nodes of a cluster (relay/cluster/nodelink.py)
#: that asks the receiving node to join the stream to its agent's as it is (HTTP already
#: parsed and rewritten, TLS passed through, TCP as it comes), rather than serve it as a
#: visitor of its own. Never a real endpoint id (those are ``ep_`` and hex).
JOIN = "*"


@dataclass(frozen=True)
class StreamHeader:
    """What the agent needs to know about a visitor before the first byte of payload."""

    endpoint_id: str
    visitor_addr: str  # "ip:port" (IPv6 as "[ip]:port")
    protocol: StreamProtocol = StreamProtocol.TCP
    server_name: str = ""  # SNI or Host, when the protocol has one
    extra: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> bytes:
        parts = [bytes((STREAM_HEADER_VERSION, int(self.protocol)))]
        strings = [self.endpoint_id, self.visitor_addr, self.server_name]
        for key, value in self.extra.items():
            strings += [key, value]
        for text in strings:
            raw = text.encode()
            parts.append(_LEN16.pack(len(raw)))
            parts.append(raw)
        body = b"".join(parts)
        if len(body) > MAX_STREAM_HEADER:
            raise ProtocolViolation(f"stream header too large ({len(body)} bytes)")
        return _LEN16.pack(len(body)) + body

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> tuple[StreamHeader, int] | None:
        """Parse from the start of ``data``. Returns (header, bytes used), or None when
        more bytes are needed.

        Runs once per visitor connection on the agent, so it indexes ``data`` directly
        (no struct calls, no copy of the body) and builds the header without the frozen
        dataclass's ``__init__`` (one ``object.__setattr__`` per field)."""
        if isinstance(data, memoryview):
            data = bytes(data[: 2 + MAX_STREAM_HEADER])
        size = len(data)
        if size < 2:
            return None
        length = (data[0] << 8) | data[1]
        if length > MAX_STREAM_HEADER or length < 2:
            raise ProtocolViolation(f"stream header length {length} out of range")
        end = 2 + length
        if size < end:
            return None
        version = data[2]
        if version != STREAM_HEADER_VERSION:
            raise UnsupportedVersion(f"stream header version {version}")
        protocol = _STREAM_PROTOCOLS.get(data[3])
        if protocol is None:
            raise ProtocolViolation(f"unknown stream protocol {data[3]}")
        strings: list[str] = []
        pos = 4
        while pos < end:
            if pos + 2 > end:
                raise ProtocolViolation("truncated stream header field")
            n = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if pos + n > end:
                raise ProtocolViolation("truncated stream header field")
            try:
                strings.append(data[pos : pos + n].decode())
            except UnicodeDecodeError:
                raise ProtocolViolation("stream header field is not UTF-8") from None
            pos += n
        count = len(strings)
        if count < 3 or count % 2 == 0:
            raise ProtocolViolation("stream header has the wrong number of fields")
        header = _new_object(cls)
        header.__dict__.update(
            endpoint_id=strings[0],
            visitor_addr=strings[1],
            protocol=protocol,
            server_name=strings[2],
            extra=dict(zip(strings[3::2], strings[4::2], strict=True)) if count > 3 else {},
        )
        return header, end


_STREAM_PROTOCOLS = {int(p): p for p in StreamProtocol}
_new_object = object.__new__
