"""PROXY protocol v1 and v2 header parsing (HAProxy's ``doc/proxy-protocol.txt``), sans-IO.

A load balancer in TCP mode (HAProxy ``send-proxy``/``send-proxy-v2``, nginx ``proxy_protocol``,
cloud load balancers) prepends one header to each connection naming the real client and the
address it connected to (DESIGN.md §10: "who the client is"). This module only parses: feed it
bytes with :meth:`ProxyHeaderReader.receive_data`, ask :meth:`~ProxyHeaderReader.next_event`
for :data:`NEED_DATA`, a :class:`ProxyHeader` or a :class:`ProxyError`. No sockets, no clock.

The edge reads the header only from configured trusted peers and then *requires* it: the
specification forbids guessing whether a header is present (§2: "The receiver MUST be
configured to only receive the protocol … and MUST not try to guess"), and in protocols where
the server speaks first (SMTP, IMAP, POP3) a client would wait for the greeting forever anyway.
:attr:`ProxyHeaderReader.bytes_wanted` says how many bytes may be read next without reading
past the header, so the protocol's own bytes stay in the stream for its handler.

Hand-written because it is ~200 lines and the available Python packages either bring their own
socket handling or skip the v1 grammar checks the specification requires (no leading zeros,
exactly one space, CRLF within 107 bytes).

Version 1 (§2.1), one US-ASCII line::

    proxy-line = "PROXY" SP ( tcp4 / tcp6 / unknown ) CRLF   ; at most 107 octets with CRLF
    tcp4       = "TCP4" SP ipv4 SP ipv4 SP port SP port
    tcp6       = "TCP6" SP ipv6 SP ipv6 SP port SP port
    unknown    = "UNKNOWN" *( %x20-7E )                       ; the rest is ignored
    ipv4       = dec-octet 3( "." dec-octet )                 ; "Heading zeroes are not permitted"
    port       = "0" / %x31-39 0*4DIGIT                       ; 0..65535, no leading zeroes

Version 2 (§2.2), binary::

    sig[12]   = 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
    ver_cmd   = version (high nibble, must be 2) | command (0 LOCAL, 1 PROXY)
    fam       = family (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) << 4 | protocol (0 UNSPEC, 1 STREAM,
                2 DGRAM)
    len       = uint16, network order: bytes that follow (addresses, then TLVs)
    INET      = src_addr[4] dst_addr[4] src_port[2] dst_port[2]
    INET6     = src_addr[16] dst_addr[16] src_port[2] dst_port[2]
    UNIX      = src_addr[108] dst_addr[108]
    tlv       = type[1] length[2] value[length]

LOCAL (v2) and UNKNOWN (v1) connections, and the UNSPEC and UNIX families, keep the real
connection endpoints (:attr:`ProxyHeader.source` is None). DGRAM is refused: these are stream
listeners.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass

__all__ = [
    "NEED_DATA",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "NeedData",
    "ProxyError",
    "ProxyHeader",
    "ProxyHeaderReader",
    "encode_v1",
    "encode_v2",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN ffff:…:ffff ffff:…:ffff 65535 65535\r\n"
V1_MIN_LENGTH = 15  # "PROXY UNKNOWN\r\n"
V2_HEADER = 16  # signature, ver_cmd, fam, len

_V1_TCP = re.compile(
    rb"PROXY (TCP4|TCP6) ([0-9A-Fa-f.:]{1,39}) ([0-9A-Fa-f.:]{1,39}) "
    rb"(0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4})\r\n"
)
_V1_UNKNOWN = re.compile(rb"PROXY UNKNOWN[\x20-\x7e]*\r\n")

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_FAM_UNSPEC = 0x0
_FAM_INET = 0x1
_FAM_INET6 = 0x2
_FAM_UNIX = 0x3
_PROTO_UNSPEC = 0x0
_PROTO_STREAM = 0x1
_ADDRESS_LENGTH = {_FAM_INET: 12, _FAM_INET6: 36, _FAM_UNIX: 216}


class NeedData(enum.Enum):
    NEED_DATA = "need-data"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete, valid header."""

    version: int  # 1 or 2
    local: bool  # v2 LOCAL or v1 UNKNOWN: the proxy's own connection (health check)
    source: tuple[str, int] | None  # the real client; None: use the connection's peer
    destination: tuple[str, int] | None  # where the client connected; None: the socket's
    tlvs: tuple[tuple[int, bytes], ...] = ()  # v2 type-length-value extensions, as sent
    length: int = 0  # octets the header took on the wire


@dataclass(frozen=True, slots=True)
class ProxyError:
    """The bytes are not a valid header: the edge must close the connection (§2.1: "Any
    sequence which does not exactly match the protocol must be discarded and cause the receiver
    to abort the connection")."""

    reason: str


Event = NeedData | ProxyHeader | ProxyError


