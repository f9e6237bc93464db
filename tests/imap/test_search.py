"""SEARCH evaluation (letterbird.imap.search) against sample messages.

The expected results of the program table were recorded from Dovecot 2.3.19.1 (a private
instance serving the same four messages) and are checked here without Dovecot.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fetch import EMPTY_BODY, MESSAGES, NESTED, NO_BODY, SIMPLE

from letterbird.imap.search import SearchMessage, blob_range, matches, needs
from letterbird.mime import MessageInfo, parse_message
from letterbird.proto.imap.grammar import Scanner
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
    SearchKey,
    SeqSetKey,
    SizeKey,
    TextKey,
    UidKey,
    parse_search,
)
from letterbird.proto.imap.seqset import SequenceSet

INFOS = {n: parse_message(data) for n, data in MESSAGES.items()}
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC).timestamp()


def key_of(program: str | bytes, literals: tuple[bytes, ...] = ()) -> SearchKey:
    """Parse ``SEARCH`` arguments as the command parser would (``{n+}`` literals given apart)."""
    raw = program.encode() if isinstance(program, str) else program
    lines = raw.split(b"\x00")
    return parse_search(Scanner([b" " + lines[0], *lines[1:]], list(literals))).key


def message(
    n: int,
    *,
    flags: frozenset[str] = frozenset(),
    internaldate: float = NOW,
    recent: bool = False,
    modseq: int = 1,
    info: bool = True,
) -> SearchMessage:
    return SearchMessage(
        seq=n,
        uid=10 * n,
        flags=flags,
        internaldate=internaldate,
        size=len(MESSAGES[n]),
        modseq=modseq,
        recent=recent,
        info=INFOS[n] if info else None,
    )


def hits_as_session(key: SearchKey) -> list[int]:
    """Evaluate like the session: structure and bytes only as needs()/blob_range() say."""
    structure, needs_bytes = needs(key)
    out = []
    for n, data in MESSAGES.items():
        blob = None
        if needs_bytes:
            start, end = blob_range(key, INFOS[n])
            assert start == 0
            blob = data[:end] if end is not None else data
        msg = message(n, info=structure)
        if matches(key, msg, blob=blob, largest_seq=4, largest_uid=40):
            out.append(n)
    return out


def hits_with_everything(key: SearchKey) -> list[int]:
    return [
        n
        for n, data in MESSAGES.items()
        if matches(key, message(n), blob=data, largest_seq=4, largest_uid=40)
    ]


# (program, literals, messages) — recorded from Dovecot 2.3.19.1; "\0" separates the lines
# around a literal.
PROGRAMS: list[tuple[str, tuple[bytes, ...], list[int]]] = [
    ("SENTBEFORE 1-Jan-2000", (), [2, 3, 4]),  # no Date field: 1 January 1970
    ("SENTSINCE 1-Jan-2000", (), [1]),
    ("SENTON 7-Feb-1994", (), [2]),  # the date as written (-0800), not in UTC
    ("SENTON 8-Feb-1994", (), []),
    ("SENTBEFORE 8-Feb-1994", (), [2, 3, 4]),
    ("SENTSINCE 7-Feb-1994", (), [1, 2]),
    ("FROM juergen", (), [2]),
    ("CHARSET UTF-8 FROM \0", ("Jürgen".encode(),), [2]),
    ("CHARSET UTF-8 SUBJECT \0", ("GRÜßE".encode(),), [2]),
    ("CHARSET UTF-8 BODY \0", ("SCHÖNE".encode(),), [2]),  # latin-1 quoted-printable
    ("CHARSET UTF-8 BODY \0", ("über".encode(),), [2]),  # UTF-8 base64 HTML
    ('FROM "Bob"', (), []),
    ('TO "Bob <bob"', (), [2]),
    ('TO "bob@example.test, carol"', (), []),
    ('SUBJECT "gr"', (), [2]),
    ('BODY "needle"', (), [2]),
    ('BODY "haystack"', (), [2]),  # a text part of an attached message
    ('TEXT "inner subject"', (), [2]),  # an attached message's header
    ('BODY "inner subject"', (), []),
    ('HEADER X-Custom ""', (), [2]),
    ('HEADER X-Folded "one two"', (), [2]),  # unfolded
    ('HEADER X-Folded "one  two"', (), []),
    ('BODY "preamble"', (), []),
    ('BODY "iVBOR"', (), []),  # not a text part
    ('BODY "world"', (), [2]),
    ('TEXT "mime-version"', (), [2]),
    ('BODY "Content-Type"', (), []),  # MIME headers are not body text
    ('HEADER Sender ""', (), []),  # the envelope's Sender defaults to From; the field is absent
    ('BODY "<b>"', (), [2]),  # HTML source
    ('FROM "a@b.test"', (), [3, 4]),
    ('HEADER SUBJECT ""', (), [1, 2, 3, 4]),
    ('BODY ""', (), [1, 2, 3, 4]),
    ('TEXT ""', (), [1, 2, 3, 4]),
    ('FROM ""', (), [1, 2, 3, 4]),
    ('CC ""', (), [2]),
    ('BCC ""', (), []),
    ('BODY "AAECAw"', (), []),
    ('TEXT "nested@example"', (), [2]),
    ('TEXT "content-type: image"', (), [2]),  # part headers belong to TEXT
    ('BODY "epilogue"', (), []),
    ('TEXT "epilogue"', (), []),
    ('TEXT "preamble"', (), []),
    ('TEXT "=?ISO"', (), []),  # decoded, not raw
    ('SUBJECT "=?ISO"', (), []),
    ('BODY "=F6"', (), []),
    ('HEADER Message-ID "nested"', (), [2]),
    ('HEADER DATE "1994"', (), [2]),
    ('HEADER Date ""', (), [1, 2]),
    ('HEADER In-Reply-To ""', (), []),
    ('OR FROM eve SUBJECT "message 1"', (), [1]),
    ("NOT SUBJECT body", (), [1, 2]),
    ('TEXT "single part inner"', (), [2]),
    ('TEXT "frank"', (), [2]),
    ('FROM "frank"', (), []),  # only the outer message's From
    ("2:* NOT 4", (), [2, 3]),
    ("UID 30:*", (), [3, 4]),
    ("UID *", (), [4]),
    ("*", (), [4]),
    ("LARGER 40", (), [1, 2]),
    ("SMALLER 40", (), [3, 4]),
    ("LARGER 39", (), [1, 2]),
    ("SMALLER 39", (), [3]),
    ('SUBJECT "body" NOT SUBJECT "no"', (), [4]),
    ('TEXT "Alice <alice"', (), [1, 2]),
    ('HEADER FROM "Alice <alice"', (), [1]),
    ('HEADER TO "bob@example.test"', (), [1, 2]),
    ('TO "Alice"', (), []),
]


@pytest.mark.parametrize(("program", "literals", "expected"), PROGRAMS)
def test_programs_match_dovecot(
    program: str, literals: tuple[bytes, ...], expected: list[int]
) -> None:
    key = key_of(program, literals)
    assert hits_as_session(key) == expected
    assert hits_with_everything(key) == expected


def test_needs() -> None:
    assert needs(key_of("ALL")) == (False, False)
    assert needs(key_of("SEEN UNKEYWORD $x 1:3 UID 5 LARGER 3 SINCE 1-Jan-2020")) == (
        False,
        False,
    )
    assert needs(key_of("MODSEQ 5")) == (False, False)
    for envelope_field in ("FROM a", "TO a", "CC a", "BCC a", "SUBJECT a"):
        assert needs(key_of(envelope_field)) == (True, False)
    assert needs(key_of('HEADER Message-ID "x"')) == (True, False)
    assert needs(key_of('HEADER in-reply-to "x"')) == (True, False)
    assert needs(key_of("SENTON 1-Jan-2020")) == (True, False)
    assert needs(key_of('HEADER Sender "x"')) == (True, True)
    assert needs(key_of('HEADER X-Spam ""')) == (True, True)
    assert needs(key_of("BODY x")) == (True, True)
    assert needs(key_of("TEXT x")) == (True, True)
    assert needs(key_of("OR SEEN NOT (DELETED BODY x)")) == (True, True)


def test_blob_range() -> None:
    info = INFOS[2]
    assert blob_range(key_of("FROM x"), info) == (0, 0)
    assert blob_range(key_of("SEEN"), info) == (0, 0)
    assert blob_range(key_of('HEADER X-Custom ""'), info) == (0, info.body.body_start)
    assert blob_range(key_of('HEADER X-Custom ""'), None) == (0, None)
    assert blob_range(key_of('OR HEADER X-Custom "" BODY x'), info) == (0, None)
    assert blob_range(key_of("TEXT x"), info) == (0, None)


FLAGGED = frozenset({"\\Seen", "\\Answered", "$Forwarded", "Work"})


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("SEEN", True),
        ("UNSEEN", False),
        ("ANSWERED", True),
        ("UNANSWERED", False),
        ("DELETED", False),
        ("UNDELETED", True),
        ("DRAFT", False),
        ("UNDRAFT", True),
        ("FLAGGED", False),
        ("UNFLAGGED", True),
        ("KEYWORD $Forwarded", True),
        ("KEYWORD $forwarded", True),  # keywords compare case-insensitively
        ("KEYWORD WORK", True),
        ("KEYWORD $Junk", False),
        ("UNKEYWORD $Junk", True),
        ("UNKEYWORD work", False),
        ("RECENT", True),  # the session's \Recent, not the stored flags
        ("OLD", False),
        ("NEW", False),  # RECENT UNSEEN
        ("ALL", True),
    ],
)
def test_flags(program: str, expected: bool) -> None:
    msg = message(1, flags=FLAGGED, recent=True)
    assert matches(key_of(program), msg, blob=None, largest_seq=1, largest_uid=10) is expected


def test_new_and_old() -> None:
    key = key_of("NEW")
    unseen_recent = message(1, recent=True)
    assert matches(key, unseen_recent, blob=None, largest_seq=1, largest_uid=10)
    not_recent = message(1)
    assert not matches(key, not_recent, blob=None, largest_seq=1, largest_uid=10)
    assert matches(key_of("OLD"), not_recent, blob=None, largest_seq=1, largest_uid=10)
    assert not matches(key_of("RECENT"), not_recent, blob=None, largest_seq=1, largest_uid=10)


def _internal(day: str, when: float) -> list[str]:
    out = []
    for op in ("BEFORE", "ON", "SINCE"):
        if matches(
            key_of(f"{op} {day}"),
            message(1, internaldate=when),
            blob=None,
            largest_seq=1,
            largest_uid=10,
        ):
            out.append(op)
    return out


def test_internal_dates_compare_the_utc_date() -> None:
    last_second = datetime(2026, 2, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    midnight = datetime(2026, 2, 2, tzinfo=UTC).timestamp()
    assert _internal("1-Feb-2026", last_second) == ["ON", "SINCE"]
    assert _internal("2-Feb-2026", last_second) == ["BEFORE"]
    assert _internal("2-Feb-2026", midnight) == ["ON", "SINCE"]
    assert _internal("1-Feb-2026", midnight) == ["SINCE"]
    assert _internal("3-Feb-2026", midnight + 0.5) == ["BEFORE"]
    before_epoch = datetime(1969, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    assert _internal("31-Dec-1969", before_epoch) == ["ON", "SINCE"]
    assert _internal("1-Jan-1970", before_epoch) == ["BEFORE"]


def _sent_hits(data: bytes, program: str, *, with_info: bool) -> bool:
    msg = SearchMessage(1, 1, frozenset(), NOW, len(data), 1, False, None)
    if with_info:
        msg = SearchMessage(1, 1, frozenset(), NOW, len(data), 1, False, parse_message(data))
    return matches(key_of(program), msg, blob=data, largest_seq=1, largest_uid=1)


@pytest.mark.parametrize("with_info", [True, False])
@pytest.mark.parametrize(
    ("date_field", "program", "expected"),
    [
        ("Mon, 7 Feb 1994 21:52:25 -0800", "SENTON 7-Feb-1994", True),
        ("Mon, 7 Feb 1994 21:52:25 -0800", "SENTBEFORE 7-Feb-1994", False),
        ("Mon, 7 Feb 1994 21:52:25 -0800", "SENTSINCE 7-Feb-1994", True),
        ("Mon, 7 Feb 1994 21:52:25 -0800", "SENTBEFORE 8-Feb-1994", True),
        ("7 Feb 1994 23:00 +1400 (comment)", "SENTON 7-Feb-1994", True),
        ("garbage", "SENTON 1-Jan-1970", True),  # unusable: 1 January 1970
        ("Thu, 31 Feb 2020 10:00:00 +0000", "SENTON 1-Jan-1970", True),  # no such day
        (None, "SENTON 1-Jan-1970", True),
        (None, "SENTSINCE 2-Jan-1970", False),
    ],
)
def test_sent_dates(date_field: str | None, program: str, expected: bool, with_info: bool) -> None:
    head = b"Subject: x\r\n" if date_field is None else f"Date: {date_field}\r\n".encode()
    data = head + b"\r\nbody\r\n"
    assert _sent_hits(data, program, with_info=with_info) is expected


def test_sent_date_without_bytes_or_structure_is_1970() -> None:
    msg = message(1, info=False)
    assert matches(key_of("SENTON 1-Jan-1970"), msg, blob=None, largest_seq=1, largest_uid=10)


def test_sizes() -> None:
    msg = message(1)  # 158 octets
    for program, expected in [
        ("LARGER 157", True),
        ("LARGER 158", False),
        ("SMALLER 159", True),
        ("SMALLER 158", False),
    ]:
        assert matches(key_of(program), msg, blob=None, largest_seq=1, largest_uid=10) is expected


def test_sequence_and_uid_sets() -> None:
    msg = message(3)  # seq 3, uid 30

    def hit(program: str, largest_seq: int = 5, largest_uid: int = 50) -> bool:
        return matches(
            key_of(program), msg, blob=None, largest_seq=largest_seq, largest_uid=largest_uid
        )

    assert hit("3")
    assert hit("1:2,3")
    assert hit("5:2")
    assert not hit("4:*")
    assert hit("*", largest_seq=3)
    assert hit("UID 30")
    assert hit("UID 25:35")
    assert not hit("UID 31:*")
    assert hit("UID 559:*", largest_uid=30)  # RFC 3501 §6.4.8: n:* includes the largest
    assert not hit("UID 1:29,31:40")


def test_modseq() -> None:
    msg = message(1, modseq=9)
    assert matches(ModSeqKey(9), msg, blob=None, largest_seq=1, largest_uid=10)
    assert not matches(ModSeqKey(10), msg, blob=None, largest_seq=1, largest_uid=10)
    assert matches(key_of("MODSEQ 3"), msg, blob=None, largest_seq=1, largest_uid=10)


def test_header_keys_from_the_envelope_agree_with_the_bytes() -> None:
    for n, data in MESSAGES.items():
        for name in ("From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "In-Reply-To"):
            for value in ("", "a", "bob", "Jürgen", "Grüße aus", "<", "example.test>", "1994"):
                key = HeaderKey(name, value)
                from_info = matches(key, message(n), blob=None, largest_seq=4, largest_uid=40)
                from_bytes = matches(key, message(n), blob=data, largest_seq=4, largest_uid=40)
                assert from_info is from_bytes, (n, name, value)


def test_missing_data_matches_nothing() -> None:
    bare = message(2, info=False)
    for key in (BodyKey("needle"), TextKey(""), HeaderKey("X-Custom", ""), HeaderKey("To", "")):
        assert not matches(key, bare, blob=None, largest_seq=4, largest_uid=40)
    # Structure without the bytes is not enough for BODY either.
    assert not matches(BodyKey(""), message(2), blob=None, largest_seq=4, largest_uid=40)
    # A header prefix is not the whole message: no structure can be parsed from it.
    prefix = NESTED[: INFOS[2].body.body_start]
    assert not matches(BodyKey(""), bare, blob=prefix, largest_seq=4, largest_uid=40)
    assert matches(HeaderKey("X-Custom", ""), bare, blob=prefix, largest_seq=4, largest_uid=40)


def test_structure_is_parsed_from_the_whole_message_when_not_cached() -> None:
    bare = message(2, info=False)
    assert matches(BodyKey("needle"), bare, blob=NESTED, largest_seq=4, largest_uid=40)
    assert matches(TextKey("inner subject"), bare, blob=NESTED, largest_seq=4, largest_uid=40)
    assert not matches(BodyKey("nope"), bare, blob=NESTED, largest_seq=4, largest_uid=40)


def test_header_fields_are_found_without_structure() -> None:
    msg = message(2, info=False)
    key = key_of('HEADER X-Folded "one two" FROM "Jürgen" SENTON 7-Feb-1994')
    assert matches(key, msg, blob=NESTED, largest_seq=4, largest_uid=40)
    assert matches(
        HeaderKey("From", ""), message(3, info=False), blob=NO_BODY, largest_seq=4, largest_uid=40
    )
    assert not matches(
        HeaderKey("To", ""), message(4, info=False), blob=EMPTY_BODY, largest_seq=4, largest_uid=40
    )


def test_every_occurrence_of_a_field_is_searched() -> None:
    data = b"Received: from a\r\nReceived: from b\r\nTo: x@y.test\r\nTo: Zed <z@y.test>\r\n\r\n"
    msg = SearchMessage(1, 1, frozenset(), NOW, len(data), 1, False, parse_message(data))
    for key in (HeaderKey("Received", "from b"), HeaderKey("TO", "zed <z@")):
        assert matches(key, msg, blob=data, largest_seq=1, largest_uid=1)


def test_text_of_other_parts() -> None:
    data = (
        b"Content-Type: multipart/report; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n"
        b"--r\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>world</b></p>\r\n"
        b"--r\r\nContent-Type: application/pdf\r\n\r\nsecret-pdf\r\n--r--\r\n"
    )
    msg = SearchMessage(1, 1, frozenset(), NOW, len(data), 1, False, parse_message(data))

    def hit(key: SearchKey) -> bool:
        return matches(key, msg, blob=data, largest_seq=1, largest_uid=1)

    assert hit(BodyKey("status: 5.1.1"))  # message/* leaves are text
    assert hit(BodyKey("Hello world"))  # HTML also without its tags
    assert hit(BodyKey("<b>world"))
    assert not hit(BodyKey("secret-pdf"))
    assert hit(TextKey("application/pdf"))


def test_and_tests_cheap_keys_first() -> None:
    # A body search after a failing flag test never needs the bytes.
    key = And((BodyKey("needle"), FlagKey("\\Seen")))
    msg = message(2, info=False)
    assert not matches(key, msg, blob=None, largest_seq=4, largest_uid=40)
    assert matches(
        key, message(2, flags=frozenset({"\\Seen"})), blob=NESTED, largest_seq=4, largest_uid=40
    )


def test_nested_keys() -> None:
    key = key_of("OR (SEEN FROM alice) NOT (OR 2 UID 40)")
    seen = frozenset({"\\Seen"})
    results = [
        matches(
            key,
            message(n, flags=seen if n == 2 else frozenset()),
            blob=None,
            largest_seq=4,
            largest_uid=40,
        )
        for n in MESSAGES
    ]
    assert results == [True, False, True, False]


# -- properties ----------------------------------------------------------------------------

_LEAVES: list[SearchKey] = [
    All(),
    FlagKey("\\Seen"),
    FlagKey("\\Flagged", False),
    FlagKey("\\Recent"),
    FlagKey("work"),
    HeaderKey("From", "alice"),
    HeaderKey("Subject", ""),
    HeaderKey("X-Custom", "first"),
    HeaderKey("Cc", ""),
    BodyKey("needle"),
    BodyKey("hello"),
    TextKey("inner"),
    TextKey("body"),
    DateKey("internal", "since", date(2026, 5, 1)),
    DateKey("sent", "before", date(2000, 1, 1)),
    SizeKey("larger", 100),
    SizeKey("smaller", 39),
    SeqSetKey(SequenceSet.parse("2:*")),
    UidKey(SequenceSet.parse("10,30")),
    ModSeqKey(2),
]


def _trees() -> st.SearchStrategy[SearchKey]:
    return st.recursive(
        st.sampled_from(_LEAVES),
        lambda children: st.one_of(
            children.map(Not),
            st.tuples(children, children).map(lambda lr: Or(*lr)),
            st.lists(children, min_size=2, max_size=3).map(lambda ks: And(tuple(ks))),
        ),
        max_leaves=8,
    )


def _reference(key: SearchKey, n: int, flags: frozenset[str]) -> bool:
    """A naive evaluator for the tree operators over single-key results."""
    if isinstance(key, Not):
        return not _reference(key.key, n, flags)
    if isinstance(key, Or):
        return _reference(key.left, n, flags) or _reference(key.right, n, flags)
    if isinstance(key, And):
        return all(_reference(k, n, flags) for k in key.keys)
    msg = message(n, flags=flags, recent=n % 2 == 0, modseq=n)
    return matches(key, msg, blob=MESSAGES[n], largest_seq=4, largest_uid=40)


_FLAG_SETS = [frozenset(), frozenset({"\\Seen", "Work"}), frozenset({"\\Flagged"})]


@settings(deadline=None, max_examples=200)
@given(_trees(), st.sampled_from([1, 2, 3, 4]), st.sampled_from(_FLAG_SETS))
def test_operators_follow_boolean_logic(key: SearchKey, n: int, flags: frozenset[str]) -> None:
    expected = _reference(key, n, flags)
    msg = message(n, flags=flags, recent=n % 2 == 0, modseq=n)
    assert matches(key, msg, blob=MESSAGES[n], largest_seq=4, largest_uid=40) is expected
    # What needs() and blob_range() ask for is enough.
    structure, needs_bytes = needs(key)
    blob = None
    if needs_bytes:
        _, end = blob_range(key, INFOS[n])
        blob = MESSAGES[n][:end] if end is not None else MESSAGES[n]
    lean = message(n, flags=flags, recent=n % 2 == 0, modseq=n, info=structure)
    assert matches(key, lean, blob=blob, largest_seq=4, largest_uid=40) is expected


@settings(deadline=None, max_examples=100)
@given(st.text(max_size=12), st.sampled_from([1, 2, 3, 4]))
def test_any_needle_is_evaluated_without_error(needle: str, n: int) -> None:
    for key in (
        BodyKey(needle),
        TextKey(needle),
        HeaderKey("Subject", needle),
        HeaderKey("X-" + needle.strip(), needle),
    ):
        matches(key, message(n), blob=MESSAGES[n], largest_seq=4, largest_uid=40)


def test_sample_info_round_trips_through_the_cache_format() -> None:
    # The session passes MessageInfo.from_json(record.structure): same results.
    key = key_of('OR BODY needle OR SENTON 7-Feb-1994 FROM "Jürgen"')
    cached = MessageInfo.from_json(INFOS[2].to_json())
    msg = SearchMessage(2, 20, frozenset(), NOW, len(NESTED), 1, False, cached)
    assert matches(key, msg, blob=NESTED, largest_seq=4, largest_uid=40)
    assert SIMPLE in MESSAGES.values()


def test_several_text_keys_share_the_decoded_text() -> None:
    key = key_of('TEXT "nope" OR TEXT "x-custom: first" TEXT "nothing"')
    assert matches(key, message(2), blob=NESTED, largest_seq=4, largest_uid=40) is False
    key = key_of('TEXT "mime-version" TEXT "x-custom: first" BODY "needle"')
    assert matches(key, message(2), blob=NESTED, largest_seq=4, largest_uid=40)


def test_multipart_without_parts() -> None:
    data = b"Subject: s\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\nno boundary here\r\n"
    msg = SearchMessage(1, 1, frozenset(), NOW, len(data), 1, False, parse_message(data))
    assert matches(TextKey("subject: s"), msg, blob=data, largest_seq=1, largest_uid=1)
    assert not matches(TextKey("no boundary"), msg, blob=data, largest_seq=1, largest_uid=1)
