"""DNS lookups for mail: MX, A/AAAA, TXT and PTR over dnspython's asyncio resolver.

One `Resolver` serves SMTP reception (the reverse name in the ``Received`` header, RFC 5321
§4.4, and forward-confirmed reverse DNS, RFC 8601 §3 "iprev"), delivery (MX and addresses,
RFC 5321 §5.1, used by `letterbird.delivery.mx`) and, later, SPF/DKIM/DMARC (TXT, RFC 7208
§3.3 / RFC 6376 §3.6.2.2 / RFC 7489 §6.1).

The outcomes a mail system must tell apart (RFC 5321 §5.1, RFC 2308) are typed errors:

- `DnsNxDomain`: the name does not exist (RCODE 3): a permanent condition;
- `DnsNoData`: the name exists but has no record of the type asked for (an empty answer);
- `DnsTemporaryError`: timeout, SERVFAIL, REFUSED, unreachable servers: retry later;
- `DnsBadName`: the name cannot be a DNS name at all (label over 63 octets, bad IDNA).

Every error carries ``temporary`` so the queue can decide between retry and bounce. Names are
looked up in IDNA2008 A-label form (DESIGN.md §9): ``bücher.test`` queries
``xn--bcher-kva.test``. The search list is never applied (RFC 5321 §5.1: relays MUST NOT
infer FQDNs from partial names).

Reverse lookups (`ptr`, `forward_confirmed_rdns`) never raise and never take longer than the
``rdns_timeout`` setting: a slow reverse zone must not delay an SMTP greeting.

The resolver is built from the ``[dns]`` settings: with ``nameservers`` it talks only to those
(``"ip"``, ``"ip:port"`` or ``"[ipv6]:port"``), which is how tests point it at
``tests/dnsserver.py`` on loopback; otherwise it reads the system configuration
(``/etc/resolv.conf``), falling back to ``127.0.0.1`` like the C library when there is none.
Answers are kept in a bounded LRU cache honouring TTLs (``cache_size`` entries; 0 disables it).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from letterbird.config import Config, DnsSettings
from letterbird.directory.addresses import InvalidAddress, normalise_domain

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "EDNS_PAYLOAD",
    "MAX_PTR_NAMES",
    "DnsBadName",
    "DnsError",
    "DnsNoData",
    "DnsNxDomain",
    "DnsTemporaryError",
    "MxRecord",
    "Resolver",
    "TxtRecord",
    "parse_nameserver",
]

_T = TypeVar("_T")

#: Answers cached (LRU, by TTL) per resolver.
DEFAULT_CACHE_SIZE = 10000
#: EDNS(0) UDP payload we advertise (the DNS Flag Day 2020 value); larger answers come over TCP.
EDNS_PAYLOAD = 1232
#: At most this many PTR names are checked by `Resolver.forward_confirmed_rdns`
#: (RFC 8601 §3: iprev implementations may limit the names they try; RFC 7208 §4.6.4 uses 10).
MAX_PTR_NAMES = 10
#: Per-server attempt timeout cap; the total per lookup is the ``timeout`` setting.
_ATTEMPT_TIMEOUT = 2.0


# -- errors -----------------------------------------------------------------------------------


class DnsError(Exception):
    """A lookup that produced no usable answer. ``temporary`` says whether to retry later."""

    temporary: bool = False

    def __init__(self, name: str, rdtype: str, detail: str) -> None:
        super().__init__(f"{name} {rdtype}: {detail}")
        self.name = name
        self.rdtype = rdtype
        self.detail = detail


class DnsNxDomain(DnsError):
    """The name does not exist (NXDOMAIN, RCODE 3)."""


class DnsNoData(DnsError):
    """The name exists but has no records of the requested type (empty answer, RFC 2308 §2.2)."""


class DnsTemporaryError(DnsError):
    """Timeout, SERVFAIL, REFUSED or network failure: the question may be asked again later."""

    temporary = True


class DnsBadName(DnsError):
    """The name is not a valid DNS name (e.g. a label over 63 octets or invalid IDNA)."""


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MxRecord:
    """One MX RR (RFC 1035 §3.3.9): ``exchange`` is lowercase A-label form without the final
    dot, or ``"."`` for the root (a null MX, RFC 7505)."""

    preference: int
    exchange: str

    @property
    def is_null(self) -> bool:
        return self.exchange == "."


@dataclass(frozen=True, slots=True)
class TxtRecord:
    """One TXT RR: its character-strings as sent (RFC 1035 §3.3.14, each at most 255 octets)."""

    strings: tuple[bytes, ...]

    @property
    def data(self) -> bytes:
        """The strings concatenated without separators (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return b"".join(self.strings)

    @property
    def text(self) -> str:
        """`data` as text (UTF-8; undecodable bytes become U+FFFD)."""
        return self.data.decode("utf-8", "replace")


# -- configuration ----------------------------------------------------------------------------


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"2001:db8::1"`` or ``"[2001:db8::1]:5353"`` →
    (ip, port). Raises ValueError naming the problem."""
    text = spec.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [ipv6]:port, got {spec!r}")
        if rest:
            port = _port(rest[1:], spec)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, spec)
    else:
        host = text
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"a nameserver must be an IP address, got {spec!r}") from None
    return str(ip), port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"bad port in nameserver {spec!r}")
    return int(text)


def _system_resolver() -> dns.asyncresolver.Resolver:
    try:
        return dns.asyncresolver.Resolver()
    except dns.resolver.NoResolverConfiguration:
        # No /etc/resolv.conf or no nameserver line in it: the C library then asks 127.0.0.1.
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        return r


# -- the resolver -----------------------------------------------------------------------------


class Resolver:
    """Typed async DNS lookups for mail. Build one per process and share it.

    Raises ValueError when a configured nameserver is not an IP address (with optional port)."""

    def __init__(
        self,
        settings: DnsSettings | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.settings = settings or DnsSettings()
        if self.settings.nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(ns))
                for ns in self.settings.nameservers
            ]
        else:
            r = _system_resolver()
        r.lifetime = self.settings.timeout
        r.timeout = min(self.settings.timeout, _ATTEMPT_TIMEOUT)
        r.use_edns(0, 0, EDNS_PAYLOAD)
        r.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._resolver = r

    @classmethod
    def from_config(cls, config: Config) -> Resolver:
        return cls(config.dns)

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """The (ip, port) pairs queried, for logs and tests."""
        out: list[tuple[str, int]] = []
        for ns in self._resolver.nameservers:
            if isinstance(ns, dns.nameserver.Nameserver):
                out.append((ns.answer_nameserver(), ns.answer_port()))
            else:  # a plain string: the port is the resolver's default
                out.append((ns, self._resolver.port))
        return out

    # -- forward lookups ----------------------------------------------------------------------

    async def mx(self, domain: str) -> list[MxRecord]:
        """MX records of ``domain``, stably sorted by preference (lowest first).

        Raises DnsNxDomain, DnsNoData (no MX: the caller applies the implicit MX rule),
        DnsTemporaryError or DnsBadName."""
        answer = await self._query(domain, dns.rdatatype.MX)
        records = [
            MxRecord(int(rd.preference), _name_text(rd.exchange))
            for rd in answer
            if rd.rdtype == dns.rdatatype.MX
        ]
        records.sort(key=lambda r: r.preference)
        return records

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host`` (A and AAAA are asked concurrently).

        An IP address given as ``host`` is returned as is. When one family fails but the other
        has addresses, those are returned. With no address at all the error raised is, in this
        order: the temporary one if either lookup failed temporarily, else DnsNxDomain, else
        DnsNoData."""
        literal = _ip_or_none(host)
        if literal is not None:
            return [literal]
        results = await asyncio.gather(
            self._try_query(host, dns.rdatatype.A),
            self._try_query(host, dns.rdatatype.AAAA),
        )
        found: list[str] = []
        errors: list[DnsError] = []
        for result in results:
            if isinstance(result, DnsError):
                errors.append(result)
            else:
                found.extend(
                    rd.address
                    for rd in result
                    if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                )
        if found:
            return found
        for kind in (DnsTemporaryError, DnsBadName, DnsNxDomain):
            for err in errors:
                if isinstance(err, kind):
                    raise err
        raise errors[0]

    async def txt(self, name: str) -> list[TxtRecord]:
        """TXT records at ``name``, each with its character-strings (join with ``.data``)."""
        answer = await self._query(name, dns.rdatatype.TXT)
        return [TxtRecord(tuple(rd.strings)) for rd in answer if rd.rdtype == dns.rdatatype.TXT]

    # -- reverse lookups (never raise) --------------------------------------------------------

    async def ptr(self, ip: str) -> str | None:
        """The first PTR name of ``ip`` (lowercase, no final dot), or None on any failure.

        Never raises; returns within the ``rdns_timeout`` setting."""
        names = await self._bounded(self._ptr_names(ip), self.settings.rdns_timeout)
        return names[0] if names else None

    async def forward_confirmed_rdns(self, ip: str) -> str | None:
        """A PTR name of ``ip`` whose A/AAAA records include ``ip`` (RFC 8601 §3 "iprev"), or
        None. At most `MAX_PTR_NAMES` names are checked, concurrently; the first confirmed one
        in PTR answer order wins. Never raises; returns within ``rdns_timeout`` overall."""
        return await self._bounded(self._fcrdns(ip), self.settings.rdns_timeout)

    async def _fcrdns(self, ip: str) -> str | None:
        names = await self._ptr_names(ip)
        if not names:
            return None
        wanted = ipaddress.ip_address(ip)
        found = await asyncio.gather(*(self._try_addresses(n) for n in names[:MAX_PTR_NAMES]))
        for name, addrs in zip(names, found, strict=False):
            if any(ipaddress.ip_address(a) == wanted for a in addrs):
                return name
        return None

    async def _ptr_names(self, ip: str) -> list[str]:
        try:
            qname = dns.reversename.from_address(ip)
        except (ValueError, dns.exception.SyntaxError):
            return []
        try:
            answer = await self._resolver.resolve(
                qname,
                dns.rdatatype.PTR,
                search=False,
                lifetime=self.settings.rdns_timeout,
            )
        except (dns.exception.DNSException, OSError):
            return []
        return [_name_text(rd.target) for rd in answer if rd.rdtype == dns.rdatatype.PTR]

    async def _try_addresses(self, host: str) -> list[str]:
        try:
            return await self.addresses(host)
        except DnsError:
            return []

    @staticmethod
    async def _bounded(coro: Coroutine[object, object, _T], timeout: float) -> _T | None:
        try:
            return await asyncio.wait_for(coro, timeout)
        except (TimeoutError, dns.exception.DNSException, OSError, ValueError):
            return None

    # -- plumbing -----------------------------------------------------------------------------

    async def _try_query(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> dns.resolver.Answer | DnsError:
        try:
            return await self._query(name, rdtype)
        except DnsError as exc:
            return exc

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        type_text = dns.rdatatype.to_text(rdtype)
        try:
            qname = dns.name.from_text(normalise_domain(name))
        except (InvalidAddress, dns.exception.DNSException, ValueError) as exc:
            raise DnsBadName(name, type_text, str(exc)) from None
        try:
            return await self._resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise DnsNxDomain(name, type_text, "no such domain (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise DnsNoData(name, type_text, "no records of this type") from None
        except dns.resolver.YXDOMAIN as exc:
            raise DnsBadName(name, type_text, str(exc)) from None
        except dns.exception.Timeout:
            raise DnsTemporaryError(name, type_text, "timed out") from None
        except (dns.exception.DNSException, OSError) as exc:
            # NoNameservers (SERVFAIL/REFUSED from every server), network errors, bad replies.
            raise DnsTemporaryError(name, type_text, str(exc) or type(exc).__name__) from None


def _name_text(name: dns.name.Name) -> str:
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True).lower()


def _ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
