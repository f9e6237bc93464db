"""SEARCH program parsing into a typed key tree (RFC 3501 §6.4.4; RFC 4731; RFC 7162 §3.1.5).

Grammar (RFC 3501 §9, with ESEARCH's RETURN from RFC 4731 §3 and MODSEQ from RFC 7162 §7)::

    search          = "SEARCH" [search-return-opts] [SP "CHARSET" SP astring]
                      1*(SP search-key)
    search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"
    search-return-opt  = "MIN" / "MAX" / "ALL" / "COUNT"
    search-key      = "ALL" / "ANSWERED" / "BCC" SP astring /
                      "BEFORE" SP date / "BODY" SP astring /
                      "CC" SP astring / "DELETED" / "FLAGGED" /
                      "FROM" SP astring / "KEYWORD" SP flag-keyword /
                      "NEW" / "OLD" / "ON" SP date / "RECENT" / "SEEN" /
                      "SINCE" SP date / "SUBJECT" SP astring /
                      "TEXT" SP astring / "TO" SP astring /
                      "UNANSWERED" / "UNDELETED" / "UNFLAGGED" /
                      "UNKEYWORD" SP flag-keyword / "UNSEEN" /
                        ; Above this line were in [IMAP2]
                      "DRAFT" / "HEADER" SP header-fld-name SP astring /
                      "LARGER" SP number / "NOT" SP search-key /
                      "OR" SP search-key SP search-key /
                      "SENTBEFORE" SP date / "SENTON" SP date /
                      "SENTSINCE" SP date / "SMALLER" SP number /
                      "UID" SP sequence-set / "UNDRAFT" / sequence-set /
                      "(" search-key *(SP search-key) ")"
    search-key      =/ "MODSEQ" [search-modsequence-ext] SP mod-sequence-valzer
    search-modsequence-ext = SP entry-name SP entry-type-req
    entry-name      = DQUOTE "/flags/" attr-flag DQUOTE
    entry-type-req  = "priv" / "shared" / "all"

The tree is normalised so a session evaluates few node kinds: flag keys (``SEEN``, ``UNSEEN``,
``KEYWORD``, ``RECENT``...) are :class:`FlagKey`; ``NEW`` is ``RECENT UNSEEN`` and ``OLD`` is
``NOT RECENT``; ``FROM``/``TO``/``CC``/``BCC``/``SUBJECT`` are :class:`HeaderKey`. Strings are
decoded with the CHARSET (UTF-8 or US-ASCII; any other is ``NO [BADCHARSET]``). Nesting is
bounded (``max_depth``) so a hostile ``NOT NOT NOT ...`` cannot exhaust the stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final, Literal, TypeAlias

from letterbird.proto.imap.grammar import (
    MAX_MODSEQ,
    QUOTED,
    BadCharsetError,
    ParseError,
    Scanner,
    canonical_flag,
)
from letterbird.proto.imap.seqset import SequenceSet

__all__ = [
    "CHARSETS",
    "All",
    "And",
    "BodyKey",
    "DateKey",
    "FlagKey",
    "HeaderKey",
    "ModSeqKey",
    "Not",
    "Or",
    "SearchArgs",
    "SearchKey",
    "SeqSetKey",
    "SizeKey",
    "TextKey",
    "UidKey",
    "parse_search",
]

CHARSETS: Final = ("UTF-8", "US-ASCII")
RETURN_OPTIONS: Final = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


@dataclass(frozen=True, slots=True)
class All:
    """``ALL``: every message."""


@dataclass(frozen=True, slots=True)
class FlagKey:
    """The message has (``present``) or lacks ``flag`` (system flags canonically spelled)."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """Header ``name`` contains ``value`` (case-insensitive substring; ``""`` = field exists)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BodyKey:
    """The body (after the header) contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class TextKey:
    """The header or body contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class DateKey:
    """``field`` is ``internal`` (INTERNALDATE) or ``sent`` (Date: header), compared by date,
    ignoring time and timezone (RFC 3501 §6.4.4)."""

    field: Literal["internal", "sent"]
    op: Literal["before", "on", "since"]
    date: date


@dataclass(frozen=True, slots=True)
class SizeKey:
    """RFC822.SIZE ``op`` ``size``: LARGER is ``>``, SMALLER is ``<``."""

    op: Literal["larger", "smaller"]
    size: int


@dataclass(frozen=True, slots=True)
class SeqSetKey:
    """Message sequence numbers."""

    seqset: SequenceSet


@dataclass(frozen=True, slots=True)
class UidKey:
    uids: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """RFC 7162: the message's mod-sequence is >= ``modseq``."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class Not:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class Or:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class And:
    keys: tuple[SearchKey, ...]


SearchKey: TypeAlias = (
    All
    | FlagKey
    | HeaderKey
    | BodyKey
    | TextKey
    | DateKey
    | SizeKey
    | SeqSetKey
    | UidKey
    | ModSeqKey
    | Not
    | Or
    | And
)


@dataclass(frozen=True, slots=True)
class SearchArgs:
    """``key`` is the whole program (an :class:`And` when several keys were given);
    ``charset`` is the one named (upper-cased) or None; ``return_options`` is None for plain
    SEARCH and a tuple (possibly empty, meaning ALL) for ESEARCH's ``RETURN (...)``."""

    key: SearchKey
    charset: str | None = None
    return_options: tuple[str, ...] | None = None


