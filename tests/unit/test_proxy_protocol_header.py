"""PROXY protocol v1/v2 encoders against the spec's byte layouts, and a round trip through a
small decoder written here from the spec (independent of the encoder's code)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.agent.proxy_protocol import (
    MAX_V1_LENGTH,
    PP2_TYPE_AUTHORITY,
    V2_SIGNATURE,
    encode,
    encode_v1,
    encode_v1_unknown,
    encode_v2,
    encode_v2_local,
    parse_visitor_addr,
)
from relay.errors import ProtocolViolation

SIG = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])


# --------------------------------------------------------------------------------------
# an independent decoder (spec sections 2.1 and 2.2)


def decode_v1(data: bytes) -> tuple[str, tuple[str, int] | None, tuple[str, int] | None]:
    end = data.index(b"\r\n")
    assert end + 2 <= MAX_V1_LENGTH
    line = data[:end].decode("ascii")
    assert "\r" not in line and "\n" not in line
    parts = line.split(" ")
    assert parts[0] == "PROXY"
    if parts[1] == "UNKNOWN":
        return "UNKNOWN", None, None
    assert len(parts) == 6, parts
    proto, src, dst, sport, dport = parts[1:]
    for number in (sport, dport):
        assert number.isdigit() and (number == "0" or not number.startswith("0"))
        assert 0 <= int(number) <= 65535
    if proto == "TCP4":
        for text in (src, dst):
            octets = text.split(".")
            assert len(octets) == 4
            assert all(o.isdigit() and (o == "0" or not o.startswith("0")) for o in octets)
        src_ip: str = str(ipaddress.IPv4Address(src))
        dst_ip: str = str(ipaddress.IPv4Address(dst))
    else:
        assert proto == "TCP6"
        assert "." not in src and "." not in dst  # hex groups only
        src_ip, dst_ip = str(ipaddress.IPv6Address(src)), str(ipaddress.IPv6Address(dst))
    return proto, (src_ip, int(sport)), (dst_ip, int(dport))


def decode_v2(
    data: bytes,
) -> tuple[int, int, tuple[str, int] | None, tuple[str, int] | None, list[tuple[int, bytes]]]:
    assert data[:12] == SIG
    ver_cmd, fam = data[12], data[13]
    (length,) = struct.unpack(">H", data[14:16])
    assert len(data) == 16 + length
    body = data[16:]
    assert ver_cmd >> 4 == 2
    command = ver_cmd & 0x0F
    src: tuple[str, int] | None = None
    dst: tuple[str, int] | None = None
    if fam == 0x11:
        src_b, dst_b, ports, rest = body[:4], body[4:8], body[8:12], body[12:]
        sport, dport = struct.unpack(">HH", ports)
        src = (str(ipaddress.IPv4Address(src_b)), sport)
        dst = (str(ipaddress.IPv4Address(dst_b)), dport)
    elif fam == 0x21:
        src_b, dst_b, ports, rest = body[:16], body[16:32], body[32:36], body[36:]
        sport, dport = struct.unpack(">HH", ports)
        src = (str(ipaddress.IPv6Address(src_b)), sport)
        dst = (str(ipaddress.IPv6Address(dst_b)), dport)
    else:
        assert fam == 0x00
        rest = body
    tlvs: list[tuple[int, bytes]] = []
    while rest:
        kind = rest[0]
        (size,) = struct.unpack(">H", rest[1:3])
        assert len(rest) >= 3 + size
        tlvs.append((kind, rest[3 : 3 + size]))
        rest = rest[3 + size :]
    return command, fam, src, dst, tlvs


# --------------------------------------------------------------------------------------
# v1 layouts


def test_v1_ipv4_exact_line() -> None:
    line = encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert line == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_ipv6_compressed_form() -> None:
    line = encode_v1(("2001:db8:0:0:0:0:0:1", 1), ("[::1]", 80))
    assert line == b"PROXY TCP6 2001:db8::1 ::1 1 80\r\n"


def test_v1_longest_lines_fit_the_spec_limit() -> None:
    v4 = encode_v1(("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert len(v4) == 56
    full = "ffff:" * 7 + "ffff"
    v6 = encode_v1((full, 65535), (full, 65535))
    assert len(v6) == 104 <= MAX_V1_LENGTH


def test_v1_mixed_families_map_ipv4_into_ipv6_hex_groups() -> None:
    line = encode_v1(("2001:db8::7", 4000), ("10.1.2.3", 443))
    assert line == b"PROXY TCP6 2001:db8::7 ::ffff:a01:203 4000 443\r\n"
    proto, src, dst = decode_v1(line)
    assert (proto, src, dst) == ("TCP6", ("2001:db8::7", 4000), ("::ffff:a01:203", 443))


def test_v1_unknown() -> None:
    assert encode_v1_unknown() == b"PROXY UNKNOWN\r\n"


def test_v1_zone_index_is_dropped() -> None:
    assert encode_v1(("fe80::1%eth0", 5), ("fe80::2", 6)) == b"PROXY TCP6 fe80::1 fe80::2 5 6\r\n"


@pytest.mark.parametrize(
    ("src", "dst", "match"),
    [
        (("example.com", 1), ("1.2.3.4", 2), "source address 'example.com'"),
        (("1.2.3.4", 1), ("", 2), "destination address ''"),
        (("1.2.3.4", 65536), ("1.2.3.4", 2), "source port 65536"),
        (("1.2.3.4", 1), ("1.2.3.4", -1), "destination port -1"),
        (("01.2.3.4", 1), ("1.2.3.4", 2), "not an IP literal"),
    ],
)
def test_bad_arguments_are_value_errors(
    src: tuple[str, int], dst: tuple[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        encode_v1(src, dst)
    with pytest.raises(ValueError, match=match):
        encode_v2(src, dst)


# --------------------------------------------------------------------------------------
# v2 layouts


def test_v2_signature_constant_matches_spec() -> None:
    assert V2_SIGNATURE == SIG


def test_v2_ipv4_byte_layout() -> None:
    header = encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header[:12] == SIG
    assert header[12] == 0x21  # version 2, command PROXY
    assert header[13] == 0x11  # AF_INET, STREAM
    assert header[14:16] == b"\x00\x0c"  # 2*4 + 2*2
    assert header[16:20] == bytes([192, 168, 0, 1])
    assert header[20:24] == bytes([192, 168, 0, 11])
    assert header[24:28] == struct.pack(">HH", 56324, 443)
    assert len(header) == 28


def test_v2_ipv6_byte_layout() -> None:
    header = encode_v2(("2001:db8::1", 1), ("::1", 65535))
    assert header[12:14] == b"\x21\x21"  # PROXY; AF_INET6, STREAM
    assert header[14:16] == b"\x00\x24"  # 2*16 + 2*2 = 36
    assert header[16:32] == ipaddress.IPv6Address("2001:db8::1").packed
    assert header[32:48] == ipaddress.IPv6Address("::1").packed
    assert header[48:52] == b"\x00\x01\xff\xff"
    assert len(header) == 52


def test_v2_mixed_families_use_ipv6() -> None:
    command, fam, src, dst, _ = decode_v2(encode_v2(("127.0.0.1", 9), ("::1", 10)))
    assert (command, fam) == (1, 0x21)
    assert src == ("::ffff:7f00:1", 9)
    assert dst == ("::1", 10)


def test_v2_tlvs_follow_addresses_and_count_in_length() -> None:
    header = encode_v2(
        ("1.2.3.4", 5), ("6.7.8.9", 10), tlvs={PP2_TYPE_AUTHORITY: b"app.example.com", 0xE0: b""}
    )
    (length,) = struct.unpack(">H", header[14:16])
    assert length == 12 + 3 + 15 + 3
    assert header[28:31] == b"\x02\x00\x0f"
    assert header[31:46] == b"app.example.com"
    assert header[46:] == b"\xe0\x00\x00"


def test_v2_local() -> None:
    assert encode_v2_local() == SIG + b"\x20\x00\x00\x00"
    command, fam, src, dst, tlvs = decode_v2(encode_v2_local(tlvs={0x05: b"id"}))
    assert (command, fam, src, dst, tlvs) == (0, 0, None, None, [(5, b"id")])


@pytest.mark.parametrize(
    ("tlvs", "match"),
    [
        ({256: b"x"}, "TLV type 256"),
        ({-1: b"x"}, "TLV type -1"),
        ({1: b"x" * 65536}, "exceeds 65535"),
        ({1: b"x" * 40000, 2: b"y" * 40000}, "header body"),
    ],
)
def test_v2_bad_tlvs(tlvs: dict[int, bytes], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_v2(("1.2.3.4", 1), ("1.2.3.4", 2), tlvs=tlvs)


def test_encode_dispatch() -> None:
    src, dst = ("1.2.3.4", 1), ("5.6.7.8", 2)
    assert encode("none", src, dst) == b""
    assert encode("v1", src, dst) == encode_v1(src, dst)
    assert encode("v2", src, dst) == encode_v2(src, dst)
    assert encode("v1", None, dst) == encode_v1_unknown()
    assert encode("v2", src, None) == encode_v2_local()
    with pytest.raises(ValueError, match="'v3'"):
        encode("v3", src, dst)


# --------------------------------------------------------------------------------------
# round trips


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


def _norm(host: str) -> str:
    return str(ipaddress.ip_address(host))


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports)
def test_v1_round_trip_same_family(hosts: tuple[str, str], sport: int, dport: int) -> None:
    line = encode_v1((hosts[0], sport), (hosts[1], dport))
    proto, src, dst = decode_v1(line)
    assert proto == ("TCP4" if ":" not in hosts[0] else "TCP6")
    assert src == (_norm(hosts[0]), sport)
    assert dst == (_norm(hosts[1]), dport)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), st.tuples(ipv4, ipv6)),
    ports,
    ports,
    st.dictionaries(st.integers(0, 255), st.binary(max_size=64), max_size=4),
)
def test_v2_round_trip(
    hosts: tuple[str, str], sport: int, dport: int, tlvs: dict[int, bytes]
) -> None:
    header = encode_v2((hosts[0], sport), (hosts[1], dport), tlvs=tlvs)
    command, fam, src, dst, got_tlvs = decode_v2(header)
    assert command == 1
    assert src is not None and dst is not None
    if ":" in hosts[0] or ":" in hosts[1]:
        assert fam == 0x21
        assert ipaddress.IPv6Address(src[0]) in _v6_forms(hosts[0])
        assert ipaddress.IPv6Address(dst[0]) in _v6_forms(hosts[1])
    else:
        assert fam == 0x11
        assert (src[0], dst[0]) == (_norm(hosts[0]), _norm(hosts[1]))
    assert (src[1], dst[1]) == (sport, dport)
    assert got_tlvs == list(tlvs.items())


def _v6_forms(host: str) -> set[ipaddress.IPv6Address]:
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv4Address):
        return {ipaddress.IPv6Address((0xFFFF << 32) | int(addr))}
    return {addr}


# --------------------------------------------------------------------------------------
# StreamHeader.visitor_addr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4:5", ("1.2.3.4", 5)),
        ("[::1]:5", ("::1", 5)),
        ("[2001:DB8:0::1]:65535", ("2001:db8::1", 65535)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ],
)
def test_parse_visitor_addr(text: str, expected: tuple[str, int]) -> None:
    assert parse_visitor_addr(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:+5",
        "1.2.3.4:\u0665",  # a non-ASCII digit
        "::1:5",
        "[1.2.3.4]:5",
        "[::1:5",
        "example.com:80",
        ":80",
        "1.2.3.4:000080",
    ],
)
def test_parse_visitor_addr_rejects(text: str) -> None:
    with pytest.raises(ProtocolViolation):
        parse_visitor_addr(text)


@given(st.ip_addresses(), ports)
def test_visitor_addr_round_trip_into_headers(addr: object, port: int) -> None:
    host = str(addr)
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    parsed = parse_visitor_addr(text)
    assert parsed == (host, port)
    proto, src, _ = decode_v1(encode_v1(parsed, parsed))
    assert src == (host, port)
    assert proto in ("TCP4", "TCP6")
