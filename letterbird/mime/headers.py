"""Header sections: finding them, splitting them into fields, decoding their values.

Implements the parts of RFC 5322 §2.2 (header fields, folding), RFC 2045 §5.1 (Content-Type
syntax), RFC 2183 (Content-Disposition), RFC 2231 (parameter continuations, charsets and
languages) and RFC 2047 (encoded-words) that a mail store needs to index a message.

Written by hand rather than with ``email.policy.default`` because that parser is quadratic on
hostile header fields (CPython gh-136063) and keeps no byte offsets. Everything here works on a
*capped* slice of the header section and is linear in its input: a multi-megabyte header costs
one ``bytes.find`` to locate its end and nothing more.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator, Sequence

from letterbird.mime.charsets import decode_text

__all__ = [
    "decode_words",
    "first_token",
    "get_header_fields",
    "header_section_end",
    "lowered_names",
    "parse_content_header",
    "parse_fields",
    "parse_language",
    "strip_comments",
]


def header_section_end(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Offset just past the blank line that ends the header section starting at ``start``.

    RFC 5322 §2.1: ``message = (fields / obs-fields) [CRLF body]`` — the header ends at the
    first empty line. LF-only line ends are tolerated. Without a blank line the whole range
    ``[start, end)`` is header and ``end`` is returned.
    """
    if end is None:
        end = len(data)
    if start >= end:
        return end
    # An empty header section: the body separator is the very first line.
    if data.startswith(b"\r\n", start, end):
        return start + 2
    if data.startswith(b"\n", start, end):
        return start + 1
    crlf = data.find(b"\n\r\n", start, end)
    # Only look for a bare "\n\n" before the first CRLF blank line: keeps the common case to one
    # full scan at most.
    lf = data.find(b"\n\n", start, end if crlf < 0 else crlf + 2)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return end


# RFC 5322 §2.2 / §3.6.8:
#   field      = field-name ":" unstructured CRLF
#   field-name = 1*ftext ; ftext = %d33-57 / %d59-126
#   obs-optional = field-name *WSP ":" unstructured CRLF
# and §2.2.3 folding: a line starting with WSP continues the previous field.
# The reference is the regular expression
#   ^([^:\s][^:\r\n]*?)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)   (MULTILINE)
# which ``parse_fields`` implements as a line scanner (a hypothesis test checks they agree).
_WSP = b" \t\r\n"


def parse_fields(
    data: bytes,
    start: int,
    end: int,
    wanted: frozenset[bytes],
    *,
    max_bytes: int,
    max_fields: int,
    max_value: int,
) -> dict[bytes, list[bytes]]:
    """The unfolded values of the ``wanted`` (lowercase) fields in the header ``[start, end)``.

    Only the first ``max_bytes`` of the section and its first ``max_fields`` fields are looked at;
    each value is cut to ``max_value`` bytes. Values keep their original bytes; the folding line
    breaks are removed (RFC 5322 §2.2.3 unfolding) and surrounding whitespace is stripped.
    """
    out: dict[bytes, list[bytes]] = {}
    # Line by line, what that expression's ``finditer`` finds (it is the reference: a field starts a
    # line with neither white space nor ":", has a ":" before any CR, and takes the following
    # lines that start with WSP), in about two thirds of the time on typical headers.
    lines = data[start : min(end, start + max_bytes)].split(b"\n")
    n = len(lines)
    count = 0
    i = 0
    while i < n:
        line = lines[i]
        i += 1
        if not line or line[0] in _NOT_FIELD_START:
            continue
        colon = line.find(b":")
        if colon < 0 or line.find(b"\r", 0, colon) >= 0:
            continue
        first = i
        while i < n and lines[i][:1] in _FOLD_STARTS:
            i += 1
        if count >= max_fields:
            break
        count += 1
        name = line[:colon].rstrip(b" \t").lower()
        if name in wanted:
            value = line[colon + 1 :]
            if i > first:  # folded: unfold (RFC 5322 §2.2.3) by dropping the line breaks
                value = b"".join([value.removesuffix(b"\r"), *_unfolded(lines, first, i)])
            out.setdefault(name, []).append(value.strip(_WSP)[:max_value])
    return out


# First bytes that cannot start a field (``[^:\s]`` in the reference), and continuation lines.
_NOT_FIELD_START = frozenset(b" \t\r\x0b\x0c:")
_FOLD_STARTS = (b" ", b"\t")


def _unfolded(lines: list[bytes], first: int, stop: int) -> Iterator[bytes]:
    """Continuation lines ``first..stop-1`` with their CR removed, except the last line's."""
    for k in range(first, stop):
        line = lines[k]
        yield line if k == stop - 1 else line.removesuffix(b"\r")


