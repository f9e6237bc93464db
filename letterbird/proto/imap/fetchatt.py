"""FETCH attributes (RFC 3501 §6.4.5, with RFC 7162 MODSEQ and RFC 4466 fetch modifiers).

Grammar (RFC 3501 §9; the MODSEQ item is RFC 7162 §7)::

    fetch           = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" /
                      fetch-att / "(" fetch-att *(SP fetch-att) ")")
    fetch-att       = "ENVELOPE" / "FLAGS" / "INTERNALDATE" /
                      "RFC822" [".HEADER" / ".SIZE" / ".TEXT"] /
                      "BODY" ["STRUCTURE"] / "UID" /
                      "BODY" section ["<" number "." nz-number ">"] /
                      "BODY.PEEK" section ["<" number "." nz-number ">"]
    fetch-att       =/ fetch-mod-sequence          ; "MODSEQ" (RFC 7162)
    section         = "[" [section-spec] "]"
    section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
    section-part    = nz-number *("." nz-number)
    section-spec    = section-msgtext / (section-part ["." section-text])
    section-text    = section-msgtext / "MIME"
    header-list     = "(" header-fld-name *(SP header-fld-name) ")"
    header-fld-name = astring

Macros (§6.4.5): ``ALL`` = ``(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)``, ``FAST`` =
``(FLAGS INTERNALDATE RFC822.SIZE)``, ``FULL`` = ``(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE
BODY)``. BINARY (RFC 3516) is not supported.

Each :class:`FetchAtt` precomputes its response label (``BODY[1.HEADER]<0>``) once per command,
so answering ``FETCH 1:*`` does not rebuild it per message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from letterbird.proto.imap.encoder import astring
from letterbird.proto.imap.grammar import ParseError, Scanner, decode_text
from letterbird.proto.imap.seqset import MAX_NUMBER

__all__ = [
    "MACROS",
    "SIMPLE_ATTS",
    "FetchAtt",
    "Section",
    "parse_fetch_atts",
]

SIMPLE_ATTS: Final = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
    }
)
"""Attribute names that take no section."""

_NAME: Final = re.compile(rb"[A-Za-z0-9.]+")
_PART: Final = re.compile(rb"[1-9][0-9]*(?:\.[1-9][0-9]*)*")
_SECTION_TEXT: Final = re.compile(rb"HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME", re.I)
_PARTIAL: Final = re.compile(rb"<([0-9]+)\.([0-9]+)>")


@dataclass(frozen=True, slots=True)
class Section:
    """``section-spec``: ``part`` is ``(1, 2)`` for ``1.2``; ``text`` is ``None`` (the whole
    part), ``HEADER``, ``HEADER.FIELDS``, ``HEADER.FIELDS.NOT``, ``TEXT`` or ``MIME``;
    ``fields`` are the header names for the ``HEADER.FIELDS`` forms (as the client wrote them)."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """The section spec as it appears between the brackets in the response."""
        out = b".".join(b"%d" % p for p in self.part)
        if self.text is not None:
            out = (out + b"." if out else b"") + self.text.encode("ascii")
            if self.fields:
                out += b" (" + b" ".join(astring(f) for f in self.fields) + b")"
        return out


@dataclass(frozen=True, slots=True)
class FetchAtt:
    """One fetch attribute.

    ``name`` is one of :data:`SIMPLE_ATTS`; for ``BODY[section]`` / ``BODY.PEEK[section]`` it is
    ``"BODY"`` with ``section`` set (``section is None`` for plain ``BODY``, the non-extensible
    BODYSTRUCTURE). ``partial`` is ``(origin, length)``. ``label`` is the response item name.
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None
    label: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.section is None:
            label = self.name.encode("ascii")
        else:
            label = b"BODY[" + self.section.encode() + b"]"
            if self.partial is not None:
                label += b"<%d>" % self.partial[0]
        object.__setattr__(self, "label", label)

    @property
    def sets_seen(self) -> bool:
        """Fetching this sets ``\\Seen`` (RFC 3501 §6.4.5): BODY[...] (not PEEK), RFC822,
        RFC822.TEXT."""
        if self.section is not None:
            return not self.peek
        return self.name in ("RFC822", "RFC822.TEXT")


MACROS: Final = {
    "ALL": tuple(FetchAtt(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
    "FAST": tuple(FetchAtt(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE")),
    "FULL": tuple(
        FetchAtt(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")
    ),
}


def _section(s: Scanner) -> Section:
    s.char(0x5B, "'['")
    if s.try_char(0x5D):
        return Section()
    part: tuple[int, ...] = ()
    m = s.match(_PART)
    if m is not None:
        nums = m.group().split(b".")
        if any(len(n) > 10 or int(n) > MAX_NUMBER for n in nums):
            raise ParseError("section part number is too large")
        part = tuple(int(n) for n in nums)
        if s.try_char(0x5D):
            return Section(part)
        s.char(0x2E, "'.' or ']' in section")
    text = s.expect(_SECTION_TEXT, "HEADER, HEADER.FIELDS, TEXT or MIME").group()
    name = text.decode("ascii").upper()
    if name == "MIME" and not part:
        raise ParseError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if name.startswith("HEADER.FIELDS"):
        s.sp()
        s.char(0x28, "'(' before header field names")
        names = [decode_text(s.astring("a header field name"), "header field name")]
        while s.try_sp():
            names.append(decode_text(s.astring("a header field name"), "header field name"))
        s.char(0x29, "')' after header field names")
        fields = tuple(names)
    s.char(0x5D, "']' closing the section")
    return Section(part, name, fields)


def _fetch_att(s: Scanner) -> FetchAtt:
    name = s.expect(_NAME, "a fetch attribute").group().decode("ascii").upper()
    if name in ("BODY", "BODY.PEEK") and s.peek() == 0x5B:
        section = _section(s)
        partial: tuple[int, int] | None = None
        m = s.match(_PARTIAL)
        if m is not None:
            origin, length = m.groups()
            if len(origin) > 10 or len(length) > 10:
                raise ParseError("partial range is too large")
            o, n = int(origin), int(length)
            if o > MAX_NUMBER or n > MAX_NUMBER or n == 0:
                raise ParseError("invalid partial range")
            partial = (o, n)
        return FetchAtt("BODY", section, name == "BODY.PEEK", partial)
    if name not in SIMPLE_ATTS:
        raise ParseError(f"unknown fetch attribute {name[:40]}")
    return FetchAtt(name)


def parse_fetch_atts(s: Scanner) -> tuple[tuple[FetchAtt, ...], str | None]:
    """Parse the attribute part of FETCH; returns the attributes and the macro name if any."""
    if s.try_char(0x28):
        atts = [_fetch_att(s)]
        while s.try_sp():
            atts.append(_fetch_att(s))
        s.char(0x29, "')' closing the fetch attributes")
        return tuple(atts), None
    macro = s.peek_keyword()
    if macro in MACROS:
        s.skip(len(macro))
        return MACROS[macro], macro
    return (_fetch_att(s),), None
