"""Parse a stored message once: MIME tree with byte offsets, envelope, snippet, attachment flag.

Implements RFC 2045/2046 (MIME headers, multipart bodies, ``message/rfc822`` encapsulation,
``multipart/digest`` defaults), RFC 5322 (header fields, addresses) as RFC 3501 §7.4.2 ENVELOPE
and BODYSTRUCTURE need them, and RFC 3501 §6.4.5 section numbering.

Why hand-written: the stdlib ``email`` package copies every part, keeps no byte offsets, and its
``policy.default`` header parser is quadratic on hostile header fields (CPython gh-136063). IMAP
serves ``BODY[n]``, ``BODY[n.MIME]``, ``BODY[n.HEADER]``, ``BODY[n.TEXT]`` and partial fetches
straight from the stored bytes, so what the store needs is *offsets*, found once at delivery.
This splitter finds header ends and boundary lines with ``bytes.find`` and compiled regexes (C
speed, linear: a 30 MB base64 attachment is one scan), never loops over body lines in Python,
never copies a body, and caps everything an attacker controls: nesting depth, part count, header
bytes, fields and value lengths. Malformed input never raises: missing or unterminated
boundaries, missing blank lines, LF-only line ends, 8-bit headers all produce a tree.

Multipart splitting is top-down: a multipart finds its own delimiter lines inside the region its
parent gave it, so an ancestor's boundary can never leak into a child. A delimiter line is
``"--" boundary ["--"] *LWSP`` and then the end of the line (RFC 2046 §5.1.1); the CRLF before it
belongs to the delimiter, as the RFC says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

from letterbird.mime.address import Address, display_addresses, parse_addresses
from letterbird.mime.headers import (
    decode_words,
    first_token,
    header_section_end,
    lowered_names,
    parse_content_header,
    parse_fields,
    parse_language,
    strip_comments,
)
from letterbird.mime.text import snippet_text

__all__ = [
    "BodyPart",
    "Envelope",
    "Limits",
    "MessageInfo",
    "envelope_from_json",
    "find_part",
    "parse_message",
    "section_range",
    "walk",
]

Params = tuple[tuple[str, str], ...]

_TEXT_PLAIN_PARAMS: Params = (("charset", "us-ascii"),)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one message can make the parser do or keep. Past a cap, parsing degrades
    (parts become opaque leaves, later fields are ignored, values are cut); it never fails."""

    max_depth: int = 32  # nested multipart/message levels; deeper ones are opaque leaves
    max_parts: int = 2000  # body parts in the whole tree; later siblings are left out
    max_header_bytes: int = 256 * 1024  # of each header section, only this prefix is parsed
    max_header_fields: int = 1000  # fields looked at per header section
    max_field_value: int = 64 * 1024  # bytes kept of one unfolded field value
    max_addresses: int = 1000  # addresses per address header
    max_references: int = 100  # message ids kept from References (the newest ones)
    max_boundary: int = 1000  # longer boundary parameters are treated as absent
    snippet_chars: int = 200
    snippet_scan_bytes: int = 64 * 1024  # encoded bytes of the text part read for the snippet


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Envelope:
    """RFC 3501 ENVELOPE fields. Strings are raw (unfolded, not RFC 2047-decoded); an absent
    field is None (or an empty tuple for addresses); ``sender`` and ``reply_to`` already default
    to ``from_`` as RFC 3501 §7.4.2 requires."""

    date: str | None
    subject: str | None
    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    in_reply_to: str | None
    message_id: str | None


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One MIME entity. Offsets are absolute into the message: ``data[start:body_start]`` is the
    part's header (its ``BODY[n.MIME]``), ``data[body_start:end]`` its body (``BODY[n]``).

    ``content_type``/``subtype``/``encoding``/disposition type are lowercase; parameter names are
    lowercase and values decoded (RFC 2231, RFC 2047 in file names). Other strings are the raw
    header values. ``lines`` is set for ``text/*`` and ``message/rfc822``. A multipart has
    ``parts`` (at least one); a ``message/rfc822`` has ``message`` = (envelope, body) of the
    encapsulated message, whose body's ``start`` is this part's ``body_start``.
    """

    content_type: str
    subtype: str
    params: Params
    content_id: str | None
    description: str | None
    encoding: str
    disposition: tuple[str, Params] | None
    language: tuple[str, ...] | None
    location: str | None
    md5: str | None
    start: int
    body_start: int
    end: int
    lines: int | None
    parts: tuple[BodyPart, ...] = ()
    message: tuple[Envelope, BodyPart] | None = None

    @property
    def size(self) -> int:
        """Body octets (RFC 3501 body-fld-octets)."""
        return self.end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return bool(self.parts)

    def param(self, name: str) -> str | None:
        """The Content-Type parameter ``name`` (lowercase), or None."""
        return _lookup(self.params, name)

    @property
    def filename(self) -> str | None:
        """Disposition ``filename``, else Content-Type ``name``, decoded."""
        if self.disposition is not None:
            found = _lookup(self.disposition[1], "filename")
            if found:
                return found
        return self.param("name") or None


def _lookup(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Everything cached about a message at delivery."""

    size: int
    envelope: Envelope
    body: BodyPart
    snippet: str
    has_attachment: bool
    subject: str
    from_display: str
    date: datetime | None
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]

    def to_json(self) -> bytes:
        obj = {
            "v": _JSON_VERSION,
            "size": self.size,
            "env": _env_to_obj(self.envelope),
            "body": _part_to_obj(self.body),
            "snippet": self.snippet,
            "att": self.has_attachment,
            "subject": self.subject,
            "from": self.from_display,
            "date": None if self.date is None else self.date.isoformat(),
            "mid": self.message_id,
            "irt": self.in_reply_to,
            "refs": list(self.references),
        }
        return _ENCODER.encode(obj).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MessageInfo:
        """Inverse of :meth:`to_json`; raises ValueError on anything it did not write."""
        try:
            obj = json.loads(data)
            if obj.get("v") != _JSON_VERSION:
                raise ValueError(f"unsupported MessageInfo version {obj.get('v')!r}")
            date = obj["date"]
            return cls(
                size=int(obj["size"]),
                envelope=_env_from_obj(obj["env"]),
                body=_part_from_obj(obj["body"]),
                snippet=str(obj["snippet"]),
                has_attachment=bool(obj["att"]),
                subject=str(obj["subject"]),
                from_display=str(obj["from"]),
                date=None if date is None else datetime.fromisoformat(date),
                message_id=obj["mid"],
                in_reply_to=obj["irt"],
                references=tuple(str(r) for r in obj["refs"]),
            )
        except (KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
            raise ValueError(f"malformed MessageInfo JSON: {exc!r}") from exc


def envelope_from_json(data: bytes) -> Envelope:
    """Only the envelope of :meth:`MessageInfo.to_json` output, without building the body
    tree: a fraction of :meth:`MessageInfo.from_json`'s cost, for readers that need nothing
    else (IMAP SEARCH on From/To/Cc/Bcc/Subject over a whole mailbox). Raises ValueError on
    anything :meth:`MessageInfo.to_json` did not write, as ``from_json`` does."""
    try:
        obj = json.loads(data)
        if obj.get("v") != _JSON_VERSION:
            raise ValueError(f"unsupported MessageInfo version {obj.get('v')!r}")
        return _env_from_obj(obj["env"])
    except (KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise ValueError(f"malformed MessageInfo JSON: {exc!r}") from exc


# ---------------------------------------------------------------------------------------------
# Parsing

_PART_FIELDS = lowered_names(
    [
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "content-description",
        "content-language",
        "content-location",
        "content-md5",
    ]
)
_MESSAGE_FIELDS = lowered_names(
    [
        "date",
        "subject",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "in-reply-to",
        "message-id",
        "references",
    ]
)
_ALL_FIELDS = _PART_FIELDS | _MESSAGE_FIELDS
Fields = dict[bytes, list[bytes]]


@lru_cache(maxsize=64)
def _delimiter_res(boundary: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Regexes for a delimiter line (after a line break, and at the start of the body).

    RFC 2046 §5.1.1:
        dash-boundary := "--" boundary
        delimiter := CRLF dash-boundary
        close-delimiter := delimiter "--"
        encapsulation := delimiter transport-padding CRLF body-part
        transport-padding := *LWSP-char
    The line end is matched by lookahead so back-to-back delimiter lines are all found.
    """
    tail = re.escape(boundary) + rb"(--)?[ \t]*\r?(?=\n|\Z)"
    return re.compile(rb"\n--" + tail), re.compile(rb"--" + tail)


class _Parser:
    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.limits = limits
        self.count = 0

    def fields(self, start: int, end: int) -> tuple[int, Fields]:
        hend = header_section_end(self.data, start, end)
        lim = self.limits
        found = parse_fields(
            self.data,
            start,
            hend,
            _ALL_FIELDS,
            max_bytes=lim.max_header_bytes,
            max_fields=lim.max_header_fields,
            max_value=lim.max_field_value,
        )
        return hend, found

    def part(self, start: int, end: int, *, digest: bool, depth: int) -> tuple[BodyPart, Fields]:
        """Parse the entity ``[start, end)``; ``digest``: the parent is multipart/digest."""
        self.count += 1
        body_start, fields = self.fields(start, end)
        parsed = None
        if b"content-type" in fields:
            parsed = parse_content_header(_text(fields[b"content-type"][0]), with_subtype=True)
        if parsed is None:  # RFC 2045 §5.2 and RFC 2046 §5.1.5 defaults
            parsed = ("message", "rfc822", ()) if digest else ("text", "plain", _TEXT_PLAIN_PARAMS)
        ctype, subtype, params = parsed
        if ctype == "text" and _lookup(params, "charset") is None:
            params = (*params, *_TEXT_PLAIN_PARAMS)
        disposition = None
        if b"content-disposition" in fields:
            dsp = parse_content_header(_text(fields[b"content-disposition"][0]), with_subtype=False)
            disposition = None if dsp is None else (dsp[0], dsp[2])
        cte = _first(fields, b"content-transfer-encoding")
        encoding = first_token(cte).lower() if cte else ""
        language = _first(fields, b"content-language")

        parts: tuple[BodyPart, ...] = ()
        message: tuple[Envelope, BodyPart] | None = None
        lim = self.limits
        nested = ctype == "multipart" or (ctype, subtype) == ("message", "rfc822")
        if nested and (depth >= lim.max_depth or self.count >= lim.max_parts):
            ctype, subtype = "application", "octet-stream"  # opaque leaf
        elif ctype == "multipart":
            boundary = (_lookup(params, "boundary") or "").encode("utf-8", "replace")
            parts = self.split(
                boundary, body_start, end, digest=subtype == "digest", depth=depth + 1
            )
        elif nested:
            inner, inner_fields = self.part(body_start, end, digest=False, depth=depth + 1)
            message = (_envelope(inner_fields, lim), inner)
        lines = None
        if ctype == "text" or message is not None:
            lines = self.data.count(b"\n", body_start, end)
        part = BodyPart(
            content_type=ctype,
            subtype=subtype,
            params=params,
            content_id=_first(fields, b"content-id"),
            description=_first(fields, b"content-description"),
            encoding=encoding or "7bit",
            disposition=disposition,
            language=None if language is None else parse_language(language),
            location=_first(fields, b"content-location"),
            md5=_first(fields, b"content-md5"),
            start=start,
            body_start=body_start,
            end=end,
            lines=lines,
            parts=parts,
            message=message,
        )
        return part, fields

    def split(
        self, boundary: bytes, start: int, end: int, *, digest: bool, depth: int
    ) -> tuple[BodyPart, ...]:
        """Children of the multipart body ``[start, end)``."""
        data = self.data
        children: list[BodyPart] = []
        if boundary and len(boundary) <= self.limits.max_boundary:
            after_break, at_start = _delimiter_res(boundary)
            part_start = -1  # start of the current part; -1 while in the preamble
            first = at_start.match(data, start, end)
            found = [first] if first else []
            for m in _chain(found, after_break.finditer(data, start, end)):
                line = m.start() if m is first else m.start() + 1
                if part_start >= 0:
                    part_end = line - 1 if line > part_start else part_start
                    if part_end > part_start and data[part_end - 1] == 0x0D:
                        part_end -= 1
                    children.append(self.part(part_start, part_end, digest=digest, depth=depth)[0])
                    if self.count >= self.limits.max_parts:
                        part_start = -1
                        break
                if m.group(1):  # close-delimiter
                    part_start = -1
                    break
                part_start = min(m.end() + 1, end)
            if part_start >= 0:  # no close-delimiter: the last part runs to the end
                children.append(self.part(part_start, end, digest=digest, depth=depth)[0])
        if not children:
            # RFC 3501 body-type-mpart needs at least one body: an empty text/plain stands in,
            # as Dovecot does.
            self.count += 1
            children.append(_empty_part(end))
        return tuple(children)


def _chain(
    first: list[re.Match[bytes]], rest: Iterator[re.Match[bytes]]
) -> Iterator[re.Match[bytes]]:
    yield from first
    yield from rest


def _empty_part(at: int) -> BodyPart:
    return BodyPart(
        content_type="text",
        subtype="plain",
        params=_TEXT_PLAIN_PARAMS,
        content_id=None,
        description=None,
        encoding="7bit",
        disposition=None,
        language=None,
        location=None,
        md5=None,
        start=at,
        body_start=at,
        end=at,
        lines=0,
    )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _first(fields: Fields, name: bytes) -> str | None:
    values = fields.get(name)
    return _text(values[0]) if values else None


def _addresses(fields: Fields, name: bytes, limit: int) -> tuple[Address, ...]:
    out: list[Address] = []
    for value in fields.get(name, ()):
        out.extend(parse_addresses(_text(value), limit - len(out)))
        if len(out) >= limit:
            break
    return tuple(out)


def _envelope(fields: Fields, limits: Limits) -> Envelope:
    """RFC 3501 §7.4.2 ENVELOPE from a message's header fields."""
    n = limits.max_addresses
    from_ = _addresses(fields, b"from", n)
    return Envelope(
        date=_first(fields, b"date"),
        subject=_first(fields, b"subject"),
        from_=from_,
        sender=_addresses(fields, b"sender", n) or from_,
        reply_to=_addresses(fields, b"reply-to", n) or from_,
        to=_addresses(fields, b"to", n),
        cc=_addresses(fields, b"cc", n),
        bcc=_addresses(fields, b"bcc", n),
        in_reply_to=_first(fields, b"in-reply-to"),
        message_id=_first(fields, b"message-id"),
    )


# RFC 5322 §3.6.4: msg-id = [CFWS] "<" id-left "@" id-right ">" [CFWS]; kept without the angle
# brackets (as JMAP's ``asMessageIds`` does). Anything between "<" and ">" is accepted.
_MSG_ID = re.compile(r"<([^<>\s]+)>")


def _msg_ids(value: str | None) -> list[str]:
    if value is None:
        return []
    found = _MSG_ID.findall(value)
    if not found:  # no angle brackets at all: take the bare word
        found = strip_comments(value).split()[:1]
    return found


# The RFC 5322 §3.3 date-time nearly every client writes (``Thu, 26 Nov 2026 17:58:33 +0000``,
# maybe with a simple trailing comment such as ``(UTC)``), read without the general parser;
# anything else, or out of range, goes to ``parsedate_to_datetime``, which gives the same result
# for these forms (a 4-digit year >= 1000 is kept as is; "-0000" means UTC, origin unknown).
_FAST_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([0-9]{1,2}) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9][0-9]{3}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})(?: \([A-Za-z0-9 ]*\))?"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


_ZONES: dict[int, timezone] = {}  # fixed offsets seen so far (at most 2 * 100 * 100 of them)


def _fast_date(value: str) -> datetime | None:
    m = _FAST_DATE.fullmatch(value)
    if m is None:
        return None
    day, month, year, hh, mm, ss, sign, tz_h, tz_m = m.groups()
    offset = int(tz_h) * 3600 + int(tz_m) * 60
    try:
        if offset == 0 and sign == "-":
            tz = UTC
        else:
            seconds = -offset if sign == "-" else offset
            tz = _ZONES.get(seconds) or _ZONES.setdefault(seconds, timezone(timedelta(0, seconds)))
        return datetime(int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError:  # out of range: left to the general parser
        return None


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    fast = _fast_date(value) if len(value) <= 256 else None
    if fast is not None:
        return fast
    try:
        parsed = parsedate_to_datetime(strip_comments(value[:256]))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000": UTC, origin's zone unknown (RFC 5322 §3.3)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _display(value: str) -> str:
    return " ".join(decode_words(value).split())


def _walk_all(part: BodyPart) -> Iterator[BodyPart]:
    """The part and its multipart descendants, depth first (not into encapsulated messages)."""
    yield part
    for child in part.parts:
        yield from _walk_all(child)


def _is_attachment(part: BodyPart) -> bool:
    kind = part.disposition[0] if part.disposition else None
    if kind == "attachment":
        return True
    return not part.parts and part.content_type != "text" and kind != "inline"


def _snippet(data: bytes, root: BodyPart, limits: Limits) -> str:
    leaves = [
        p
        for p in _walk_all(root)
        if not p.parts and p.content_type == "text" and not _is_attachment(p)
    ]
    for subtype in ("plain", "html"):
        for p in leaves:
            if p.subtype == subtype and p.size:
                stop = min(p.end, p.body_start + limits.snippet_scan_bytes)
                return snippet_text(
                    data[p.body_start : stop],
                    p.encoding,
                    p.param("charset") or "",
                    is_html=subtype == "html",
                    limit=limits.snippet_chars,
                    truncated=stop < p.end,
                )
    return ""


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> MessageInfo:
    """Parse a stored message (CRLF line ends expected, LF-only tolerated). Never raises."""
    parser = _Parser(data, limits)
    root, fields = parser.part(0, len(data), digest=False, depth=0)
    envelope = _envelope(fields, limits)
    references = _msg_ids(_first(fields, b"references"))[-limits.max_references :]
    in_reply_to = _msg_ids(envelope.in_reply_to)
    message_id = _msg_ids(envelope.message_id)
    return MessageInfo(
        size=len(data),
        envelope=envelope,
        body=root,
        snippet=_snippet(data, root, limits),
        has_attachment=any(_is_attachment(p) for p in _walk_all(root)),
        subject=_display(envelope.subject or ""),
        from_display=display_addresses(list(envelope.from_)),
        date=_parse_date(envelope.date),
        message_id=message_id[0] if message_id else None,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=tuple(references),
    )


# ---------------------------------------------------------------------------------------------
# Section numbering (RFC 3501 §6.4.5)


def _numbered_children(body: BodyPart) -> tuple[BodyPart, ...]:
    """Parts numbered 1.. inside a message whose body is ``body``: a multipart's children, or
    the body itself as part 1 ("a non-multipart message has only part 1")."""
    return body.parts or (body,)


def find_part(root: BodyPart, path: Sequence[int]) -> BodyPart | None:
    """The part at section ``path`` (e.g. ``[1, 2]`` for ``BODY[1.2]``) below the message whose
    body is ``root``; None if there is no such part. ``[]`` is ``root`` itself.

    A ``message/rfc822`` part's subparts are those of the encapsulated message's body.
    """
    current = root
    for depth, number in enumerate(path):
        if depth == 0:
            choices = _numbered_children(current)
        elif current.parts:
            choices = current.parts
        elif current.message is not None:
            choices = _numbered_children(current.message[1])
        else:
            return None
        if not 1 <= number <= len(choices):
            return None
        current = choices[number - 1]
    return current


def section_range(
    root: BodyPart, path: Sequence[int], specifier: str = ""
) -> tuple[int, int] | None:
    """Absolute ``(start, end)`` byte range of an IMAP ``BODY[section]``; None if it does not
    exist. ``specifier`` is ``""``, ``"MIME"``, ``"HEADER"`` or ``"TEXT"`` (case-insensitive);
    ``HEADER.FIELDS`` use the ``HEADER`` range with :func:`get_header_fields`."""
    spec = specifier.upper()
    if not path:
        ranges = {
            "": (root.start, root.end),
            "HEADER": (root.start, root.body_start),
            "TEXT": (root.body_start, root.end),
        }
        return ranges.get(spec)
    part = find_part(root, path)
    if part is None:
        return None
    if spec == "":
        return part.body_start, part.end
    if spec == "MIME":
        return part.start, part.body_start
    if part.message is None or spec not in ("HEADER", "TEXT"):
        return None
    inner = part.message[1]
    return (inner.start, inner.body_start) if spec == "HEADER" else (inner.body_start, inner.end)


def walk(root: BodyPart) -> Iterator[tuple[tuple[int, ...], BodyPart]]:
    """Every numbered part with its section path, in order (multipart containers that are a
    message's body have no number of their own and are not yielded)."""
    yield from _walk_body(root, ())


def _walk_body(
    body: BodyPart, prefix: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], BodyPart]]:
    for i, child in enumerate(_numbered_children(body), 1):
        yield from _walk_numbered(child, (*prefix, i))


def _walk_numbered(
    part: BodyPart, path: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], BodyPart]]:
    yield path, part
    if part.parts:
        for i, child in enumerate(part.parts, 1):
            yield from _walk_numbered(child, (*path, i))
    elif part.message is not None:
        yield from _walk_body(part.message[1], path)


# ---------------------------------------------------------------------------------------------
# JSON (the cache format)

_JSON_VERSION = 1
# One encoder for every message (``json.dumps`` with arguments builds a new one per call); the
# objects are fresh trees, so the circular-reference check is not needed.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _addr_to_obj(a: Address) -> list[str | None]:
    return [a.name, a.adl, a.mailbox, a.host]


def _addr_from_obj(o: Any) -> Address:
    name, adl, mailbox, host = o
    return Address(name, adl, mailbox, host)


def _env_to_obj(e: Envelope) -> list[Any]:
    lists = (e.from_, e.sender, e.reply_to, e.to, e.cc, e.bcc)
    return [
        e.date,
        e.subject,
        *([_addr_to_obj(a) for a in lst] for lst in lists),
        e.in_reply_to,
        e.message_id,
    ]


def _env_from_obj(o: Any) -> Envelope:
    date, subject, f, s, r, t, c, b, irt, mid = o

    def addrs(lst: Any) -> tuple[Address, ...]:
        return tuple(_addr_from_obj(a) for a in lst)

    return Envelope(
        date=date,
        subject=subject,
        from_=addrs(f),
        sender=addrs(s),
        reply_to=addrs(r),
        to=addrs(t),
        cc=addrs(c),
        bcc=addrs(b),
        in_reply_to=irt,
        message_id=mid,
    )


def _params_to_obj(params: Params) -> list[list[str]]:
    return [[k, v] for k, v in params]


def _params_from_obj(o: Any) -> Params:
    return tuple((str(k), str(v)) for k, v in o)


def _part_to_obj(p: BodyPart) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "t": p.content_type,
        "s": p.subtype,
        "o": [p.start, p.body_start, p.end],
        "e": p.encoding,
    }
    # Optional keys only when set, always in this order (the cached bytes stay the same).
    if p.params:
        obj["p"] = _params_to_obj(p.params)
    if p.content_id is not None:
        obj["id"] = p.content_id
    if p.description is not None:
        obj["d"] = p.description
    if p.disposition is not None:
        obj["dsp"] = [p.disposition[0], _params_to_obj(p.disposition[1])]
    if p.language is not None:
        obj["lang"] = list(p.language)
    if p.location is not None:
        obj["loc"] = p.location
    if p.md5 is not None:
        obj["md5"] = p.md5
    if p.lines is not None:
        obj["n"] = p.lines
    if p.parts:
        obj["c"] = [_part_to_obj(c) for c in p.parts]
    if p.message is not None:
        obj["msg"] = [_env_to_obj(p.message[0]), _part_to_obj(p.message[1])]
    return obj


def _part_from_obj(o: Any) -> BodyPart:
    start, body_start, end = o["o"]
    dsp = o.get("dsp")
    lang = o.get("lang")
    msg = o.get("msg")
    return BodyPart(
        content_type=o["t"],
        subtype=o["s"],
        params=_params_from_obj(o.get("p", ())),
        content_id=o.get("id"),
        description=o.get("d"),
        encoding=o["e"],
        disposition=None if dsp is None else (str(dsp[0]), _params_from_obj(dsp[1])),
        language=None if lang is None else tuple(lang),
        location=o.get("loc"),
        md5=o.get("md5"),
        start=int(start),
        body_start=int(body_start),
        end=int(end),
        lines=o.get("n"),
        parts=tuple(_part_from_obj(c) for c in o.get("c", ())),
        message=None if msg is None else (_env_from_obj(msg[0]), _part_from_obj(msg[1])),
    )
