"""The sans-IO SMTP server protocol core: bytes in, events and reply bytes out.

Implements the server side of SMTP (RFC 5321) with the ESMTP extensions PIPELINING (RFC 2920),
SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), ENHANCEDSTATUSCODES (RFC 2034,
RFC 3463), CHUNKING (RFC 3030), STARTTLS (RFC 3207), AUTH (RFC 4954, PLAIN and LOGIN via
:mod:`letterbird.proto.sasl`) and DSN parameters (RFC 3461). Written by hand because aiosmtpd
lacks PIPELINING, CHUNKING, ENHANCEDSTATUSCODES and DSN and buffers whole messages in memory.

The design is h11's: the caller (the asyncio edge) feeds socket bytes with
:meth:`SmtpServerConnection.receive_data`, loops on :meth:`~SmtpServerConnection.next_event`
until it returns :data:`NEED_DATA`, acts on every event, answers the events that need an answer,
and writes :meth:`~SmtpServerConnection.data_to_send` to the socket whenever ``next_event``
returns :data:`NEED_DATA` (which yields correct PIPELINING batching) and when it returns
:class:`ConnectionClosing`. After :class:`ConnectionClosing`, ``next_event`` returns
:data:`CLOSED` for ever.

Events that must be answered before the core reads any further command:

=========================  ================================================================
:class:`Hello`             :meth:`~SmtpServerConnection.accept_hello` (the core writes the EHLO
                           or HELO reply) or :meth:`~SmtpServerConnection.reply` with an error
:class:`MailFrom`          ``reply(...)``: a ``2yz`` reply opens the transaction
:class:`RcptTo`            ``reply(...)``: a ``2yz`` reply adds the recipient
:class:`DataComplete`      ``reply(...)`` after the message is durably stored (or refused);
                           the transaction is reset afterwards
:class:`StartTlsRequested` ``reply(TLS_READY)``, handshake, then
                           :meth:`~SmtpServerConnection.tls_established`; or an error reply
:class:`AuthRequested`     :meth:`~SmtpServerConnection.auth_succeeded` or
                           :meth:`~SmtpServerConnection.auth_failed`
=========================  ================================================================

:class:`DataChunk`, :class:`DataAborted` and :class:`ConnectionClosing` need no answer. Answering
the wrong event (or none) raises :class:`RuntimeError`, as does calling ``next_event`` while an
answer is owed: both are programming errors in the edge. Peer input never raises.

Policies chosen here (documented once):

* Command lines may end in CRLF or a bare LF; their limit (``max_line_length``, default 2048
  octets without the line end) is more tolerant than RFC 5321 §4.5.3.1.4's 512. A longer line
  is answered ``500 5.5.2`` and skipped up to its end without being buffered.
* Message line endings: see :mod:`letterbird.proto.smtp.body` (bare LF and bare CR become CRLF;
  only ``<CR><LF>.<CR><LF>`` ends DATA).
* Every ``4yz``/``5yz`` reply (the core's or the edge's, except ``421``) counts as an error;
  when ``max_errors`` is reached the core adds ``421 4.7.0`` and closes.
* A ``BDAT`` whose size cannot be parsed leaves the octet stream unframeable, so it is answered
  ``501 5.5.4`` and the connection is closed.
* ``receive_data(b"")`` means the peer closed its side: the buffered commands are processed,
  then :class:`ConnectionClosing` (with no reply) is returned. :class:`ConnectionClosing` always
  means any unfinished message is abandoned.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from .. import sasl
from . import replies
from .address import (
    AddressError,
    Mailbox,
    NonAsciiAddressError,
    parse_forward_path,
    parse_reverse_path,
    split_path_argument,
)
from .body import BodyReader
from .params import MailParams, ParamError, RcptParams, parse_mail_params, parse_rcpt_params
from .replies import Reply, encode

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "AuthRequested",
    "ConnectionClosing",
    "DataAborted",
    "DataChunk",
    "DataComplete",
    "Envelope",
    "Event",
    "EventOrSentinel",
    "Hello",
    "MailFrom",
    "RcptTo",
    "Sentinel",
    "SmtpServerConfig",
    "SmtpServerConnection",
    "StartTlsRequested",
]


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class SmtpServerConfig:
    """Settings of one listener. Every limit of the core is here, with its default."""

    hostname: str = "localhost"
    #: Text after the hostname in the ``220`` greeting.
    greeting: str = "ESMTP Letterbird"
    #: Longest command line, in octets without CRLF (RFC 5321 says 512; 2048 for tolerance).
    max_line_length: int = 2048
    #: Longest message text line, in octets without CRLF; longer → ``554 5.6.0`` at the end.
    max_data_line_length: int = 10000
    #: SIZE limit (RFC 1870), in octets of the normalised message.
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    #: Errors before ``421 4.7.0`` and close.
    max_errors: int = 10
    tls_available: bool = False
    #: Implicit TLS (port 465): STARTTLS is neither offered nor accepted.
    tls_active: bool = False
    #: SASL mechanisms offered (subset of :data:`letterbird.proto.sasl.MECHANISMS`); empty =
    #: no AUTH (e.g. an MX listener).
    auth_mechanisms: tuple[str, ...] = ()
    #: Refuse AUTH before TLS (``538 5.7.11``); the edge sets False for loopback clients.
    auth_requires_tls: bool = True
    #: Offer DSN (RFC 3461); when False its parameters are refused with ``555 5.5.4``.
    dsn_enabled: bool = False
    smtputf8: bool = True
    chunking: bool = True
    #: More ``Received:`` fields than this in the header section → ``554 5.4.6`` (loop).
    max_received_headers: int = 50
    #: Largest :class:`DataChunk` produced (input octets decoded per step).
    data_chunk_size: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_line_length",
            "max_data_line_length",
            "max_message_size",
            "max_recipients",
            "max_errors",
            "max_received_headers",
            "data_chunk_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_line_length < 64:
            raise ValueError("max_line_length must be at least 64")
        for mech in self.auth_mechanisms:
            if mech not in sasl.MECHANISMS:
                raise ValueError(f"unsupported SASL mechanism: {mech}")
        if not self.hostname or any(c.isspace() for c in self.hostname):
            raise ValueError("hostname must be a non-empty word")


# --------------------------------------------------------------------------- events
class Sentinel(enum.Enum):
    """The two non-event results of :meth:`SmtpServerConnection.next_event`."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


