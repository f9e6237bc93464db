"""Lexical grammar of IMAP4rev1 commands (RFC 3501 §9), shared by the command parsers.

A framed command is a list of lines with the literal markers removed and the literals between
them: ``lines[i]`` is followed by ``literals[i]`` (the reader in :mod:`.parser` does the
framing). :class:`Scanner` walks it token by token with precompiled regexes; whenever the
current line is exhausted and a literal follows, a ``string`` token is that literal. Every
grammar error raises :class:`ParseError`, which the reader turns into a ``BAD`` (or, with a
response code, a ``NO``) reply.

Hand-written on purpose: IMAP's grammar is context-dependent (literals interleaved with lines,
``astring`` vs ``atom`` vs ``list-mailbox`` depending on position), so a table-driven tokenizer
would not be simpler, and regexes keep it fast.

The ABNF this module implements (RFC 3501 §9; core rules from RFC 5234)::

    CHAR            = %x01-7F
    CTL             = %x00-1F / %x7F
    atom            = 1*ATOM-CHAR
    ATOM-CHAR       = <any CHAR except atom-specials>
    atom-specials   = "(" / ")" / "{" / SP / CTL / list-wildcards /
                      quoted-specials / resp-specials
    list-wildcards  = "%" / "*"
    quoted-specials = DQUOTE / "\\"
    resp-specials   = "]"
    astring         = 1*ASTRING-CHAR / string
    ASTRING-CHAR    = ATOM-CHAR / resp-specials
    string          = quoted / literal
    quoted          = DQUOTE *QUOTED-CHAR DQUOTE
    QUOTED-CHAR     = <any TEXT-CHAR except quoted-specials> / "\\" quoted-specials
    TEXT-CHAR       = <any CHAR except CR and LF>
    literal         = "{" number "}" CRLF *CHAR8
    nstring         = string / nil
    nil             = "NIL"
    number          = 1*DIGIT                ; unsigned 32-bit integer
    nz-number       = digit-nz *DIGIT        ; non-zero unsigned 32-bit integer
    tag             = 1*<any ASTRING-CHAR except "+">
    list-mailbox    = 1*list-char / string
    list-char       = ATOM-CHAR / list-wildcards / resp-specials
    mailbox         = "INBOX" / astring
                        ; INBOX is case-insensitive.  All case variants of
                        ; INBOX (e.g., "iNbOx") MUST be interpreted as INBOX
                        ; not as an astring.
    flag            = "\\Answered" / "\\Flagged" / "\\Deleted" / "\\Seen" / "\\Draft" /
                      flag-keyword / flag-extension
    flag-extension  = "\\" atom
    flag-keyword    = atom
    flag-list       = "(" [flag *(SP flag)] ")"
    date            = date-text / DQUOTE date-text DQUOTE
    date-text       = date-day "-" date-month "-" date-year
    date-day        = 1*2DIGIT
    date-month      = "Jan" / "Feb" / "Mar" / "Apr" / "May" / "Jun" /
                      "Jul" / "Aug" / "Sep" / "Oct" / "Nov" / "Dec"
    date-year       = 4DIGIT
    date-time       = DQUOTE date-day-fixed "-" date-month "-" date-year
                      SP time SP zone DQUOTE
    date-day-fixed  = (SP DIGIT) / 2DIGIT
    time            = 2DIGIT ":" 2DIGIT ":" 2DIGIT
    zone            = ("+" / "-") 4DIGIT

Deliberate leniencies: 8-bit octets are accepted in ``astring`` atoms, quoted strings and
``list-mailbox`` (clients send raw UTF-8 names; RFC 6855 allows it in quoted strings), and a
one-digit day without the leading space is accepted in ``date-time``.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Final

from letterbird.proto.imap import mutf7
from letterbird.proto.imap.codes import ResponseCode
from letterbird.proto.imap.seqset import MAX_NUMBER, SeqSetError, SequenceSet

__all__ = [
    "MAX_MODSEQ",
    "SYSTEM_FLAGS",
    "BadCharsetError",
    "ParseError",
    "Scanner",
    "decode_mailbox",
]

MAX_MODSEQ: Final = 2**63 - 1
"""RFC 7162 ``mod-sequence-value``: unsigned 63-bit."""

SYSTEM_FLAGS: Final = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
"""Upper-cased system flag → canonical spelling (system flags are case-insensitive)."""

_MONTH_NAMES: Final = (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN")
_MONTH_NAMES2: Final = (b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC")
MONTHS: Final = {m: i for i, m in enumerate((*_MONTH_NAMES, *_MONTH_NAMES2), start=1)}

# tag = 1*<any ASTRING-CHAR except "+">   (7-bit only)
TAG: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
# atom = 1*ATOM-CHAR; ATOM-CHAR = <any CHAR except atom-specials>
ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
# 1*ASTRING-CHAR; ASTRING-CHAR = ATOM-CHAR / resp-specials   (8-bit tolerated)
ASTRING_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f(){%*"\\]+')
# 1*list-char; list-char = ATOM-CHAR / list-wildcards / resp-specials   (8-bit tolerated)
LIST_CHARS: Final = re.compile(rb'[^\x00-\x20\x7f(){"\\]+')
# quoted = DQUOTE *QUOTED-CHAR DQUOTE
# QUOTED-CHAR = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials   (8-bit tolerated)
QUOTED: Final = re.compile(rb'"((?:[^\x00\r\n"\\]|\\["\\])*)"')
QUOTED_ESCAPE: Final = re.compile(rb'\\(["\\])')
# number = 1*DIGIT
NUMBER: Final = re.compile(rb"[0-9]+")
# flag = "\" atom / atom   (system flags, flag-extension, flag-keyword)
FLAG: Final = re.compile(rb'\\?[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
# the characters of a sequence-set; the exact grammar is checked in seqset.py
SEQSET_CHARS: Final = re.compile(rb"[0-9*:,]+")
# date = date-text / DQUOTE date-text DQUOTE
# date-text = date-day "-" date-month "-" date-year; date-day = 1*2DIGIT; date-year = 4DIGIT
DATE: Final = re.compile(
    rb'(?:([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}))|"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})"'
)
# date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
# date-day-fixed = (SP DIGIT) / 2DIGIT; time = 2DIGIT ":" 2DIGIT ":" 2DIGIT
# zone = ("+" / "-") 4DIGIT
DATE_TIME: Final = re.compile(
    rb'"( [0-9]|[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)


class ParseError(Exception):
    """A command does not match the grammar; becomes ``tag BAD message`` (or NO with a code)."""

    status: bytes = b"BAD"
    code: ResponseCode | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadCharsetError(ParseError):
    """SEARCH named a charset we do not support: ``NO [BADCHARSET (UTF-8 US-ASCII)]``."""

    status = b"NO"
    code = ResponseCode.badcharset()


def decode_text(raw: bytes, what: str = "string") -> str:
    """UTF-8 (a superset of US-ASCII) without NUL; raises :class:`ParseError`."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{what} is not valid UTF-8") from None
    if "\x00" in value:
        raise ParseError(f"{what} contains NUL")
    return value


