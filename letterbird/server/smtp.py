"""The asyncio edge of SMTP: the MX port (``[listen] smtp``) and message submission
(``[listen] submission``, STARTTLS, and ``submissions``, implicit TLS: RFC 6409, RFC 8314).

The glue loop is the httpcore/h11 one: feed what the socket gave to the sans-IO core, act on
each event, and flush the core's replies whenever it needs more input (which batches replies
to pipelined commands, RFC 2920). Everything protocol-shaped lives in ``letterbird.proto.smtp``;
this module decides policy, streams the message to a spool, and commits it in one transaction
(blob + one INBOX entry per local recipient + queue rows for the others, DESIGN.md §5) before
the final ``250``.

One session class serves every port; a :class:`Policy` says what differs:

* **MX** (``smtp``): no AUTH; recipients must be ours (``550 5.7.1`` relay denial otherwise).
* **submission / submissions**: AUTH PLAIN and LOGIN (RFC 4954), offered only under TLS unless
  the *client* address is loopback (the core answers ``538 5.7.11``); MAIL needs AUTH
  (``530 5.7.0``); the envelope sender must be one of the account's addresses or aliases
  (``553 5.7.1``; ``<>`` is not allowed for users); any recipient may be given; after DATA a
  ``From:`` address must be an identity too (``550 5.7.1``), ``Bcc:`` is removed and missing
  ``Date:``/``Message-ID:``/``From:`` are added (:mod:`letterbird.delivery.submission`);
  per-account messages/recipients per hour (``450 4.7.1`` at MAIL / RCPT, counted per node).
  Wrong credentials give ``535 5.7.8``; once the directory throttles the account or client
  address, AUTH is answered ``454 4.7.0`` (temporary, RFC 4954 §6: a well-behaved client
  tries again later rather than prompting for a new password); both are logged.

On every port: DSN (RFC 3461) is offered; NOTIFY/ORCPT/RET/ENVID go into the queue rows, and
NOTIFY=SUCCESS for a local recipient sends a "delivered" DSN ("expanded" for an alias with
several targets, whose forwarded targets then lose SUCCESS, as RFC 3461 §5.2.7.3 asks).
Alias targets outside our domains are forwarded through the queue with the envelope sender
rewritten by SRS (:mod:`letterbird.delivery.srs`) unless it is ``<>`` or already ours; an
``SRS0``/``SRS1`` recipient at one of our domains whose hash and age check out is routed back
to the address it stands for (a bounce of forwarded mail reaches the original sender).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from letterbird.auth.service import (
    InboundCheck,
    MailAuth,
    SignRequest,
    finish_message,
    replace_mailbox,
)
from letterbird.config import Config
from letterbird.delivery.dsn import DsnRecipient, build_dsn
from letterbird.delivery.queue.service import new_queue_id
from letterbird.delivery.spool import Spool
from letterbird.delivery.srs import Srs, SrsError, is_srs_address, load_secret
from letterbird.delivery.submission import BaseSendingLimits, HeaderFixer, Identities, SendingLimits
from letterbird.directory.addresses import InvalidAddress, normalise_domain
from letterbird.directory.service import AuthOutcome, is_loopback
from letterbird.logs import event
from letterbird.mime.headers import header_section_end
from letterbird.proto.smtp import replies
from letterbird.proto.smtp.params import OriginalRecipient, RcptParams
from letterbird.proto.smtp.replies import Reply
from letterbird.proto.smtp.server import (
    NEED_DATA,
    AuthRequested,
    ConnectionClosing,
    DataAborted,
    DataChunk,
    DataComplete,
    Envelope,
    Hello,
    MailFrom,
    RcptTo,
    SmtpServerConfig,
    SmtpServerConnection,
    StartTlsRequested,
)
from letterbird.server.app import App, ConnectionInfo, Handler, ProtocolSpec, register
from letterbird.server.stream import Stream
from letterbird.storage.interface import (
    Account,
    AppendTarget,
    BlobSource,
    OutgoingMessage,
    QueueRecipient,
    QuotaExceeded,
    StorageError,
)

log = logging.getLogger("letterbird.smtp")

__all__ = [
    "MX",
    "SUBMISSION",
    "SUBMISSIONS",
    "Policy",
    "SmtpSession",
    "core_config",
    "handle_smtp",
    "handle_submission",
    "handle_submissions",
]

# -- replies this edge gives (policy answers; the core's own are in proto.smtp.replies) ---------
CONNECTION_LIMIT = Reply(421, "4.7.0", "Too many connections, try again later")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed authentications, try again later")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
NULL_SENDER_REFUSED = Reply(553, "5.7.1", "The null sender is not allowed for users")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: header address not owned by the authenticated user")
MESSAGE_RATE_LIMITED = Reply(450, "4.7.1", "Sending limit reached (messages per hour), try later")
RECIPIENT_RATE_LIMITED = Reply(
    450, "4.7.1", "Sending limit reached (recipients per hour), try later"
)
HEADER_TOO_LARGE = Reply(552, "5.3.4", "Message header section too large")

#: ``app.services`` keys of the per-process helpers this module shares between sessions.
SRS_SERVICE = "srs"
LIMITS_SERVICE = "sending_limits"

SASL_MECHANISMS = ("PLAIN", "LOGIN")
#: Bytes of a stored message read back to quote its header section in a success DSN.
DSN_HEADER_LIMIT = 256 * 1024


@dataclass(frozen=True, slots=True)
class Policy:
    """What one kind of SMTP listener allows."""

    key: str  # the [listen] key
    submission: bool  # AUTH offered and required, sender rules, header fixes, sending limits
    implicit_tls: bool
    label: str
    connection_group: str  # connection limits are counted per group


MX = Policy(
    "smtp", submission=False, implicit_tls=False, label="SMTP (MX)", connection_group="smtp"
)
SUBMISSION = Policy(
    "submission",
    submission=True,
    implicit_tls=False,
    label="SMTP submission (STARTTLS)",
    connection_group="submission",
)
SUBMISSIONS = Policy(
    "submissions",
    submission=True,
    implicit_tls=True,
    label="SMTP submission (implicit TLS)",
    connection_group="submission",
)


def core_config(
    config: Config, policy: Policy, peer_host: str, *, tls_active: bool
) -> SmtpServerConfig:
    """The protocol core's settings for one connection from ``peer_host``.

    AUTH is offered on submission ports only; plaintext AUTH (before TLS) only to a loopback
    client (DESIGN.md §10: the client address decides).
    """
    lim = config.limits
    return SmtpServerConfig(
        hostname=config.hostname,
        max_line_length=lim.smtp_line_length,
        max_data_line_length=lim.smtp_data_line_length,
        max_message_size=lim.smtp_message_size,
        max_recipients=lim.smtp_recipients,
        max_errors=lim.smtp_errors,
        tls_available=True,
        tls_active=tls_active,
        auth_mechanisms=SASL_MECHANISMS if policy.submission else (),
        auth_requires_tls=not is_loopback(peer_host),
        dsn_enabled=True,
        max_received_headers=lim.smtp_received_headers,
    )


@dataclass
class _Recipient:
    address: str  # as the client wrote it
    params: RcptParams
    accounts: list[Account] = field(default_factory=list)  # local mailboxes
    forward: list[str] = field(default_factory=list)  # outside addresses reached through us
    remote: str | None = None  # an outside recipient of an authenticated user

    @property
    def targets(self) -> int:
        return len(self.accounts) + len(self.forward)


@dataclass
class _Transaction:
    message_id: str
    recipients: list[_Recipient] = field(default_factory=list)
    spool: Spool | None = None
    fixer: HeaderFixer | None = None
    auth: InboundCheck | None = None  # SPF/DKIM/DMARC of an incoming message (letterbird.auth)


class SmtpSession:
    """One SMTP connection; ``policy`` says which port it came in on."""

    def __init__(self, app: App, stream: Stream, info: ConnectionInfo, policy: Policy = MX) -> None:
        self.app = app
        self.stream = stream
        self.info = info
        self.policy = policy
        self.core = SmtpServerConnection(
            core_config(app.config, policy, info.peer_host, tls_active=info.implicit_tls)
        )
        self.txn: _Transaction | None = None
        self.account: Account | None = None
        self.identities: Identities | None = None
        self.rdns: asyncio.Task[str | None] | None = None
        self.stop_requested = False
        self._spool_folder: Path | None = None  # resolved once per connection, on first use
        self._checked_client: bool | None = None  # does letterbird.auth check this client?

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        event(
            log,
            "smtp.connect",
            client=self.info.peer_host,
            port=self.info.local_port,
            mode=self.policy.key,
        )
        self.rdns = asyncio.ensure_future(self._reverse_dns())
        self.app.stop_callbacks.add(self._on_stop)
        try:
            await self._loop()
        finally:
            self.app.stop_callbacks.discard(self._on_stop)
            if self.txn is not None and self.txn.spool is not None:
                self.txn.spool.discard()  # vanished mid-DATA: nothing half-stored
            if self.txn is not None and self.txn.auth is not None:
                self.txn.auth.cancel()
            if self.rdns is not None and not self.rdns.done():
                self.rdns.cancel()
            await self.stream.close()
            event(log, "smtp.disconnect", client=self.info.peer_host)

    async def _loop(self) -> None:
        core = self.core
        stream = self.stream
        lim = self.app.config.limits
        while True:
            ev = core.next_event()
            if ev is NEED_DATA:
                if stream.send(core.data_to_send()):  # not an await per reply: rarely needed
                    await stream.drain()
                if self.stop_requested and self.txn is None:
                    core.shutdown_reply()
                    continue
                in_data = self.txn is not None and self.txn.spool is not None
                timeout = lim.smtp_data_timeout if in_data else lim.smtp_command_timeout
                try:
                    data = await stream.read(timeout)
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
                if self.txn is not None and self.txn.auth is not None:
                    self.txn.auth.cancel()
                self.txn = None  # EHLO/HELO reset the transaction (RFC 5321 §4.1.4)
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
            elif isinstance(ev, AuthRequested):
                await self._auth(ev)
            else:  # CLOSED
                return

    def _on_stop(self) -> None:
        """Server shutdown: an idle session gets ``421`` now; a transaction may finish."""
        if self.txn is None and not self.core.closing:
            self.core.shutdown_reply()
            self.stream.writer.write(self.core.data_to_send())
            self.stream.writer.close()
        self.stop_requested = True

    # -- shared helpers (per process, created on first use) --------------------------------
    def _srs(self) -> Srs:
        srs = self.app.services.get(SRS_SERVICE)
        if not isinstance(srs, Srs):
            settings = self.app.config.submission
            secret = load_secret(settings.srs_secret, self.app.config.data_path)
            srs = Srs([secret], max_age_days=settings.srs_max_age_days)
            self.app.services[SRS_SERVICE] = srs
        return srs

    def _limits(self) -> BaseSendingLimits:
        limits = self.app.services.get(LIMITS_SERVICE)
        if not isinstance(limits, BaseSendingLimits):
            settings = self.app.config.submission
            caps = (settings.max_messages_per_hour, settings.max_recipients_per_hour)
            shared = self.app.shared  # with workers: counted across them
            limits = SendingLimits(*caps) if shared is None else shared.sending_limits(*caps)
            self.app.services[LIMITS_SERVICE] = limits
        return limits

    # -- AUTH ----------------------------------------------------------------------------
    async def _auth(self, ev: AuthRequested) -> None:
        creds = ev.credentials
        client = self.info.peer_host
        if creds.authzid and creds.authzid.casefold() != creds.username.casefold():
            # Acting as another user (RFC 4616 authzid) is not supported.
            event(log, "smtp.auth_failed", client=client, user=creds.username, reason="authzid")
            self.core.auth_failed(replies.AUTH_FAILED)
            return
        try:
            result = await self.app.directory.authenticate(creds.username, creds.password, client)
        except StorageError as exc:
            event(log, "smtp.auth_error", level=logging.ERROR, client=client, error=exc)
            self.core.auth_failed(replies.AUTH_TEMPORARY_FAILURE)
            return
        if result.ok and result.account is not None:
            self.account = result.account
            self.identities = None
            self.core.auth_succeeded(result.account.address)
            event(log, "smtp.auth", client=client, user=result.account.address, mech=ev.mechanism)
        elif result.outcome is AuthOutcome.THROTTLED:
            event(log, "smtp.auth_throttled", client=client, user=creds.username)
            self.core.auth_failed(AUTH_THROTTLED)
        else:
            event(log, "smtp.auth_failed", client=client, user=creds.username, mech=ev.mechanism)
            self.core.auth_failed(replies.AUTH_FAILED)

    # -- events --------------------------------------------------------------------------
    async def _mail(self, ev: MailFrom) -> None:
        sender = str(ev.address) if ev.address is not None else ""
        if self.policy.submission:
            refusal = await self._check_sender(ev)
            if refusal is not None:
                event(
                    log,
                    "smtp.sender_refused",
                    client=self.info.peer_host,
                    user=self.account.address if self.account else None,
                    sender=sender or "<>",
                    reply=f"{refusal.code} {refusal.enhanced}",
                )
                self.core.reply(refusal)
                return
        if self.txn is not None and self.txn.auth is not None:
            self.txn.auth.cancel()  # after RSET: one live check per connection
        self.txn = _Transaction(new_queue_id())
        if not self.policy.submission:  # SPF starts now, in the background
            mail_auth = MailAuth.for_app(self.app)
            if self._checked_client is None:  # the same answer for every MAIL of a connection
                self._checked_client = mail_auth.checks_client(self.info.peer_host)
            if self._checked_client:
                self.txn.auth = mail_auth.start(
                    self.info.peer_host, self.core.helo_name or "", sender
                )
        event(
            log,
            "smtp.mail",
            client=self.info.peer_host,
            sender=sender or "<>",
            id=self.txn.message_id,
        )
        self.core.reply(replies.SENDER_OK)

    async def _check_sender(self, ev: MailFrom) -> Reply | None:
        """Submission: the sender must be the authenticated user's (RFC 6409 §6.1)."""
        account = self.account
        if account is None:
            return replies.AUTH_REQUIRED
        if ev.address is None:
            return NULL_SENDER_REFUSED
        try:
            identities = await self._identities(account)
        except StorageError:
            return replies.LOCAL_ERROR
        if str(ev.address) not in identities:
            return SENDER_NOT_OWNED
        if not self._limits().message_allowed(account.id, self.app.clock()):
            return MESSAGE_RATE_LIMITED
        return None

    async def _identities(self, account: Account) -> Identities:
        if self.identities is None:
            addresses = await self.app.directory.addresses_of(account)
            self.identities = Identities(addresses, self.app.config.recipient_delimiter)
        return self.identities

    async def _rcpt(self, ev: RcptTo) -> Reply:
        txn = self.txn
        assert txn is not None
        mbox = ev.address
        directory = self.app.directory
        if self.account is not None and self.policy.submission:
            limits = self._limits()
            if not limits.recipient_allowed(self.account.id, len(txn.recipients), self.app.clock()):
                event(
                    log, "smtp.rate_limited", client=self.info.peer_host, user=self.account.address
                )
                return RECIPIENT_RATE_LIMITED
        if not mbox.domain:  # <Postmaster> without a domain (RFC 5321 §4.1.1.3)
            target = mbox.local_part
        else:
            target = f"{mbox.local_part}@{mbox.domain}"
            try:
                local = await directory.is_local_domain(mbox.domain)
            except StorageError:
                return replies.LOCAL_ERROR
            if not local:
                return self._remote_rcpt(txn, ev, target)
            if is_srs_address(mbox.local_part):
                reply = await self._srs_rcpt(txn, ev, target)
                if reply is not None:
                    return reply
        try:
            resolution = await directory.resolve(target)
        except StorageError:
            return replies.LOCAL_ERROR
        if resolution is None or not (resolution.accounts or resolution.forward):
            event(log, "smtp.unknown_user", client=self.info.peer_host, rcpt=target)
            return replies.NO_SUCH_USER
        return self._add_local(txn, ev, target, resolution.accounts, resolution.forward)

    def _remote_rcpt(self, txn: _Transaction, ev: RcptTo, target: str) -> Reply:
        if self.account is None:
            event(log, "smtp.relay_denied", client=self.info.peer_host, rcpt=target)
            return replies.RELAY_DENIED
        try:
            domain = normalise_domain(ev.address.domain)
        except InvalidAddress:
            return replies.BAD_RCPT_SYNTAX
        remote = f"{ev.address.local_part}@{domain}"
        txn.recipients.append(_Recipient(target, ev.params, remote=remote))
        return replies.RECIPIENT_OK

    async def _srs_rcpt(self, txn: _Transaction, ev: RcptTo, target: str) -> Reply | None:
        """An SRS address of ours: route it back (None: not valid SRS, resolve normally).

        An ``SRS1`` address whose first forwarder is one of our domains reverses to an
        ``SRS0`` address of ours, which is reversed in turn.
        """
        srs = self._srs()
        now = self.app.clock()
        directory = self.app.directory
        try:
            address = _split_domain(srs.reverse(target, now))
            local = await directory.is_local_domain(address[1])
            if local and is_srs_address(address[0]):
                address = _split_domain(srs.reverse(f"{address[0]}@{address[1]}", now))
                local = await directory.is_local_domain(address[1])
        except (SrsError, InvalidAddress) as exc:
            event(log, "smtp.srs_invalid", client=self.info.peer_host, rcpt=target, error=exc)
            return None
        except StorageError:
            return replies.LOCAL_ERROR
        original = f"{address[0]}@{address[1]}"
        event(log, "smtp.srs_reverse", rcpt=target, to=original)
        if not local:
            return self._add_local(txn, ev, target, [], [original])
        try:
            resolution = await directory.resolve(original)
        except StorageError:
            return replies.LOCAL_ERROR
        if resolution is None or not (resolution.accounts or resolution.forward):
            event(log, "smtp.unknown_user", client=self.info.peer_host, rcpt=original)
            return replies.NO_SUCH_USER
        return self._add_local(txn, ev, target, resolution.accounts, resolution.forward)

    def _add_local(
        self,
        txn: _Transaction,
        ev: RcptTo,
        target: str,
        accounts: list[Account],
        forward: list[str],
    ) -> Reply:
        for account in accounts:
            if account.quota and account.used >= account.quota:
                return replies.OVER_QUOTA
        txn.recipients.append(_Recipient(target, ev.params, list(accounts), list(forward)))
        return replies.RECIPIENT_OK

    def _chunk(self, data: bytes) -> None:
        txn = self.txn
        assert txn is not None
        spool = txn.spool if txn.spool is not None else self._open_spool(txn)
        if txn.auth is not None:
            txn.auth.feed(data)
        if txn.fixer is not None:
            data = txn.fixer.feed(data)
        spool.write(data)

    def _open_spool(self, txn: _Transaction) -> Spool:
        if self._spool_folder is None:
            self._spool_folder = self.app.config.data_path / "spool"
        spool = Spool(self._spool_folder)
        spool.write(self._trace_headers(txn))
        txn.spool = spool
        env = self.core.envelope
        if self.policy.submission and self.account is not None and self.identities is not None:
            sender = ""
            if env is not None and env.mail_from.address is not None:
                sender = str(env.mail_from.address)
            txn.fixer = HeaderFixer(
                identities=self.identities,
                sender=sender,
                hostname=self.app.config.hostname,
                now=self.app.clock(),
                max_header_size=self.app.config.submission.max_header_size,
            )
        return spool

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
        spool = txn.spool if txn.spool is not None else self._open_spool(txn)  # BDAT 0 LAST
        dsn_original: bytes | None = None
        try:
            refusal = self._content_refusal(txn, ev)
            if refusal is not None:
                return refusal
            blob = await spool.finish()
            submitted = self.policy.submission and self.account is not None
            forward_domain = next(
                (r.address.rpartition("@")[2] for r in txn.recipients if r.forward), None
            )
            sign = (  # DKIM: submitted mail, and mail we forward outside (else nothing to sign)
                SignRequest(
                    submission=submitted,
                    sender=str(ev.envelope.mail_from.address or ""),
                    forward_domain=forward_domain,
                )
                if submitted or forward_domain
                else None
            )
            checked = await finish_message(self.app, blob, txn.auth, sign, queue_id=txn.message_id)
            if checked.refusal is not None:
                return checked.refusal
            blob = checked.blob
            targets = [AppendTarget(account.id) for account in _unique_accounts(txn.recipients)]
            targets = replace_mailbox(targets, checked.mailbox)  # DMARC quarantine: Junk
            try:
                outgoing = await self._outgoing(txn, ev.envelope)
                if outgoing is not None:
                    await self.app.storage.deliver(blob, targets, outgoing, queue_id=txn.message_id)
                else:
                    await self.app.storage.append(blob, targets)
            except QuotaExceeded:
                return replies.OVER_QUOTA
            except StorageError as exc:
                event(log, "smtp.storage_error", level=logging.ERROR, id=txn.message_id, error=exc)
                return replies.LOCAL_ERROR
            if _success_dsn_recipients(txn, ev.envelope):
                dsn_original = _original_headers(blob)
        finally:
            spool.discard()
        if self.account is not None and self.policy.submission:
            self._limits().record(self.account.id, len(txn.recipients), self.app.clock())
        queue = self.app.queue
        if outgoing is not None and queue is not None:
            queue.wake()
        event(
            log,
            "smtp.accepted",
            client=self.info.peer_host,
            id=txn.message_id,
            size=blob.size,
            rcpts=len(txn.recipients),
            local=len(targets),
            queued=len(outgoing.recipients) if outgoing is not None else 0,
            user=self.account.address if self.account is not None else None,
        )
        if dsn_original is not None:
            await self._send_success_dsn(txn, ev.envelope, dsn_original)
        accepted = replies.MESSAGE_ACCEPTED
        return Reply(accepted.code, accepted.enhanced, f"OK: queued as {txn.message_id}")

    def _content_refusal(self, txn: _Transaction, ev: DataComplete) -> Reply | None:
        """Checks once the whole message is in: mail loops, and the submission header rules."""
        if ev.received_count > self.app.config.limits.smtp_received_headers:
            event(
                log,
                "smtp.loop",
                client=self.info.peer_host,
                id=txn.message_id,
                received=ev.received_count,
            )
            return replies.MAIL_LOOP
        fixer = txn.fixer
        if fixer is None:
            return None
        assert txn.spool is not None
        txn.spool.write(fixer.finish())
        if fixer.too_large:
            event(log, "smtp.header_too_large", client=self.info.peer_host, id=txn.message_id)
            return HEADER_TOO_LARGE
        if not fixer.from_ok:
            event(
                log,
                "smtp.from_refused",
                client=self.info.peer_host,
                id=txn.message_id,
                user=self.account.address if self.account is not None else None,
                header_from=",".join(fixer.from_addresses) or "-",
            )
            return FROM_NOT_OWNED
        if fixer.added or fixer.removed:
            event(
                log,
                "smtp.header_fixed",
                id=txn.message_id,
                added=",".join(fixer.added) or None,
                removed=",".join(fixer.removed) or None,
            )
        return None

    async def _outgoing(self, txn: _Transaction, env: Envelope) -> OutgoingMessage | None:
        """The queue rows of this message: outside recipients and forwarded alias targets."""
        rows: dict[str, QueueRecipient] = {}
        forward_domain: str | None = None
        for r in txn.recipients:
            notify = r.params.notify or ()
            orcpt = _orcpt_text(r.params.orcpt)
            if r.remote is not None:
                rows.setdefault(r.remote.casefold(), QueueRecipient(r.remote, notify, orcpt))
                continue
            if not r.forward:
                continue
            # RFC 3461 §5.2.7: a single-target alias passes NOTIFY and ORCPT on; an expansion
            # to several reports "expanded" itself and drops SUCCESS from the new recipients.
            if r.targets > 1:
                notify = _without_success(notify)
            orcpt = orcpt or f"rfc822;{r.address}"
            for target in r.forward:
                rows.setdefault(target.casefold(), QueueRecipient(target, notify, orcpt))
            if forward_domain is None:
                forward_domain = r.address.rpartition("@")[2] or self.app.config.hostname
        if not rows:
            return None
        mail = env.mail_from
        sender = str(mail.address) if mail.address is not None else ""
        if forward_domain is not None and sender:
            sender = await self._srs_sender(sender, forward_domain)
        return OutgoingMessage(
            sender=sender,
            recipients=tuple(rows.values()),
            envid=mail.params.envid,
            ret=mail.params.ret,
            account_id=self.account.id if self.account is not None else None,
        )

    async def _srs_sender(self, sender: str, forward_domain: str) -> str:
        """SRS-rewrite ``sender`` for forwarding, unless it is at one of our domains."""
        domain = sender.rpartition("@")[2]
        try:
            if await self.app.directory.is_local_domain(domain):
                return sender
            forward_domain = normalise_domain(forward_domain)
            return self._srs().forward(sender, forward_domain, self.app.clock())
        except (SrsError, InvalidAddress):
            return sender

    async def _send_success_dsn(self, txn: _Transaction, env: Envelope, original: bytes) -> None:
        """NOTIFY=SUCCESS for recipients delivered here (RFC 3461 §5.2.3): a DSN to the sender."""
        mail = env.mail_from
        assert mail.address is not None
        sender = str(mail.address)
        queue = self.app.queue
        recipients = _success_dsn_recipients(txn, env)
        if queue is None:
            event(log, "smtp.dsn_skipped", id=txn.message_id, reason="no queue service")
            return
        try:
            dsn = build_dsn(
                reporting_mta=self.app.config.hostname,
                sender=sender,
                recipients=recipients,
                original=original,
                envid=mail.params.envid,
                ret="HDRS",  # a success report quotes the headers only, whatever RET says
                arrival=self.app.clock(),
            )
            await queue.notify(sender, dsn)
        except (StorageError, ValueError) as exc:
            event(log, "smtp.dsn_failed", level=logging.ERROR, id=txn.message_id, error=exc)
            return
        event(log, "smtp.dsn", id=txn.message_id, to=sender, rcpts=len(recipients))

    async def _starttls(self) -> None:
        self.core.reply(replies.TLS_READY)
        await self.stream.write(self.core.data_to_send())
        try:
            await self.stream.start_tls(self.app.tls.context)
        except (OSError, TimeoutError, ConnectionError) as exc:
            event(log, "smtp.tls_failed", client=self.info.peer_host, error=exc)
            raise ConnectionError("TLS handshake failed") from exc
        self.core.tls_established()
        self.account = None  # the core forgets AUTH after the handshake (RFC 3207 §4.2)
        self.identities = None
        self.txn = None
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
        """``Return-Path:`` and ``Received:`` (RFC 5321 §4.4), with TLS details.

        The protocol is named per RFC 3848 / RFC 6531: ``ESMTP``, ``ESMTPS`` (TLS),
        ``ESMTPA``/``ESMTPSA`` (authenticated), ``UTF8SMTP…`` for SMTPUTF8.
        """
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
        if core.authenticated_user is not None:
            proto += "A"
        tls = self.stream.tls_description()
        tls_comment = f"\r\n\t(using {tls})" if tls else ""
        for_clause = ""
        if len(txn.recipients) == 1:
            for_clause = f"\r\n\tfor <{txn.recipients[0].address}>"
        date = _received_date()
        received = (
            f"Received: from {helo} ({rdns or 'unknown'} [{self.info.peer_host}])"
            f"\r\n\tby {self.app.config.hostname} (Letterbird) with {proto}"
            f" id {txn.message_id}{tls_comment}{for_clause};\r\n\t{date}\r\n"
        )
        return f"Return-Path: <{sender}>\r\n{received}".encode()


