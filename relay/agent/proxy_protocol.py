"""PROXY protocol headers (HAProxy's spec, versions 1 and 2), sender side only.

The agent writes one header to the upstream before the first byte of the visitor's data, so
a service behind relay (nginx ``proxy_protocol``, HAProxy ``accept-proxy``, Postfix, …)
sees the visitor's address instead of the agent's.

* **v1** is one line of ASCII: ``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n``
  (``TCP6`` for IPv6; at most 107 bytes).
* **v2** is binary: a 12-byte signature, a version/command byte (``0x21`` = version 2,
  PROXY), a family/transport byte (``0x11`` TCP over IPv4, ``0x21`` TCP over IPv6), a 2-byte
  big-endian length of what follows, the addresses and ports in network order, then
  optional TLVs (type byte, 2-byte length, value).

Mixed families (an IPv6 visitor, an IPv4 destination or the reverse): the spec requires both
addresses of one line/block to share a family, and discourages ``UNKNOWN`` when the
receiver is expected to accept the connection. So, as HAProxy itself does, the IPv4 side is
written as an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) and the header is ``TCP6`` /
``0x21``: the visitor's real address still arrives. :func:`encode_v1_unknown` and
:func:`encode_v2_local` exist for when there is no address to present at all.

Encoders raise :class:`ValueError` for arguments that are not IP literals or valid ports
(a bug in the caller); :func:`parse_visitor_addr` raises
:class:`~relay.errors.ProtocolViolation`, because its input comes from the edge.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping

from relay.errors import ProtocolViolation

__all__ = [
    "MAX_V1_LENGTH",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID",
    "V2_SIGNATURE",
    "encode",
    "encode_v1",
    "encode_v1_unknown",
    "encode_v2",
    "encode_v2_local",
    "parse_visitor_addr",
]

#: The 12 bytes every v2 header starts with (contains a NUL; never treat as a C string).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Longest v1 line a receiver must accept, CRLF included.
MAX_V1_LENGTH = 107

_V2_VERSION = 0x20
_CMD_LOCAL = 0x00
_CMD_PROXY = 0x01
_FAM_UNSPEC = 0x00
_FAM_TCP4 = 0x11
_FAM_TCP6 = 0x21

#: Registered TLV types a sender may find useful (the spec, section 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05

_V2_FIXED = struct.Struct(">12sBBH")
_PORTS = struct.Struct(">HH")

Address = tuple[str, int]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str, what: str) -> _IP:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{what} address {host!r} is not an IP literal") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        # A zone index is meaningful only on the sending host; the header carries 128 bits.
        addr = ipaddress.IPv6Address(int(addr))
    return addr


def _port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{what} port {port!r} is not in 0..65535")
    return port


def _resolve(src: Address, dst: Address) -> tuple[_IP, int, _IP, int]:
    """Both addresses as one family (IPv4 mapped into IPv6 when they differ)."""
    src_ip, dst_ip = _ip(src[0], "source"), _ip(dst[0], "destination")
    src_port, dst_port = _port(src[1], "source"), _port(dst[1], "destination")
    if src_ip.version != dst_ip.version:
        src_ip, dst_ip = _as_v6(src_ip), _as_v6(dst_ip)
    return src_ip, src_port, dst_ip, dst_port


def _as_v6(addr: _IP) -> ipaddress.IPv6Address:
    if isinstance(addr, ipaddress.IPv6Address):
        return addr
    return ipaddress.IPv6Address((0xFFFF << 32) | int(addr))


def _v6_text(addr: ipaddress.IPv6Address) -> str:
    """Hex groups only: the spec's v1 grammar has no dotted-quad tail, even for
    ``::ffff:a.b.c.d`` (which some Python versions print that way)."""
    mapped = addr.ipv4_mapped
    if mapped is not None:
        value = int(mapped)
        return f"::ffff:{value >> 16:x}:{value & 0xFFFF:x}"
    return addr.compressed


# --------------------------------------------------------------------------------------
# version 1


def encode_v1(src: Address, dst: Address) -> bytes:
    """``PROXY TCP4|TCP6 <src ip> <dst ip> <src port> <dst port>\\r\\n``."""
    src_ip, src_port, dst_ip, dst_port = _resolve(src, dst)
    if isinstance(src_ip, ipaddress.IPv4Address) and isinstance(dst_ip, ipaddress.IPv4Address):
        proto, src_text, dst_text = "TCP4", str(src_ip), str(dst_ip)
    else:
        assert isinstance(src_ip, ipaddress.IPv6Address)
        assert isinstance(dst_ip, ipaddress.IPv6Address)
        proto, src_text, dst_text = "TCP6", _v6_text(src_ip), _v6_text(dst_ip)
    line = f"PROXY {proto} {src_text} {dst_text} {src_port} {dst_port}\r\n".encode("ascii")
    assert len(line) <= MAX_V1_LENGTH
    return line


def encode_v1_unknown() -> bytes:
    """The short ``UNKNOWN`` line: the receiver uses the real connection's addresses."""
    return b"PROXY UNKNOWN\r\n"


