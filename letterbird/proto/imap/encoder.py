"""IMAP4rev1 response encoding (RFC 3501 §7 and §9; RFC 4315, 5161, 5258, 7162, 2971, 2342).

Pure functions returning ``bytes``: the session composes replies from these values and never
formats protocol syntax itself. Everything is built with ``%``-formatting and ``b"".join`` (no
per-character loops), because ``FETCH 1:*`` on a large mailbox calls :func:`fetch` and the string
helpers once per message.

Relevant grammar (RFC 3501 §9)::

    response-tagged = tag SP resp-cond-state CRLF
    resp-cond-state = ("OK" / "NO" / "BAD") SP resp-text
    resp-cond-bye   = "BYE" SP resp-text
    resp-cond-auth  = ("OK" / "PREAUTH") SP resp-text
    continue-req    = "+" SP (resp-text / base64) CRLF
    resp-text       = ["[" resp-text-code "]" SP] text
    text            = 1*TEXT-CHAR
    astring         = 1*ASTRING-CHAR / string
    string          = quoted / literal
    quoted          = DQUOTE *QUOTED-CHAR DQUOTE
    QUOTED-CHAR     = <any TEXT-CHAR except quoted-specials> / "\\" quoted-specials
    literal         = "{" number "}" CRLF *CHAR8
    nstring         = string / nil
    mailbox         = "INBOX" / astring
    flag-list       = "(" [flag *(SP flag)] ")"
    date-time       = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
    date-day-fixed  = (SP DIGIT) / 2DIGIT
    message-data    = nz-number SP ("EXPUNGE" / ("FETCH" SP msg-att))
    mailbox-data    = "FLAGS" SP flag-list / "LIST" SP mailbox-list / "LSUB" SP mailbox-list /
                      "SEARCH" *(SP nz-number) / "STATUS" SP mailbox SP "(" [status-att-list] ")" /
                      number SP "EXISTS" / number SP "RECENT"
    mailbox-list    = "(" [mbx-list-flags] ")" SP (DQUOTE QUOTED-CHAR DQUOTE / nil) SP mailbox

Quoting choice: a value goes as an atom only where ``astring`` allows one; otherwise as a quoted
string, unless it holds CR, LF, NUL or 8-bit octets (8-bit is allowed quoted once UTF8=ACCEPT is
enabled, RFC 6855) or is longer than :data:`QUOTED_MAX`, in which case it is a literal.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final

from letterbird.proto.imap import mutf7
from letterbird.proto.imap.codes import ResponseCode
from letterbird.proto.imap.seqset import format_numbers

__all__ = [
    "BAD",
    "BYE",
    "CONTINUE_LITERAL",
    "CRLF",
    "NIL",
    "NO",
    "OK",
    "PREAUTH",
    "QUOTED_MAX",
    "ResponseCode",
    "astring",
    "capability",
    "continuation",
    "continuation_base64",
    "data",
    "enabled",
    "exists",
    "expunge",
    "fetch",
    "flag_list",
    "flags",
    "id_data",
    "internaldate",
    "list_data",
    "literal",
    "mailbox",
    "namespace",
    "nstring",
    "plist",
    "quoted",
    "recent",
    "search",
    "status",
    "string",
    "tagged",
    "text",
    "uid_set",
    "untagged",
    "vanished",
]

CRLF: Final = b"\r\n"
NIL: Final = b"NIL"

OK: Final = b"OK"
NO: Final = b"NO"
BAD: Final = b"BAD"
BYE: Final = b"BYE"
PREAUTH: Final = b"PREAUTH"

QUOTED_MAX: Final = 1024
"""Longer strings are sent as literals even when they could be quoted."""

CONTINUE_LITERAL: Final = b"+ Ready for literal data\r\n"
"""What the edge sends on :class:`~letterbird.proto.imap.parser.ContinuationNeeded`."""

# ASTRING-CHAR = ATOM-CHAR / resp-specials; ATOM-CHAR = <any CHAR except atom-specials>
# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_UNQUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")
_UNQUOTABLE_UTF8 = re.compile(rb"[\x00\r\n]")
_TEXT_BAD = re.compile(r"[\x00-\x1f\x7f]")

_MONTHS: Final = (
    b"Jan",
    b"Feb",
    b"Mar",
    b"Apr",
    b"May",
    b"Jun",
    b"Jul",
    b"Aug",
    b"Sep",
    b"Oct",
    b"Nov",
    b"Dec",
)


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


# -- strings -----------------------------------------------------------------------------------


def literal(value: str | bytes) -> bytes:
    """``{n}`` CRLF and the octets."""
    raw = _bytes(value)
    return b"{%d}\r\n%s" % (len(raw), raw)


def quoted(value: str | bytes, *, utf8: bool = False) -> bytes:
    """A quoted string; raises ValueError if the value cannot be quoted (use :func:`string`)."""
    raw = _bytes(value)
    if (_UNQUOTABLE_UTF8 if utf8 else _UNQUOTABLE).search(raw):
        raise ValueError("value cannot be sent as a quoted string")
    if b"\\" in raw or b'"' in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + raw + b'"'


def string(value: str | bytes, *, utf8: bool = False) -> bytes:
    """``string``: quoted when possible and short, else a literal."""
    raw = _bytes(value)
    if len(raw) > QUOTED_MAX or (_UNQUOTABLE_UTF8 if utf8 else _UNQUOTABLE).search(raw):
        return literal(raw)
    if b"\\" in raw or b'"' in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + raw + b'"'


def nstring(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    """``nstring``: NIL for None, else :func:`string`."""
    return NIL if value is None else string(value, utf8=utf8)


def astring(value: str | bytes, *, utf8: bool = False) -> bytes:
    """``astring``: a bare atom when every octet is an ASTRING-CHAR (and it is not ``NIL``)."""
    raw = _bytes(value)
    if _ASTRING_ATOM.fullmatch(raw) and raw.upper() != NIL:
        return raw
    return string(raw, utf8=utf8)


def plist(items: Iterable[bytes]) -> bytes:
    """A parenthesised list of already-encoded items."""
    return b"(" + b" ".join(items) + b")"


def flag_list(flag_names: Iterable[str]) -> bytes:
    """``flag-list``: ``(\\Seen $Label1)``. Flags are atoms, written as stored."""
    return b"(" + " ".join(flag_names).encode("utf-8") + b")"


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """``mailbox``: modified UTF-7 (or raw UTF-8 once UTF8=ACCEPT is enabled) as an astring."""
    if utf8:
        return astring(name, utf8=True)
    return astring(mutf7.encode(name))


def internaldate(when: datetime) -> bytes:
    """``date-time`` for INTERNALDATE: ``"17-Jul-1996 02:44:25 -0700"``; naive means UTC."""
    offset = when.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    sign = b"-" if minutes < 0 else b"+"
    minutes = abs(minutes)
    return b'"%2d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        when.day,
        _MONTHS[when.month - 1],
        when.year,
        when.hour,
        when.minute,
        when.second,
        sign,
        minutes // 60,
        minutes % 60,
    )


def uid_set(numbers: Iterable[int]) -> bytes:
    """Compact ``uid-set``/``sequence-set`` in the given order (``1:3,5``)."""
    return format_numbers(numbers)


def text(value: str) -> bytes:
    """Human-readable ``text``: controls become spaces, non-ASCII ``?``; never empty."""
    clean = _TEXT_BAD.sub(" ", value).strip() or "-"
    return clean.encode("ascii", "replace")


# -- status responses --------------------------------------------------------------------------


def _resp_text(message: str, code: ResponseCode | None) -> bytes:
    body = text(message)
    if code is None:
        # A text starting with "[" would read as a response code.
        return b"- " + body if body.startswith(b"[") else body
    return code.encode() + b" " + body


def tagged(tag: str, status: bytes, message: str, code: ResponseCode | None = None) -> bytes:
    """``tag OK|NO|BAD [code] text`` CRLF."""
    return b"%s %s %s\r\n" % (tag.encode("ascii"), status, _resp_text(message, code))


def untagged(status: bytes, message: str, code: ResponseCode | None = None) -> bytes:
    """``* OK|NO|BAD|BYE|PREAUTH [code] text`` CRLF."""
    return b"* %s %s\r\n" % (status, _resp_text(message, code))


def continuation(message: str = "Ready for literal data") -> bytes:
    """``+ text`` CRLF (e.g. ``+ idling`` for IDLE)."""
    return b"+ " + text(message) + CRLF


def continuation_base64(payload: bytes) -> bytes:
    """``+ base64`` CRLF for a SASL challenge (an empty challenge is ``+`` SP CRLF)."""
    return b"+ " + base64.b64encode(payload) + CRLF


# -- untagged data -----------------------------------------------------------------------------


def data(*parts: bytes) -> bytes:
    """``*`` SP parts joined by SP, CRLF: the generic untagged data line."""
    return b"* " + b" ".join(parts) + CRLF


def capability(capabilities: Iterable[str]) -> bytes:
    return b"* CAPABILITY " + " ".join(capabilities).encode("ascii") + CRLF


def exists(count: int) -> bytes:
    return b"* %d EXISTS\r\n" % count


def recent(count: int) -> bytes:
    return b"* %d RECENT\r\n" % count


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def flags(flag_names: Iterable[str]) -> bytes:
    return b"* FLAGS " + flag_list(flag_names) + CRLF


def fetch(seq: int, items: Iterable[bytes]) -> bytes:
    """``* seq FETCH (items)``: each item is ``label SP value``, already encoded."""
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))


def search(numbers: Iterable[int], modseq: int | None = None) -> bytes:
    """``* SEARCH n n ...`` (RFC 7162 adds ``(MODSEQ n)`` after the numbers)."""
    body = b"".join(b" %d" % n for n in numbers)
    if modseq is not None:
        body += b" (MODSEQ %d)" % modseq
    return b"* SEARCH" + body + CRLF


def list_data(
    attributes: Iterable[str],
    delimiter: str | None,
    name: str,
    *,
    command: bytes = b"LIST",
    utf8: bool = False,
    extended: Iterable[bytes] = (),
) -> bytes:
    """``* LIST (\\attrs) "/" name`` (``command=b"LSUB"`` for LSUB; ``extended`` items are
    already-encoded RFC 5258 ``mbox-list-extended`` entries such as ``CHILDINFO (...)``)."""
    delim = NIL if delimiter is None else quoted(delimiter)
    ext = list(extended)
    tail = b" (" + b" ".join(ext) + b")" if ext else b""
    return b"* %s %s %s %s%s\r\n" % (
        command,
        flag_list(attributes),
        delim,
        mailbox(name, utf8=utf8),
        tail,
    )


def status(name: str, items: Iterable[tuple[str, int]], *, utf8: bool = False) -> bytes:
    """``* STATUS name (MESSAGES 3 UIDNEXT 9)``."""
    body = b" ".join(b"%s %d" % (k.encode("ascii"), v) for k, v in items)
    return b"* STATUS %s (%s)\r\n" % (mailbox(name, utf8=utf8), body)


def enabled(capabilities: Iterable[str]) -> bytes:
    """RFC 5161 ``* ENABLED cap...``."""
    caps = " ".join(capabilities).encode("ascii")
    return b"* ENABLED " + caps + CRLF if caps else b"* ENABLED\r\n"


def vanished(uids: Iterable[int], *, earlier: bool = False) -> bytes:
    """RFC 7162 §3.2.10 ``* VANISHED [(EARLIER)] uid-set``."""
    return b"* VANISHED %s%s\r\n" % (b"(EARLIER) " if earlier else b"", format_numbers(uids))


def id_data(params: Mapping[str, str | None] | None) -> bytes:
    """RFC 2971 ``* ID ("name" "Letterbird" ...)`` or ``* ID NIL``."""
    if not params:
        return b"* ID NIL\r\n"
    body = b" ".join(string(k) + b" " + nstring(v) for k, v in params.items())
    return b"* ID (" + body + b")\r\n"


def _namespace_part(entries: Iterable[tuple[str, str | None]] | None) -> bytes:
    if entries is None:
        return NIL
    items = [
        b"(" + string(mutf7.encode(prefix)) + b" " + (NIL if d is None else quoted(d)) + b")"
        for prefix, d in entries
    ]
    return b"(" + b"".join(items) + b")" if items else NIL


def namespace(
    personal: Iterable[tuple[str, str | None]] | None,
    other: Iterable[tuple[str, str | None]] | None = None,
    shared: Iterable[tuple[str, str | None]] | None = None,
) -> bytes:
    """RFC 2342 ``* NAMESPACE (("" "/")) NIL NIL``: each part is (prefix, delimiter) pairs."""
    return b"* NAMESPACE %s %s %s\r\n" % (
        _namespace_part(personal),
        _namespace_part(other),
        _namespace_part(shared),
    )