def decode_mailbox(raw: bytes, *, normalise_inbox: bool = True) -> str:
    """A mailbox name from the wire: modified UTF-7 if 7-bit, else UTF-8 (RFC 6855 style).

    ``INBOX`` in any case becomes ``INBOX`` (RFC 3501 §9 ``mailbox``).
    """
    if raw.isascii():
        try:
            name = mutf7.decode(raw)
        except mutf7.MUTF7Error as exc:
            raise ParseError(f"mailbox name is not valid modified UTF-7: {exc}") from None
        if "\x00" in name:
            raise ParseError("mailbox name contains NUL")
    else:
        name = decode_text(raw, "mailbox name")
    if normalise_inbox and name.upper() == "INBOX":
        return "INBOX"
    return name


def canonical_flag(raw: bytes) -> str:
    """System flags get their canonical case; keywords are kept as written."""
    text = raw.decode("ascii")
    if text.startswith("\\"):
        return SYSTEM_FLAGS.get(text.upper(), text)
    return text


class Scanner:
    """Cursor over a framed command; every method either consumes a token or raises."""

    __slots__ = ("_idx", "_last", "_lines", "_literals", "line", "pos")

    def __init__(self, lines: list[bytes], literals: list[bytes]) -> None:
        self._lines = lines
        self._literals = literals
        self._idx = 0
        self._last = len(lines) - 1
        self.line = lines[0]
        self.pos = 0

    # -- position ---------------------------------------------------------------------------

    def at_end(self) -> bool:
        """At the end of the whole command."""
        return self._idx == self._last and self.pos == len(self.line)

    def end(self) -> None:
        """Require the end of the command."""
        if not self.at_end():
            raise ParseError("unexpected extra arguments")

    def peek(self) -> int:
        """The next octet of the current line, or -1 at its end (a literal or the command end)."""
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def at_literal(self) -> bool:
        return self.pos == len(self.line) and self._idx < self._last

    def sp(self) -> None:
        """Exactly one SP."""
        if self.peek() != 0x20:
            raise ParseError("expected a space")
        self.pos += 1

    def try_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def char(self, c: int, what: str) -> None:
        if self.peek() != c:
            raise ParseError(f"expected {what}")
        self.pos += 1

    def try_char(self, c: int) -> bool:
        if self.peek() == c:
            self.pos += 1
            return True
        return False

    def match(self, regex: re.Pattern[bytes]) -> re.Match[bytes] | None:
        m = regex.match(self.line, self.pos)
        if m is not None:
            self.pos = m.end()
        return m

    def expect(self, regex: re.Pattern[bytes], what: str) -> re.Match[bytes]:
        m = self.match(regex)
        if m is None:
            raise ParseError(f"expected {what}")
        return m

    # -- tokens -----------------------------------------------------------------------------

    def atom(self, what: str = "an atom") -> bytes:
        return self.expect(ATOM, what).group()

    def keyword(self, what: str = "a keyword") -> str:
        """An atom, upper-cased (command names, options, search keys)."""
        return self.expect(ATOM, what).group().decode("ascii").upper()

    def peek_keyword(self) -> str:
        """The upper-cased atom at the cursor without consuming it ("" if none)."""
        m = ATOM.match(self.line, self.pos)
        return m.group().decode("ascii").upper() if m else ""

    def skip(self, count: int) -> None:
        self.pos += count

    def number(self, what: str = "a number", limit: int = MAX_NUMBER) -> int:
        digits = self.expect(NUMBER, what).group()
        if len(digits) > len(str(limit)) or int(digits) > limit:
            raise ParseError(f"{what} is too large")
        return int(digits)

    def nz_number(self, what: str = "a number") -> int:
        value = self.number(what)
        if value == 0:
            raise ParseError(f"{what} must not be zero")
        return value

    def literal(self) -> bytes:
        if not self.at_literal():
            raise ParseError("expected a literal")
        value = self._literals[self._idx]
        self._idx += 1
        self.line = self._lines[self._idx]
        self.pos = 0
        return value

    def string(self, what: str = "a string") -> bytes:
        """``quoted / literal``."""
        if self.peek() == 0x22:
            m = self.match(QUOTED)
            if m is None:
                raise ParseError(f"bad quoted string in {what}")
            value = m.group(1)
            return QUOTED_ESCAPE.sub(rb"\1", value) if b"\\" in value else value
        if self.at_literal():
            return self.literal()
        raise ParseError(f"expected {what}")

    def astring(self, what: str = "a string") -> bytes:
        m = self.match(ASTRING_ATOM)
        if m is not None:
            return m.group()
        return self.string(what)

    def nstring(self, what: str = "a string") -> bytes | None:
        m = ATOM.match(self.line, self.pos)
        if m is not None and m.group().upper() == b"NIL":
            self.pos = m.end()
            return None
        return self.string(what)

    def astring_text(self, what: str = "a string") -> str:
        return decode_text(self.astring(what), what)

    def mailbox(self) -> str:
        return decode_mailbox(self.astring("a mailbox name"))

    def list_mailbox(self) -> str:
        """``list-mailbox``: wildcards allowed; INBOX is not normalised (it is a pattern)."""
        m = self.match(LIST_CHARS)
        raw = m.group() if m is not None else self.string("a mailbox pattern")
        return decode_mailbox(raw, normalise_inbox=False)

    def flag(self) -> str:
        return canonical_flag(self.expect(FLAG, "a flag").group())

    def flag_list(self) -> tuple[str, ...]:
        """``"(" [flag *(SP flag)] ")"``."""
        self.char(0x28, "'('")
        out: list[str] = []
        if not self.try_char(0x29):
            out.append(self.flag())
            while self.try_sp():
                out.append(self.flag())
            self.char(0x29, "')'")
        return tuple(out)

    def seqset(self, what: str = "a sequence set") -> SequenceSet:
        m = self.expect(SEQSET_CHARS, what)
        try:
            return SequenceSet.parse(m.group().decode("ascii"))
        except SeqSetError as exc:
            raise ParseError(str(exc)) from None

    def date(self) -> date:
        """``date`` (SEARCH): ``1-Feb-1994`` or quoted."""
        m = self.expect(DATE, "a date like 1-Feb-1994")
        day, month, year = m.group(1, 2, 3) if m.group(1) else m.group(4, 5, 6)
        mon = MONTHS.get(month.upper())
        try:
            if mon is None:
                raise ValueError
            return date(int(year), mon, int(day))
        except ValueError:
            raise ParseError("invalid date") from None

    def date_time(self) -> datetime:
        """``date-time`` (APPEND): ``"17-Jul-1996 02:44:25 -0700"``."""
        m = self.expect(DATE_TIME, 'a date-time like "17-Jul-1996 02:44:25 -0700"')
        day, month, year, hh, mm, ss, sign, zh, zm = m.groups()
        mon = MONTHS.get(month.upper())
        try:
            if mon is None or int(zm) > 59:
                raise ValueError
            offset = timedelta(hours=int(zh), minutes=int(zm))
            tz = timezone(-offset if sign == b"-" else offset)
            return datetime(int(year), mon, int(day), int(hh), int(mm), int(ss), tzinfo=tz)
        except ValueError:
            raise ParseError("invalid date-time") from None
