"""Messages between the worker processes of one machine (the ``workers`` setting).

The master holds one connected stream socket per worker (a ``socket.socketpair()`` end; the
other end is passed to the worker) and runs a :class:`RelayHub` on its event loop; each worker
runs a :class:`RelayLink` on its own. Three kinds of frame travel, each one line of ASCII:

- ``e<payload>\\n``: change events a worker committed, ``<payload>`` being a
  :func:`letterbird.storage.pg_events.encode_events` payload whose node id is the worker index.
  One frame per :meth:`ChangeBus.publish <letterbird.storage.events.ChangeBus.publish>` call (a
  commit's batch); an event naming very many UIDs is split over several frames of at most
  :data:`FRAME_LIMIT` bytes, as for NOTIFY. The hub forwards it to every OTHER worker, which
  publishes the events to its local subscribers without sending them back.
- ``w\\n``: wake the outgoing queue, which runs in worker :data:`QUEUE_WORKER` only; the hub
  forwards it there (dropped while that worker is absent: a starting queue scans anyway).
- ``r\\n``: events meant for you may have been lost: the receiving worker marks every
  subscription overflowed and hands it the RESYNC marker
  (:meth:`~letterbird.storage.events.ChangeBus.resync_all`), exactly as after a LISTEN
  reconnect with PostgreSQL.

No side ever blocks on a slow peer: each direction of each link has a bounded output buffer
(:data:`BUFFER_LIMIT` bytes besides one batch in the kernel's hands). On overflow the pending
frames are dropped and replaced by one ``r`` frame (plus one ``w`` if a wake was among them);
later frames queue behind it. A worker whose own buffer overflows sends ``r`` to the hub, which
passes it to every other worker. When a worker's link ends (the worker died, or the master
removes or replaces it) the hub sends ``r`` to every other worker, since the worker may have
committed changes whose events never left it; a worker whose link to the master ends resyncs
its own subscribers and stops forwarding.

With PostgreSQL, LISTEN/NOTIFY already carries every change to every process, so workers make
their link with ``carry_events=False``: only wake frames travel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable

from letterbird.logs import event
from letterbird.storage.events import ChangeBus, ChangeEvent
from letterbird.storage.pg_events import decode_payload, encode_events

__all__ = ["BUFFER_LIMIT", "FRAME_LIMIT", "QUEUE_WORKER", "RelayHub", "RelayLink"]

log = logging.getLogger("letterbird.server")

QUEUE_WORKER = 0  # the worker that runs the outgoing queue
FRAME_LIMIT = 32_000  # bytes of an event payload (a frame adds its tag and newline)
BUFFER_LIMIT = 1 << 20  # bytes of frames waiting for one peer before they give way to a resync
MAX_LINE = 2 * FRAME_LIMIT  # a longer line is a protocol error: the link is dropped
RECV_SIZE = 1 << 16

EVENTS = b"e"
WAKE = b"w\n"
RESYNC = b"r\n"


class _FrameLink:
    """One end of a relay socket: reads lines and hands each (with its newline) to
    ``on_frame``; sends frames through a bounded buffer. ``on_lost`` is called once if the
    peer goes away or errs (not after :meth:`close`).

    Plain selector callbacks rather than tasks or a transport: a frame is read in the reader
    callback and written straight to the socket when nothing is queued before it, so relaying
    an event costs a system call on each side and no task switch (this runs for every
    commit of every worker)."""

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        on_frame: Callable[[bytes], None],
        on_lost: Callable[[], None],
        buffer_limit: int,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self.name = name
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._limit = buffer_limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partial = b""  # the rest of a frame the socket took only part of: sent first
        self._pending: deque[bytes] = deque()  # whole frames waiting behind it
        self._pending_bytes = 0
        self._wake_pending = False
        self._writing = False  # the writer callback is registered
        self._idle = asyncio.Event()  # nothing pending nor being sent
        self._idle.set()
        self._buf = bytearray()
        self.closed = False
        self.overflows = 0
        self.expect_end = False  # the peer is being stopped: its going away is no news

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)
        if self._pending:  # queued before the start
            self._start_writing()

    # -- sending -----------------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        """Queue ``frame`` (ending in a newline); never blocks, no-op once closed."""
        if self.closed:
            return
        if frame == WAKE:
            if self._wake_pending:
                return
            self._wake_pending = True
        if not self._writing and self._loop is not None:
            try:
                sent = self._sock.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            if frame == WAKE and sent == len(frame):
                self._wake_pending = False
            if sent == len(frame):
                return
            self._partial = frame[sent:]
            self._start_writing()
            return
        if self._pending_bytes + len(frame) > self._limit:
            self._overflow(frame)
        else:
            self._pending.append(frame)
            self._pending_bytes += len(frame)

    def _start_writing(self) -> None:
        assert self._loop is not None
        self._writing = True
        self._idle.clear()
        self._loop.add_writer(self._fd, self._writable)

    def _overflow(self, frame: bytes) -> None:
        """Replace the pending frames (and ``frame``) by a resync, keeping a wake; a frame
        already partly sent is finished first."""
        self.overflows += 1
        event(log, "relay.overflow", level=logging.WARNING, link=self.name)
        self._pending.clear()
        self._pending.append(RESYNC)
        if self._wake_pending:
            self._pending.append(WAKE)
        self._pending_bytes = sum(len(f) for f in self._pending)

    def _writable(self) -> None:
        if not self._partial:
            self._partial = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._wake_pending = False
        try:
            sent = self._sock.send(self._partial)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        self._partial = self._partial[sent:]
        if not self._partial and not self._pending:
            assert self._loop is not None
            self._loop.remove_writer(self._fd)
            self._writing = False
            self._idle.set()

    async def flush(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until every queued frame is in the kernel's hands."""
        if not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)

    # -- receiving ---------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data = self._sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        buf = self._buf
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            self._on_frame(bytes(buf[start : end + 1]))
            if self.closed:
                return
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            self._lost(ValueError(f"frame longer than {MAX_LINE} bytes"))

    # -- ending ------------------------------------------------------------------------
    def _lost(self, error: Exception | None) -> None:
        if self.closed:
            return
        level = logging.DEBUG if self.expect_end else logging.WARNING
        event(log, "relay.link_lost", level=level, link=self.name, error=error)
        self.close()
        self._on_lost()

    def close(self) -> None:
        """Stop watching the socket and close it (unsent frames are dropped: see flush)."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._partial = b""
        self._idle.set()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
        self._writing = False
        self._sock.close()

    async def wait_closed(self) -> None:
        """Closing is immediate (no tasks to wait for); kept for the callers' symmetry."""


