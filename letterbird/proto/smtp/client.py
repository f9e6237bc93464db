"""The sans-IO SMTP client core: the sending side of SMTP, used by the outgoing queue.

Implements the client side of SMTP (RFC 5321) with the extensions a relaying MTA uses:
PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), STARTTLS
(RFC 3207), DSN parameters (RFC 3461, with the RFC 6533 ``utf-8`` ORCPT address type) and the
parsing of enhanced status codes (RFC 2034, RFC 3463). Written by hand because ``smtplib`` does
blocking I/O and ``aiosmtplib`` is bound to its own asyncio transport; neither is sans-IO, and
the queue needs a pipelined session that yields every recipient's reply code, enhanced code and
text (for DSNs) as values, plus the "lost after the final dot" case told apart.

The design is h11's. The asyncio edge opens the connection, then loops::

    client = SmtpClient(helo_name="mx.alice.test", tls_policy="opportunistic")
    while True:
        writer.write(client.data_to_send())
        event = client.next_event()
        if event is NEED_DATA:            # wait for the server (timeout: client.waiting_for)
            client.receive_data(await reader.read(65536))   # b"" at EOF
        elif isinstance(event, NeedTls):  # handshake, then
            client.tls_established()      # (or client.tls_failed(reason))
        elif isinstance(event, ReadyForMessage):
            client.send_message(envelope) if more else client.quit()
        elif isinstance(event, SendBody):
            for chunk in body:
                writer.write(client.encode_data(chunk))
            client.end_data()
        elif isinstance(event, MessageResult):
            record(event)                 # per-recipient results
        elif isinstance(event, Closed):
            break                         # event.failure is None after a clean QUIT

After :class:`Closed`, :meth:`SmtpClient.next_event` returns :data:`CLOSED` for ever. A socket
error or a timeout is reported with :meth:`SmtpClient.connection_lost` (``receive_data(b"")``
means the same). Misuse by the edge (``send_message`` when no :class:`ReadyForMessage` is
pending, ``next_event`` before answering :class:`NeedTls` or finishing :class:`SendBody`)
raises :class:`SmtpClientUsageError`; server input never raises.

Policies chosen here (documented once):

* Reply lines may end in CRLF or a bare LF. A line longer than ``max_line_length`` (2048 octets
  by default, four times RFC 5321 §4.5.3.1.5's 512), a line that is not ``Reply-code [SP / "-"
  text]``, a continuation line with another code, more than ``max_reply_lines`` lines in one
  reply or a reply nobody asked for give :class:`ProtocolFailure` (temporary ``4.5.0``): the
  connection is dropped without QUIT.
* ``421`` in answer to anything (or unsolicited) is :class:`ServerClosed`; unresolved recipients
  get that reply as a temporary failure.
* EHLO answered ``500``/``502`` falls back to HELO (RFC 5321 §3.2); any other error is
  :class:`ServerRefused` (after QUIT), as is an error greeting.
* STARTTLS: with ``opportunistic`` a refused STARTTLS (or none offered) continues in clear; with
  ``require`` both give :class:`TlsFailure` with the *temporary* ``4.7.4`` (the queue retries
  until the message expires, as Postfix does), a failed handshake gives ``4.7.5``. After the
  handshake every byte received before it is discarded and EHLO is sent again (RFC 3207 §4.2,
  CVE-2011-0411).
* Local refusals, no MAIL sent: message larger than the advertised SIZE → ``552 5.3.4`` for all
  recipients; 8-bit message without 8BITMIME → ``554 5.6.3`` for all with
  ``MessageResult.needs_7bit`` (the queue may downgrade and resend on the same connection);
  non-ASCII envelope address without SMTPUTF8 → ``553 5.6.7`` for the recipients concerned (all
  when it is the sender or ``Envelope.smtputf8`` says the content needs it). A non-ASCII domain
  with an ASCII local part is sent as its IDNA A-label instead.
* A connection lost after :meth:`SmtpClient.end_data` queued the final dot and before its reply
  sets ``MessageResult.lost_after_dot``: the accepted recipients are temporary failures, but the
  message may have been delivered (RFC 5321 §6.1 permits the retry; the edge must log it).
* RSET is sent only before a new MAIL when the previous transaction was left open (MAIL
  accepted but no final-dot reply).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, cast

import idna

from .replies import Reply

__all__ = [
    "CLOSED",
    "CONNECTION_LOST",
    "EIGHTBIT_NOT_SUPPORTED",
    "LOST_AFTER_DOT",
    "NEED_DATA",
    "PROTOCOL_ERROR",
    "SIZE_EXCEEDED",
    "SMTPUTF8_NOT_SUPPORTED",
    "TLS_HANDSHAKE_FAILED",
    "TLS_NOT_OFFERED",
    "Capabilities",
    "ClientEvent",
    "ClientEventOrSentinel",
    "ClientSentinel",
    "Closed",
    "ConnectionLost",
    "DeliveryStatus",
    "DotStuffer",
    "Envelope",
    "MessageResult",
    "NeedTls",
    "ProtocolFailure",
    "ReadyForMessage",
    "Recipient",
    "RecipientResult",
    "SendBody",
    "ServerClosed",
    "ServerRefused",
    "SessionFailure",
    "SmtpClient",
    "SmtpClientUsageError",
    "TlsFailure",
    "TlsPolicy",
    "Waiting",
    "diagnostic",
    "encode_orcpt",
    "encode_xtext",
    "is_8bit",
    "parse_ehlo",
]

TlsPolicy = Literal["none", "opportunistic", "require"]
_TLS_POLICIES: Final = ("none", "opportunistic", "require")

# --------------------------------------------------------------------------- local replies
#: The message is larger than the server's SIZE (RFC 1870 §6); no MAIL was sent.
SIZE_EXCEEDED: Final = Reply(552, "5.3.4", "Message size exceeds the server's fixed maximum")
#: 8-bit message, no 8BITMIME (RFC 6152 §3: convert or return non-delivery).
EIGHTBIT_NOT_SUPPORTED: Final = Reply(
    554, "5.6.3", "8-bit message but the server does not offer 8BITMIME"
)
#: Non-ASCII address or header, no SMTPUTF8 (RFC 6531 §3.2, X.6.7 from RFC 5248).
SMTPUTF8_NOT_SUPPORTED: Final = Reply(
    553, "5.6.7", "Non-ASCII address or header but the server does not offer SMTPUTF8"
)
#: ``tls_policy="require"`` and the server offered no STARTTLS, or refused it (temporary).
TLS_NOT_OFFERED: Final = Reply(451, "4.7.4", "TLS is required, but was not offered by the server")
TLS_HANDSHAKE_FAILED: Final = Reply(451, "4.7.5", "TLS handshake failed")
CONNECTION_LOST: Final = Reply(451, "4.4.2", "Connection lost")
LOST_AFTER_DOT: Final = Reply(
    451, "4.4.2", "Connection lost after the end of data; the message may have been delivered"
)
PROTOCOL_ERROR: Final = Reply(451, "4.5.0", "SMTP protocol error")

# --------------------------------------------------------------------------- grammar
# RFC 5321 §4.2:
#   Reply-line = *( Reply-code "-" [ textstring ] CRLF )
#                Reply-code [ SP textstring ] CRLF
#   Reply-code = %x32-35 %x30-35 %x30-39
#   textstring = 1*(%d09 / %d32-126) ; HT, SP, Printable US-ASCII
# Tolerated: a bare LF line end; UTF-8 and other octets in the text (shown sanitised).
_REPLY_LINE_RE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?", re.DOTALL)
# RFC 3463 §2: status-code = class "." subject "." detail ; class = "2" / "4" / "5"
#   subject = 1*3digit ; detail = 1*3digit   (RFC 2034 §4: followed by SP and the text)
_ENHANCED_RE = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: +|$)")
# RFC 5321 §4.1.1.1:
#   ehlo-line    = ehlo-keyword *( SP ehlo-param )
#   ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
#   ehlo-param   = 1*(%d33-126)
# (plus the pre-standard "AUTH=PLAIN LOGIN" form, still sent by some servers)
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# RFC 1870 §3: size-param ::= [1*DIGIT]  (0 = no fixed maximum)
_SIZE_RE = re.compile(r"[0-9]{1,20}")
# Characters shown as "?" in reply texts and reasons (everything below SP except HT, and DEL).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Envelope addresses as the queue hands them over (RFC 5321 §4.1.2 Mailbox, RFC 6531
# UTF8-non-ascii allowed): a quoted-string or a run without SP, "<", ">", "@", '"' and
# controls, then "@" and a domain or address literal; or bare "Postmaster" (§4.1.1.3).
_ADDRESS_RE = re.compile(
    r'(?:"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"|[^"\s<>@\x00-\x1f\x7f]+)'
    r"@[^\s<>@\x00-\x1f\x7f]+|[Pp][Oo][Ss][Tt][Mm][Aa][Ss][Tt][Ee][Rr]"
)
# RFC 3461 §4: xtext = *( xchar / hexchar ) ; xchar = "!".."~" except "+" and "="
#   hexchar = "+" 2(%x30-39 / %x41-46)
_NOT_XCHAR_RE = re.compile(r"[^\x21-\x2a\x2c-\x3c\x3e-\x7e]")
# RFC 6533 §3: utf-8-addr-xtext = 1*(QCHAR / EmbeddedUnicodeChar)
#   QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e ; EmbeddedUnicodeChar = %x5C.78 "{" HEXPOINT "}"
_NOT_QCHAR_RE = re.compile(r"[^\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")
# RFC 5322 atom (the ORCPT addr-type, RFC 3461 §4.2)
_ATOM_RE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
# Line ends for normalisation of message data: CRLF, bare CR, bare LF.
_EOL_RE = re.compile(rb"\r\n|\r|\n")

_NOTIFY_VALUES: Final = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
#: RFC 3461 §4.4: ENVID is printable US-ASCII, at most 100 characters.
_MAX_ENVID = 100


def _clean(text: str) -> str:
    return _CONTROL_RE.sub("?", text)


def is_8bit(data: bytes) -> bool:
    """True when ``data`` has an octet above 127 (needs 8BITMIME, RFC 6152)."""
    return not data.isascii()


def encode_xtext(text: str) -> str:
    """RFC 3461 xtext: octets outside ``!``..``~`` and ``+``/``=`` become ``+HH`` (UTF-8)."""
    return _NOT_XCHAR_RE.sub(lambda m: "".join(f"+{b:02X}" for b in m[0].encode()), text)


def _utf8_addr_xtext(text: str) -> str:
    # HEXPOINT: upper-case hex without leading zeros, two digits for the ASCII specials.
    return _NOT_QCHAR_RE.sub(lambda m: f"\\x{{{ord(m[0]):02X}}}", text)


def encode_orcpt(addr_type: str, address: str) -> str:
    """The value of ``ORCPT=``: ``addr-type;xtext`` (RFC 3461 §4.2), or for a non-ASCII address
    ``utf-8;utf-8-addr-xtext`` (RFC 6533 §3)."""
    if address.isascii():
        return f"{addr_type};{encode_xtext(address)}"
    return f"utf-8;{_utf8_addr_xtext(address)}"


def diagnostic(reply: Reply) -> str:
    """``550 5.1.1 text`` on one line: what follows ``smtp;`` in a DSN Diagnostic-Code."""
    head = f"{reply.code} {reply.enhanced}" if reply.enhanced else str(reply.code)
    text = " ".join(line for line in reply.lines if line)
    return f"{head} {text}" if text else head


# --------------------------------------------------------------------------- capabilities
@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server said it supports. ``keywords`` maps upper-cased EHLO keywords to their
    parameters; it is empty after a HELO fallback (``extended`` False)."""

    extended: bool
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The EHLO/HELO reply itself.
    hello: Reply | None = None

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size(self) -> int | None:
        """SIZE limit: None when SIZE is not advertised, 0 when advertised without a limit."""
        params = self.keywords.get("SIZE")
        if params is None:
            return None
        if params and _SIZE_RE.fullmatch(params[0]):
            return int(params[0])
        return 0

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def eight_bit_mime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.keywords

    @property
    def dsn(self) -> bool:
        return "DSN" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def enhanced_status_codes(self) -> bool:
        return "ENHANCEDSTATUSCODES" in self.keywords

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        return frozenset(p.upper() for p in self.keywords.get("AUTH", ()))


