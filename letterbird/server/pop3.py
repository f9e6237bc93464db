"""The asyncio edge of POP3 (``[listen] pop3`` with STLS, ``[listen] pop3s`` implicit TLS).

RFC 1939 (POP3) over the account's INBOX, with RFC 2449 (CAPA, response codes), RFC 2595
(STLS), RFC 3206 (``[SYS/TEMP]``, ``[AUTH]``) and RFC 5034 (SASL AUTH) as the sans-IO core in
:mod:`letterbird.proto.pop3` implements them. The glue loop is the httpcore/h11 one used by
:mod:`letterbird.server.smtp`: feed the socket's bytes to the core, answer each event, flush
the core's replies whenever it needs more input (so pipelined commands get batched replies).

Policy decided here, not in the core:

- **Plaintext login** (USER/PASS, SASL PLAIN/LOGIN) only under TLS (``pop3s``, or after STLS)
  or from a loopback client address (:func:`core_config`).
- **Maildrop** = the INBOX as it was at login: ``list_messages`` (uids, flags) and
  ``fetch_meta`` (sizes, blob ids; no cached structure is moved) give the stored CRLF sizes
  LIST/STAT report, and the unique-id is ``f"{uidvalidity}.{uid}"``, stable across sessions for
  as long as the mailbox keeps its UIDVALIDITY. Messages delivered during the session are not
  shown (RFC 1939 §8: the maildrop is fixed for the session).
- **One session per maildrop**: the storage's maildrop lock (``Storage.maildrop_lock``: a set
  in process on SQLite, an advisory lock every node sees on PostgreSQL); a second login, on any
  node, gets ``-ERR [IN-USE]`` (RFC 2449 §8.1.1).
- **Failed and throttled logins** both get ``-ERR [AUTH]``: RFC 2449 §8.1.2 ``[LOGIN-DELAY]``
  is about *successful* logins repeated too soon, and answering the directory's lockout
  differently would tell a password guesser that the lockout is on. A wrong PLAIN authzid
  (a different identity) is refused the same way.
- **RETR/TOP** stream the blob in ranges (``read_blob(blob_id, start, end)``): the first of
  :data:`CHUNK_SIZE` octets, then doubling up to :data:`MAX_CHUNK_SIZE`. Each range is
  byte-stuffed by the core (``send_message_part``) and written with back-pressure before the
  next is read, so a session holds a few ranges of a message however big it is, and a client
  that stops reading is disconnected after ``[limits] write_timeout`` without a write
  going through (the output buffer stays bounded meanwhile). A message of one range (nearly
  all mail) costs one read and one write. Growing ranges keep the number of reads of a big
  message low: on SQLite a range read walks the blob's overflow pages up to its start, and
  ranges over 256 KiB are read on a reader thread, off the event loop. TOP reads a small
  first range (:data:`TOP_FIRST_READ`), then doubling ranges only until the core has the
  header and the asked body lines.
- Expunges by other sessions (IMAP) arrive on the change bus: a message expunged since the
  snapshot is answered ``message_vanished()``; a blob that is gone (``NotFound``) at the first
  read likewise. Any other storage error at the first read is answered ``-ERR [SYS/TEMP]`` and
  the connection is closed without applying deletions (the core has no third RETR answer); a
  storage error after the ``+OK`` went out (a later range) can only close the connection,
  which leaves the response unterminated, so the client sees the failure.
- **\\Seen**: with ``pop3_marks_seen``, RETR (not TOP) marks the message seen once all of it
  is queued for the client (a RETR cut short mid-message, by a storage error or the write
  timeout, marks nothing). The marks are collected and written in one transaction when the
  session ends (however it ends: the bytes were sent), so a 200-message download costs one
  flag write, not 200 commits.
- **QUIT** removes the DELE'd messages with ``delete_messages`` in one transaction (IMAP
  sessions see them expunged through the change bus), then releases the lock before the final
  ``+OK`` is written. A dropped connection, an autologout (idle timeout) or a server shutdown
  removes nothing and releases the lock.
- **Limits**: ``pop3_line_length`` / ``pop3_errors`` go to the core (a line length below the
  RFC 2449 §4 floor of 255 is raised to it), ``pop3_idle_timeout`` is the autologout timer
  (RFC 1939 §3: at least 10 minutes by default), ``pop3_connections_per_ip`` (counted over
  ``pop3`` and ``pop3s`` together) is answered ``-ERR [SYS/TEMP]`` and closed.

One structured log line per session event (``pop3.connect``, ``pop3.login``,
``pop3.auth_failed``, ``pop3.quit``, ...); never a password, never message bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, cast

from letterbird.config import Config
from letterbird.directory.service import AuthOutcome, is_loopback
from letterbird.logs import event
from letterbird.proto.pop3 import (
    NEED_DATA,
    CloseConnection,
    LoginFailure,
    LoginRequested,
    Reply,
    RespCode,
    RetrieveRequested,
    ServerConfig,
    ServerConnection,
    StlsRequested,
    UpdateRequested,
)
from letterbird.proto.pop3.server import MIN_COMMAND_LINE
from letterbird.server.app import App, ConnectionInfo, ProtocolSpec, register
from letterbird.server.stream import OutputOverflow, Stream
from letterbird.storage.events import ChangeKind, Subscription
from letterbird.storage.interface import (
    Account,
    FlagMode,
    NotFound,
    Storage,
    StorageError,
)

log = logging.getLogger("letterbird.pop3")

__all__ = [
    "CHUNK_SIZE",
    "CONNECTION_GROUP",
    "ERR_CONNECTION_LIMIT",
    "ERR_SHUTDOWN",
    "ERR_STORAGE",
    "MAX_CHUNK_SIZE",
    "TOP_FIRST_READ",
    "Pop3Session",
    "core_config",
    "handle_pop3",
    "unique_id",
]

#: ``App.enter``/``App.leave`` group: ``pop3`` and ``pop3s`` share the per-IP count.
CONNECTION_GROUP = "pop3"
SEEN = "\\Seen"

# Replies the edge sends itself, outside a core dialogue (the core has no event for them).
ERR_CONNECTION_LIMIT = Reply(
    False, "too many connections from your address, try later", RespCode.SYS_TEMP
)
ERR_SHUTDOWN = Reply(False, "server shutting down, try later", RespCode.SYS_TEMP)
ERR_STORAGE = Reply(False, "temporary storage problem, try later", RespCode.SYS_TEMP)

#: The first blob range RETR reads (and byte-stuffs, and writes) at once. A message up to this
#: size is one storage read and one write; on SQLite a range this size is still read inline.
CHUNK_SIZE = 128 * 1024
#: Later ranges double up to this: what a session holds of a big message is about three times
#: this plus the socket's output buffer (measured: a 42 MB RETR peaked at 7 MB of Python
#: memory, against 160 MB when the message was read whole). Smaller ranges cost more reads,
#: and on SQLite each one walks the blob's overflow pages from its start (1 MiB ranges made
#: that RETR 10% slower than one whole read; 2 MiB made it 10% faster).
MAX_CHUNK_SIZE = 2 * 1024 * 1024
#: TOP's first range: the header and the first body lines of most mail.
TOP_FIRST_READ = 16 * 1024

_GREETING = "Letterbird POP3 server ready"
_MAX_AUTH_LINE = 8192
_MAX_BUFFER = 256 * 1024


def unique_id(uidvalidity: int, uid: int) -> str:
    """The RFC 1939 unique-id of a message: stable while the mailbox keeps its UIDVALIDITY."""
    return f"{uidvalidity}.{uid}"


def core_config(config: Config, info: ConnectionInfo) -> ServerConfig:
    """The core's settings for one connection: the plaintext-login policy and the limits.

    Plaintext credentials are allowed before TLS only from a loopback client address
    (DESIGN.md §10); on ``pop3s`` TLS is active from the start, and after STLS the core
    allows them itself.
    """
    lim = config.limits
    line = max(lim.pop3_line_length, MIN_COMMAND_LINE)
    auth_line = max(_MAX_AUTH_LINE, line)
    return ServerConfig(
        implementation="Letterbird",
        greeting=_GREETING,
        tls_available=True,
        tls_active=info.implicit_tls,
        plaintext_allowed=is_loopback(info.peer_host),
        max_line_length=line,
        max_auth_line_length=auth_line,
        max_buffer_size=max(_MAX_BUFFER, auth_line),
        max_errors=max(lim.pop3_errors, 1),
    )


async def _delete(storage: Storage, mailbox_id: int, uids: Sequence[int]) -> None:
    """Remove messages whatever their flags, in one transaction where the backend can."""
    delete = getattr(storage, "delete_messages", None)
    if delete is not None:
        await cast(Callable[[int, Sequence[int]], Awaitable[object]], delete)(mailbox_id, uids)
        return
    # A backend without delete_messages: flag then expunge exactly those (two transactions).
    await storage.store_flags(mailbox_id, uids, FlagMode.ADD, ("\\Deleted",))
    await storage.expunge(mailbox_id, uids)


class _Entry(NamedTuple):
    """One message of the maildrop snapshot."""

    uid: int
    size: int
    blob_id: str
    seen: bool


class Pop3Session:
    """One POP3 connection (either listener). ``chunk_size`` and ``max_chunk_size``: the blob
    ranges RETR/TOP read, see :data:`CHUNK_SIZE` and :data:`MAX_CHUNK_SIZE`."""

    def __init__(
        self,
        app: App,
        stream: Stream,
        info: ConnectionInfo,
        *,
        chunk_size: int = CHUNK_SIZE,
        max_chunk_size: int = MAX_CHUNK_SIZE,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.app = app
        self.stream = stream
        self.info = info
        self.chunk_size = chunk_size
        self.max_chunk_size = max(max_chunk_size, chunk_size)
        self.core = ServerConnection(core_config(app.config, info))
        self.maildrop: contextlib.AbstractAsyncContextManager[None] | None = None  # held lock
        self.account: Account | None = None  # the logged-in account
        self.locked = False  # whether this session holds the account's maildrop lock
        self.mailbox_id: int | None = None
        self.records: dict[str, _Entry] = {}  # unique-id -> message of the snapshot
        self.vanished: set[int] = set()  # UIDs expunged by others since the snapshot
        self.subscription: Subscription | None = None
        self.seen_pending: set[int] = set()  # RETR'd UIDs to mark \Seen at the end
        self.stop_requested = False
        self.task: asyncio.Task[Any] | None = None  # this session's task
        self.reading: asyncio.Task[Any] | None = None  # the same, while waiting for input
        self.stop_cancelled = False
        self.retrieved = 0
        self.octets = 0
        self.end = "dropped"

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        info = self.info
        event(
            log,
            "pop3.connect",
            client=info.peer_host,
            port=info.local_port,
            tls=info.implicit_tls or None,
        )
        self.app.stop_callbacks.add(self._on_stop)
        self.task = asyncio.current_task()
        try:
            await self._loop()
        except OutputOverflow:
            # the client stopped reading: drop what is buffered for it rather than wait
            event(log, "pop3.write_timeout", client=info.peer_host)
            self.end = "write timeout"
            self.stream.writer.transport.abort()
        finally:
            self.app.stop_callbacks.discard(self._on_stop)
            await self._release()
            try:
                await self._flush_seen()
            finally:
                await self.stream.close()
                event(
                    log,
                    "pop3.disconnect",
                    client=info.peer_host,
                    user=self.account.address if self.account else None,
                    end=self.end,
                    retrieved=self.retrieved,
                    octets=self.octets,
                )

    async def _loop(self) -> None:
        core = self.core
        timeout = self.app.config.limits.pop3_idle_timeout
        while True:
            ev = core.next_event()
            if ev is NEED_DATA:
                await self.stream.write(core.data_to_send())
                data = b"" if self.stop_requested else await self._read(timeout)
                if data is None:  # the autologout timer expired
                    event(log, "pop3.timeout", client=self.info.peer_host)
                    core.timeout()
                    continue
                if self.stop_requested:
                    await self.stream.write(ERR_SHUTDOWN.to_bytes())
                    self.end = "shutdown"
                    return
                if not data:
                    return  # dropped: nothing is applied
                core.receive_data(data)
            elif isinstance(ev, CloseConnection):
                await self.stream.write(core.data_to_send())
                if self.end == "dropped":
                    self.end = ev.reason
                return
            elif isinstance(ev, LoginRequested):
                await self._login(ev)
            elif isinstance(ev, RetrieveRequested):
                if not await self._retrieve(ev):
                    return
            elif isinstance(ev, UpdateRequested):
                await self._update(ev)
            elif isinstance(ev, StlsRequested):
                await self._stls()

    async def _read(self, timeout: float) -> bytes | None:
        """The next bytes from the client (``b""`` at its end); ``None`` on idle timeout.

        While it waits, a server shutdown (:meth:`_on_stop`) interrupts it: it then returns
        ``b""`` with ``stop_requested`` set, so the loop says goodbye and ends.
        """
        task = self.task
        assert task is not None
        self.reading = task
        try:
            data = await self.stream.read(timeout)
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            # our own cancellation (and no other one pending): turn it into an end of input
            if self.stop_cancelled and task.uncancel() == 0:
                return b""
            raise
        finally:
            self.reading = None
        if self.stop_cancelled and task.cancelling():
            task.uncancel()  # wait_for (3.11) returned data and swallowed our cancellation
        return data

    def _on_stop(self) -> None:
        """Server shutdown: an idle session is woken now, says ``-ERR [SYS/TEMP]`` and closes
        (no deletions applied); a busy one finishes its command and closes after it."""
        self.stop_requested = True
        if self.reading is not None and not self.stop_cancelled:
            self.stop_cancelled = True
            self.reading.cancel()

    # -- events --------------------------------------------------------------------------
    async def _login(self, ev: LoginRequested) -> None:
        core = self.core
        client = self.info.peer_host
        if ev.authzid and ev.authzid.casefold() != ev.username.casefold():
            event(log, "pop3.auth_failed", client=client, user=ev.username, reason="authzid")
            core.login_failed(LoginFailure.AUTH)
            return
        try:
            result = await self.app.directory.authenticate(ev.username, ev.password, client)
        except StorageError as exc:
            event(log, "pop3.storage_error", level=logging.ERROR, client=client, error=exc)
            core.login_failed(LoginFailure.SYS_TEMP)
            return
        account = result.account
        if not result.ok or account is None:
            reason = "throttled" if result.outcome is AuthOutcome.THROTTLED else "failed"
            event(log, "pop3.auth_failed", client=client, user=ev.username, reason=reason)
            core.login_failed(LoginFailure.AUTH)
            return
        try:
            lock = await self.app.storage.maildrop_lock(account.id)
        except StorageError as exc:
            event(log, "pop3.storage_error", level=logging.ERROR, client=client, error=exc)
            core.login_failed(LoginFailure.SYS_TEMP)
            return
        if lock is None:
            event(log, "pop3.in_use", client=client, user=account.address)
            core.login_failed(LoginFailure.IN_USE)
            return
        await lock.__aenter__()
        self.maildrop = lock
        self.account = account
        self.locked = True
        try:
            maildrop = await self._snapshot(account)
        except StorageError as exc:
            event(log, "pop3.storage_error", level=logging.ERROR, client=client, error=exc)
            await self._release()
            self.account = None
            self.mailbox_id = None
            self.records.clear()
            core.login_failed(LoginFailure.SYS_TEMP)
            return
        core.login_succeeded(maildrop)
        event(
            log,
            "pop3.login",
            client=client,
            user=account.address,
            mechanism=ev.mechanism,
            tls=core.tls_active,
            messages=len(maildrop),
            octets=sum(size for size, _ in maildrop),
        )

    async def _snapshot(self, account: Account) -> list[tuple[int, str]]:
        """Subscribe to changes, then read the INBOX: nothing expunged after the read is
        missed. A missing INBOX (never created) is an empty maildrop."""
        storage = self.app.storage
        self.subscription = storage.bus.subscribe(account.id)
        mailbox = await storage.get_mailbox(account.id, "INBOX")
        if mailbox is None:
            return []
        self.mailbox_id = mailbox.id
        listed = await storage.list_messages(mailbox.id)
        if not listed:
            return []
        seen = {uid for uid, _, flags in listed if SEEN in flags}
        # (a message expunged between the two reads is left out: it is gone)
        meta = await storage.fetch_meta(mailbox.id, [uid for uid, _, _ in listed])
        maildrop: list[tuple[int, str]] = []
        for uid, _, _, size, blob_id in meta:
            key = unique_id(mailbox.uidvalidity, uid)
            self.records[key] = _Entry(uid, size, blob_id, uid in seen)
            maildrop.append((size, key))
        return maildrop

    def _note_expunges(self) -> bool:
        """Apply pending change events; False when the subscription overflowed."""
        sub = self.subscription
        if sub is None:
            return True
        for change in sub.drain():
            if change.kind is ChangeKind.EXPUNGE and change.mailbox_id == self.mailbox_id:
                self.vanished.update(change.uids)
        return not sub.overflowed

    async def _gone(self, entry: _Entry) -> bool:
        """Whether ``entry`` was expunged since the snapshot."""
        if not self._note_expunges():  # events were lost: ask the database
            assert self.mailbox_id is not None
            if not await self.app.storage.fetch_meta(self.mailbox_id, [entry.uid]):
                self.vanished.add(entry.uid)
        return entry.uid in self.vanished

    def _storage_error(self, exc: StorageError) -> None:
        event(
            log,
            "pop3.storage_error",
            level=logging.ERROR,
            client=self.info.peer_host,
            error=exc,
        )
        self.end = "storage error"

    async def _retrieve(self, ev: RetrieveRequested) -> bool:
        """Answer RETR/TOP, streaming the blob range by range; False when a storage error
        ends the session."""
        entry = self.records[ev.uid]
        storage = self.app.storage
        want = self.chunk_size  # the size of the range being read; doubles up to `most`
        if ev.top_lines is not None:
            want = min(want, TOP_FIRST_READ)
        most = self.max_chunk_size
        try:
            if await self._gone(entry):
                data = None
            else:
                data = await storage.read_blob(entry.blob_id, 0, want)
        except NotFound:
            data = None
        except StorageError as exc:
            self._storage_error(exc)
            # replies to commands pipelined before this one first, then the edge's own
            await self.stream.write(self.core.data_to_send() + ERR_STORAGE.to_bytes())
            return False
        if data is None:
            event(log, "pop3.vanished", client=self.info.peer_host, uid=ev.uid)
            self.core.message_vanished()
            return True
        core = self.core
        pos = len(data)
        # A short read is the end of the blob. The last part stays queued in the core: the
        # loop writes it with the replies to any commands pipelined after this one.
        while not core.send_message_part(data, last=len(data) < want):
            data = b""  # the core's output is all that is held while the client lags
            await self.stream.write(core.data_to_send())
            want = min(want * 2, most)
            try:
                data = await storage.read_blob(entry.blob_id, pos, pos + want)
            except StorageError as exc:  # the +OK is out: all we can do is close
                self._storage_error(exc)
                return False
            pos += len(data)
        if ev.top_lines is None:
            self.retrieved += 1
            self.octets += pos
            if self.app.config.pop3_marks_seen and not entry.seen:
                self.seen_pending.add(entry.uid)
        return True

    async def _update(self, ev: UpdateRequested) -> None:
        """QUIT: mark retrieved messages seen, remove the deleted ones, release the lock."""
        uids = [self.records[u].uid for u in ev.deleted_uids]
        self.seen_pending.difference_update(uids)
        ok = True
        await self._flush_seen()
        if uids:
            assert self.mailbox_id is not None
            try:
                await _delete(self.app.storage, self.mailbox_id, uids)
            except StorageError as exc:
                event(
                    log,
                    "pop3.storage_error",
                    level=logging.ERROR,
                    client=self.info.peer_host,
                    error=exc,
                )
                ok = False
        event(log, "pop3.quit", client=self.info.peer_host, deleted=len(uids), ok=ok)
        self.end = "quit"
        await self._release()
        self.core.update_done(ok)

    async def _stls(self) -> None:
        self.core.reply_stls_ok()
        await self.stream.write(self.core.data_to_send())
        try:
            await self.stream.start_tls(self.app.tls.context)
        except (OSError, TimeoutError, ConnectionError) as exc:
            event(log, "pop3.tls_failed", client=self.info.peer_host, error=exc)
            raise ConnectionError("TLS handshake failed") from exc
        self.core.tls_established()
        event(log, "pop3.tls", client=self.info.peer_host, tls=self.stream.tls_description())

    # -- helpers -------------------------------------------------------------------------
    async def _release(self) -> None:
        """Give the maildrop back (idempotent); stop following its changes."""
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        lock, self.maildrop = self.maildrop, None
        self.locked = False
        if lock is not None:
            try:
                await lock.__aexit__(None, None, None)
            except StorageError as exc:  # the lock dies with its connection anyway
                event(log, "pop3.unlock_failed", level=logging.WARNING, error=exc)

    async def _flush_seen(self) -> None:
        """Write the pending ``\\Seen`` marks in one transaction (errors are logged only)."""
        if not self.seen_pending or self.mailbox_id is None:
            return
        uids = sorted(self.seen_pending - self.vanished)
        self.seen_pending.clear()
        if not uids:
            return
        try:
            await self.app.storage.store_flags(self.mailbox_id, uids, FlagMode.ADD, (SEEN,))
        except StorageError as exc:
            event(
                log,
                "pop3.storage_error",
                level=logging.ERROR,
                client=self.info.peer_host,
                error=exc,
            )


async def handle_pop3(
    app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnectionInfo
) -> None:
    """The listener handler for ``pop3`` and ``pop3s``."""
    stream = Stream(
        reader,
        writer,
        write_timeout=app.config.limits.write_timeout,
        implicit_tls=info.implicit_tls,
    )
    per_ip = app.enter(CONNECTION_GROUP, info.peer_host)
    try:
        if per_ip > app.config.limits.pop3_connections_per_ip:
            event(log, "pop3.connection_limit", client=info.peer_host, per_ip=per_ip)
            await stream.write(ERR_CONNECTION_LIMIT.to_bytes())
            await stream.close()
            return
        session = Pop3Session(
            app, stream, info, chunk_size=CHUNK_SIZE, max_chunk_size=MAX_CHUNK_SIZE
        )
        await session.run()
    finally:
        app.leave(CONNECTION_GROUP, info.peer_host)


register(ProtocolSpec("pop3", implicit_tls=False, handler=handle_pop3, label="POP3 (STLS)"))
register(ProtocolSpec("pop3s", implicit_tls=True, handler=handle_pop3, label="POP3 over TLS"))
