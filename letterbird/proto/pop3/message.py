"""Message bodies for RETR and TOP: TOP truncation, byte-stuffing, the terminating dot.

RFC 1939 §3: "If any line of the multi-line response begins with the termination octet, the line
is 'byte-stuffed' by pre-pending the termination octet to that line of the response." and the
response ends with "the termination octet (decimal code 046, '.') and a CRLF pair".

RFC 1939 §7 (TOP): "the POP3 server sends the headers of the message, the blank line separating
the headers from the body, and then the number of lines of the indicated message's body, being
careful to byte-stuff the termination character".

Written with ``bytes.replace``/``bytes.find`` rather than a per-line loop so multi-megabyte
messages cost a few C-level passes. A line start is any position after LF: stored mail is CRLF
(so ``\\n.`` is exactly ``\\r\\n.``), and stuffing after a stray bare LF too protects lenient
clients that split lines on LF from a forged terminator.
"""

from __future__ import annotations

__all__ = ["stuff_and_terminate", "stuffed_parts", "truncate_top"]

_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"


def truncate_top(data: bytes, top_lines: int) -> bytes:
    """The header section, the blank line and the first ``top_lines`` body lines of ``data``.

    A message without a blank line is all header and is returned whole; ``top_lines`` beyond the
    body's length returns the whole message. A body line is ended by CRLF; a last line without
    one counts as a line.
    """
    if data.startswith(_CRLF):  # empty header section: the body starts at once
        body_start = 2
    else:
        end = data.find(_HEADER_END)
        if end < 0:
            return data
        body_start = end + 4
    pos = body_start
    for _ in range(top_lines):
        nl = data.find(_CRLF, pos)
        if nl < 0:
            return data
        pos = nl + 2
    return data[:pos]


def stuffed_parts(data: bytes, top_lines: int | None = None) -> list[bytes]:
    """:func:`stuff_and_terminate` as a list of chunks to join once with other output."""
    if top_lines is not None:
        data = truncate_top(data, top_lines)
    if not data:
        return [b".\r\n"]
    body = data.replace(b"\n.", b"\n..")
    parts = [b".", body] if body.startswith(b".") else [body]
    if body.endswith(_CRLF):
        parts.append(b".\r\n")
    elif body.endswith(b"\r"):
        parts.append(b"\n.\r\n")
    elif body.endswith(b"\n"):  # bare LF at the very end: make it a CRLF
        parts[-1] = body[:-1]
        parts.append(b"\r\n.\r\n")
    else:
        parts.append(b"\r\n.\r\n")
    return parts


def stuff_and_terminate(data: bytes, top_lines: int | None = None) -> bytes:
    """The multi-line body of a RETR (``top_lines=None``) or TOP response, after ``+OK``.

    Truncates for TOP, byte-stuffs every line that starts with ``.`` (the first line included),
    makes sure the data ends with CRLF and appends the terminating ``.`` CRLF.
    """
    return b"".join(stuffed_parts(data, top_lines))