class RelayHub:
    """The master's side: forwards each worker's frames to the workers they are for.

    Construct anywhere; call the methods on the master's event loop.
    """

    def __init__(self, *, buffer_limit: int = BUFFER_LIMIT) -> None:
        self._buffer_limit = buffer_limit
        self._links: dict[int, _FrameLink] = {}
        self._closing: set[_FrameLink] = set()
        self._closed = False
        self._stopping = False
        self.forwarded = 0  # frames handed to a worker's link
        self.overflows = 0  # resyncs sent in place of frames a slow worker did not take

    @property
    def workers(self) -> list[int]:
        """Indexes of the workers linked now."""
        return sorted(self._links)

    def add_worker(self, index: int, sock: socket.socket) -> None:
        """Relay for worker ``index`` over ``sock`` (replacing its previous link, if any)."""
        if self._closed:
            sock.close()
            return
        self.remove_worker(index)
        link: _FrameLink

        def on_frame(frame: bytes) -> None:
            self._route(index, frame)

        def on_lost() -> None:
            self._drop(index, link)

        link = _FrameLink(sock, f"worker-{index}", on_frame, on_lost, self._buffer_limit)
        self._links[index] = link
        link.start()

    def remove_worker(self, index: int) -> None:
        """Stop relaying for worker ``index`` (no-op if unknown); the others resync."""
        link = self._links.get(index)
        if link is not None:
            link.close()
            self._drop(index, link)

    def stopping(self) -> None:
        """Every worker is being stopped: their links ending is expected (logged quietly,
        and the others are not made to resync for it)."""
        self._stopping = True
        for link in self._links.values():
            link.expect_end = True

    def _drop(self, index: int, link: _FrameLink) -> None:
        if self._links.get(index) is not link:
            return
        del self._links[index]
        self._closing.add(link)
        if self._stopping:
            return
        # The worker may have committed changes whose events never reached us.
        for other in self._links.values():
            self._send(other, RESYNC)

    def _route(self, sender: int, frame: bytes) -> None:
        tag = frame[:1]
        if tag == EVENTS or frame == RESYNC:
            for index, link in self._links.items():
                if index != sender:
                    self._send(link, frame)
        elif frame == WAKE:
            queue_link = self._links.get(QUEUE_WORKER)
            if queue_link is not None:
                self._send(queue_link, frame)
        else:
            event(log, "relay.bad_frame", level=logging.WARNING, worker=sender, frame=frame[:40])

    def _send(self, link: _FrameLink, frame: bytes) -> None:
        before = link.overflows
        link.send(frame)
        self.forwarded += 1
        self.overflows += link.overflows - before

    async def aclose(self) -> None:
        """Close every link (the workers then resync and stop forwarding)."""
        self._closed = True
        links = list(self._links.values()) + list(self._closing)
        self._links.clear()
        self._closing.clear()
        for link in links:
            link.close()
        for link in links:
            await link.wait_closed()