#: No complete input to act on: send :meth:`~SmtpServerConnection.data_to_send`, then read.
NEED_DATA: Final = Sentinel.NEED_DATA
#: The connection is finished; nothing more will happen.
CLOSED: Final = Sentinel.CLOSED


class Event:
    """Base class of the events returned by :meth:`SmtpServerConnection.next_event`."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """EHLO (``extended``) or HELO with the client's name. Answer: ``accept_hello()`` or reply."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL FROM; ``address`` is ``None`` for the null reverse-path ``<>``. Answer: reply."""

    address: Mailbox | None
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """RCPT TO (``<Postmaster>`` gives a mailbox with an empty domain). Answer: reply."""

    address: Mailbox
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Envelope:
    """The accepted MAIL FROM and RCPT TO commands of the current transaction."""

    mail_from: MailFrom
    recipients: tuple[RcptTo, ...]


@dataclass(frozen=True, slots=True)
class DataChunk(Event):
    """Decoded message octets (CRLF line endings, unstuffed), in order. No answer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DataComplete(Event):
    """The whole message was received within limits. Answer: reply (e.g. 250 after storing)."""

    size: int
    received_count: int
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class DataAborted(Event):
    """The message was refused by the core (``reply`` already queued); discard the chunks."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class StartTlsRequested(Event):
    """STARTTLS. Answer: ``reply(TLS_READY)`` + handshake + ``tls_established()``, or refuse."""


@dataclass(frozen=True, slots=True)
class AuthRequested(Event):
    """A SASL exchange completed. Answer: ``auth_succeeded(user)`` or ``auth_failed(reply)``."""

    mechanism: str
    credentials: sasl.Credentials


@dataclass(frozen=True, slots=True)
class ConnectionClosing(Event):
    """Write the pending output and close. ``reply`` is the closing reply (None on peer EOF)."""

    reply: Reply | None


