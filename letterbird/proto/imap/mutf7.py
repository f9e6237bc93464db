"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3).

RFC 3501 §5.1.3 (paraphrased): printable US-ASCII characters (0x20-0x7e) except ``&`` stand for
themselves; ``&`` is written ``&-``. Every other run of characters is written as ``&``, the
modified BASE64 (RFC 2045 BASE64 with ``,`` instead of ``/``, no ``=`` padding) of its UTF-16BE
encoding, and ``-``. Modified BASE64 MUST NOT encode a printable US-ASCII character that can
represent itself. The RFC's example: ``~peter/mail/&U,BTFw-/&ZeVnLIqe-`` is
``~peter/mail/台北/日本語``.

Hand-written because the standard library has only plain UTF-7 (RFC 2152), which differs in the
shift character, the BASE64 alphabet and what may be encoded. Decoding is strict: an unterminated
shift, a bad BASE64 character or length, non-zero padding bits, an odd number of UTF-16 octets, a
lone surrogate, an encoded printable character or a raw control/8-bit character all raise
:class:`MUTF7Error`, so one mailbox has one spelling on the wire (adjacent shifted runs are
accepted: RFC 3501 does not forbid them).
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["MUTF7Error", "decode", "encode"]


class MUTF7Error(ValueError):
    """The text is not valid modified UTF-7."""


# Runs of characters that represent themselves (0x20-0x7e; "&" is handled separately) and runs
# that must be shifted into modified BASE64.
_RUNS = re.compile(r"([\x20-\x7e]+)|([^\x20-\x7e]+)")

# One token of an encoded name: a direct run, "&-", or "&" modified-base64 "-".
_TOKEN = re.compile(r"([\x20-\x25\x27-\x7e]+)|&-|&([A-Za-z0-9+,]+)-")
_PRINTABLE = re.compile(r"[\x20-\x7e]")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """Encode a mailbox name to modified UTF-7.

    Raises :class:`MUTF7Error` for a string holding a lone surrogate (not encodable in UTF-16).
    """
    out: list[str] = []
    for m in _RUNS.finditer(name):
        direct = m.group(1)
        if direct is not None:
            out.append(direct.replace("&", "&-"))
            continue
        try:
            utf16 = m.group(2).encode("utf-16-be")
        except UnicodeEncodeError as exc:
            raise MUTF7Error("name holds a lone surrogate") from exc
        out.append("&" + _b64(utf16) + "-")
    return "".join(out)


def _decode_shift(b64: str) -> str:
    if len(b64) % 4 == 1:
        raise MUTF7Error("bad modified BASE64 length")
    std = b64.replace(",", "/")
    try:
        raw = base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - alphabet checked by regex
        raise MUTF7Error("bad modified BASE64") from exc
    if _b64(raw) != b64:
        raise MUTF7Error("non-zero padding bits in modified BASE64")
    if len(raw) % 2:
        raise MUTF7Error("odd number of UTF-16 octets")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise MUTF7Error("invalid UTF-16 (lone surrogate)") from exc
    if _PRINTABLE.search(text):
        raise MUTF7Error("printable US-ASCII must not be BASE64-encoded")
    return text


def decode(data: str | bytes) -> str:
    """Decode a modified UTF-7 mailbox name strictly (see the module docstring)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MUTF7Error("modified UTF-7 is 7-bit") from exc
    out: list[str] = []
    pos = 0
    end = len(data)
    match = _TOKEN.match
    while pos < end:
        m = match(data, pos)
        if m is None:
            if data[pos] == "&":
                raise MUTF7Error("unterminated or empty shift sequence")
            raise MUTF7Error("character not allowed in modified UTF-7")
        direct, shifted = m.group(1), m.group(2)
        if direct is not None:
            out.append(direct)
        elif shifted is None:
            out.append("&")
        else:
            out.append(_decode_shift(shifted))
        pos = m.end()
    return "".join(out)
