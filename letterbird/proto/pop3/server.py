"""Sans-IO POP3 server core: bytes in, events and reply bytes out (h11 style).

Implements RFC 1939 (POP3: AUTHORIZATION → TRANSACTION → UPDATE; USER/PASS, STAT, LIST, RETR,
DELE, NOOP, RSET, QUIT, TOP, UIDL; no APOP), RFC 2449 (CAPA, response codes, PIPELINING,
EXPIRE, LOGIN-DELAY, IMPLEMENTATION, the 255-octet command floor), RFC 2595 §4 (STLS, with the
CVE-2011-0411 rule: bytes received after STLS and before the handshake are discarded),
RFC 3206 (``[SYS/TEMP]``, ``[SYS/PERM]``, ``[AUTH]``, AUTH-RESP-CODE) and RFC 5034 (SASL AUTH:
PLAIN per RFC 4616, and the de-facto LOGIN).

Hand-written on purpose: no maintained Python POP3 server library exists, and a sans-IO core
lets every edge case (pipelining, over-long lines, STLS injection, dot-stuffing) be tested with
plain bytes. The core never does I/O, never reads the clock and never touches storage: the edge
feeds ``receive_data``, loops ``next_event()`` until :data:`NEED_DATA`, answers each event with
the method the event names, and writes ``data_to_send()``.

Usage errors by the edge (answering an event that was not asked, calling ``next_event`` while
an event is unanswered, an invalid maildrop) raise :class:`Pop3UsageError` or ``ValueError``.
Nothing the client sends raises: bad input is answered ``-ERR``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypeAlias

from letterbird.proto import sasl
from letterbird.proto.pop3 import replies as r
from letterbird.proto.pop3.events import (
    NEED_DATA,
    CloseConnection,
    LoginRequested,
    NextEvent,
    RetrieveRequested,
    StlsRequested,
    UpdateRequested,
)
from letterbird.proto.pop3.grammar import (
    Command,
    parse_command,
    parse_number,
    strip_eol,
    valid_uid,
)
from letterbird.proto.pop3.message import MessageStuffer

__all__ = [
    "LoginFailure",
    "Pop3UsageError",
    "ServerConfig",
    "ServerConnection",
    "State",
]

# RFC 2449 §4: "Servers which support the CAPA command MUST support commands up to 255 octets"
MIN_COMMAND_LINE = 255
# RFC 2449 §6.9: "IMPLEMENTATION implementation-string"; printable, no CR/LF, kept short.
_TEXT_RE = re.compile(r"[\x20-\x7e]{1,200}")
# RFC 2449 §6.7: "EXPIRE policy [SP USER]", policy = "NEVER" or a number of days.
_EXPIRE_RE = re.compile(r"NEVER|[0-9]{1,9}")

_SASL_MECHANISMS = ("PLAIN", "LOGIN")


class State(Enum):
    """Session state (RFC 1939 §3); CLOSED once the session is over."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class LoginFailure(StrEnum):
    """Why a login failed, as ``login_failed`` takes it: the RFC 2449/3206 response code."""

    AUTH = "AUTH"
    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"


_LOGIN_FAILURE_REPLIES = {
    LoginFailure.AUTH: r.ERR_LOGIN_AUTH,
    LoginFailure.IN_USE: r.ERR_LOGIN_IN_USE,
    LoginFailure.LOGIN_DELAY: r.ERR_LOGIN_DELAY,
    LoginFailure.SYS_TEMP: r.ERR_LOGIN_SYS_TEMP,
    LoginFailure.SYS_PERM: r.ERR_LOGIN_SYS_PERM,
}


