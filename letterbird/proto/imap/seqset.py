"""IMAP sequence sets (RFC 3501 §9 ``sequence-set``; RFC 4315 ``uid-set`` formatting).

Grammar (RFC 3501 §9)::

    seq-number      = nz-number / "*"
    seq-range       = seq-number ":" seq-number
                        ; two seq-number values and all values between
                        ; these two regardless of order.
                        ; Example: 2:4 and 4:2 are equivalent and indicate
                        ; values 2, 3, and 4.
    sequence-set    = (seq-number / seq-range) *("," sequence-set)
    nz-number       = digit-nz *DIGIT
                        ; Non-zero unsigned 32-bit integer (0 < n < 4,294,967,296)

``*`` is the largest number in use (the message count for sequence numbers, the highest UID for
UIDs). A :class:`SequenceSet` keeps the ranges as written, with ``*`` unresolved, and resolves
them against a count or a sorted UID list without ever materialising a range: ``1:4294967295``
costs two integers, and selecting from a list of UIDs costs two binary searches per range.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["MAX_NUMBER", "STAR", "SeqSetError", "SequenceSet", "format_numbers"]

MAX_NUMBER = 4_294_967_295
"""The largest ``nz-number``: numbers are unsigned 32-bit."""

STAR = 0
"""How ``*`` is stored in :attr:`SequenceSet.ranges` (0 is never a valid number)."""

_NUM = r"(?:[1-9][0-9]*|\*)"
_SEQSET = re.compile(rf"{_NUM}(?::{_NUM})?(?:,{_NUM}(?::{_NUM})?)*")


class SeqSetError(ValueError):
    """Not a valid sequence set (syntax, ``0``, or a number above 4294967295)."""


def _number(text: str) -> int:
    if text == "*":
        return STAR
    if len(text) > 10 or int(text) > MAX_NUMBER:
        raise SeqSetError(f"number {text[:12]} is larger than 4294967295")
    return int(text)


def _merge(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pairs.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in pairs:
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed sequence set.

    ``ranges`` holds ``(first, last)`` pairs in the order written, each ``first <= last`` once
    ``*`` (stored as :data:`STAR`) is resolved; a single number ``n`` is ``(n, n)``.
    """

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str | bytes) -> SequenceSet:
        """Parse the wire form; raises :class:`SeqSetError`."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        if not _SEQSET.fullmatch(text):
            if re.search(r"(?:^|[:,])0+(?:$|[:,])", text):
                raise SeqSetError("0 is not a valid message number")
            raise SeqSetError("invalid sequence set")
        out: list[tuple[int, int]] = []
        for item in text.split(","):
            first, sep, last = item.partition(":")
            a = _number(first)
            out.append((a, _number(last) if sep else a))
        return cls(tuple(out))

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """The most compact set holding exactly ``numbers`` (sorted, runs merged)."""
        return cls(tuple(_merge([(n, n) for n in numbers])))

    @property
    def uses_star(self) -> bool:
        """Whether ``*`` appears anywhere in the set."""
        return any(STAR in r for r in self.ranges)

    def max_number(self) -> int:
        """The largest explicit number written (0 if the set is only ``*``)."""
        return max(max(r) for r in self.ranges)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive ranges with ``*`` replaced by ``largest``.

        Ranges are normalised (``5:3`` is ``3:5``) but not clamped to ``largest``: a number
        above it stays (the caller decides whether that is an error). Ranges containing only
        numbers below 1 (``*`` when ``largest`` is 0) disappear.
        """
        pairs: list[tuple[int, int]] = []
        for a, b in self.ranges:
            a = largest if a == STAR else a
            b = largest if b == STAR else b
            lo, hi = (a, b) if a <= b else (b, a)
            lo = max(lo, 1)
            if lo <= hi:
                pairs.append((lo, hi))
        return _merge(pairs)

    def clamped(self, largest: int) -> list[tuple[int, int]]:
        """Like :meth:`resolve` but cut to ``1..largest`` (for message sequence numbers)."""
        out: list[tuple[int, int]] = []
        for lo, hi in self.resolve(largest):
            if lo > largest:
                break
            out.append((lo, min(hi, largest)))
        return out

    def iter(self, largest: int) -> Iterator[int]:
        """Every number of the set within ``1..largest``, ascending, each once."""
        for lo, hi in self.clamped(largest):
            yield from range(lo, hi + 1)

    def contains(self, number: int, largest: int) -> bool:
        """Whether ``number`` is in the set when ``*`` is ``largest``."""
        if number < 1:
            return False
        for a, b in self.ranges:
            a = largest if a == STAR else a
            b = largest if b == STAR else b
            if min(a, b) <= number <= max(a, b):
                return True
        return False

    def positions(self, values: Sequence[int]) -> list[tuple[int, int]]:
        """Index ranges ``[start, stop)`` of ``values`` (sorted ascending) that are in the set.

        ``*`` is the last value (0 when ``values`` is empty). This is how a UID set is applied
        to a mailbox: message sequence number = index + 1. RFC 3501 §6.4.8: ``559:*`` always
        includes the highest UID even when 559 is above it, which falls out of normalising the
        range to ``last:559``.
        """
        largest = values[-1] if values else 0
        out: list[tuple[int, int]] = []
        for lo, hi in self.resolve(largest):
            start = bisect_left(values, lo)
            stop = bisect_right(values, hi, start)
            if start < stop:
                out.append((start, stop))
        return out

    def select(self, values: Sequence[int]) -> list[int]:
        """The elements of ``values`` (sorted ascending) that are in the set, ascending."""
        out: list[int] = []
        for start, stop in self.positions(values):
            out.extend(values[start:stop])
        return out

    def __str__(self) -> str:
        parts: list[str] = []
        for a, b in self.ranges:
            sa = "*" if a == STAR else str(a)
            parts.append(sa if a == b else f"{sa}:{'*' if b == STAR else b}")
        return ",".join(parts)

    def to_bytes(self) -> bytes:
        """The wire form (as written, ranges in order)."""
        return str(self).encode("ascii")


def format_numbers(numbers: Iterable[int]) -> bytes:
    """Compact wire form of ``numbers`` *in the order given*: ascending runs become ranges.

    ``[1, 2, 3, 5]`` → ``1:3,5``; ``[7, 3, 4]`` → ``7,3:4``. Order is kept because RFC 4315
    COPYUID pairs the n-th source UID with the n-th destination UID.
    """
    parts: list[bytes] = []
    start = prev = -2
    for n in numbers:
        if n == prev + 1:
            prev = n
            continue
        if start >= 0:
            parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = n
    if start >= 0:
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)
