"""The delivery worker: one SMTP session to one next hop, carrying several queued messages.

This is the asyncio edge around the sans-IO :class:`~letterbird.proto.smtp.client.SmtpClient`
(the h11/httpcore loop): write what the client wants sent, read with the timeout the client's
state asks for (``[delivery] command_timeout``, ``data_timeout`` after the final dot, RFC 5321
§4.5.3.2), do the STARTTLS handshake when asked, stream each message's bytes from storage, and
report every message's per-recipient result as soon as it is known, so the queue can record it
at once (RFC 5321 §6.1: only a connection lost after the final dot may cause a duplicate).

Policies (documented once):

* the ``Return-Path:`` line the SMTP edge prepended when it accepted the message is not sent
  (RFC 5321 §4.4: it is added at final delivery only);
* a message with 8-bit octets is sent with ``BODY=8BITMIME``; to a server without 8BITMIME it is
  converted to 7-bit MIME (:mod:`letterbird.delivery.mime7bit`) and sent on the same connection,
  or refused with ``554 5.6.3`` when that is impossible; header fields that are not ASCII need
  SMTPUTF8 (RFC 6531 §3.2), refused with ``553 5.6.7`` by the client core when not offered.
  Nothing is signed here: mail we DKIM-sign is converted to 7-bit before signing at the edge
  (:mod:`letterbird.auth.service`, RFC 6376 §5.3; the exceptions are listed there);
* ``tls = "opportunistic"``: a failed STARTTLS handshake is retried at once on a new connection
  without TLS (as Postfix does at its ``may`` level); ``require``: it is a temporary failure.
  Certificates are not verified in either case (that needs MTA-STS or DANE);
* a recipient whose result the client made up because the *session* broke (connection refused
  or lost before the final dot, timeout, protocol error, TLS failure) may be tried at the next
  MX at once (:attr:`RecipientOutcome.retry_elsewhere`); a reply from the server is final for
  this attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

from letterbird.config import DeliverySettings
from letterbird.delivery.mime7bit import DowngradeImpossible, downgrade
from letterbird.delivery.mx import NextHop
from letterbird.logs import event
from letterbird.proto.smtp.client import (
    CLOSED,
    EIGHTBIT_NOT_SUPPORTED,
    NEED_DATA,
    Closed,
    DeliveryStatus,
    Envelope,
    MessageResult,
    NeedTls,
    ReadyForMessage,
    Recipient,
    SendBody,
    SmtpClient,
    TlsFailure,
    TlsPolicy,
    Waiting,
)
from letterbird.proto.smtp.replies import Reply
from letterbird.server.stream import Stream
from letterbird.storage.interface import QueueEntry, QueueRecipient, Storage, StorageError

log = logging.getLogger("letterbird.queue")

__all__ = [
    "CONNECT_FAILED",
    "INVALID_RECIPIENT",
    "INVALID_SENDER",
    "MessageBody",
    "Outbound",
    "RecipientOutcome",
    "Report",
    "SessionReport",
    "SmtpTransport",
    "Transport",
    "return_path_length",
]

#: RFC 3463 X.4.1 "No answer from host": the TCP connection could not be made.
CONNECT_FAILED = Reply(451, "4.4.1", "Connection failed")
#: RFC 3463 X.1.3 "Bad destination mailbox address syntax".
INVALID_RECIPIENT = Reply(553, "5.1.3", "Recipient address cannot be sent over SMTP")
#: RFC 3463 X.1.7 "Bad sender's mailbox address syntax".
INVALID_SENDER = Reply(553, "5.1.7", "Sender address cannot be sent over SMTP")

#: Messages up to this size are read into memory once; bigger ones are streamed. (Claims are
#: bounded by ``concurrency * messages_per_connection`` entries, so this bounds memory too.)
MEMORY_BODY = 128 * 1024
#: Read size when streaming a message from storage.
CHUNK = 256 * 1024
#: Messages converted to 7-bit in a worker thread beyond this size.
THREAD_DOWNGRADE = 256 * 1024
#: Bytes read per socket read.
READ_SIZE = 65536
#: Unsent bytes buffered for a connection before a write waits for the peer to take them.
WRITE_BUFFER = 64 * 1024


# --------------------------------------------------------------------------- message bodies
class MessageBody:
    """A queued message's bytes as sent: the stored blob minus its leading ``Return-Path:``.

    :meth:`load` looks at the bytes once (8-bit octets? non-ASCII header fields?) and keeps
    small messages in memory; :meth:`chunks` streams them."""

    def __init__(self, storage: Storage, blob_id: str, size: int) -> None:
        self.storage = storage
        self.blob_id = blob_id
        self.blob_size = size
        self.skip = 0
        self.eight_bit = False
        self.utf8_headers = False
        self.data: bytes | None = None
        self.loaded = False

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageBody:
        """A body held in memory (tests, converted messages)."""
        body = cls(cast(Storage, None), "", len(data))
        body._examine(data, data, len(data))
        body.data = data
        body.loaded = True
        return body

    @property
    def size(self) -> int:
        return self.blob_size - self.skip

    async def load(self) -> None:
        if self.loaded:
            return
        head = await self.storage.read_blob(self.blob_id, 0, min(self.blob_size, MEMORY_BODY))
        if self.blob_size <= MEMORY_BODY:
            self._examine(head, head, len(head))
            self.data = head[self.skip :]
        else:
            self._examine(head, b"", self.blob_size)
            offset = len(head)
            eight = not head.isascii()
            while not eight and offset < self.blob_size:
                chunk = await self.storage.read_blob(self.blob_id, offset, offset + CHUNK * 4)
                if not chunk:
                    break
                eight = not chunk.isascii()
                offset += len(chunk)
            self.eight_bit = eight
        self.loaded = True

    def _examine(self, head: bytes, whole: bytes, size: int) -> None:
        self.skip = return_path_length(head)
        self.blob_size = size
        body = head[self.skip :]
        end = body.find(b"\r\n\r\n")
        header = body if end < 0 else body[:end]
        self.utf8_headers = not header.isascii() and _is_utf8(header)
        self.eight_bit = not whole.isascii() if whole else False

    def release(self) -> None:
        """Forget the bytes held in memory (the message is done)."""
        if self.blob_id:
            self.data = None
            self.loaded = False

    async def read_all(self) -> bytes:
        if self.data is not None:
            return self.data
        return await self.storage.read_blob(self.blob_id, self.skip, self.blob_size)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        offset = self.skip
        while offset < self.blob_size:
            end = min(offset + CHUNK, self.blob_size)
            chunk = await self.storage.read_blob(self.blob_id, offset, end)
            if not chunk:
                return
            yield chunk
            offset += len(chunk)


def return_path_length(data: bytes) -> int:
    """Length of a leading ``Return-Path:`` field (with folded lines), else 0."""
    if data[:12].lower() != b"return-path:":
        return 0
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return 0  # no line end at all: not a header we wrote
        pos = end + 1
        if data[pos : pos + 1] not in (b" ", b"\t"):
            return pos


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- values
@dataclass(eq=False)
class Outbound:
    """One queued entry being delivered: what is still to do and what is settled."""

    entry: QueueEntry
    body: MessageBody
    pending: list[QueueRecipient] = field(default_factory=list)
    outcomes: list[RecipientOutcome] = field(default_factory=list)
    #: The 7-bit form, once converted for a server without 8BITMIME.
    seven_bit: MessageBody | None = None
    #: The last session-level failure seen for the pending recipients (and as text).
    failure: Reply | None = None
    failure_text: str = ""
    #: The attempt's result has been written.
    finished: bool = False

    def __post_init__(self) -> None:
        if not self.pending:
            self.pending = list(self.entry.recipients)


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """The result of one attempt for one recipient. ``remote``: the reply came from the
    server; ``hop``: where it was tried; ``dsn``: the server offered DSN (NOTIFY/ORCPT were
    passed on)."""

    recipient: QueueRecipient
    status: DeliveryStatus
    reply: Reply
    remote: bool
    hop: NextHop | None = None
    dsn: bool = False
    lost_after_dot: bool = False

    @property
    def retry_elsewhere(self) -> bool:
        return (
            self.status is DeliveryStatus.TEMPORARY and not self.remote and not self.lost_after_dot
        )

    @property
    def enhanced(self) -> str:
        return self.reply.enhanced or f"{self.reply.code // 100}.0.0"

    def text(self) -> str:
        """``host[ip]:port said: 550 5.1.1 ...`` (or the local reason), on one line."""
        head = f"{self.reply.code} {self.enhanced} "
        body = " ".join(line for line in self.reply.lines if line).strip()
        where = ""
        if self.hop is not None:
            where = f"{self.hop.mx}[{self.hop.ip}]:{self.hop.port}"
            where += " said: " if self.remote else ": "
        return f"{where}{head}{body}".strip()


@dataclass(frozen=True, slots=True)
class SessionReport:
    """How a session went. ``failure``: why it ended badly (None after a clean QUIT);
    ``attempted``: messages that got a result; ``usable``: the server took part in SMTP far
    enough to be considered alive (for the host backoff)."""

    hop: NextHop
    failure: Reply | None
    attempted: int
    usable: bool
    tls: bool = False


Report = Callable[[Outbound, list[RecipientOutcome]], Awaitable[None]]


class MessageFeed:
    """The messages one session sends, in order. The queue may :meth:`add` more while the
    session runs (mail for the same next hop claimed meanwhile rides the open connection);
    once the session has taken its last message the feed is closed and :meth:`add` refuses.

    ``linger``: how long :meth:`next` waits for a late message before closing; ``limit``: no
    message is added once the session has this many (the initial ones are all sent)."""

    def __init__(self, messages: Sequence[Outbound] = (), *, linger: float = 0.0, limit: int = 0):
        self._items: deque[Outbound] = deque(messages)
        self.linger = linger
        self.limit = limit
        self.taken = 0
        self.closed = False
        self._arrived = asyncio.Event()

    def add(self, message: Outbound) -> bool:
        """Queue ``message`` on this session; False when it is closed or full."""
        if self.closed or (self.limit and self.taken + len(self._items) >= self.limit):
            return False
        self._items.append(message)
        self._arrived.set()
        return True

    def close(self) -> None:
        """No more :meth:`add`; what is queued may still be taken (a retry on a new
        connection to the same host)."""
        self.closed = True

    @property
    def pending(self) -> list[Outbound]:
        return list(self._items)

    def __len__(self) -> int:
        """How many messages wait to be taken (without copying them, unlike ``pending``)."""
        return len(self._items)

    async def next(self) -> Outbound | None:
        """The next message, or None (and closed) when there is none, even after lingering."""
        if not self._items and self.linger > 0 and not self.closed:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.linger):  # not wait_for: no Task per message
                    await self._arrived.wait()
        if not self._items:
            self.close()
            return None
        self.taken += 1
        return self._items.popleft()


class Transport(Protocol):
    """What the queue needs from the network: one session to ``hop`` for the messages of
    ``feed``."""

    async def session(
        self,
        hop: NextHop,
        feed: MessageFeed,
        report: Report,
        stopping: Callable[[], bool],
    ) -> SessionReport: ...


# --------------------------------------------------------------------------- the SMTP transport
class SmtpTransport:
    """Sessions over TCP with the SMTP client core (see the module docstring)."""

    def __init__(self, settings: DeliverySettings, helo_name: str) -> None:
        self.settings = settings
        self.helo_name = settings.helo_name or helo_name
        self.tls_policy = cast(TlsPolicy, settings.tls)
        self._tls: ssl.SSLContext | None = None

    @property
    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._tls = ctx
        return self._tls

    async def session(
        self,
        hop: NextHop,
        feed: MessageFeed,
        report: Report,
        stopping: Callable[[], bool],
    ) -> SessionReport:
        result = await _Session(self, hop, feed, report, stopping, self.tls_policy).run()
        if (
            result.failure is not None
            and result.failure.enhanced == "4.7.5"
            and self.tls_policy == "opportunistic"
            and result.attempted == 0
            and not stopping()
        ):
            event(log, "queue.tls_fallback", host=hop.mx, ip=hop.ip, port=hop.port)
            return await _Session(self, hop, feed, report, stopping, "none").run()
        return result


class _Session:
    def __init__(
        self,
        transport: SmtpTransport,
        hop: NextHop,
        feed: MessageFeed,
        report: Report,
        stopping: Callable[[], bool],
        tls_policy: TlsPolicy,
    ) -> None:
        self.t = transport
        self.s = transport.settings
        self.hop = hop
        self.feed = feed
        #: Messages to resend first (converted to 7-bit after the server refused 8-bit).
        self.todo: deque[tuple[Outbound, bool]] = deque()
        self.report = report
        self.stopping = stopping
        self.tls_policy = tls_policy
        self.current: tuple[Outbound, MessageBody, list[QueueRecipient]] | None = None
        self.attempted = 0
        self.usable = False
        self.dsn = False
        self.tls = False
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> SessionReport:
        hop = self.hop
        local = (self.s.source_address, 0) if self.s.source_address else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(hop.ip, hop.port, local_addr=local, limit=1 << 20),
                self.s.connect_timeout,
            )
        except TimeoutError:
            return self._no_connection("connection timed out")
        except OSError as exc:
            return self._no_connection(exc.strerror or str(exc))
        self.reader, self.writer = reader, writer
        try:
            return await self._loop()
        finally:
            self.feed.close()  # nothing joins a session that is over
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, TimeoutError, ssl.SSLError):
                pass

    def _no_connection(self, reason: str) -> SessionReport:
        reply = CONNECT_FAILED.with_text(f"{CONNECT_FAILED.text}: {reason}")
        return SessionReport(self.hop, reply, 0, False)

    async def _loop(self) -> SessionReport:
        client = SmtpClient(self.t.helo_name, self.tls_policy)
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        # Reads go through Stream for its timeout (one lazily re-armed timer per connection,
        # where wait_for would start a Task per read); the STARTTLS upgrade keeps the reader.
        stream = Stream(reader, writer)
        try:
            return await self._steps(client, stream)
        finally:
            stream.cancel_timeout()

    async def _steps(self, client: SmtpClient, stream: Stream) -> SessionReport:
        while True:
            ev = client.next_event()
            if ev is NEED_DATA:
                out = client.data_to_send()
                if out and not await self._write(client, out):
                    continue
                waiting = client.waiting_for
                timeout = (
                    self.s.data_timeout
                    if waiting is Waiting.END_OF_DATA
                    else self.s.command_timeout
                )
                try:
                    data = await stream.read(timeout)
                except TimeoutError:
                    client.connection_lost(f"timeout waiting for the reply to {waiting.value}")
                    continue
                except (OSError, ssl.SSLError) as exc:
                    client.connection_lost(str(exc) or exc.__class__.__name__)
                    continue
                client.receive_data(data)
            elif isinstance(ev, ReadyForMessage):
                self.usable = True
                self.dsn = ev.capabilities.dsn
                self.tls = ev.tls_active
                await self._next_message(client, ev)
            elif isinstance(ev, SendBody):
                await self._send_body(client)
            elif isinstance(ev, MessageResult):
                await self._result(client, ev)
            elif isinstance(ev, NeedTls):
                await self._starttls(client)
            elif isinstance(ev, Closed) or ev is CLOSED:
                failure = ev.failure if isinstance(ev, Closed) else None
                reply = None if failure is None else failure.reply
                usable = self.usable and not isinstance(failure, TlsFailure)
                return SessionReport(self.hop, reply, self.attempted, usable, self.tls)

    async def _write(self, client: SmtpClient, data: bytes) -> bool:
        writer = self.writer
        assert writer is not None
        try:
            writer.write(data)
            await self._drain(writer)
        except TimeoutError:
            client.connection_lost("timeout sending to the server")
            return False
        except (OSError, ssl.SSLError) as exc:
            client.connection_lost(str(exc) or exc.__class__.__name__)
            return False
        return True

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait for the peer only when much is unsent (``wait_for`` costs a Task per call); a
        broken connection shows at the next read."""
        if writer.transport.get_write_buffer_size() > WRITE_BUFFER:
            await asyncio.wait_for(writer.drain(), self.s.command_timeout)

    async def _next_message(self, client: SmtpClient, ready: ReadyForMessage) -> None:
        while not self.stopping():
            if self.todo:
                message, downgraded = self.todo.popleft()
            else:
                found = await self.feed.next()
                if found is None:
                    break
                message, downgraded = found, False
            body = message.seven_bit if downgraded and message.seven_bit else message.body
            envelope, sent, refused = self._envelope(message, body)
            if refused:
                self.attempted += 1
                await self.report(message, refused)
            if envelope is not None:
                self.current = (message, body, sent)
                client.send_message(envelope)
                return
        client.quit()

    def _envelope(
        self, message: Outbound, body: MessageBody
    ) -> tuple[Envelope | None, list[QueueRecipient], list[RecipientOutcome]]:
        """The envelope for the pending recipients, the recipients in it, and those refused
        before any command (addresses the client core cannot send)."""
        entry = message.entry
        rcpts: list[Recipient] = []
        sent: list[QueueRecipient] = []
        refused: list[RecipientOutcome] = []
        for r in message.pending:
            try:
                rcpts.append(Recipient(r.address, notify=r.notify, orcpt=_orcpt(r.orcpt)))
            except ValueError:
                try:  # bad DSN parameters are dropped, not the recipient
                    rcpts.append(Recipient(r.address))
                except ValueError:
                    refused.append(self._local(r, INVALID_RECIPIENT))
                    continue
            sent.append(r)
        if not rcpts:
            return None, [], refused
        ret: Literal["FULL", "HDRS"] | None = None
        if entry.ret and entry.ret.upper() == "FULL":
            ret = "FULL"
        elif entry.ret and entry.ret.upper() == "HDRS":
            ret = "HDRS"
        for envid in (entry.envid, None):
            try:
                envelope = Envelope(
                    entry.sender,
                    rcpts,
                    size=body.size,
                    eight_bit=body.eight_bit,
                    smtputf8=body.utf8_headers,
                    ret=ret,
                    envid=envid,
                )
            except ValueError:
                continue
            return envelope, sent, refused
        return None, [], refused + [self._local(r, INVALID_SENDER) for r in sent]

    def _local(self, rcpt: QueueRecipient, reply: Reply) -> RecipientOutcome:
        status = DeliveryStatus.PERMANENT if reply.code >= 500 else DeliveryStatus.TEMPORARY
        return RecipientOutcome(rcpt, status, reply, remote=False, hop=self.hop)

    async def _send_body(self, client: SmtpClient) -> None:
        assert self.current is not None and self.writer is not None
        _, body, _ = self.current
        writer = self.writer
        try:
            async for chunk in body.chunks():
                encoded = client.encode_data(chunk)
                if encoded:
                    writer.write(encoded)
                    await self._drain(writer)
        except TimeoutError:
            self._abort(client, "timeout sending the message")
            return
        except (OSError, ssl.SSLError) as exc:
            self._abort(client, str(exc) or exc.__class__.__name__)
            return
        except StorageError as exc:
            event(log, "queue.read_failed", level=logging.ERROR, error=exc)
            self._abort(client, f"local error reading the message: {exc}")
            return
        client.end_data()

    def _abort(self, client: SmtpClient, reason: str) -> None:
        """Drop the connection mid-message: never send the final dot after a partial body."""
        assert self.writer is not None
        self.writer.transport.abort()
        client.connection_lost(reason)

    async def _result(self, client: SmtpClient, ev: MessageResult) -> None:
        assert self.current is not None
        message, _, recipients = self.current
        self.current = None
        if ev.needs_7bit and message.seven_bit is None:
            try:
                data = await message.body.read_all()
                if len(data) > THREAD_DOWNGRADE:
                    converted = await asyncio.to_thread(downgrade, data)
                else:
                    converted = downgrade(data)
            except DowngradeImpossible as exc:
                reply = EIGHTBIT_NOT_SUPPORTED.with_text(
                    f"{EIGHTBIT_NOT_SUPPORTED.text}, and the message cannot be converted: {exc}"
                )
                self.attempted += 1
                await self.report(message, [self._local(r, reply) for r in recipients])
                return
            message.seven_bit = MessageBody.from_bytes(converted)
            event(log, "queue.downgraded", id=message.entry.queue_id, host=self.hop.mx)
            self.todo.appendleft((message, True))
            return
        outcomes = [
            RecipientOutcome(
                rcpt,
                result.status,
                result.reply,
                result.remote,
                hop=self.hop,
                dsn=self.dsn,
                lost_after_dot=ev.lost_after_dot,
            )
            for rcpt, result in zip(recipients, ev.recipients, strict=True)
        ]
        if ev.lost_after_dot:
            event(
                log,
                "queue.lost_after_dot",
                level=logging.WARNING,
                id=message.entry.queue_id,
                host=self.hop.mx,
                ip=self.hop.ip,
            )
        self.attempted += 1
        await self.report(message, outcomes)

    async def _starttls(self, client: SmtpClient) -> None:
        writer, reader = self.writer, self.reader
        assert writer is not None and reader is not None
        try:
            await asyncio.wait_for(writer.drain(), self.s.command_timeout)
            # Bytes the server sent after its 220 and before the handshake are never trusted
            # (RFC 3207 §4.2, CVE-2011-0411): asyncio keeps them in the reader's buffer.
            buffer = getattr(reader, "_buffer", None)
            if isinstance(buffer, bytearray):
                buffer.clear()
            server_name = self.hop.mx if not _is_ip(self.hop.mx) else None
            await asyncio.wait_for(
                writer.start_tls(self.t.tls_context, server_hostname=server_name),
                self.s.command_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
            event(log, "queue.tls_failed", host=self.hop.mx, ip=self.hop.ip, error=exc)
            client.tls_failed(str(exc) or exc.__class__.__name__)
            return
        client.tls_established()


def _orcpt(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    kind, sep, address = value.partition(";")
    if not sep or not kind.strip() or not address.strip():
        return None
    return kind.strip(), address.strip()


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
