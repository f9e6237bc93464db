"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.imap.mutf7 import MUTF7Error, decode, encode

EXAMPLES = [
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("INBOX", "INBOX"),
    ("", ""),
    ("Tom & Jerry", "Tom &- Jerry"),
    ("&&", "&-&-"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
    ("😀", "&2D3eAA-"),
    ("a\tb", "a&AAk-b"),
    ("\x7f", "&AH8-"),
    ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
]


@pytest.mark.parametrize(("text", "wire"), EXAMPLES)
def test_examples(text: str, wire: str) -> None:
    assert encode(text) == wire
    assert decode(wire) == text
    assert decode(wire.encode("ascii")) == text


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "&U,BTFw",  # unterminated
        "a&b",  # unterminated
        "&-&",
        "&U/BTFw-",  # "/" is not in modified BASE64
        "&U=-",  # padding is not used
        "&A-",  # impossible length
        "&AGE-",  # "a" must represent itself
        "&ACY-",  # "&" must be written "&-"
        "&AP-",  # non-zero padding bits (canonical is &APw-... )
        "&APx-",  # non-zero padding bits
        "&AA-",  # one octet of UTF-16
        "&2D0-",  # lone high surrogate
        "&3gA-",  # lone low surrogate
        "a\tb",  # raw control character
        "caf\u00e9",  # raw non-ASCII
    ],
)
def test_invalid(wire: str) -> None:
    with pytest.raises(MUTF7Error):
        decode(wire)


def test_invalid_bytes() -> None:
    with pytest.raises(MUTF7Error):
        decode(b"caf\xc3\xa9")


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(MUTF7Error):
        encode("a\ud800b")


def test_adjacent_shifts_are_accepted() -> None:
    assert decode("&U,A-&U,A-") == "台台"


names = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(deadline=None)
@given(names)
def test_round_trip(name: str) -> None:
    wire = encode(name)
    assert wire.isascii()
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode(wire) == name


@settings(deadline=None)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
def test_decode_never_crashes_and_is_canonical(wire: str) -> None:
    try:
        name = decode(wire)
    except MUTF7Error:
        return
    # Only adjacent shifted runs may differ from the canonical encoding.
    assert decode(encode(name)) == name
    if "-&" not in wire:
        assert encode(name) == wire
