"""Next hops for a destination domain: static routes, MX (RFC 5321 §5.1), null MX (RFC 7505).

`resolve_next_hops` turns a recipient domain into the ordered list of ``(mx, ip, port)`` the
SMTP client tries in turn, or a typed error carrying ``temporary`` and an RFC 3463 enhanced
status code for the queue (retry or bounce, DESIGN.md §6):

1. An address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, RFC 5321 §4.1.3) is its own hop.
2. A static route (``[delivery.routes]``: domain → ``"host:port"``; ``"*"`` routes every other
   domain, e.g. to a smarthost) bypasses MX lookup. Domains match case-insensitively in IDNA2008
   A-label form. A route host that does not resolve is a *temporary* error: it is a local
   configuration problem, so mail waits for it to be fixed instead of bouncing.
3. Otherwise MX records are looked up. RFC 5321 §5.1:

   "If a non-existent domain error is returned, this situation MUST be reported as an error.
   If a temporary error is returned, the message MUST be queued and retried later [...]. If an
   empty list of MXs is returned, the address is treated as if it was associated with an
   implicit MX RR, with a preference of 0, pointing to that host."

   "The records are first ordered by preference, with the lowest-numbered records being most
   preferred. The relay host MUST then inspect the list for any of the names or addresses by
   which it might be known in mail transactions. If a matching record is found, all records at
   that preference level and higher-numbered ones MUST be discarded from consideration. If
   there are no records left at that point, it is an error condition, and the message MUST be
   returned as undeliverable."

   "If there are multiple destinations with the same preference and there is no clear reason
   to favor one [...], then the sender-SMTP MUST randomize them to spread the load across
   multiple mail exchangers" (the `random.Random` is injectable for tests).

   RFC 7505 §3: a null MX is "a single MX RR with an RDATA section consisting of preference
   number 0 and a zero-length label, written in master files as '.'"; §4.1: the client
   "SHOULD NOT attempt delivery" and reports the permanent error 5.1.10.

Outcomes (RFC 3463 codes): NXDOMAIN → 5.1.2 (bad destination system address); null MX →
5.1.10; temporary DNS failure → 4.4.3 (directory server failure); every MX pruned as
ourselves → 5.4.6 (routing loop); MX hosts (or the implicit MX) without any address → 5.4.4
(unable to route); an invalid domain → 5.1.2.

Each MX host is resolved to its A then AAAA addresses (hosts are resolved concurrently, the
result keeps MX order); an address already listed is not repeated. The work is bounded by
``max_mx`` hosts and ``max_hops`` addresses (RFC 5321 §5.1 allows "a configurable limit on the
number of alternate addresses that can be tried").
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, TypeVar

from letterbird.delivery.dns import DnsError, DnsNoData, DnsNxDomain, DnsTemporaryError, MxRecord
from letterbird.directory.addresses import InvalidAddress, normalise_domain

__all__ = [
    "DEFAULT_MAX_HOPS",
    "DEFAULT_MAX_MX",
    "STATUS_BAD_DOMAIN",
    "STATUS_DNS_TEMPORARY",
    "STATUS_MAIL_LOOP",
    "STATUS_NO_ROUTE",
    "STATUS_NULL_MX",
    "MxResolver",
    "NextHop",
    "NextHopError",
    "NextHops",
    "parse_route",
    "resolve_next_hops",
]

#: RFC 3463 §3.3 X.1.2 "Bad destination system address" (NXDOMAIN, invalid domain).
STATUS_BAD_DOMAIN = "5.1.2"
#: RFC 7505 §4.1 / RFC 3463 X.1.10 "Recipient address has null MX".
STATUS_NULL_MX = "5.1.10"
#: RFC 3463 X.4.3 "Directory server failure" (a temporary DNS failure).
STATUS_DNS_TEMPORARY = "4.4.3"
#: RFC 3463 X.4.4 "Unable to route" (no MX host has an address).
STATUS_NO_ROUTE = "5.4.4"
#: RFC 3463 X.4.6 "Routing loop detected" (every MX is ourselves or less preferred).
STATUS_MAIL_LOOP = "5.4.6"

#: MX hosts resolved at most (after sorting and pruning).
DEFAULT_MAX_MX = 10
#: Addresses returned at most.
DEFAULT_MAX_HOPS = 20

Source = Literal["literal", "route", "mx", "implicit"]
_I = TypeVar("_I")


class MxResolver(Protocol):
    """What resolution needs from `letterbird.delivery.dns.Resolver`."""

    async def mx(self, domain: str) -> list[MxRecord]: ...

    async def addresses(self, host: str) -> list[str]: ...


class NextHop(NamedTuple):
    """One place to try: the MX (or route) host name, one of its addresses, and the port."""

    mx: str
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class NextHopError:
    """Why there is nowhere to deliver: ``status`` is the RFC 3463 enhanced code."""

    temporary: bool
    status: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


@dataclass(frozen=True, slots=True)
class NextHops:
    """The hops to try in order; ``error`` is set exactly when ``hops`` is empty.

    ``mx_hosts`` are the hosts that remained after sorting and loop pruning (for logs and,
    later, MTA-STS/DANE checks); ``skipped`` describes hosts dropped for lack of addresses."""

    domain: str
    source: Source
    hops: tuple[NextHop, ...] = ()
    error: NextHopError | None = None
    mx_hosts: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_route(target: str, default_port: int) -> tuple[str, int]:
    """``"host:port"``, ``"[ipv6]:port"``, ``"host"`` or a bare IPv6 address → (host, port).

    The host is returned as an IP address or a normalised (A-label, lowercase) name.
    Raises ValueError naming the problem."""
    text = target.strip()
    port = default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [ipv6]:port, got {target!r}")
        port_text: str | None = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise ValueError(f"bad port in route {target!r}")
        port = int(port_text)
    ip = _ip(host)
    if ip is not None:
        return ip, port
    if text.startswith("["):
        raise ValueError(f"not an IP address in brackets: {target!r}")
    try:
        return normalise_domain(host), port
    except InvalidAddress as exc:
        raise ValueError(f"bad host in route {target!r}: {exc}") from None


async def resolve_next_hops(
    domain: str,
    resolver: MxResolver,
    *,
    port: int = 25,
    local_hostnames: Collection[str] = (),
    routes: Mapping[str, str] | None = None,
    local_addresses: Collection[str] = (),
    rng: random.Random | None = None,
    max_mx: int = DEFAULT_MAX_MX,
    max_hops: int = DEFAULT_MAX_HOPS,
) -> NextHops:
    """Where to deliver mail for ``domain`` (see the module docstring). Never raises.

    ``local_hostnames`` and ``local_addresses`` are the names and IP addresses this server is
    known by (for RFC 5321 §5.1 loop pruning); ``port`` is used for MX hosts and for routes
    that give none."""
    literal = _address_literal(domain)
    if literal is not None:
        return _literal_hops(domain, literal, port, local_addresses)
    try:
        name = normalise_domain(domain)
    except InvalidAddress as exc:
        return _fail(domain, "mx", False, STATUS_BAD_DOMAIN, str(exc))
    if routes:
        target = _find_route(name, routes)
        if target is not None:
            return await _route_hops(name, target, resolver, port, max_hops)
    return await _mx_hops(
        name,
        resolver,
        port=port,
        local_names=_names(local_hostnames),
        local_ips=_ips(local_addresses),
        rng=rng or random.Random(),
        max_mx=max_mx,
        max_hops=max_hops,
    )


# -- literals and routes ----------------------------------------------------------------------


def _address_literal(domain: str) -> str | None:
    """RFC 5321 §4.1.3: ``address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
    General-address-literal ) "]"``; ``IPv6-address-literal = "IPv6:" IPv6-addr``.
    Returns the text between the brackets, or None when ``domain`` is not a literal."""
    d = domain.strip()
    if d.startswith("[") and d.endswith("]"):
        return d[1:-1]
    return None


def _literal_hops(domain: str, inner: str, port: int, local_addresses: Collection[str]) -> NextHops:
    tagged = inner[:5].lower() == "ipv6:"
    ip = _ip(inner[5:] if tagged else inner)
    if ip is None or (":" in ip) != tagged:
        return _fail(domain, "literal", False, STATUS_BAD_DOMAIN, f"bad address literal {domain}")
    if ip in _ips(local_addresses):
        return _fail(domain, "literal", False, STATUS_MAIL_LOOP, f"{domain} is this server")
    return NextHops(domain, "literal", hops=(NextHop(ip, ip, port),), mx_hosts=(ip,))


def _find_route(name: str, routes: Mapping[str, str]) -> str | None:
    wildcard: str | None = None
    for key, target in routes.items():
        if key.strip() == "*":
            wildcard = target
            continue
        try:
            if normalise_domain(key) == name:
                return target
        except InvalidAddress:
            continue  # a key that cannot be a domain matches nothing
    return wildcard


async def _route_hops(
    name: str, target: str, resolver: MxResolver, port: int, max_hops: int
) -> NextHops:
    try:
        host, route_port = parse_route(target, port)
    except ValueError as exc:
        return _fail(name, "route", True, STATUS_DNS_TEMPORARY, f"bad route for {name}: {exc}")
    if _ip(host) is not None:
        ips = [host]
    else:
        try:
            ips = await resolver.addresses(host)
        except DnsError as exc:
            return _fail(name, "route", True, STATUS_DNS_TEMPORARY, f"route host {host}: {exc}")
    hops = tuple(NextHop(host, ip, route_port) for ip in _unique(ips))[:max_hops]
    return NextHops(name, "route", hops=hops, mx_hosts=(host,))


# -- MX ---------------------------------------------------------------------------------------


async def _mx_hops(
    name: str,
    resolver: MxResolver,
    *,
    port: int,
    local_names: set[str],
    local_ips: set[str],
    rng: random.Random,
    max_mx: int,
    max_hops: int,
) -> NextHops:
    source: Source = "mx"
    try:
        records = await resolver.mx(name)
    except DnsNoData:
        records = []
    except DnsNxDomain as exc:
        return _fail(name, "mx", False, STATUS_BAD_DOMAIN, f"{name}: no such domain ({exc})")
    except DnsTemporaryError as exc:
        return _fail(name, "mx", True, STATUS_DNS_TEMPORARY, f"MX lookup failed: {exc}")
    except DnsError as exc:
        return _fail(name, "mx", False, STATUS_BAD_DOMAIN, f"MX lookup failed: {exc}")
    if not records:  # no MX at all: the implicit MX, preference 0, pointing to the domain
        records, source = [MxRecord(0, name)], "implicit"
    elif all(r.is_null for r in records):
        return _fail(name, "mx", False, STATUS_NULL_MX, f"{name} does not accept mail (null MX)")
    # A "." mixed with real MXs is not a null MX (RFC 7505 §3: it must be the only RR); it
    # names no host, so it is ignored.
    ordered = _shuffle_equal(sorted((r for r in records if not r.is_null), key=_pref), rng)

    # Prune by name first (it needs no lookups), then resolve, then prune by address: an MX
    # one of whose addresses is ours is ourselves.
    kept = _prune(ordered, lambda r: r.exchange in local_names, _pref)[: max(1, max_mx)]
    results = await asyncio.gather(*(_try_addresses(resolver, r.exchange) for r in kept))
    remaining = _prune(
        list(zip(kept, results, strict=True)),
        lambda item: isinstance(item[1], list) and bool(local_ips & _ips(item[1])),
        lambda item: item[0].preference,
    )
    if not remaining:
        return _fail(name, source, False, STATUS_MAIL_LOOP, f"mail for {name} loops back to us")

    hops: list[NextHop] = []
    seen: set[str] = set()
    skipped: list[str] = []
    errors: list[DnsError] = []
    for record, result in remaining:
        if isinstance(result, DnsError):
            errors.append(result)
            skipped.append(f"{record.exchange}: {result}")
            continue
        for ip in _unique(result):
            if ip not in seen:
                seen.add(ip)
                hops.append(NextHop(record.exchange, ip, port))
    mx_hosts = tuple(r.exchange for r, _ in remaining)
    if hops:
        return NextHops(
            name,
            source,
            hops=tuple(hops[:max_hops]),
            mx_hosts=mx_hosts,
            skipped=tuple(skipped),
        )
    what = "the domain" if source == "implicit" else "every MX host"
    if any(e.temporary for e in errors):
        status, temporary = STATUS_DNS_TEMPORARY, True
    elif source == "implicit" and any(isinstance(e, DnsNxDomain) for e in errors):
        status, temporary = STATUS_BAD_DOMAIN, False
    else:
        status, temporary = STATUS_NO_ROUTE, False
    return NextHops(
        name,
        source,
        error=NextHopError(temporary, status, f"{name}: no address for {what}: {errors[0]}"),
        mx_hosts=mx_hosts,
        skipped=tuple(skipped),
    )


# -- helpers ----------------------------------------------------------------------------------


def _pref(record: MxRecord) -> int:
    return record.preference


def _shuffle_equal(records: list[MxRecord], rng: random.Random) -> list[MxRecord]:
    """Randomise the order within each run of equal preference (``records`` is sorted)."""
    out: list[MxRecord] = []
    i = 0
    while i < len(records):
        j = i
        while j < len(records) and records[j].preference == records[i].preference:
            j += 1
        group = records[i:j]
        rng.shuffle(group)
        out.extend(group)
        i = j
    return out


def _prune(
    items: list[_I],
    is_self: Callable[[_I], bool],
    pref: Callable[[_I], int],
) -> list[_I]:
    """RFC 5321 §5.1: drop the first item that is ourselves and every item of equal or
    higher-numbered preference (``items`` is sorted by preference)."""
    for item in items:
        if is_self(item):
            cut = pref(item)
            return [i for i in items if pref(i) < cut]
    return items


async def _try_addresses(resolver: MxResolver, host: str) -> list[str] | DnsError:
    try:
        return await resolver.addresses(host)
    except DnsError as exc:
        return exc


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def _ips(addresses: Collection[str]) -> set[str]:
    return {ip for ip in (_ip(a) for a in addresses) if ip is not None}


def _names(hostnames: Collection[str]) -> set[str]:
    out: set[str] = set()
    for host in hostnames:
        try:
            out.add(normalise_domain(host))
        except InvalidAddress:
            continue
    return out


def _unique(ips: list[str]) -> list[str]:
    return list(dict.fromkeys(ips))


def _fail(domain: str, source: Source, temporary: bool, status: str, message: str) -> NextHops:
    return NextHops(domain, source, error=NextHopError(temporary, status, message))
