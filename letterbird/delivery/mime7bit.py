"""8-bit to 7-bit MIME conversion, for servers that do not offer 8BITMIME (RFC 6152 §3).

RFC 6152 §3: a server that receives an 8-bit message for a server without 8BITMIME "must
either return a non-delivery notification or convert the message to a 7bit form", and RFC 2045
§6 gives the two encodings that do it. :func:`downgrade` re-encodes every MIME leaf whose body
has octets above 127 (and is labelled ``7bit``, ``8bit`` or ``binary``):

* ``text/*`` as ``quoted-printable`` (readable, and line ends stay line ends);
* anything else as ``base64``;
* ``message/rfc822`` is never encoded (RFC 2046 §5.2.1: only 7bit, 8bit or binary are allowed):
  the encapsulated message is converted recursively instead; ``message/global`` (RFC 6532
  §3.5 allows any encoding) is base64'd as a whole;
* multipart and message containers labelled ``8bit``/``binary`` are relabelled ``7bit``
  (RFC 2045 §6.4: composite types carry the encoding of their contents);
* a top-level ``MIME-Version: 1.0`` is added when missing (the encodings mean nothing without
  it, RFC 2045 §4).

Impossible, so :class:`DowngradeImpossible` (the queue bounces with ``5.6.3``): 8-bit header
fields (they need SMTPUTF8, RFC 6531; RFC 2047 re-encoding would change addresses), 8-bit text
in a multipart preamble or epilogue, 8-bit octets in a body already labelled base64 or
quoted-printable, and containers left opaque by the parser's limits. The check is done on the
result: whatever is converted must be ASCII, so nothing 8-bit can slip through.

The MIME tree comes from :func:`letterbird.mime.parse_message` (offsets into the bytes, no
copies); the edits are applied from those offsets in one pass. Work is linear in the message.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from letterbird.mime import BodyPart, header_section_end, parse_message

__all__ = ["DowngradeImpossible", "downgrade"]


class DowngradeImpossible(ValueError):
    """The message cannot be made 7-bit without changing what it says."""


@dataclass(frozen=True, slots=True)
class _Edit:
    start: int
    end: int
    data: bytes


def downgrade(message: bytes) -> bytes:
    """``message`` converted to 7-bit MIME (unchanged when it is ASCII already).

    Raises :class:`DowngradeImpossible` naming the reason."""
    if message.isascii():
        return message
    info = parse_message(message)
    edits: list[_Edit] = []
    _visit(message, info.body, edits)
    out = bytearray()
    pos = 0
    for edit in sorted(edits, key=lambda e: e.start):
        out += message[pos : edit.start]
        out += edit.data
        pos = edit.end
    out += message[pos:]
    if edits and not _has_field(message, 0, info.body.body_start, b"mime-version"):
        out[0:0] = b"MIME-Version: 1.0\r\n"
    if not out.isascii():
        if not out[: header_section_end(bytes(out))].isascii():
            raise DowngradeImpossible("8-bit header fields need SMTPUTF8")
        raise DowngradeImpossible("8-bit header fields or text outside the MIME body parts")
    return bytes(out)


def _visit(data: bytes, part: BodyPart, edits: list[_Edit]) -> None:
    if part.parts or part.message is not None:
        if not _ascii(data, part.body_start, part.end):
            if part.encoding in ("8bit", "binary"):
                edits.append(_Edit(part.start, part.body_start, _relabel(data, part, b"7bit")))
            for child in part.parts:
                _visit(data, child, edits)
            if part.message is not None:
                _visit(data, part.message[1], edits)
        return
    if _ascii(data, part.body_start, part.end):
        return
    if part.encoding not in ("7bit", "8bit", "binary"):
        raise DowngradeImpossible(f"8-bit octets in a {part.encoding} body")
    declared = _declared_type(data, part)
    if declared.startswith("multipart/") or (
        declared.startswith("message/") and declared != "message/global"
    ):
        raise DowngradeImpossible(f"cannot re-encode a {declared} body")
    body = data[part.body_start : part.end]
    if part.content_type == "text":
        encoding, encoded = b"quoted-printable", binascii.b2a_qp(body, istext=True)
    else:
        encoding = b"base64"
        encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
        if not body.endswith(b"\n"):
            encoded = encoded[:-2]
    edits.append(_Edit(part.start, part.end, _relabel(data, part, encoding) + encoded))


def _ascii(data: bytes, start: int, end: int) -> bool:
    return data[start:end].isascii()


def _fields(data: bytes, start: int, end: int) -> list[bytes]:
    """The header fields in ``[start, end)`` (each with its folded lines and line end), without
    the blank line that ends the section."""
    fields: list[bytes] = []
    for line in data[start:end].splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def _has_field(data: bytes, start: int, end: int, name: bytes) -> bool:
    return any(_name(f) == name for f in _fields(data, start, end))


def _relabel(data: bytes, part: BodyPart, encoding: bytes) -> bytes:
    """The part's header with its Content-Transfer-Encoding replaced by ``encoding``."""
    kept = [
        f if f.endswith(b"\n") else f + b"\r\n"
        for f in _fields(data, part.start, part.body_start)
        if _name(f) != b"content-transfer-encoding"
    ]
    return b"".join(kept) + b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n"


def _declared_type(data: bytes, part: BodyPart) -> str:
    """The media type the part's own header declares (the parser may have made an opaque leaf
    of a container past its limits)."""
    for f in _fields(data, part.start, part.body_start):
        if _name(f) == b"content-type":
            value = f.split(b":", 1)[1].split(b";", 1)[0]
            return value.decode("ascii", "replace").strip().lower()
    return f"{part.content_type}/{part.subtype}"
