"""A tiny authoritative DNS server for tests, on loopback UDP and TCP (RFC 1035 §4.2).

It answers from a dict of records, runs an asyncio loop in a background thread (so it serves
both synchronous tests and asyncio tests, and any other process that is given its port), and
builds every message with dnspython's wire classes::

    records = {
        "bob.test": {"MX": [(10, "mx.bob.test")]},
        "mx.bob.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]},
        "127.0.0.3": {"PTR": ["mx.bob.test"]},          # an IP key means its reverse name
        "txt.test": {"TXT": ["v=spf1 -all", ["two", "strings"], "x" * 600]},
        "www.bob.test": {"CNAME": "mx.bob.test"},
        "slow.test": {"A": ["127.0.0.9"], "DELAY": 5.0},  # answer after 5 s
        "broken.test": {"SERVFAIL": True},                # or a list of types: ["AAAA"]
        "silent.test": {"DROP": True},                    # never answer (a timeout)
    }
    with DnsServer(records) as dns:
        settings = DnsSettings(nameservers=[dns.nameserver], timeout=0.5)

Record values: ``MX`` takes ``(preference, host)`` pairs (host ``"."`` is a null MX, RFC 7505);
``A``/``AAAA``/``PTR``/``NS`` take strings; ``TXT`` takes strings (longer than 255 octets: split
into 255-octet character-strings) or lists of strings (one record, several strings); ``CNAME``
takes one name. Any other type takes its RFC 1035 presentation text (``"TLSA": ["3 1 1 ab…"]``).
``DELAY`` may also be a dict type → seconds.

Behaviour: names are served for the given ``zones`` (default: the last label of every name,
e.g. ``test`` and ``arpa``); a name outside them is REFUSED; an unknown name inside them is
NXDOMAIN, an existing name (or an empty non-terminal) without the type is NODATA, both with the
zone's SOA in the authority section (RFC 2308). CNAMEs are followed within the served data
(RFC 1034 §4.3.2). UDP answers larger than the client's EDNS payload (512 without EDNS) are
sent truncated with TC set, so the client retries over TCP (RFC 7766). Every question received
is appended to ``queries`` as ``(name, type)`` (and those over TCP to ``tcp_queries`` too).

Run it as a separate process with ``python tests/dnsserver.py records.json [--port N]``: it
prints ``port N`` once listening and serves until stdin closes or it is terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import socket
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.reversename
import dns.rrset

__all__ = ["DnsServer"]

IN = dns.rdataclass.IN
_OPTIONS = {"DELAY", "SERVFAIL", "DROP"}
_MAX_CNAME_CHAIN = 8


def _name(text: str) -> dns.name.Name:
    """A record key or target → absolute name; an IP address means its reverse name."""
    try:
        return dns.reversename.from_address(str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    if text in (".", ""):
        return dns.name.root
    return dns.name.from_text(text, idna_codec=dns.name.IDNA_2008)


def _txt_strings(value: str | bytes | Sequence[str | bytes]) -> list[bytes]:
    if isinstance(value, str | bytes):
        data = value.encode() if isinstance(value, str) else value
        return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    out: list[bytes] = []
    for part in value:
        out.extend(_txt_strings(part))
    return out


def _rdata(rtype: str, value: Any) -> dns.rdata.Rdata:
    rdtype = dns.rdatatype.from_text(rtype)
    if rdtype == dns.rdatatype.TXT:
        return dns.rdtypes.ANY.TXT.TXT(IN, rdtype, _txt_strings(value))
    if rdtype == dns.rdatatype.MX and not isinstance(value, str):
        pref, host = value
        value = f"{int(pref)} {_name(host)}"
    elif rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        value = str(_name(value))
    return dns.rdata.from_text(IN, rdtype, value)


@dataclass
class _Node:
    rrsets: dict[dns.rdatatype.RdataType, dns.rrset.RRset] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)  # type text or "*" → seconds
    servfail: set[str] = field(default_factory=set)  # type text or "*"
    drop: bool = False

    def delay_for(self, rtype: str) -> float:
        return self.delay.get(rtype, self.delay.get("*", 0.0))


def _node(name: dns.name.Name, entry: Mapping[str, Any], ttl: int) -> _Node:
    node = _Node()
    for key, value in entry.items():
        rtype = key.upper()
        if rtype == "DELAY":
            if isinstance(value, Mapping):
                node.delay = {k.upper(): float(v) for k, v in value.items()}
            else:
                node.delay = {"*": float(value)}
        elif rtype == "SERVFAIL":
            if value is True:
                node.servfail = {"*"}
            elif value:
                node.servfail = {t.upper() for t in value}
        elif rtype == "DROP":
            node.drop = bool(value)
        else:
            values = [value] if rtype == "CNAME" and isinstance(value, str) else value
            rdatas = [_rdata(rtype, v) for v in values]
            if rdatas:
                rrset = dns.rrset.RRset(name, IN, rdatas[0].rdtype)
                for rd in rdatas:
                    rrset.add(rd, ttl)
                node.rrsets[rdatas[0].rdtype] = rrset
    return node


class DnsServer:
    """An authoritative DNS server on ``host`` (default 127.0.0.1), UDP and TCP on one port."""

    def __init__(
        self,
        records: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        zones: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: int = 300,
    ) -> None:
        self.host = host
        self.port = port
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []
        self.tcp_queries: list[tuple[str, str]] = []
        self._explicit_zones = None if zones is None else [_name(z) for z in zones]
        self._entries: dict[str, Mapping[str, Any]] = dict(records or {})
        self._nodes: dict[dns.name.Name, _Node] = {}
        self._existing: set[dns.name.Name] = set()
        self._zones: list[dns.name.Name] = []
        self._rebuild()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- data -------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        nodes = {_name(k): _node(_name(k), v, self.ttl) for k, v in self._entries.items()}
        existing: set[dns.name.Name] = set()
        for name in nodes:
            while name != dns.name.root and name not in existing:
                existing.add(name)
                name = name.parent()
        if self._explicit_zones is not None:
            zones = list(self._explicit_zones)
        else:
            zones = sorted({dns.name.Name(n.labels[-2:]) for n in nodes if len(n.labels) > 1})
        # Swap in whole objects so the server thread never sees a half-built state.
        self._nodes, self._existing, self._zones = nodes, existing, zones

    def set(self, name: str, entry: Mapping[str, Any] | None) -> None:
        """Replace (or with None, remove) the records of one name while running."""
        if entry is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = entry
        self._rebuild()

    @property
    def nameserver(self) -> str:
        """The ``[dns] nameservers`` entry for this server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _zone_of(self, qname: dns.name.Name) -> dns.name.Name | None:
        best: dns.name.Name | None = None
        for zone in self._zones:
            if qname.is_subdomain(zone) and (best is None or len(zone) > len(best)):
                best = zone
        return best

    def _soa(self, zone: dns.name.Name) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(zone, IN, dns.rdatatype.SOA)
        text = f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 60"
        rrset.add(dns.rdata.from_text(IN, dns.rdatatype.SOA, text), self.ttl)
        return rrset

    # -- answering --------------------------------------------------------------------------

    def answer(self, wire: bytes, *, tcp: bool = False) -> tuple[bytes | None, float]:
        """Answer one query message: (reply wire or None to stay silent, delay in seconds)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, 0.0
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        delay = 0.0
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(
                dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR
            )
        else:
            q = query.question[0]
            rtype = dns.rdatatype.to_text(q.rdtype)
            asked = (q.name.to_text(omit_final_dot=True).lower(), rtype)
            self.queries.append(asked)
            if tcp:
                self.tcp_queries.append(asked)
            first = self._nodes.get(q.name)
            if first is not None and first.drop:
                return None, 0.0
            if first is not None:
                delay = first.delay_for(rtype)
            if first is not None and ({"*", rtype} & first.servfail):
                response.set_rcode(dns.rcode.SERVFAIL)
            else:
                self._resolve(response, q.name, q.rdtype)
        if tcp:
            max_size = 65535
        elif query.edns < 0:
            max_size = 512
        else:
            max_size = max(query.payload, 512)
        try:
            return response.to_wire(max_size=max_size), delay
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(), delay

    def _resolve(
        self, response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> None:
        zone = self._zone_of(qname)
        if zone is None:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            node = self._nodes.get(name)
            if node is not None and rdtype in node.rrsets:
                response.answer.append(node.rrsets[rdtype])
                return
            cname = node.rrsets.get(dns.rdatatype.CNAME) if node is not None else None
            if cname is None:
                break
            response.answer.append(cname)
            name = next(iter(cname)).target
            next_zone = self._zone_of(name)
            if next_zone is None:  # the target is not ours: the client continues from here
                return
            zone = next_zone
        if name not in self._existing:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa(zone))

    # -- sockets ----------------------------------------------------------------------------

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        transport, server = await self._bind(loop)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            transport.close()
            server.close()

    async def _bind(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        last: OSError | None = None
        for _ in range(50):  # the free UDP port may be taken for TCP: try another
            transport, _proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port), family=family
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                server = await asyncio.start_server(self._tcp, self.host, port, family=family)
            except OSError as exc:
                transport.close()
                last = exc
                if self.port:
                    raise
                continue
            self.port = port
            return transport, server
        raise last or OSError("no free port")  # pragma: no cover

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                wire, delay = self.answer(await reader.readexactly(size), tcp=True)
                if wire is None:
                    continue
                if delay:
                    await asyncio.sleep(delay)
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the server is stopping (asyncio.run cancels us)
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> DnsServer:
        self._thread = threading.Thread(target=self._run, name="test-dns", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        self._ready.clear()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        wire, delay = self.server.answer(data)
        if wire is None or self.transport is None:
            return
        if delay:
            asyncio.get_running_loop().call_later(delay, self._send, wire, addr)
        else:
            self._send(wire, addr)

    def _send(self, wire: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


def _from_json(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """JSON has no tuples: MX ``[10, "host"]`` pairs work as they are."""
    return {name: dict(entry) for name, entry in data.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve DNS records from a JSON file.")
    parser.add_argument("records", help="JSON file: {name: {type: [values]}}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--zone", action="append", dest="zones", help="a served zone")
    args = parser.parse_args(argv)
    with open(args.records, encoding="utf-8") as fh:
        records = _from_json(json.load(fh))
    with DnsServer(records, zones=args.zones, host=args.host, port=args.port) as server:
        print(f"port {server.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.read()  # until stdin closes (the parent exits) or a signal


if __name__ == "__main__":
    main()
