"""The asyncio edge of SMTP reception (``[listen] smtp``): bytes in, core events, storage out.

The glue loop is the httpcore/h11 one: feed what the socket gave to the sans-IO core, act on
each event, and flush the core's replies whenever it needs more input (which batches replies
to pipelined commands, RFC 2920). Everything protocol-shaped lives in ``letterbird.proto.smtp``;
this module only decides policy (who may receive), streams the message to a spool, and commits
it (blob + one INBOX entry per local recipient) in one transaction before the final ``250``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import secrets
import time
from dataclasses import dataclass, field

from letterbird.delivery.spool import Spool
from letterbird.directory.service import Resolution, is_loopback
from letterbird.logs import event
from letterbird.proto.smtp import replies
from letterbird.proto.smtp.replies import Reply
from letterbird.proto.smtp.server import (
    NEED_DATA,
    AuthRequested,
    ConnectionClosing,
    DataAborted,
    DataChunk,
    DataComplete,
    Hello,
    MailFrom,
    RcptTo,
    SmtpServerConfig,
    SmtpServerConnection,
    StartTlsRequested,
)
from letterbird.server.app import App, ConnectionInfo, ProtocolSpec, register
from letterbird.server.stream import Stream
from letterbird.storage.interface import Account, AppendTarget, QuotaExceeded, StorageError

log = logging.getLogger("letterbird.smtp")

__all__ = ["SmtpSession", "handle_smtp"]

CONNECTION_LIMIT = Reply(421, "4.7.0", "Too many connections, try again later")


def new_message_id() -> str:
    """A short, unique, log-friendly id for one accepted message."""
    return secrets.token_hex(8).upper()


@dataclass
class _Recipient:
    address: str
    resolution: Resolution


@dataclass
class _Transaction:
    recipients: list[_Recipient] = field(default_factory=list)
    spool: Spool | None = None
    message_id: str = field(default_factory=new_message_id)


class SmtpSession:
    """One SMTP connection on the MX port."""

    def __init__(self, app: App, stream: Stream, info: ConnectionInfo) -> None:
        self.app = app
        self.stream = stream
        self.info = info
        cfg = app.config
        lim = cfg.limits
        self.core = SmtpServerConnection(
            SmtpServerConfig(
                hostname=cfg.hostname,
                max_line_length=lim.smtp_line_length,
                max_data_line_length=lim.smtp_data_line_length,
                max_message_size=lim.smtp_message_size,
                max_recipients=lim.smtp_recipients,
                max_errors=lim.smtp_errors,
                tls_available=True,
                tls_active=info.implicit_tls,
                auth_mechanisms=(),
                auth_requires_tls=not is_loopback(info.peer_host),
                max_received_headers=lim.smtp_received_headers,
            )
        )
        self.txn: _Transaction | None = None
        self.rdns: asyncio.Task[str | None] | None = None
        self.stop_requested = False

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        event(log, "smtp.connect", client=self.info.peer_host, port=self.info.local_port)
        self.rdns = asyncio.ensure_future(self._reverse_dns())
        self.app.stop_callbacks.add(self._on_stop)
        try:
            await self._loop()
        finally:
            self.app.stop_callbacks.discard(self._on_stop)
            if self.txn is not None and self.txn.spool is not None:
                self.txn.spool.discard()  # vanished mid-DATA: nothing half-stored
            if self.rdns is not None and not self.rdns.done():
                self.rdns.cancel()
            await self.stream.close()
            event(log, "smtp.disconnect", client=self.info.peer_host)

    async def _loop(self) -> None:
        core = self.core
        lim = self.app.config.limits
        while True:
            ev = core.next_event()
            if ev is NEED_DATA:
                await self.stream.write(core.data_to_send())
                if self.stop_requested and self.txn is None:
                    core.shutdown_reply()
                    continue
                in_data = self.txn is not None and self.txn.spool is not None
                timeout = lim.smtp_data_timeout if in_data else lim.smtp_command_timeout
                try:
                    data = await self.stream.read(timeout)
                except TimeoutError:
                    event(log, "smtp.timeout", client=self.info.peer_host)
                    core.timeout_reply()
                    continue
                core.receive_data(data)
                continue
            if isinstance(ev, ConnectionClosing):
                await self.stream.write(core.data_to_send())
                return
            if isinstance(ev, Hello):
                core.accept_hello()
            elif isinstance(ev, MailFrom):
                await self._mail(ev)
            elif isinstance(ev, RcptTo):
                core.reply(await self._rcpt(ev))
            elif isinstance(ev, DataChunk):
                self._chunk(ev.data)
            elif isinstance(ev, DataComplete):
                core.reply(await self._complete(ev))
            elif isinstance(ev, DataAborted):
                self._abort(ev.reply)
            elif isinstance(ev, StartTlsRequested):
                await self._starttls()
            elif isinstance(ev, AuthRequested):  # pragma: no cover - not offered on the MX port
                core.auth_failed()
            else:  # CLOSED
                return

    def _on_stop(self) -> None:
        """Server shutdown: an idle session gets ``421`` now; a transaction may finish."""
        if self.txn is None and not self.core.closing:
            self.core.shutdown_reply()
            self.stream.writer.write(self.core.data_to_send())
            self.stream.writer.close()
        self.stop_requested = True

    # -- events --------------------------------------------------------------------------
    async def _mail(self, ev: MailFrom) -> None:
        self.txn = _Transaction()
        sender = str(ev.address) if ev.address is not None else ""
        event(
            log,
            "smtp.mail",
            client=self.info.peer_host,
            sender=sender or "<>",
            id=self.txn.message_id,
        )
        self.core.reply(replies.SENDER_OK)

    async def _rcpt(self, ev: RcptTo) -> Reply:
        mbox = ev.address
        directory = self.app.directory
        if not mbox.domain:  # <Postmaster> without a domain (RFC 5321 §4.1.1.3)
            target = mbox.local_part
        else:
            target = f"{mbox.local_part}@{mbox.domain}"
            try:
                local = await directory.is_local_domain(mbox.domain)
            except StorageError:
                return replies.LOCAL_ERROR
            if not local:
                event(log, "smtp.relay_denied", client=self.info.peer_host, rcpt=target)
                return replies.RELAY_DENIED
        try:
            resolution = await directory.resolve(target)
        except StorageError:
            return replies.LOCAL_ERROR
        if resolution is None or not (resolution.accounts or resolution.forward):
            event(log, "smtp.unknown_user", client=self.info.peer_host, rcpt=target)
            return replies.NO_SUCH_USER
        if resolution.forward and not resolution.accounts:
            # Forwarding to other domains needs the outgoing queue (not built yet).
            return Reply(450, "4.3.2", "Forwarding to other domains is not available yet")
        for account in resolution.accounts:
            if account.quota and account.used >= account.quota:
                return replies.OVER_QUOTA
        assert self.txn is not None
        self.txn.recipients.append(_Recipient(target, resolution))
        return replies.RECIPIENT_OK

    def _chunk(self, data: bytes) -> None:
        txn = self.txn
        assert txn is not None
        if txn.spool is None:
            txn.spool = Spool(self.app.config.data_path / "spool")
            txn.spool.write(self._trace_headers(txn))
        txn.spool.write(data)

    def _abort(self, reply: Reply) -> None:
        if self.txn is not None:
            if self.txn.spool is not None:
                self.txn.spool.discard()
            event(
                log,
                "smtp.refused",
                client=self.info.peer_host,
                id=self.txn.message_id,
                reply=f"{reply.code} {reply.enhanced}",
            )
        self.txn = None

    async def _complete(self, ev: DataComplete) -> Reply:
        txn = self.txn
        assert txn is not None
        self.txn = None
        if txn.spool is None:  # an empty message (BDAT 0 LAST)
            txn.spool = Spool(self.app.config.data_path / "spool")
            txn.spool.write(self._trace_headers(txn))
        spool = txn.spool
        try:
            if ev.received_count > self.app.config.limits.smtp_received_headers:
                event(
                    log,
                    "smtp.loop",
                    client=self.info.peer_host,
                    id=txn.message_id,
                    received=ev.received_count,
                )
                return replies.MAIL_LOOP
            blob = await spool.finish()
            targets = [AppendTarget(account.id) for account in _unique_accounts(txn.recipients)]
            try:
                await self.app.storage.append(blob, targets)
            except QuotaExceeded:
                return replies.OVER_QUOTA
            except StorageError as exc:
                event(log, "smtp.storage_error", level=logging.ERROR, id=txn.message_id, error=exc)
                return replies.LOCAL_ERROR
        finally:
            spool.discard()
        event(
            log,
            "smtp.accepted",
            client=self.info.peer_host,
            id=txn.message_id,
            size=blob.size,
            rcpts=len(txn.recipients),
        )
        return replies.MESSAGE_ACCEPTED.with_text(f"OK: queued as {txn.message_id}")

    async def _starttls(self) -> None:
        self.core.reply(replies.TLS_READY)
        await self.stream.write(self.core.data_to_send())
        try:
            await self.stream.start_tls(self.app.tls.context)
        except (OSError, TimeoutError, ConnectionError) as exc:
            event(log, "smtp.tls_failed", client=self.info.peer_host, error=exc)
            raise ConnectionError("TLS handshake failed") from exc
        self.core.tls_established()
        event(log, "smtp.tls", client=self.info.peer_host, tls=self.stream.tls_description())

    # -- helpers -------------------------------------------------------------------------
    async def _reverse_dns(self) -> str | None:
        """The client's PTR name, best effort: bounded by ``dns.rdns_timeout``, never raises.

        Loopback clients are looked up only when explicit nameservers are configured (tests
        serve PTR records for 127.0.0.x; the system resolver has nothing useful for them).
        """
        resolver = self.app.resolver
        if resolver is None:
            return None
        if is_loopback(self.info.peer_host) and not self.app.config.dns.nameservers:
            return None
        return await resolver.ptr(self.info.peer_host)

    def _trace_headers(self, txn: _Transaction) -> bytes:
        """``Return-Path:`` and ``Received:`` (RFC 5321 §4.4), with TLS details."""
        core = self.core
        env = core.envelope
        sender = ""
        if env is not None and env.mail_from.address is not None:
            sender = str(env.mail_from.address)
        rdns = None
        if self.rdns is not None and self.rdns.done() and not self.rdns.cancelled():
            rdns = self.rdns.result()
        helo = core.helo_name or "unknown"
        smtputf8 = bool(env and env.mail_from.params.smtputf8)
        proto = ("UTF8SMTP" if smtputf8 else "ESMTP") if core.extended else "SMTP"
        if core.tls_active:
            proto += "S"
        tls = self.stream.tls_description()
        tls_comment = f"\r\n\t(using {tls})" if tls else ""
        for_clause = ""
        if len(txn.recipients) == 1:
            for_clause = f"\r\n\tfor <{txn.recipients[0].address}>"
        date = email.utils.formatdate(time.time(), localtime=True)
        received = (
            f"Received: from {helo} ({rdns or 'unknown'} [{self.info.peer_host}])"
            f"\r\n\tby {self.app.config.hostname} (Letterbird) with {proto}"
            f" id {txn.message_id}{tls_comment}{for_clause};\r\n\t{date}\r\n"
        )
        return f"Return-Path: <{sender}>\r\n{received}".encode()


def _unique_accounts(recipients: list[_Recipient]) -> list[Account]:
    seen: dict[int, Account] = {}
    for r in recipients:
        for account in r.resolution.accounts:
            seen.setdefault(account.id, account)
    return list(seen.values())


async def handle_smtp(
    app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnectionInfo
) -> None:
    lim = app.config.limits
    stream = Stream(reader, writer, implicit_tls=info.implicit_tls)
    total = app.connection_count("smtp")
    per_ip = app.enter("smtp", info.peer_host)
    try:
        if total >= lim.smtp_connections or per_ip > lim.smtp_connections_per_ip:
            event(log, "smtp.connection_limit", client=info.peer_host, total=total, per_ip=per_ip)
            await stream.write(replies.encode(CONNECTION_LIMIT))
            await stream.close()
            return
        await SmtpSession(app, stream, info).run()
    finally:
        app.leave("smtp", info.peer_host)


register(ProtocolSpec("smtp", implicit_tls=False, handler=handle_smtp, label="SMTP (MX)"))
