"""The change bus across nodes: PostgreSQL LISTEN/NOTIFY (DESIGN.md §7).

Each write transaction NOTIFYs its change events on the installation's channel before COMMIT,
so the notification is delivered exactly when (and only if) the transaction commits. Payloads
are compact JSON of ids and modseqs, never message data, and each stays under PostgreSQL's
8000-byte limit: an event naming too many UIDs is split into several events with the same
modseq.

Every node LISTENs on one dedicated connection (not a pooled one) and republishes what other
nodes committed on its in-process :class:`~letterbird.storage.events.ChangeBus`; its own
notifications are recognised by the node id and skipped (they were published locally after
commit already). Notifications sent while the listener is disconnected are lost, so after a
reconnect every subscription is marked ``overflowed`` and handed a :data:`RESYNC` marker event
(``mailbox_id`` 0) to wake it: subscribers then resync from their last modseq, exactly as after
a local queue overflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from letterbird.logs import event
from letterbird.storage.events import RESYNC_MAILBOX, ChangeBus, ChangeEvent, ChangeKind

__all__ = ["MAX_PAYLOAD", "RESYNC_MAILBOX", "PgChangeBus", "decode_payload", "encode_events"]

log = logging.getLogger("letterbird.storage")

MAX_PAYLOAD = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more

_KIND_CODE = {
    ChangeKind.APPEND: "a",
    ChangeKind.FLAGS: "f",
    ChangeKind.EXPUNGE: "x",
    ChangeKind.MAILBOX: "m",
}
_CODE_KIND = {v: k for k, v in _KIND_CODE.items()}


def _event_json(ev: ChangeEvent) -> str:
    return json.dumps(
        [ev.account_id, ev.mailbox_id, _KIND_CODE[ev.kind], list(ev.uids), ev.modseq],
        separators=(",", ":"),
    )


def _split(ev: ChangeEvent, limit: int) -> list[str]:
    text = _event_json(ev)
    if len(text) <= limit or len(ev.uids) <= 1:
        return [text]
    half = len(ev.uids) // 2
    a = ChangeEvent(ev.account_id, ev.mailbox_id, ev.kind, ev.uids[:half], ev.modseq)
    b = ChangeEvent(ev.account_id, ev.mailbox_id, ev.kind, ev.uids[half:], ev.modseq)
    return _split(a, limit) + _split(b, limit)


def encode_events(node: str, events: list[ChangeEvent], limit: int = MAX_PAYLOAD) -> list[str]:
    """NOTIFY payloads (each ``limit`` bytes or fewer) carrying ``events`` from ``node``."""
    head = json.dumps(node) + ","
    room = limit - len(head) - 4  # '[', ']' and the brackets around the event list
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for ev in events:
        for part in _split(ev, room):
            if current and size + len(part) + 1 > room:
                payloads.append("[" + head + "[" + ",".join(current) + "]]")
                current, size = [], 0
            current.append(part)
            size += len(part) + 1
    if current:
        payloads.append("[" + head + "[" + ",".join(current) + "]]")
    return payloads


def decode_payload(payload: str) -> tuple[str, list[ChangeEvent]]:
    """(origin node, events) of a payload; ValueError when it is not one of ours."""
    try:
        node, items = json.loads(payload)
        events = [
            ChangeEvent(int(a), int(m), _CODE_KIND[k], tuple(int(u) for u in uids), int(ms))
            for a, m, k, uids, ms in items
        ]
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"bad change notification: {exc}") from None
    return str(node), events


Connect = Callable[[], Awaitable[Any]]


class PgChangeBus(ChangeBus):
    """A :class:`ChangeBus` that also carries events between nodes over LISTEN/NOTIFY."""

    def __init__(
        self,
        queue_size: int = 10000,
        *,
        node: str | None = None,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 10.0,
        keepalive: float = 30.0,
    ) -> None:
        super().__init__(queue_size)
        self.node = node or secrets.token_hex(8)
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.keepalive = keepalive
        self.channel = ""
        self.connected = asyncio.Event()
        self.reconnects = 0  # how many times the listener came back (for tests and metrics)
        self.received = 0  # events received from other nodes
        self._connect: Connect | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._lost = asyncio.Event()  # set when the listening connection closes

    def payloads(self, events: list[ChangeEvent]) -> list[str]:
        return encode_events(self.node, events)

    # -- the listener ------------------------------------------------------------------
    async def start(self, connect: Connect, channel: str) -> None:
        """Start listening (returns once the first LISTEN is in place)."""
        self._connect = connect
        self.channel = channel
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        conn = await connect()
        await self._listen(conn)
        self._task = asyncio.create_task(self._run(conn), name="pg-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_conn()

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()

    async def _listen(self, conn: Any) -> None:
        self._conn = conn
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        self._lost = lost
        await conn.add_listener(self.channel, self._on_notify)
        self.connected.set()

    async def _run(self, conn: Any) -> None:
        delay = self.reconnect_delay
        while True:
            # connected: wait for the connection to drop (or a keepalive to fail)
            while not self._lost.is_set():
                try:
                    await asyncio.wait_for(self._lost.wait(), self.keepalive)
                except TimeoutError:
                    try:
                        await asyncio.wait_for(conn.execute("SELECT 1"), 10)
                    except Exception:
                        break
            event(log, "storage.listener_lost", level=logging.WARNING, channel=self.channel)
            await self._close_conn()
            # reconnect with backoff
            while True:
                await asyncio.sleep(delay)
                try:
                    assert self._connect is not None
                    conn = await self._connect()
                    await self._listen(conn)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    delay = min(delay * 2, self.max_reconnect_delay)
                    event(log, "storage.listener_retry", level=logging.WARNING, error=exc)
                    continue
                break
            delay = self.reconnect_delay
            self.reconnects += 1
            event(log, "storage.listener_reconnected", channel=self.channel)
            self.resync_all()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            node, events = decode_payload(payload)
        except ValueError as exc:
            event(log, "storage.bad_notification", level=logging.WARNING, error=exc)
            return
        if node == self.node:
            return
        self.received += len(events)
        self.publish_remote(events)