def parse_ehlo(reply: Reply) -> Capabilities:
    """The capabilities in an EHLO reply (lines after the first; malformed lines skipped)."""
    keywords: dict[str, tuple[str, ...]] = {}
    for line in reply.lines[1:]:
        words = line.split()
        if not words:
            continue
        head, equals, first = words[0].partition("=")
        params = words[1:]
        if equals and first:
            params = [first, *params]
        if _KEYWORD_RE.fullmatch(head) is None:
            continue
        key = head.upper()
        keywords[key] = keywords.get(key, ()) + tuple(params)
    return Capabilities(extended=True, keywords=keywords, hello=reply)


# --------------------------------------------------------------------------- envelope
def _check_address(address: str, *, allow_empty: bool) -> None:
    if address == "" and allow_empty:
        return
    if _ADDRESS_RE.fullmatch(address) is None:
        raise ValueError(f"not an envelope address: {address!r}")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient: the address and its RFC 3461 parameters.

    ``notify`` is empty (no NOTIFY parameter), ``("NEVER",)`` or a subset of SUCCESS, FAILURE,
    DELAY; ``orcpt`` is ``(addr_type, original address)``, e.g. ``("rfc822", "bob@b.test")``.
    Invalid values raise :class:`ValueError` (a programming error in the caller).
    """

    address: str
    notify: tuple[str, ...] = ()
    orcpt: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        _check_address(self.address, allow_empty=False)
        notify = tuple(value.upper() for value in self.notify)
        if (
            any(value not in _NOTIFY_VALUES for value in notify)
            or len(set(notify)) != len(notify)
            or ("NEVER" in notify and len(notify) > 1)
        ):
            raise ValueError(f"invalid NOTIFY: {self.notify!r}")
        object.__setattr__(self, "notify", notify)
        if self.orcpt is not None:
            addr_type, original = self.orcpt
            if _ATOM_RE.fullmatch(addr_type) is None or not original:
                raise ValueError(f"invalid ORCPT: {self.orcpt!r}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message to send: sender (``""`` for ``<>``), recipients and the facts the client
    needs to choose MAIL parameters. ``rcpts`` accepts addresses or :class:`Recipient` values
    and is stored as a tuple of :class:`Recipient` (also available as :attr:`recipients`).

    ``size``: octets of the message (for SIZE=). ``eight_bit``: the data has octets above 127
    (see :func:`is_8bit`). ``smtputf8``: the content needs SMTPUTF8 (UTF-8 header fields);
    non-ASCII addresses are detected by the client. ``ret``/``envid``: RFC 3461 MAIL
    parameters, sent only when the server offers DSN.
    """

    mail_from: str
    rcpts: Sequence[Recipient | str]
    size: int | None = None
    eight_bit: bool = False
    smtputf8: bool = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None

    def __post_init__(self) -> None:
        _check_address(self.mail_from, allow_empty=True)
        if isinstance(self.rcpts, str):
            raise ValueError("rcpts must be a sequence of addresses, not one string")
        rcpts = tuple(r if isinstance(r, Recipient) else Recipient(r) for r in self.rcpts)
        if not rcpts:
            raise ValueError("an envelope needs at least one recipient")
        object.__setattr__(self, "rcpts", rcpts)
        if self.size is not None and self.size < 0:
            raise ValueError("size must not be negative")
        if self.ret not in (None, "FULL", "HDRS"):
            raise ValueError(f"invalid RET: {self.ret!r}")
        if self.envid is not None and (
            not self.envid
            or len(self.envid) > _MAX_ENVID
            or not self.envid.isascii()
            or not self.envid.isprintable()
        ):
            raise ValueError(f"invalid ENVID: {self.envid!r}")

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        return cast(tuple[Recipient, ...], self.rcpts)