class RelayLink:
    """A worker's side: carries this process's change events and queue wakes to the master's
    hub, and publishes what the hub brings on the local bus.

    ``carry_events=False`` (PostgreSQL, whose LISTEN/NOTIFY already reaches every process)
    relays wake frames only. ``on_wake`` runs on the event loop when a wake arrives (worker
    :data:`QUEUE_WORKER` only).
    """

    def __init__(
        self,
        bus: ChangeBus,
        sock: socket.socket,
        worker: int,
        on_wake: Callable[[], None] | None = None,
        *,
        carry_events: bool = True,
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        self.bus = bus
        self.worker = worker
        self.node = str(worker)
        self.on_wake = on_wake
        self.carry_events = carry_events
        self._link = _FrameLink(sock, f"hub-{worker}", self._on_frame, self._on_lost, buffer_limit)
        self._started = False
        self.ended = asyncio.Event()  # set when the link is closed or lost
        self.sent = 0  # event frames sent
        self.received = 0  # events received from other workers
        self.resyncs = 0  # resyncs of the local subscribers (link lost or resync frame)

    @property
    def closed(self) -> bool:
        return self._link.closed

    @property
    def overflows(self) -> int:
        """How many times frames for the hub gave way to a resync."""
        return self._link.overflows

    async def start(self) -> None:
        """Start relaying (call on the event loop that publishes on ``bus``)."""
        if self._started or self.closed:
            return
        self._started = True
        if self.carry_events:
            self.bus.forward = self._forward
        self._link.start()

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Stop relaying, after handing the frames still queued to the hub (up to
        ``flush_timeout`` seconds)."""
        self._unhook()
        if self._started:
            await self._link.flush(flush_timeout)
        self._link.close()
        await self._link.wait_closed()
        self.ended.set()

    def wake_queue(self) -> None:
        """Wake the outgoing queue: send a wake frame for worker :data:`QUEUE_WORKER` (no-op
        once closed), or call ``on_wake`` directly when that worker is this one."""
        if self.worker == QUEUE_WORKER:
            self._wake()
        elif not self.closed:
            self._link.send(WAKE)

    def _forward(self, events: list[ChangeEvent]) -> None:
        for payload in encode_events(self.node, events, FRAME_LIMIT):
            self._link.send(EVENTS + payload.encode() + b"\n")
            self.sent += 1

    def _on_frame(self, frame: bytes) -> None:
        if frame[:1] == EVENTS:
            if self.carry_events:
                self._receive(frame[1:-1])
        elif frame == WAKE:
            self._wake()
        elif frame == RESYNC:
            self._resync()
        else:
            event(log, "relay.bad_frame", level=logging.WARNING, frame=frame[:40])

    def _receive(self, payload: bytes) -> None:
        try:
            node, events = decode_payload(payload.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            event(log, "relay.bad_frame", level=logging.WARNING, error=exc)
            return
        if node != self.node:
            self.received += len(events)
            self.bus.publish_remote(events)

    def _wake(self) -> None:
        if self.on_wake is not None:
            try:
                self.on_wake()
            except Exception:
                log.exception("relay: waking the queue failed")

    def _resync(self) -> None:
        self.resyncs += 1
        self.bus.resync_all()

    def _on_lost(self) -> None:
        self._unhook()
        self._resync()
        self.ended.set()

    def _unhook(self) -> None:
        if self.bus.forward == self._forward:
            self.bus.forward = None
