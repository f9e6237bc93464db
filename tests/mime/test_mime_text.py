"""Charsets, transfer decoding and HTML-to-text for the snippet."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.mime.charsets import decode_text, lookup_charset
from letterbird.mime.text import decode_transfer, html_to_text, snippet_text


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("utf-8", "utf-8"),
        ('"UTF8"', "utf-8"),
        ("iso-8859-1", "cp1252"),
        ("ks_c_5601-1987", "cp949"),
        ("gb2312", "gb18030"),
        ("koi8-r", "koi8-r"),
        ("us-ascii", None),
        ("x-unknown", None),
        ("no-such-charset", None),
        ("zlib", None),  # bytes-to-bytes transforms are not charsets
        ("base64", None),
        ("rot13", None),
        ("punycode", None),  # quadratic decoder
        ("idna", None),
        ("unicode_escape", None),
        ("bad\x00name", None),
    ],
)
def test_lookup_charset(label: str, codec: str | None) -> None:
    assert lookup_charset(label) == codec


def test_decode_text() -> None:
    assert decode_text(b"caf\xc3\xa9", "us-ascii") == "café"  # mislabelled UTF-8
    assert decode_text(b"caf\xe9", "us-ascii") == "café"  # mislabelled windows-1252
    assert decode_text(b"caf\xe9 \x80", "iso-8859-1") == "café €"
    assert decode_text(b"\xff\xfe", "utf-8") == "\ufffd\ufffd"
    assert decode_text(b"\x82\xa0", "shift_jis") == "あ"
    # A codec that fails in its own way (UTF-16 without a BOM, incrementally) falls back.
    assert decode_text(b"ab", "utf-16", final=False) == "ab"


def test_decode_text_of_a_prefix_drops_a_cut_character() -> None:
    assert decode_text(b"caf\xc3", "utf-8", final=False) == "caf"
    assert decode_text(b"caf\xc3", "", final=False) == "caf"
    assert decode_text(b"caf\xe9", "", final=False) == "caf"  # could be cut UTF-8
    assert decode_text(b"caf\xe9!", "", final=False) == "café!"
    assert decode_text(b"caf\xc3", "", final=True) == "cafÃ"


@pytest.mark.parametrize(
    ("body", "encoding", "truncated", "expected"),
    [
        (b"aGVsbG8=", "base64", False, b"hello"),
        (b"aGVs\r\nbG8", "base64", False, b"hello"),  # line breaks, missing padding
        (b"aGVs*bG8=\r\n", "base64", False, b"hello"),  # junk ignored
        (b"aGVsbG8gd", "base64", True, b"hello "),  # partial quantum of a prefix dropped
        (b"aGVsbG8gd", "base64", False, b"hello "),  # a lone trailing character dropped
        (b"aGVsbG8gdw", "base64", False, b"hello w"),
        (b"Caf=C3=A9 =\r\nx", "quoted-printable", False, b"Caf\xc3\xa9 x"),
        (b"ab=C", "quoted-printable", True, b"ab"),
        (b"ab=", "quoted-printable", True, b"ab"),
        (b"ab=C3", "quoted-printable", True, b"ab\xc3"),
        (b"raw \xff", "8bit", False, b"raw \xff"),
        (b"raw", "x-uuencode", False, b"raw"),
    ],
)
def test_decode_transfer(body: bytes, encoding: str, truncated: bool, expected: bytes) -> None:
    assert decode_transfer(body, encoding, truncated=truncated) == expected


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Hello <b>world</b></p>", " Hello  world  "),
        ("a<!-- comment -->b", "ab"),
        ("a<!-- unterminated", "a"),
        ("<SCRIPT type=x>if (a<b) {}</script>after", " after"),
        ("<style>p{}", " "),
        ("<head><title>t</title></head>body", " body"),
        ("<title>unclosed title", " "),
        ("x <unclosed tag", "x "),
        ("<>empty", " empty"),
        ("Fish &amp; chips &eacute; &#x263A;", "Fish & chips é ☺"),
        ("<script>never closed", " "),
        ("<script>a</script", " "),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_html_to_text_is_linear_on_hostile_input() -> None:
    for hostile in ("<!--" * 50_000, "<" * 200_000, "<a" * 100_000, "<script>" * 30_000):
        started = time.perf_counter()
        html_to_text(hostile)
        assert time.perf_counter() - started < 2.0


def test_snippet_text() -> None:
    assert snippet_text(b"  a\r\n\tb  ", "7bit", "", is_html=False, limit=10) == "a b"
    assert snippet_text(b"<i>x</i> y", "7bit", "utf-8", is_html=True, limit=10) == "x y"
    assert snippet_text(b"abc def", "7bit", "", is_html=False, limit=4) == "abc"
    assert snippet_text(b"caf\xe9", "7bit", "", is_html=False, limit=9) == "café"
    cut = snippet_text(b"caf\xe9", "7bit", "", is_html=False, limit=9, truncated=True)
    assert cut == "caf"


@settings(deadline=None, max_examples=500)
@given(
    st.lists(
        st.one_of(
            st.text(st.sampled_from("ab\u00e9"), min_size=1, max_size=30),
            st.text(st.sampled_from(" \t\r\n"), min_size=1, max_size=700),
        ),
        max_size=200,
    ).map("".join),
    st.sampled_from([1, 5, 50, 200]),
)
def test_snippet_is_the_collapsed_whole_text(text: str, limit: int) -> None:
    # Only prefixes of the text are split when that is enough: the answer must be the same
    # as collapsing the whole text (long runs of white space make the prefixes fall short).
    expected = " ".join(text.split())[:limit].rstrip()
    assert snippet_text(text.encode(), "8bit", "utf-8", is_html=False, limit=limit) == expected


@settings(deadline=None, max_examples=300)
@given(
    st.binary(max_size=200),
    st.sampled_from(["base64", "quoted-printable", "7bit", "binary"]),
    st.sampled_from(["utf-8", "", "iso-2022-jp", "utf-16", "utf-7", "big5", "nope"]),
    st.booleans(),
)
def test_decoding_never_raises(body: bytes, encoding: str, charset: str, is_html: bool) -> None:
    out = snippet_text(body, encoding, charset, is_html=is_html, limit=50)
    assert len(out) <= 50
