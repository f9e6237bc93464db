"""The PROXY protocol v1/v2 parser (letterbird.proto.proxy): pure bytes in, events out."""

from __future__ import annotations

import ast
import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import letterbird.proto.proxy as proxy_module
from letterbird.proto.proxy import (
    NEED_DATA,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
)


def parse(data: bytes, **kw: int) -> ProxyHeader | ProxyError:
    r = ProxyHeaderReader(**kw)
    r.receive_data(data)
    ev = r.next_event()
    assert ev is not NEED_DATA, data
    assert isinstance(ev, ProxyHeader | ProxyError)
    return ev


def read_exactly(data: bytes) -> tuple[ProxyHeader | ProxyError, int]:
    """Feed the way the edge does: never more than bytes_wanted. Returns (event, bytes used)."""
    r = ProxyHeaderReader()
    used = 0
    while True:
        ev = r.next_event()
        if ev is not NEED_DATA:
            assert isinstance(ev, ProxyHeader | ProxyError)
            assert r.bytes_wanted == 0
            return ev, used
        want = r.bytes_wanted
        assert want >= 1
        chunk = data[used : used + want]
        assert chunk, "the reader wanted more than the header"
        r.receive_data(chunk)
        used += len(chunk)


# -- version 1 ----------------------------------------------------------------------------------
def test_v1_tcp4_and_tcp6() -> None:
    h = parse(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 25\r\n")
    assert h == ProxyHeader(1, False, ("192.0.2.10", 56324), ("198.51.100.1", 25), (), 45)
    h6 = parse(b"PROXY TCP6 2001:DB8::1 2001:db8::2 0 65535\r\n")
    assert isinstance(h6, ProxyHeader)
    assert h6.source == ("2001:db8::1", 0) and h6.destination == ("2001:db8::2", 65535)


def test_v1_unknown_keeps_the_real_endpoints() -> None:
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"):
        h = parse(line)
        assert isinstance(h, ProxyHeader) and h.local and h.source is None


def test_v1_longest_line_is_accepted() -> None:
    six = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH
    assert isinstance(parse(line), ProxyHeader)
    assert parse(line[:-2] + b"0\r\n") == ProxyError("PROXY v1 line longer than 107 octets")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.010 198.51.100.1 1 2\r\n",  # leading zero in an address
        b"PROXY TCP4 192.0.2.1 198.51.100.1 01 2\r\n",  # leading zero in a port
        b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 2\r\n",  # port out of range
        b"PROXY TCP4 192.0.2.1  198.51.100.1 1 2\r\n",  # two spaces
        b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n",  # zone id
        b"PROXY UDP4 192.0.2.1 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.1 1 2 3\r\n",
        b"PROXY TCP4 300.0.2.1 198.51.100.1 1 2\r\n",
        b"PROXY UNKNOWN\x01\r\n",
    ],
)
def test_v1_malformed_lines(line: bytes) -> None:
    assert isinstance(parse(line), ProxyError)