_FLAG_KEYS: Final = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "RECENT": ("\\Recent", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
    "OLD": ("\\Recent", False),
}
_HEADER_KEYS: Final = {
    "BCC": "Bcc",
    "CC": "Cc",
    "FROM": "From",
    "SUBJECT": "Subject",
    "TO": "To",
}
_DATE_KEYS: Final[
    dict[str, tuple[Literal["internal", "sent"], Literal["before", "on", "since"]]]
] = {
    "BEFORE": ("internal", "before"),
    "ON": ("internal", "on"),
    "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"),
    "SENTON": ("sent", "on"),
    "SENTSINCE": ("sent", "since"),
}
_ENTRY_TYPES: Final = frozenset({"PRIV", "SHARED", "ALL"})
_ARG_KEYS: Final = frozenset(
    {*_HEADER_KEYS, *_DATE_KEYS}
    | {"KEYWORD", "UNKEYWORD", "HEADER", "BODY", "TEXT", "LARGER", "SMALLER", "UID", "NOT"}
    | {"OR", "MODSEQ"}
)


class _Parser:
    __slots__ = ("charset", "max_depth", "s")

    def __init__(self, s: Scanner, charset: str, max_depth: int) -> None:
        self.s = s
        self.charset = charset
        self.max_depth = max_depth

    def text(self) -> str:
        raw = self.s.astring("a search string")
        try:
            value = raw.decode(self.charset)
        except UnicodeDecodeError:
            raise ParseError("search string is not valid in the declared charset") from None
        if "\x00" in value:
            raise ParseError("search string contains NUL")
        return value

    def key(self, depth: int) -> SearchKey:
        if depth > self.max_depth:
            raise ParseError("search keys nested too deeply")
        s = self.s
        c = s.peek()
        if c == 0x28:  # "("
            s.skip(1)
            keys = [self.key(depth + 1)]
            while s.try_sp():
                keys.append(self.key(depth + 1))
            s.char(0x29, "')' closing the search key list")
            return keys[0] if len(keys) == 1 else And(tuple(keys))
        if 0x30 <= c <= 0x39 or c == 0x2A:  # digit or "*"
            return SeqSetKey(s.seqset())
        name = s.keyword("a search key")
        flag = _FLAG_KEYS.get(name)
        if flag is not None:
            return FlagKey(*flag)
        if name == "ALL":
            return All()
        if name == "NEW":
            return And((FlagKey("\\Recent"), FlagKey("\\Seen", False)))
        if name not in _ARG_KEYS:
            raise ParseError(f"unknown search key {name[:40]}")
        s.sp()  # every other key takes an argument
        header = _HEADER_KEYS.get(name)
        if header is not None:
            return HeaderKey(header, self.text())
        when = _DATE_KEYS.get(name)
        if when is not None:
            return DateKey(when[0], when[1], s.date())
        if name in ("KEYWORD", "UNKEYWORD"):
            return FlagKey(canonical_flag(s.atom("a keyword")), name == "KEYWORD")
        if name == "HEADER":
            field_name = self.text()
            s.sp()
            return HeaderKey(field_name, self.text())
        if name == "BODY":
            return BodyKey(self.text())
        if name == "TEXT":
            return TextKey(self.text())
        if name in ("LARGER", "SMALLER"):
            return SizeKey("larger" if name == "LARGER" else "smaller", s.number("a size"))
        if name == "UID":
            return UidKey(s.seqset("a UID set"))
        if name == "NOT":
            return Not(self.key(depth + 1))
        if name == "OR":
            left = self.key(depth + 1)
            s.sp()
            return Or(left, self.key(depth + 1))
        return self.modseq()  # the last of _ARG_KEYS

    def modseq(self) -> ModSeqKey:
        s = self.s
        entry: str | None = None
        entry_type: str | None = None
        if s.peek() == 0x22:
            m = s.expect(QUOTED, "an entry name")
            entry = m.group(1).decode("ascii", "replace")
            if not entry.lower().startswith("/flags/"):
                raise ParseError("MODSEQ entry name must start with /flags/")
            s.sp()
            entry_type = s.keyword("priv, shared or all").lower()
            if entry_type.upper() not in _ENTRY_TYPES:
                raise ParseError("MODSEQ entry type must be priv, shared or all")
            s.sp()
        return ModSeqKey(s.number("a mod-sequence", MAX_MODSEQ), entry, entry_type)


def parse_search(s: Scanner, *, max_depth: int = 64) -> SearchArgs:
    """Parse what follows ``SEARCH`` (the scanner is just after the command name)."""
    s.sp()
    return_options: tuple[str, ...] | None = None
    if s.peek_keyword() == "RETURN":
        s.skip(6)
        s.sp()
        s.char(0x28, "'(' after RETURN")
        opts: list[str] = []
        if not s.try_char(0x29):
            opts.append(s.keyword("a return option"))
            while s.try_sp():
                opts.append(s.keyword("a return option"))
            s.char(0x29, "')' closing RETURN options")
        for opt in opts:
            if opt not in RETURN_OPTIONS:
                raise ParseError(f"unknown SEARCH return option {opt[:40]}")
        return_options = tuple(opts)
        s.sp()
    charset: str | None = None
    codec = "utf-8"
    if s.peek_keyword() == "CHARSET":
        s.skip(7)
        s.sp()
        charset = s.astring_text("a charset").upper()
        if charset not in CHARSETS:
            raise BadCharsetError(f"charset {charset[:40]} is not supported")
        codec = "ascii" if charset == "US-ASCII" else "utf-8"
        s.sp()
    p = _Parser(s, codec, max_depth)
    keys = [p.key(1)]
    while s.try_sp():
        keys.append(p.key(1))
    key = keys[0] if len(keys) == 1 else And(tuple(keys))
    return SearchArgs(key, charset, return_options)
