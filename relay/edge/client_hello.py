"""Read a TLS ClientHello — and nothing more — to route a TLS connection by its server name
without terminating it (``tls`` endpoints pass the encryption through to the agent).

:func:`parse_client_hello` is stateless: the caller keeps the bytes received so far and
calls it again after every read. It returns ``None`` while more bytes are needed, a
:class:`ClientHello` once the whole message is there, and raises :class:`ClientHelloError`
(a :class:`~relay.errors.ProtocolViolation`, RLY_301) as soon as the input cannot be the
start of a valid ClientHello — so a visitor speaking plain HTTP or sending garbage is
refused on its first bytes, not after a timeout.

What is checked (RFC 8446 §4.1.2 and §5.1, RFC 6066 §3, RFC 7301 §3.1):

* records: content type handshake (22), legacy record version 3.x, 1..2^14 bytes each; a
  ClientHello split over several records and any TCP split point are fine; any other
  record type before the hello is complete is an error;
* the handshake message is a ClientHello (type 1) of at most :data:`MAX_CLIENT_HELLO`
  bytes, so the whole read is bounded (:data:`MAX_CONSUMED` bytes of records);
* every length field fits exactly inside its parent; no extension type appears twice;
* ``server_name``: at most one ``host_name`` entry, a syntactically valid DNS name
  (letters, digits, ``-``, ``_``; no IP literal, no trailing dot), returned lowercased;
* ``application_layer_protocol_negotiation``: non-empty printable-ASCII names.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from relay.errors import ProtocolViolation

__all__ = [
    "MAX_CLIENT_HELLO",
    "MAX_CONSUMED",
    "ClientHello",
    "ClientHelloError",
    "parse_client_hello",
]

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
_CONTENT_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_MAX_RECORD = 1 << 14

#: Largest ClientHello message accepted (handshake header included).
MAX_CLIENT_HELLO = 16 * 1024
#: Most bytes of records the parser reads before giving up (one full record's worth).
MAX_CONSUMED = MAX_CLIENT_HELLO + _RECORD_HEADER

_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ")


class ClientHelloError(ProtocolViolation):
    """The bytes are not (the start of) a TLS ClientHello we accept."""


@dataclass(frozen=True)
class ClientHello:
    #: SNI ``host_name``, lowercased; None when the client sent none.
    server_name: str | None
    #: ALPN protocol names in the client's order; empty when it offered none.
    alpn: tuple[str, ...]
    #: ``legacy_version`` of the ClientHello (0x0303 for TLS 1.2 and 1.3 clients).
    legacy_version: int
    #: From the ``supported_versions`` extension, in the client's order (may hold GREASE).
    supported_versions: tuple[int, ...]
    #: Bytes of TLS records read, record headers included: the records that carried the
    #: ClientHello, up to the end of the one holding its last byte.
    consumed: int


class _Reader:
    """Bounds-checked cursor over one length-delimited block."""

    __slots__ = ("data", "end", "pos", "what")

    def __init__(self, data: bytes, what: str, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end
        self.what = what

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n > self.remaining():
            raise ClientHelloError(
                f"ClientHello: {field} needs {n} bytes, {self.what} has {self.remaining()} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def block(self, size: int, field: str) -> _Reader:
        """A sub-reader over a block prefixed by a ``size``-byte length."""
        length = self.uint(size, f"{field} length")
        if length > self.remaining():
            raise ClientHelloError(
                f"ClientHello: {field} length {length} exceeds the {self.remaining()} bytes "
                f"left in {self.what}"
            )
        sub = _Reader(self.data, field, self.pos, self.pos + length)
        self.pos += length
        return sub

    def done(self, field: str) -> None:
        if self.pos != self.end:
            raise ClientHelloError(f"ClientHello: {self.end - self.pos} stray bytes after {field}")


def _not_tls(data: bytes) -> ClientHelloError:
    if data[:4] in _HTTP_METHODS or data[:1].isupper():
        return ClientHelloError("not TLS: this looks like plain text (HTTP?) sent to a TLS port")
    if data[0] & 0x80:
        return ClientHelloError("not TLS: SSLv2-style hellos are not supported")
    return ClientHelloError(f"not TLS: first byte {data[0]:#04x} is not a handshake record")


def _records(data: bytes) -> tuple[bytes, int]:
    """Concatenate the handshake payload of the complete records at the start of ``data``,
    stopping after the record that completes the ClientHello.

    Returns (payload so far, bytes of records consumed). Validates each record header, and
    the handshake header, as soon as their bytes arrive.
    """
    payload = bytearray()
    pos = 0
    while pos < len(data):
        header = data[pos : pos + _RECORD_HEADER]
        if header[0] != _CONTENT_HANDSHAKE:
            if pos == 0:
                raise _not_tls(data)
            raise ClientHelloError(
                f"record of content type {header[0]} arrived before the ClientHello was complete"
            )
        if len(header) >= 2 and header[1] != 3:
            raise ClientHelloError(f"record version {header[1]}.x is not TLS")
        if len(header) < _RECORD_HEADER:
            break
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > _MAX_RECORD:
            raise ClientHelloError(f"handshake record length {length} is out of 1..{_MAX_RECORD}")
        if pos + _RECORD_HEADER + length > MAX_CONSUMED:
            raise ClientHelloError(f"ClientHello does not fit in {MAX_CONSUMED} bytes of records")
        if pos + _RECORD_HEADER + length > len(data):
            # Incomplete record: still check what can be seen of the handshake header.
            _check_handshake_header(bytes(payload + data[pos + _RECORD_HEADER :]))
            break
        payload += data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        _check_handshake_header(bytes(payload))
        if _hello_size(payload) <= len(payload):
            break
    return bytes(payload), pos


def _hello_size(payload: bytes | bytearray) -> int:
    """Bytes the ClientHello message needs (header included); huge while unknown."""
    if len(payload) < _HANDSHAKE_HEADER:
        return 1 << 30
    return _HANDSHAKE_HEADER + int.from_bytes(payload[1:4], "big")


def _check_handshake_header(payload: bytes) -> None:
    if payload and payload[0] != _HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError(f"first handshake message is type {payload[0]}, not ClientHello")
    if len(payload) >= _HANDSHAKE_HEADER:
        length = int.from_bytes(payload[1:4], "big")
        if _HANDSHAKE_HEADER + length > MAX_CLIENT_HELLO:
            raise ClientHelloError(
                f"ClientHello of {length} bytes exceeds the {MAX_CLIENT_HELLO}-byte limit"
            )


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data`` (everything received so far).

    ``None``: not enough bytes yet — read more and call again. Raises
    :class:`ClientHelloError` for anything that is not a valid ClientHello, including one
    that would exceed :data:`MAX_CLIENT_HELLO`.
    """
    raw = bytes(data[:MAX_CONSUMED])
    if not raw:
        return None
    payload, consumed = _records(raw)
    needed = _hello_size(payload)
    if len(payload) > needed:
        raise ClientHelloError(
            f"{len(payload) - needed} bytes of another handshake message share the "
            "ClientHello's record"
        )
    if len(payload) == needed:
        return _parse_body(payload[_HANDSHAKE_HEADER:needed], consumed)
    if len(data) >= MAX_CONSUMED:
        # Every record of a ClientHello lies within the first MAX_CONSUMED bytes; it isn't
        # complete there, so it never will be.
        raise ClientHelloError(f"ClientHello does not fit in {MAX_CONSUMED} bytes of records")
    return None


