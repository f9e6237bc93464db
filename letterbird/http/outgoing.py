"""Sending and saving what the compose form wrote.

The message is built with the stdlib ``email`` package (``EmailMessage``, SMTP policy with
7-bit transfer encodings, so no relay ever needs to downgrade it) from trusted input: the form's
fields, validated here. Sending goes through the same submission rules as port 587
(:mod:`letterbird.delivery.submission`): the ``From:`` must be one of the account's identities,
``Bcc:`` never leaves, ``Date:``/``Message-ID:`` are present, and the per-account sending limits
apply. Then one storage transaction commits the message for local recipients, the copy in Sent
(``\\Seen``) and the queue rows for other domains (DESIGN.md §5, §6), and the queue is woken.

Before it is stored, the message is DKIM-signed exactly as port 587 signs a submission: by
:func:`letterbird.auth.service.finish_message` with a submission :class:`~letterbird.auth.
service.SignRequest`, for the active keys of the ``From:`` domain (else the sender's); no
keys, no signature. The signed bytes are the one blob stored for local recipients, for the
queue and for the copy in Sent, so Sent holds exactly what was sent.

A draft is the same message with its ``Bcc:`` kept, stored in the Drafts folder with
``\\Draft \\Seen``.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import hashlib
import mimetypes
import re
from dataclasses import dataclass, field
from email.message import EmailMessage

from letterbird.auth.service import SignRequest, finish_message
from letterbird.delivery.queue.service import new_queue_id
from letterbird.delivery.submission import BaseSendingLimits, HeaderFixer, Identities, SendingLimits
from letterbird.directory.addresses import InvalidAddress, parse_address
from letterbird.mime import parse_message
from letterbird.mime.address import MISSING_DOMAIN, MISSING_MAILBOX, parse_addresses
from letterbird.server.app import App
from letterbird.storage.interface import (
    Account,
    AppendTarget,
    BlobSource,
    Mailbox,
    OutgoingMessage,
    QueueRecipient,
)

__all__ = [
    "Attachment",
    "ComposeError",
    "Draft",
    "build_message",
    "parse_recipients",
    "send",
    "store_draft",
]

# The SMTP edge keeps its SendingLimits under this ``app.services`` key; Send shares it so the
# web and port 587 count against the same limits.
LIMITS_SERVICE = "sending_limits"
PARSE_IN_THREAD = 256 * 1024
_POLICY = email.policy.SMTP.clone(cte_type="7bit", max_line_length=78)
_MIME_TOKEN = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$"
)
_ONE_LINE = re.compile(r"[\r\n\x00]+")


class ComposeError(Exception):
    """Something the user must fix; ``field`` names the form field (or "" for the form)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Draft:
    """The compose form's content, validated."""

    sender: str
    to: list[tuple[str, str]] = field(default_factory=list)
    cc: list[tuple[str, str]] = field(default_factory=list)
    bcc: list[tuple[str, str]] = field(default_factory=list)
    subject: str = ""
    body: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()

    @property
    def recipients(self) -> list[str]:
        seen: dict[str, str] = {}
        for _, addr in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(addr.casefold(), addr)
        return list(seen.values())


def one_line(text: str, limit: int = 998) -> str:
    return _ONE_LINE.sub(" ", text).strip()[:limit]


def parse_recipients(text: str, field_name: str, limit: int) -> list[tuple[str, str]]:
    """``(display name, address)`` for a comma-separated address list; raises ComposeError."""
    text = one_line(text, 64 * 1024)
    if not text:
        return []
    out: list[tuple[str, str]] = []
    for a in parse_addresses(text, limit + 1):
        if a.host is None:  # group syntax markers
            continue
        if a.mailbox in (None, MISSING_MAILBOX) or a.host == MISSING_DOMAIN:
            raise ComposeError(f"“{text}” is not a valid list of addresses.", field_name)
        spec = f"{a.mailbox}@{a.host}"
        try:
            checked = parse_address(spec)
        except InvalidAddress as exc:
            raise ComposeError(f"{spec}: {exc}", field_name) from None
        if not re.fullmatch(r"[^\s@<>()\[\],;:\\\"]+", checked.local) or "." in (
            checked.local[0],
            checked.local[-1],
        ):
            raise ComposeError(f"{spec} is not a valid address.", field_name)
        name = one_line(a.name or "", 200)
        if name.startswith('"') and name.endswith('"') and len(name) >= 2:
            name = name[1:-1]
        out.append((name, f"{checked.local}@{checked.domain}"))
    if len(out) > limit:
        raise ComposeError(f"Too many recipients (at most {limit}).", field_name)
    return out


