"""The outgoing queue service: claim due entries, deliver, retry, expire, bounce (DESIGN.md §6).

Queued messages live in storage (one queue id per message, one entry per destination domain,
committed with the local deliveries before SMTP's ``250``). This service is the only path out:

* **Scheduling.** A loop claims due entries with a *lease* (``owner`` = ``host:pid:random``,
  ``[delivery] lease``), renewed every third of the lease while they are being delivered and
  checked when the result is written (``queue_update`` refuses a lost lease), so a slow live
  node is never raced by another. It sleeps until :meth:`Storage.queue_next_wait` or
  :meth:`wake`, and polls every ``poll_interval`` anyway (the CLI's ``queue flush`` and other
  nodes change due times behind its back). ``SIGUSR1`` (sent by ``letterbird queue flush``)
  wakes it and forgets the host backoff.
* **Two clocks.** Whether a row may be claimed is decided on the *database* clock only
  (PostgreSQL's ``clock_timestamp()`` inside the statement; SQLite's one machine): leases are
  set, renewed and compared there, and so is "is it due?", so a node whose clock runs fast
  neither steals a lease nor claims an entry early, and one whose clock runs slow does not set
  leases that are already expired. ``queue_update`` checks only that we are still the owner:
  a lease that expired but that nobody took over is still ours (a takeover changes the
  owner). The service's injectable ``clock`` measures *intervals*: the retry schedule, the
  delay notice (``warn_after``), the expiry (``lifetime``, from the entry's creation) and
  host backoff. A retry time is computed on that clock and stored as a delay from the
  database clock (``queue_update(relative_to=now)``), so a skewed node still waits the
  retry interval, neither hammering a host nor holding an entry back by its skew; the
  expiry and the delay notice are still compared with ``created`` (stamped by the
  database), so a node off by S seconds warns and gives up S seconds early or late (run
  NTP). Tests drive ``clock`` to make entries old, and make them due by writing due times
  (:meth:`Storage.queue_flush`): a fake clock never makes a row claimable.
* **Routing.** Each domain is resolved once per claim (:func:`resolve_next_hops`: static
  ``[delivery.routes]``, MX in preference order with equal preferences shuffled, implicit MX,
  null MX and MX-points-at-us loops as permanent errors).
* **Connections.** Entries with the same next hops share connections
  (:func:`~letterbird.delivery.queue.scheduler.split_batches`); ``concurrency`` connections at
  most overall and ``per_host_concurrency`` per host; each MX/address is tried in turn when a
  session fails before the server answered for a recipient; a host that keeps failing is
  skipped as a whole for a while (:class:`~letterbird.delivery.queue.scheduler.HostBackoff`).
* **Outcomes.** Every message's result is written as soon as it is known (RFC 5321 §6.1: only a
  connection lost after the final dot may duplicate a message). ``2yz``: done (a ``relayed``
  DSN when NOTIFY=SUCCESS and the next hop lacks DSN; otherwise NOTIFY/ORCPT/ENVID/RET were
  passed on). ``5yz``, null MX, loops, unconvertible 8-bit: bounce now. ``4yz`` and connection
  failures: retry along ``retry`` (the last interval repeats), a ``delayed`` DSN once after
  ``warn_after``, and a ``failed`` DSN with ``4.4.7`` once ``lifetime`` has passed.
* **DSNs** (:mod:`letterbird.delivery.dsn`) go to the envelope sender with the null reverse
  path (routed as :meth:`notify` does); NOTIFY=NEVER gets none; a message with the null
  sender is never bounced to its sender: its failure report goes to the postmaster account,
  locally, so bounces never loop. A DSN is built and routed *before* the attempt's result
  is written and stored in the same transaction (``queue_update(notification=…)``; the
  removal and its DSN likewise), so a crash can lose neither without the other, and a lost
  lease writes neither. If that transaction fails the entry stays as it was, to be tried
  and reported again; if only the DSN's mailbox refuses it (over quota), the result is
  written without it, logged (``queue.dsn_dropped``), rather than redelivering forever.

Time comes from an injectable ``clock`` and every interval is a setting, so tests never sleep
for minutes. One structured log line per attempt: ``queue.attempt id=… domain=… host=…
result=… reply=…``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from letterbird.config import Config, DeliverySettings, parse_hostport
from letterbird.delivery.dns import Resolver
from letterbird.delivery.dsn import DsnRecipient, build_dsn, notify_wants
from letterbird.delivery.mx import MxResolver, NextHop, NextHops, resolve_next_hops
from letterbird.delivery.queue.scheduler import HostBackoff, next_attempt, split_batches
from letterbird.delivery.queue.worker import (
    MessageBody,
    MessageFeed,
    Outbound,
    RecipientOutcome,
    SmtpTransport,
    Transport,
    return_path_length,
)
from letterbird.directory.service import Directory
from letterbird.logs import event
from letterbird.mime import header_section_end, parse_message
from letterbird.proto.smtp.client import DeliveryStatus, diagnostic
from letterbird.proto.smtp.replies import Reply
from letterbird.storage.interface import (
    AppendTarget,
    BlobSource,
    NotFound,
    Notification,
    OutgoingMessage,
    QueueEntry,
    QueueRecipient,
    QuotaExceeded,
    Storage,
    StorageError,
)

log = logging.getLogger("letterbird.queue")

_T = TypeVar("_T")

__all__ = ["LOCAL_ERROR", "REMOVED", "QueueService", "new_queue_id", "owner_id"]

#: Status of a recipient whose message was removed with ``letterbird queue remove``.
REMOVED = Reply(550, "5.0.0", "Removed from the queue by the administrator")
#: An unexpected local failure during an attempt (the entry is retried later).
LOCAL_ERROR = Reply(451, "4.3.0", "Local error during delivery")
#: Every next hop is being skipped after repeated connection failures (RFC 3463 X.4.1).
HOST_SKIPPED = Reply(451, "4.4.1", "Host skipped after repeated failures")
#: RFC 3463 X.4.7 "Delivery time expired".
EXPIRED_STATUS = "4.4.7"
#: How long :meth:`QueueService.aclose` lets sessions finish their current message.
STOP_GRACE = 10.0
#: Shortest pause of the scheduler loop when it found nothing to claim.
MIN_PAUSE = 0.02
#: Bytes read from a message to find its header section for a HDRS report.
HEADER_READ = 256 * 1024


_ID_RANDOM = bytearray()  # os.urandom bytes not used yet: one system call per 200 ids
_ID_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_ID_RANDOM.clear)  # a child never repeats its parent's


def new_queue_id() -> str:
    """A new queued-message id: 21 upper-case hex digits, the time in milliseconds then 40
    random bits (ids sort by age; a collision needs the same millisecond and random part)."""
    with _ID_LOCK:
        if len(_ID_RANDOM) < 5:
            _ID_RANDOM[:] = os.urandom(1000)
        random_part = _ID_RANDOM[-5:].hex().upper()
        del _ID_RANDOM[-5:]
    return f"{time.time_ns() // 1_000_000:011X}{random_part}"


def owner_id() -> str:
    """The lease owner name of this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _local_addresses(config: Config) -> list[str]:
    """IP addresses our MX listeners answer on at the delivery port (for MX loop checks)."""
    found: list[str] = []
    for addr in config.listen.smtp:
        try:
            host, port = parse_hostport(addr)
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if port == config.delivery.smtp_port and not ip.is_unspecified:
            found.append(str(ip))
    return found