def test_v1_needs_crlf() -> None:
    assert parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n") == ProxyError(
        "PROXY v1 line not ended by CRLF"
    )
    assert parse(b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2") == ProxyError(
        "PROXY v1 line not ended by CRLF"
    )
    assert parse(b"PROXY " + b"x" * 120) == ProxyError("PROXY v1 line longer than 107 octets")
    r = ProxyHeaderReader()
    r.receive_data(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")  # the LF may come in the next read
    assert r.next_event() is NEED_DATA


# -- version 2 ----------------------------------------------------------------------------------
def test_v2_tcp4_tcp6_with_tlvs() -> None:
    h = parse(encode_v2(("192.0.2.10", 40000), ("198.51.100.1", 587), ((0x02, b"mx.test"),)))
    assert isinstance(h, ProxyHeader)
    assert (h.version, h.local, h.source, h.destination) == (
        2,
        False,
        ("192.0.2.10", 40000),
        ("198.51.100.1", 587),
    )
    assert h.tlvs == ((0x02, b"mx.test"),) and h.length == 16 + 12 + 10
    h6 = parse(encode_v2(("2001:db8::7", 1), ("2001:db8::8", 993)))
    assert isinstance(h6, ProxyHeader) and h6.source == ("2001:db8::7", 1)


def test_v2_local_and_unspec_keep_the_real_endpoints() -> None:
    local = parse(encode_v2(None, None))
    assert isinstance(local, ProxyHeader) and local.local and local.source is None
    # LOCAL with an address block: the block is skipped, not trusted
    block = ipaddress.ip_address("192.0.2.1").packed * 2 + struct.pack("!HH", 1, 2)
    local2 = parse(V2_SIGNATURE + bytes([0x20, 0x11]) + struct.pack("!H", 12) + block)
    assert isinstance(local2, ProxyHeader) and local2.local and local2.source is None
    unspec = parse(V2_SIGNATURE + bytes([0x21, 0x00, 0, 3]) + b"abc")
    assert isinstance(unspec, ProxyHeader) and not unspec.local and unspec.source is None
    unix = parse(V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 216) + b"\0" * 216)
    assert isinstance(unix, ProxyHeader) and unix.source is None


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (V2_SIGNATURE + bytes([0x11, 0x11, 0, 0]), "version 1 is not 2"),
        (V2_SIGNATURE + bytes([0x22, 0x11, 0, 0]), "unknown command 2"),
        (V2_SIGNATURE + bytes([0x21, 0x41, 0, 0]), "unknown address family"),
        (V2_SIGNATURE + bytes([0x21, 0x13, 0, 0]), "unknown address family"),
        (V2_SIGNATURE + bytes([0x21, 0x12, 0, 12]) + b"\0" * 12, "DGRAM"),
        (V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + b"\0" * 4, "shorter than its family"),
        (V2_SIGNATURE + bytes([0x21, 0x11, 0, 14]) + b"\0" * 14, "malformed TLV"),
        (V2_SIGNATURE + bytes([0x21, 0x11, 0, 16]) + b"\0" * 12 + b"\x01\0\x09\0", "TLV"),
        (V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]), "exceeds 4096"),
    ],
)
def test_v2_malformed(header: bytes, reason: str) -> None:
    ev = parse(header)
    assert isinstance(ev, ProxyError) and reason in ev.reason


def test_not_a_proxy_header() -> None:
    for data in (b"EHLO client\r\n", b"\r\n\r\nX", b"PROXX", b"GET / HTTP/1.1\r\n"):
        assert isinstance(parse(data), ProxyError)
    for prefix in (b"PRO", b"\r\n\r\n\x00", b"PROXY TCP4 1.2", V2_SIGNATURE + b"\x21"):
        r = ProxyHeaderReader()
        r.receive_data(prefix)
        assert r.next_event() is NEED_DATA
    assert ProxyHeaderReader().next_event() is NEED_DATA


# -- the edge's reading discipline --------------------------------------------------------------
addresses4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
addresses6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
ports = st.integers(0, 65535)


@settings(deadline=None)
@given(
    st.one_of(
        st.tuples(addresses4, ports, addresses4, ports),
        st.tuples(addresses6, ports, addresses6, ports),
    ),
    st.sampled_from([1, 2]),
    st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=3),
    st.binary(max_size=50),
)
def test_headers_never_consume_the_protocols_bytes(
    addrs: tuple[str, int, str, int],
    version: int,
    tlvs: list[tuple[int, bytes]],
    rest: bytes,
) -> None:
    src, sport, dst, dport = addrs
    header = (
        encode_v1((src, sport), (dst, dport))
        if version == 1
        else encode_v2((src, sport), (dst, dport), tuple(tlvs))
    )
    ev, used = read_exactly(header + rest)
    assert isinstance(ev, ProxyHeader), ev
    assert used == len(header) == ev.length
    assert ev.source == (src, sport) and ev.destination == (dst, dport)
    # fed all at once: the same header, and the rest handed back as trailing data
    r = ProxyHeaderReader()
    r.receive_data(header + rest)
    assert r.next_event() == ev and r.trailing_data == rest
    r.receive_data(b"more")
    assert r.trailing_data == rest + b"more" and r.next_event() == ev


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    r = ProxyHeaderReader(max_v2_length=64)
    for i in range(0, len(data), 7):
        r.receive_data(data[i : i + 7])
        ev = r.next_event()
        assert ev is NEED_DATA or isinstance(ev, ProxyHeader | ProxyError)
        if ev is not NEED_DATA:
            break
    assert r.bytes_wanted >= 0


def test_unknown_v1_via_encoder() -> None:
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert encode_v1(("::1", 1), ("::2", 2)) == b"PROXY TCP6 ::1 ::2 1 2\r\n"


def test_module_is_sans_io() -> None:
    tree = ast.parse(Path(proxy_module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"socket", "asyncio", "threading", "time", "letterbird"}
