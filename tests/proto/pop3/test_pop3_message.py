"""Byte-stuffing, termination and TOP truncation of POP3 message bodies."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.pop3 import MessageStuffer, stuff_and_terminate, truncate_top
from letterbird.proto.pop3.message import stuff


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


# --- the same, part by part (MessageStuffer: a message streamed from storage in chunks) --------


def streamed(parts: list[bytes], top: int | None = None) -> tuple[bytes, int]:
    """Feed ``parts`` as the edge does (the last one with ``last=True``, none after done);
    returns the output and how many parts were fed."""
    stuffer = MessageStuffer(top)
    out = []
    fed = 0
    for n, part in enumerate(parts):
        out += stuffer.feed(part, last=n == len(parts) - 1)
        fed += 1
        if stuffer.done:
            break
    assert stuffer.done
    return b"".join(out), fed


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


DOT_LINES = b"H: v\r\n\r\n.a\r\n..\r\n.\r\nb.\r\n...c\r\n.\r\n"


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 11, len(DOT_LINES)])
def test_dot_lines_on_part_boundaries(size: int) -> None:
    """Parts of every small size put the "." of dot lines (and their CRLFs) first, last and
    split across part boundaries: the output is always the whole message's."""
    assert streamed(split_every(DOT_LINES, size))[0] == stuff_and_terminate(DOT_LINES)
    for top in (0, 1, 3, 100):
        expected = stuff_and_terminate(DOT_LINES, top)
        assert streamed(split_every(DOT_LINES, size), top)[0] == expected


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),  # dot first in a part after CRLF
        ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),  # CRLF split, dot after it
        ([b"a.", b"b\r\n"], b"a.b\r\n.\r\n"),  # a dot last in a part is not a line start
        ([b"a\r\n.", b"\r\n"], b"a\r\n..\r\n.\r\n"),
        ([b"a\r", b"\n"], b"a\r\n.\r\n"),  # the final CRLF split
        ([b"a\r", b""], b"a\r\n.\r\n"),  # a final CR, then the end
        ([b"a\r\n", b""], b"a\r\n.\r\n"),
        ([b"a", b""], b"a\r\n.\r\n"),
        ([b"a\n", b""], b"a\r\n.\r\n"),  # a held bare LF ends the message: CRLF
        ([b"a\n", b".b"], b"a\n..b\r\n.\r\n"),  # a held bare LF was not the end
        ([b"a\n", b"\n"], b"a\n\r\n.\r\n"),
        ([b"", b"", b""], b".\r\n"),
        ([b"", b".", b""], b"..\r\n.\r\n"),
    ],
)
def test_part_boundaries(parts: list[bytes], expected: bytes) -> None:
    assert streamed(parts)[0] == expected == stuff_and_terminate(b"".join(parts))


def test_top_stops_reading_once_complete() -> None:
    body = b"".join(b"line %d\r\n" % i for i in range(1000))
    data = HEADERS + b"\r\n" + body
    parts = split_every(data, 16)
    out, fed = streamed(parts, 2)
    assert out == HEADERS + b"\r\nline 0\r\nline 1\r\n.\r\n"
    assert fed * 16 < len(HEADERS) + 2 + 32 + 16  # read only as far as the second line
    stuffer = MessageStuffer(0)
    assert stuffer.feed(HEADERS + b"\r\nbody") == [HEADERS + b"\r\n", b".\r\n"]
    assert stuffer.done
    with pytest.raises(ValueError, match="complete"):
        stuffer.feed(b"more")


@pytest.mark.parametrize("top", [3, 4, 10**9])
def test_top_beyond_the_body_sends_everything(top: int) -> None:
    data = HEADERS + b"\r\n" + BODY
    for size in (1, 5, len(data)):
        out, fed = streamed([*split_every(data, size), b""], top)
        assert out == stuff_and_terminate(data)
        if top > 3:  # fewer lines than asked: read to the end (3: done at the last CRLF)
            assert fed == len(split_every(data, size)) + 1


def test_header_end_split_across_parts() -> None:
    data = b"A: b\r\n\r\nbody\r\nmore\r\n"
    for cut in range(len(data) + 1):
        assert streamed(split_at(data, [cut]), 1)[0] == b"A: b\r\n\r\nbody\r\n.\r\n"
    data = b"\r\nbody\r\n"  # an empty header section
    for cut in range(len(data) + 1):
        assert streamed(split_at(data, [cut]), 0)[0] == b"\r\n.\r\n"
        assert streamed(split_at(data, [1, cut]), 1)[0] == b"\r\nbody\r\n.\r\n"


def test_empty_parts_in_between_change_nothing() -> None:
    stuffer = MessageStuffer()
    assert stuffer.feed(b"a\r") == [b"a\r"]
    assert stuffer.feed(b"") == []
    assert stuffer.feed(b"\n.", last=True) == [b"\n..", b"\r\n.\r\n"]


def test_a_part_without_dot_lines_is_not_copied() -> None:
    part = b"x" * 1000 + b"\r\nnot. a. dot line.\r"
    assert stuff(part) is part
    stuffer = MessageStuffer()
    [out] = stuffer.feed(part)
    assert out is part
    [out] = stuffer.feed(b"\n", last=False)  # after a CR: a CRLF, no dot line either
    assert out == b"\n"
    assert stuff(b"a\r\n.b") == b"a\r\n..b"


@settings(deadline=None, max_examples=500)
@given(
    MESSAGES,
    st.lists(st.integers(min_value=0, max_value=300), max_size=8),
    st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    st.booleans(),
)
def test_any_split_gives_the_whole_message_output(
    data: bytes, cuts: list[int], top: int | None, empty_last: bool
) -> None:
    parts = split_at(data, cuts) + ([b""] if empty_last else [])
    assert streamed(parts, top)[0] == stuff_and_terminate(data, top)
