"""Sequence sets: parsing, resolution against counts and UID lists, compact formatting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.imap.seqset import (
    MAX_NUMBER,
    STAR,
    SeqSetError,
    SequenceSet,
    format_numbers,
)


def test_parse_forms() -> None:
    assert SequenceSet.parse("1").ranges == ((1, 1),)
    assert SequenceSet.parse("1:*").ranges == ((1, STAR),)
    assert SequenceSet.parse(b"3,5:7,*").ranges == ((3, 3), (5, 7), (STAR, STAR))
    assert SequenceSet.parse("*:4").ranges == ((STAR, 4),)
    assert SequenceSet.parse("5:3").ranges == ((5, 3),)
    assert SequenceSet.parse("4294967295").ranges == ((MAX_NUMBER, MAX_NUMBER),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "0 is not"),
        ("1:0", "0 is not"),
        ("3,0:5", "0 is not"),
        ("01", "invalid"),
        ("4294967296", "larger than"),
        ("1:99999999999999999999", "larger than"),
        ("", "invalid"),
        ("1,", "invalid"),
        (",1", "invalid"),
        ("1::2", "invalid"),
        ("1:2:3", "invalid"),
        ("a", "invalid"),
        ("**", "invalid"),
        ("$", "invalid"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(SeqSetError, match=message):
        SequenceSet.parse(text)


def test_resolve_and_clamp() -> None:
    s = SequenceSet.parse("*:4,1,2,10:12")
    assert s.resolve(8) == [(1, 2), (4, 8), (10, 12)]
    assert s.clamped(8) == [(1, 2), (4, 8)]
    assert s.clamped(0) == []
    assert SequenceSet.parse("*").resolve(0) == []
    assert SequenceSet.parse("5:3,4:9,20:21").resolve(100) == [(3, 9), (20, 21)]
    assert SequenceSet.parse("1:3,2:4").resolve(10) == [(1, 4)]
    assert SequenceSet.parse("1:10,2:3").resolve(10) == [(1, 10)]
    assert list(SequenceSet.parse("2:4,9,*").iter(10)) == [2, 3, 4, 9, 10]


def test_huge_ranges_are_never_materialised() -> None:
    s = SequenceSet.parse("1:4294967295")
    assert s.resolve(5) == [(1, MAX_NUMBER)]
    assert s.clamped(5) == [(1, 5)]
    assert s.contains(4_000_000_000, 5)
    uids = list(range(1, 200_000, 3))
    assert s.select(uids) == uids
    assert s.positions(uids) == [(0, len(uids))]


def test_contains() -> None:
    s = SequenceSet.parse("3,5:7,*")
    assert [n for n in range(0, 12) if s.contains(n, 10)] == [3, 5, 6, 7, 10]
    assert SequenceSet.parse("*:4").contains(6, 8)
    assert not SequenceSet.parse("*:4").contains(9, 8)


def test_uid_resolution() -> None:
    uids = [2, 4, 6, 8, 559]
    assert SequenceSet.parse("3:6").select(uids) == [4, 6]
    assert SequenceSet.parse("3:6").positions(uids) == [(1, 3)]
    assert SequenceSet.parse("*").select(uids) == [559]
    # RFC 3501 §6.4.8: 560:* still matches the highest UID
    assert SequenceSet.parse("560:*").select(uids) == [559]
    assert SequenceSet.parse("1000").select(uids) == []
    assert SequenceSet.parse("1:*").select([]) == []
    assert SequenceSet.parse("7,3,5").select(uids) == []
    assert SequenceSet.parse("8,2").select(uids) == [2, 8]


def test_uses_star_and_max_number() -> None:
    assert SequenceSet.parse("1:*").uses_star
    assert not SequenceSet.parse("1:5").uses_star
    assert SequenceSet.parse("9,1:*").max_number() == 9
    assert SequenceSet.parse("*").max_number() == 0


def test_formatting() -> None:
    assert str(SequenceSet.parse("3,5:7,*,*:4,9:*")) == "3,5:7,*,*:4,9:*"
    assert SequenceSet.parse("5:3").to_bytes() == b"5:3"
    assert str(SequenceSet.from_numbers([5, 1, 2, 3, 3, 9, 8])) == "1:3,5,8:9"
    assert format_numbers([1, 2, 3, 5]) == b"1:3,5"
    assert format_numbers([7, 3, 4]) == b"7,3:4"
    assert format_numbers([4]) == b"4"
    assert format_numbers([]) == b""


numbers = st.lists(st.integers(1, 60), max_size=20)
items = st.one_of(
    st.integers(1, 60).map(str),
    st.just("*"),
    st.tuples(st.one_of(st.integers(1, 60).map(str), st.just("*")), st.integers(1, 60)).map(
        lambda t: f"{t[0]}:{t[1]}"
    ),
)


@settings(deadline=None)
@given(st.lists(items, min_size=1, max_size=8), st.integers(0, 70))
def test_resolution_matches_a_naive_model(parts: list[str], largest: int) -> None:
    text = ",".join(parts)
    s = SequenceSet.parse(text)
    assert SequenceSet.parse(str(s)) == s
    naive: set[int] = set()
    for part in parts:
        a, _, b = part.partition(":")
        x = largest if a == "*" else int(a)
        y = x if not b else (largest if b == "*" else int(b))
        naive.update(range(min(x, y), max(x, y) + 1))
    naive.discard(0)
    assert list(s.iter(largest)) == sorted(n for n in naive if n <= largest)
    assert all(s.contains(n, largest) == (n in naive) for n in range(0, 75))
    uids = sorted({n * 2 for n in range(1, largest + 1)})
    top = uids[-1] if uids else 0
    naive_uids: set[int] = set()
    for part in parts:
        a, _, b = part.partition(":")
        x = top if a == "*" else int(a)
        y = x if not b else (top if b == "*" else int(b))
        naive_uids.update(range(min(x, y), max(x, y) + 1))
    assert s.select(uids) == [u for u in uids if u in naive_uids]


@settings(deadline=None)
@given(numbers)
def test_compact_forms_round_trip(nums: list[int]) -> None:
    if nums:
        back = SequenceSet.parse(format_numbers(nums))
        flat = [n for a, b in back.ranges for n in range(a, b + 1)]
        assert flat == nums
        assert list(SequenceSet.from_numbers(nums).iter(100)) == sorted(set(nums))
