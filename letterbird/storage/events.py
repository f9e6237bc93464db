"""The in-process change bus (DESIGN.md §7).

Backends publish one :class:`ChangeEvent` per committed change; IMAP IDLE, POP3, the web UI and
later JMAP subscribe per account. Publishing is thread-safe (the SQLite writer thread publishes
through the event loop) and never blocks: a subscriber that falls too far behind is marked
``overflowed`` and must resync from its last modseq, exactly as after a cross-node reconnect.

Events also cross process boundaries (PostgreSQL LISTEN/NOTIFY between nodes,
:mod:`letterbird.server.relay` between the workers of one machine): :meth:`ChangeBus.publish`
takes the events this process committed and hands them to the optional ``forward`` hook as
well, :meth:`ChangeBus.publish_remote` delivers events another process committed (never
forwarded again), and :meth:`ChangeBus.resync_all` tells every subscriber that events may have
been lost on the way (the :data:`RESYNC_MAILBOX` marker).
"""

from __future__ import annotations

import asyncio
import enum
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RESYNC_MAILBOX", "ChangeBus", "ChangeEvent", "ChangeKind", "Forward", "Subscription"]

RESYNC_MAILBOX = 0  # mailbox_id of the marker event that wakes subscribers to resync


class ChangeKind(enum.Enum):
    APPEND = "append"
    FLAGS = "flags"
    EXPUNGE = "expunge"
    MAILBOX = "mailbox"  # created, renamed, deleted or subscription changed


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    account_id: int
    mailbox_id: int
    kind: ChangeKind
    uids: tuple[int, ...]
    modseq: int


class Subscription:
    """A bounded queue of events for one account."""

    def __init__(self, bus: ChangeBus, account_id: int, maxsize: int) -> None:
        self._bus = bus
        self.account_id = account_id
        self._queue: asyncio.Queue[ChangeEvent] = asyncio.Queue(maxsize)
        self.overflowed = False

    def _put(self, event: ChangeEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    async def get(self) -> ChangeEvent:
        return await self._queue.get()

    def get_nowait(self) -> ChangeEvent | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def drain(self) -> list[ChangeEvent]:
        out: list[ChangeEvent] = []
        while True:
            ev = self.get_nowait()
            if ev is None:
                return out
            out.append(ev)

    def close(self) -> None:
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Forward = Callable[[list[ChangeEvent]], None]


class ChangeBus:
    def __init__(self, queue_size: int = 10000) -> None:
        self._subs: dict[int, set[Subscription]] = defaultdict(set)
        self._queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called (on the loop thread, must not raise or block) with every batch this process
        # publishes, to carry it to other processes (letterbird.server.relay sets it).
        self.forward: Forward | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, account_id: int) -> Subscription:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = Subscription(self, account_id, self._queue_size)
        self._subs[account_id].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.account_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.account_id]

    def publish(self, events: list[ChangeEvent]) -> None:
        """Deliver events this process committed to subscribers, and hand them to ``forward``;
        must run on the bus's event loop thread."""
        self.publish_remote(events)
        forward = self.forward
        if forward is not None and events:
            forward(events)

    def publish_remote(self, events: list[ChangeEvent]) -> None:
        """Deliver events another process committed: local subscribers only, never forwarded;
        must run on the bus's event loop thread."""
        for ev in events:
            for sub in tuple(self._subs.get(ev.account_id, ())):
                sub._put(ev)

    def resync_all(self) -> None:
        """Tell every subscriber that events may have been lost: resync from the last modseq."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.overflowed = True
                sub._put(ChangeEvent(sub.account_id, RESYNC_MAILBOX, ChangeKind.MAILBOX, (), 0))

    def publish_threadsafe(self, events: list[ChangeEvent]) -> None:
        """Publish from another thread (the SQLite writer)."""
        loop = self._loop
        if loop is None or not events:
            return
        if loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.publish, events)
        except RuntimeError:  # loop closed meanwhile
            pass
