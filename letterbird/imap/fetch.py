"""FETCH response rendering: the items of one ``* n FETCH (...)`` (RFC 3501 §6.4.5, §7.4.2).

Pure code, no storage and no I/O: the session asks :func:`plan` once per command what the
attributes need (cached structure? message bytes? does the fetch set ``\\Seen``?), loads exactly
that with one storage query, optionally reads only :func:`byte_range` of each blob, and calls
:func:`render` per message. The values come from the structure parsed once at delivery
(:class:`letterbird.mime.MessageInfo`, with absolute byte offsets for every MIME part) and slices
of the stored bytes: no FETCH re-parses a message.

Items (RFC 3501 §6.4.5 and §9)::

    msg-att-dynamic = "FLAGS" SP "(" [flag-fetch *(SP flag-fetch)] ")"
    msg-att-static  = "ENVELOPE" SP envelope / "INTERNALDATE" SP date-time /
                      "RFC822" [".HEADER" / ".TEXT"] SP nstring /
                      "RFC822.SIZE" SP number /
                      "BODY" ["STRUCTURE"] SP body /
                      "BODY" section ["<" number ">"] SP nstring /
                      "UID" SP uniqueid
    fetch-mod-resp  = "MODSEQ" SP "(" permsg-modsequence ")"     ; RFC 7162 §3.1.4.1

Section semantics (§6.4.5), with what Dovecot 2.3 answers where the RFC is silent (recorded in
``tests/imap/test_fetch.py``):

* parts are numbered per message: a non-multipart message's part ``1`` is its body, so
  ``BODY[1.MIME]`` of a single-part message is the message header; the parts of a
  ``message/rfc822`` part are those of the encapsulated message, and its ``n.HEADER``/``n.TEXT``
  are the encapsulated message's header and body;
* ``HEADER``/``TEXT``/``HEADER.FIELDS`` of a part that is not ``message/rfc822``, and any part
  that does not exist, are an empty string, sent (like every body section, and like Dovecot) as
  the literal ``{0}``;
* ``HEADER.FIELDS`` keeps fields as stored (folded), matches names case-insensitively and ends
  with the blank line unless the message has none (:func:`letterbird.mime.get_header_fields`);
* ``<origin.length>`` takes a substring of the section; an origin past its end gives ``{0}``;
  the label is ``BODY[section]<origin>`` and ``BODY.PEEK`` is labelled ``BODY``.

Body values are always literals (RFC 3501 ``literal = "{" number "}" CRLF *CHAR8`` with
``CHAR8 = %x01-ff``): a NUL octet in a stored message is sent as 0x80, which keeps every size
and offset unchanged (Dovecot does the same). ``INTERNALDATE`` is rendered in UTC.

Cost: an attribute list is compiled once per command (:class:`Renderer`); ENVELOPE, BODY and
BODYSTRUCTURE are taken from the caller's per-blob memo when it has them (encoded once per
message content, not per FETCH); FLAGS and INTERNALDATE items are formatted once per distinct
flag set and date (small bounded tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from letterbird.mime import BodyPart, MessageInfo, find_part, get_header_fields, parse_message
from letterbird.mime.headers import header_section_end
from letterbird.proto.imap import encoder
from letterbird.proto.imap.fetchatt import FetchAtt, Section
from letterbird.proto.imap.structure import encode_bodystructure, encode_envelope

__all__ = ["FetchPlan", "Renderer", "byte_range", "plan", "render"]

_STRUCTURE_ATTS: Final = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE"})
_BLOB_ATTS: Final = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})
_NUL_TO_0X80: Final = bytes.maketrans(b"\x00", b"\x80")
_EMPTY_LITERAL: Final = b"{0}\r\n"


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """What a FETCH needs from storage, computed once per command."""

    needs_structure: bool
    """ENVELOPE, BODY, BODYSTRUCTURE or a body section other than ``BODY[]`` needs the cached
    :class:`MessageInfo`."""
    needs_blob: bool
    """Some item (``BODY[...]``, ``RFC822``, ``RFC822.HEADER``, ``RFC822.TEXT``) needs message
    bytes."""
    sets_seen: bool
    """A non-PEEK body item (or ``RFC822``/``RFC822.TEXT``): the session sets ``\\Seen`` (and
    reports the new FLAGS) for messages that lack it."""


def plan(atts: Sequence[FetchAtt]) -> FetchPlan:
    """What the attributes of one FETCH command need."""
    return _compile(tuple(atts)).plan


def byte_range(atts: Sequence[FetchAtt], info: MessageInfo | None) -> tuple[int, int | None]:
    """The smallest ``[start, end)`` of the message bytes that :func:`render` needs.

    ``end`` None means "to the end of the message"; ``(0, 0)`` means no bytes are needed. Pass
    the bytes read (``read_blob(id, start, end)``) to :func:`render` with ``blob_start=start``.
    Without ``info`` only items that need no structure can be narrowed, so anything that needs
    bytes gives ``(0, None)``.
    """
    return _byte_range(_compiled_for(atts), info)


def _byte_range(compiled: _Compiled, info: MessageInfo | None) -> tuple[int, int | None]:
    if not compiled.plan.needs_blob:
        return 0, 0
    if info is None:
        return 0, None
    lo: int | None = None
    hi = 0
    for att in compiled.body_atts:
        found = _att_range(att, info)
        if found is None:
            continue
        start, end = found
        lo = start if lo is None else min(lo, start)
        hi = max(hi, end)
    if lo is None:  # every requested section is missing
        return 0, 0
    return lo, (None if hi >= info.body.end else hi)


def render(
    atts: Sequence[FetchAtt],
    *,
    uid: int,
    flags: Iterable[str],
    internaldate: float,
    size: int,
    modseq: int,
    info: MessageInfo | None,
    blob: bytes | None,
    blob_start: int = 0,
    memo: MutableMapping[str, object] | None = None,
) -> list[bytes]:
    """The encoded ``label SP value`` items for one message, in request order, each label once.

    ``flags`` is the set to show (the session passes the post-STORE set, including
    ``\\Recent`` when the message is recent in this session), written system flags first.
    ``internaldate`` is seconds since the epoch. ``info`` and ``blob`` are needed as
    :func:`plan` says; ``blob`` may be the range :func:`byte_range` named, starting at offset
    ``blob_start`` of the message.

    ``memo`` (with ``info``) holds values derived from that structure, kept by the caller
    between commands (its structure cache): the encoded ``ENVELOPE``, ``BODY`` and
    ``BODYSTRUCTURE`` items are taken from it, or encoded once and stored there.

    Raises ValueError when an item needs structure or bytes that were not passed (a session
    bug, not a client error). When only ``info`` is missing but the whole message is at hand
    the message is parsed here, so a damaged cached structure still gets an answer.
    """
    compiled = _compiled_for(atts)
    ctx = _Message(uid, flags, internaldate, size, modseq, info, blob, blob_start)
    if memo is not None and info is not None:
        ctx.memo = memo
    return [item(ctx) for item in compiled.items]


class Renderer:
    """:func:`plan`, :func:`byte_range` and :func:`render` for one attribute list, compiled
    once: a FETCH renders the same list for every message."""

    __slots__ = ("_compiled", "_items", "plan")

    def __init__(self, atts: Sequence[FetchAtt]) -> None:
        self._compiled = _compile(tuple(atts))
        self._items = self._compiled.items
        self.plan = self._compiled.plan

    def byte_range(self, info: MessageInfo | None) -> tuple[int, int | None]:
        """As :func:`byte_range`."""
        return _byte_range(self._compiled, info)

    def render(
        self,
        uid: int,
        flags: Iterable[str],
        internaldate: float,
        size: int,
        modseq: int,
        info: MessageInfo | None,
        blob: bytes | None,
        blob_start: int = 0,
        memo: MutableMapping[str, object] | None = None,
    ) -> list[bytes]:
        """As :func:`render`."""
        ctx = _Message(uid, flags, internaldate, size, modseq, info, blob, blob_start)
        if memo is not None and info is not None:
            ctx.memo = memo
        return [item(ctx) for item in self._items]


# ---------------------------------------------------------------------------------------------
# Per-message context


class _Message:
    __slots__ = (
        "_info",
        "blob",
        "blob_start",
        "flags",
        "internaldate",
        "memo",
        "modseq",
        "size",
        "uid",
    )

    def __init__(
        self,
        uid: int,
        flags: Iterable[str],
        internaldate: float,
        size: int,
        modseq: int,
        info: MessageInfo | None,
        blob: bytes | None,
        blob_start: int,
    ) -> None:
        self.uid = uid
        self.flags = flags
        self.internaldate = internaldate
        self.size = size
        self.modseq = modseq
        self._info = info
        self.blob = blob
        self.blob_start = blob_start
        self.memo: MutableMapping[str, object] | None = None

    def memoised(self, name: str, encode: Callable[[MessageInfo], bytes]) -> bytes:
        """The item ``name`` encoded from the structure, through the memo when there is one."""
        memo = self.memo
        if memo is None:
            return encode(self.info)
        found = memo.get(name)
        if isinstance(found, bytes):
            return found
        item = encode(self.info)
        memo[name] = item
        return item

    @property
    def info(self) -> MessageInfo:
        if self._info is None:
            if self.blob is None or self.blob_start != 0 or len(self.blob) != self.size:
                raise ValueError("this FETCH needs the message structure")
            self._info = parse_message(self.blob)
        return self._info

    def has_info(self) -> bool:
        return self._info is not None

    def slice(self, start: int, end: int | None = None) -> bytes:
        """Message bytes ``[start, end)`` (``end`` None: to the end of the message)."""
        blob = self.blob
        if blob is None:
            raise ValueError("this FETCH needs the message bytes")
        base = self.blob_start
        stop = base + len(blob) if end is None else end
        if start < base or stop > base + len(blob):
            raise ValueError(
                f"message bytes [{start}, {stop}) are outside the range read "
                f"[{base}, {base + len(blob)})"
            )
        if start == base and stop == base + len(blob):
            return blob
        return blob[start - base : stop - base]

    def header_end(self) -> int:
        """End of the message's header section (after the blank line), found in the bytes
        (used only when the structure was not loaded)."""
        if self.blob is None or self.blob_start != 0:
            raise ValueError("this FETCH needs the message structure or the whole message")
        return header_section_end(self.blob)


# ---------------------------------------------------------------------------------------------
# Compilation of an attribute list (once per command)

_Item = Callable[[_Message], bytes]


@dataclass(frozen=True, slots=True)
class _Compiled:
    plan: FetchPlan
    items: tuple[_Item, ...]
    body_atts: tuple[FetchAtt, ...]


_last: tuple[Sequence[FetchAtt], tuple[FetchAtt, ...], _Compiled] | None = None


def _compiled_for(atts: Sequence[FetchAtt]) -> _Compiled:
    """The compiled form of ``atts``. A FETCH renders the same attribute sequence for every
    message: when it is the object of the previous call holding the same attribute objects
    (a list may have been changed in place), the answer costs identity checks, not a hash of
    every attribute."""
    global _last
    last = _last
    if (
        last is not None
        and last[0] is atts
        and len(atts) == len(last[1])
        and all(a is b for a, b in zip(atts, last[1], strict=True))
    ):
        return last[2]
    frozen = tuple(atts)
    compiled = _compile(frozen)
    _last = (atts, frozen, compiled)
    return compiled


@lru_cache(maxsize=256)
def _compile(atts: tuple[FetchAtt, ...]) -> _Compiled:
    seen_labels: set[bytes] = set()
    items: list[_Item] = []
    body_atts: list[FetchAtt] = []
    needs_structure = needs_blob = sets_seen = False
    for att in atts:
        sets_seen = sets_seen or att.sets_seen
        if att.section is not None or att.name in _BLOB_ATTS:
            needs_blob = True
            body_atts.append(att)
            whole = att.section is not None and att.section == Section()
            needs_structure = needs_structure or not (whole or att.name == "RFC822")
        elif att.name in _STRUCTURE_ATTS:
            needs_structure = True
        if att.label in seen_labels:
            continue
        seen_labels.add(att.label)
        items.append(_item(att))
    return _Compiled(
        FetchPlan(needs_structure, needs_blob, sets_seen), tuple(items), tuple(body_atts)
    )


def _item(att: FetchAtt) -> _Item:
    """The renderer of one attribute."""
    if att.section is not None:
        return _section_item(att.label, att.section, att.partial)
    if att.name in _RFC822_SECTIONS:
        return _section_item(att.label, _RFC822_SECTIONS[att.name], None)
    simple = _SIMPLE.get(att.name)
    if simple is None:  # FetchAtt only admits known names; a new one must be added here
        raise ValueError(f"unsupported fetch attribute {att.name}")
    return simple


def _uid(m: _Message) -> bytes:
    return b"UID %d" % m.uid


def _flag_order(flag: str) -> tuple[bool, str]:
    return (not flag.startswith("\\"), flag)


_FLAG_ITEMS: dict[frozenset[str], bytes] = {}
_MAX_FLAG_ITEMS: Final = 1024


def _flags(m: _Message) -> bytes:
    flags = m.flags
    if isinstance(flags, frozenset):  # few distinct sets exist: each is encoded once
        item = _FLAG_ITEMS.get(flags)
        if item is None:
            if len(_FLAG_ITEMS) >= _MAX_FLAG_ITEMS:
                _FLAG_ITEMS.clear()
            item = _FLAG_ITEMS[flags] = _encode_flags(flags)
        return item
    return _encode_flags(flags)


def _encode_flags(flags: Iterable[str]) -> bytes:
    return b"FLAGS " + encoder.flag_list(sorted(flags, key=_flag_order))


_DATE_ITEMS: dict[float, bytes] = {}
_MAX_DATE_ITEMS: Final = 8192


def _internaldate(m: _Message) -> bytes:
    # Clients fetch the same messages' dates again and again (every resync of a window):
    # each is formatted once while it stays among the last few thousand.
    item = _DATE_ITEMS.get(m.internaldate)
    if item is None:
        if len(_DATE_ITEMS) >= _MAX_DATE_ITEMS:
            _DATE_ITEMS.clear()
        when = datetime.fromtimestamp(m.internaldate, UTC)
        item = _DATE_ITEMS[m.internaldate] = b"INTERNALDATE " + encoder.internaldate(when)
    return item


def _rfc822_size(m: _Message) -> bytes:
    return b"RFC822.SIZE %d" % m.size


def _modseq(m: _Message) -> bytes:
    return b"MODSEQ (%d)" % m.modseq


def _encode_envelope(info: MessageInfo) -> bytes:
    return b"ENVELOPE " + encode_envelope(info.envelope)


def _encode_body(info: MessageInfo) -> bytes:
    return b"BODY " + encode_bodystructure(info.body, extensible=False)


def _encode_bodystructure(info: MessageInfo) -> bytes:
    return b"BODYSTRUCTURE " + encode_bodystructure(info.body, extensible=True)


def _envelope(m: _Message) -> bytes:
    return m.memoised("ENVELOPE", _encode_envelope)


def _body(m: _Message) -> bytes:
    return m.memoised("BODY", _encode_body)


def _bodystructure(m: _Message) -> bytes:
    return m.memoised("BODYSTRUCTURE", _encode_bodystructure)


_SIMPLE: Final[dict[str, _Item]] = {
    "UID": _uid,
    "FLAGS": _flags,
    "INTERNALDATE": _internaldate,
    "RFC822.SIZE": _rfc822_size,
    "MODSEQ": _modseq,
    "ENVELOPE": _envelope,
    "BODY": _body,
    "BODYSTRUCTURE": _bodystructure,
}


def _literal(data: bytes) -> bytes:
    if not data:
        return _EMPTY_LITERAL
    if b"\x00" in data:
        data = data.translate(_NUL_TO_0X80)
    return b"{%d}\r\n%s" % (len(data), data)


def _section_item(label: bytes, section: Section, partial: tuple[int, int] | None) -> _Item:
    """The renderer of ``BODY[section]<partial>`` (or an RFC822 item) labelled ``label``."""
    prefix = label + b" "
    if section.text not in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):

        def render_range(m: _Message) -> bytes:
            found = _section_range(section, m)
            if found is None:
                return prefix + _EMPTY_LITERAL
            return prefix + _literal(m.slice(*_narrow(found, partial)))

        return render_range

    names = section.fields
    negate = section.text == "HEADER.FIELDS.NOT"

    def render_fields(m: _Message) -> bytes:
        found = _section_range(section, m)
        if found is None:
            return prefix + _EMPTY_LITERAL
        header = m.slice(*found)
        data = get_header_fields(header, names, 0, len(header), negate=negate)
        if partial is not None:
            origin, length = partial
            data = data[origin : origin + length]
        return prefix + _literal(data)

    return render_fields


def _narrow(found: tuple[int, int], partial: tuple[int, int] | None) -> tuple[int, int]:
    """The part of ``[start, end)`` a ``<origin.length>`` partial range selects."""
    if partial is None:
        return found
    start, end = found
    origin, length = partial
    return min(start + origin, end), min(start + origin + length, end)


def _section_range(section: Section, m: _Message) -> tuple[int, int] | None:
    """Absolute byte range of ``section`` in the message; None if it does not exist. A
    section of the whole message is found without the structure when it was not loaded."""
    if section.part or m.has_info():
        return _range(section, m.info.body)
    if section.text is None:
        return 0, m.size
    header_end = m.header_end()
    return (header_end, m.size) if section.text == "TEXT" else (0, header_end)


def _range(section: Section, root: BodyPart) -> tuple[int, int] | None:
    """Absolute byte range of ``section`` below the message whose body is ``root``; None if
    the part does not exist or the specifier does not apply to it. For the ``HEADER.FIELDS``
    forms this is the header section the fields are taken from."""
    text = section.text
    if not section.part:
        if text is None:
            return root.start, root.end
        if text == "TEXT":
            return root.body_start, root.end
        return root.start, root.body_start
    part = find_part(root, section.part)
    if part is None:
        return None
    if text is None:
        return part.body_start, part.end
    if text == "MIME":
        return part.start, part.body_start
    if part.message is None:  # HEADER, TEXT, HEADER.FIELDS only apply to message/rfc822
        return None
    inner = part.message[1]
    if text == "TEXT":
        return inner.body_start, inner.end
    return inner.start, inner.body_start


_RFC822_SECTIONS: Final = {
    "RFC822": Section(),
    "RFC822.HEADER": Section((), "HEADER"),
    "RFC822.TEXT": Section((), "TEXT"),
}


def _att_range(att: FetchAtt, info: MessageInfo) -> tuple[int, int] | None:
    """The bytes ``att`` reads, narrowed by its partial range where that is exact."""
    section = att.section if att.section is not None else _RFC822_SECTIONS[att.name]
    found = _range(section, info.body)
    if found is None or section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return found
    return _narrow(found, att.partial)
