"""Streaming decoder of one SMTP message body (``DATA`` or ``BDAT`` chunks), sans-IO.

Implements the DATA transparency procedure of RFC 5321 §4.5.2 (dot-unstuffing, end of data
``<CRLF>.<CRLF>``, §4.1.1.4) and the raw octet chunks of RFC 3030 (BDAT/CHUNKING), with one
line-ending policy for both. It keeps no more than the output produced since the last
:meth:`BodyReader.take`, so a message of any size passes through in bounded memory.

**Line endings — the single policy.** Every bare LF and every bare CR in the message becomes
CRLF, so the stored message has canonical CRLF line endings and every protocol reports the
same sizes. Lines are delimited by CRLF, bare LF or bare CR, and a leading ``.`` of any such
line is removed in DATA mode (so a client that wrote bare-LF lines and dot-stuffed them is
decoded as it meant).

**Smuggling defence** (CVE-2023-51764 family). DATA ends only on the exact octets
``<CR><LF>.<CR><LF>`` (the start of data counts as following a CRLF): a ``.`` line whose
preceding or following line end is a bare LF or bare CR (``\\n.\\n``, ``\\n.\\r\\n``,
``\\r\\n.\\n``, ``\\r.\\r`` …) does not end data; it is unstuffed like any other line and so
becomes an empty line. Only octets another conforming server would also read as the end of
data end it here, so no message can carry a second, smuggled one past us.

While streaming the reader counts the size of the normalised message, the longest line, and the
``Received:`` header fields of the header section (RFC 5321 §6.3 loop detection). The first
limit exceeded (size, line length, hop count) is recorded in :attr:`BodyReader.error`; from then
on output is dropped (the caller discards what it already received) but input is still consumed
up to the end of the message, so the session stays usable.
"""

from __future__ import annotations

import re

from . import replies
from .replies import Reply

__all__ = ["BodyReader"]

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E
_CRLF = b"\r\n"
_EOL_RE = re.compile(b"[\r\n]")
# RFC 5322 §3.6.7 trace field name, tolerating obsolete WSP before the colon (§4.5.7).
_RECEIVED_RE = re.compile(b"received[ \t]*:", re.IGNORECASE)
_PREFIX_KEEP = 32

# States of the line machine.
_START = 0  # at the start of a line
_MID = 1  # inside a line
_CR_SEEN = 2  # a CR ended the input; the next octet tells CRLF from bare CR
_DOT_SEEN = 3  # DATA: a "." at the start of a line
_DOT_CR = 4  # DATA: "." then CR at the start of a line


