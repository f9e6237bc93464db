"""SMTP replies as values: :class:`Reply`, its wire encoding, and named constants.

Implements the reply syntax of RFC 5321 §4.2 (including multi-line replies, §4.2.1) and the
enhanced status codes of RFC 2034 / RFC 3463 (registry: RFC 5248)::

    Greeting   = ( "220 " (Domain / address-literal) [ SP textstring ] CRLF ) / ...
    Reply-line = *( Reply-code "-" [ textstring ] CRLF )
                 Reply-code [ SP textstring ] CRLF
    Reply-code = %x32-35 %x30-35 %x30-39
    textstring = 1*(%d09 / %d32-126) ; HT, SP, Printable US-ASCII

RFC 2034 §3 asks for the enhanced code in front of the text of every line of a reply, except
the greeting and the EHLO/HELO reply; intermediate replies (``3yz``: ``354``, ``334``) have no
enhanced code class at all. Those exceptions are expressed by construction: the greeting, the
EHLO/HELO replies and every ``3yz`` reply are built with ``enhanced=None``, and
:func:`encode` writes whatever code a reply carries. Letterbird sends enhanced codes on every
reply (as Postfix does), whether the client said EHLO or HELO.

Every reply the server core produces itself is a constant here, next to the ones the asyncio
edge commonly needs for policy and storage answers; use :meth:`Reply.with_text` to vary the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

# RFC 3463 §2: status-code = class "." subject "." detail ; class = "2"/"4"/"5";
# subject = 1*3digit ; detail = 1*3digit
_ENHANCED_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@lru_cache(maxsize=256)
def _check_codes(code: int, enhanced: str | None) -> None:
    """Raise ValueError unless ``code`` and ``enhanced`` make a valid pair. Cached: a reply
    built per message (``250 2.0.0 OK: queued as …``) is checked once, not per message (only
    valid pairs are cached; an exception is never stored)."""
    if not 200 <= code <= 599:
        raise ValueError(f"SMTP reply code out of range: {code}")
    if enhanced is not None:
        if not _ENHANCED_RE.fullmatch(enhanced):
            raise ValueError(f"malformed enhanced status code: {enhanced!r}")
        if int(enhanced[0]) != code // 100:
            raise ValueError(f"enhanced code {enhanced} does not match {code}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a three-digit code, an optional RFC 3463 enhanced code, and text.

    ``text`` may hold several lines separated by ``"\\n"``: they are sent as a multi-line reply
    (``250-first`` … ``250 last``, RFC 5321 §4.2.1). Build those with :meth:`multiline`.
    Constructing a reply with an impossible code raises :class:`ValueError` (a programming
    error, never caused by peer input).
    """

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        _check_codes(self.code, self.enhanced)

    @classmethod
    def multiline(cls, code: int, enhanced: str | None, lines: Sequence[str]) -> Reply:
        """A reply sent as several lines (for instance the EHLO keyword list)."""
        if not lines:
            raise ValueError("a reply needs at least one line")
        return cls(code, enhanced, "\n".join(lines))

    @property
    def lines(self) -> tuple[str, ...]:
        """The text lines of this reply (one for an ordinary reply)."""
        return tuple(self.text.split("\n"))

    @property
    def is_positive(self) -> bool:
        """True for ``2yz`` completion replies."""
        return 200 <= self.code < 300

    @property
    def is_error(self) -> bool:
        """True for ``4yz`` (transient) and ``5yz`` (permanent) failures."""
        return self.code >= 400

    def with_text(self, text: str) -> Reply:
        """The same codes with other text (e.g. a queue id after ``250 2.0.0``)."""
        return replace(self, text=text)


def encode(reply: Reply, enhanced_enabled: bool = True) -> bytes:
    """The wire form of ``reply``: one CRLF-terminated line per text line.

    The enhanced code, when the reply has one and ``enhanced_enabled`` is true, prefixes the
    text of every line (RFC 2034 §3). Control characters in the text are replaced by ``?`` so
    no text can inject a line break. Text is UTF-8 (RFC 6531 permits it towards SMTPUTF8
    clients; the core's own texts are ASCII).
    """
    prefix = f"{reply.enhanced} " if (enhanced_enabled and reply.enhanced) else ""
    text = reply.text
    if _CONTROL_RE.search(text) is None:  # one clean line (no "\n"): the usual reply
        return f"{reply.code} {prefix}{text}\r\n".encode("utf-8", "replace")
    lines = reply.lines
    out: list[str] = []
    last = len(lines) - 1
    for index, line in enumerate(lines):
        clean = _CONTROL_RE.sub("?", line)
        sep = " " if index == last else "-"
        out.append(f"{reply.code}{sep}{prefix}{clean}\r\n")
    return "".join(out).encode("utf-8", "replace")


# --- 2yz / 3yz: completions and intermediates -------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "OK: message accepted")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
VRFY_CANNOT_VERIFY = Reply(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
HELP = Reply(214, "2.0.0", "See RFC 5321: https://www.rfc-editor.org/rfc/rfc5321")
SERVICE_CLOSING = Reply(221, "2.0.0", "Bye")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")

# --- 421: the server closes the connection after sending these (RFC 5321 §3.8) ---------------
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")

# --- 4yz transient failures --------------------------------------------------------------------
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
OVER_QUOTA = Reply(452, "4.2.2", "Mailbox full")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")

# --- 5yz: syntax and sequence errors produced by the core ---------------------------------------
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
NUL_CHARACTER = Reply(500, "5.5.2", "NUL character not allowed")
INVALID_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")
BAD_ARGUMENTS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO hostname")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY address")
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
BAD_MAIL_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_PARAMETER = Reply(501, "5.5.4", "Syntax error in parameters")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
AUTH_NOT_AVAILABLE = Reply(502, "5.5.1", "Authentication not available")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
HELLO_FIRST = Reply(503, "5.5.1", "Send EHLO or HELO first")
EHLO_FIRST = Reply(503, "5.5.1", "Send EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "RCPT not allowed after BDAT")
TRANSACTION_IN_PROGRESS = Reply(503, "5.5.1", "Mail transaction in progress")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Parameter not recognized or not implemented")
UTF8_NOT_PERMITTED = Reply(553, "5.6.7", "Non-ASCII addresses not permitted without SMTPUTF8")

# --- AUTH (RFC 4954 §4, §6) ---------------------------------------------------------------------
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64 response")
AUTH_MALFORMED = Reply(501, "5.5.2", "Malformed authentication response")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)

# --- message content ------------------------------------------------------------------------
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
DATA_LINE_TOO_LONG = Reply(554, "5.6.0", "Message rejected: line too long")
MAIL_LOOP = Reply(554, "5.4.6", "Too many Received header fields: mail loop")

# --- policy answers the edge commonly gives -----------------------------------------------------
NO_SUCH_USER = Reply(550, "5.1.1", "No such user")
RELAY_DENIED = Reply(550, "5.7.1", "Relay access denied")
POLICY_REJECTED = Reply(550, "5.7.1", "Rejected by policy")
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
