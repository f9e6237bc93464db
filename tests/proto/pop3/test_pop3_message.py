"""Byte-stuffing, termination and TOP truncation of POP3 message bodies."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.pop3 import stuff_and_terminate, truncate_top


def unstuff(response: bytes) -> bytes:
    """What a client does: cut the terminating line, remove one leading dot from each line."""
    assert response.endswith(b".\r\n")
    body = response[:-3]
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\n..", b"\n.")


def with_final_crlf(data: bytes) -> bytes:
    if not data or data.endswith(b"\r\n"):
        return data
    if data.endswith(b"\r"):
        return data + b"\n"
    if data.endswith(b"\n"):
        return data[:-1] + b"\r\n"
    return data + b"\r\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r", b"a\r\n.\r\n"),
        (b"a\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".a\r\n.b\r\n", b"..a\r\n..b\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n..\r\n", b"a\r\n...\r\n.\r\n"),
        (b"a.b\r\n a.\r\n", b"a.b\r\n a.\r\n.\r\n"),
        (b"a\n.b\r\n", b"a\n..b\r\n.\r\n"),  # bare LF: stuffed too
        (b"\r\n", b"\r\n.\r\n"),
        (b"\r\n.", b"\r\n..\r\n.\r\n"),
    ],
)
def test_stuffing(data: bytes, expected: bytes) -> None:
    assert stuff_and_terminate(data) == expected


HEADERS = b"From: a@example.org\r\nSubject: hi\r\n"
BODY = b"line 1\r\n.line 2\r\nline 3\r\n"


@pytest.mark.parametrize(
    ("data", "lines", "expected"),
    [
        (HEADERS + b"\r\n" + BODY, 0, HEADERS + b"\r\n"),
        (HEADERS + b"\r\n" + BODY, 1, HEADERS + b"\r\nline 1\r\n"),
        (HEADERS + b"\r\n" + BODY, 2, HEADERS + b"\r\nline 1\r\n.line 2\r\n"),
        (HEADERS + b"\r\n" + BODY, 3, HEADERS + b"\r\n" + BODY),
        (HEADERS + b"\r\n" + BODY, 10**9, HEADERS + b"\r\n" + BODY),
        (HEADERS + b"\r\nno crlf", 1, HEADERS + b"\r\nno crlf"),
        (HEADERS + b"\r\nl1\r\nno crlf", 1, HEADERS + b"\r\nl1\r\n"),
        (HEADERS, 0, HEADERS),  # no blank line: all header
        (HEADERS.rstrip(b"\r\n"), 5, HEADERS.rstrip(b"\r\n")),
        (b"\r\nbody\r\nmore\r\n", 1, b"\r\nbody\r\n"),  # empty header section
        (b"\r\nbody\r\n", 0, b"\r\n"),
        (b"", 3, b""),
    ],
)
def test_truncate_top(data: bytes, lines: int, expected: bytes) -> None:
    assert truncate_top(data, lines) == expected


def test_top_is_stuffed_after_truncation() -> None:
    data = HEADERS + b"\r\n" + BODY
    assert stuff_and_terminate(data, 2) == HEADERS + b"\r\nline 1\r\n..line 2\r\n.\r\n"
    assert stuff_and_terminate(b"H: v\r\n\r\nno end", 5) == b"H: v\r\n\r\nno end\r\n.\r\n"


def test_multi_megabyte_message_is_fast() -> None:
    data = b"".join(b".line %d with some text to make it longer\r\n" % i for i in range(400_000))
    assert len(data) > 16_000_000
    started = time.perf_counter()
    out = stuff_and_terminate(data)
    elapsed = time.perf_counter() - started
    assert len(out) == len(data) + 400_000 + 3
    assert unstuff(out) == data
    assert elapsed < 2  # a per-line Python loop is several times slower than this bound


LINE_PIECES = st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"a", b" ", b"\r\n.\r\n"])
MESSAGES = st.one_of(
    st.binary(max_size=300),
    st.lists(LINE_PIECES, max_size=40).map(b"".join),
)


@settings(deadline=None)
@given(MESSAGES)
def test_stuffing_round_trips(data: bytes) -> None:
    out = stuff_and_terminate(data)
    assert unstuff(out) == with_final_crlf(data)


@settings(deadline=None)
@given(MESSAGES, st.one_of(st.none(), st.integers(min_value=0, max_value=50)))
def test_terminator_only_at_the_end(data: bytes, top: int | None) -> None:
    out = stuff_and_terminate(data, top)
    # a strict client ends at the first CRLF "." CRLF (counting the +OK line's CRLF before it)
    assert (b"\r\n" + out).find(b"\r\n.\r\n") == len(out) - 3
    # a lenient client splitting on LF never sees a lone "." line before the end
    lines = out.split(b"\n")
    assert all(line.rstrip(b"\r") != b"." for line in lines[:-2])
    assert lines[-2:] == [b".\r", b""]


@settings(deadline=None)
@given(MESSAGES, st.integers(min_value=0, max_value=50))
def test_top_is_a_prefix(data: bytes, top: int) -> None:
    cut = truncate_top(data, top)
    assert data.startswith(cut)
    assert unstuff(stuff_and_terminate(data, top)) == with_final_crlf(cut)