def _parse_body(body: bytes, consumed: int) -> ClientHello:
    r = _Reader(body, "ClientHello")
    legacy_version = r.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise ClientHelloError(f"ClientHello legacy_version {legacy_version:#06x} is not TLS")
    r.take(32, "random")
    session_id = r.block(1, "legacy_session_id")
    if session_id.remaining() > 32:
        raise ClientHelloError("ClientHello legacy_session_id is longer than 32 bytes")
    suites = r.block(2, "cipher_suites")
    if suites.remaining() < 2 or suites.remaining() % 2:
        raise ClientHelloError("ClientHello cipher_suites must be a non-empty list of 2-byte ids")
    compression = r.block(1, "legacy_compression_methods")
    if compression.remaining() < 1:
        raise ClientHelloError("ClientHello offers no compression method (not even null)")

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if r.remaining():  # extensions are optional before TLS 1.3
        extensions = r.block(2, "extensions")
        r.done("extensions")
        seen: set[int] = set()
        while extensions.remaining():
            ext_type = extensions.uint(2, "extension type")
            ext = extensions.block(2, f"extension {ext_type}")
            if ext_type in seen:
                raise ClientHelloError(f"ClientHello repeats extension {ext_type}")
            seen.add(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                server_name = _server_name(ext)
            elif ext_type == _EXT_ALPN:
                alpn = _alpn(ext)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _supported_versions(ext)
    return ClientHello(
        server_name=server_name,
        alpn=alpn,
        legacy_version=legacy_version,
        supported_versions=versions,
        consumed=consumed,
    )


def _server_name(ext: _Reader) -> str | None:
    names = ext.block(2, "server_name_list")
    ext.done("server_name extension")
    if not names.remaining():
        # An empty extension is what a *server* sends; from a client it is malformed.
        raise ClientHelloError("ClientHello server_name list is empty")
    host: str | None = None
    while names.remaining():
        name_type = names.uint(1, "server name type")
        value = names.block(2, "server name")
        raw = value.take(value.remaining(), "server name")
        if name_type != 0:
            continue  # unknown name types are skipped (none are defined today)
        if host is not None:
            raise ClientHelloError("ClientHello carries more than one host_name")
        host = _hostname(raw)
    return host


def _hostname(raw: bytes) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ClientHelloError("SNI host_name is not ASCII (IDNs travel as xn-- labels)") from None
    name = text.lower()
    if not name or len(name) > 253:
        raise ClientHelloError(f"SNI host_name {text!r} has an invalid length")
    if name.endswith("."):
        raise ClientHelloError(f"SNI host_name {text!r} ends with a dot")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ClientHelloError(f"SNI host_name {text!r} is an IP address literal")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ClientHelloError(f"SNI host_name {text!r} is not a valid DNS name")
    return name


def _alpn(ext: _Reader) -> tuple[str, ...]:
    names = ext.block(2, "protocol_name_list")
    ext.done("ALPN extension")
    if not names.remaining():
        raise ClientHelloError("ClientHello ALPN list is empty")
    out: list[str] = []
    while names.remaining():
        value = names.block(1, "ALPN protocol name")
        raw = value.take(value.remaining(), "ALPN protocol name")
        if not raw:
            raise ClientHelloError("ClientHello ALPN protocol name is empty")
        if not all(0x21 <= b <= 0x7E for b in raw):
            raise ClientHelloError(f"ClientHello ALPN protocol name {raw!r} is not printable ASCII")
        out.append(raw.decode("ascii"))
    return tuple(out)


def _supported_versions(ext: _Reader) -> tuple[int, ...]:
    versions = ext.block(1, "supported_versions")
    ext.done("supported_versions extension")
    if versions.remaining() < 2 or versions.remaining() % 2:
        raise ClientHelloError("ClientHello supported_versions must list 2-byte versions")
    return tuple(versions.uint(2, "version") for _ in range(versions.remaining() // 2))
