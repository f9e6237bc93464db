"""The asyncio edge of IMAP (``[listen] imap`` with STARTTLS, ``[listen] imaps`` implicit TLS).

The glue loop is the httpcore/h11 one the other edges use: feed the socket's bytes to the
sans-IO :class:`~letterbird.proto.imap.parser.CommandReader`, answer each event (parsed
commands go to :class:`letterbird.imap.session.ImapSession`), and flush the buffered responses
whenever the reader needs more input, so pipelined commands get batched replies. The reader is
only fed when it has nothing left to report, and never while a command is being served, so a
client cannot make the server buffer more than one bounded command (RFC 3501 §5.5 allows
pipelining; the reader's limits bound each command).

Policy decided here:

- **Limits** (``[limits]``): ``imap_line_length`` and ``imap_literal_size`` go to the reader (an
  endless line is answered ``BAD`` as soon as it passes the limit and the rest of it is skipped
  unbuffered; a literal over the limit is ``NO [TOOBIG]`` — a synchronising one before the
  client sends it, a LITERAL+ one after its octets are read and discarded);
  ``imap_login_timeout`` before authentication and ``imap_idle_timeout`` after (RFC 3501 §5.4:
  at least 30 minutes; IDLE included) end the session with ``* BYE`` (autologout);
  ``imap_connections_per_ip`` counts ``imap`` and ``imaps`` together; ``imap_output_buffer``
  bounds what may wait in the socket's send buffer: past it the session waits for the client
  to read, and a client that reads nothing for ``min(60 s, imap_idle_timeout)`` is
  disconnected. After :data:`MAX_BAD_COMMANDS` consecutive unparsable commands the client is
  told ``* BYE`` and disconnected.
- **STARTTLS** discards whatever the client pipelined after the command, both in the stream
  and in the reader (a new reader), so nothing sent in plaintext is read as if it came over
  TLS (CVE-2011-0411).
- **IDLE** (RFC 2177) waits on the socket and on the account's change subscription at once: a
  delivery or another session's change is reported within one event-loop turn (no polling).
- **Shutdown**: a session waiting for input is told ``* BYE`` and closed at once; one serving a
  command finishes it first.

One structured log line per session event (``imap.connect``, ``imap.login``,
``imap.auth_failed``, ``imap.disconnect``, ...); never a password, never message bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from letterbird.imap.session import Action, ImapSession
from letterbird.logs import event
from letterbird.proto.imap import encoder
from letterbird.proto.imap.parser import (
    NEED_DATA,
    AuthenticateLine,
    Command,
    CommandError,
    CommandReader,
    ContinuationNeeded,
    IdleDone,
    LiteralTooBig,
)
from letterbird.server.app import App, ConnectionInfo, ProtocolSpec, register
from letterbird.server.stream import OutputOverflow, Stream
from letterbird.storage.events import ChangeEvent

log = logging.getLogger("letterbird.imap")

__all__ = [
    "BYE_AUTOLOGOUT",
    "BYE_CONNECTION_LIMIT",
    "BYE_SHUTDOWN",
    "BYE_TOO_MANY_ERRORS",
    "CONNECTION_GROUP",
    "MAX_BAD_COMMANDS",
    "ImapConnection",
    "handle_imap",
]

CONNECTION_GROUP: Final = "imap"
"""``App.enter``/``App.leave`` group: ``imap`` and ``imaps`` share the per-IP count."""
MAX_BAD_COMMANDS: Final = 20
"""Consecutive commands that could not be parsed before the client is disconnected."""
FLUSH_AT: Final = 64 * 1024
"""Responses are buffered up to this many octets before they are handed to the socket."""
MAX_WRITE_WAIT: Final = 60.0

BYE_AUTOLOGOUT: Final = encoder.untagged(encoder.BYE, "Autologout; idle for too long")
BYE_SHUTDOWN: Final = encoder.untagged(
    encoder.BYE, "Server shutting down", encoder.ResponseCode.UNAVAILABLE
)
BYE_CONNECTION_LIMIT: Final = encoder.untagged(
    encoder.BYE, "Too many connections from your address", encoder.ResponseCode.LIMIT
)
BYE_TOO_MANY_ERRORS: Final = encoder.untagged(encoder.BYE, "Too many invalid commands")


class _Output:
    """Buffered response writer with a bounded socket send buffer (see module docstring)."""

    def __init__(self, stream: Stream, limit: int, timeout: float) -> None:
        self.stream = stream
        self.limit = max(limit, FLUSH_AT)
        self.timeout = timeout
        self._parts: list[bytes] = []
        self._size = 0
        self.octets = 0

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size >= FLUSH_AT:
            await self.flush()

    async def flush(self) -> None:
        if not self._parts or self.stream.closed:
            self._parts.clear()
            self._size = 0
            return
        data = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts.clear()
        self._size = 0
        self.octets += len(data)
        writer = self.stream.writer
        writer.write(data)
        if writer.transport.get_write_buffer_size() > self.limit:
            try:
                await asyncio.wait_for(writer.drain(), self.timeout)
            except TimeoutError:
                raise OutputOverflow("peer does not read its responses") from None


class ImapConnection:
    """One IMAP connection on either listener: the read/dispatch/flush loop."""

    def __init__(self, app: App, stream: Stream, info: ConnectionInfo) -> None:
        self.app = app
        self.stream = stream
        self.info = info
        lim = app.config.limits
        self.out = _Output(
            stream, lim.imap_output_buffer, max(0.001, min(MAX_WRITE_WAIT, lim.imap_idle_timeout))
        )
        self.reader = self._new_reader()
        self.session = ImapSession(app, self.out, info)
        self.waiting = False  # blocked on client input (or IDLE): a shutdown may interrupt
        self.stop_requested = False
        self.bad_commands = 0
        self.end = "dropped"

    def _new_reader(self) -> CommandReader:
        lim = self.app.config.limits
        line = max(lim.imap_line_length, 1024)
        literal = max(lim.imap_literal_size, 1)
        return CommandReader(max_line=line, max_literal=literal, max_command=literal + 4 * line)

    @property
    def _timeout(self) -> float:
        lim = self.app.config.limits
        return lim.imap_idle_timeout if self.session.authenticated else lim.imap_login_timeout

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        info = self.info
        event(
            log,
            "imap.connect",
            client=info.peer_host,
            port=info.local_port,
            tls=info.implicit_tls or None,
        )
        self.app.stop_callbacks.add(self._on_stop)
        try:
            await self.out.write(self.session.greeting())
            await self._loop()
            await self.out.flush()
        except OutputOverflow:
            self.end = "output overflow"
            event(log, "imap.output_overflow", client=info.peer_host)
            # A graceful close would wait for the unread output forever: drop it.
            self.stream.writer.transport.abort()
        finally:
            self.app.stop_callbacks.discard(self._on_stop)
            account = self.session.account
            await self.session.close()
            await self.stream.close()
            transport = self.stream.writer.transport
            if transport.get_write_buffer_size():  # the peer stopped reading: drop the rest
                transport.abort()
            event(
                log,
                "imap.disconnect",
                client=info.peer_host,
                user=account.address if account else None,
                end=self.end,
                octets=self.out.octets,
            )

    async def _loop(self) -> None:
        while True:
            ev = self.reader.next_event()
            if ev is NEED_DATA:
                await self.out.flush()
                if self.stop_requested:
                    await self._bye(BYE_SHUTDOWN, "shutdown")
                    return
                data = await self._read()
                if data is None:
                    await self._bye(BYE_AUTOLOGOUT, "autologout")
                    return
                if not data:
                    if self.stop_requested:
                        await self._bye(BYE_SHUTDOWN, "shutdown")
                    return
                self.reader.receive_data(data)
                continue
            if isinstance(ev, Command):
                self.bad_commands = 0
                action = await self.session.handle(ev)
                if not await self._act(action):
                    return
            elif isinstance(ev, ContinuationNeeded):
                await self.out.write(ev.reply())
                await self.out.flush()
            elif isinstance(ev, CommandError | LiteralTooBig):
                await self.out.write(ev.reply())
                if self.session.sasl_pending:  # the SASL response line was unreadable
                    await self.session.authenticate_aborted()
                if isinstance(ev, CommandError) and ev.status == encoder.BAD:
                    self.bad_commands += 1
                    if self.bad_commands >= MAX_BAD_COMMANDS:
                        await self._bye(BYE_TOO_MANY_ERRORS, "too many errors")
                        return
            elif isinstance(ev, AuthenticateLine):
                action = await self.session.authenticate_line(ev.data)
                if not await self._act(action):
                    return
            else:  # IdleDone outside IDLE cannot happen: the reader is only in IDLE mode there
                raise RuntimeError(f"unexpected reader event {ev!r}")

    async def _act(self, action: Action) -> bool:
        """Carry out what the session asked for; False when the connection must end."""
        if action is Action.NONE:
            return True
        if action is Action.CLOSE:
            await self.out.flush()
            self.end = "logout"
            return False
        if action is Action.SASL:
            self.reader.read_authenticate_line()
            return True
        if action is Action.STARTTLS:
            await self._starttls()
            return True
        return await self._idle()  # Action.IDLE

    async def _read(self) -> bytes | None:
        """The next bytes (``b""`` at the end of input); None when the timeout expired."""
        self.waiting = True
        try:
            return await self.stream.read(self._timeout)
        except TimeoutError:
            return None
        finally:
            self.waiting = False

    async def _bye(self, bye: bytes, end: str) -> None:
        self.end = end
        event(log, "imap.bye", client=self.info.peer_host, reason=end)
        await self.out.write(bye)
        await self.out.flush()

    def _on_stop(self) -> None:
        """Server shutdown: a session waiting for input is woken now (its pending read ends as
        if the client had closed), says BYE and ends; a busy one does so after its command
        (the loop checks ``stop_requested`` before it reads again)."""
        self.stop_requested = True
        if self.waiting:
            self.stream.reader.feed_eof()

    async def _starttls(self) -> None:
        await self.out.flush()
        try:
            await self.stream.start_tls(self.app.tls.context)
        except (OSError, TimeoutError, ConnectionError) as exc:
            event(log, "imap.tls_failed", client=self.info.peer_host, error=exc)
            raise ConnectionError("TLS handshake failed") from exc
        self.reader = self._new_reader()  # nothing pipelined in plaintext survives
        self.session.tls_started()
        event(log, "imap.tls", client=self.info.peer_host, tls=self.stream.tls_description())

    async def _idle(self) -> bool:
        """RFC 2177: report changes as they happen until ``DONE``; False to end the session."""
        sub = self.session.subscription
        self.reader.start_idle()
        read_task: asyncio.Task[bytes] | None = None
        change_task: asyncio.Task[ChangeEvent] | None = None
        try:
            while True:
                ev = self.reader.next_event()
                if isinstance(ev, IdleDone):
                    action = await self.session.idle_done(ev.valid)
                    return await self._act(action)
                if ev is not NEED_DATA:  # pragma: no cover - the reader is in IDLE mode
                    raise RuntimeError(f"unexpected reader event {ev!r}")
                await self.out.flush()
                if self.stop_requested:
                    await self._bye(BYE_SHUTDOWN, "shutdown")
                    return False
                if read_task is None:
                    read_task = asyncio.create_task(self.stream.read(None))
                waiting: set[asyncio.Task[Any]] = {read_task}
                if sub is not None:
                    if change_task is None:
                        change_task = asyncio.create_task(sub.get())
                    waiting.add(change_task)
                self.waiting = True
                try:
                    done, _ = await asyncio.wait(
                        waiting, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    self.waiting = False
                if not done:
                    await self._bye(BYE_AUTOLOGOUT, "autologout")
                    return False
                if change_task is not None and change_task in done:
                    change = change_task.result()
                    change_task = None
                    action = await self.session.idle_changes(change)
                    if action is not Action.NONE:
                        return await self._act(action)
                if read_task in done:
                    data = read_task.result()
                    read_task = None
                    if not data:
                        if self.stop_requested:
                            await self._bye(BYE_SHUTDOWN, "shutdown")
                        return False
                    self.reader.receive_data(data)
        finally:
            for task in (read_task, change_task):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task


async def handle_imap(
    app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnectionInfo
) -> None:
    """The listener handler for ``imap`` and ``imaps``."""
    stream = Stream(
        reader,
        writer,
        write_timeout=app.config.limits.write_timeout,
        implicit_tls=info.implicit_tls,
    )
    per_ip = app.enter(CONNECTION_GROUP, info.peer_host)
    try:
        if per_ip > app.config.limits.imap_connections_per_ip:
            event(log, "imap.connection_limit", client=info.peer_host, per_ip=per_ip)
            await stream.write(BYE_CONNECTION_LIMIT)
            await stream.close()
            return
        await ImapConnection(app, stream, info).run()
    finally:
        app.leave(CONNECTION_GROUP, info.peer_host)


register(ProtocolSpec("imap", implicit_tls=False, handler=handle_imap, label="IMAP (STARTTLS)"))
register(ProtocolSpec("imaps", implicit_tls=True, handler=handle_imap, label="IMAP over TLS"))