def get_header_fields(
    data: bytes,
    names: Sequence[str],
    start: int = 0,
    end: int | None = None,
    *,
    negate: bool = False,
) -> bytes:
    """The header fields named ``names`` (``HEADER.FIELDS``) or all others (``.NOT``).

    ``[start, end)`` is a header section (``end`` defaults to where the section starting at
    ``start`` ends). RFC 3501 §6.4.5: matching is case-insensitive; the fields come back as
    stored (still folded), and "the blank line is included in all header fetches, except in the
    case of a message which has no body and no blank line".
    """
    if end is None:
        end = header_section_end(data, start)
    section = data[start:end]
    blank = b""
    for sep in (b"\r\n", b"\n"):
        if section.endswith(b"\n" + sep) or section == sep:
            blank = b"\r\n"
            section = section[: len(section) - len(sep)]
            break
    wanted = [n.encode("ascii", "ignore") for n in names]
    wanted = [n for n in wanted if n and not re.search(rb"[\s:]", n)]
    pieces: list[bytes] = []
    if wanted:
        alternatives = b"|".join(re.escape(n) for n in wanted)
        pattern = re.compile(
            rb"^(?:" + alternatives + rb")[ \t]*:[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*",
            re.MULTILINE | re.IGNORECASE,
        )
        pos = 0
        for m in pattern.finditer(section):
            if negate:
                pieces.append(section[pos : m.start()])
            else:
                pieces.append(m.group(0))
            pos = m.end()
        if negate:
            pieces.append(section[pos:])
    elif negate:
        pieces.append(section)
    out = b"".join(_terminated(p) for p in pieces if p)
    return out + blank


def _terminated(piece: bytes) -> bytes:
    return piece if piece.endswith(b"\n") else piece + b"\r\n"


# ---------------------------------------------------------------------------------------------
# RFC 2047 encoded-words
#   encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
# (RFC 2231 §5 adds an optional "*" language suffix to the charset.) Decoding is lenient as
# real mail needs: words inside other text are decoded too, and adjacent words in the same
# charset are joined *before* charset decoding so a multi-byte character split across two words
# survives.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_MAX_DECODE_INPUT = 1 << 17


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words in a header value for display (never raises)."""
    value = value[:_MAX_DECODE_INPUT]
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []  # adjacent decoded words not yet charset-decoded
    pos = 0

    def flush() -> None:
        if pending:
            charset = pending[0][0]
            out.append(decode_text(b"".join(w for _, w in pending), charset))
            pending.clear()

    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        pos = m.end()
        charset = m.group(1).split("*", 1)[0].lower()
        raw = m.group(3).encode("ascii", "replace")
        try:
            if m.group(2) in "bB":
                raw = raw.rstrip(b"=")
                word = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
            else:
                word = binascii.a2b_qp(raw, header=True)
        except binascii.Error:  # not decodable: keep it as written
            flush()
            out.append(gap + m.group(0))
            continue
        # RFC 2047 §6.2: white space between adjacent encoded-words is not displayed.
        if gap and not (pending and gap.isspace()):
            flush()
            out.append(gap)
        if pending and pending[0][0] != charset:
            flush()
        pending.append((charset, word))
    flush()
    out.append(value[pos:])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Content-Type / Content-Disposition
#   content   := "Content-Type" ":" type "/" subtype *(";" parameter)     (RFC 2045 §5.1)
#   disposition := "Content-Disposition" ":" disposition-type *(";" disposition-parm)
#                                                                          (RFC 2183 §2)
#   parameter := attribute "=" value
#   attribute := token ; value := token / quoted-string
#   token     := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
#   tspecials := "(" / ")" / "<" / ">" / "@" / "," / ";" / ":" / "\" / <"> / "/" / "[" / "]" /
#                "?" / "="
# Real mail breaks the value rule constantly (unquoted "boundary=----=_Part_1", file names with
# spaces), so an unquoted value runs to the next ";" or comment, trimmed.
_TOKEN = re.compile(r"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f]+")
_RFC2231_NAME = re.compile(r"^(.+?)\*(?:(\d{1,3})(\*)?)?$")
_MAX_PARAMS = 64
_MAX_SECTIONS = 100


def _skip_comment(s: str, i: int) -> int:
    """``s[i] == "("``: index just past the (nested) RFC 5322 comment, or ``len(s)``."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def strip_comments(s: str) -> str:
    """``s`` with RFC 5322 comments (CFWS) replaced by a space; quoted strings kept intact."""
    if "(" not in s:
        return s
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            j = _quoted_end(s, i)
            out.append(s[i:j])
            i = j
        elif c == "(":
            i = _skip_comment(s, i)
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _quoted_end(s: str, i: int) -> int:
    """``s[i] == '"'``: index just past the closing quote, or ``len(s)`` if unterminated."""
    return _read_quoted(s, i)[1]


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """``s[i] == '"'``: the quoted-string's content (quoted-pairs resolved) and the index just
    past it (``len(s)`` if unterminated).

    RFC 5322 §3.2.4: ``quoted-string = [CFWS] DQUOTE *([FWS] qcontent) [FWS] DQUOTE [CFWS]``,
    ``qcontent = qtext / quoted-pair``, ``quoted-pair = "\\" (VCHAR / WSP)``.
    """
    out: list[str] = []
    n = len(s)
    i += 1
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), n


