"""SEARCH program parsing."""

from __future__ import annotations

from datetime import date

import pytest

from letterbird.proto.imap.parser import (
    NEED_DATA,
    Command,
    CommandError,
    CommandReader,
    ContinuationNeeded,
)
from letterbird.proto.imap.search import (
    All,
    And,
    BodyKey,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    Not,
    Or,
    SearchArgs,
    SearchKey,
    SeqSetKey,
    SizeKey,
    TextKey,
    UidKey,
)
from letterbird.proto.imap.seqset import SequenceSet


def events(data: bytes, **limits: int) -> list[object]:
    reader = CommandReader(**limits)
    reader.receive_data(data)
    out: list[object] = []
    while (e := reader.next_event()) is not NEED_DATA:
        out.append(e)
    return out


def search(program: bytes, **limits: int) -> SearchArgs:
    evs = [e for e in events(b"t SEARCH " + program + b"\r\n", **limits)]
    evs = [e for e in evs if not isinstance(e, ContinuationNeeded)]
    assert len(evs) == 1 and isinstance(evs[0], Command), evs
    assert isinstance(evs[0].args, SearchArgs)
    return evs[0].args


def key(program: bytes) -> SearchKey:
    return search(program).key


def bad(program: bytes, **limits: int) -> CommandError:
    evs = [e for e in events(b"t SEARCH " + program + b"\r\n", **limits)]
    evs = [e for e in evs if not isinstance(e, ContinuationNeeded)]
    assert len(evs) == 1 and isinstance(evs[0], CommandError), evs
    assert evs[0].tag == "t"
    return evs[0]


SIMPLE: list[tuple[bytes, SearchKey]] = [
    (b"ALL", All()),
    (b"all", All()),
    (b"ANSWERED", FlagKey("\\Answered")),
    (b"DELETED", FlagKey("\\Deleted")),
    (b"DRAFT", FlagKey("\\Draft")),
    (b"FLAGGED", FlagKey("\\Flagged")),
    (b"RECENT", FlagKey("\\Recent")),
    (b"SEEN", FlagKey("\\Seen")),
    (b"UNANSWERED", FlagKey("\\Answered", False)),
    (b"UNDELETED", FlagKey("\\Deleted", False)),
    (b"UNDRAFT", FlagKey("\\Draft", False)),
    (b"UNFLAGGED", FlagKey("\\Flagged", False)),
    (b"UNSEEN", FlagKey("\\Seen", False)),
    (b"OLD", FlagKey("\\Recent", False)),
    (b"NEW", And((FlagKey("\\Recent"), FlagKey("\\Seen", False)))),
    (b"KEYWORD $Forwarded", FlagKey("$Forwarded")),
    (b"UNKEYWORD $Junk", FlagKey("$Junk", False)),
    (b"BCC joe", HeaderKey("Bcc", "joe")),
    (b"CC joe", HeaderKey("Cc", "joe")),
    (b'FROM "Smith, J"', HeaderKey("From", "Smith, J")),
    (b"SUBJECT {5+}\r\nhi\r\nx", HeaderKey("Subject", "hi\r\nx")),
    (b"TO x@example.org", HeaderKey("To", "x@example.org")),
    (b'HEADER Message-ID "<a@b>"', HeaderKey("Message-ID", "<a@b>")),
    (b'HEADER X-Spam ""', HeaderKey("X-Spam", "")),
    (b"BODY b\xc3\xa4r", BodyKey("bär")),
    (b'TEXT "caf\xc3\xa9"', TextKey("café")),
    (b"BEFORE 1-Feb-1994", DateKey("internal", "before", date(1994, 2, 1))),
    (b'ON "01-feb-1994"', DateKey("internal", "on", date(1994, 2, 1))),
    (b"SINCE 29-Feb-2000", DateKey("internal", "since", date(2000, 2, 29))),
    (b"SENTBEFORE 1-Dec-2023", DateKey("sent", "before", date(2023, 12, 1))),
    (b"SENTON 31-Jan-2023", DateKey("sent", "on", date(2023, 1, 31))),
    (b"SENTSINCE 1-Jul-2023", DateKey("sent", "since", date(2023, 7, 1))),
    (b"LARGER 1024", SizeKey("larger", 1024)),
    (b"SMALLER 0", SizeKey("smaller", 0)),
    (b"UID 1:*", UidKey(SequenceSet.parse("1:*"))),
    (b"1:3,5", SeqSetKey(SequenceSet.parse("1:3,5"))),
    (b"*", SeqSetKey(SequenceSet.parse("*"))),
    (b"NOT SEEN", Not(FlagKey("\\Seen"))),
    (b"OR SEEN FLAGGED", Or(FlagKey("\\Seen"), FlagKey("\\Flagged"))),
    (b"(SEEN)", FlagKey("\\Seen")),
    (b"(SEEN FLAGGED)", And((FlagKey("\\Seen"), FlagKey("\\Flagged")))),
    (b"MODSEQ 620162338", ModSeqKey(620162338)),
    (
        b'MODSEQ "/flags/\\\\draft" all 620162338',
        ModSeqKey(620162338, "/flags/\\\\draft", "all"),
    ),
]