_date_cache: tuple[int, str] = (-1, "")


def _received_date() -> str:
    """The RFC 5322 date-time of now for ``Received:``; formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


def _unique_accounts(recipients: list[_Recipient]) -> list[Account]:
    seen: dict[int, Account] = {}
    for r in recipients:
        for account in r.accounts:
            seen.setdefault(account.id, account)
    return list(seen.values())


def _split_domain(address: str) -> tuple[str, str]:
    """``local@domain`` → (local, normalised domain); InvalidAddress when there is none."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise InvalidAddress(f"not an address: {address!r}")
    return local, normalise_domain(domain)


def _orcpt_text(orcpt: OriginalRecipient | None) -> str | None:
    """ORCPT as the queue keeps it: ``addr-type;address``, decoded (RFC 3461 §4.2)."""
    return f"{orcpt.addr_type};{orcpt.address}" if orcpt is not None else None


def _without_success(notify: tuple[str, ...]) -> tuple[str, ...]:
    if not notify:
        return notify  # the default (FAILURE, DELAY) has no SUCCESS
    kept = tuple(n for n in notify if n.upper() != "SUCCESS")
    return kept or ("NEVER",)


def _success_dsn_recipients(txn: _Transaction, env: Envelope) -> list[DsnRecipient]:
    """The recipients whose NOTIFY=SUCCESS is answered here, not by the queue."""
    if env.mail_from.address is None:
        return []  # never a DSN to <> (RFC 3461 §6.1)
    out: list[DsnRecipient] = []
    for r in txn.recipients:
        notify = {n.upper() for n in r.params.notify or ()}
        if "SUCCESS" not in notify or r.remote is not None:
            continue
        if r.targets > 1:
            action = "expanded"
        elif r.accounts:
            action = "delivered"
        else:
            continue  # a single forwarded target: NOTIFY went on with it
        out.append(DsnRecipient(r.address, action, "2.0.0", orcpt=_orcpt_text(r.params.orcpt)))
    return out


