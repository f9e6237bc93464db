"""FETCH attribute parsing and response labels."""

from __future__ import annotations

import pytest

from letterbird.proto.imap.fetchatt import MACROS, FetchAtt, Section
from letterbird.proto.imap.parser import (
    NEED_DATA,
    Command,
    CommandError,
    CommandReader,
    FetchArgs,
)


def fetch(atts: bytes) -> FetchArgs:
    reader = CommandReader()
    reader.receive_data(b"t FETCH 1 " + atts + b"\r\n")
    event = reader.next_event()
    assert reader.next_event() is NEED_DATA
    assert isinstance(event, Command), event
    assert isinstance(event.args, FetchArgs)
    return event.args


def att(text: bytes) -> FetchAtt:
    args = fetch(text)
    assert len(args.atts) == 1
    return args.atts[0]


@pytest.mark.parametrize("name", ["ALL", "FAST", "FULL"])
def test_macros(name: str) -> None:
    args = fetch(name.lower().encode())
    assert args.macro == name
    assert args.atts == MACROS[name]
    assert [a.name for a in MACROS["FULL"]] == [
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
    ],
)
def test_simple_atts(name: str) -> None:
    got = att(name.lower().encode())
    assert got == FetchAtt(name)
    assert got.label == name.encode()
    assert got.section is None


SECTIONS: list[tuple[bytes, FetchAtt, bytes]] = [
    (b"BODY[]", FetchAtt("BODY", Section()), b"BODY[]"),
    (b"body.peek[]", FetchAtt("BODY", Section(), peek=True), b"BODY[]"),
    (b"BODY[HEADER]", FetchAtt("BODY", Section((), "HEADER")), b"BODY[HEADER]"),
    (b"BODY[text]", FetchAtt("BODY", Section((), "TEXT")), b"BODY[TEXT]"),
    (b"BODY[1]", FetchAtt("BODY", Section((1,))), b"BODY[1]"),
    (b"BODY[1.2.3]", FetchAtt("BODY", Section((1, 2, 3))), b"BODY[1.2.3]"),
    (b"BODY[1.2.MIME]", FetchAtt("BODY", Section((1, 2), "MIME")), b"BODY[1.2.MIME]"),
    (b"BODY[4.2.HEADER]", FetchAtt("BODY", Section((4, 2), "HEADER")), b"BODY[4.2.HEADER]"),
    (b"BODY[3.TEXT]", FetchAtt("BODY", Section((3,), "TEXT")), b"BODY[3.TEXT]"),
    (
        b"BODY[HEADER.FIELDS (DATE FROM)]",
        FetchAtt("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM"))),
        b"BODY[HEADER.FIELDS (DATE FROM)]",
    ),
    (
        b'BODY.PEEK[header.fields.not ("X-Spam" {3+}\r\nA B)]',
        FetchAtt("BODY", Section((), "HEADER.FIELDS.NOT", ("X-Spam", "A B")), peek=True),
        b'BODY[HEADER.FIELDS.NOT (X-Spam "A B")]',
    ),
    (
        b"BODY[2.HEADER.FIELDS (Subject)]<0.100>",
        FetchAtt("BODY", Section((2,), "HEADER.FIELDS", ("Subject",)), partial=(0, 100)),
        b"BODY[2.HEADER.FIELDS (Subject)]<0>",
    ),
    (
        b"BODY.PEEK[]<4294967295.4294967295>",
        FetchAtt("BODY", Section(), True, (4294967295, 4294967295)),
        b"BODY[]<4294967295>",
    ),
]


@pytest.mark.parametrize(("text", "expected", "label"), SECTIONS, ids=lambda v: repr(v)[:40])
def test_sections(text: bytes, expected: FetchAtt, label: bytes) -> None:
    got = att(text)
    assert got == expected
    assert got.label == label


def test_list_of_atts() -> None:
    args = fetch(b"(FLAGS BODY.PEEK[HEADER] UID RFC822.SIZE)")
    assert [a.label for a in args.atts] == [b"FLAGS", b"BODY[HEADER]", b"UID", b"RFC822.SIZE"]
    assert args.macro is None


def test_sets_seen() -> None:
    assert att(b"BODY[]").sets_seen
    assert not att(b"BODY.PEEK[]").sets_seen
    assert att(b"RFC822").sets_seen
    assert att(b"RFC822.TEXT").sets_seen
    assert not att(b"RFC822.HEADER").sets_seen
    assert not att(b"BODY").sets_seen


@pytest.mark.parametrize(
    "text",
    [
        b"FOO",
        b"BODY.PEEK",
        b"BODY[",
        b"BODY[0]",
        b"BODY[1.]",
        b"BODY[1.0]",
        b"BODY[MIME]",
        b"BODY[FOO]",
        b"BODY[HEADER.FIELDS]",
        b"BODY[HEADER.FIELDS ()]",
        b"BODY[HEADER.FIELDS (A]",
        b'BODY[HEADER.FIELDS ("\xff")]',
        b"BODY[HEADER",
        b"BODY[4294967296]",
        b"BODY[]<0.0>",
        b"BODY[]<1>",
        b"BODY[]<99999999999.1>",
        b"BODY[]<1.4294967296>",
        b"(FLAGS",
        b"()",
        b"(FLAGS  UID)",
        b"ALL FLAGS",
        b"ALLX",
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_atts(text: bytes) -> None:
    reader = CommandReader()
    reader.receive_data(b"t FETCH 1 " + text + b"\r\n")
    event = reader.next_event()
    assert isinstance(event, CommandError), event
    assert event.tag == "t"
