"""IMAP ENVELOPE, BODY and BODYSTRUCTURE formatting (RFC 3501 §7.4.2 and §9).

Pure functions from the cached :mod:`letterbird.mime` structures to the exact bytes of the FETCH
data items. No storage, no I/O. Grammar (RFC 3501 §9):

    envelope        = "(" env-date SP env-subject SP env-from SP env-sender SP env-reply-to
                      SP env-to SP env-cc SP env-bcc SP env-in-reply-to SP env-message-id ")"
    env-from        = "(" 1*address ")" / nil          ; likewise sender, reply-to, to, cc, bcc
    address         = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")"
    body            = "(" (body-type-1part / body-type-mpart) ")"
    body-type-1part = (body-type-basic / body-type-msg / body-type-text) [SP body-ext-1part]
    body-type-basic = media-basic SP body-fields
    body-type-msg   = media-message SP body-fields SP envelope SP body SP body-fld-lines
    body-type-text  = media-text SP body-fields SP body-fld-lines
    body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
    body-fields     = body-fld-param SP body-fld-id SP body-fld-desc SP body-fld-enc SP
                      body-fld-octets
    body-fld-param  = "(" string SP string *(SP string SP string) ")" / nil
    body-ext-1part  = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc
                      *(SP body-extension)]]]      ; MUST NOT be returned on non-extensible BODY
    body-ext-mpart  = body-fld-param [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc
                      *(SP body-extension)]]]      ; MUST NOT be returned on non-extensible BODY
    body-fld-dsp    = "(" string SP body-fld-param ")" / nil
    body-fld-lang   = nstring / "(" string *(SP string) ")"

Like Dovecot, extension data is always written in full (md5/params, dsp, lang, loc) and a
language is always written as a list. Group syntax in address lists is the caller's data:
``(NIL NIL "group" NIL)`` starts a group and ``(NIL NIL NIL NIL)`` ends it.

Parameter values with non-ASCII characters are written in RFC 2231 form (``name*`` =
``utf-8''%XX…``) so every client gets ASCII it can decode; others are written as they are.

The string encoder here is deliberately tiny (quoted when every byte is a safe TEXT-CHAR,
otherwise a literal, as Dovecot does); it can be swapped for the IMAP package's encoder.
"""

from __future__ import annotations

import re

from letterbird.mime.address import Address
from letterbird.mime.structure import BodyPart, Envelope

__all__ = ["encode_address_list", "encode_bodystructure", "encode_envelope", "encode_string"]

NIL = b"NIL"

# quoted = DQUOTE *QUOTED-CHAR DQUOTE ; QUOTED-CHAR = <any TEXT-CHAR except quoted-specials> /
# "\" quoted-specials. We never escape: anything but printable ASCII minus '"' and '\' goes into
# a literal = "{" number "}" CRLF *CHAR8 (CHAR8 = %x01-ff: NUL is dropped).
_QUOTABLE = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_MAX_QUOTED = 1024


def encode_string(value: str | bytes) -> bytes:
    """An IMAP ``string``: quoted if safe, else a synchronising literal."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    raw = raw.replace(b"\x00", b"")
    if len(raw) <= _MAX_QUOTED and _QUOTABLE.fullmatch(raw):
        return b'"' + raw + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def _nstring(value: str | None) -> bytes:
    return NIL if value is None else encode_string(value)


def _address(a: Address) -> bytes:
    return b"(%s %s %s %s)" % (
        _nstring(a.name),
        _nstring(a.adl),
        _nstring(a.mailbox),
        _nstring(a.host),
    )


def encode_address_list(addresses: tuple[Address, ...] | list[Address]) -> bytes:
    """``"(" 1*address ")" / nil``."""
    if not addresses:
        return NIL
    return b"(" + b"".join(_address(a) for a in addresses) + b")"


def encode_envelope(env: Envelope) -> bytes:
    """The ENVELOPE data item's value."""
    return (
        b"("
        + b" ".join(
            [
                _nstring(env.date),
                _nstring(env.subject),
                encode_address_list(env.from_),
                encode_address_list(env.sender),
                encode_address_list(env.reply_to),
                encode_address_list(env.to),
                encode_address_list(env.cc),
                encode_address_list(env.bcc),
                _nstring(env.in_reply_to),
                _nstring(env.message_id),
            ]
        )
        + b")"
    )


# RFC 2231 §7: attribute-char := <any (US-ASCII) CHAR except SPACE, CTLs, "*", "'", "%", or
# tspecials>; everything else in an extended value is %XX.
_ATTRIBUTE_CHAR = re.compile(rb"[!#$&+\-.^_`|~0-9A-Za-z]")


def _rfc2231(value: str) -> str:
    return "utf-8''" + "".join(
        chr(b) if _ATTRIBUTE_CHAR.fullmatch(bytes([b])) else f"%{b:02X}"
        for b in value.encode("utf-8")
    )


def _params(params: tuple[tuple[str, str], ...]) -> bytes:
    """``body-fld-param``."""
    if not params:
        return NIL
    items: list[bytes] = []
    for name, value in params:
        if value.isascii():
            items += [encode_string(name), encode_string(value)]
        else:
            items += [encode_string(name + "*"), encode_string(_rfc2231(value))]
    return b"(" + b" ".join(items) + b")"


def _disposition(part: BodyPart) -> bytes:
    if part.disposition is None:
        return NIL
    kind, params = part.disposition
    return b"(" + encode_string(kind) + b" " + _params(params) + b")"


def _language(part: BodyPart) -> bytes:
    if not part.language:
        return NIL
    return b"(" + b" ".join(encode_string(t) for t in part.language) + b")"


def encode_bodystructure(part: BodyPart, extensible: bool = True) -> bytes:
    """BODYSTRUCTURE (``extensible``) or BODY (without extension data) for ``part``."""
    if part.parts:
        out = b"".join(encode_bodystructure(c, extensible) for c in part.parts)
        out += b" " + encode_string(part.subtype)
        if extensible:
            out += b" " + b" ".join(
                [_params(part.params), _disposition(part), _language(part), _nstring(part.location)]
            )
        return b"(" + out + b")"
    fields = [
        encode_string(part.content_type),
        encode_string(part.subtype),
        _params(part.params),
        _nstring(part.content_id),
        _nstring(part.description),
        encode_string(part.encoding),
        b"%d" % part.size,
    ]
    if part.message is not None:
        envelope, inner = part.message
        fields += [
            encode_envelope(envelope),
            encode_bodystructure(inner, extensible),
            b"%d" % (part.lines or 0),
        ]
    elif part.content_type == "text":
        fields.append(b"%d" % (part.lines or 0))
    if extensible:
        fields += [
            _nstring(part.md5),
            _disposition(part),
            _language(part),
            _nstring(part.location),
        ]
    return b"(" + b" ".join(fields) + b")"
