"""Message submission policy (RFC 6409): who may send as whom, header fixes, sending limits.

Three pieces the SMTP edge uses on the ``submission``/``submissions`` ports:

* :class:`Identities` — the addresses an authenticated account may use as envelope sender and
  in ``From:`` (its own address and its aliases, from ``Directory.addresses_of``). Matching
  follows DESIGN.md §9: local parts case-insensitively, domains in IDNA2008 A-label form, and
  ``user+tag@domain`` counts as ``user@domain`` (the subaddress separator is a setting).
* :class:`HeaderFixer` — streams the message through while holding back only the header
  section (bounded by ``max_header_size``): removes ``Bcc:`` (RFC 5322 §3.6.3: the blind
  recipients must not be shown to the others), adds ``Date:`` and ``Message-ID:`` when missing
  (RFC 6409 §8.2, §8.3), adds ``From:`` with the envelope sender when missing (RFC 5322 §3.6
  requires one), and records whether any ``From:`` address is one of the account's
  identities. The body is passed on untouched, chunk by chunk, so a 50 MB message never sits in
  memory. Input is the SMTP core's normalised message text (CRLF line ends).
* :class:`SendingLimits` — messages and recipients per account over a sliding hour. Counts
  live **in this process, or across the worker processes of one machine**
  (:class:`~letterbird.server.shared_state.SharedSendingLimits`, in the workers' shared-memory
  segment); each node of a cluster counts on its own, and a restart forgets them. That is the
  usual trade (Postfix's anvil does the same); a cluster-wide counter would cost a storage
  round trip per RCPT. Both keep the API of :class:`BaseSendingLimits`, which holds the limits
  and the checks made against the counts.

A header section that does not end with a blank line before a line that is not a header field
(say, text typed straight after the fields) is closed there: the blank line is inserted, as
Postfix's cleanup does, so the added fields stay in the header.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from letterbird.directory.addresses import InvalidAddress, parse_address
from letterbird.mime.address import MISSING_DOMAIN, MISSING_MAILBOX, parse_addresses

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "BaseSendingLimits",
    "HeaderFixer",
    "Identities",
    "SendingLimits",
]

DEFAULT_MAX_HEADER_SIZE = 256 * 1024
#: At most this many addresses of ``From:`` fields are looked at (RFC 5322 allows a list).
MAX_FROM_ADDRESSES = 100

# RFC 5322 §3.6.8 / §4.5 (obs-optional allows WSP before the colon):
#   field-name = 1*ftext ; ftext = %d33-57 / %d59-126
_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_CRLF = b"\r\n"
#: Identities remembers this many answers (per session), then starts over.
_MAX_ANSWERS = 64


class Identities:
    """The sender identities of one account, matched as DESIGN.md §9 says."""

    def __init__(self, addresses: Iterable[str], delimiter: str = "+") -> None:
        self._delimiter = delimiter
        self._keys: set[tuple[str, str]] = set()
        for address in addresses:
            key = self._key(address)
            if key is not None:
                self._keys.add(key)
        # Answers already given: a session asks about the same sender at every MAIL and
        # From: (parsing and IDNA-normalising an address each time is the costly part).
        self._answers: dict[str, bool] = {}

    def _key(self, address: str) -> tuple[str, str] | None:
        try:
            return parse_address(address).base(self._delimiter).key
        except InvalidAddress:
            return None

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str) or not address:
            return False
        known = self._answers.get(address)
        if known is not None:
            return known
        key = self._key(address)
        found = key is not None and key in self._keys
        if len(self._answers) >= _MAX_ANSWERS:
            self._answers.clear()
        self._answers[address] = found
        return found

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True, slots=True)
class _Field:
    name: bytes  # lower-case
    raw: bytes  # the whole field as received, folding and final CRLF included


class HeaderFixer:
    """Rewrites the header section of a message streamed through :meth:`feed`.

    ``feed(chunk)`` and then ``finish()`` return the bytes to store, in order. After
    ``finish()``: :attr:`too_large` (the header section exceeded ``max_header_size``; the
    message must be refused and the output is incomplete), :attr:`from_addresses` (every
    ``From:`` address seen, as ``local@domain``), :attr:`from_ok` (one of them is an identity)
    and :attr:`added` / :attr:`removed` (field names, for logs and tests).
    """

    def __init__(
        self,
        *,
        identities: Identities,
        sender: str,
        hostname: str,
        now: float,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        if max_header_size < 1:
            raise ValueError("max_header_size must be positive")
        self._identities = identities
        self._sender = sender
        self._hostname = hostname
        self._now = now
        self._limit = max_header_size
        self._pending = bytearray()  # an incomplete header line
        self._fields: list[_Field] = []
        self._size = 0
        self._in_header = True
        self.too_large = False
        self.from_addresses: list[str] = []
        self.from_ok = False
        self.added: list[str] = []
        self.removed: list[str] = []

    # -- streaming -------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take the next message octets; return what can be written out now."""
        if self.too_large:
            return b""
        if not self._in_header:
            return data
        buf = bytes(self._pending) + data if self._pending else data
        pos = 0
        out: list[bytes] = []
        while self._in_header:
            end = buf.find(b"\n", pos)
            if end < 0:
                break
            out.append(self._header_line(buf[pos : end + 1]))
            pos = end + 1
            if self.too_large:
                self._pending = bytearray()
                return b""
        rest = buf[pos:]
        if self._in_header:
            if self._size + len(rest) > self._limit:
                self._overflow()
                return b""
            self._pending = bytearray(rest)
            return b"".join(out)
        self._pending = bytearray()
        out.append(rest)  # the start of the body
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the message: the rest of the output (the header, if it never ended)."""
        if self.too_large or not self._in_header:
            return b""
        out = bytearray()
        if self._pending:  # a last line without CRLF (the SMTP core never gives one)
            line = bytes(self._pending)
            self._pending = bytearray()
            out += self._header_line(line if line.endswith(b"\n") else line + _CRLF)
        if self._in_header:  # no body at all: the whole message was header fields
            self._in_header = False
            out += self._emit_header()
        return b"" if self.too_large else bytes(out)

    # -- the header section ----------------------------------------------------------------
    def _header_line(self, line: bytes) -> bytes:
        self._size += len(line)
        if self._size > self._limit:
            self._overflow()
            return b""
        if line in (b"\r\n", b"\n"):
            self._in_header = False
            return self._emit_header() + line
        if line[:1] in (b" ", b"\t"):
            if self._fields:  # RFC 5322 §2.2.3: folding continues the previous field
                last = self._fields[-1]
                self._fields[-1] = _Field(last.name, last.raw + line)
                return b""
        else:
            match = _FIELD_RE.match(line)
            if match is not None:
                self._fields.append(_Field(match.group(1).lower(), line))
                return b""
        # Not a header line: the body starts here without the blank line; supply it.
        self._in_header = False
        return self._emit_header() + _CRLF + line

    def _overflow(self) -> None:
        self.too_large = True
        self._fields = []
        self._pending = bytearray()

    def _emit_header(self) -> bytes:
        out = bytearray()
        names: set[bytes] = set()
        for field in self._fields:
            names.add(field.name)
            if field.name == b"bcc":
                self.removed.append("Bcc")
                continue
            if field.name == b"from":
                self._collect_from(field.raw)
            out += field.raw
        self._fields = []
        if b"from" not in names and self._sender:
            out += f"From: <{self._sender}>\r\n".encode()
            self.added.append("From")
            self.from_addresses.append(self._sender)
        if b"date" not in names:
            out += b"Date: " + email.utils.formatdate(self._now, localtime=True).encode()
            out += _CRLF
            self.added.append("Date")
        if b"message-id" not in names:
            token = secrets.token_hex(12)
            out += f"Message-ID: <{token}@{self._hostname}>\r\n".encode()
            self.added.append("Message-ID")
        self.from_ok = any(a in self._identities for a in self.from_addresses)
        return bytes(out)

    def _collect_from(self, raw: bytes) -> None:
        value = raw.split(b":", 1)[1]
        text = value.replace(b"\r\n", b"").replace(b"\n", b"").decode("utf-8", "replace")
        room = MAX_FROM_ADDRESSES - len(self.from_addresses)
        for address in parse_addresses(text, limit=max(room, 0)):
            if address.host is None or address.mailbox is None:
                continue  # group markers
            if address.mailbox == MISSING_MAILBOX or address.host == MISSING_DOMAIN:
                continue
            self.from_addresses.append(f"{address.mailbox}@{address.host}")


class BaseSendingLimits(ABC):
    """Messages and recipients per account over a sliding window (one hour by default): the
    limits and the checks made at MAIL and RCPT. Subclasses keep the counts (:meth:`usage`,
    :meth:`record`): :class:`SendingLimits` in this process, ``SharedSendingLimits`` across the
    workers of one machine. ``0`` disables a limit; when both are 0 nothing is recorded.

    A check and the later :meth:`record` are separate steps: sessions sending at the same time
    may each pass the check and together exceed a limit by the messages in flight.
    """

    def __init__(self, max_messages: int, max_recipients: int, *, window: float = 3600.0) -> None:
        if max_messages < 0 or max_recipients < 0 or window <= 0:
            raise ValueError("limits must not be negative and the window must be positive")
        self.max_messages = max_messages
        self.max_recipients = max_recipients
        self.window = window

    @property
    def counting(self) -> bool:
        """Is any limit set (else :meth:`record` keeps nothing)?"""
        return bool(self.max_messages or self.max_recipients)

    @abstractmethod
    def usage(self, account_id: int, now: float) -> tuple[int, int]:
        """(messages, recipients) sent by the account within the window."""

    @abstractmethod
    def record(self, account_id: int, recipients: int, now: float) -> None:
        """Count one accepted message with ``recipients`` recipients."""

    def message_allowed(self, account_id: int, now: float) -> bool:
        """May the account start another message (checked at MAIL)?"""
        return not self.max_messages or self.usage(account_id, now)[0] < self.max_messages

    def recipient_allowed(self, account_id: int, pending: int, now: float) -> bool:
        """May the account add one more recipient, ``pending`` being already accepted in the
        current transaction (checked at RCPT)?"""
        if not self.max_recipients:
            return True
        return self.usage(account_id, now)[1] + pending < self.max_recipients


class SendingLimits(BaseSendingLimits):
    """:class:`BaseSendingLimits` counted in this process's memory (see the module docstring).

    Exact to the second. Memory is bounded: one entry per message sent within the window per
    account, capped by the message limit, or by the recipient limit (every message has a
    recipient) when only that one is set; nothing is recorded when both are 0.
    """

    def __init__(self, max_messages: int, max_recipients: int, *, window: float = 3600.0) -> None:
        super().__init__(max_messages, max_recipients, window=window)
        self._sent: dict[int, deque[tuple[float, int]]] = {}
        self._recipients: dict[int, int] = {}

    def _prune(self, account_id: int, now: float) -> deque[tuple[float, int]] | None:
        sent = self._sent.get(account_id)
        if sent is None:
            return None
        horizon = now - self.window
        while sent and sent[0][0] <= horizon:
            _, count = sent.popleft()
            self._recipients[account_id] -= count
        if not sent:
            del self._sent[account_id]
            del self._recipients[account_id]
            return None
        return sent

    def usage(self, account_id: int, now: float) -> tuple[int, int]:
        sent = self._prune(account_id, now)
        if sent is None:
            return 0, 0
        return len(sent), self._recipients[account_id]

    def record(self, account_id: int, recipients: int, now: float) -> None:
        if not self.counting:
            return
        self._prune(account_id, now)
        self._sent.setdefault(account_id, deque()).append((now, recipients))
        self._recipients[account_id] = self._recipients.get(account_id, 0) + recipients
