"""Message data for the SMTP client: streaming dot-stuffing, 8-bit detection, xtext."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_client_harness import EHLO_FULL, GO_AHEAD, MAIL_OK, QUEUED, RCPT_OK, pump, ready_client

from letterbird.proto.smtp.client import (
    DotStuffer,
    Envelope,
    MessageResult,
    SendBody,
    encode_orcpt,
    encode_xtext,
    is_8bit,
)


def unstuff(wire: bytes) -> bytes:
    """Reference decoder (RFC 5321 §4.5.2, receiver side), one line at a time."""
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    assert body == b"" or body.endswith(b"\r\n")
    # no bare CR or LF may reach the wire
    assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")
    lines = body.split(b"\r\n")[:-1]
    out = []
    for line in lines:
        if line.startswith(b"."):
            assert line.startswith(b".."), line  # a lone leading dot would end the data
            line = line[1:]
        out.append(line + b"\r\n")
    return b"".join(out)


def expected(original: bytes) -> bytes:
    """What the receiver must see: CRLF line ends, and a final CRLF."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", original)
    return data if data == b"" or data.endswith(b"\r\n") else data + b"\r\n"


def stuff(chunks: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.encode(c) for c in chunks) + stuffer.finish()


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([], b".\r\n"),
        ([b""], b".\r\n"),
        ([b"abc"], b"abc\r\n.\r\n"),
        ([b"abc\r\n"], b"abc\r\n.\r\n"),
        ([b".\r\n"], b"..\r\n.\r\n"),
        ([b".hidden\r\n..two\r\n"], b"..hidden\r\n...two\r\n.\r\n"),
        ([b"a\r\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),
        # chunk boundaries inside "CRLF ."
        ([b"a\r", b"\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"\n", b".", b"b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"", b"\n."], b"a\r\n..\r\n.\r\n"),
        ([b"."], b"..\r\n.\r\n"),
        # bare line ends are normalised to CRLF (no "SMTP smuggling")
        ([b"a\n.\nb"], b"a\r\n..\r\nb\r\n.\r\n"),
        ([b"a\r.\rb\r"], b"a\r\n..\r\nb\r\n.\r\n"),
        ([b"a\r", b"x"], b"a\r\nx\r\n.\r\n"),
        ([b"a\r"], b"a\r\n.\r\n"),
        ([b"\r", b"\r"], b"\r\n\r\n.\r\n"),
    ],
)
def test_dot_stuffing_cases(chunks: list[bytes], wire: bytes) -> None:
    assert stuff(chunks) == wire


@settings(deadline=None, max_examples=400)
@given(
    st.lists(st.sampled_from([b".", b"\r\n", b"a", b"\r", b"\n", b"..", b"\r\n.\r\n"])),
    st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_stuffed_stream_unstuffs_to_the_original(parts: list[bytes], cuts: list[int]) -> None:
    original = b"".join(parts)
    points = sorted({0, len(original), *(c % (len(original) + 1) for c in cuts)})
    chunks = [original[a:b] for a, b in itertools.pairwise(points)]
    wire = stuff(chunks)
    assert unstuff(wire) == expected(original)
    assert wire == stuff([original])  # the chunking never changes the bytes on the wire


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_stuffing_arbitrary_bytes(original: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(original), *(c % (len(original) + 1) for c in cuts)})
    chunks = [original[a:b] for a, b in itertools.pairwise(points)]
    assert unstuff(stuff(chunks)) == expected(original)


def test_stuffing_is_fast() -> None:
    line = b"." + b"x" * 70 + b"\r\n"
    data = line * 150_000  # ~10 MB, every line stuffed
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    start = time.perf_counter()
    wire = stuff(chunks)
    elapsed = time.perf_counter() - start
    assert len(wire) == len(data) + 150_000 + 3
    assert elapsed < 2.0  # typically ~20 ms; a per-line Python loop takes far longer


def test_body_through_the_client() -> None:
    c = ready_client(EHLO_FULL)
    env = Envelope("a@a.test", ["b@b.test"], eight_bit=True)
    c.send_message(env)
    c.data_to_send()
    assert pump(c, MAIL_OK + RCPT_OK + GO_AHEAD) == [SendBody(env)]
    sent = c.encode_data(b"Subject: caf\xc3\xa9\r\n\r\n.line\r")
    sent += c.encode_data(b"\n.")
    c.end_data()
    sent += c.data_to_send()
    assert sent == b"Subject: caf\xc3\xa9\r\n\r\n..line\r\n..\r\n.\r\n"
    events = pump(c, QUEUED)
    assert isinstance(events[0], MessageResult)


def test_each_message_gets_a_fresh_stuffer() -> None:
    c = ready_client(EHLO_FULL)
    env = Envelope("a@a.test", ["b@b.test"])
    c.send_message(env)
    pump(c, MAIL_OK + RCPT_OK + GO_AHEAD)
    assert c.encode_data(b"no line end") == b"no line end"
    c.end_data()
    assert c.data_to_send().endswith(b"\r\n.\r\n")
    pump(c, QUEUED)
    c.send_message(env)
    pump(c, MAIL_OK + RCPT_OK + GO_AHEAD)
    assert c.encode_data(b".first") == b"..first"  # at the start of a new message


def test_is_8bit() -> None:
    assert not is_8bit(b"plain ASCII\r\n\x00\x7f")
    assert is_8bit(b"caf\xc3\xa9")
    assert is_8bit(b"\x80")
    assert not is_8bit(b"")


def test_xtext() -> None:
    # RFC 3461 §4: "+" and "=" and octets outside "!".."~" are hexchars
    assert encode_xtext("abc") == "abc"
    assert encode_xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert encode_xtext("é") == "+C3+A9"
    assert encode_orcpt("rfc822", "bob+tag@b.test") == "rfc822;bob+2Btag@b.test"
    # RFC 6533 §3: utf-8-addr-xtext with \x{HEXPOINT}
    assert encode_orcpt("rfc822", "jösé+x@b.test") == "utf-8;j\\x{F6}s\\x{E9}\\x{2B}x@b.test"
    assert encode_orcpt("rfc822", "a\\b@ü.test") == "utf-8;a\\x{5C}b@\\x{FC}.test"