class QueueService:
    """Delivers the outgoing queue. ``start()`` it once; ``aclose()`` stops it.

    ``transport``, ``clock``, ``owner`` and ``rng`` are seams for tests."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        directory: Directory,
        resolver: MxResolver | None = None,
        *,
        clock: Callable[[], float] = time.time,
        transport: Transport | None = None,
        owner: str | None = None,
        local_addresses: Collection[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.settings = config.delivery
        self.storage = storage
        self.directory = directory
        self._resolver = resolver
        self.clock = clock
        self.transport: Transport = transport or SmtpTransport(self.settings, config.hostname)
        self.owner = owner or owner_id()
        self.local_addresses = (
            list(local_addresses) if local_addresses is not None else _local_addresses(config)
        )
        self.local_hostnames = [config.hostname] + (
            [self.settings.helo_name] if self.settings.helo_name else []
        )
        self.rng = rng or random.Random()
        self.backoff = HostBackoff(self.settings.host_failures, self.settings.retry)
        s = self.settings
        self.max_inflight = s.concurrency * s.messages_per_connection
        self._connections = asyncio.Semaphore(s.concurrency)
        self._hosts: dict[tuple[str, int], tuple[asyncio.Semaphore, int]] = {}
        self._open: dict[tuple[NextHop, ...], list[_Batch]] = {}
        self._inflight: dict[int, QueueEntry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        # Set when another process runs this queue (letterbird.server.workers).
        self.wake_elsewhere: Callable[[], None] | None = None
        self._renew_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the scheduler loop and the lease renewal (idempotent)."""
        if self._loop_task is None:
            self._stopping = False
            self._loop_task = asyncio.create_task(self._run(), name="queue-scheduler")
            self._renew_task = asyncio.create_task(self._renew_loop(), name="queue-renew")
            event(log, "queue.started", owner=self.owner)

    async def aclose(self, grace: float = STOP_GRACE) -> None:
        """Stop: no new work; sessions finish their current message (up to ``grace``);
        entries not attempted are released at once for the next start or another node."""
        self._stopping = True
        self._wake.set()
        for task in (self._loop_task, self._renew_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._renew_task = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._tasks and loop.time() < deadline:  # tasks may start others: look again
            await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())
        if self._tasks:
            pending = set(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=grace)
        if self._inflight:
            ids = list(self._inflight)
            self._inflight.clear()
            with contextlib.suppress(StorageError):
                await self.storage.queue_renew(ids, self.owner, -1.0)
            event(log, "queue.released", entries=len(ids))

    def wake(self, *, reset_backoff: bool = False) -> None:
        """Look for due entries now (non-blocking). ``reset_backoff`` also forgets failing
        hosts (``letterbird queue flush``). Not started here but ``wake_elsewhere`` set (a
        worker process whose queue runs in another one): call that instead."""
        if self._loop_task is None and self.wake_elsewhere is not None:
            self.wake_elsewhere()
            return
        if reset_backoff:
            self.backoff.reset()
        self._wake.set()

    @property
    def busy(self) -> bool:
        """True while entries are being delivered."""
        return bool(self._tasks or self._inflight)

    async def wait_idle(self) -> None:
        """Wait until every delivery started so far has finished (tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = await self.run_once()
                delay = await self._pause(claimed)
            except Exception as exc:  # storage trouble: log, wait, try again
                event(log, "queue.loop_error", level=logging.ERROR, error=exc)
                delay = self.settings.poll_interval
            if self._wake.is_set():
                continue  # woken while claiming: look again at once
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: no Task per round
                    await self._wake.wait()

    async def _pause(self, claimed: int) -> float:
        poll = self.settings.poll_interval
        if len(self._inflight) >= self.max_inflight:
            return poll  # a finishing delivery wakes the loop
        wait = await self.storage.queue_next_wait()  # on the database clock
        if wait is None:
            return poll
        delay = min(poll, wait)
        return delay if claimed else max(delay, MIN_PAUSE)

    async def run_once(self) -> int:
        """Claim what is due now and start delivering it; returns how many entries."""
        free = self.max_inflight - len(self._inflight)
        if free <= 0 or self._stopping:
            return 0
        entries = await self.storage.queue_claim(self.owner, self.settings.lease, free)
        for entry in entries:
            self._inflight[entry.id] = entry
        if entries:
            self._spawn(self._process(entries))
        return len(entries)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("queue: delivery task failed: %r", exc, exc_info=exc)
        self._wake.set()

    async def _renew_loop(self) -> None:
        interval = max(self.settings.lease / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            ids = list(self._inflight)
            if not ids:
                continue
            try:
                held = await self.storage.queue_renew(ids, self.owner, self.settings.lease)
            except StorageError as exc:
                event(log, "queue.renew_failed", level=logging.ERROR, error=exc)
                continue
            if held < len(ids):
                event(log, "queue.lease_lost", level=logging.WARNING, lost=len(ids) - held)

    # ------------------------------------------------------------------ delivery
    async def _process(self, entries: list[QueueEntry]) -> None:
        messages = [
            Outbound(entry, MessageBody(self.storage, entry.blob_id, entry.size))
            for entry in entries
        ]
        try:
            domains = sorted({m.entry.domain for m in messages})
            found = await asyncio.gather(*(self._next_hops(d) for d in domains))
        except Exception as exc:
            await self._internal_error(messages, exc)
            return
        routes = dict(zip(domains, found, strict=True))
        groups: dict[tuple[NextHop, ...], list[Outbound]] = {}
        for message in messages:
            hops = routes[message.entry.domain]
            try:
                if hops.error is not None:
                    await self._no_route(message, hops)
                    continue
                await message.body.load()
            except Exception as exc:
                await self._internal_error([message], exc)
                continue
            if not self._join(hops.hops, message):
                groups.setdefault(hops.hops, []).append(message)
        s = self.settings
        for hops_key, group in groups.items():
            for batch in split_batches(group, s.per_host_concurrency, s.messages_per_connection):
                self._spawn(self._deliver(_Batch(hops_key, batch, s)))

    def _join(self, hops: tuple[NextHop, ...], message: Outbound) -> bool:
        """Put ``message`` on an open connection to the same next hops: one that is idle, or,
        when ``per_host_concurrency`` connections are open already, the least busy one."""
        batches = sorted(self._open.get(hops, ()), key=lambda b: b.backlog)
        crowded = len(batches) >= self.settings.per_host_concurrency
        return any((batch.backlog == 0 or crowded) and batch.add(message) for batch in batches)

    async def _next_hops(self, domain: str) -> NextHops:
        if self._resolver is None:
            self._resolver = Resolver(self.config.dns)
        return await resolve_next_hops(
            domain,
            self._resolver,
            port=self.settings.smtp_port,
            local_hostnames=self.local_hostnames,
            routes=self.settings.routes,
            local_addresses=self.local_addresses,
            rng=self.rng,
        )

    async def _no_route(self, message: Outbound, hops: NextHops) -> None:
        error = hops.error
        assert error is not None
        reply = Reply(451 if error.temporary else 550, error.status, error.message)
        if error.temporary:
            message.failure, message.failure_text = reply, diagnostic(reply)
            await self._finish(message)
            return
        outcomes = [
            RecipientOutcome(r, DeliveryStatus.PERMANENT, reply, remote=False)
            for r in message.pending
        ]
        await self._on_result(message, outcomes)

    async def _deliver(self, batch: _Batch) -> None:
        self._open.setdefault(batch.hops, []).append(batch)
        try:
            not_before = await self._sessions(batch)
        except asyncio.CancelledError:
            batch.close()
            await asyncio.shield(self._after_stop(batch.messages))
            raise
        except Exception as exc:
            batch.close()
            await self._internal_error(batch.messages, exc)
            return
        finally:
            batch.close()
            self._forget(batch)
        if self._stopping:
            await self._after_stop(batch.messages)
            return
        for message in batch.messages:
            if not message.finished:
                try:
                    await self._finish(message, not_before=not_before)
                except Exception as exc:  # storage down: the lease will expire; go on
                    log.error("queue: cannot record an attempt: %r", exc, exc_info=exc)
                    self._inflight.pop(message.entry.id, None)

    def _forget(self, batch: _Batch) -> None:
        open_batches = self._open.get(batch.hops, [])
        if batch in open_batches:
            open_batches.remove(batch)
        if not open_batches:
            self._open.pop(batch.hops, None)

    async def _sessions(self, batch: _Batch) -> float | None:
        """Try each hop in turn for what is still pending; returns the time before which the
        rest should not be retried (all hops skipped as failing), if so."""
        skipped_until: list[float] = []
        for index, hop in enumerate(batch.hops):
            if index == 0:
                feed = batch.feed  # open: mail claimed meanwhile may join it
            else:
                batch.close()
                feed = MessageFeed([m for m in batch.messages if m.pending and not m.finished])
            if not feed.pending or self._stopping:
                return None
            key = (hop.ip, hop.port)
            dead = self.backoff.dead(key, self.clock())
            if dead is not None:
                feed.close()
                skipped_until.append(dead[0])
                text = f"{_where(hop)}: host skipped after repeated failures: {dead[1]}"
                for m in batch.messages:
                    if not m.finished:
                        m.failure, m.failure_text = HOST_SKIPPED, text
                continue
            async with self._host_slot(key), self._connections:
                if self._stopping:
                    return None
                report = await self.transport.session(
                    hop, feed, self._on_result, lambda: self._stopping
                )
            feed.close()
            failure = report.failure
            text = ""
            if failure is not None:
                text = f"{_where(hop)}: {diagnostic(failure)}"
                for m in batch.messages:
                    if m.pending and not m.finished:
                        m.failure, m.failure_text = failure, text
            if report.usable:
                self.backoff.succeeded(key)
            else:
                until = self.backoff.failed(key, self.clock(), text or "session failed")
                event(
                    log,
                    "queue.host_failed",
                    host=hop.mx,
                    ip=hop.ip,
                    port=hop.port,
                    reply=text,
                    skipped_until=_stamp(until) if until else None,
                )
        if skipped_until and len(skipped_until) == len(batch.hops):
            return min(skipped_until)
        return None

    @contextlib.asynccontextmanager
    async def _host_slot(self, key: tuple[str, int]) -> AsyncIterator[None]:
        sem, users = self._hosts.get(key) or (
            asyncio.Semaphore(self.settings.per_host_concurrency),
            0,
        )
        self._hosts[key] = (sem, users + 1)
        try:
            async with sem:
                yield
        finally:
            sem, users = self._hosts[key]
            if users <= 1:
                del self._hosts[key]
            else:
                self._hosts[key] = (sem, users - 1)

    async def _on_result(self, message: Outbound, outcomes: list[RecipientOutcome]) -> None:
        """The worker's report for some of a message's recipients."""
        for outcome in outcomes:
            if outcome.retry_elsewhere:
                message.failure = outcome.reply
                message.failure_text = outcome.text()
                continue
            with contextlib.suppress(ValueError):
                message.pending.remove(outcome.recipient)
            message.outcomes.append(outcome)
        if not message.pending and not message.finished:
            # Recorded in the background: the session goes on with its next message while
            # this commit is under way (concurrent commits share one fsync).
            message.finished = True
            self._spawn(self._finish(message))

    async def _internal_error(self, batch: Sequence[Outbound], exc: BaseException) -> None:
        log.error("queue: internal error: %r", exc, exc_info=exc)
        for message in batch:
            if not message.finished:
                message.failure = LOCAL_ERROR
                message.failure_text = f"{LOCAL_ERROR.code} {LOCAL_ERROR.enhanced} {exc}"
                try:
                    await self._finish(message)
                except Exception as again:  # storage down: the lease will expire
                    log.error("queue: cannot record the failure: %r", again)
                    self._inflight.pop(message.entry.id, None)
                    message.finished = True

    async def _after_stop(self, batch: Sequence[Outbound]) -> None:
        """Shutting down: record what was attempted; the rest is released by aclose()."""
        for message in batch:
            if not message.finished and message.outcomes:
                with contextlib.suppress(StorageError):
                    await self._finish(message, retry_now=True)

    # ------------------------------------------------------------------ outcomes
    async def _finish(
        self,
        message: Outbound,
        *,
        not_before: float | None = None,
        retry_now: bool = False,
    ) -> None:
        """Write one attempt's result for an entry and the DSN it calls for, in one storage
        transaction: the DSN is built and routed first, so after the commit nothing is left
        to do but waking the queue (a crash loses neither the result nor the report)."""
        message.finished = True
        message.body.release()
        message.seven_bit = None
        entry = message.entry
        s = self.settings
        now = self.clock()
        outcomes = message.outcomes
        delivered = [o for o in outcomes if o.status is DeliveryStatus.DELIVERED]
        failed = [o for o in outcomes if o.status is DeliveryStatus.PERMANENT]
        deferred = [o for o in outcomes if o.status is DeliveryStatus.TEMPORARY]
        last_error = message.failure_text
        if deferred:
            last_error = deferred[-1].text()
        remaining = [o.recipient for o in deferred] + list(message.pending)
        expires = entry.created + s.lifetime
        expired = bool(remaining) and now >= expires and not retry_now
        warned = entry.warned
        report: list[DsnRecipient] = []

        for o in failed:
            if notify_wants(o.recipient.notify, "FAILURE"):
                report.append(self._dsn_line(o.recipient, "failed", o, now))
        if expired:
            for r, maybe in self._with_outcomes(remaining, deferred):
                if notify_wants(r.notify, "FAILURE"):
                    line = self._dsn_line(r, "failed", maybe, now, message)
                    report.append(replace(line, status=EXPIRED_STATUS))
            remaining = []
        elif (
            remaining
            and not warned
            and s.warn_after > 0
            and now - entry.created >= s.warn_after
            and not retry_now
        ):
            warned = True
            for r, maybe in self._with_outcomes(remaining, deferred):
                if notify_wants(r.notify, "DELAY"):
                    line = self._dsn_line(r, "delayed", maybe, now, message)
                    report.append(replace(line, will_retry_until=expires))
        for o in delivered:
            if notify_wants(o.recipient.notify, "SUCCESS") and not o.dsn:
                report.append(self._dsn_line(o.recipient, "relayed", o, now))

        if not entry.sender:
            # Never bounce a bounce (RFC 3461 §6.1, RFC 5321 §4.5.5): failures of a message
            # with the null sender are reported to the postmaster, locally; nothing else is.
            report = [r for r in report if r.action == "failed"]
        full = self._full(entry)
        original = await self._original_or_nothing(entry, full) if report else b""

        if retry_now:
            due = now
        else:
            due = next_attempt(now, entry.attempts + 1, entry.created, s.lifetime, s.retry)
            if not_before is not None:
                due = min(max(due, not_before), max(expires, now))

        async def make() -> _Report | None:
            return await self._report(entry, report, original, full)

        async def write(dsn: _Report | None) -> bool:
            # ``due`` is on our clock: the storage keeps the delay, from the database clock
            return await self.storage.queue_update(
                entry.id,
                self.owner,
                remaining,
                due,
                last_error,
                warned,
                relative_to=now,
                notification=dsn.notification if dsn is not None else None,
            )

        try:
            ok, dsn = await self._with_report(entry, make if report else None, write)
        finally:
            self._inflight.pop(entry.id, None)
        result = _result_name(delivered, failed, remaining, expired)
        hop = next((o.hop for o in reversed(outcomes) if o.hop is not None), None)
        reply = last_error
        if not remaining and not expired and outcomes:
            reply = outcomes[-1].text()
        event(
            log,
            "queue.attempt",
            id=entry.queue_id,
            domain=entry.domain,
            host=_where(hop) if hop else None,
            result=result,
            attempt=entry.attempts + 1,
            delivered=len(delivered),
            bounced=len(failed) + (len(deferred) + len(message.pending) if expired else 0),
            deferred=len(remaining),
            next=_stamp(due) if remaining else None,
            reply=reply or None,
        )
        if not ok:
            event(log, "queue.lease_lost", level=logging.WARNING, id=entry.queue_id)
            return
        if dsn is not None:
            self._reported(entry, dsn)

    async def _with_report(
        self,
        entry: QueueEntry,
        make: Callable[[], Awaitable[_Report | None]] | None,
        write: Callable[[_Report | None], Awaitable[_T]],
    ) -> tuple[_T, _Report | None]:
        """``write`` a queue change together with the DSN ``make`` builds (None: no DSN).

        When the DSN's mailbox refuses it (over quota, or the account went away since it was
        routed), it is routed once more (an address no longer ours goes to the postmaster);
        refused again, the change is written without it and that is logged: failing the
        change would leave the entry to be delivered and reported again and again. Any other
        failure raises, and nothing is written."""
        try:
            dsn = await make() if make is not None else None
        except StorageError:
            raise  # (directory lookups) the entry is tried and reported again later
        except Exception as exc:  # a bug building the DSN must not make the entry loop
            log.error("queue: cannot build the DSN for %s: %r", entry.queue_id, exc, exc_info=exc)
            event(log, "queue.dsn_failed", level=logging.ERROR, id=entry.queue_id, error=exc)
            dsn = make = None
        try:
            return await write(dsn), dsn
        except (QuotaExceeded, NotFound) as exc:
            if dsn is None:
                raise
            error: StorageError = exc
        assert make is not None
        event(log, "queue.dsn_refused", level=logging.WARNING, id=entry.queue_id, error=error)
        again = await make()
        if again is not None and again.notification.targets != dsn.notification.targets:
            try:
                return await write(again), again
            except (QuotaExceeded, NotFound) as exc:
                error = exc
        event(
            log,
            "queue.dsn_dropped",
            level=logging.ERROR,
            id=entry.queue_id,
            to=dsn.to or "postmaster",
            error=error,
        )
        return await write(None), None

    def _reported(self, entry: QueueEntry, dsn: _Report) -> None:
        """After the commit that stored a DSN: log it, wake the queue for a remote one."""
        if dsn.notification.outgoing is not None:
            self.wake()
        event(
            log,
            "queue.dsn",
            id=entry.queue_id,
            to=dsn.to or "postmaster",
            actions=",".join(sorted({r.action for r in dsn.lines})),
            rcpts=len(dsn.lines),
        )

    @staticmethod
    def _with_outcomes(
        remaining: Sequence[QueueRecipient], deferred: Sequence[RecipientOutcome]
    ) -> list[tuple[QueueRecipient, RecipientOutcome | None]]:
        by_rcpt = {id(o.recipient): o for o in deferred}
        return [(r, by_rcpt.get(id(r))) for r in remaining]

    def _dsn_line(
        self,
        rcpt: QueueRecipient,
        action: str,
        outcome: RecipientOutcome | None,
        now: float,
        message: Outbound | None = None,
    ) -> DsnRecipient:
        """One recipient's DSN fields, from its outcome or (never answered for) from the
        session failure recorded on ``message``."""
        diag: str | None = None
        mta: str | None = None
        if outcome is not None:
            status = outcome.enhanced if action != "relayed" else "2.0.0"
            if outcome.remote:
                diag = f"smtp; {diagnostic(outcome.reply)}"
                mta = outcome.hop.mx if outcome.hop is not None else None
            else:
                diag = f"X-Letterbird; {outcome.text()}"
        else:
            failure = message.failure if message is not None else None
            status = (failure.enhanced if failure is not None else None) or "4.0.0"
            if message is not None and message.failure_text:
                diag = f"X-Letterbird; {message.failure_text}"
        return DsnRecipient(
            rcpt.address,
            action,
            status,
            diagnostic=diag,
            remote_mta=mta,
            orcpt=rcpt.orcpt,
            last_attempt=now,
        )

    def _full(self, entry: QueueEntry) -> bool:
        """Return the whole message (RET=FULL) unless it is bigger than ``dsn_max_full``."""
        return (entry.ret or "").upper() == "FULL" and entry.size <= self.settings.dsn_max_full

    async def _original_or_nothing(self, entry: QueueEntry, full: bool) -> bytes:
        try:
            return await self._original(entry, full=full)
        except StorageError as exc:
            event(log, "queue.read_failed", level=logging.ERROR, id=entry.queue_id, error=exc)
            return b""

    async def _report(
        self, entry: QueueEntry, lines: list[DsnRecipient], original: bytes, full: bool
    ) -> _Report | None:
        """A DSN about ``entry`` for its sender (the postmaster for the null sender), built
        and routed, ready to be stored; None when it has nowhere to go (logged).

        The original is read by the caller *before* the entry is finished: the last entry of a
        message takes the message's bytes with it."""
        route = await self._report_route(entry)
        if route is None:
            return None
        return self._build_report(entry, route, lines, original, full, self.clock())

    async def _report_route(self, entry: QueueEntry) -> _Route | None:
        """Where a DSN about ``entry`` goes; None: nowhere (logged)."""
        to = entry.sender
        if to:
            to_header = to
        else:
            account = await self.directory.postmaster_account()
            if account is None:
                event(log, "queue.double_bounce_dropped", level=logging.WARNING, id=entry.queue_id)
                return None
            to_header = account.address
        accounts, remote = await self._route_notification(to)
        if not accounts and not remote:
            event(log, "queue.notify_dropped", level=logging.WARNING, to=to or "postmaster")
            return None
        return _Route(to, to_header, tuple(accounts), tuple(remote))

    def _build_report(
        self,
        entry: QueueEntry,
        route: _Route,
        lines: Sequence[DsnRecipient],
        original: bytes,
        full: bool,
        now: float,
    ) -> _Report:
        """Build the DSN (no I/O: it may run inside a storage transaction)."""
        message = build_dsn(
            reporting_mta=self.config.hostname,
            sender=route.to_header,
            recipients=list(lines),
            original=original,
            envid=entry.envid,
            ret="FULL" if full else "HDRS",
            arrival=entry.created,
            now=now,
        )
        return _Report(route.to, tuple(lines), _notification(message, route.accounts, route.remote))

    async def _original(self, entry: QueueEntry, *, full: bool) -> bytes:
        """The queued message without our ``Return-Path:`` (only its header when not
        ``full``)."""
        body = MessageBody(self.storage, entry.blob_id, entry.size)
        if full:
            await body.load()
            return await body.read_all()
        head = await self.storage.read_blob(entry.blob_id, 0, min(entry.size, HEADER_READ))
        head = head[return_path_length(head) :]
        return head[: header_section_end(head)]

    # ------------------------------------------------------------------ notifications
    async def notify(self, to: str, message: bytes) -> None:
        """Deliver a generated notification (a DSN) with the null sender: into local
        mailboxes when ``to`` is ours (``""`` or ``Postmaster``: the postmaster account), else
        through the queue. An unknown local address falls back to the postmaster.

        Raises :class:`StorageError` when it cannot be stored."""
        accounts, remote = await self._route_notification(to)
        if not accounts and not remote:
            event(log, "queue.notify_dropped", level=logging.WARNING, to=to or "postmaster")
            return
        n = _notification(message, tuple(accounts), tuple(remote))
        await self.storage.deliver(n.blob, n.targets, n.outgoing, n.queue_id)
        if remote:
            self.wake()

    async def _route_notification(self, to: str) -> tuple[list[int], list[str]]:
        if to and to.casefold() != "postmaster":
            domain = to.rpartition("@")[2]
            if not await self.directory.is_local_domain(domain):
                return [], [to]
            resolution = await self.directory.resolve(to)
            if resolution is not None and (resolution.accounts or resolution.forward):
                return [a.id for a in resolution.accounts], list(resolution.forward)
            event(log, "queue.notify_unknown", to=to)
        account = await self.directory.postmaster_account()
        return ([account.id] if account is not None else []), []

    # ------------------------------------------------------------------ administration
    async def remove(self, queue_id: str, *, silent: bool = False) -> list[QueueEntry]:
        """Delete a queued message (``letterbird queue remove``); unless ``silent``, its
        sender gets a failure DSN for every recipient that was still waiting, stored in the
        same transaction as the removal (the DSN is built there, from the entries removed)."""
        entries = await self.storage.queue_entries(queue_id)
        if not entries:
            raise NotFound(f"no queued message {queue_id}")
        first = entries[0]
        if silent:
            removed = await self.storage.queue_remove(queue_id)
            event(log, "queue.removed", id=queue_id, entries=len(removed), silent=silent)
            return removed
        full = self._full(first)
        original = await self._original_or_nothing(first, full)
        wanted = any(notify_wants(r.notify, "FAILURE") for e in entries for r in e.recipients)
        route = await self._report_route(first) if wanted else None
        now = self.clock()
        made: list[_Report] = []

        def report(removed: list[QueueEntry]) -> Notification | None:
            made.clear()  # (it may run twice)
            lines = [
                DsnRecipient(
                    r.address,
                    "failed",
                    REMOVED.enhanced or "5.0.0",
                    diagnostic=f"X-Letterbird; {REMOVED.text}",
                    orcpt=r.orcpt,
                    last_attempt=now,
                )
                for e in removed
                for r in e.recipients
                if notify_wants(r.notify, "FAILURE")
            ]
            if route is None or not lines:
                return None
            made.append(self._build_report(first, route, lines, original, full, now))
            return made[0].notification

        try:
            removed = await self.storage.queue_remove(queue_id, report)
        except QuotaExceeded as exc:
            raise StorageError(
                f"{exc}: cannot store the failure notice, so {queue_id} was not removed "
                "(remove it silently to tell nobody)"
            ) from exc
        if made:
            self._reported(first, made[0])
        event(log, "queue.removed", id=queue_id, entries=len(removed), silent=silent)
        return removed