@pytest.mark.parametrize(("program", "expected"), SIMPLE, ids=lambda v: repr(v)[:40])
def test_every_key(program: bytes, expected: SearchKey) -> None:
    assert key(program) == expected


def test_nested_or_not_and_parentheses() -> None:
    got = key(b"OR (FROM a NOT TO b) OR NOT (SEEN 1:2) UID 5 NOT NOT DELETED")
    assert got == And(
        (
            Or(
                And((HeaderKey("From", "a"), Not(HeaderKey("To", "b")))),
                Or(
                    Not(And((FlagKey("\\Seen"), SeqSetKey(SequenceSet.parse("1:2"))))),
                    UidKey(SequenceSet.parse("5")),
                ),
            ),
            Not(Not(FlagKey("\\Deleted"))),
        )
    )


def test_several_keys_are_anded() -> None:
    assert key(b"FLAGGED SINCE 1-Feb-1994 NOT FROM Smith") == And(
        (
            FlagKey("\\Flagged"),
            DateKey("internal", "since", date(1994, 2, 1)),
            Not(HeaderKey("From", "Smith")),
        )
    )


def test_charset() -> None:
    args = search(b"CHARSET utf-8 TEXT {7}\r\nXXXXX\xc3\xa4")
    assert args.charset == "UTF-8"
    assert args.key == TextKey("XXXXXä")
    assert search(b"CHARSET US-ASCII TEXT abc").charset == "US-ASCII"
    assert search(b"TEXT abc").charset is None
    err = bad(b"CHARSET US-ASCII TEXT \xc3\xa4")
    assert err.status == b"BAD"
    err = bad(b'CHARSET "KOI8-R" TEXT x')
    assert err.status == b"NO"
    assert err.reply().startswith(b"t NO [BADCHARSET (UTF-8 US-ASCII)] ")


def test_return_options() -> None:
    args = search(b"RETURN (MIN MAX COUNT) UNSEEN")
    assert args.return_options == ("MIN", "MAX", "COUNT")
    assert search(b"RETURN () ALL").return_options == ()
    assert search(b"RETURN (all save) CHARSET UTF-8 ALL").return_options == ("ALL", "SAVE")


def test_depth_limit() -> None:
    assert key(b"NOT " * 10 + b"SEEN") is not None
    err = bad(b"NOT " * 2000 + b"SEEN")
    assert "deeply" in err.message
    err = bad(b"(" * 2000 + b"SEEN" + b")" * 2000)
    assert "deeply" in err.message
    err = bad(b"OR " * 2000 + b"SEEN" + b" SEEN" * 2000)
    assert "deeply" in err.message
    assert isinstance(bad(b"NOT NOT SEEN", max_search_depth=2), CommandError)


@pytest.mark.parametrize(
    "program",
    [
        b"FOO",
        b"FOO x",
        b"SEEN ",
        b"()",
        b"(SEEN",
        b"(SEEN))",
        b"NOT",
        b"OR SEEN",
        b"FROM",
        b"FROM\xff",
        b'FROM "\xff"',
        b"FROM {1+}\r\n\x00",
        b"BEFORE 1-Foo-1994",
        b"BEFORE 30-Feb-1994",
        b"BEFORE 1994-02-01",
        b'BEFORE "1-Feb-1994',
        b"LARGER x",
        b"LARGER 4294967296",
        b"SMALLER -1",
        b"UID x",
        b"UID 0",
        b"0",
        b"1:4294967296",
        b"KEYWORD \\Seen",
        b"KEYWORD",
        b"HEADER Subject",
        b"MODSEQ x",
        b"MODSEQ 9223372036854775808",
        b'MODSEQ "/other/x" all 1',
        b'MODSEQ "/flags/x" any 1',
        b'MODSEQ "/flags/x" all',
        b"RETURN (FOO) ALL",
        b"RETURN (MIN ALL",
        b"RETURN ALL",
        b"CHARSET",
        b"CHARSET UTF-8",
        b"RETURN (MIN)",
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_programs(program: bytes) -> None:
    assert bad(program).status == b"BAD"