class ProxyHeaderReader:
    """Parse one PROXY header from the start of a connection.

    ``max_v2_length`` bounds the v2 address and TLV block (the format allows 65535 octets; a
    longer announcement is an error before any of it is buffered).
    """

    def __init__(self, max_v2_length: int = 4096) -> None:
        self.max_v2_length = max_v2_length
        self._buf = bytearray()
        self._result: ProxyHeader | ProxyError | None = None
        self.trailing_data = b""  # bytes received after the header (none if bytes_wanted held)

    def receive_data(self, data: bytes) -> None:
        if self._result is None:
            self._buf += data
        else:
            self.trailing_data += data

    @property
    def bytes_wanted(self) -> int:
        """How many bytes can be read next without going past the end of the header."""
        if self._result is not None:
            return 0
        n = len(self._buf)
        if n == 0:
            return V1_MIN_LENGTH  # either version: v1 lines have 15 octets or more, v2 16
        if self._buf.startswith(V2_SIGNATURE):
            if n < V2_HEADER:
                return V2_HEADER - n
            length = int.from_bytes(self._buf[14:16], "big")
            return max(V2_HEADER + length - n, 1)
        if V2_SIGNATURE.startswith(bytes(self._buf)):
            return V2_HEADER - n
        # version 1: the line ends at CRLF, which may come at any octet from the 15th on
        return max(V1_MIN_LENGTH - n, 1)

    def next_event(self) -> Event:
        if self._result is not None:
            return self._result
        result = self._parse()
        if result is NEED_DATA:
            return NEED_DATA
        assert not isinstance(result, NeedData)
        self._result = result
        return result

    # -- parsing -----------------------------------------------------------------------
    def _parse(self) -> Event:
        buf = bytes(self._buf)
        if not buf:
            return NEED_DATA
        if buf.startswith(V2_SIGNATURE):
            return self._parse_v2(buf)
        if V2_SIGNATURE.startswith(buf[: len(V2_SIGNATURE)]):
            return NEED_DATA  # a prefix of the v2 signature so far
        if buf.startswith(V1_PREFIX):
            return self._parse_v1(buf)
        if V1_PREFIX.startswith(buf[: len(V1_PREFIX)]):
            return NEED_DATA
        return ProxyError("the connection did not start with a PROXY protocol header")

    def _parse_v1(self, buf: bytes) -> Event:
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) >= V1_MAX_LENGTH:
                return ProxyError("PROXY v1 line longer than 107 octets")
            if b"\n" in buf or b"\r" in buf[:-1]:
                return ProxyError("PROXY v1 line not ended by CRLF")
            return NEED_DATA
        line = buf[: end + 2]
        self._keep(buf, len(line))
        if len(line) > V1_MAX_LENGTH:
            return ProxyError("PROXY v1 line longer than 107 octets")
        m = _V1_TCP.fullmatch(line)
        if m is None:
            if _V1_UNKNOWN.fullmatch(line):
                return ProxyHeader(1, True, None, None, (), len(line))
            return ProxyError("malformed PROXY v1 line")
        family, src, dst, sport, dport = (g.decode("ascii") for g in m.groups())
        try:
            ip_type: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = (
                ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
            )
            source = str(ip_type(src))
            destination = str(ip_type(dst))
        except ValueError:
            return ProxyError(f"bad {family} address in PROXY v1 line")
        if int(sport) > 65535 or int(dport) > 65535:
            return ProxyError("port out of range in PROXY v1 line")
        return ProxyHeader(1, False, (source, int(sport)), (destination, int(dport)), (), len(line))

    def _parse_v2(self, buf: bytes) -> Event:
        if len(buf) < V2_HEADER:
            return NEED_DATA
        ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
        if ver_cmd >> 4 != 2:
            return ProxyError(f"PROXY v2: version {ver_cmd >> 4} is not 2")
        command = ver_cmd & 0x0F
        if command not in (_CMD_LOCAL, _CMD_PROXY):
            return ProxyError(f"PROXY v2: unknown command {command}")
        if length > self.max_v2_length:
            return ProxyError(f"PROXY v2: {length}-octet header exceeds {self.max_v2_length}")
        total = V2_HEADER + length
        if len(buf) < total:
            return NEED_DATA
        self._keep(buf, total)
        block = buf[V2_HEADER:total]
        family, proto = fam >> 4, fam & 0x0F
        if family not in (_FAM_UNSPEC, _FAM_INET, _FAM_INET6, _FAM_UNIX) or proto > 2:
            return ProxyError(f"PROXY v2: unknown address family/protocol 0x{fam:02x}")
        if command == _CMD_LOCAL:
            # "The receiver must accept this connection as valid and must use the real
            # connection endpoints and discard the protocol block including the family".
            return ProxyHeader(2, True, None, None, (), total)
        if proto == 2:
            return ProxyError("PROXY v2: a datagram (DGRAM) header on a stream listener")
        if family == _FAM_UNSPEC or proto == _PROTO_UNSPEC:
            return ProxyHeader(2, False, None, None, (), total)
        need = _ADDRESS_LENGTH[family]
        if len(block) < need:
            return ProxyError("PROXY v2: address block shorter than its family requires")
        tlvs = _parse_tlvs(block[need:])
        if tlvs is None:
            return ProxyError("PROXY v2: malformed TLV")
        if family == _FAM_UNIX:
            return ProxyHeader(2, False, None, None, tlvs, total)
        size = 4 if family == _FAM_INET else 16
        src = ipaddress.ip_address(block[:size])
        dst = ipaddress.ip_address(block[size : 2 * size])
        sport, dport = struct.unpack_from("!HH", block, 2 * size)
        return ProxyHeader(2, False, (str(src), sport), (str(dst), dport), tlvs, total)

    def _keep(self, buf: bytes, used: int) -> None:
        """Bytes past the header are the protocol's: hand them over as trailing data."""
        self.trailing_data = buf[used:]
        self._buf = bytearray()


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...] | None:
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            return None
        kind, length = struct.unpack_from("!BH", data, i)
        i += 3
        if len(data) - i < length:
            return None
        out.append((kind, data[i : i + length]))
        i += length
    return tuple(out)


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 line (for tests and for tools that sit in front of Letterbird)."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A v2 header: PROXY over TCP with both endpoints, or LOCAL when they are None."""
    extra = b"".join(struct.pack("!BH", k, len(v)) + v for k, v in tlvs)
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(extra)) + extra
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    fam = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + extra
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(block)) + block
