"""Mail authentication in the running server: what the SMTP edge calls, and when.

Incoming (MX port, unauthenticated clients outside ``[auth_checks] skip_networks``):

1. at ``MAIL FROM``, :meth:`MailAuth.start` begins SPF for the MAIL FROM and HELO identities
   in the background (RFC 7208 §2.3, §2.4);
2. as DATA streams in, :meth:`InboundCheck.feed` watches the header section; once it is
   complete the DKIM key records and the DMARC record are looked up in the background, so the
   answers are usually there when the final dot arrives;
3. at the end of DATA, :func:`finish_message` verifies every DKIM signature (in a worker thread
   for big messages), evaluates DMARC, and returns the message to store with one
   ``Authentication-Results:`` field added below our trace fields, or the ``550 5.7.1``
   refusal when DMARC says ``p=reject`` and ``[auth_checks] dmarc_enforce`` is on, or the Junk
   folder for ``p=quarantine``.

All lookups of one transaction go through one memo (a lookup asked twice, say by the warm-up
and by the evaluation, is one DNS question) and are bounded by ``[auth_checks] timeout``: past
it the unanswered parts are ``temperror``, never a pass.

Outgoing: submitted messages (and messages we forward to outside addresses) are DKIM-signed
**once, before the blob is stored**, so the queued copy is the signed one and every delivery
attempt sends the same bytes. Signing uses the active keys of the ``From:`` domain (else of
the envelope sender's domain; for forwarding, the forwarding domain). The stored blob keeps its
``Return-Path:`` (stripped by the queue worker) and our ``Received:``; the signature goes just
below them and signs neither.

**7-bit before signing.** A next hop without 8BITMIME gets an 8-bit message converted to 7-bit
MIME by the queue worker (RFC 6152 §3, :mod:`letterbird.delivery.mime7bit`); that changes the
body and ``Content-Transfer-Encoding:``, so a signature made over the 8-bit form no longer
verifies. RFC 6376 §5.3 gives the fix: "the signer SHOULD convert the message to a suitable
MIME content-transfer encoding such as quoted-printable or base64 … before signing". So a
message with 8-bit body octets is converted by the same :func:`~letterbird.delivery.mime7bit.
downgrade` *before* it is signed and stored: the stored copy is ASCII, the worker never has
anything to convert, and the signature holds on every path. This was chosen over re-signing in
the queue worker after its conversion because (1) the signature stays made once, at the edge
that knows whom the message is from (the worker would have to decide again which
``DKIM-Signature`` fields are "ours" from the stored bytes alone, where a field claiming
``d=`` one of our domains may be a forgery that re-signing would launder), (2) the worker
needs no private keys, on any node, and no key changes between queueing and delivery matter,
(3) every delivery attempt to every hop sends the same signed bytes. The cost: local
recipients and the queue get the quoted-printable/base64 form of an 8-bit body (MIME readers
decode it; the text is the same), and it is a little bigger.

Not converted, and signed as they are: ASCII messages (nothing to do); messages that already
carry a ``DKIM-Signature:`` or ``ARC-Message-Signature:`` (converting would break that
signature on every path, to save ours on the rare 7-bit path, e.g. mail forwarded by an
alias); messages :func:`~letterbird.delivery.mime7bit.downgrade` cannot convert (8-bit header
fields need SMTPUTF8, and a server offering SMTPUTF8 offers 8BITMIME too, RFC 6531 §3.1; the
others are refused by the worker with ``5.6.3`` anyway). For those our signature still breaks
if a 7-bit hop makes the worker convert them; the worker never signs, so it never puts a
signature on a message we did not sign.

Every message passing through the edge (either port) loses any ``Authentication-Results:``
field claiming our hostname (RFC 8601 §5), so the one we write is the only one readers trust.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from letterbird.auth import dkim, dmarc, results, spf
from letterbird.auth.dkim import DkimOutcome
from letterbird.auth.dmarc import DmarcOutcome
from letterbird.auth.keys import KeyStore, key_dir
from letterbird.auth.lookup import DnsLookup, DnsTempError, ResolverLookup
from letterbird.auth.message import Field, HeaderSection, rebuild
from letterbird.auth.spf import SpfOutcome
from letterbird.config import Config
from letterbird.delivery.mime7bit import DowngradeImpossible, downgrade
from letterbird.logs import event
from letterbird.mime import parse_message
from letterbird.mime.headers import header_section_end
from letterbird.proto.smtp.replies import Reply
from letterbird.storage.interface import BlobSource

if TYPE_CHECKING:
    from letterbird.server.app import App

log = logging.getLogger("letterbird.auth")

__all__ = [
    "DMARC_REJECTED",
    "SERVICE_KEY",
    "AuthVerdict",
    "Finished",
    "InboundCheck",
    "MailAuth",
    "SignRequest",
    "finish_message",
    "seven_bit",
]

#: RFC 7489 §10.3 / RFC 7372 §3.2: the refusal for a DMARC p=reject failure.
DMARC_REJECTED = Reply(550, "5.7.1", "Rejected by the sender domain's DMARC policy")
#: ``app.services`` key of the per-process :class:`MailAuth`.
SERVICE_KEY = "mail_auth"
#: Bytes of the header section watched while DATA streams in (enough for any real header).
WATCH_LIMIT = 256 * 1024
#: Where a (possibly forged) Authentication-Results field starts.
_AR_FIELD_RE = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE | re.MULTILINE)
#: Messages larger than this are rewritten and re-parsed in a worker thread.
THREAD_THRESHOLD = 256 * 1024
#: Read from a spooled file to look at the header section only.
HEAD_READ = 256 * 1024

_T = TypeVar("_T")


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """Everything the checks found about one incoming message (exposed to later features:
    filters read it from the session, readers from our ``Authentication-Results`` field)."""

    spf: SpfOutcome | None = None
    helo: SpfOutcome | None = None
    dkim: tuple[DkimOutcome, ...] = ()
    dmarc: DmarcOutcome | None = None

    @property
    def verified_sender(self) -> str | None:
        """The author domain when DMARC passed, else None."""
        if self.dmarc is not None and self.dmarc.result is dmarc.DmarcResult.PASS:
            return self.dmarc.header_from
        return None

    def method_results(self) -> list[results.MethodResult]:
        out: list[results.MethodResult] = []
        if not self.dkim:
            out.append(results.MethodResult("dkim", "none", comment="no signature"))
        for d in self.dkim:
            out.append(
                results.MethodResult(
                    "dkim",
                    d.result.value,
                    (
                        ("header.d", d.domain),
                        ("header.i", d.identity),
                        ("header.s", d.selector),
                        ("header.a", d.algorithm),
                        ("header.b", d.header_b),
                    ),
                    comment=d.reason,
                )
            )
        if self.spf is not None:
            out.append(
                results.MethodResult(
                    "spf",
                    self.spf.result.value,
                    (("smtp.mailfrom", self.spf.sender),),
                    comment=self.spf.reason,
                )
            )
        if self.helo is not None:
            out.append(
                results.MethodResult(
                    "spf",
                    self.helo.result.value,
                    (("smtp.helo", self.helo.domain),),
                    comment=self.helo.reason,
                )
            )
        if self.dmarc is not None:
            dm = self.dmarc
            comment = f"p={dm.policy.value} dis={dm.disposition.value}"
            if dm.result not in (dmarc.DmarcResult.PASS, dmarc.DmarcResult.FAIL):
                comment = dm.reason
            out.append(
                results.MethodResult(
                    "dmarc", dm.result.value, (("header.from", dm.header_from),), comment=comment
                )
            )
        return out


# -- one transaction's lookups ----------------------------------------------------------------


class _Memo:
    """A :class:`DnsLookup` that asks each question once per transaction (answers, errors and
    questions still in flight are shared)."""

    def __init__(self, lookup: DnsLookup) -> None:
        self.lookup = lookup
        self.tasks: dict[tuple[str, str], asyncio.Task[Any]] = {}

    def _ask(self, kind: str, name: str, fn: Callable[[str], Awaitable[_T]]) -> asyncio.Task[_T]:
        key = (kind, name.lower())
        task = self.tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(fn(name))
            task.add_done_callback(_retrieve)
            self.tasks[key] = task
        return task

    async def txt(self, name: str) -> list[bytes]:
        return await asyncio.shield(self._ask("txt", name, self.lookup.txt))

    async def a(self, name: str) -> list[str]:
        return await asyncio.shield(self._ask("a", name, self.lookup.a))

    async def aaaa(self, name: str) -> list[str]:
        return await asyncio.shield(self._ask("aaaa", name, self.lookup.aaaa))

    async def mx(self, name: str) -> list[str]:
        return await asyncio.shield(self._ask("mx", name, self.lookup.mx))

    async def ptr(self, ip: str) -> list[str]:
        return await asyncio.shield(self._ask("ptr", ip, self.lookup.ptr))

    def cancel(self) -> None:
        for task in self.tasks.values():
            task.cancel()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a finished task's exception as seen (it is re-raised to whoever awaits it)."""
    if not task.cancelled():
        task.exception()


