"""Decoding a text part for display: transfer encoding (RFC 2045 §6), charset, HTML to text.

Used to compute the preview snippet once at delivery. Everything works on a bounded prefix of
the part and in linear time: HTML is reduced to text with ``str.find`` loops rather than regexes
such as ``<!--.*?-->`` or ``<[^>]*>``, which are quadratic on input full of unclosed openers.
"""

from __future__ import annotations

import binascii
import html

from letterbird.mime.charsets import decode_text

__all__ = ["decode_transfer", "html_to_text", "snippet_text"]

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_B64 = bytes(c for c in range(256) if c not in _B64_ALPHABET)
#: Characters of plain text looked at first for a snippet (beyond the snippet's own length).
_HEAD_CHARS = 1024


def decode_transfer(body: bytes, encoding: str, *, truncated: bool = False) -> bytes:
    """Undo a Content-Transfer-Encoding leniently (never raises).

    ``truncated`` says ``body`` is a prefix: a trailing partial base64 quantum or ``=X`` escape
    is dropped rather than decoded as garbage.
    """
    if encoding == "base64":
        clean = body.translate(None, _NOT_B64)
        clean = clean[: len(clean) - len(clean) % 4] if truncated else clean
        clean += b"=" * (-len(clean) % 4)
        try:
            return binascii.a2b_base64(clean)
        except binascii.Error:  # a lone trailing character cannot be decoded
            return binascii.a2b_base64(clean[: len(clean) - len(clean) % 4 - 4])
    if encoding == "quoted-printable":
        if truncated:
            cut = body.rfind(b"=", max(0, len(body) - 2))
            if cut >= 0:
                body = body[:cut]
        return binascii.a2b_qp(body)
    return body


def html_to_text(text: str) -> str:
    """Visible text of an HTML fragment, roughly: no tags, comments, scripts or styles."""
    lower = text.lower()
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        lt = text.find("<", i)
        if lt < 0:
            out.append(text[i:])
            break
        out.append(text[i:lt])
        if lower.startswith("<!--", lt):
            close = text.find("-->", lt + 4)
            i = n if close < 0 else close + 3
            continue
        gt = text.find(">", lt + 1)
        if gt < 0:
            break
        name = lower[lt + 1 : gt].split(None, 1)[0] if gt > lt + 1 else ""
        if name in ("script", "style", "head", "title"):
            close = lower.find("</" + name, gt + 1)
            gt = n if close < 0 else lower.find(">", close)
            gt = n if gt < 0 else gt
        out.append(" ")
        i = gt + 1
    return html.unescape("".join(out))


def snippet_text(
    body: bytes, encoding: str, charset: str, *, is_html: bool, limit: int, truncated: bool = False
) -> str:
    """Up to ``limit`` characters of decoded text, whitespace collapsed.

    ``truncated``: ``body`` is only a prefix of the part (a cut character is then dropped).
    """
    decoded = decode_transfer(body, encoding, truncated=truncated)
    text = decode_text(decoded, charset, final=not truncated)
    if is_html:
        text = html_to_text(text)
    else:
        # Collapsing a prefix gives a prefix of the collapsed whole (a word cut at the end is
        # a prefix of that word), so when it is long enough the rest need not be split. Twice
        # the limit nearly always is (splitting 1 KB of short words costs more than the rest
        # of the snippet); then a longer prefix, then the whole text.
        for size in (2 * limit, _HEAD_CHARS + limit):
            if len(text) <= size:
                break
            head = " ".join(text[:size].split())
            if len(head) >= limit:
                return head[:limit].rstrip()
    return " ".join(text.split())[:limit].rstrip()
