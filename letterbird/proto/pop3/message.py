"""Message bodies for RETR and TOP: TOP truncation, byte-stuffing, the terminating dot.

RFC 1939 §3: "If any line of the multi-line response begins with the termination octet, the line
is 'byte-stuffed' by pre-pending the termination octet to that line of the response." and the
response ends with "the termination octet (decimal code 046, '.') and a CRLF pair".

RFC 1939 §7 (TOP): "the POP3 server sends the headers of the message, the blank line separating
the headers from the body, and then the number of lines of the indicated message's body, being
careful to byte-stuff the termination character".

Two forms of the same transformation:

- :func:`stuff_and_terminate` / :func:`truncate_top` take the whole message (the reference);
- :class:`MessageStuffer` takes the message in parts of any size (a big message is streamed
  from storage in bounded chunks), carrying across part boundaries what the whole-message form
  sees at once: a ``.`` that starts a part right after a part ending in LF, a CRLF split
  between parts, TOP's blank line and body lines split between parts, the final line end.
  The output is byte for byte the same for every way of splitting the message (the tests
  check it with hypothesis).

Written with C-level passes (a regex search, then ``re.sub``), never a per-line Python loop,
so multi-megabyte messages cost a few scans; a message without a line starting with ``.`` (the
common case) is passed on without any copy. A line start is any position after LF: stored mail
is CRLF (so ``\\n.`` is exactly ``\\r\\n.``), and stuffing after a stray bare LF too protects
lenient clients that split lines on LF from a forged terminator.
"""

from __future__ import annotations

import re

__all__ = ["MessageStuffer", "stuff", "stuff_and_terminate", "stuffed_parts", "truncate_top"]

_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"
_DOT = 0x2E
_CR = 0x0D
_LF = 0x0A
# The regex engine scans for this pattern about twice as fast as bytes.find/bytes.replace
# (CPython 3.11, mail-sized text; bytes.replace also counts the matches in a first pass).
_LINE_START_DOT = re.compile(rb"\n\.")


def stuff(data: bytes) -> bytes:
    """``data`` with a ``.`` added after every LF that is followed by ``.``.

    Returns ``data`` itself (no copy) when no line after the first starts with ``.``; the first
    line is the caller's business (it may continue a line of an earlier part).
    """
    if _LINE_START_DOT.search(data) is None:
        return data
    return _LINE_START_DOT.sub(b"\n..", data)


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
    body = stuff(data)
    parts = [b".", body] if body[0] == _DOT else [body]
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


class _TopCut:
    """Finds where :func:`truncate_top` cuts a message that arrives in parts.

    Before the blank line it keeps the last three octets seen, so a CRLF CRLF split between
    parts is found; it starts with a virtual CRLF before the message, which makes a message
    that starts with CRLF (an empty header section) end its header at octet 2, as
    :func:`truncate_top` says. In the body it remembers whether the last octet was CR, for a
    CRLF split between parts.
    """

    __slots__ = ("_carry", "_cr", "_in_header", "_lines")

    def __init__(self, top_lines: int) -> None:
        self._lines = top_lines  # body lines still to send
        self._in_header = True
        self._carry = _CRLF
        self._cr = False

    def cut(self, data: bytes) -> int | None:
        """Where the output ends in the non-empty ``data`` (the next part), None for all of it."""
        pos = 0
        if self._in_header:
            carry = self._carry
            found = (carry + data[:3]).find(_HEADER_END)  # a CRLF CRLF across the boundary
            if found >= 0:
                pos = found + 4 - len(carry)
            else:
                found = data.find(_HEADER_END)
                if found < 0:
                    self._carry = data[-3:] if len(data) >= 3 else (carry + data)[-3:]
                    return None
                pos = found + 4
            self._in_header = False
            if self._lines == 0:
                return pos
        elif self._cr and data[0] == _LF:  # a CRLF across the boundary ends a body line
            self._lines -= 1
            if self._lines == 0:
                return 1
            pos = 1
        find = data.find
        lines = self._lines
        while True:
            nl = find(_CRLF, pos)
            if nl < 0:
                break
            pos = nl + 2
            lines -= 1
            if lines == 0:
                return pos
        self._lines = lines
        self._cr = data[-1] == _CR
        return None


class MessageStuffer:
    """:func:`stuff_and_terminate` for a message given in consecutive parts of any size.

    Call :meth:`feed` with each part in order, ``last=True`` with the last one (which may be
    empty); each call returns the output for that part. For TOP (``top_lines`` not None) the
    output ends as soon as the lines are complete: :attr:`done` then turns True, and the caller
    reads no further. Joining every output gives exactly ``stuff_and_terminate(message,
    top_lines)``. A part is never copied when it needs no stuffing and is not cut.

    State carried between parts: whether the next octet starts a line (a ``.`` there is
    stuffed), whether the last octet sent was CR (an LF first in the next part completes a
    CRLF), and a final bare LF held back until it is known whether it ends the message (then
    it becomes CRLF, as in :func:`stuffed_parts`).
    """

    __slots__ = ("_cr", "_held_lf", "_line_start", "_top", "done")

    def __init__(self, top_lines: int | None = None) -> None:
        self._top = _TopCut(top_lines) if top_lines is not None else None
        self._line_start = True  # the next octet starts a line
        self._cr = False  # the last octet sent was CR
        self._held_lf = False  # a bare LF that ended the previous part, not sent yet
        self.done = False  # the terminator was returned: feed no more

    def feed(self, data: bytes, last: bool = False) -> list[bytes]:
        """The output for the next part ``data``; ``last``: it is the end of the message.

        Raises ``ValueError`` once :attr:`done`.
        """
        if self.done:
            raise ValueError("the message is complete")
        if not data and not last:
            return []
        top = self._top
        if top is not None and data:
            cut = top.cut(data)
            if cut is not None:
                if cut < len(data):
                    data = data[:cut]
                last = True
        out: list[bytes] = []
        if self._held_lf:
            self._held_lf = False
            if not data:  # the held LF ended the message: a bare LF becomes CRLF
                self.done = True
                out.append(b"\r\n.\r\n")
                return out
            out.append(b"\n")
        if data:
            if self._line_start and data[0] == _DOT:
                out.append(b".")
            body = stuff(data)
            end = body[-1]
            if end == _LF:
                if (body[-2] == _CR) if len(body) > 1 else self._cr:  # CRLF
                    self._line_start = True
                    self._cr = False
                else:  # a bare LF: send it once we know whether it ends the message
                    body = body[:-1]
                    if body:
                        out.append(body)
                    self._line_start = True
                    self._cr = False
                    if last:
                        self.done = True
                        out.append(b"\r\n.\r\n")
                    else:
                        self._held_lf = True
                    return out
            else:
                self._line_start = False
                self._cr = end == _CR
            out.append(body)
        if last:
            self.done = True
            if self._line_start:  # CRLF ended the data (or there was none)
                out.append(b".\r\n")
            elif self._cr:
                out.append(b"\n.\r\n")
            else:
                out.append(b"\r\n.\r\n")
        return out
