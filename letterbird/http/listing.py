"""Message lists for the webmail: date order, unread counts and folder search, kept cheap for
large folders.

- :class:`FolderIndex` keeps, per folder, each message's arrival date (INTERNALDATE) and the
  folder's UIDs sorted by it. A folder whose ``highestmodseq`` has not moved is served from
  memory with no storage call; otherwise ``changes_since`` (the CONDSTORE/QRESYNC query, by
  modseq index) names the new and the expunged messages and only those are fetched or
  dropped. A page of 50 out of 10,000 then costs one small ``fetch_messages``. Dates never
  change for a given (folder, UIDVALIDITY, UID).
- :class:`StatusCache` remembers ``mailbox_status`` (unread counts) per ``highestmodseq``.
- :func:`search_folder` evaluates a search with the IMAP SEARCH evaluator
  (:mod:`letterbird.imap.search`), so the web and IMAP clients find the same messages; it
  reads messages in size-bounded batches and matches them off the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from letterbird.imap.search import SearchMessage, blob_range, matches, needs
from letterbird.mime import MessageInfo
from letterbird.proto.imap.search import BodyKey, HeaderKey, Or, SearchKey
from letterbird.storage.interface import Mailbox, MailboxStatus, MessageRecord, Storage

__all__ = ["SEARCH_FIELDS", "FolderIndex", "SearchField", "StatusCache", "search_folder"]

_FETCH_BATCH = 2000
_SEARCH_BATCH_BYTES = 8 * 1024 * 1024
_SEARCH_BATCH_MESSAGES = 500

SearchField = Literal["all", "from", "to", "subject", "body"]
SEARCH_FIELDS: tuple[SearchField, ...] = ("all", "from", "to", "subject", "body")


@dataclass
class _Folder:
    uidvalidity: int
    modseq: int
    dates: dict[int, float] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # oldest first
    unseen: set[int] = field(default_factory=set)


class FolderIndex:
    def __init__(self, storage: Storage, capacity: int = 64) -> None:
        self.storage = storage
        self.capacity = max(1, capacity)
        self._folders: OrderedDict[int, _Folder] = OrderedDict()
        self._locks: dict[int, asyncio.Lock] = {}

    async def ordered(self, mailbox: Mailbox) -> list[int]:
        """The folder's UIDs, oldest arrival first (ties in UID order). Do not modify."""
        entry = self._folders.get(mailbox.id)
        if (
            entry is not None
            and entry.uidvalidity == mailbox.uidvalidity
            and entry.modseq == mailbox.highestmodseq
        ):
            self._folders.move_to_end(mailbox.id)
            return entry.order
        lock = self._locks.setdefault(mailbox.id, asyncio.Lock())
        async with lock:  # one refresh per folder at a time
            entry = await self._refresh(mailbox)
        return entry.order

    async def _refresh(self, mailbox: Mailbox) -> _Folder:
        entry = self._folders.get(mailbox.id)
        if entry is None or entry.uidvalidity != mailbox.uidvalidity or not entry.modseq:
            entry = await self._build(mailbox)
        elif entry.modseq != mailbox.highestmodseq:
            await self._update(mailbox, entry)
        self._folders[mailbox.id] = entry
        self._folders.move_to_end(mailbox.id)
        while len(self._folders) > self.capacity:
            evicted, _ = self._folders.popitem(last=False)
            lock = self._locks.get(evicted)
            if lock is not None and not lock.locked():
                del self._locks[evicted]
        return entry

    async def _build(self, mailbox: Mailbox) -> _Folder:
        """Everything from scratch: one ``list_messages``, then the dates in batches."""
        entry = _Folder(mailbox.uidvalidity, mailbox.highestmodseq)
        rows = await self.storage.list_messages(mailbox.id)
        entry.unseen = {uid for uid, _, flags in rows if "\\Seen" not in flags}
        await self._add_dates(mailbox.id, entry, [r[0] for r in rows])
        entry.order = sorted(entry.dates, key=lambda u: (entry.dates[u], u))
        return entry

    async def _update(self, mailbox: Mailbox, entry: _Folder) -> None:
        """Only what changed since the modseq we know (CONDSTORE's view, RFC 7162): new
        messages are fetched and slotted in; expunged ones are dropped; flag changes are
        nothing to the order."""
        changes = await self.storage.changes_since(mailbox.id, entry.modseq)
        dates = entry.dates
        gone = [u for u in changes.expunged if u in dates]
        if gone:
            for uid in gone:
                dates.pop(uid, None)
                entry.unseen.discard(uid)
            entry.order = [u for u in entry.order if u in dates]
        new = [uid for uid, _, _ in changes.changed if uid not in dates]
        if new:
            new = await self._add_dates(mailbox.id, entry, new)
            order = entry.order
            for uid in sorted(new, key=lambda u: (dates[u], u)):
                key = (dates[uid], uid)
                if not order or (dates[order[-1]], order[-1]) < key:
                    order.append(uid)  # the usual case: arrived last
                else:
                    bisect.insort(order, uid, key=lambda u: (dates[u], u))
        for uid, _, flags in changes.changed:
            if uid not in dates:
                continue  # expunged meanwhile
            if "\\Seen" in flags:
                entry.unseen.discard(uid)
            else:
                entry.unseen.add(uid)
        entry.modseq = changes.highestmodseq

    async def _add_dates(self, mailbox_id: int, entry: _Folder, uids: list[int]) -> list[int]:
        """Fetch the dates of ``uids``; returns those this call added (none twice)."""
        added = []
        for i in range(0, len(uids), _FETCH_BATCH):
            for rec in await self.storage.fetch_messages(mailbox_id, uids[i : i + _FETCH_BATCH]):
                if rec.uid not in entry.dates:
                    entry.dates[rec.uid] = rec.internaldate
                    added.append(rec.uid)
        return added

    def counts(self, mailbox: Mailbox) -> tuple[int, int] | None:
        """``(messages, unread)`` when the index is current for the folder, else None."""
        entry = self._folders.get(mailbox.id)
        if (
            entry is None
            or entry.uidvalidity != mailbox.uidvalidity
            or entry.modseq != mailbox.highestmodseq
        ):
            return None
        return len(entry.dates), len(entry.unseen)

    def forget(self, mailbox_id: int) -> None:
        self._folders.pop(mailbox_id, None)