EventOrSentinel = Event | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]


# --------------------------------------------------------------------------- internals
class _Mode(enum.Enum):
    COMMAND = "command"
    DATA = "data"
    BDAT = "bdat"


class _Owed(enum.Enum):
    HELLO = "Hello"
    MAIL = "MailFrom"
    RCPT = "RcptTo"
    DATA = "DataComplete"
    STARTTLS = "StartTlsRequested"
    AUTH = "AuthRequested"


@dataclass(slots=True)
class _AuthExchange:
    mechanism: str
    step: str  # "plain", "login-username", "login-password"
    username: str = ""


@dataclass(slots=True)
class _Transaction:
    mail: MailFrom
    recipients: list[RcptTo] = field(default_factory=list)
    body: BodyReader | None = None  # set by the first BDAT
    bdat_octets: int = 0  # raw BDAT octets announced so far


# BDAT SP chunk-size [ SP end-marker ] ; chunk-size ::= 1*DIGIT ; end-marker ::= "LAST"
# (RFC 3030 §2; at most 20 digits, like RFC 1870's size-value, to bound the integer).
_BDAT_RE = re.compile("([0-9]{1,20})(?: +(LAST))?", re.IGNORECASE)
# "MAIL FROM:" / "RCPT TO:" (case-insensitive; spaces after the colon tolerated).
_FROM_RE = re.compile("FROM: *", re.IGNORECASE)
_TO_RE = re.compile("TO: *", re.IGNORECASE)