# --------------------------------------------------------------------------- results
class DeliveryStatus(enum.Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


def _status_of(reply: Reply) -> DeliveryStatus:
    if reply.code < 400:
        return DeliveryStatus.DELIVERED
    return DeliveryStatus.TEMPORARY if reply.code < 500 else DeliveryStatus.PERMANENT


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome for one recipient. ``remote`` is True when ``reply`` came from the server
    (then it is the DSN Diagnostic-Code), False when this client made it up."""

    recipient: Recipient
    status: DeliveryStatus
    reply: Reply
    remote: bool

    @property
    def enhanced_status(self) -> str:
        """The RFC 3463 code for the DSN Status field (``X.0.0`` when the server gave none)."""
        return self.reply.enhanced or f"{self.reply.code // 100}.0.0"

    @property
    def diagnostic_code(self) -> str | None:
        """``smtp; 550 5.1.1 text`` for a server reply (RFC 3464 §2.3.6), else None."""
        return f"smtp; {diagnostic(self.reply)}" if self.remote else None


@dataclass(frozen=True, slots=True)
class SessionFailure:
    """Why a session ended badly. ``reply`` is the server's (``remote``) or a local one."""

    reply: Reply
    remote: bool

    @property
    def temporary(self) -> bool:
        return self.reply.code < 500


class ServerClosed(SessionFailure):
    """The server sent ``421`` (RFC 5321 §3.8) and closes the connection."""

    __slots__ = ()


class ServerRefused(SessionFailure):
    """The greeting, EHLO or HELO was answered with an error (QUIT was sent)."""

    __slots__ = ()


class TlsFailure(SessionFailure):
    """TLS was required but not offered or refused (``4.7.4``), or the handshake failed
    (``4.7.5``). Temporary, so the queue retries until the message expires."""

    __slots__ = ()


class ProtocolFailure(SessionFailure):
    """The server sent something that is not SMTP (``4.5.0``, temporary)."""

    __slots__ = ()


class ConnectionLost(SessionFailure):
    """The connection closed or failed (``4.4.2``, temporary)."""

    __slots__ = ()


# --------------------------------------------------------------------------- events
class ClientSentinel(enum.Enum):
    """The two non-event results of :meth:`SmtpClient.next_event`."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


#: Nothing to act on: send :meth:`~SmtpClient.data_to_send`, then read from the server.
NEED_DATA: Final = ClientSentinel.NEED_DATA
#: The session is over (after :class:`Closed`).
CLOSED: Final = ClientSentinel.CLOSED


class ClientEvent:
    """Base class of the events returned by :meth:`SmtpClient.next_event`."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class NeedTls(ClientEvent):
    """The server accepted STARTTLS: send pending output, do the TLS handshake, then call
    :meth:`~SmtpClient.tls_established` (or :meth:`~SmtpClient.tls_failed`)."""


@dataclass(frozen=True, slots=True)
class ReadyForMessage(ClientEvent):
    """The session can take a message: call :meth:`~SmtpClient.send_message` or
    :meth:`~SmtpClient.quit`. Returned once per message slot."""

    capabilities: Capabilities
    tls_active: bool


@dataclass(frozen=True, slots=True)
class SendBody(ClientEvent):
    """The server said 354: write ``encode_data(chunk)`` for every chunk, then call
    :meth:`~SmtpClient.end_data`."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class MessageResult(ClientEvent):
    """Every recipient's outcome, in envelope order.

    ``needs_7bit``: refused locally because the server lacks 8BITMIME; the queue may downgrade
    the message and ``send_message`` it again, or bounce. ``lost_after_dot``: the connection
    was lost between the final dot and its reply; the message may have been delivered.
    """

    envelope: Envelope
    recipients: tuple[RecipientResult, ...]
    needs_7bit: bool = False
    lost_after_dot: bool = False

    @property
    def delivered(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if r.status is DeliveryStatus.DELIVERED)

    @property
    def temporary_failures(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if r.status is DeliveryStatus.TEMPORARY)

    @property
    def permanent_failures(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if r.status is DeliveryStatus.PERMANENT)


@dataclass(frozen=True, slots=True)
class Closed(ClientEvent):
    """The session is over: close the socket. ``failure`` is None after a clean QUIT."""

    failure: SessionFailure | None


ClientEventOrSentinel = ClientEvent | Literal[ClientSentinel.NEED_DATA, ClientSentinel.CLOSED]


class SmtpClientUsageError(RuntimeError):
    """The edge called the client at the wrong moment (a programming error)."""


class Waiting(enum.Enum):
    """What the session waits for (:attr:`SmtpClient.waiting_for`); the edge picks its timeout
    from it (RFC 5321 §4.5.3.2: 5 min for the greeting, MAIL and RCPT, 2 min for DATA, 3 min
    per body write, 10 min for END_OF_DATA)."""

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    RSET = "RSET"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "end of data"
    QUIT = "QUIT"
    #: The edge must do the TLS handshake.
    TLS_HANDSHAKE = "TLS handshake"
    #: The edge must call ``send_message`` or ``quit``.
    MESSAGE = "message"
    #: The edge must stream the body and call ``end_data``.
    BODY = "body"
    #: Closed.
    NOTHING = "nothing"


# --------------------------------------------------------------------------- dot-stuffing
class DotStuffer:
    """Streaming DATA encoding (RFC 5321 §4.5.2): a line starting with ``.`` gets one more.

    Bare CR and bare LF become CRLF on the way (RFC 5321 §2.3.8 forbids them in DATA; sending
    them could let a receiver see a different end of data, the "SMTP smuggling" attack). A CR at
    the end of a chunk is held back until the next octet shows whether it is half of a CRLF.
    Work is done with ``bytes.count``/``replace`` (C speed), not a loop over lines.
    """

    __slots__ = ("_held_cr", "_line_start")

    def __init__(self) -> None:
        self._line_start = True
        self._held_cr = False

    def encode(self, chunk: bytes) -> bytes:
        """The stuffed form of ``chunk`` (possibly shorter by a held-back final CR)."""
        data = b"\r" + chunk if self._held_cr else bytes(chunk)
        self._held_cr = data.endswith(b"\r")
        if self._held_cr:
            data = data[:-1]
        if not data:
            return b""
        lf = data.count(b"\n")
        if lf != data.count(b"\r") or lf != data.count(b"\r\n"):
            data = _EOL_RE.sub(b"\r\n", data)
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\n")
        return data

    def finish(self) -> bytes:
        """The end of the data: a line end if needed, then ``.`` CRLF."""
        if self._held_cr:
            self._held_cr = False
            self._line_start = False
            return b"\r\n.\r\n"
        return b".\r\n" if self._line_start else b"\r\n.\r\n"


# --------------------------------------------------------------------------- internals
class _Phase(enum.Enum):
    SETUP = "setup"  # greeting, EHLO/HELO, STARTTLS
    TLS = "tls"  # NeedTls returned, handshake under way
    READY_PENDING = "ready-pending"  # ReadyForMessage queued, not yet returned
    READY = "ready"
    TRANSACTION = "transaction"
    BODY = "body"
    QUITTING = "quitting"
    CLOSED = "closed"


class _Garbage(Exception):
    """Internal: the server's bytes are not SMTP replies."""


@dataclass(slots=True)
class _Transaction:
    envelope: Envelope
    results: list[RecipientResult | None]
    commands: list[bytes | None]  # RCPT line per recipient, None when refused locally
    mail: bytes
    todo: deque[int] = field(default_factory=deque)  # RCPTs not yet sent (no pipelining)
    accepted: list[int] = field(default_factory=list)
    mail_failed: bool = False
    dot_sent: bool = False
    discard: bool = False  # 354 with no accepted recipient: a lone dot was sent


class SmtpClient:
    """One SMTP client session, from the greeting to QUIT. See the module docstring.

    ``helo_name``: the ASCII name sent in EHLO/HELO. ``tls_policy``: ``none`` (never STARTTLS),
    ``opportunistic`` (when offered) or ``require``. ``tls_active``: the connection is already
    TLS (port 465). ``use_pipelining``: pipeline when the server offers PIPELINING. The limits
    bound memory whatever the server sends: ``max_line_length`` octets per reply line,
    ``max_reply_lines`` lines per reply, ``max_buffer`` octets received and not yet parsed.
    """

    def __init__(
        self,
        helo_name: str,
        tls_policy: TlsPolicy = "opportunistic",
        *,
        tls_active: bool = False,
        use_pipelining: bool = True,
        max_line_length: int = 2048,
        max_reply_lines: int = 256,
        max_buffer: int = 1024 * 1024,
    ) -> None:
        if (
            not helo_name.isascii()
            or not helo_name.isprintable()
            or " " in helo_name
            or not helo_name
        ):
            raise ValueError(f"helo_name must be one ASCII word: {helo_name!r}")
        if tls_policy not in _TLS_POLICIES:
            raise ValueError(f"tls_policy must be one of {_TLS_POLICIES}: {tls_policy!r}")
        if max_line_length < 512:
            raise ValueError("max_line_length must be at least 512 (RFC 5321 §4.5.3.1.5)")
        if max_reply_lines < 1:
            raise ValueError("max_reply_lines must be positive")
        if max_buffer < max_line_length:
            raise ValueError("max_buffer must be at least max_line_length")
        self.helo_name = helo_name
        self.tls_policy: TlsPolicy = tls_policy
        self.use_pipelining = use_pipelining
        self.max_line_length = max_line_length
        self.max_reply_lines = max_reply_lines
        self.max_buffer = max_buffer
        self._tls_active = tls_active
        self._in = bytearray()
        self._out = bytearray()
        self._eof_reason: str | None = None
        self._overflow = False
        self._reply_code: int | None = None
        self._reply_lines: list[str] = []
        self._expect: deque[tuple[Waiting, int]] = deque([(Waiting.GREETING, -1)])
        self._events: deque[ClientEvent] = deque()
        self._phase = _Phase.SETUP
        self._caps: Capabilities | None = None
        self._txn: _Transaction | None = None
        self._needs_rset = False
        self._quit_failure: SessionFailure | None = None
        self._stuffer = DotStuffer()

    # ------------------------------------------------------------------ public state
    @property
    def capabilities(self) -> Capabilities | None:
        """The capabilities of the last EHLO/HELO (None before it, and right after TLS)."""
        return self._caps

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def waiting_for(self) -> Waiting:
        """What the session is waiting for now (for the edge's timeouts)."""
        if self._phase is _Phase.CLOSED:
            return Waiting.NOTHING
        if self._phase is _Phase.TLS:
            return Waiting.TLS_HANDSHAKE
        if self._phase is _Phase.BODY:
            return Waiting.BODY
        if self._expect:
            return self._expect[0][0]
        return Waiting.MESSAGE

    # ------------------------------------------------------------------ I/O
    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the server; ``b""`` means the server closed the connection."""
        if self._phase is _Phase.CLOSED or self._eof_reason is not None:
            return
        if not data:
            self._eof_reason = "connection closed by the server"
        elif self._phase is _Phase.TLS:
            return  # plaintext bytes before the handshake: never trusted (CVE-2011-0411)
        elif len(self._in) + len(data) > self.max_buffer:
            self._overflow = True
            self._in.clear()
        else:
            self._in += data

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The socket failed or timed out: unresolved recipients become temporary failures."""
        if self._phase is not _Phase.CLOSED and self._eof_reason is None:
            self._eof_reason = _clean(reason)

    def data_to_send(self) -> bytes:
        """Bytes to write to the server now (may be empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ClientEventOrSentinel:
        """The next event, :data:`NEED_DATA` (write output, then read) or :data:`CLOSED`."""
        while True:
            if self._events:
                event = self._events.popleft()
                if isinstance(event, ReadyForMessage):
                    self._phase = _Phase.READY
                return event
            if self._phase is _Phase.CLOSED:
                return CLOSED
            if self._eof_reason is None:
                if self._phase is _Phase.TLS:
                    raise SmtpClientUsageError("NeedTls: call tls_established() or tls_failed()")
                if self._phase is _Phase.BODY:
                    raise SmtpClientUsageError("SendBody: stream the body, then call end_data()")
            if self._overflow:
                self._protocol_failure("too much data from the server")
                continue
            try:
                reply = self._parse_reply()
            except _Garbage as exc:
                self._protocol_failure(str(exc))
                continue
            if reply is not None:
                self._on_reply(reply)
            elif self._eof_reason is not None:
                self._on_eof(self._eof_reason)
            else:
                return NEED_DATA

    # ------------------------------------------------------------------ edge answers
    def tls_established(self) -> None:
        """The TLS handshake succeeded: forget all prior knowledge and say EHLO again."""
        if self._phase is not _Phase.TLS:
            raise SmtpClientUsageError("tls_established() without NeedTls")
        # RFC 3207 §4.2: "The client MUST discard any knowledge obtained from the server, such
        # as the list of SMTP service extensions, which was not obtained from the TLS
        # negotiation itself." Bytes received before the handshake are part of that.
        self._in.clear()
        self._reply_code = None
        self._reply_lines = []
        self._caps = None
        self._tls_active = True
        self._phase = _Phase.SETUP
        self._command(b"EHLO " + self.helo_name.encode() + b"\r\n", Waiting.EHLO)

    def tls_failed(self, reason: str = "") -> None:
        """The TLS handshake failed: the session ends with :class:`TlsFailure` (``4.7.5``)."""
        if self._phase is not _Phase.TLS:
            raise SmtpClientUsageError("tls_failed() without NeedTls")
        reply = TLS_HANDSHAKE_FAILED
        if reason:
            reply = reply.with_text(f"{reply.text}: {_clean(reason)}")
        self._end_session(TlsFailure(reply, remote=False))

    def send_message(self, envelope: Envelope) -> None:
        """Start sending ``envelope`` (answer to :class:`ReadyForMessage`)."""
        if self._phase is not _Phase.READY:
            raise SmtpClientUsageError("send_message() without ReadyForMessage")
        caps = self._caps
        assert caps is not None
        rcpts = envelope.recipients
        refusal: Reply | None = None
        needs_7bit = False
        if caps.size and envelope.size is not None and envelope.size > caps.size:
            refusal = SIZE_EXCEEDED.with_text(
                f"{SIZE_EXCEEDED.text} ({envelope.size} > {caps.size} octets)"
            )
        elif envelope.eight_bit and not caps.eight_bit_mime:
            refusal, needs_7bit = EIGHTBIT_NOT_SUPPORTED, True
        sender = self._wire_address(envelope.mail_from, caps)
        if refusal is None and (sender is None or (envelope.smtputf8 and not caps.smtputf8)):
            refusal = SMTPUTF8_NOT_SUPPORTED
        results: list[RecipientResult | None] = [None] * len(rcpts)
        commands: list[bytes | None] = [None] * len(rcpts)
        utf8 = envelope.smtputf8 or not (sender or "").isascii()
        for index, rcpt in enumerate(rcpts):
            wire = None if refusal is not None else self._wire_address(rcpt.address, caps)
            if wire is None:
                local = refusal or SMTPUTF8_NOT_SUPPORTED
                results[index] = RecipientResult(rcpt, _status_of(local), local, remote=False)
                continue
            utf8 = utf8 or not wire.isascii()
            commands[index] = self._rcpt_command(wire, rcpt, caps)
        if all(result is not None for result in results):
            self._events.append(
                MessageResult(
                    envelope,
                    cast(tuple[RecipientResult, ...], tuple(results)),
                    needs_7bit=needs_7bit,
                )
            )
            self._emit_ready()
            return
        assert sender is not None
        txn = _Transaction(
            envelope, results, commands, self._mail_command(sender, envelope, caps, utf8)
        )
        self._txn = txn
        self._phase = _Phase.TRANSACTION
        if self._needs_rset:
            self._command(b"RSET\r\n", Waiting.RSET)
        else:
            self._start_transaction(txn)

    def encode_data(self, chunk: bytes) -> bytes:
        """The dot-stuffed form of a chunk of the message (CRLF line ends), to write as is."""
        if self._phase is not _Phase.BODY:
            raise SmtpClientUsageError("encode_data() outside SendBody")
        return self._stuffer.encode(chunk)

    def end_data(self) -> None:
        """The body is complete: the final ``.`` goes to :meth:`data_to_send`."""
        if self._phase is not _Phase.BODY:
            raise SmtpClientUsageError("end_data() outside SendBody")
        txn = self._txn
        assert txn is not None
        txn.dot_sent = True
        self._phase = _Phase.TRANSACTION
        self._command(self._stuffer.finish(), Waiting.END_OF_DATA)

    def quit(self) -> None:
        """End the session politely (answer to :class:`ReadyForMessage`)."""
        if self._phase is not _Phase.READY:
            raise SmtpClientUsageError("quit() without ReadyForMessage")
        self._phase = _Phase.QUITTING
        self._quit_failure = None
        self._command(b"QUIT\r\n", Waiting.QUIT)

    # ------------------------------------------------------------------ reply parsing
    def _parse_reply(self) -> Reply | None:
        while True:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > self.max_line_length:
                    raise _Garbage("reply line too long")
                return None
            raw = bytes(self._in[:end])
            del self._in[: end + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line_length:
                raise _Garbage("reply line too long")
            match = _REPLY_LINE_RE.fullmatch(raw)
            if match is None:
                raise _Garbage(f"malformed reply line {_clean(raw[:64].decode('latin-1'))!r}")
            code = int(match[1])
            if self._reply_code is not None and code != self._reply_code:
                raise _Garbage(f"reply code changed from {self._reply_code} to {code}")
            self._reply_code = code
            self._reply_lines.append(_clean((match[3] or b"").decode("utf-8", "replace")))
            if match[2] == b"-":
                if len(self._reply_lines) >= self.max_reply_lines:
                    raise _Garbage("too many lines in one reply")
                continue
            lines, self._reply_lines, self._reply_code = self._reply_lines, [], None
            return _make_reply(code, lines)

    # ------------------------------------------------------------------ reply handling
    def _on_reply(self, reply: Reply) -> None:
        if not self._expect:
            if reply.code == 421:
                self._end_session(ServerClosed(reply, remote=True))
            else:
                self._protocol_failure(f"unexpected reply: {diagnostic(reply)}")
            return
        waiting, index = self._expect.popleft()
        if waiting is Waiting.QUIT:
            self._end_session(self._quit_failure)
            return
        if reply.code == 421:
            self._end_session(ServerClosed(reply, remote=True))
            return
        if reply.code // 100 == 3 and waiting is not Waiting.DATA:
            self._protocol_failure(f"unexpected reply to {waiting.value}: {diagnostic(reply)}")
            return
        if waiting is Waiting.GREETING:
            self._on_greeting(reply)
        elif waiting is Waiting.EHLO or waiting is Waiting.HELO:
            self._on_hello(reply, extended=waiting is Waiting.EHLO)
        elif waiting is Waiting.STARTTLS:
            self._on_starttls(reply)
        elif waiting is Waiting.RSET:
            self._on_rset(reply)
        elif waiting is Waiting.MAIL:
            self._on_mail(reply)
        elif waiting is Waiting.RCPT:
            self._on_rcpt(reply, index)
        elif waiting is Waiting.DATA:
            self._on_data(reply)
        else:
            self._on_end_of_data(reply)

    def _on_greeting(self, reply: Reply) -> None:
        if reply.is_positive:
            self._command(b"EHLO " + self.helo_name.encode() + b"\r\n", Waiting.EHLO)
        else:
            self._refuse(ServerRefused(reply, remote=True))

    def _on_hello(self, reply: Reply, *, extended: bool) -> None:
        if not reply.is_positive:
            if extended and reply.code in (500, 502):
                self._command(b"HELO " + self.helo_name.encode() + b"\r\n", Waiting.HELO)
            else:
                self._refuse(ServerRefused(reply, remote=True))
            return
        caps = parse_ehlo(reply) if extended else Capabilities(extended=False, hello=reply)
        self._caps = caps
        if self._tls_active or self.tls_policy == "none":
            self._emit_ready()
        elif caps.starttls:
            self._command(b"STARTTLS\r\n", Waiting.STARTTLS)
        elif self.tls_policy == "require":
            self._refuse(TlsFailure(TLS_NOT_OFFERED, remote=False))
        else:
            self._emit_ready()

    def _on_starttls(self, reply: Reply) -> None:
        if reply.is_positive:
            self._phase = _Phase.TLS
            self._events.append(NeedTls())
        elif self.tls_policy == "require":
            text = f"TLS is required, but the server refused STARTTLS: {diagnostic(reply)}"
            self._refuse(TlsFailure(TLS_NOT_OFFERED.with_text(text), remote=False))
        else:
            self._emit_ready()

    def _on_rset(self, reply: Reply) -> None:
        if not reply.is_positive:
            self._protocol_failure(f"RSET refused: {diagnostic(reply)}")
            return
        self._needs_rset = False
        txn = self._txn
        assert txn is not None
        self._start_transaction(txn)

    def _on_mail(self, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        if reply.is_positive:
            self._needs_rset = True
            if not self._pipelined:
                self._next_rcpt(txn)
            return
        txn.mail_failed = True
        self._resolve_unresolved(txn, reply, remote=True)
        if not self._pipelined:
            self._finish_message(txn)

    def _on_rcpt(self, reply: Reply, index: int) -> None:
        txn = self._txn
        assert txn is not None
        if not txn.mail_failed:
            if reply.is_positive:
                txn.accepted.append(index)
            else:
                rcpt = txn.envelope.recipients[index]
                txn.results[index] = RecipientResult(rcpt, _status_of(reply), reply, remote=True)
        if not self._pipelined:
            self._next_rcpt(txn)

    def _on_data(self, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        if reply.is_positive:
            self._protocol_failure(f"unexpected reply to DATA: {diagnostic(reply)}")
        elif reply.code // 100 == 3:
            if txn.accepted and not txn.mail_failed:
                self._stuffer = DotStuffer()
                self._phase = _Phase.BODY
                self._events.append(SendBody(txn.envelope))
            else:
                # RFC 2920 §3.1: "if the DATA command was accepted the SMTP client should
                # send a single dot."
                txn.discard = True
                txn.dot_sent = True
                self._command(b".\r\n", Waiting.END_OF_DATA)
        else:
            if not txn.mail_failed:
                self._resolve_unresolved(txn, reply, remote=True)
            self._finish_message(txn)

    def _on_end_of_data(self, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        self._needs_rset = False
        if not txn.discard:
            self._resolve_unresolved(txn, reply, remote=True)
        self._finish_message(txn)

    def _on_eof(self, reason: str) -> None:
        if self._phase is _Phase.QUITTING:
            self._end_session(self._quit_failure)
            return
        reply = CONNECTION_LOST.with_text(f"{CONNECTION_LOST.text}: {reason}")
        self._end_session(ConnectionLost(reply, remote=False))

    # ------------------------------------------------------------------ transactions
    @property
    def _pipelined(self) -> bool:
        caps = self._caps
        return self.use_pipelining and caps is not None and caps.pipelining

    def _wire_address(self, address: str, caps: Capabilities) -> str | None:
        """The address as sent, or None when it cannot be sent without SMTPUTF8."""
        if address.isascii() or caps.smtputf8:
            return address
        local, _, domain = address.rpartition("@")
        if not local.isascii():
            return None
        try:
            return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
        except (idna.IDNAError, UnicodeError):
            return None

    def _mail_command(
        self, sender: str, envelope: Envelope, caps: Capabilities, utf8: bool
    ) -> bytes:
        params: list[str] = []
        if caps.size is not None and envelope.size is not None:
            params.append(f"SIZE={envelope.size}")
        if envelope.eight_bit:
            params.append("BODY=8BITMIME")
        if utf8 and caps.smtputf8:
            params.append("SMTPUTF8")
        if caps.dsn:
            if envelope.ret is not None:
                params.append(f"RET={envelope.ret}")
            if envelope.envid is not None:
                params.append(f"ENVID={encode_xtext(envelope.envid)}")
        return _command_line(f"MAIL FROM:<{sender}>", params)

    def _rcpt_command(self, wire: str, rcpt: Recipient, caps: Capabilities) -> bytes:
        params: list[str] = []
        if caps.dsn:
            if rcpt.notify:
                params.append("NOTIFY=" + ",".join(rcpt.notify))
            if rcpt.orcpt is not None:
                params.append("ORCPT=" + encode_orcpt(*rcpt.orcpt))
        return _command_line(f"RCPT TO:<{wire}>", params)

    def _start_transaction(self, txn: _Transaction) -> None:
        self._command(txn.mail, Waiting.MAIL)
        pending = [i for i, line in enumerate(txn.commands) if line is not None]
        if self._pipelined:
            # RFC 2920 §3.1: MAIL and RCPT may appear anywhere in a group, DATA only last.
            for index in pending:
                self._command(cast(bytes, txn.commands[index]), Waiting.RCPT, index)
            self._command(b"DATA\r\n", Waiting.DATA)
        else:
            txn.todo.extend(pending)

    def _next_rcpt(self, txn: _Transaction) -> None:
        if txn.todo:
            index = txn.todo.popleft()
            self._command(cast(bytes, txn.commands[index]), Waiting.RCPT, index)
        elif txn.accepted:
            self._command(b"DATA\r\n", Waiting.DATA)
        else:
            self._finish_message(txn)

    def _resolve_unresolved(self, txn: _Transaction, reply: Reply, *, remote: bool) -> None:
        status = _status_of(reply)
        for index, result in enumerate(txn.results):
            if result is None:
                rcpt = txn.envelope.recipients[index]
                txn.results[index] = RecipientResult(rcpt, status, reply, remote)

    def _finish_message(self, txn: _Transaction, *, lost_after_dot: bool = False) -> None:
        self._txn = None
        results = cast(tuple[RecipientResult, ...], tuple(txn.results))
        self._events.append(MessageResult(txn.envelope, results, lost_after_dot=lost_after_dot))
        if self._phase is not _Phase.CLOSED:
            self._emit_ready()

    # ------------------------------------------------------------------ session
    def _command(self, line: bytes, waiting: Waiting, index: int = -1) -> None:
        self._out += line
        self._expect.append((waiting, index))

    def _emit_ready(self) -> None:
        caps = self._caps
        assert caps is not None
        self._phase = _Phase.READY_PENDING
        self._events.append(ReadyForMessage(caps, self._tls_active))

    def _refuse(self, failure: SessionFailure) -> None:
        """Say QUIT, then end with ``failure`` (after the reply or the close)."""
        self._phase = _Phase.QUITTING
        self._quit_failure = failure
        self._command(b"QUIT\r\n", Waiting.QUIT)

    def _protocol_failure(self, text: str) -> None:
        reply = PROTOCOL_ERROR.with_text(f"{PROTOCOL_ERROR.text}: {text}")
        self._end_session(ProtocolFailure(reply, remote=False))

    def _end_session(self, failure: SessionFailure | None) -> None:
        txn = self._txn
        self._phase = _Phase.CLOSED
        self._in.clear()
        self._out.clear()
        self._expect.clear()
        if txn is not None and failure is not None:
            lost_after_dot = (
                isinstance(failure, ConnectionLost)
                and txn.dot_sent
                and not txn.discard
                and bool(txn.accepted)
            )
            if lost_after_dot:
                self._resolve_unresolved(txn, LOST_AFTER_DOT, remote=False)
            self._resolve_unresolved(txn, failure.reply, remote=failure.remote)
            self._finish_message(txn, lost_after_dot=lost_after_dot)
        self._events.append(Closed(failure))


def _make_reply(code: int, lines: list[str]) -> Reply:
    """A :class:`Reply` from parsed lines, the RFC 3463 code lifted out of the text."""
    enhanced: str | None = None
    match = _ENHANCED_RE.match(lines[0])
    if match is not None and int(match[1]) == code // 100:
        enhanced = match[0].rstrip(" ")
        stripped: list[str] = []
        for line in lines:
            found = _ENHANCED_RE.match(line)
            if found is not None and found[0].rstrip(" ") == enhanced:
                line = line[found.end() :]
            stripped.append(line)
        lines = stripped
    return Reply(code, enhanced, "\n".join(lines))


def _command_line(head: str, params: list[str]) -> bytes:
    return (" ".join([head, *params]) + "\r\n").encode("utf-8")
