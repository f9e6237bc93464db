"""SEARCH evaluation: does one message match a parsed search program (RFC 3501 §6.4.4)?

Pure code, no storage and no I/O. The session parses the program once
(:func:`letterbird.proto.imap.search.parse_search`), asks :func:`needs` whether the keys need the
cached structure and/or the message bytes, loads exactly that for the candidate messages, and
evaluates each message with a :class:`Searcher` (one reused context per command; :func:`matches`
is the same for one message). The key tree is compiled once into nested closures (cached), so
evaluating ``1:*`` costs one call chain per message; lazily computed per-message values (header
fields, decoded text) are shared by every key that asks for them, and kept in the caller's
per-blob :data:`Memo` for the next command, where they stand in for the bytes
(:func:`blob_range` then asks for none). A program that needs only envelope fields takes the
envelope alone (:attr:`Searcher.envelope_only`), which is much cheaper to decode.

Semantics (RFC 3501 §6.4.4, with Dovecot 2.3's answers where the RFC leaves room; the expected
results are recorded in ``tests/imap/test_search.py``):

* strings match as case-insensitive substrings (Unicode case folding) of *decoded* text: RFC
  2047 encoded-words in header fields, transfer encodings and charsets in bodies; an empty
  string matches every message that has the field (``HEADER Cc ""``: has a Cc field);
* ``FROM``/``TO``/``CC``/``BCC`` match the address list written as ``Name <mailbox@host>, ...``
  with decoded names (as Dovecot does), ``SUBJECT`` the decoded subject, ``HEADER`` any field of
  that name, unfolded; header fields come from the message bytes when the session passed them,
  otherwise from the cached envelope (``From``, ``To``, ``Cc``, ``Bcc``, ``Subject``, ``Date``,
  ``Message-ID`` and ``In-Reply-To``: the fields :func:`needs` says need no bytes);
* ``BODY`` searches the decoded text of the ``text/*`` (and non-rfc822 ``message/*``) parts at
  any depth, including inside attached messages, HTML both as source and as visible text; not
  preambles, epilogues, MIME headers or other attachments; ``TEXT`` adds every header section
  (the message's, each part's MIME header and attached messages' headers);
* ``BEFORE``/``ON``/``SINCE`` compare the date of INTERNALDATE in UTC (the server's time zone);
  ``SENTBEFORE``/``SENTON``/``SENTSINCE`` the date written in the Date field, disregarding time
  and zone; a message without a usable Date field counts as sent on 1 January 1970, as in
  Dovecot;
* ``LARGER n`` is RFC822.SIZE > n, ``SMALLER n`` is < n; ``RECENT`` is the session's \\Recent;
  ``KEYWORD`` matches keywords case-insensitively; ``MODSEQ n`` is the message's mod-sequence
  >= n (RFC 7162 §3.1.5); sequence sets and ``UID`` sets resolve ``*`` to the largest number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import date
from email.utils import parsedate_tz
from functools import lru_cache
from typing import Final

from letterbird.mime import (
    DEFAULT_LIMITS,
    BodyPart,
    Envelope,
    MessageInfo,
    decode_words,
    parse_message,
)
from letterbird.mime.address import display_addresses, parse_addresses
from letterbird.mime.charsets import decode_text
from letterbird.mime.headers import header_section_end, parse_fields, strip_comments
from letterbird.mime.text import decode_transfer, html_to_text
from letterbird.proto.imap.search import (
    All,
    And,
    BodyKey,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    Not,
    Or,
    SearchKey,
    SeqSetKey,
    SizeKey,
    TextKey,
    UidKey,
)

__all__ = ["Memo", "SearchMessage", "Searcher", "blob_range", "matches", "needs"]

_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_SECONDS_PER_DAY: Final = 86400
_ADDRESS_FIELDS: Final = frozenset({"from", "to", "cc", "bcc", "sender", "reply-to"})
# Fields the cached envelope holds exactly (Sender and Reply-To are not: the envelope
# defaults them to From when they are absent).
_ENVELOPE_FIELDS: Final = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to"}
)


@dataclass(frozen=True, slots=True)
class SearchMessage:
    """What the session knows about one message of the selected mailbox."""

    seq: int
    uid: int
    flags: frozenset[str]
    internaldate: float  # seconds since the epoch
    size: int
    modseq: int
    recent: bool  # \Recent in this session
    info: MessageInfo | None  # None when the key needs no structure


def needs(key: SearchKey) -> tuple[bool, bool]:
    """``(needs_structure, needs_bytes)``: whether evaluating ``key`` needs the cached
    :class:`MessageInfo` and whether it needs the message bytes (any header field the envelope
    does not hold, ``BODY``, ``TEXT``)."""
    return _compile(key).needs


Memo = MutableMapping[str, object]
"""Values derived from one message's immutable content, kept between commands by the caller
(the session's structure cache, keyed by blob hash). The evaluator stores what it decoded
there (``e:<field>``/``h:<field>``: casefolded values of a header field taken from the
envelope or from the bytes; ``body``/``headers``: the casefolded text BODY/TEXT search) and
uses it instead of decoding again. The mapping may decline to keep a value."""


def blob_range(
    key: SearchKey, info: MessageInfo | None, memo: Memo | None = None
) -> tuple[int, int | None]:
    """The bytes of the message :func:`matches` needs: ``(0, 0)`` none, ``(0, header_end)`` when
    only header fields are searched and ``info`` tells where the header ends, else ``(0, None)``
    (the whole message). Pass exactly those bytes as ``blob``. With a ``memo`` that already
    holds everything the key would decode from the bytes, nothing is needed."""
    return _blob_range(_compile(key), info, memo)


def _blob_range(
    compiled: _Compiled, info: MessageInfo | None, memo: Memo | None
) -> tuple[int, int | None]:
    if not compiled.needs[1]:
        return 0, 0
    if memo is not None and all(k in memo for k in compiled.memo_keys):
        return 0, 0
    if compiled.header_only and info is not None:
        return 0, info.body.body_start
    return 0, None


def matches(
    key: SearchKey,
    msg: SearchMessage,
    *,
    blob: bytes | None,
    largest_seq: int,
    largest_uid: int,
) -> bool:
    """Whether ``msg`` matches ``key``. ``largest_seq``/``largest_uid`` are what ``*`` means.

    ``blob`` is the message bytes (or the prefix :func:`blob_range` named) when :func:`needs`
    asks for them. A key whose data was not passed does not match (and never raises): header
    keys fall back to the envelope, BODY/TEXT without bytes match nothing.
    """
    compiled = _compiled_for(key)
    ctx = _Context(largest_seq, largest_uid, compiled.fields)
    ctx.load(msg.seq, msg.uid, msg.flags, msg.recent, msg.internaldate, msg.size, msg.modseq)
    ctx.content(msg.info, None, blob, blob is not None)
    return compiled.predicate(ctx)


class Searcher:
    """One search program evaluated over many messages (one SEARCH command).

    The same as :func:`matches` per message, without building a :class:`SearchMessage` and a
    context for each: one context is reused, so a message costs one call. Use
    :meth:`matches_state` when :attr:`needs_record` is False (flag, sequence and UID keys),
    else :meth:`matches` with what storage said and, when :attr:`needs_structure` and
    :attr:`needs_bytes` say so, the cached structure, its ``memo`` and the bytes
    :meth:`blob_range` names. When :attr:`envelope_only`, the structure is needed for the
    envelope's header fields only: pass the ``envelope`` instead of ``info``.
    """

    __slots__ = (
        "_compiled",
        "_ctx",
        "envelope_only",
        "needs_bytes",
        "needs_record",
        "needs_structure",
    )

    def __init__(self, key: SearchKey, *, largest_seq: int, largest_uid: int) -> None:
        compiled = _compile(key)
        self._compiled = compiled
        self._ctx = _Context(largest_seq, largest_uid, compiled.fields)
        self.needs_structure, self.needs_bytes = compiled.needs
        self.needs_record = compiled.needs_record
        self.envelope_only = compiled.envelope_only

    def blob_range(self, info: MessageInfo | None, memo: Memo | None) -> tuple[int, int | None]:
        """As :func:`blob_range` for this program."""
        return _blob_range(self._compiled, info, memo)

    def matches_state(self, seq: int, uid: int, flags: frozenset[str], recent: bool) -> bool:
        """A message, for a program that looks at nothing but flags, numbers and UIDs."""
        ctx = self._ctx
        ctx.seq = seq
        ctx.uid = uid
        ctx.flags = flags
        ctx.recent = recent
        return self._compiled.predicate(ctx)

    def matches(
        self,
        seq: int,
        uid: int,
        flags: frozenset[str],
        recent: bool,
        internaldate: float,
        size: int,
        modseq: int,
        info: MessageInfo | None,
        memo: Memo | None,
        blob: bytes | None,
        envelope: Envelope | None = None,
    ) -> bool:
        """A message; ``blob`` is what :meth:`blob_range` named (None when it said nothing);
        ``envelope`` stands in for ``info`` when :attr:`envelope_only`."""
        ctx = self._ctx
        ctx.load(seq, uid, flags, recent, internaldate, size, modseq)
        ctx.content(info, memo, blob, self.needs_bytes, envelope)
        return self._compiled.predicate(ctx)


# ---------------------------------------------------------------------------------------------
# Per-message context: lazily computed, shared by all keys of one evaluation


class _Context:
    __slots__ = (
        "_body",
        "_envelope",
        "_fields",
        "_headers",
        "_info",
        "blob",
        "flags",
        "from_bytes",
        "internaldate",
        "largest_seq",
        "largest_uid",
        "memo",
        "modseq",
        "recent",
        "seq",
        "size",
        "uid",
        "wanted",
    )

    def __init__(self, largest_seq: int, largest_uid: int, wanted: frozenset[str]) -> None:
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid
        self.wanted = wanted
        self.seq = self.uid = self.size = self.modseq = 0
        self.internaldate = 0.0
        self.flags: frozenset[str] = frozenset()
        self.recent = False
        self.content(None, None, None, False)

    def load(
        self,
        seq: int,
        uid: int,
        flags: frozenset[str],
        recent: bool,
        internaldate: float,
        size: int,
        modseq: int,
    ) -> None:
        self.seq = seq
        self.uid = uid
        self.flags = flags
        self.recent = recent
        self.internaldate = internaldate
        self.size = size
        self.modseq = modseq

    def content(
        self,
        info: MessageInfo | None,
        memo: Memo | None,
        blob: bytes | None,
        from_bytes: bool,
        envelope: Envelope | None = None,
    ) -> None:
        """The message's structure (or only its ``envelope``), memo and bytes.
        ``from_bytes``: header fields are the ones written in the bytes (from ``blob``, or
        from ``memo`` when it holds them all); otherwise the cached envelope's."""
        self._info = info
        self._envelope = envelope if info is None else info.envelope
        self.memo = memo
        self.blob = blob
        self.from_bytes = from_bytes
        self._fields: dict[str, list[str]] | None = None
        self._body: str | None = None
        self._headers: str | None = None

    @property
    def info(self) -> MessageInfo | None:
        """The structure; parsed from the bytes when the session passed the whole message but
        no structure."""
        if self._info is None and self.blob is not None and len(self.blob) == self.size:
            self._info = parse_message(self.blob)
        return self._info

    @property
    def cached_info(self) -> MessageInfo | None:
        """The structure the session passed (never parsed here)."""
        return self._info

    def field(self, name: str) -> list[str] | None:
        """Decoded values of header field ``name`` (lowercase); [] if absent; None if unknown
        (neither bytes nor an envelope that holds it)."""
        if self.blob is not None:
            if self._fields is None:
                self._fields = _header_fields(self.blob, self._info, self.wanted)
            return self._fields.get(name, [])
        envelope = self._envelope
        if envelope is None or name not in _ENVELOPE_FIELDS:
            return None
        return _envelope_field(envelope, name)

    def folded(self, name: str) -> list[str] | None:
        """:meth:`field`, casefolded, through the memo."""
        memo = self.memo
        key = ("h:" if self.from_bytes else "e:") + name
        if memo is not None:
            found = memo.get(key)
            if isinstance(found, list):
                return found
        if self.from_bytes and self.blob is None:
            return None
        values = self.field(name)
        if values is None:
            return None
        folded = [v.casefold() for v in values]
        if memo is not None:
            memo[key] = folded
        return folded

    def body_text(self) -> str | None:
        """Casefolded decoded text of the text parts, or None without bytes and structure."""
        if self._body is None:
            memo = self.memo
            if memo is not None:
                found = memo.get("body")
                if isinstance(found, str):
                    self._body = found
                    return found
            info = self.info
            if self.blob is None or info is None:
                return None
            self._body = "\n".join(_body_texts(self.blob, info.body)).casefold()
            if memo is not None:
                memo["body"] = self._body
        return self._body

    def header_text(self) -> str:
        """Casefolded decoded text of every header section (TEXT's other half); only after
        :meth:`body_text` found the bytes and the structure (or the memo held both texts)."""
        if self._headers is None:
            memo = self.memo
            if memo is not None:
                found = memo.get("headers")
                if isinstance(found, str):
                    self._headers = found
                    return found
            blob, info = self.blob, self.info
            assert blob is not None and info is not None
            self._headers = "\n".join(_header_texts(blob, info.body)).casefold()
            if memo is not None:
                memo["headers"] = self._headers
        return self._headers


def _decode_header_bytes(raw: bytes) -> str:
    return decode_words(decode_text(raw, ""))


def _header_fields(
    blob: bytes, info: MessageInfo | None, wanted: frozenset[str]
) -> dict[str, list[str]]:
    end = info.body.body_start if info is not None else header_section_end(blob)
    lim = DEFAULT_LIMITS
    raw = parse_fields(
        blob,
        0,
        min(end, len(blob)),
        frozenset(n.encode("utf-8") for n in wanted),
        max_bytes=lim.max_header_bytes,
        max_fields=lim.max_header_fields,
        max_value=lim.max_field_value,
    )
    out: dict[str, list[str]] = {}
    for name_bytes, values in raw.items():
        name = name_bytes.decode("utf-8")
        if name in _ADDRESS_FIELDS:
            out[name] = [
                display_addresses(parse_addresses(decode_text(v, ""), lim.max_addresses))
                for v in values
            ]
        else:
            out[name] = [_decode_header_bytes(v) for v in values]
    return out


def _envelope_field(env: Envelope, name: str) -> list[str]:
    if name in _ADDRESS_FIELDS:
        addresses = {"from": env.from_, "to": env.to, "cc": env.cc, "bcc": env.bcc}[name]
        return [display_addresses(list(addresses))] if addresses else []
    value = {
        "subject": env.subject,
        "date": env.date,
        "message-id": env.message_id,
        "in-reply-to": env.in_reply_to,
    }[name]
    return [] if value is None else [decode_words(value)]


def _leaves(part: BodyPart) -> Iterator[BodyPart]:
    """Every part below ``part`` (itself included), entering attached messages, in order."""
    yield part
    for child in part.parts:
        yield from _leaves(child)
    if part.message is not None:
        yield from _leaves(part.message[1])


def _body_texts(blob: bytes, root: BodyPart) -> Iterator[str]:
    for part in _leaves(root):
        if part.parts or part.message is not None:
            continue
        if part.content_type != "text" and part.content_type != "message":
            continue
        raw = decode_transfer(blob[part.body_start : part.end], part.encoding)
        text = decode_text(raw, part.param("charset") or "")
        yield text
        if part.subtype == "html":
            yield " ".join(html_to_text(text).split())


def _header_texts(blob: bytes, root: BodyPart) -> Iterator[str]:
    for part in _leaves(root):
        if part.body_start > part.start:
            raw = blob[part.start : part.body_start]
            yield _decode_header_bytes(raw.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t"))


def _sent_ordinal(ctx: _Context) -> int:
    """The Date field's date as written (day ordinal); 1970-01-01 without a usable one."""
    info = ctx.cached_info
    if info is not None:
        return info.date.date().toordinal() if info.date is not None else _EPOCH_ORDINAL
    values = ctx.field("date") or []
    for value in values[:1]:
        parsed = parsedate_tz(strip_comments(value[:256]))
        if parsed is not None:
            try:
                return date(parsed[0], parsed[1], parsed[2]).toordinal()
            except ValueError:
                break
    return _EPOCH_ORDINAL


# ---------------------------------------------------------------------------------------------
# Compilation (once per key tree)

_Predicate = Callable[[_Context], bool]


@dataclass(frozen=True, slots=True)
class _Compiled:
    predicate: _Predicate
    fields: frozenset[str]  # lowercase names of the header fields the keys look at
    needs: tuple[bool, bool]
    header_only: bool  # the bytes are needed for header fields only
    needs_record: bool  # anything beyond flags, sequence numbers and UIDs
    memo_keys: tuple[str, ...]  # memo entries that stand in for the bytes
    envelope_only: bool  # the structure is needed for envelope fields only


_last: tuple[object, _Compiled] | None = None


def _compiled_for(key: SearchKey) -> _Compiled:
    """The same key object evaluated again (SEARCH evaluates one tree per message) costs an
    identity check, not a hash of the whole tree."""
    global _last
    last = _last
    if last is not None and last[0] is key:
        return last[1]
    compiled = _compile(key)
    _last = (key, compiled)
    return compiled


@lru_cache(maxsize=128)
def _compile(key: SearchKey) -> _Compiled:
    wanted = frozenset(_header_names(key))
    structure, blob, header_only = _needs(key)
    record = any(not isinstance(k, _STATE_KEYS) for k in _walk(key))
    header_keys = {k.name.lower() for k in _walk(key) if isinstance(k, HeaderKey)}
    memo_keys: list[str] = [f"h:{name}" for name in sorted(header_keys)]
    if any(isinstance(k, BodyKey | TextKey) for k in _walk(key)):
        memo_keys.append("body")
    if any(isinstance(k, TextKey) for k in _walk(key)):
        memo_keys.append("headers")
    sent = any(isinstance(k, DateKey) and k.field == "sent" for k in _walk(key))
    envelope_only = structure and not blob and not sent
    return _Compiled(
        _predicate(key),
        wanted,
        (structure, blob),
        header_only,
        record,
        tuple(memo_keys),
        envelope_only,
    )


# Keys answered from the session's state alone (and the combinators).
_STATE_KEYS: Final = (All, FlagKey, SeqSetKey, UidKey, Not, Or, And)


def _walk(key: SearchKey) -> Iterator[SearchKey]:
    yield key
    if isinstance(key, Not):
        yield from _walk(key.key)
    elif isinstance(key, Or):
        yield from _walk(key.left)
        yield from _walk(key.right)
    elif isinstance(key, And):
        for k in key.keys:
            yield from _walk(k)


def _header_names(key: SearchKey) -> Iterator[str]:
    for k in _walk(key):
        if isinstance(k, HeaderKey):
            yield k.name.lower()
        elif isinstance(k, DateKey) and k.field == "sent":
            yield "date"


def _needs(key: SearchKey) -> tuple[bool, bool, bool]:
    """(needs structure, needs bytes, bytes only for header fields)."""
    structure = blob = False
    header_only = True
    for k in _walk(key):
        if isinstance(k, HeaderKey):
            structure = True
            if k.name.lower() not in _ENVELOPE_FIELDS:
                blob = True
        elif isinstance(k, DateKey) and k.field == "sent":
            structure = True
        elif isinstance(k, BodyKey | TextKey):
            structure = blob = True
            header_only = False
    return structure, blob, header_only


def _predicate(key: SearchKey) -> _Predicate:
    if isinstance(key, All):
        return _always
    if isinstance(key, FlagKey):
        return _flag_predicate(key)
    if isinstance(key, HeaderKey):
        return _header_predicate(key)
    if isinstance(key, BodyKey | TextKey):
        return _text_predicate(key)
    if isinstance(key, DateKey):
        return _date_predicate(key)
    if isinstance(key, SizeKey):
        return _size_predicate(key)
    if isinstance(key, SeqSetKey):
        seqset = key.seqset
        return lambda c: seqset.contains(c.seq, c.largest_seq)
    if isinstance(key, UidKey):
        uids = key.uids
        return lambda c: uids.contains(c.uid, c.largest_uid)
    if isinstance(key, ModSeqKey):
        modseq = key.modseq
        return lambda c: c.modseq >= modseq
    if isinstance(key, Not):
        inner = _predicate(key.key)
        return lambda c: not inner(c)
    if isinstance(key, Or):
        left = _predicate(key.left)
        right = _predicate(key.right)
        return lambda c: left(c) or right(c)
    parts = tuple(_predicate(k) for k in _cheap_first(key.keys))
    return lambda c: all(p(c) for p in parts)


def _always(ctx: _Context) -> bool:
    return True


def _cost(key: SearchKey) -> int:
    """Rough evaluation cost, so an AND tests flags before it decodes bodies."""
    return max(
        3 if isinstance(k, BodyKey | TextKey) else 2 if isinstance(k, HeaderKey) else 0
        for k in _walk(key)
    )


def _cheap_first(keys: tuple[SearchKey, ...]) -> list[SearchKey]:
    return sorted(keys, key=_cost)


def _flag_predicate(key: FlagKey) -> _Predicate:
    flag, present = key.flag, key.present
    if flag == "\\Recent":
        return lambda c: c.recent is present
    if flag.startswith("\\"):
        return lambda c: (flag in c.flags) is present
    folded = flag.casefold()

    def has_keyword(c: _Context) -> bool:
        flags = c.flags
        found = flag in flags or any(f.casefold() == folded for f in flags)
        return found is present

    return has_keyword


def _header_predicate(key: HeaderKey) -> _Predicate:
    name = key.name.lower()
    needle = key.value.casefold()

    def header_matches(c: _Context) -> bool:
        values = c.folded(name)
        if not values:
            return False
        if len(values) == 1:  # the usual case: the field once
            return needle in values[0]
        return any(needle in v for v in values)

    return header_matches


def _text_predicate(key: BodyKey | TextKey) -> _Predicate:
    needle = key.value.casefold()
    with_headers = isinstance(key, TextKey)

    def text_matches(c: _Context) -> bool:
        body = c.body_text()
        if body is None:
            return False
        if needle in body:
            return True
        return with_headers and needle in c.header_text()

    return text_matches


def _date_predicate(key: DateKey) -> _Predicate:
    day = key.date.toordinal()
    op = key.op

    def compare(ordinal: int) -> bool:
        if op == "before":
            return ordinal < day
        if op == "on":
            return ordinal == day
        return ordinal >= day

    if key.field == "internal":
        return lambda c: compare(_EPOCH_ORDINAL + int(c.internaldate // _SECONDS_PER_DAY))
    return lambda c: compare(_sent_ordinal(c))


def _size_predicate(key: SizeKey) -> _Predicate:
    size = key.size
    if key.op == "larger":
        return lambda c: c.size > size
    return lambda c: c.size < size
