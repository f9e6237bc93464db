"""POP3 command-line grammar (RFC 1939, RFC 2449 §3, RFC 5034 §4), as small pure functions.

RFC 2449 §3::

    command      =  keyword *(SP param) CRLF    ;255 octets maximum
    keyword      =  3*4VCHAR
    param        =  1*VCHAR

RFC 1939 §7 (PASS): "Since the PASS command has exactly one argument, a POP3 server may treat
spaces in the argument as part of the password, instead of as argument separators."

RFC 1939 §5: "msg - a message-number (required) which may NOT refer to a message marked as
deleted"; TOP's second argument "n - a non-negative number (required)".

RFC 1939 §7 (UIDL): "The unique-id of a message is an arbitrary server-determined string,
consisting of one to 70 characters in the range 0x21 to 0x7E".

RFC 5034 §4::

    auth-command     = "AUTH" SP sasl-mech [SP initial-response]
                       *(CRLF [base64]) [CRLF cancel-response] CRLF
    initial-response = base64 / "="
    cancel-response  = "*"
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Command", "parse_command", "parse_number", "strip_eol", "valid_uid"]

# keyword = 3*4VCHAR (VCHAR = %x21-7E); matched on the raw bytes before any decoding.
KEYWORD_RE = re.compile(rb"[\x21-\x7e]{3,4}")
# Parameters as used here: UTF-8 is let through (RFC 6856 usernames), controls are not; one
# space between parameters (``text.split(" ")`` gives no empty field).
_PARAMS_RE = re.compile(r"[^\x00-\x20\x7f]+(?: [^\x00-\x20\x7f]+)*")
# The rest of a PASS line: any text without control characters (spaces allowed).
_PASSWORD_RE = re.compile(r"[^\x00-\x1f\x7f]+")
# message-number / TOP line count: 1*DIGIT (ASCII digits only; str.isdigit would take others)
_NUMBER_RE = re.compile(r"[0-9]+")
# unique-id = 1*70 %x21-7E
_UID_RE = re.compile(r"[\x21-\x7e]{1,70}")


class Command(NamedTuple):
    """A parsed command line: upper-cased keyword, its space-separated params, and the raw rest.

    ``rest`` is everything after the first space (for PASS); ``params`` is ``None`` when the
    parameters are not valid text (bad UTF-8, control characters, empty fields). (A named
    tuple: one is built per command line, and that is cheaper than a frozen dataclass.)
    """

    keyword: str
    params: tuple[str, ...] | None
    rest: str | None


def strip_eol(line: bytes) -> bytes:
    """Remove the CRLF (or a bare LF) that ends a received line (it always ends with LF)."""
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def parse_command(line: bytes) -> Command | None:
    """Split one command line (without its end of line); ``None`` when the keyword is invalid."""
    head, sep, tail = line.partition(b" ")
    if KEYWORD_RE.fullmatch(head) is None:
        return None
    keyword = head.decode("ascii").upper()
    if not sep:
        return Command(keyword, (), None)
    try:
        text = tail.decode("utf-8")
    except UnicodeDecodeError:
        return Command(keyword, None, None)
    if _PARAMS_RE.fullmatch(text) is not None:  # (valid params are a valid rest too)
        return Command(keyword, tuple(text.split(" ")), text)
    return Command(keyword, None, text if _PASSWORD_RE.fullmatch(text) else None)


def parse_number(text: str) -> int | None:
    """A message-number or line count (``1*DIGIT``), or ``None`` when it is not one."""
    if _NUMBER_RE.fullmatch(text) is None:
        return None
    return int(text)


def valid_uid(uid: str) -> bool:
    """True when ``uid`` is a valid RFC 1939 unique-id."""
    return _UID_RE.fullmatch(uid) is not None