class BodyReader:
    """Decode one message body incrementally.

    ``dot_stuffed=True`` for DATA (transparency and ``CRLF.CRLF`` end), ``False`` for BDAT
    (octets taken as they are, apart from line-ending normalisation).
    """

    def __init__(
        self,
        *,
        dot_stuffed: bool,
        max_size: int,
        max_line_length: int,
        max_received: int,
    ) -> None:
        self._dots = dot_stuffed
        self._max_size = max_size
        self._max_line = max_line_length
        self._max_received = max_received
        self._state = _START
        self._genuine = True  # the current line start follows a real CRLF (or data start)
        self._line = 0
        self._in_headers = True
        self._prefix = bytearray()
        self._out = bytearray()
        #: Octets of the normalised, unstuffed message so far.
        self.size = 0
        #: Longest line seen, in octets, without its line ending.
        self.longest_line = 0
        #: ``Received:`` fields in the header section so far.
        self.received_count = 0
        #: The first limit exceeded, as the reply to give; ``None`` while all is well.
        self.error: Reply | None = None
        #: The end of the message was reached (DATA: end-of-data line; BDAT: :meth:`finish`).
        self.done = False

    def fail(self, reply: Reply) -> None:
        """Record a refusal (the first one wins) and stop producing output."""
        if self.error is None:
            self.error = reply
            self._out.clear()

    def take(self) -> bytes:
        """The decoded octets produced since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def feed(self, data: bytes | bytearray, end: int) -> int:
        """Decode ``data[:end]``; return how many octets were consumed.

        Fewer than ``end`` are consumed only in DATA mode, when the end-of-data line was
        reached (:attr:`done` becomes true); the rest belongs to the next command.
        """
        pos = 0
        fast_from = 0
        state = self._state
        while pos < end:
            if state == _START:
                if pos >= fast_from and not self._in_headers and self.error is None:
                    pos, fast_from = self._plain_lines(data, pos, end)
                    if pos == end:
                        break
                if self._dots and data[pos] == _DOT:
                    state = _DOT_SEEN
                    pos += 1
                    continue
                state = _MID
            elif state == _DOT_SEEN:
                if data[pos] == _CR:
                    state = _DOT_CR
                    pos += 1
                    continue
                state = _MID  # the stuffing dot is dropped; this octet is line content
            elif state == _DOT_CR:
                if data[pos] == _LF:
                    pos += 1
                    if self._genuine:
                        self.done = True
                        self._state = _START
                        return pos
                    self._end_line(genuine=True)
                else:
                    self._end_line(genuine=False)  # ".", bare CR
                state = _START
                continue
            elif state == _CR_SEEN:
                if data[pos] == _LF:
                    pos += 1
                    self._end_line(genuine=True)
                else:
                    self._end_line(genuine=False)
                state = _START
                continue
            # _MID: copy line content up to the next CR or LF.
            match = _EOL_RE.search(data, pos, end)
            if match is None:
                self._text(data, pos, end)
                pos = end
                break
            index = match.start()
            if index > pos:
                self._text(data, pos, index)
            pos = index + 1
            if data[index] == _LF:
                self._end_line(genuine=False)
                state = _START
            else:
                state = _CR_SEEN
        self._state = state
        return pos

    def _plain_lines(self, data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
        """Copy a run of plain lines at C speed, from a line start.

        A plain line ends in a real CRLF, holds no other CR or LF and (DATA) does not start
        with a dot: it needs no work but copying. Returns where the run stops and, when the
        run was cut short by a bare CR/LF or a limit, the offset before which the fast path
        should not be tried again (so odd input is scanned once, not once per line).
        """
        stop = data.rfind(_CRLF, pos, end) + 2
        if stop < pos + 2:
            return pos, end  # no complete line in the input
        if self._dots:
            if data[pos] == _DOT:
                return pos, pos + 1
            dot_line = data.find(b"\r\n.", pos, stop)
            if dot_line >= 0:
                stop = dot_line + 2
        lines = data.count(_CRLF, pos, stop)
        if (
            data.count(b"\n", pos, stop) != lines
            or data.count(b"\r", pos, stop) != lines
            or self.size + stop - pos > self._max_size
        ):
            return pos, stop
        run = data[pos:stop]
        if stop - pos > self._max_line:
            longest = max(map(len, run.split(_CRLF)))
            if longest > self._max_line:
                return pos, stop
            self.longest_line = max(self.longest_line, longest)
        self.size += stop - pos
        self._out += run
        self._genuine = True
        return stop, stop

    def finish(self) -> None:
        """End of a BDAT message: a CR left pending is a bare CR; close header tracking."""
        self.done = True
        if self._state == _CR_SEEN:
            self._end_line(genuine=False)
        self._state = _START
        if self._in_headers and self._prefix:
            self._check_header_line()

    def _text(self, data: bytes | bytearray, start: int, stop: int) -> None:
        length = stop - start
        self.size += length
        self._line += length
        if self._line > self.longest_line:
            self.longest_line = self._line
        if self._in_headers and len(self._prefix) < _PREFIX_KEEP:
            self._prefix += data[start : min(stop, start + _PREFIX_KEEP - len(self._prefix))]
        if self.error is None:
            if self._line > self._max_line:
                self.fail(replies.DATA_LINE_TOO_LONG)
            elif self.size > self._max_size:
                self.fail(replies.MESSAGE_TOO_BIG)
            else:
                self._out += data[start:stop]

    def _end_line(self, *, genuine: bool) -> None:
        if self._in_headers:
            if self._line == 0:
                self._in_headers = False
            else:
                self._check_header_line()
        self._line = 0
        self._genuine = genuine
        self.size += 2
        if self.error is None:
            if self.size > self._max_size:
                self.fail(replies.MESSAGE_TOO_BIG)
            else:
                self._out += _CRLF

    def _check_header_line(self) -> None:
        if _RECEIVED_RE.match(self._prefix) is not None:
            self.received_count += 1
            if self.received_count > self._max_received:
                self.fail(replies.MAIL_LOOP)
        self._prefix.clear()