def _original_headers(blob: BlobSource) -> bytes:
    """The stored message's header section without our ``Return-Path:`` (for a DSN)."""
    if blob.data is not None:
        head = blob.data[:DSN_HEADER_LIMIT]
    elif blob.path is not None:
        with open(blob.path, "rb") as fh:
            head = fh.read(DSN_HEADER_LIMIT)
    else:  # pragma: no cover - a BlobSource always has one or the other
        head = b""
    head = head[: header_section_end(head)]
    if head[:12].lower() == b"return-path:":
        head = head.split(b"\n", 1)[1] if b"\n" in head else b""
    return head


def _handler(policy: Policy) -> Handler:
    async def handle(
        app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnectionInfo
    ) -> None:
        lim = app.config.limits
        group = policy.connection_group
        stream = Stream(
            reader,
            writer,
            write_timeout=lim.write_timeout,
            implicit_tls=info.implicit_tls,
        )
        total = app.connection_count(group)
        per_ip = app.enter(group, info.peer_host)
        try:
            if total >= lim.smtp_connections or per_ip > lim.smtp_connections_per_ip:
                event(
                    log,
                    "smtp.connection_limit",
                    client=info.peer_host,
                    total=total,
                    per_ip=per_ip,
                    mode=policy.key,
                )
                await stream.write(replies.encode(CONNECTION_LIMIT))
                await stream.close()
                return
            await SmtpSession(app, stream, info, policy).run()
        finally:
            app.leave(group, info.peer_host)

    return handle


handle_smtp = _handler(MX)
handle_submission = _handler(SUBMISSION)
handle_submissions = _handler(SUBMISSIONS)

register(ProtocolSpec("smtp", implicit_tls=False, handler=handle_smtp, label=MX.label))
register(
    ProtocolSpec(
        "submission", implicit_tls=False, handler=handle_submission, label=SUBMISSION.label
    )
)
register(
    ProtocolSpec(
        "submissions", implicit_tls=True, handler=handle_submissions, label=SUBMISSIONS.label
    )
)