class InboundCheck:
    """The checks of one incoming transaction (created at MAIL FROM)."""

    def __init__(
        self, auth: MailAuth, client_ip: str, helo: str, mail_from: str, *, now: float
    ) -> None:
        self.auth = auth
        self.client_ip = client_ip
        self.helo = helo
        self.mail_from = mail_from
        self.lookup = _Memo(auth.lookup)
        settings = auth.config.auth_checks
        self._started = now
        timeout = settings.timeout
        self.spf_task: asyncio.Task[spf.SpfOutcome] = asyncio.ensure_future(
            spf.check_mail_from(self.lookup, client_ip, mail_from, helo, timeout=timeout)
        )
        self.helo_task: asyncio.Task[spf.SpfOutcome] | None = None
        if settings.check_helo:
            self.helo_task = asyncio.ensure_future(
                spf.check_helo(self.lookup, client_ip, helo, timeout=timeout)
            )
        self._head = bytearray()
        self._watching = True
        self._warm: asyncio.Task[None] | None = None

    def feed(self, data: bytes) -> None:
        """The message as the client sends it (CRLF line ends); starts the DKIM key and DMARC
        lookups as soon as its header section is complete (or ``WATCH_LIMIT`` bytes have been
        seen). Each byte is searched once, however small the chunks."""
        if not self._watching:
            return
        buf = self._head
        start = max(0, len(buf) - 3)
        buf += data[: WATCH_LIMIT - len(buf)]
        if buf.startswith(b"\r\n"):
            end = 2  # an empty header section
        else:
            found = buf.find(b"\r\n\r\n", start)
            end = found + 4 if found >= 0 else -1
        if end >= 0 or len(buf) >= WATCH_LIMIT:
            head = bytes(buf[:end] if end >= 0 else buf)
            self._watching = False
            self._head = bytearray()
            self._warm = asyncio.ensure_future(self._warm_up(head))

    async def _warm_up(self, head: bytes) -> None:
        verifier = dkim.Verifier(head, max_signatures=self.auth.config.auth_checks.max_signatures)
        asks: list[Awaitable[object]] = [self.lookup.txt(n) for n in verifier.key_names()]
        domains = dmarc.author_domains(_from_values(head, verifier.section))
        if len(domains) == 1:
            asks.append(dmarc.discover(self.lookup, domains[0]))
        await asyncio.gather(*asks, return_exceptions=True)

    def cancel(self) -> None:
        """The transaction ended without a message: stop the lookups."""
        self.spf_task.cancel()
        if self.helo_task is not None:
            self.helo_task.cancel()
        if self._warm is not None:
            self._warm.cancel()
        self.lookup.cancel()

    async def evaluate(self, message: bytes) -> AuthVerdict:
        """All results for the complete message (our trace fields may be on top)."""
        settings = self.auth.config.auth_checks
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.timeout
        verifier = dkim.Verifier(message, max_signatures=settings.max_signatures)
        names = verifier.key_names()
        keys = await _gather_until(
            {n: asyncio.ensure_future(self._key(n)) for n in names}, deadline
        )
        if len(message) > THREAD_THRESHOLD:
            dkim_results = await asyncio.to_thread(verifier.verify, keys)
        else:
            dkim_results = verifier.verify(keys)
        mail_spf = await _result_by(self.spf_task, deadline)
        if mail_spf is None:
            mail_spf = spf.SpfOutcome(
                spf.SpfResult.TEMPERROR, "mailfrom", "", self.mail_from, "SPF timed out"
            )
        helo_spf = None
        if self.helo_task is not None:
            helo_spf = await _result_by(self.helo_task, deadline)
            if helo_spf is None:
                helo_spf = spf.SpfOutcome(
                    spf.SpfResult.TEMPERROR, "helo", self.helo, "", "SPF timed out"
                )
        from_values = _from_values(message, verifier.section)
        dmarc_task = asyncio.ensure_future(
            dmarc.evaluate(
                self.lookup, from_values, dkim_results, mail_spf, sample=self.auth.sample
            )
        )
        dmarc_result = await _result_by(dmarc_task, deadline)
        if dmarc_result is None:
            domains = dmarc.author_domains(from_values)
            dmarc_result = dmarc.DmarcOutcome(
                dmarc.DmarcResult.TEMPERROR,
                domains[0] if domains else "",
                reason="DMARC lookup timed out",
            )
        return AuthVerdict(mail_spf, helo_spf, tuple(dkim_results), dmarc_result)

    async def _key(self, name: str) -> dkim.KeyAnswer:
        answers = await dkim.fetch_keys(self.lookup, [name])
        return answers[name]