class Pop3UsageError(RuntimeError):
    """The edge called the core out of turn (a bug in the edge, never caused by the client)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Per-listener POP3 settings; every limit has a default and is checked on construction.

    ``plaintext_allowed`` False refuses USER/PASS and SASL PLAIN/LOGIN until TLS is active
    (RFC 2595 §2.2), and CAPA then leaves them out. ``max_line_length`` counts the CRLF;
    ``max_auth_line_length`` applies to AUTH command lines and SASL responses (a PLAIN response
    with long UTF-8 fields exceeds 512 octets); ``max_buffer_size`` bounds received but not yet
    processed input; ``max_errors`` client errors (bad commands, failed logins) close the
    session. ``expire`` and ``login_delay`` are only announced in CAPA; the edge enforces them.
    """

    implementation: str = "Letterbird"
    greeting: str = "POP3 server ready"
    tls_available: bool = False
    tls_active: bool = False
    plaintext_allowed: bool = False
    max_line_length: int = 512
    max_auth_line_length: int = 8192
    max_buffer_size: int = 256 * 1024
    max_errors: int = 10
    expire: str = "NEVER"
    login_delay: int = 0

    def __post_init__(self) -> None:
        if _TEXT_RE.fullmatch(self.implementation) is None:
            raise ValueError("implementation must be 1-200 printable ASCII characters")
        if _TEXT_RE.fullmatch(self.greeting) is None or "<" in self.greeting:
            # a "<...>" in the greeting is an APOP timestamp (RFC 1939 §7); no APOP here
            raise ValueError("greeting must be 1-200 printable ASCII characters without '<'")
        if self.max_line_length < MIN_COMMAND_LINE:
            raise ValueError(f"max_line_length must be at least {MIN_COMMAND_LINE} (RFC 2449 §4)")
        if self.max_auth_line_length < self.max_line_length:
            raise ValueError("max_auth_line_length must be at least max_line_length")
        if self.max_buffer_size < self.max_auth_line_length:
            raise ValueError("max_buffer_size must be at least max_auth_line_length")
        if self.max_errors < 1:
            raise ValueError("max_errors must be at least 1")
        if _EXPIRE_RE.fullmatch(self.expire) is None:
            raise ValueError("expire must be NEVER or a number of days")
        if not 0 <= self.login_delay <= 999_999_999:
            raise ValueError("login_delay must be a number of seconds >= 0")


class _Awaiting(Enum):
    """Which answer from the edge the core is waiting for."""

    LOGIN = "login"
    STLS = "stls"
    RETRIEVE = "retrieve"
    MESSAGE = "message data"  # send_message_part() under way
    UPDATE = "update"


@dataclass(slots=True)
class _SaslExchange:
    mechanism: str
    username: str | None = None  # LOGIN: set once the username response arrived


# An over-long line is queued as this marker instead of its bytes.
_TOO_LONG = None
_Line: TypeAlias = bytes | None
_Handler: TypeAlias = Callable[["ServerConnection", Command], NextEvent | None]


