"""The DNS seam of mail authentication: one small async interface, and its real implementation.

SPF (RFC 7208 §5), DKIM (RFC 6376 §3.6.2) and DMARC (RFC 7489 §6.6.3) only need five
questions answered, so their evaluation code takes a :class:`DnsLookup` (any object with these
async methods) instead of a resolver. Tests pass a dictionary-backed fake; the server passes
:class:`ResolverLookup`, which asks :class:`letterbird.delivery.dns.Resolver` (the ``[dns]``
settings, its cache and timeouts).

The contract the evaluators rely on:

* a name that does not exist (NXDOMAIN) or has no record of the type (NODATA) gives ``[]``
  (both are "void" lookups for RFC 7208 §4.6.4 and "no record" for DKIM and DMARC);
* anything that may succeed when asked again (timeout, SERVFAIL, REFUSED, network errors)
  raises :class:`DnsTempError`, which becomes ``temperror``, never a silent pass or fail;
* a name that cannot be a DNS name at all raises :class:`DnsPermError` (``permerror``).
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from letterbird.delivery.dns import (
    DnsBadName,
    DnsError,
    DnsNoData,
    DnsNxDomain,
    Resolver,
)

__all__ = ["DnsLookup", "DnsPermError", "DnsTempError", "ResolverLookup"]


class DnsTempError(Exception):
    """A lookup failed in a way that may pass later (timeout, SERVFAIL): ``temperror``."""


class DnsPermError(Exception):
    """The name asked for cannot be a DNS name (an over-long label, bad IDNA): ``permerror``."""


class DnsLookup(Protocol):
    """The DNS questions mail authentication asks. Names are given without a final dot."""

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record's character-strings concatenated (RFC 7208 §3.3, RFC 6376
        §3.6.2.2)."""
        ...

    async def a(self, name: str) -> list[str]:
        """IPv4 addresses."""
        ...

    async def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses."""
        ...

    async def mx(self, name: str) -> list[str]:
        """Mail exchanger names in preference order (a null MX ``.`` included as is)."""
        ...

    async def ptr(self, ip: str) -> list[str]:
        """Names of an address (its reverse zone's PTR records)."""
        ...


class ResolverLookup:
    """:class:`DnsLookup` over the server's :class:`~letterbird.delivery.dns.Resolver`.

    ``Resolver`` asks A and AAAA together (:meth:`Resolver.addresses`); this keeps the family
    asked for. When the other family has addresses but the wanted one failed temporarily, the
    answer is an empty list rather than an error (a limit of that interface). PTR answers come
    from :meth:`Resolver.ptr`, which gives the first name only and reports failures as "none".
    """

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def txt(self, name: str) -> list[bytes]:
        try:
            return [r.data for r in await self.resolver.txt(name)]
        except DnsError as exc:
            _raise_unless_void(exc)
            return []

    async def a(self, name: str) -> list[str]:
        return [ip for ip in await self._addresses(name) if ":" not in ip]

    async def aaaa(self, name: str) -> list[str]:
        return [ip for ip in await self._addresses(name) if ":" in ip]

    async def _addresses(self, name: str) -> list[str]:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:  # an address is not a host name: Resolver would return it as it is
            return []
        try:
            return await self.resolver.addresses(name)
        except DnsError as exc:
            _raise_unless_void(exc)
            return []

    async def mx(self, name: str) -> list[str]:
        try:
            return [r.exchange for r in await self.resolver.mx(name)]
        except DnsError as exc:
            _raise_unless_void(exc)
            return []

    async def ptr(self, ip: str) -> list[str]:
        name = await self.resolver.ptr(ip)
        return [name] if name else []


def _raise_unless_void(exc: DnsError) -> None:
    """NXDOMAIN and NODATA are answers ("no records"); other failures become our errors."""
    if isinstance(exc, DnsNxDomain | DnsNoData):
        return
    if isinstance(exc, DnsBadName):
        raise DnsPermError(str(exc)) from None
    raise DnsTempError(str(exc)) from None
