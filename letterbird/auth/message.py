"""The header section of a message as mail authentication sees it: fields with byte offsets.

Signing, verifying and the ``Authentication-Results`` rules all need the same few things from
the bytes the SMTP edge spooled (CRLF line ends, DESIGN.md §4): where the header section ends,
where each field starts and ends (folded lines included, RFC 5322 §2.2.3), the trace fields the
edge wrote at the top (``Return-Path:`` and our ``Received:``, RFC 5321 §4.4), and a way to put
new fields in and take forged ones out without touching anything else.

Hand-written, linear in the header size, and never applied to the body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from letterbird.mime.headers import header_section_end

__all__ = ["Field", "HeaderSection", "rebuild"]

# RFC 5322 §3.6.8: field-name = 1*ftext ; ftext = %d33-57 / %d59-126 (obs-optional allows WSP
# before the colon, §4.5)
_NAME_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass(frozen=True, slots=True)
class Field:
    """One header field: ``data[start:end]`` is the whole field with its final line end."""

    name: bytes  # as written
    start: int
    end: int

    @property
    def lname(self) -> bytes:
        return self.name.lower()

    def raw(self, data: bytes) -> bytes:
        return data[self.start : self.end]

    def value(self, data: bytes) -> bytes:
        """The field body after the colon, with folding and the final line end kept."""
        raw = data[self.start : self.end]
        return raw[raw.index(b":") + 1 :]


@dataclass(frozen=True, slots=True)
class HeaderSection:
    """The fields of ``data`` up to the blank line; ``body_start`` is just past it."""

    fields: tuple[Field, ...]
    body_start: int

    @classmethod
    def parse(cls, data: bytes) -> HeaderSection:
        """Split the header section into fields. A line that is neither a field nor a
        continuation (say, text with no colon) is attached to the field before it, so the
        offsets always cover the whole section."""
        end = header_section_end(data)
        # The blank line that ends the section is not part of any field.
        stop = end
        if data[:end].endswith(b"\r\n\r\n") or data[:end] == b"\r\n":
            stop = end - 2
        elif data[:end].endswith(b"\n\n") or data[:end] == b"\n":
            stop = end - 1
        fields: list[Field] = []
        pos = 0
        name: bytes | None = None
        start = 0
        while pos < stop:
            nl = data.find(b"\n", pos, stop)
            line_end = stop if nl < 0 else nl + 1
            first = data[pos : pos + 1]
            m = None if first in (b" ", b"\t") else _NAME_RE.match(data, pos, line_end)
            if m is not None:
                if name is not None:
                    fields.append(Field(name, start, pos))
                name, start = m.group(1), pos
            elif name is None:  # leading junk: a nameless field keeps the offsets whole
                name, start = b"", pos
            pos = line_end
        if name is not None:
            fields.append(Field(name, start, stop))
        return cls(tuple(fields), end)

    def named(self, lname: bytes) -> list[Field]:
        return [f for f in self.fields if f.lname == lname]

    def trace_end(self) -> int:
        """Offset just past the trace fields the SMTP edge wrote: a leading ``Return-Path:``
        and the ``Received:`` after it. New fields go there: below our own hop's trace, above
        everything the client sent (RFC 8601 §5: at the top, as the message transits us)."""
        pos = 0
        fields = self.fields
        i = 0
        if i < len(fields) and fields[i].lname == b"return-path":
            pos = fields[i].end
            i += 1
        if i < len(fields) and fields[i].lname == b"received":
            pos = fields[i].end
        return pos


def rebuild(
    data: bytes,
    section: HeaderSection,
    insert: bytes,
    *,
    at: int,
    drop: Callable[[Field], bool] | None = None,
) -> bytes:
    """``data`` with ``insert`` placed at offset ``at`` (a field boundary) and the header
    fields for which ``drop`` is true removed. The body is copied once, untouched."""
    removed: Sequence[Field] = [f for f in section.fields if drop(f)] if drop else ()
    if not insert and not removed:
        return data
    parts: list[bytes] = []
    pos = 0
    inserted = False
    for f in removed:
        if not inserted and at <= f.start:
            parts.append(data[pos:at])
            parts.append(insert)
            pos = at
            inserted = True
        parts.append(data[pos : f.start])
        pos = f.end
    if not inserted:
        at = max(at, pos)
        parts.append(data[pos:at])
        parts.append(insert)
        pos = at
    parts.append(data[pos:])
    return b"".join(parts)