class StatusCache:
    """``mailbox_status`` answers, valid while the folder's ``highestmodseq`` holds."""

    def __init__(self, storage: Storage, capacity: int = 1024) -> None:
        self.storage = storage
        self.capacity = capacity
        self._cache: OrderedDict[int, tuple[int, int, MailboxStatus]] = OrderedDict()

    async def status(self, mailbox: Mailbox) -> MailboxStatus:
        hit = self._cache.get(mailbox.id)
        if hit is not None and hit[0] == mailbox.highestmodseq and hit[1] == mailbox.uidvalidity:
            return hit[2]
        status = await self.storage.mailbox_status(mailbox.id)
        self._cache[mailbox.id] = (mailbox.highestmodseq, mailbox.uidvalidity, status)
        self._cache.move_to_end(mailbox.id)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return status


def search_key(where: SearchField, text: str) -> SearchKey:
    """The IMAP SEARCH program a web search means."""
    from_, subject = HeaderKey("from", text), HeaderKey("subject", text)
    to: SearchKey = Or(HeaderKey("to", text), Or(HeaderKey("cc", text), HeaderKey("bcc", text)))
    if where == "from":
        return from_
    if where == "to":
        return to
    if where == "subject":
        return subject
    if where == "body":
        return BodyKey(text)
    return Or(from_, Or(to, Or(subject, BodyKey(text))))


async def search_folder(
    storage: Storage, mailbox: Mailbox, where: SearchField, text: str, limit: int
) -> set[int]:
    """UIDs of the folder's messages that match (at most ``limit``, newest UIDs first)."""
    key = search_key(where, text)
    need_info, need_bytes = needs(key)
    rows = await storage.list_messages(mailbox.id)
    uids = [r[0] for r in reversed(rows)]
    largest_uid = uids[0] if uids else 0
    found: set[int] = set()
    i = 0
    while i < len(uids) and len(found) < limit:
        batch = uids[i : i + _SEARCH_BATCH_MESSAGES]
        i += len(batch)
        records = await storage.fetch_messages(mailbox.id, batch)
        work: list[tuple[MessageRecord, MessageInfo | None, bytes | None]] = []
        size = 0
        for rec in records:
            info = MessageInfo.from_json(rec.structure) if need_info or need_bytes else None
            blob: bytes | None = None
            if need_bytes:
                start, end = blob_range(key, info)
                blob = await storage.read_blob(rec.blob_id, start, end)
                size += len(blob)
            work.append((rec, info, blob))
            if size > _SEARCH_BATCH_BYTES:
                found |= await asyncio.to_thread(_match_all, key, work, len(rows), largest_uid)
                work, size = [], 0
        if work:
            found |= await asyncio.to_thread(_match_all, key, work, len(rows), largest_uid)
    if len(found) > limit:
        found = set(sorted(found, reverse=True)[:limit])
    return found


def _match_all(
    key: SearchKey,
    work: list[tuple[MessageRecord, MessageInfo | None, bytes | None]],
    largest_seq: int,
    largest_uid: int,
) -> set[int]:
    out: set[int] = set()
    for rec, info, blob in work:
        msg = SearchMessage(
            seq=0,
            uid=rec.uid,
            flags=rec.flags,
            internaldate=rec.internaldate,
            size=rec.size,
            modseq=rec.modseq,
            recent=False,
            info=info,
        )
        if matches(key, msg, blob=blob, largest_seq=largest_seq, largest_uid=largest_uid):
            out.add(rec.uid)
    return out