# --------------------------------------------------------------------------- helpers
@dataclass(frozen=True, slots=True)
class _Route:
    """Where a DSN goes: ``to`` is the envelope address (``""``: the postmaster), shown as
    ``to_header``; delivered to the local ``accounts`` and queued for the ``remote``
    addresses."""

    to: str
    to_header: str
    accounts: tuple[int, ...]
    remote: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Report:
    """A DSN ready to be stored with the queue change that calls for it."""

    to: str
    lines: tuple[DsnRecipient, ...]
    notification: Notification


def _notification(message: bytes, accounts: Sequence[int], remote: Sequence[str]) -> Notification:
    """A generated message with the null sender, for local ``accounts`` and ``remote``
    addresses (queued under a new id)."""
    data = b"Return-Path: <>\r\n" + message
    blob = BlobSource(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        structure=parse_message(data).to_json(),
        data=data,
    )
    outgoing = None
    queue_id = None
    if remote:
        outgoing = OutgoingMessage("", tuple(QueueRecipient(a) for a in remote))
        queue_id = new_queue_id()
    return Notification(blob, tuple(AppendTarget(a) for a in accounts), outgoing, queue_id)


class _Batch:
    """Messages for one list of next hops, delivered over one connection at a time; while
    its first session is open, newly claimed mail for the same hops joins it."""

    def __init__(self, hops: tuple[NextHop, ...], messages: list[Outbound], s: DeliverySettings):
        self.hops = hops
        self.messages = list(messages)
        self.feed = MessageFeed(
            messages, linger=s.connection_linger, limit=s.messages_per_connection
        )

    @property
    def backlog(self) -> int:
        """Messages waiting for this connection."""
        return len(self.feed)

    def add(self, message: Outbound) -> bool:
        if self.feed.add(message):
            self.messages.append(message)
            return True
        return False

    def close(self) -> None:
        self.feed.close()


def _where(hop: NextHop) -> str:
    return f"{hop.mx}[{hop.ip}]:{hop.port}"


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _result_name(
    delivered: Sequence[RecipientOutcome],
    failed: Sequence[RecipientOutcome],
    remaining: Sequence[QueueRecipient],
    expired: bool,
) -> str:
    if expired:
        return "expired"
    if remaining:
        return "deferred" if not (delivered or failed) else "partial"
    if failed:
        return "bounced" if not delivered else "partial"
    return "delivered"
