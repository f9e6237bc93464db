"""Charset handling for MIME text (RFC 2046 §4.1.2 ``charset`` parameter, RFC 2047/2231 charsets).

Python's codec registry is wider than "character sets": it also holds bytes-to-bytes transforms
(``zlib``, ``bz2``, ``base64``) and codecs that are quadratic (``punycode``) or not charsets at all
(``unicode_escape``). A charset named by a message must never select one of those, so names go
through :func:`lookup_charset`, which admits only real text encodings.
"""

from __future__ import annotations

import codecs
from functools import lru_cache

__all__ = ["decode_text", "lookup_charset"]

# Text codecs that are not charsets a message may name.
_REFUSED = frozenset(
    {
        "idna",
        "punycode",
        "unicode_escape",
        "raw_unicode_escape",
        "undefined",
        "mbcs",
        "oem",
        "charmap",
    }
)
# Labels that mean "unknown or plain ASCII": decode as UTF-8 if valid, else as windows-1252,
# which is what such mail nearly always turns out to be.
_GUESS = frozenset({"", "us-ascii", "ascii", "us_ascii", "x-unknown", "unknown-8bit", "unknown"})
# Labels whose real-world content is a superset charset (the WHATWG Encoding Standard's mapping).
_SUPERSETS = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "tis-620": "cp874",
    "iso-8859-9": "cp1254",
}


@lru_cache(maxsize=256)
def lookup_charset(charset: str) -> str | None:
    """The Python codec name for a MIME charset label, or None if unknown or refused."""
    label = charset.strip().strip("\"'").lower()
    if label in _GUESS:
        return None
    label = _SUPERSETS.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name.replace("-", "_") in _REFUSED:
        return None
    return info.name


def decode_text(data: bytes, charset: str, *, final: bool = True) -> str:
    """Decode ``data`` labelled ``charset`` for display; never raises.

    Unknown labels, ``us-ascii`` and friends: UTF-8 when that decodes cleanly, else windows-1252.
    With ``final=False`` an incomplete multi-byte sequence at the end (a cut-off prefix of a
    longer text) is dropped rather than shown as a replacement character.
    """
    name = lookup_charset(charset)
    if name is None:
        try:
            if final:
                return data.decode("utf-8")
            return str(codecs.getincrementaldecoder("utf-8")().decode(data, final=False))
        except UnicodeDecodeError:
            name = "cp1252"
    try:
        if final:
            return data.decode(name, "replace")
        return str(codecs.getincrementaldecoder(name)("replace").decode(data, final=False))
    except Exception:  # incremental utf-16/utf-32 without a BOM raise even with "replace"
        return data.decode("utf-8", "replace")