class ServerConnection:
    """One POP3 session, server side. See the module docstring for the edge's loop.

    Answer methods (``login_succeeded``, ``login_failed``, ``reply_stls_ok``,
    ``reply_stls_failed``, ``send_message``, ``send_message_part``, ``message_vanished``,
    ``update_done``) called after the session closed (``timeout()`` while the edge was busy)
    are ignored.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config if config is not None else ServerConfig()
        self._state = State.AUTHORIZATION
        self._tls_active = self.config.tls_active
        self._tls_pending = False
        self._out: list[bytes] = [r.OK_GREETING.fmt_bytes(greeting=self.config.greeting)]
        # input: complete lines (or _TOO_LONG markers) waiting to be processed, and the tail
        self._lines: deque[_Line] = deque()
        self._queued = 0
        self._tail = bytearray()
        self._discarding = False
        # dialogue
        self._awaiting: _Awaiting | None = None
        self._retrieve: RetrieveRequested | None = None
        self._stuffer: MessageStuffer | None = None  # the message being sent in parts
        self._user: str | None = None
        self._sasl: _SaslExchange | None = None
        self._errors = 0
        self._close_reason = ""
        self._close_reported = False
        # the maildrop snapshot (TRANSACTION)
        self._sizes: list[int] = []
        self._uids: list[str] = []
        self._deleted: set[int] = set()  # 0-based
        self._total_octets = 0
        self._deleted_octets = 0

    # --- inspection ---------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    # --- bytes in and out ---------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the client (any chunking; ``b""`` is a no-op).

        Lines are queued for ``next_event``; an over-long line is dropped as it arrives (never
        buffered whole) and answered ``-ERR`` in its turn. Input while TLS is being negotiated
        and after the session closed is discarded.
        """
        if self._state is State.CLOSED or self._tls_pending:
            return
        pos = 0
        end = len(data)
        while pos < end:
            nl = data.find(b"\n", pos)
            if nl < 0:
                if not self._discarding:
                    self._tail += data[pos:]
                    if len(self._tail) > self._line_limit(self._tail):
                        self._tail.clear()
                        self._discarding = True
                        self._enqueue(_TOO_LONG)
                return
            if self._discarding:
                self._discarding = False
            else:
                if self._tail:
                    self._tail += data[pos : nl + 1]
                    line = bytes(self._tail)
                    self._tail.clear()
                else:
                    line = data[pos : nl + 1]
                if not self._enqueue(line if len(line) <= self._line_limit(line) else _TOO_LONG):
                    return
            pos = nl + 1

    def data_to_send(self) -> bytes:
        """The bytes to write to the client now (then forgotten by the core)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> NextEvent:
        """Process queued input up to the next event; :data:`NEED_DATA` when none is left.

        Raises :class:`Pop3UsageError` when the previous event has not been answered.
        """
        if self._awaiting is not None:
            raise Pop3UsageError(f"answer the pending {self._awaiting.value} event first")
        while True:
            if self._state is State.CLOSED:
                if self._close_reported:
                    return NEED_DATA
                self._close_reported = True
                return CloseConnection(self._close_reason)
            if not self._lines:  # (always empty while TLS is pending: see reply_stls_ok)
                return NEED_DATA
            item = self._lines.popleft()
            self._queued -= self._cost(item)
            event = self._process(item)
            if event is not None:
                return event

    def timeout(self) -> None:
        """The autologout timer expired (RFC 1939 §3): close without entering UPDATE."""
        if self._state is not State.CLOSED:
            self._send(r.ERR_AUTOLOGOUT)
            self._close("autologout timer expired")

    # --- answers to events --------------------------------------------------------------------
    def login_succeeded(self, maildrop: Iterable[tuple[int, str]]) -> None:
        """Answer :class:`LoginRequested`: enter TRANSACTION with this maildrop snapshot.

        ``maildrop`` lists ``(size, uid)`` in message-number order; sizes are the CRLF octet
        counts LIST and STAT report, uids are RFC 1939 unique-ids (1-70 chars 0x21-0x7E),
        unique within the maildrop. Raises ``ValueError`` for an invalid maildrop.
        """
        if not self._check_answer(_Awaiting.LOGIN):
            return
        sizes: list[int] = []
        uids: list[str] = []
        for size, uid in maildrop:
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"invalid message size {size!r}")
            if not isinstance(uid, str) or not valid_uid(uid):
                raise ValueError(f"invalid unique-id {uid!r}")
            sizes.append(size)
            uids.append(uid)
        if len(set(uids)) != len(uids):
            raise ValueError("unique-ids must be unique within the maildrop")
        self._awaiting = None
        self._sizes = sizes
        self._uids = uids
        self._total_octets = sum(sizes)
        self._state = State.TRANSACTION
        self._out.append(r.OK_LOGGED_IN.fmt_bytes(count=len(sizes), octets=self._total_octets))

    def login_failed(self, code: LoginFailure | str = LoginFailure.AUTH) -> None:
        """Answer :class:`LoginRequested` with ``-ERR [code] ...``; stays in AUTHORIZATION."""
        if not self._check_answer(_Awaiting.LOGIN):
            return
        reply = _LOGIN_FAILURE_REPLIES[LoginFailure(code)]
        self._awaiting = None
        self._fail(reply)

    def reply_stls_ok(self) -> None:
        """Answer :class:`StlsRequested`: ``+OK``; then write, handshake, ``tls_established()``."""
        if not self._check_answer(_Awaiting.STLS):
            return
        self._awaiting = None
        self._send(r.OK_STLS)
        self._tls_pending = True
        self._drop_input()

    def reply_stls_failed(self) -> None:
        """Answer :class:`StlsRequested` when TLS cannot start now: ``-ERR [SYS/TEMP]``."""
        if not self._check_answer(_Awaiting.STLS):
            return
        self._awaiting = None
        self._send(r.ERR_STLS_FAILED)

    def tls_established(self) -> None:
        """The TLS handshake after STLS completed: discard all plaintext input since STLS.

        RFC 2595 §4 / CVE-2011-0411: commands pipelined after STLS were sent in plaintext and
        must not be executed inside the TLS session. The session restarts in AUTHORIZATION.
        """
        if self._state is State.CLOSED:
            return
        if not self._tls_pending:
            raise Pop3UsageError("tls_established() without reply_stls_ok()")
        self._tls_pending = False
        self._tls_active = True
        # nothing to drop: reply_stls_ok() dropped the queue and receive_data() has discarded
        # everything since

    def send_message(self, data: bytes) -> None:
        """Answer :class:`RetrieveRequested` with the whole message (CRLF line endings).

        The core writes ``+OK``, truncates for TOP, byte-stuffs, ends the data with CRLF and
        appends the terminating ``.`` line. The same as one ``send_message_part(data,
        last=True)``.
        """
        self.send_message_part(data, last=True)

    def send_message_part(self, data: bytes, last: bool = False) -> bool:
        """Answer :class:`RetrieveRequested` with the message in consecutive parts (streaming).

        The first call queues ``+OK``; every call queues its part byte-stuffed, so the edge can
        write ``data_to_send()`` (waiting for the client to read it) before it reads the next
        part: a big message never has to be in memory at once. Parts may have any size (a line
        may span parts; ``b""`` is allowed); ``last=True`` says the message ends with this
        part. The output is exactly what :meth:`send_message` gives for the whole message.

        Returns True when the response is complete (the terminating ``.`` is queued): after
        the last part, or for TOP as soon as the header and the asked body lines are out, so
        the edge reads no further. Until then the event stays pending: ``next_event()`` and
        ``message_vanished()`` raise :class:`Pop3UsageError` (the ``+OK`` is out); an edge
        that cannot finish the message (a storage error) must close the connection. Ignored
        (returns True) once the session is closed.
        """
        stuffer = self._stuffer
        if stuffer is None:
            if not self._check_answer(_Awaiting.RETRIEVE):
                return True
            event = self._retrieve
            assert event is not None
            if event.top_lines is None:
                self._out.append(r.OK_RETR.fmt_bytes(size=event.size))
            else:
                self._send(r.OK_TOP)
            stuffer = self._stuffer = MessageStuffer(event.top_lines)
            self._awaiting = _Awaiting.MESSAGE
        self._out.extend(stuffer.feed(data, last))
        if not stuffer.done:
            return False
        self._stuffer = None
        self._awaiting = None
        self._retrieve = None
        return True

    def message_vanished(self) -> None:
        """Answer :class:`RetrieveRequested` when the message was expunged meanwhile."""
        if not self._check_answer(_Awaiting.RETRIEVE):
            return
        self._awaiting = None
        self._retrieve = None
        self._send(r.ERR_MESSAGE_VANISHED)

    def update_done(self, ok: bool) -> None:
        """Answer :class:`UpdateRequested`: sign off (``-ERR [SYS/TEMP]`` if not ``ok``), close."""
        if not self._check_answer(_Awaiting.UPDATE):
            return
        self._awaiting = None
        if not ok:
            self._send(r.ERR_UPDATE_FAILED)
        else:
            left = len(self._sizes) - len(self._deleted)
            if left:
                self._out.append(r.OK_SIGNING_OFF_LEFT.fmt_bytes(count=left))
            else:
                self._send(r.OK_SIGNING_OFF_EMPTY)
        self._close("quit")

    # --- input plumbing -----------------------------------------------------------------------
    def _line_limit(self, line: bytes | bytearray) -> int:
        if self._sasl is not None or line[:5].upper() == b"AUTH ":
            return self.config.max_auth_line_length
        return self.config.max_line_length

    def _cost(self, item: _Line) -> int:
        return self.config.max_line_length if item is None else len(item)

    def _enqueue(self, item: _Line) -> bool:
        self._lines.append(item)
        self._queued += self._cost(item)
        if self._queued > self.config.max_buffer_size:
            self._send(r.ERR_INPUT_OVERFLOW)
            self._close("too much pipelined input")
            return False
        return True

    def _drop_input(self) -> None:
        self._lines.clear()
        self._queued = 0
        self._tail.clear()
        self._discarding = False

    def _check_answer(self, kind: _Awaiting) -> bool:
        if self._state is State.CLOSED:
            return False
        if self._awaiting is not kind:
            pending = "no" if self._awaiting is None else f"the {self._awaiting.value}"
            raise Pop3UsageError(f"{kind.value} answer given but {pending} event is pending")
        return True

    # --- replies ------------------------------------------------------------------------------
    def _send(self, reply: r.Reply) -> None:
        self._out.append(reply.to_bytes())

    def _fail(self, reply: r.Reply, *, counts: bool = True) -> None:
        """Send an ``-ERR``; a client error (``counts``) brings the session closer to its end."""
        self._send(reply)
        if counts:
            self._errors += 1
            if self._errors >= self.config.max_errors:
                self._send(r.ERR_TOO_MANY_ERRORS)
                self._close("too many errors")

    def _close(self, reason: str) -> None:
        self._state = State.CLOSED
        self._close_reason = reason
        self._awaiting = None
        self._retrieve = None
        self._stuffer = None
        self._sasl = None
        self._tls_pending = False
        self._drop_input()

    def _await(self, kind: _Awaiting, event: NextEvent) -> NextEvent:
        self._awaiting = kind
        return event

    @property
    def _plaintext_ok(self) -> bool:
        return self.config.plaintext_allowed or self._tls_active

    # --- dispatch -----------------------------------------------------------------------------
    def _process(self, item: _Line) -> NextEvent | None:
        if item is None:
            self._sasl = None
            self._user = None
            self._fail(r.ERR_LINE_TOO_LONG)
            return None
        line = strip_eol(item)
        if self._sasl is not None:
            return self._sasl_step(line)
        command = parse_command(line)
        if command is None:
            self._user = None
            self._fail(r.ERR_UNKNOWN_COMMAND)
            return None
        if command.keyword != "PASS":
            # RFC 1939 §7: PASS "may only be given ... immediately after a successful USER"
            self._user = None
        table = _AUTHORIZATION if self._state is State.AUTHORIZATION else _TRANSACTION
        handler = table.get(command.keyword)
        if handler is None:
            known = command.keyword in _AUTHORIZATION or command.keyword in _TRANSACTION
            self._fail(r.ERR_WRONG_STATE if known else r.ERR_UNKNOWN_COMMAND)
            return None
        return handler(self, command)

    def _args(self, command: Command, least: int, most: int) -> tuple[str, ...] | None:
        params = command.params
        if params is None or not least <= len(params) <= most:
            self._fail(r.ERR_SYNTAX)
            return None
        return params

    # --- AUTHORIZATION (RFC 1939 §4, §7; RFC 2595 §4; RFC 5034 §4) ---------------------------
    def _cmd_user(self, command: Command) -> None:
        args = self._args(command, 1, 1)
        if args is None:
            return
        if not self._plaintext_ok:
            self._fail(r.ERR_PLAINTEXT_DISABLED)
            return
        self._user = args[0]
        self._send(r.OK_USER)

    def _cmd_pass(self, command: Command) -> NextEvent | None:
        username = self._user
        self._user = None
        if username is None:
            self._fail(r.ERR_PASS_WITHOUT_USER)
            return None
        if command.params == ():
            self._fail(r.ERR_SYNTAX)
            return None
        # no plaintext check needed: USER checked it, and it can only become allowed since
        if command.rest is None:
            self._fail(r.ERR_BAD_CREDENTIALS_ENCODING)
            return None
        return self._await(_Awaiting.LOGIN, LoginRequested(username, command.rest, "USER"))

    def _mechanisms(self) -> tuple[str, ...]:
        return _SASL_MECHANISMS if self._plaintext_ok else ()

    def _cmd_auth(self, command: Command) -> NextEvent | None:
        args = self._args(command, 0, 2)
        if args is None:
            return None
        if not args:
            mechanisms = (m.encode("ascii") for m in self._mechanisms())
            self._out.append(r.multiline(r.OK_AUTH_MECHANISMS, mechanisms))
            return None
        mechanism = args[0].upper()
        if mechanism not in _SASL_MECHANISMS:
            self._fail(r.ERR_UNSUPPORTED_MECHANISM)
            return None
        if not self._plaintext_ok:
            self._fail(r.ERR_PLAINTEXT_DISABLED)
            return None
        self._sasl = _SaslExchange(mechanism)
        if len(args) == 2:
            return self._sasl_step(args[1].encode("utf-8"))
        if mechanism == "PLAIN":
            self._out.append(r.continuation())
        else:
            self._out.append(r.continuation(sasl.LOGIN_USERNAME_PROMPT))
        return None

    def _sasl_step(self, response: bytes) -> NextEvent | None:
        exchange = self._sasl
        assert exchange is not None
        self._sasl = None
        try:
            payload = sasl.decode_base64(response)
        except sasl.SaslCancelled:
            self._fail(r.ERR_AUTH_CANCELLED)
            return None
        except sasl.SaslError:
            self._fail(r.ERR_BAD_BASE64)
            return None
        try:
            if exchange.mechanism == "PLAIN":
                creds = sasl.parse_plain(payload)
                event = LoginRequested(creds.username, creds.password, "PLAIN", creds.authzid)
                return self._await(_Awaiting.LOGIN, event)
            text = sasl.decode_text(payload)
        except sasl.SaslError:
            self._fail(r.ERR_BAD_SASL_MESSAGE)
            return None
        if not text:
            self._fail(r.ERR_BAD_SASL_MESSAGE)
            return None
        if exchange.username is None:
            self._sasl = _SaslExchange("LOGIN", text)
            self._out.append(r.continuation(sasl.LOGIN_PASSWORD_PROMPT))
            return None
        return self._await(_Awaiting.LOGIN, LoginRequested(exchange.username, text, "LOGIN"))

    def _cmd_stls(self, command: Command) -> NextEvent | None:
        if self._args(command, 0, 0) is None:
            return None
        if self._tls_active:
            self._fail(r.ERR_STLS_ACTIVE)
            return None
        if not self.config.tls_available:
            self._fail(r.ERR_STLS_UNAVAILABLE)
            return None
        return self._await(_Awaiting.STLS, StlsRequested())

    def _cmd_capa(self, command: Command) -> None:
        if self._args(command, 0, 0) is None:
            return
        config = self.config
        caps = [b"TOP", b"UIDL"]
        if self._plaintext_ok:
            caps.append(b"USER")
            caps.append(("SASL " + " ".join(_SASL_MECHANISMS)).encode("ascii"))
        caps += [
            b"RESP-CODES",
            b"AUTH-RESP-CODE",
            b"PIPELINING",
            f"EXPIRE {config.expire}".encode("ascii"),
            f"LOGIN-DELAY {config.login_delay}".encode("ascii"),
            f"IMPLEMENTATION {config.implementation}".encode("ascii"),
        ]
        if self._state is State.AUTHORIZATION and config.tls_available and not self._tls_active:
            caps.append(b"STLS")
        self._out.append(r.multiline(r.OK_CAPA, caps))

    def _cmd_quit(self, command: Command) -> NextEvent | None:
        if self._args(command, 0, 0) is None:
            return None
        if self._state is State.AUTHORIZATION:
            self._send(r.OK_SIGNING_OFF)
            self._close("quit")
            return None
        self._state = State.UPDATE
        deleted = tuple(self._uids[i] for i in sorted(self._deleted))
        return self._await(_Awaiting.UPDATE, UpdateRequested(deleted))

    # --- TRANSACTION (RFC 1939 §5, §7) --------------------------------------------------------
    def _message(self, text: str) -> int | None:
        """The 0-based index of a live message named by ``text``; ``None`` after an ``-ERR``."""
        number = parse_number(text)
        if number is None:
            self._fail(r.ERR_SYNTAX)
            return None
        if not 1 <= number <= len(self._sizes):
            self._fail(r.ERR_NO_SUCH_MESSAGE, counts=False)
            return None
        if number - 1 in self._deleted:
            self._fail(r.ERR_ALREADY_DELETED.fmt(index=number), counts=False)
            return None
        return number - 1

    def _live(self) -> Iterable[int]:
        deleted = self._deleted
        if not deleted:
            return range(len(self._sizes))
        return (i for i in range(len(self._sizes)) if i not in deleted)

    def _cmd_stat(self, command: Command) -> None:
        if self._args(command, 0, 0) is None:
            return
        count = len(self._sizes) - len(self._deleted)
        octets = self._total_octets - self._deleted_octets
        self._out.append(r.OK_STAT.fmt_bytes(count=count, octets=octets))

    def _cmd_list(self, command: Command) -> None:
        args = self._args(command, 0, 1)
        if args is None:
            return
        if args:
            index = self._message(args[0])
            if index is not None:
                self._out.append(r.OK_SCAN.fmt_bytes(index=index + 1, size=self._sizes[index]))
            return
        sizes = self._sizes
        count = len(sizes) - len(self._deleted)
        octets = self._total_octets - self._deleted_octets
        lines = [b"%d %d" % (i + 1, sizes[i]) for i in self._live()]
        self._out.append(r.multiline(r.OK_LIST_ALL.fmt(count=count, octets=octets), lines))

    def _cmd_uidl(self, command: Command) -> None:
        args = self._args(command, 0, 1)
        if args is None:
            return
        if args:
            index = self._message(args[0])
            if index is not None:
                self._out.append(r.OK_UIDL_ONE.fmt_bytes(index=index + 1, uid=self._uids[index]))
            return
        uids = self._uids
        lines = [f"{i + 1} {uids[i]}".encode("ascii") for i in self._live()]
        self._out.append(r.multiline(r.OK_UIDL_ALL, lines))

    def _retrieve_event(self, index: int, top_lines: int | None) -> NextEvent:
        event = RetrieveRequested(index + 1, self._uids[index], self._sizes[index], top_lines)
        self._retrieve = event
        return self._await(_Awaiting.RETRIEVE, event)

    def _cmd_retr(self, command: Command) -> NextEvent | None:
        args = self._args(command, 1, 1)
        if args is None:
            return None
        index = self._message(args[0])
        if index is None:
            return None
        return self._retrieve_event(index, None)

    def _cmd_top(self, command: Command) -> NextEvent | None:
        args = self._args(command, 2, 2)
        if args is None:
            return None
        top_lines = parse_number(args[1])
        if top_lines is None or parse_number(args[0]) is None:
            self._fail(r.ERR_SYNTAX)
            return None
        index = self._message(args[0])
        if index is None:
            return None
        return self._retrieve_event(index, top_lines)

    def _cmd_dele(self, command: Command) -> None:
        args = self._args(command, 1, 1)
        if args is None:
            return
        index = self._message(args[0])
        if index is None:
            return
        self._deleted.add(index)
        self._deleted_octets += self._sizes[index]
        self._out.append(r.OK_DELE.fmt_bytes(index=index + 1))

    def _cmd_noop(self, command: Command) -> None:
        if self._args(command, 0, 0) is not None:
            self._send(r.OK_NOOP)

    def _cmd_rset(self, command: Command) -> None:
        if self._args(command, 0, 0) is None:
            return
        self._deleted.clear()
        self._deleted_octets = 0
        self._out.append(r.OK_RSET.fmt_bytes(count=len(self._sizes), octets=self._total_octets))


_AUTHORIZATION: dict[str, _Handler] = {
    "USER": ServerConnection._cmd_user,
    "PASS": ServerConnection._cmd_pass,
    "AUTH": ServerConnection._cmd_auth,
    "STLS": ServerConnection._cmd_stls,
    "CAPA": ServerConnection._cmd_capa,
    "QUIT": ServerConnection._cmd_quit,
}
_TRANSACTION: dict[str, _Handler] = {
    "STAT": ServerConnection._cmd_stat,
    "LIST": ServerConnection._cmd_list,
    "RETR": ServerConnection._cmd_retr,
    "DELE": ServerConnection._cmd_dele,
    "NOOP": ServerConnection._cmd_noop,
    "RSET": ServerConnection._cmd_rset,
    "TOP": ServerConnection._cmd_top,
    "UIDL": ServerConnection._cmd_uidl,
    "CAPA": ServerConnection._cmd_capa,
    "QUIT": ServerConnection._cmd_quit,
}