class SmtpServerConnection:
    """One SMTP server session, from greeting to close. See the module docstring."""

    def __init__(self, config: SmtpServerConfig) -> None:
        self.config = config
        self._in = bytearray()
        self._out = bytearray()
        self._mode = _Mode.COMMAND
        self._owed: _Owed | None = None
        self._owed_event: Event | None = None
        self._skip_line = False
        self._eof = False
        self._closing = False
        self._close_reported = False
        self._close_reply: Reply | None = None
        self._awaiting_tls = False
        self._tls_active = config.tls_active
        self._hello: str | None = None
        self._extended = False
        self._user: str | None = None
        self._errors = 0
        self._auth: _AuthExchange | None = None
        self._txn: _Transaction | None = None
        self._data: BodyReader | None = None  # the body being received (DATA or BDAT)
        self._bdat_remaining = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_refusal: Reply | None = None
        self._queue(Reply(220, None, f"{config.hostname} {config.greeting}"))

    # ------------------------------------------------------------------ public state
    @property
    def closing(self) -> bool:
        """True once the connection is to be closed after the pending output is sent."""
        return self._closing

    @property
    def awaiting_tls(self) -> bool:
        """True between ``reply(TLS_READY)`` and ``tls_established()``."""
        return self._awaiting_tls

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def helo_name(self) -> str | None:
        """The name given in the accepted EHLO/HELO, if any."""
        return self._hello

    @property
    def extended(self) -> bool:
        """True when the session was opened with EHLO."""
        return self._extended

    @property
    def authenticated_user(self) -> str | None:
        return self._user

    @property
    def error_count(self) -> int:
        return self._errors

    @property
    def envelope(self) -> Envelope | None:
        """The transaction in progress (accepted sender and recipients), if any."""
        if self._txn is None:
            return None
        return Envelope(self._txn.mail, tuple(self._txn.recipients))

    # ------------------------------------------------------------------ I/O
    def receive_data(self, data: bytes) -> None:
        """Feed octets read from the socket; ``b""`` means the peer closed its side.

        As with h11, call :meth:`next_event` until it returns :data:`NEED_DATA` before feeding
        more: input is only consumed by ``next_event``, so what is buffered is bounded by one
        read plus one command line.
        """
        if not data:
            self._eof = True
        elif not (self._closing or self._awaiting_tls):
            # Bytes arriving during a TLS negotiation are discarded (CVE-2011-0411).
            self._in += data

    def data_to_send(self) -> bytes:
        """The reply octets queued so far (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> EventOrSentinel:
        """Process input until an event, or :data:`NEED_DATA` / :data:`CLOSED`."""
        if self._owed is not None:
            raise RuntimeError(f"the {self._owed.value} event must be answered first")
        while True:
            if self._closing:
                if self._close_reported:
                    return CLOSED
                self._close_reported = True
                return ConnectionClosing(self._close_reply)
            if self._awaiting_tls:
                if self._eof:
                    self._begin_close(None)
                    continue
                return NEED_DATA
            if self._mode is _Mode.COMMAND:
                result = self._step_command()
            elif self._mode is _Mode.DATA:
                result = self._step_data()
            else:
                result = self._step_bdat()
            if result is NEED_DATA:
                if self._eof:
                    self._begin_close(None)
                    continue
                return NEED_DATA
            if result is not None:
                return result

    # ------------------------------------------------------------------ answers
    def reply(self, reply: Reply) -> None:
        """Answer the pending :class:`Hello` (errors only), :class:`MailFrom`,
        :class:`RcptTo`, :class:`DataComplete` or :class:`StartTlsRequested` event."""
        owed = self._owed
        if owed is None or owed is _Owed.AUTH:
            if self._closing:
                return  # the session was closed meanwhile (timeout/shutdown): drop it
            if owed is None:
                raise RuntimeError("no event is waiting for a reply")
            raise RuntimeError("answer AuthRequested with auth_succeeded()/auth_failed()")
        if not (reply.is_positive or reply.is_error):
            raise RuntimeError(f"a {reply.code} reply cannot answer {owed.value}")
        if owed is _Owed.HELLO and not reply.is_error:
            raise RuntimeError("accept a Hello with accept_hello()")
        if owed is _Owed.STARTTLS and reply.is_positive and reply.code != 220:
            raise RuntimeError("STARTTLS is accepted with a 220 reply")
        event = self._owed_event
        self._owed = None
        self._owed_event = None
        if owed is _Owed.MAIL and reply.is_positive:
            assert isinstance(event, MailFrom)
            self._txn = _Transaction(event)
        elif owed is _Owed.RCPT and reply.is_positive:
            assert isinstance(event, RcptTo) and self._txn is not None
            self._txn.recipients.append(event)
        elif owed is _Owed.DATA:
            self._txn = None
        elif owed is _Owed.STARTTLS and reply.is_positive:
            self._awaiting_tls = True
            self._in.clear()  # CVE-2011-0411: nothing sent before the handshake survives
            self._skip_line = False
        self._queue(reply)

    def accept_hello(self) -> None:
        """Accept the pending :class:`Hello`: the core writes the EHLO or HELO reply."""
        if self._owed is not _Owed.HELLO:
            if self._closing:
                return
            raise RuntimeError("no Hello event is waiting for an answer")
        event = self._owed_event
        assert isinstance(event, Hello)
        self._owed = None
        self._owed_event = None
        self._hello = event.name
        self._extended = event.extended
        self._reset_transaction()  # RFC 5321 §4.1.4: EHLO/HELO reset the state like RSET
        self._queue(self._ehlo_reply() if event.extended else self._helo_reply())

    def auth_succeeded(self, user: str) -> None:
        """Accept the pending :class:`AuthRequested`: ``235 2.7.0``, the session is ``user``'s."""
        if self._owed is not _Owed.AUTH:
            if self._closing:
                return
            raise RuntimeError("no AuthRequested event is waiting for an answer")
        self._owed = None
        self._owed_event = None
        self._user = user
        self._queue(replies.AUTH_OK)

    def auth_failed(self, reply: Reply = replies.AUTH_FAILED) -> None:
        """Refuse the pending :class:`AuthRequested` (default ``535 5.7.8``)."""
        if self._owed is not _Owed.AUTH:
            if self._closing:
                return
            raise RuntimeError("no AuthRequested event is waiting for an answer")
        if not reply.is_error:
            raise RuntimeError("auth_failed needs a 4yz or 5yz reply")
        self._owed = None
        self._owed_event = None
        self._queue(reply)

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: reset the session (RFC 3207 §4.2).

        Any input received before the handshake completed is discarded (CVE-2011-0411); the
        client must send EHLO again, and any earlier authentication is forgotten.
        """
        if not self._awaiting_tls:
            raise RuntimeError("tls_established() without an accepted STARTTLS")
        self._awaiting_tls = False
        self._tls_active = True
        self._in.clear()
        self._skip_line = False
        self._hello = None
        self._extended = False
        self._user = None
        self._reset_transaction()

    def timeout_reply(self) -> None:
        """Idle timeout: queue ``421 4.4.2`` and close (RFC 5321 §4.5.3.2)."""
        self._close_with(replies.TIMEOUT)

    def shutdown_reply(self) -> None:
        """Server shutdown: queue ``421 4.3.2`` and close."""
        self._close_with(replies.SHUTTING_DOWN)

    # ------------------------------------------------------------------ reply plumbing
    def _queue(self, reply: Reply) -> None:
        self._out += encode(reply)
        if reply.code == 421:
            self._begin_close(reply)
        elif reply.is_error:
            self._errors += 1
            if self._errors >= self.config.max_errors:
                self._out += encode(replies.TOO_MANY_ERRORS)
                self._begin_close(replies.TOO_MANY_ERRORS)

    def _close_with(self, reply: Reply) -> None:
        if not self._closing:
            self._queue(reply)

    def _begin_close(self, reply: Reply | None) -> None:
        self._closing = True
        self._close_reply = reply
        self._owed = None
        self._owed_event = None
        self._awaiting_tls = False
        self._auth = None
        self._in.clear()

    def _owe(self, kind: _Owed, event: Event) -> Event:
        self._owed = kind
        self._owed_event = event
        return event

    def _reset_transaction(self) -> None:
        self._txn = None

    def _ehlo_reply(self) -> Reply:
        cfg = self.config
        lines = [cfg.hostname, "PIPELINING", f"SIZE {cfg.max_message_size}", "8BITMIME"]
        if cfg.smtputf8:
            lines.append("SMTPUTF8")
        lines.append("ENHANCEDSTATUSCODES")
        if cfg.chunking:
            lines.append("CHUNKING")
        if cfg.tls_available and not self._tls_active:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH " + " ".join(cfg.auth_mechanisms))
        if cfg.dsn_enabled:
            lines.append("DSN")
        return Reply.multiline(250, None, lines)

    def _helo_reply(self) -> Reply:
        return Reply(250, None, self.config.hostname)

    def _auth_offered(self) -> bool:
        cfg = self.config
        return bool(cfg.auth_mechanisms) and (self._tls_active or not cfg.auth_requires_tls)

    # ------------------------------------------------------------------ command mode
    def _step_command(self) -> Event | Sentinel | None:
        buf = self._in
        if self._skip_line:
            newline = buf.find(b"\n")
            if newline < 0:
                buf.clear()
                return NEED_DATA
            del buf[: newline + 1]
            self._skip_line = False
            return None
        limit = self.config.max_line_length
        newline = buf.find(b"\n", 0, limit + 2)
        if newline < 0:
            if len(buf) > limit + 1:
                self._line_too_long()
                newline = buf.find(b"\n", limit + 2)
                if newline < 0:
                    buf.clear()  # drop the rest of the line as it arrives, never buffer it
                    self._skip_line = True
                else:
                    del buf[: newline + 1]
                return None
            return NEED_DATA
        line = bytes(buf[:newline])
        del buf[: newline + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > limit:
            self._line_too_long()
            return None
        if self._auth is not None:
            return self._auth_response(line)
        return self._command(line)

    def _line_too_long(self) -> None:
        if self._auth is not None:
            self._auth = None
            self._queue(replies.AUTH_LINE_TOO_LONG)
        else:
            self._queue(replies.LINE_TOO_LONG)

    def _command(self, line: bytes) -> Event | None:
        if b"\x00" in line:
            self._queue(replies.NUL_CHARACTER)
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._queue(replies.INVALID_UTF8)
            return None
        verb, _, arg = text.rstrip(" \t").partition(" ")
        handler = self._HANDLERS.get(verb.upper())
        if handler is None:
            self._queue(replies.UNKNOWN_COMMAND)
            return None
        return handler(self, arg.strip(" "))

    def _cmd_ehlo(self, arg: str) -> Event | None:
        return self._hello_command(arg, extended=True)

    def _cmd_helo(self, arg: str) -> Event | None:
        return self._hello_command(arg, extended=False)

    def _hello_command(self, arg: str, *, extended: bool) -> Event | None:
        # ehlo = "EHLO" SP ( Domain / address-literal ) CRLF ; helo = "HELO" SP Domain CRLF
        # The name is checked for shape only (one word); policy on its value is the edge's.
        if not arg or any(c.isspace() for c in arg):
            self._queue(replies.EHLO_SYNTAX if extended else replies.HELO_SYNTAX)
            return None
        return self._owe(_Owed.HELLO, Hello(arg, extended))

    def _cmd_mail(self, arg: str) -> Event | None:
        if self._hello is None:
            self._queue(replies.HELLO_FIRST)
            return None
        if self._txn is not None:
            self._queue(replies.NESTED_MAIL)
            return None
        prefix = _FROM_RE.match(arg)
        if prefix is None:
            self._queue(replies.MAIL_SYNTAX)
            return None
        try:
            path, param_text = split_path_argument(arg[prefix.end() :])
        except AddressError:
            self._queue(replies.BAD_MAIL_SYNTAX)
            return None
        try:
            params = self._mail_params(param_text)
        except ParamError as exc:
            self._queue(exc.reply)
            return None
        try:
            address = parse_reverse_path(path, utf8=params.smtputf8)
        except NonAsciiAddressError:
            self._queue(replies.UTF8_NOT_PERMITTED)
            return None
        except AddressError:
            self._queue(replies.BAD_MAIL_SYNTAX)
            return None
        return self._owe(_Owed.MAIL, MailFrom(address, params))

    def _mail_params(self, text: str) -> MailParams:
        if text and not self._extended:
            raise ParamError(replies.UNKNOWN_PARAMETER)  # no extensions after HELO
        cfg = self.config
        return parse_mail_params(
            text, max_size=cfg.max_message_size, smtputf8=cfg.smtputf8, dsn=cfg.dsn_enabled
        )

    def _cmd_rcpt(self, arg: str) -> Event | None:
        txn = self._txn
        if txn is None:
            self._queue(replies.NEED_MAIL)
            return None
        if txn.body is not None:
            self._queue(replies.RCPT_AFTER_BDAT)
            return None
        prefix = _TO_RE.match(arg)
        if prefix is None:
            self._queue(replies.RCPT_SYNTAX)
            return None
        try:
            path, param_text = split_path_argument(arg[prefix.end() :])
        except AddressError:
            self._queue(replies.BAD_RCPT_SYNTAX)
            return None
        try:
            if param_text and not self._extended:
                raise ParamError(replies.UNKNOWN_PARAMETER)
            params = parse_rcpt_params(param_text, dsn=self.config.dsn_enabled)
        except ParamError as exc:
            self._queue(exc.reply)
            return None
        try:
            address = parse_forward_path(path, utf8=txn.mail.params.smtputf8)
        except NonAsciiAddressError:
            self._queue(replies.UTF8_NOT_PERMITTED)
            return None
        except AddressError:
            self._queue(replies.BAD_RCPT_SYNTAX)
            return None
        if len(txn.recipients) >= self.config.max_recipients:
            self._queue(replies.TOO_MANY_RECIPIENTS)
            return None
        return self._owe(_Owed.RCPT, RcptTo(address, params))

    def _cmd_data(self, arg: str) -> Event | None:
        txn = self._txn
        if arg:
            self._queue(replies.BAD_ARGUMENTS)
        elif txn is None:
            self._queue(replies.NEED_MAIL)
        elif txn.body is not None:
            self._queue(replies.DATA_AFTER_BDAT)
        elif not txn.recipients:
            self._queue(replies.NO_VALID_RECIPIENTS)
        else:
            self._data = self._new_body(dot_stuffed=True)
            self._mode = _Mode.DATA
            self._queue(replies.START_DATA)
        return None

    def _cmd_bdat(self, arg: str) -> Event | None:
        if not self.config.chunking:
            self._queue(replies.UNKNOWN_COMMAND)
            return None
        match = _BDAT_RE.fullmatch(arg)
        if match is None:
            # The chunk octets that follow cannot be delimited: close (see module docstring).
            self._queue(replies.BDAT_SYNTAX)
            self._begin_close(replies.BDAT_SYNTAX)
            return None
        size = int(match.group(1))
        self._mode = _Mode.BDAT
        self._bdat_remaining = size
        self._bdat_size = size
        self._bdat_last = match.group(2) is not None
        self._bdat_refusal = None
        txn = self._txn
        if txn is None:
            self._bdat_refusal = replies.NEED_MAIL
        elif not txn.recipients:
            self._bdat_refusal = replies.NO_VALID_RECIPIENTS
        else:
            if txn.body is None:
                txn.body = self._new_body(dot_stuffed=False)
            self._data = txn.body
            txn.bdat_octets += size
            # Normalisation never shrinks BDAT octets, so this refusal is certain already.
            if txn.bdat_octets > self.config.max_message_size:
                txn.body.fail(replies.MESSAGE_TOO_BIG)
        return None

    def _cmd_rset(self, arg: str) -> Event | None:
        if arg:
            self._queue(replies.BAD_ARGUMENTS)
            return None
        self._reset_transaction()
        self._queue(replies.RESET_OK)
        return None

    def _cmd_noop(self, arg: str) -> Event | None:
        self._queue(replies.OK)
        return None

    def _cmd_quit(self, arg: str) -> Event | None:
        self._queue(replies.SERVICE_CLOSING)
        self._begin_close(replies.SERVICE_CLOSING)
        return None

    def _cmd_vrfy(self, arg: str) -> Event | None:
        self._queue(replies.VRFY_CANNOT_VERIFY if arg else replies.VRFY_SYNTAX)
        return None

    def _cmd_expn(self, arg: str) -> Event | None:
        self._queue(replies.NOT_IMPLEMENTED)
        return None

    def _cmd_help(self, arg: str) -> Event | None:
        self._queue(replies.HELP)
        return None

    def _cmd_starttls(self, arg: str) -> Event | None:
        if arg:
            self._queue(replies.BAD_ARGUMENTS)
        elif self._tls_active:
            self._queue(replies.TLS_ALREADY_ACTIVE)
        elif not self.config.tls_available:
            self._queue(replies.TLS_NOT_AVAILABLE)
        elif self._hello is None:
            self._queue(replies.EHLO_FIRST)
        elif self._txn is not None:
            self._queue(replies.TRANSACTION_IN_PROGRESS)
        else:
            return self._owe(_Owed.STARTTLS, StartTlsRequested())
        return None

    # RFC 4954 §4:
    #   auth-command = "AUTH" SP sasl-mech [SP initial-response]
    #                  *(CRLF [base64]) [CRLF cancel-response] CRLF
    #   initial-response = base64 / "="
    #   cancel-response = "*"
    def _cmd_auth(self, arg: str) -> Event | None:
        cfg = self.config
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip(" ")
        if not cfg.auth_mechanisms:
            self._queue(replies.AUTH_NOT_AVAILABLE)
        elif not self._extended:
            self._queue(replies.EHLO_FIRST)
        elif self._user is not None:
            self._queue(replies.ALREADY_AUTHENTICATED)
        elif self._txn is not None:
            self._queue(replies.TRANSACTION_IN_PROGRESS)
        elif cfg.auth_requires_tls and not self._tls_active:
            self._queue(replies.ENCRYPTION_REQUIRED)
        elif not mechanism or " " in initial:
            self._queue(replies.BAD_ARGUMENTS)
        elif mechanism not in cfg.auth_mechanisms:
            self._queue(replies.UNKNOWN_MECHANISM)
        elif mechanism == "PLAIN":
            self._auth = _AuthExchange("PLAIN", "plain")
            if initial:
                return self._auth_response(initial.encode("ascii", "replace"))
            self._queue(Reply(334, None, ""))
        else:  # LOGIN
            self._auth = _AuthExchange("LOGIN", "login-username")
            if initial:
                return self._auth_response(initial.encode("ascii", "replace"))
            self._queue(Reply(334, None, sasl.LOGIN_USERNAME_PROMPT))
        return None

    def _auth_response(self, line: bytes) -> Event | None:
        exchange = self._auth
        assert exchange is not None
        try:
            payload = sasl.decode_base64(line)
        except sasl.SaslCancelled:
            self._auth = None
            self._queue(replies.AUTH_CANCELLED)
            return None
        except sasl.SaslError:
            self._auth = None
            self._queue(replies.AUTH_BAD_BASE64)
            return None
        try:
            if exchange.step == "plain":
                credentials = sasl.parse_plain(payload)
            elif exchange.step == "login-username":
                exchange.username = sasl.decode_text(payload)
                exchange.step = "login-password"
                self._queue(Reply(334, None, sasl.LOGIN_PASSWORD_PROMPT))
                return None
            else:
                password = sasl.decode_text(payload)
                if not exchange.username or not password:
                    raise sasl.SaslError("empty username or password")
                credentials = sasl.Credentials("", exchange.username, password)
        except sasl.SaslError:
            self._auth = None
            self._queue(replies.AUTH_MALFORMED)
            return None
        self._auth = None
        return self._owe(_Owed.AUTH, AuthRequested(exchange.mechanism, credentials))

    _HANDLERS: Final = {
        "EHLO": _cmd_ehlo,
        "HELO": _cmd_helo,
        "MAIL": _cmd_mail,
        "RCPT": _cmd_rcpt,
        "DATA": _cmd_data,
        "BDAT": _cmd_bdat,
        "RSET": _cmd_rset,
        "NOOP": _cmd_noop,
        "QUIT": _cmd_quit,
        "VRFY": _cmd_vrfy,
        "EXPN": _cmd_expn,
        "HELP": _cmd_help,
        "STARTTLS": _cmd_starttls,
        "AUTH": _cmd_auth,
    }

    # ------------------------------------------------------------------ message data
    def _new_body(self, *, dot_stuffed: bool) -> BodyReader:
        cfg = self.config
        return BodyReader(
            dot_stuffed=dot_stuffed,
            max_size=cfg.max_message_size,
            max_line_length=cfg.max_data_line_length,
            max_received=cfg.max_received_headers,
        )

    def _step_data(self) -> Event | Sentinel | None:
        body = self._data
        assert body is not None
        if body.done:
            return self._finish_message(body)
        if not self._in:
            return NEED_DATA
        consumed = body.feed(self._in, min(len(self._in), self.config.data_chunk_size))
        del self._in[:consumed]
        chunk = body.take()
        return DataChunk(chunk) if chunk else None

    def _step_bdat(self) -> Event | Sentinel | None:
        if self._bdat_remaining:
            if not self._in:
                return NEED_DATA
            take = min(self._bdat_remaining, len(self._in), self.config.data_chunk_size)
            self._bdat_remaining -= take
            if self._bdat_refusal is None:
                assert self._data is not None
                self._data.feed(self._in, take)
                del self._in[:take]
                chunk = self._data.take()
                return DataChunk(chunk) if chunk else None
            del self._in[:take]
            return None
        # The chunk is complete.
        self._mode = _Mode.COMMAND
        if self._bdat_refusal is not None:
            self._reset_transaction()
            self._queue(self._bdat_refusal)
            return None
        body = self._data
        assert body is not None
        if self._bdat_last:
            if not body.done:
                body.finish()
                chunk = body.take()
                if chunk:
                    self._mode = _Mode.BDAT  # come back here to finish the message
                    return DataChunk(chunk)
            return self._finish_message(body)
        if body.error is not None:
            return self._abort_message(body.error)
        self._queue(Reply(250, "2.0.0", f"{self._bdat_size} octets received"))
        return None

    def _finish_message(self, body: BodyReader) -> Event:
        self._mode = _Mode.COMMAND
        self._data = None
        if body.error is not None:
            return self._abort_message(body.error)
        txn = self._txn
        assert txn is not None
        event = DataComplete(
            body.size, body.received_count, Envelope(txn.mail, tuple(txn.recipients))
        )
        return self._owe(_Owed.DATA, event)

    def _abort_message(self, reply: Reply) -> Event:
        self._data = None
        self._reset_transaction()
        self._queue(reply)
        return DataAborted(reply)
