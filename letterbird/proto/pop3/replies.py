"""POP3 replies as values (RFC 1939 status indicators, RFC 2449/3206 response codes).

Every line the POP3 core sends is built from a :class:`Reply` constant defined here, so the wording
lives in one place and tests can compare against the same values the server uses.

RFC 2449 §3 grammar of a single-line response::

    single-line  =  status [SP text] CRLF       ;512 octets maximum
    status       =  "+OK" / "-ERR"
    text         =  *schar / resp-code *CHAR
    resp-code    =  "[" resp-level *("/" resp-level) "]"
    resp-level   =  1*rchar
    rchar        =  %x21-2E / %x30-5C / %x5E-7F
                        ;printable ASCII, excluding "/" and "]"
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "CRLF",
    "Reply",
    "RespCode",
    "continuation",
    "multiline",
]

CRLF = b"\r\n"
TERMINATOR = b".\r\n"


class RespCode(StrEnum):
    """Response codes in square brackets after ``-ERR`` (RFC 2449 §8, RFC 3206)."""

    IN_USE = "IN-USE"  # RFC 2449 §8.1.1: the maildrop is locked by another session
    LOGIN_DELAY = "LOGIN-DELAY"  # RFC 2449 §8.1.2: logged in too recently
    SYS_TEMP = "SYS/TEMP"  # RFC 3206 §4: temporary system problem
    SYS_PERM = "SYS/PERM"  # RFC 3206 §4: permanent system problem
    AUTH = "AUTH"  # RFC 3206 §5: problem with the credentials


@dataclass(frozen=True, slots=True)
class Reply:
    """One status line: ``+OK``/``-ERR``, an optional response code and a text.

    ``text`` may hold ``str.format`` placeholders; fill them with :meth:`fmt`.
    """

    ok: bool
    text: str
    code: RespCode | None = None

    def fmt(self, **values: object) -> Reply:
        """This reply with its placeholders filled (values are numbers, never client text)."""
        # not dataclasses.replace: that costs several times more, once per RETR/DELE/LIST n
        return Reply(self.ok, self.text.format(**values), self.code)

    def to_bytes(self) -> bytes:
        return self._render(self.text)

    def fmt_bytes(self, **values: object) -> bytes:
        """``fmt(**values).to_bytes()`` without building the intermediate reply."""
        return self._render(self.text.format(**values))

    def _render(self, text: str) -> bytes:
        status = "+OK" if self.ok else "-ERR"
        code = f" [{self.code}]" if self.code is not None else ""
        sep = " " if text else ""
        return f"{status}{code}{sep}{text}\r\n".encode("ascii")


def multiline(first: Reply, lines: Iterable[bytes]) -> bytes:
    """A multi-line response (RFC 1939 §3): status line, CRLF-terminated lines, ``.``.

    ``lines`` must not contain CR or LF and must not start with ``.`` (the callers only pass
    numbers, unique-ids and capability names, none of which can).
    """
    body = CRLF.join(lines)
    if body:
        return b"".join((first.to_bytes(), body, CRLF, TERMINATOR))
    return first.to_bytes() + TERMINATOR


# --- greeting and sign-off (RFC 1939 §4, §6) -------------------------------------------------
OK_GREETING = Reply(True, "{greeting}")
OK_SIGNING_OFF = Reply(True, "POP3 server signing off")
OK_SIGNING_OFF_EMPTY = Reply(True, "POP3 server signing off (maildrop empty)")
OK_SIGNING_OFF_LEFT = Reply(True, "POP3 server signing off ({count} messages left)")
ERR_UPDATE_FAILED = Reply(False, "some deleted messages not removed", RespCode.SYS_TEMP)
ERR_AUTOLOGOUT = Reply(False, "autologout timer expired, closing connection")
ERR_TOO_MANY_ERRORS = Reply(False, "too many errors, closing connection")
ERR_INPUT_OVERFLOW = Reply(False, "too much pipelined input, closing connection")

# --- generic errors (RFC 2449 §3: "respond to an unrecognized, unimplemented, or
# syntactically invalid command by responding with a negative status indicator") ------------
ERR_UNKNOWN_COMMAND = Reply(False, "unknown command")
ERR_WRONG_STATE = Reply(False, "command not valid in this state")
ERR_SYNTAX = Reply(False, "syntax error")
ERR_LINE_TOO_LONG = Reply(False, "line too long")

# --- AUTHORIZATION (RFC 1939 §7, RFC 2595 §4, RFC 5034 §4, RFC 3206) -------------------------
OK_USER = Reply(True, "send PASS")
ERR_PASS_WITHOUT_USER = Reply(False, "give USER first")
ERR_PLAINTEXT_DISABLED = Reply(
    False, "plaintext authentication disallowed without TLS, use STLS", RespCode.AUTH
)
ERR_BAD_CREDENTIALS_ENCODING = Reply(False, "authentication failed", RespCode.AUTH)
OK_AUTH_MECHANISMS = Reply(True, "supported SASL mechanisms follow")
ERR_UNSUPPORTED_MECHANISM = Reply(False, "unsupported authentication mechanism")
ERR_AUTH_CANCELLED = Reply(False, "authentication cancelled")
ERR_BAD_BASE64 = Reply(False, "invalid base64 in SASL response")
ERR_BAD_SASL_MESSAGE = Reply(False, "malformed SASL response", RespCode.AUTH)
OK_LOGGED_IN = Reply(True, "maildrop has {count} messages ({octets} octets)")

# login_failed() codes, in RFC 3206 / RFC 2449 wording
ERR_LOGIN_AUTH = Reply(False, "authentication failed", RespCode.AUTH)
ERR_LOGIN_IN_USE = Reply(False, "maildrop is locked by another session", RespCode.IN_USE)
ERR_LOGIN_DELAY = Reply(False, "logged in too recently, try later", RespCode.LOGIN_DELAY)
ERR_LOGIN_SYS_TEMP = Reply(False, "temporary system problem, try later", RespCode.SYS_TEMP)
ERR_LOGIN_SYS_PERM = Reply(False, "permanent system problem", RespCode.SYS_PERM)

# --- STLS (RFC 2595 §4) ----------------------------------------------------------------------
OK_STLS = Reply(True, "Begin TLS negotiation")
ERR_STLS_UNAVAILABLE = Reply(False, "STLS not available")
ERR_STLS_ACTIVE = Reply(False, "TLS already active")
ERR_STLS_FAILED = Reply(False, "TLS not available now, try later", RespCode.SYS_TEMP)

# --- CAPA (RFC 2449 §5) ----------------------------------------------------------------------
OK_CAPA = Reply(True, "capability list follows")

# --- TRANSACTION (RFC 1939 §5) ---------------------------------------------------------------
OK_STAT = Reply(True, "{count} {octets}")
OK_LIST_ALL = Reply(True, "{count} messages ({octets} octets)")
OK_SCAN = Reply(True, "{index} {size}")
OK_UIDL_ALL = Reply(True, "unique-id listing follows")
OK_UIDL_ONE = Reply(True, "{index} {uid}")
OK_RETR = Reply(True, "{size} octets")
OK_TOP = Reply(True, "top of message follows")
OK_DELE = Reply(True, "message {index} deleted")
OK_RSET = Reply(True, "maildrop has {count} messages ({octets} octets)")
OK_NOOP = Reply(True, "")
ERR_NO_SUCH_MESSAGE = Reply(False, "no such message")
ERR_ALREADY_DELETED = Reply(False, "message {index} already deleted")
ERR_MESSAGE_VANISHED = Reply(False, "no such message, it was removed by another session")


def continuation(challenge: str = "") -> bytes:
    """A SASL server challenge (RFC 5034 §4): ``"+" SP [base64] CRLF``."""
    return f"+ {challenge}\r\n".encode("ascii")