# --------------------------------------------------------------------------------------
# version 2


def _tlv_block(tlvs: Mapping[int, bytes] | None) -> bytes:
    if not tlvs:
        return b""
    parts: list[bytes] = []
    for kind, value in tlvs.items():
        if isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind <= 0xFF:
            raise ValueError(f"TLV type {kind!r} is not a byte")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError(f"TLV {kind:#04x} value must be bytes")
        raw = bytes(value)
        if len(raw) > 0xFFFF:
            raise ValueError(f"TLV {kind:#04x} value of {len(raw)} bytes exceeds 65535")
        parts.append(struct.pack(">BH", kind, len(raw)) + raw)
    return b"".join(parts)


def _v2(command: int, family: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 header body of {len(body)} bytes exceeds 65535")
    return _V2_FIXED.pack(V2_SIGNATURE, _V2_VERSION | command, family, len(body)) + body


def encode_v2(src: Address, dst: Address, *, tlvs: Mapping[int, bytes] | None = None) -> bytes:
    """Binary header, command PROXY, TCP over IPv4 (12 address bytes) or IPv6 (36), then
    ``tlvs`` in the mapping's order."""
    src_ip, src_port, dst_ip, dst_port = _resolve(src, dst)
    family = _FAM_TCP4 if src_ip.version == 4 else _FAM_TCP6
    body = src_ip.packed + dst_ip.packed + _PORTS.pack(src_port, dst_port) + _tlv_block(tlvs)
    return _v2(_CMD_PROXY, family, body)


def encode_v2_local(*, tlvs: Mapping[int, bytes] | None = None) -> bytes:
    """Command LOCAL, family UNSPEC, no address: the receiver keeps the real endpoints."""
    return _v2(_CMD_LOCAL, _FAM_UNSPEC, _tlv_block(tlvs))


def encode(version: str, src: Address | None, dst: Address | None) -> bytes:
    """The header an endpoint's ``proxy_protocol`` setting asks for (``"none"`` → ``b""``).
    With an address missing, v1 sends ``UNKNOWN`` and v2 a LOCAL header."""
    if version == "none":
        return b""
    if version not in ("v1", "v2"):
        raise ValueError(f"PROXY protocol version {version!r} is not none, v1 or v2")
    if src is None or dst is None:
        return encode_v1_unknown() if version == "v1" else encode_v2_local()
    return encode_v1(src, dst) if version == "v1" else encode_v2(src, dst)


# --------------------------------------------------------------------------------------
# StreamHeader.visitor_addr


def parse_visitor_addr(text: str) -> Address:
    """``"1.2.3.4:5"`` or ``"[::1]:5"`` (StreamHeader's text form) → ``(host, port)``.

    The host comes back as a normalised IP literal without brackets. Anything else — a
    hostname, an unbracketed IPv6 address, a port outside 0..65535 — is a
    :class:`ProtocolViolation`: the edge must only ever send these two forms.
    """
    if not isinstance(text, str) or len(text) > 64:
        raise ProtocolViolation(f"visitor address {text!r} is not IP:PORT")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ProtocolViolation(f"visitor address {text!r} is not IP:PORT")
    port = int(port_text)
    if port > 65535:
        raise ProtocolViolation(f"visitor address {text!r} has port out of range")
    bracketed = host.startswith("[") and host.endswith("]")
    inner = host[1:-1] if bracketed else host
    if not inner.isascii():
        raise ProtocolViolation(f"visitor address {text!r} is not IP:PORT")
    try:
        addr = ipaddress.ip_address(inner)
    except ValueError:
        raise ProtocolViolation(f"visitor address {text!r} is not IP:PORT") from None
    if (addr.version == 6) != bracketed:
        raise ProtocolViolation(
            f"visitor address {text!r}: IPv6 needs brackets, IPv4 must not have them"
        )
    return str(addr), port