def _raw_params(s: str, i: int) -> list[tuple[str, str]]:
    """Parse ``*(";" attribute "=" value)`` from ``s[i:]`` leniently."""
    params: list[tuple[str, str]] = []
    n = len(s)
    while i < n and len(params) < _MAX_PARAMS:
        c = s[i]
        if c in " \t\r\n;":
            i += 1
            continue
        if c == "(":
            i = _skip_comment(s, i)
            continue
        j = i
        while j < n and s[j] not in "=;":
            j += 1
        attribute = strip_comments(s[i:j]).strip().lower()
        if j >= n or s[j] == ";":
            i = j  # attribute without a value: ignored
            continue
        i = j + 1
        while i < n and s[i] in " \t\r\n":
            i += 1
        if i < n and s[i] == '"':
            value, j = _read_quoted(s, i)
            while j < n and s[j] != ";":  # skip anything up to the next parameter
                j = _quoted_end(s, j) if s[j] == '"' else j + 1
        else:
            j = i
            while j < n and s[j] not in ";(":
                j += 1
            value = s[i:j].strip()
            while j < n and s[j] != ";":
                j = _skip_comment(s, j) if s[j] == "(" else j + 1
        i = j
        if _TOKEN.fullmatch(attribute):
            params.append((attribute, value))
    return params


def _pct_decode(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


def _combine_params(raw: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Apply RFC 2231 (continuations ``name*0``, charsets ``name*=cs'lang'%XX``)."""
    order: list[str] = []
    plain: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[bool, str]]] = {}
    for attribute, value in raw:
        m = _RFC2231_NAME.match(attribute)
        if m is None:
            if attribute not in plain:
                plain[attribute] = value
                if attribute not in order:
                    order.append(attribute)
            continue
        base = m.group(1)
        index = 0 if m.group(2) is None else int(m.group(2))
        encoded = m.group(2) is None or m.group(3) is not None
        sections = extended.setdefault(base, {})
        if index < _MAX_SECTIONS and index not in sections:
            sections[index] = (encoded, value)
        if base not in order:
            order.append(base)
    result: list[tuple[str, str]] = []
    for name in order:
        sections = extended.get(name, {})
        if sections:
            charset = ""
            chunks: list[bytes] = []
            first = min(sections)
            for idx in sorted(sections):
                encoded, value = sections[idx]
                if encoded:
                    if idx == first and value.count("'") >= 2:
                        charset, _lang, value = value.split("'", 2)
                    chunks.append(_pct_decode(value))
                else:
                    chunks.append(value.encode("utf-8", "surrogateescape"))
            result.append((name, decode_text(b"".join(chunks), charset.lower() or "utf-8")))
        else:
            value = plain[name]
            if name in ("name", "filename") and "=?" in value:
                value = decode_words(value)
            result.append((name, value))
    return tuple(result)


def parse_content_header(
    value: str, *, with_subtype: bool
) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
    """Parse a Content-Type (``with_subtype``) or Content-Disposition value.

    Returns ``(type, subtype, params)`` with type and subtype lowercased (subtype ``""`` for a
    disposition), or None when the type is syntactically invalid (RFC 2045 §5.2 then says to
    assume ``text/plain``). Parameter names are lowercased; values are decoded (RFC 2231, and
    RFC 2047 in ``name``/``filename`` as mailers commonly, if wrongly, send them).
    """
    semi = _first_unquoted(value, ";")
    head = strip_comments(value[:semi]).strip()
    if with_subtype:
        type_, slash, subtype = head.partition("/")
        type_, subtype = type_.strip().lower(), subtype.strip().lower()
        if not slash or not _TOKEN.fullmatch(type_) or not _TOKEN.fullmatch(subtype):
            return None
    else:
        type_, subtype = head.lower(), ""
        if not _TOKEN.fullmatch(type_):
            return None
    return type_, subtype, _combine_params(_raw_params(value, semi + 1))


def _first_unquoted(s: str, ch: str) -> int:
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            i = _quoted_end(s, i)
        elif c == "(":
            i = _skip_comment(s, i)
        elif c == ch:
            return i
        else:
            i += 1
    return n


def parse_language(value: str) -> tuple[str, ...] | None:
    """Content-Language (RFC 3282): ``Language-List = Language-Tag [CFWS] *("," [CFWS] tag)``."""
    tags = [t for t in re.split(r"[\s,]+", strip_comments(value)) if t]
    return tuple(tags[:_MAX_PARAMS]) or None


def first_token(value: str) -> str:
    """The first whitespace-delimited word of a structured value, comments removed."""
    words = strip_comments(value).split()
    return words[0] if words else ""


def lowered_names(names: Iterable[str]) -> frozenset[bytes]:
    """Field names as the lowercase bytes :func:`parse_fields` expects."""
    return frozenset(n.lower().encode("ascii") for n in names)