def guess_type(filename: str, declared: str | None) -> str:
    if declared and _MIME_TOKEN.match(declared) and declared.lower() != "application/octet-stream":
        return declared.lower()
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


def build_message(
    draft: Draft, *, hostname: str, now: float, keep_bcc: bool, message_id: str | None = None
) -> bytes:
    """The RFC 5322 message (CRLF line ends) for ``draft``."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = draft.sender
    if draft.to:
        msg["To"] = ", ".join(email.utils.formataddr(p) for p in draft.to)
    if draft.cc:
        msg["Cc"] = ", ".join(email.utils.formataddr(p) for p in draft.cc)
    if draft.bcc and keep_bcc:
        msg["Bcc"] = ", ".join(email.utils.formataddr(p) for p in draft.bcc)
    msg["Subject"] = one_line(draft.subject)
    msg["Date"] = email.utils.formatdate(now, localtime=True)
    domain = draft.sender.rpartition("@")[2] or hostname
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain=domain)
    if draft.in_reply_to:
        msg["In-Reply-To"] = f"<{draft.in_reply_to}>"
    if draft.references:
        msg["References"] = " ".join(f"<{r}>" for r in draft.references)
    msg["User-Agent"] = "Letterbird webmail"
    body = draft.body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    msg.set_content(body, subtype="plain", charset="utf-8")
    for att in draft.attachments:
        maintype, _, subtype = att.content_type.partition("/")
        if maintype in ("multipart", "message"):  # carried as opaque bytes
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.filename)
    data = msg.as_bytes(policy=_POLICY)
    # CRLF everywhere (DESIGN.md §4): the SMTP policy writes CRLF, bodies may still hold LF.
    return re.sub(rb"\r?\n", b"\r\n", data)


async def _blob(data: bytes) -> BlobSource:
    if len(data) > PARSE_IN_THREAD:
        info = await asyncio.to_thread(parse_message, data)
    else:
        info = parse_message(data)
    return BlobSource(hashlib.sha256(data).hexdigest(), len(data), info.to_json(), data=data)


async def _signed_blob(app: App, data: bytes, sender: str, queue_id: str) -> BlobSource:
    """``data`` as submission stores it: DKIM-signed by the same step as port 587 (no keys for
    the domain: unchanged). The structure is parsed once, of the bytes stored."""
    unsigned = BlobSource(hashlib.sha256(data).hexdigest(), len(data), b"", data=data)
    done = await finish_message(
        app, unsigned, None, SignRequest(submission=True, sender=sender), queue_id=queue_id
    )
    if done.blob is unsigned:  # nothing changed: parse it now
        return await _blob(data)
    return done.blob


def sending_limits(app: App) -> BaseSendingLimits:
    limits = app.services.get(LIMITS_SERVICE)
    if not isinstance(limits, BaseSendingLimits):
        settings = app.config.submission
        caps = (settings.max_messages_per_hour, settings.max_recipients_per_hour)
        shared = app.shared  # with workers: counted across them
        limits = SendingLimits(*caps) if shared is None else shared.sending_limits(*caps)
        app.services[LIMITS_SERVICE] = limits
    return limits


async def identities(app: App, account: Account) -> list[str]:
    return await app.directory.addresses_of(account)


async def send(
    app: App, account: Account, draft: Draft, sent: Mailbox | None, *, max_size: int
) -> tuple[str, list[tuple[int, int]]]:
    """Submit ``draft``; returns (queue id, the new local entries). Raises ComposeError."""
    now = app.clock()
    recipients = draft.recipients
    if not recipients:
        raise ComposeError("Add at least one recipient.", "to")
    ids = Identities(await identities(app, account), app.config.recipient_delimiter)
    if draft.sender not in ids:
        raise ComposeError("You cannot send from that address.", "from")
    limits = sending_limits(app)
    if not limits.message_allowed(account.id, now) or not limits.recipient_allowed(
        account.id, len(recipients) - 1, now
    ):
        raise ComposeError("Sending limit reached for this hour. Try again later.")
    data = build_message(draft, hostname=app.config.hostname, now=now, keep_bcc=False)
    fixer = HeaderFixer(
        identities=ids,
        sender=draft.sender,
        hostname=app.config.hostname,
        now=now,
        max_header_size=app.config.submission.max_header_size,
    )
    data = fixer.feed(data) + fixer.finish()
    if fixer.too_large:
        raise ComposeError("The message header is too large.")
    if not fixer.from_ok:  # pragma: no cover - the sender was checked above
        raise ComposeError("You cannot send from that address.", "from")
    if len(data) > max_size:
        raise ComposeError(
            f"The message is too large ({len(data) // 1024} KB; the limit is "
            f"{max_size // 1024} KB). Remove some attachments."
        )
    targets: list[AppendTarget] = []
    remote: dict[str, QueueRecipient] = {}
    local_accounts: set[int] = set()
    for rcpt in recipients:
        domain = rcpt.rpartition("@")[2]
        if await app.directory.is_local_domain(domain):
            resolution = await app.directory.resolve(rcpt)
            if resolution is None or not (resolution.accounts or resolution.forward):
                raise ComposeError(f"There is no mailbox {rcpt} here.", "to")
            for acc in resolution.accounts:
                if acc.id not in local_accounts:
                    local_accounts.add(acc.id)
                    targets.append(AppendTarget(acc.id))
            for fwd in resolution.forward:
                remote.setdefault(fwd.casefold(), QueueRecipient(fwd))
        else:
            remote.setdefault(rcpt.casefold(), QueueRecipient(rcpt))
    if sent is not None:
        targets.append(
            AppendTarget(account.id, sent.name, frozenset({"\\Seen"}), mailbox_id=sent.id)
        )
    else:
        targets.append(AppendTarget(account.id, "Sent", frozenset({"\\Seen"})))
    queue_id = new_queue_id()
    blob = await _signed_blob(app, data, draft.sender, queue_id)
    outgoing = None
    if remote:
        outgoing = OutgoingMessage(
            sender=draft.sender, recipients=tuple(remote.values()), account_id=account.id
        )
    entries = await app.storage.deliver(blob, targets, outgoing, queue_id=queue_id)
    limits.record(account.id, len(recipients), now)
    if outgoing is not None and app.queue is not None:
        app.queue.wake()
    return queue_id, entries


async def store_draft(
    app: App, account: Account, draft: Draft, drafts: Mailbox | None, *, max_size: int
) -> tuple[int, int]:
    """Save ``draft`` in the Drafts folder; returns its (mailbox id, uid)."""
    ids = Identities(await identities(app, account), app.config.recipient_delimiter)
    if draft.sender not in ids:
        raise ComposeError("You cannot write from that address.", "from")
    data = build_message(draft, hostname=app.config.hostname, now=app.clock(), keep_bcc=True)
    if len(data) > max_size:
        raise ComposeError(f"The draft is too large (the limit is {max_size // 1024} KB).")
    flags = frozenset({"\\Draft", "\\Seen"})
    if drafts is not None:
        target = AppendTarget(account.id, drafts.name, flags, mailbox_id=drafts.id)
    else:
        target = AppendTarget(account.id, "Drafts", flags)
    entries = await app.storage.append(await _blob(data), [target])
    return entries[0]
