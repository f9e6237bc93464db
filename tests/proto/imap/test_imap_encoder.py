"""Response encoding: quoting choices, status responses, codes, untagged data."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.imap import capabilities, encoder
from letterbird.proto.imap.codes import ResponseCode
from letterbird.proto.imap.grammar import Scanner


def test_quoting_choices() -> None:
    assert encoder.astring("INBOX") == b"INBOX"
    assert encoder.astring("a]b") == b"a]b"
    assert encoder.astring("") == b'""'
    assert encoder.astring("two words") == b'"two words"'
    assert encoder.astring("nil") == b'"nil"'
    assert encoder.astring("NIL") == b'"NIL"'
    assert encoder.astring("a%b") == b'"a%b"'
    assert encoder.astring("a*") == b'"a*"'
    assert encoder.astring('say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'
    assert encoder.astring("(x)") == b'"(x)"'
    assert encoder.astring("{3}") == b'"{3}"'
    assert encoder.astring("line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert encoder.astring("nul\x00") == b"{4}\r\nnul\x00"
    assert encoder.astring("café") == b"{5}\r\ncaf\xc3\xa9"
    assert encoder.astring("café", utf8=True) == b'"caf\xc3\xa9"'
    long = "x" * (encoder.QUOTED_MAX + 1)
    assert encoder.string(long) == b"{1025}\r\n" + long.encode()
    assert encoder.string("x" * encoder.QUOTED_MAX).startswith(b'"')
    assert encoder.string(b"a\\b") == b'"a\\\\b"'
    assert encoder.string("plain") == b'"plain"'
    assert encoder.nstring(None) == b"NIL"
    assert encoder.nstring(b"") == b'""'
    assert encoder.nstring("x\ny") == b"{3}\r\nx\ny"
    assert encoder.literal(b"abc") == b"{3}\r\nabc"
    assert encoder.literal("ä") == b"{2}\r\n\xc3\xa4"
    assert encoder.quoted('a"b') == b'"a\\"b"'
    assert encoder.quoted("é", utf8=True) == b'"\xc3\xa9"'
    with pytest.raises(ValueError):
        encoder.quoted("a\r\nb")
    with pytest.raises(ValueError):
        encoder.quoted("é")


@settings(deadline=None)
@given(st.binary(max_size=60))
def test_encoded_strings_parse_back(value: bytes) -> None:
    for encoded in (encoder.astring(value), encoder.string(value), encoder.nstring(value)):
        if encoded.startswith(b"{"):
            header, _, body = encoded.partition(b"\r\n")
            assert int(header[1:-1]) == len(body) and body == value
            continue
        s = Scanner([encoded], [])
        assert s.astring() == value
        assert s.at_end()


def test_mailbox_names() -> None:
    assert encoder.mailbox("INBOX") == b"INBOX"
    assert encoder.mailbox("台北") == b"&U,BTFw-"
    assert encoder.mailbox("Tom & Jerry") == b'"Tom &- Jerry"'
    assert encoder.mailbox("Entwürfe", utf8=True) == b'"Entw\xc3\xbcrfe"'
    assert encoder.mailbox("Sent") == b"Sent"


def test_internaldate() -> None:
    tz = timezone(-timedelta(hours=7))
    assert encoder.internaldate(datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz)) == (
        b'"17-Jul-1996 02:44:25 -0700"'
    )
    assert encoder.internaldate(datetime(2024, 1, 5, 23, 0, 9)) == b'" 5-Jan-2024 23:00:09 +0000"'
    tz2 = timezone(timedelta(hours=5, minutes=30))
    assert encoder.internaldate(datetime(2024, 12, 31, 0, 0, 0, tzinfo=tz2)) == (
        b'"31-Dec-2024 00:00:00 +0530"'
    )
    tz3 = timezone(-timedelta(minutes=30))
    assert encoder.internaldate(datetime(2024, 3, 1, tzinfo=tz3)).endswith(b' -0030"')


def test_internaldate_round_trips_through_the_parser() -> None:
    when = datetime(2001, 9, 9, 1, 46, 40, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))
    s = Scanner([encoder.internaldate(when)], [])
    assert s.date_time() == when


def test_status_responses() -> None:
    assert encoder.tagged("a1", encoder.OK, "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert (
        encoder.tagged("a2", encoder.OK, "SELECT completed", ResponseCode.READ_WRITE)
        == b"a2 OK [READ-WRITE] SELECT completed\r\n"
    )
    assert (
        encoder.tagged("a3", encoder.NO, "no such mailbox", ResponseCode.TRYCREATE)
        == b"a3 NO [TRYCREATE] no such mailbox\r\n"
    )
    assert encoder.untagged(encoder.BYE, "bye") == b"* BYE bye\r\n"
    assert encoder.untagged(encoder.PREAUTH, "hi") == b"* PREAUTH hi\r\n"
    assert (
        encoder.untagged(encoder.OK, "UIDs valid", ResponseCode.uidvalidity(3857529045))
        == b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
    )
    # text is sanitised: no CR/LF injection, not empty, no fake code
    assert encoder.tagged("a", encoder.BAD, "x\r\n* OK injected") == b"a BAD x  * OK injected\r\n"
    assert encoder.tagged("a", encoder.OK, "") == b"a OK -\r\n"
    assert encoder.tagged("a", encoder.OK, "[ALERT] x") == b"a OK - [ALERT] x\r\n"
    assert encoder.tagged("a", encoder.OK, "héllo") == b"a OK h?llo\r\n"
    assert encoder.continuation() == encoder.CONTINUE_LITERAL == b"+ Ready for literal data\r\n"
    assert encoder.continuation("idling") == b"+ idling\r\n"
    assert encoder.continuation_base64(b"Username:") == b"+ VXNlcm5hbWU6\r\n"
    assert encoder.continuation_base64(b"") == b"+ \r\n"


def test_response_codes() -> None:
    cases = [
        (ResponseCode.READ_ONLY, b"[READ-ONLY]"),
        (ResponseCode.ALREADYEXISTS, b"[ALREADYEXISTS]"),
        (ResponseCode.NONEXISTENT, b"[NONEXISTENT]"),
        (ResponseCode.AUTHENTICATIONFAILED, b"[AUTHENTICATIONFAILED]"),
        (ResponseCode.TOOBIG, b"[TOOBIG]"),
        (ResponseCode.CANNOT, b"[CANNOT]"),
        (ResponseCode.CLIENTBUG, b"[CLIENTBUG]"),
        (ResponseCode.uidnext(4392), b"[UIDNEXT 4392]"),
        (ResponseCode.unseen(12), b"[UNSEEN 12]"),
        (ResponseCode.highestmodseq(715194045007), b"[HIGHESTMODSEQ 715194045007]"),
        (
            ResponseCode.permanentflags(["\\Deleted", "\\Seen", "\\*"]),
            b"[PERMANENTFLAGS (\\Deleted \\Seen \\*)]",
        ),
        (ResponseCode.permanentflags([]), b"[PERMANENTFLAGS ()]"),
        (ResponseCode.badcharset(), b"[BADCHARSET (UTF-8 US-ASCII)]"),
        (ResponseCode.capability(["IMAP4rev1", "IDLE"]), b"[CAPABILITY IMAP4rev1 IDLE]"),
        (ResponseCode.appenduid(38505, 3955), b"[APPENDUID 38505 3955]"),
        (ResponseCode.appenduid(38505, [1, 2, 3, 7]), b"[APPENDUID 38505 1:3,7]"),
        (
            ResponseCode.copyuid(38505, [304, 319, 320, 321], [3956, 3957, 3958, 3959]),
            b"[COPYUID 38505 304,319:321 3956:3959]",
        ),
        (ResponseCode.modified([7, 9, 10, 11]), b"[MODIFIED 7,9:11]"),
    ]
    for code, wire in cases:
        assert code.encode() == wire


def test_untagged_data() -> None:
    assert encoder.data(b"OK", b"x") == b"* OK x\r\n"
    assert encoder.capability(["IMAP4rev1", capabilities.auth("plain")]) == (
        b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"
    )
    assert encoder.exists(23) == b"* 23 EXISTS\r\n"
    assert encoder.recent(0) == b"* 0 RECENT\r\n"
    assert encoder.expunge(3) == b"* 3 EXPUNGE\r\n"
    assert encoder.flags(["\\Seen", "$Label"]) == b"* FLAGS (\\Seen $Label)\r\n"
    assert encoder.flag_list([]) == b"()"
    assert encoder.plist([b"a", b"(b)"]) == b"(a (b))"
    assert encoder.search([2, 3, 6]) == b"* SEARCH 2 3 6\r\n"
    assert encoder.search([]) == b"* SEARCH\r\n"
    assert encoder.search([1], modseq=917162500) == b"* SEARCH 1 (MODSEQ 917162500)\r\n"
    assert encoder.fetch(12, [b"FLAGS (\\Seen)", b"UID 4827313"]) == (
        b"* 12 FETCH (FLAGS (\\Seen) UID 4827313)\r\n"
    )
    assert encoder.list_data(["\\Noselect"], "/", "~/Mail/foo") == (
        b'* LIST (\\Noselect) "/" ~/Mail/foo\r\n'
    )
    assert encoder.list_data([], None, "") == b'* LIST () NIL ""\r\n'
    assert encoder.list_data(["\\HasNoChildren"], ".", "INBOX", command=b"LSUB") == (
        b'* LSUB (\\HasNoChildren) "." INBOX\r\n'
    )
    assert encoder.list_data([], "\\", "a b", extended=[b'CHILDINFO ("SUBSCRIBED")']) == (
        b'* LIST () "\\\\" "a b" (CHILDINFO ("SUBSCRIBED"))\r\n'
    )
    assert encoder.status("blurdybloop", [("MESSAGES", 231), ("UIDNEXT", 44292)]) == (
        b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n"
    )
    assert encoder.enabled(["CONDSTORE"]) == b"* ENABLED CONDSTORE\r\n"
    assert encoder.enabled([]) == b"* ENABLED\r\n"
    assert encoder.vanished([41, 43, 44, 45]) == b"* VANISHED 41,43:45\r\n"
    assert encoder.vanished([1], earlier=True) == b"* VANISHED (EARLIER) 1\r\n"
    assert encoder.uid_set([3, 4, 5, 9]) == b"3:5,9"
    assert encoder.id_data(None) == b"* ID NIL\r\n"
    assert encoder.id_data({}) == b"* ID NIL\r\n"
    assert encoder.id_data({"name": "Letterbird", "os": None}) == (
        b'* ID ("name" "Letterbird" "os" NIL)\r\n'
    )
    assert encoder.namespace([("", "/")]) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert encoder.namespace([("", None)], [], [("#shared/", "/"), ("台", "/")]) == (
        b'* NAMESPACE (("" NIL)) NIL (("#shared/" "/")("&U,A-" "/"))\r\n'
    )


def test_capability_constants() -> None:
    assert capabilities.IMAP4REV1 == "IMAP4rev1"
    assert capabilities.auth("login") == capabilities.AUTH_LOGIN
    assert capabilities.LITERAL_PLUS in capabilities.PARSED
    assert capabilities.STARTTLS not in capabilities.PARSED


def test_fetch_of_100k_messages_is_fast() -> None:
    flags = encoder.flag_list(["\\Seen", "\\Answered"])
    when = datetime(2024, 1, 5, 23, 0, 9, tzinfo=UTC)
    start = time.perf_counter()
    out = b"".join(
        encoder.fetch(
            i,
            [
                b"UID %d" % i,
                b"FLAGS " + flags,
                b"INTERNALDATE " + encoder.internaldate(when),
                b"RFC822.SIZE %d" % (i * 10),
                b"BODY[HEADER.FIELDS (SUBJECT)] " + encoder.string("Subject: hello\r\n\r\n"),
            ],
        )
        for i in range(1, 100_001)
    )
    elapsed = time.perf_counter() - start
    assert out.count(b"\r\n") == 400_000  # literal header + 2 lines of body + end
    assert elapsed < 5  # generous: it takes well under a second; catches quadratic blow-ups
