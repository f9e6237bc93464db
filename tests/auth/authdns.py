"""A dictionary-backed :class:`letterbird.auth.lookup.DnsLookup` for unit tests.

``records`` maps a name to ``{"TXT": [...], "A": [...], "AAAA": [...], "MX": [...],
"PTR": [...]}``; a PTR entry is keyed by the IP address. Special keys: ``"TEMPFAIL": True`` (or
a list of types) raises DnsTempError, ``"PERMFAIL": True`` raises DnsPermError, ``"DELAY"``
sleeps that many seconds first. A missing name or type answers ``[]`` (NXDOMAIN / NODATA).
"""

from __future__ import annotations

import asyncio
from typing import Any

from letterbird.auth.lookup import DnsPermError, DnsTempError


class FakeDns:
    def __init__(self, records: dict[str, dict[str, Any]] | None = None) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in (records or {}).items()}
        self.queries: list[tuple[str, str]] = []

    def set(self, name: str, entry: dict[str, Any]) -> None:
        self.records[name.lower().rstrip(".")] = entry

    async def _get(self, rtype: str, name: str) -> list[Any]:
        key = name.lower().rstrip(".")
        self.queries.append((rtype, key))
        entry = self.records.get(key)
        if entry is None:
            return []
        if "DELAY" in entry:
            await asyncio.sleep(entry["DELAY"])
        temp = entry.get("TEMPFAIL")
        if temp is True or (isinstance(temp, list | tuple | set) and rtype in temp):
            raise DnsTempError(f"{key} {rtype}: timed out")
        if entry.get("PERMFAIL"):
            raise DnsPermError(f"{key}: bad name")
        return list(entry.get(rtype, []))

    def count(self, rtype: str | None = None) -> int:
        return sum(1 for t, _ in self.queries if rtype is None or t == rtype)

    async def txt(self, name: str) -> list[bytes]:
        out = []
        for v in await self._get("TXT", name):
            if isinstance(v, list | tuple):
                v = "".join(v)
            out.append(v.encode() if isinstance(v, str) else v)
        return out

    async def a(self, name: str) -> list[str]:
        return await self._get("A", name)

    async def aaaa(self, name: str) -> list[str]:
        return await self._get("AAAA", name)

    async def mx(self, name: str) -> list[str]:
        return await self._get("MX", name)

    async def ptr(self, ip: str) -> list[str]:
        return await self._get("PTR", ip)
