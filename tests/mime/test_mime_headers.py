"""Header sections: locating them, HEADER.FIELDS, RFC 2047 words, RFC 2045/2231 parameters."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.mime import decode_words, get_header_fields, header_section_end
from letterbird.mime.headers import (
    first_token,
    parse_content_header,
    parse_fields,
    parse_language,
    strip_comments,
)


@pytest.mark.parametrize(
    ("data", "start", "expected"),
    [
        (b"A: b\r\n\r\nbody", 0, 8),
        (b"A: b\n\nbody", 0, 6),
        (b"A: b\r\nC: d\n\nbody\r\n\r\n", 0, 12),  # a bare "\n\n" before the CRLF blank line
        (b"A: b\n\r\nbody", 0, 7),
        (b"\r\nbody", 0, 2),
        (b"\nbody", 0, 1),
        (b"A: b\r\nno blank line", 0, 19),
        (b"", 0, 0),
        (b"xx--\r\nA: b\r\n\r\n", 6, 14),
        (b"abc", 3, 3),
    ],
)
def test_header_section_end(data: bytes, start: int, expected: int) -> None:
    assert header_section_end(data, start) == expected


def test_header_section_end_respects_end() -> None:
    assert header_section_end(b"A: b\r\n\r\nbody", 0, 5) == 5


HEADER = (
    b"Subject: hello\r\n"
    b"X-Long: one\r\n"
    b"  two\r\n"
    b"subject : second\r\n"
    b"From: a@b\r\n"
    b"no colon line\r\n"
    b"\r\n"
    b"Subject: in the body\r\n"
)


def test_header_fields() -> None:
    assert get_header_fields(HEADER, ["SUBJECT"]) == (b"Subject: hello\r\nsubject : second\r\n\r\n")
    assert get_header_fields(HEADER, ["x-long", "From"]) == (
        b"X-Long: one\r\n  two\r\nFrom: a@b\r\n\r\n"
    )
    assert get_header_fields(HEADER, ["Subject", "X-Long"], negate=True) == (
        b"From: a@b\r\nno colon line\r\n\r\n"
    )
    assert get_header_fields(HEADER, ["nothing"]) == b"\r\n"
    assert get_header_fields(HEADER, [], negate=True) == HEADER[: HEADER.index(b"\r\n\r\n") + 4]
    assert get_header_fields(HEADER, []) == b"\r\n"
    # Names that cannot be field names never match (and are not regex syntax).
    assert get_header_fields(HEADER, ["Sub.ect", "a b", ":", ""]) == b"\r\n"


def test_header_fields_of_a_part_and_edge_shapes() -> None:
    data = b"preamble\r\nContent-Type: text/plain\r\nX: y\r\n\r\nbody"
    assert get_header_fields(data, ["content-type"], 10) == b"Content-Type: text/plain\r\n\r\n"
    assert get_header_fields(data, ["x"], 10, 36) == b""
    # No blank line (a message with no body): none is added; a last field gets its line end.
    assert get_header_fields(b"A: 1\r\nB: 2", ["b"]) == b"B: 2\r\n"
    assert get_header_fields(b"A: 1\r\nB: 2", ["b"], negate=True) == b"A: 1\r\n"
    # LF-only input keeps its line ends; the blank line is sent as CRLF.
    assert get_header_fields(b"A: 1\nB: 2\n\nbody", ["a"]) == b"A: 1\n\r\n"
    assert get_header_fields(b"\r\nbody", ["a"]) == b"\r\n"
    assert get_header_fields(b"\nbody", ["a"], negate=True) == b"\r\n"


def test_parse_fields_unfolds_and_caps() -> None:
    data = b"Subject: a\r\n b\r\n\tc  \r\nX: 1\r\nsubject:second\r\n: no name\r\n\r\n"
    wanted = frozenset({b"subject", b"x"})
    found = parse_fields(data, 0, len(data), wanted, max_bytes=1000, max_fields=10, max_value=100)
    assert found == {b"subject": [b"a b\tc", b"second"], b"x": [b"1"]}
    capped = parse_fields(data, 0, len(data), wanted, max_bytes=1000, max_fields=1, max_value=2)
    assert capped == {b"subject": [b"a "]}


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain", "plain"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?w6k=?=", "é"),
        ("=?utf-8?b?w6k?=", "é"),  # missing padding
        ("=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=", "ab"),  # space between words dropped
        ("=?ISO-8859-1?Q?a?=\r\n =?ISO-8859-2?Q?b?=", "ab"),
        ("=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),
        ("=?utf-8?b?4pw=?= =?utf-8?b?iA==?=", "✈"),  # one character split across two words
        ("=?utf-8*en?q?hi?=", "hi"),  # RFC 2231 language suffix
        ("pre=?utf-8?q?mid?=post", "premidpost"),
        ("=?utf-8?b?!!!?=", "=?utf-8?b?!!!?="),  # undecodable word kept as written
        ("=?utf-8?b?w6k=?= =?utf-8?b?x?= tail", "é =?utf-8?b?x?= tail"),
        ("=?nosuch-charset?q?ok?=", "ok"),
        ("=?x-unknown?q?=E9?=", "é"),  # unknown label, not UTF-8: windows-1252
        ("=?utf-8?q?unterminated", "=?utf-8?q?unterminated"),
    ],
)
def test_decode_words(raw: str, decoded: str) -> None:
    assert decode_words(raw) == decoded


def test_decode_words_caps_its_input() -> None:
    assert len(decode_words("=?utf-8?q?a?=" + "x" * 300_000)) == 1 + (1 << 17) - 13


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/plain", ("text", "plain", ())),
        ("TEXT/Plain ; Charset=UTF-8", ("text", "plain", (("charset", "UTF-8"),))),
        (
            'text/plain (a comment); charset=us-ascii (Plain text); format = "flowed"',
            ("text", "plain", (("charset", "us-ascii"), ("format", "flowed"))),
        ),
        (
            "multipart/mixed; boundary=----=_Part_0_1.2",
            ("multipart", "mixed", (("boundary", "----=_Part_0_1.2"),)),
        ),
        (
            'application/x; name="a \\"quoted\\" \\\\ name"; x=1',
            ("application", "x", (("name", 'a "quoted" \\ name'), ("x", "1"))),
        ),
        ('application/x; name="unterminated', ("application", "x", (("name", "unterminated"),))),
        ('application/x; name="q" junk; y=2', ("application", "x", (("name", "q"), ("y", "2")))),
        ("application/x; name=my file.pdf", ("application", "x", (("name", "my file.pdf"),))),
        (
            "application/x; noval; =x; a b=c; ;; (c) d=1 (c",
            ("application", "x", (("d", "1"),)),
        ),
        ("application/x; d=1 (unterminated", ("application", "x", (("d", "1"),))),
        ("application/x; DUP=1; dup=2", ("application", "x", (("dup", "1"),))),
        (
            'application/x; name*0="long "; name*1=name.txt',
            ("application", "x", (("name", "long name.txt"),)),
        ),
        (
            "application/x; title*0*=us-ascii'en'This%20is%20; title*1*=%2A%2Afun%2A%2A;"
            ' title*2="!"',
            ("application", "x", (("title", "This is **fun**!"),)),
        ),
        (
            "application/x; filename*=iso-8859-1''caf%E9.txt",
            ("application", "x", (("filename", "café.txt"),)),
        ),
        (
            "application/x; filename*=utf-8''%E2%82%AC; filename=plain.txt",
            ("application", "x", (("filename", "€"),)),
        ),
        (
            "application/x; name*1=b; name*0=a; name*0=ignored; name*99=c; name*100=skip",
            ("application", "x", (("name", "abc"),)),
        ),
        (
            "application/x; name*=no-quote-marks%41",
            ("application", "x", (("name", "no-quote-marksA"),)),
        ),
        (
            'application/x; name="=?utf-8?q?caf=C3=A9?="; other="=?utf-8?q?x?="',
            ("application", "x", (("name", "café"), ("other", "=?utf-8?q?x?="))),
        ),
        ("text", None),
        ("text/", None),
        ("/plain", None),
        ("te xt/plain", None),
        ("text/pl@in", None),
        ('"text/plain"', None),
        ("", None),
    ],
)
def test_content_type(
    value: str, expected: tuple[str, str, tuple[tuple[str, str], ...]] | None
) -> None:
    assert parse_content_header(value, with_subtype=True) == expected


def test_content_disposition() -> None:
    assert parse_content_header('Attachment; filename="a.txt"', with_subtype=False) == (
        "attachment",
        "",
        (("filename", "a.txt"),),
    )
    assert parse_content_header("inline", with_subtype=False) == ("inline", "", ())
    assert parse_content_header("; filename=x", with_subtype=False) is None
    assert parse_content_header("in line", with_subtype=False) is None


def test_small_helpers() -> None:
    assert parse_language("en (English), de-CH  fr") == ("en", "de-CH", "fr")
    assert parse_language(" (nothing) ") is None
    assert first_token("Base64 (comment) extra") == "Base64"
    assert first_token("(only a comment)") == ""
    assert strip_comments('a (b (nested) c) "(kept)" d') == 'a   "(kept)" d'
    assert strip_comments('x (unterminated \\) "q') == "x  "
    assert strip_comments("no comments") == "no comments"


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=300))
def test_parsers_never_raise(value: str) -> None:
    parse_content_header(value, with_subtype=True)
    parse_content_header(value, with_subtype=False)
    decode_words(value)
    parse_language(value)
    strip_comments(value)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300), st.lists(st.text(max_size=8), max_size=4), st.booleans())
def test_header_fields_never_raise(data: bytes, names: list[str], negate: bool) -> None:
    out = get_header_fields(data, names, negate=negate)
    assert len(out) <= len(data) + 2 * (data.count(b"\n") + 2)


# The regular expression ``parse_fields`` used to be: its line scanner must find the same fields.
_REFERENCE_FIELD = re.compile(
    rb"^([^:\s][^:\r\n]*?)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.MULTILINE
)


def _reference_parse_fields(
    data: bytes, wanted: frozenset[bytes], max_fields: int, max_value: int
) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for count, m in enumerate(_REFERENCE_FIELD.finditer(data)):
        if count >= max_fields:
            break
        name = m.group(1).lower()
        if name in wanted:
            value = re.sub(rb"\r?\n", b"", m.group(2)).strip(b" \t\r\n")[:max_value]
            out.setdefault(name, []).append(value)
    return out


_HEADER_BYTES = st.lists(
    st.sampled_from(
        [
            b"Subject",
            b"subject ",
            b"X",
            b"x\t",
            b":",
            b" ",
            b"\t",
            b"\r",
            b"\n",
            b"\r\n",
            b"a",
            b"\x0b",
            b"\x0c",
            b"=?utf-8?q?x?=",
            b"\xff",
            b"To",
            b": ",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(_HEADER_BYTES, st.integers(1, 6), st.integers(0, 20))
def test_parse_fields_matches_the_reference_regex(
    data: bytes, max_fields: int, max_value: int
) -> None:
    wanted = frozenset({b"subject", b"x", b"to", b"a"})
    got = parse_fields(
        data, 0, len(data), wanted, max_bytes=len(data), max_fields=max_fields, max_value=max_value
    )
    assert got == _reference_parse_fields(data, wanted, max_fields, max_value)