async def _gather_until(tasks: dict[str, asyncio.Task[_T]], deadline: float) -> dict[str, _T]:
    """The results of the tasks finished by ``deadline``; the others are cancelled."""
    if not tasks:
        return {}
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    await asyncio.wait(tasks.values(), timeout=timeout)
    out: dict[str, _T] = {}
    for name, task in tasks.items():
        if task.done() and not task.cancelled() and task.exception() is None:
            out[name] = task.result()
        else:
            task.cancel()
    return out


async def _result_by(task: asyncio.Task[_T], deadline: float) -> _T | None:
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        task.cancel()
        return None
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _from_values(data: bytes, section: HeaderSection) -> list[str]:
    return [f.value(data).decode("utf-8", "replace") for f in section.named(b"from")]


# -- the per-process service ------------------------------------------------------------------


class MailAuth:
    """Settings, DNS and DKIM keys shared by every SMTP session of the process."""

    def __init__(
        self,
        config: Config,
        lookup: DnsLookup | None,
        *,
        keys: KeyStore | None = None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.lookup: DnsLookup = lookup if lookup is not None else _NoDns()
        self.has_dns = lookup is not None
        self.keys = keys if keys is not None else KeyStore(key_dir(config))
        self.sample = sample
        self._skip = [
            ipaddress.ip_network(n, strict=False) for n in config.auth_checks.skip_networks
        ]

    @classmethod
    def for_app(cls, app: App) -> MailAuth:
        """The app's instance, created on first use."""
        svc = app.services.get(SERVICE_KEY)
        if not isinstance(svc, MailAuth):
            resolver = app.resolver
            svc = cls(app.config, ResolverLookup(resolver) if resolver is not None else None)
            app.services[SERVICE_KEY] = svc
        return svc

    def checks_client(self, client_ip: str) -> bool:
        """Whether mail from this client is checked."""
        if not self.config.auth_checks.enabled or not self.has_dns:
            return False
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return not any(addr in net for net in self._skip)

    def start(
        self, client_ip: str, helo: str, mail_from: str, *, now: float | None = None
    ) -> InboundCheck | None:
        """Begin the checks of a transaction at MAIL FROM (None: this client is not checked).
        Must be called from the event loop."""
        if not self.checks_client(client_ip):
            return None
        return InboundCheck(
            self, client_ip, helo, mail_from, now=time.time() if now is None else now
        )

    def signing_keys(self, domains: Sequence[str]) -> list[dkim.SigningKey]:
        """The active keys of the first of ``domains`` that has any."""
        if not self.config.dkim.sign:
            return []
        for domain in domains:
            try:
                keys = self.keys.signing_keys(domain)
            except ValueError as exc:
                event(log, "dkim.key_error", level=logging.ERROR, domain=domain, error=exc)
                continue
            if keys:
                return keys
        return []


class _NoDns:
    """No resolver: every lookup is a temporary failure (checks are off anyway)."""

    async def txt(self, name: str) -> list[bytes]:
        raise _no_dns()

    async def a(self, name: str) -> list[str]:
        raise _no_dns()

    async def aaaa(self, name: str) -> list[str]:
        raise _no_dns()

    async def mx(self, name: str) -> list[str]:
        raise _no_dns()

    async def ptr(self, ip: str) -> list[str]:
        raise _no_dns()


def _no_dns() -> Exception:
    return DnsTempError("no resolver")


# -- end of DATA ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignRequest:
    """Whom to sign for. ``submission``: a message from an authenticated user (sign for its
    ``From:`` domain, else the envelope sender's); ``forward_domain``: the domain of an alias
    that forwards the message outside (sign for it)."""

    submission: bool = False
    sender: str = ""
    forward_domain: str | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """What :func:`finish_message` decided."""

    blob: BlobSource
    refusal: Reply | None = None
    mailbox: str = "INBOX"  # "Junk" for a DMARC quarantine
    verdict: AuthVerdict | None = None
    signed_by: tuple[str, ...] = field(default_factory=tuple)  # "selector._domainkey.domain"


async def finish_message(
    app: App,
    blob: BlobSource,
    check: InboundCheck | None,
    sign: SignRequest | None = None,
    *,
    queue_id: str = "",
) -> Finished:
    """At the end of DATA, before the message is stored: run the incoming checks (``check``),
    sign (``sign``), remove forged ``Authentication-Results``, and give the blob to store.

    Never raises for what a message or DNS can do; an unexpected error in the checks is
    logged and the message is stored unchanged (apart from forgery removal)."""
    auth = MailAuth.for_app(app)
    hostname = app.config.hostname
    head = await _head(blob)
    limit = min(len(head), HEAD_READ)
    end = header_section_end(head, 0, limit)
    # A header section longer than HEAD_READ is read whole, and rewritten if need be.
    complete = end < limit or blob.size <= limit
    maybe_forged = _AR_FIELD_RE.search(head, 0, end) is not None
    keys: list[dkim.SigningKey] = []
    if sign is not None and app.config.dkim.sign:
        keys = auth.signing_keys(_signing_domains(head, HeaderSection.parse(head), sign))
    if check is None and not keys and not maybe_forged and complete:
        return Finished(blob)
    data = await _read(blob)
    verdict: AuthVerdict | None = None
    insert = b""
    mailbox = "INBOX"
    if check is not None:
        try:
            verdict = await check.evaluate(data)
        except Exception as exc:  # a bug must not lose the message: log it, store it
            log.exception("mail authentication failed for %s: %s", queue_id, exc)
            verdict = None
        finally:
            check.cancel()
        if verdict is not None:
            insert = results.format_header(hostname, verdict.method_results())
            _log_verdict(verdict, queue_id, check.client_ip)
            dm = verdict.dmarc
            if dm is not None and app.config.auth_checks.dmarc_enforce:
                if dm.reject:
                    event(
                        log,
                        "smtp.dmarc_reject",
                        id=queue_id,
                        client=check.client_ip,
                        header_from=dm.header_from,
                    )
                    return Finished(blob, DMARC_REJECTED, verdict=verdict)
                if dm.quarantine:
                    mailbox = "Junk"
    signed_by: tuple[str, ...] = ()
    rewritten = await _maybe_thread(len(data), _rewrite, data, insert, keys, hostname, app.clock())
    if rewritten is None:
        return Finished(blob, None, mailbox, verdict)
    new_data, signed_by = rewritten
    if keys and not signed_by:
        event(log, "dkim.sign_failed", level=logging.ERROR, id=queue_id)
    elif signed_by:
        event(log, "dkim.signed", id=queue_id, selectors=",".join(signed_by))
    new_blob = await _maybe_thread(len(new_data), _blob_of, new_data)
    return Finished(new_blob, None, mailbox, verdict, signed_by)


def _rewrite(
    data: bytes,
    insert: bytes,
    keys: list[dkim.SigningKey],
    hostname: str,
    now: float,
) -> tuple[bytes, tuple[str, ...]] | None:
    """The message with forgeries removed, ``insert`` added and DKIM signatures on top, or
    None when nothing changes."""
    section = HeaderSection.parse(data)

    def forged(f: Field) -> bool:
        return f.lname == b"authentication-results" and results.claims(f.value(data), hostname)

    at = section.trace_end()
    data2 = rebuild(data, section, insert, at=at, drop=forged)
    signed_by: tuple[str, ...] = ()
    if keys and not data2.isascii() and not _signed_already(section):
        data2 = seven_bit(data2, HeaderSection.parse(data2).trace_end())
    if keys:
        try:
            signatures = dkim.sign(data2, keys, now=now)
        except dkim.DkimError as exc:
            event(log, "dkim.sign_error", level=logging.ERROR, error=exc)
        else:
            section2 = HeaderSection.parse(data2)
            data2 = rebuild(data2, section2, signatures, at=section2.trace_end())
            signed_by = tuple(f"{k.selector}._domainkey.{k.domain}" for k in keys)
    if data2 is data:
        return None
    return data2, signed_by


def seven_bit(data: bytes, keep: int = 0) -> bytes:
    """``data`` in 7-bit MIME for signing (RFC 6376 §5.3), its first ``keep`` bytes (the
    trace fields the edge wrote, whole header fields) left untouched and above a
    ``MIME-Version:`` the conversion may add; ``data`` itself when it is ASCII or cannot be
    converted (see the module docstring)."""
    if data.isascii():
        return data
    head = data[:keep]
    if not head.isascii():
        return data  # an 8-bit trace field (SMTPUTF8): can never travel a 7-bit path
    try:
        converted = downgrade(data[keep:])
    except DowngradeImpossible:
        return data
    return head + converted


def _signed_already(section: HeaderSection) -> bool:
    """Whether the message carries a signature over its body that converting would break."""
    return any(f.lname in _BODY_SIGNATURES for f in section.fields)


_BODY_SIGNATURES = (b"dkim-signature", b"arc-message-signature")


def _blob_of(data: bytes) -> BlobSource:
    return BlobSource(
        hashlib.sha256(data).hexdigest(), len(data), parse_message(data).to_json(), data=data
    )


async def _maybe_thread(size: int, fn: Callable[..., _T], *args: object) -> _T:
    if size > THREAD_THRESHOLD:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def _head(blob: BlobSource) -> bytes:
    """The message (in memory: not copied) or its first HEAD_READ bytes (spooled to a file)."""
    if blob.data is not None:
        return blob.data
    assert blob.path is not None
    path = blob.path

    def read() -> bytes:
        with open(path, "rb") as fh:
            return fh.read(HEAD_READ)

    return await asyncio.to_thread(read)


async def _read(blob: BlobSource) -> bytes:
    if blob.data is not None:
        return blob.data
    assert blob.path is not None
    path = blob.path

    def read() -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    return await asyncio.to_thread(read)


def _signing_domains(head: bytes, section: HeaderSection, sign: SignRequest) -> list[str]:
    if not sign.submission:
        return [sign.forward_domain] if sign.forward_domain else []
    domains = dmarc.author_domains(_from_values(head, section))
    sender_domain = sign.sender.rpartition("@")[2]
    if sender_domain and sender_domain not in domains:
        domains.append(sender_domain)
    return domains


def _log_verdict(verdict: AuthVerdict, queue_id: str, client: str) -> None:
    event(
        log,
        "smtp.auth_results",
        id=queue_id,
        client=client,
        spf=verdict.spf.result.value if verdict.spf else None,
        helo=verdict.helo.result.value if verdict.helo else None,
        dkim=",".join(f"{d.result.value}:{d.domain}" for d in verdict.dkim) or "none",
        dmarc=verdict.dmarc.result.value if verdict.dmarc else None,
        policy=verdict.dmarc.disposition.value if verdict.dmarc else None,
    )


def replace_mailbox(targets: Sequence[Any], mailbox: str) -> list[Any]:
    """``AppendTarget``s redirected to ``mailbox`` (unchanged for INBOX)."""
    if mailbox == "INBOX":
        return list(targets)
    return [dataclasses.replace(t, mailbox=mailbox) for t in targets]
