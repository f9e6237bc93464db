"""Framing and command parsing of the sans-IO IMAP command reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from letterbird.proto.imap.fetchatt import FetchAtt, Section
from letterbird.proto.imap.parser import (
    NEED_DATA,
    AppendArgs,
    AuthenticateArgs,
    AuthenticateLine,
    Command,
    CommandError,
    CommandReader,
    ContinuationNeeded,
    CopyArgs,
    EnableArgs,
    Event,
    ExpungeArgs,
    FetchArgs,
    IdArgs,
    IdleDone,
    ListArgs,
    LiteralTooBig,
    LoginArgs,
    MailboxArgs,
    QResyncParams,
    RenameArgs,
    SelectArgs,
    StatusArgs,
    StoreArgs,
)
from letterbird.proto.imap.search import FlagKey, HeaderKey, SearchArgs
from letterbird.proto.imap.seqset import SequenceSet


def drain(reader: CommandReader) -> list[Event]:
    out: list[Event] = []
    while (event := reader.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def feed(data: bytes, reader: CommandReader | None = None, **limits: int) -> list[Event]:
    reader = reader or CommandReader(**limits)
    reader.receive_data(data)
    return drain(reader)


def one(data: bytes) -> Command:
    events = feed(data)
    assert len(events) == 1, events
    assert isinstance(events[0], Command), events
    return events[0]


def error(data: bytes) -> CommandError:
    events = [e for e in feed(data) if not isinstance(e, ContinuationNeeded)]
    assert len(events) == 1, events
    assert isinstance(events[0], CommandError), events
    return events[0]


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


# -- every command form --------------------------------------------------------------------------

COMMANDS: list[tuple[bytes, Command]] = [
    (b"a CAPABILITY", Command("a", "CAPABILITY")),
    (b"a capability", Command("a", "CAPABILITY")),
    (b"a NOOP", Command("a", "NOOP")),
    (b"a LOGOUT", Command("a", "LOGOUT")),
    (b"a STARTTLS", Command("a", "STARTTLS")),
    (b"a CHECK", Command("a", "CHECK")),
    (b"a CLOSE", Command("a", "CLOSE")),
    (b"a IDLE", Command("a", "IDLE")),
    (b"a NAMESPACE", Command("a", "NAMESPACE")),
    (b"a UNSELECT", Command("a", "UNSELECT")),
    (b"a EXPUNGE", Command("a", "EXPUNGE", ExpungeArgs())),
    (b"a UID EXPUNGE 3:5,7", Command("a", "EXPUNGE", ExpungeArgs(seq("3:5,7")), uid=True)),
    (b"a AUTHENTICATE plain", Command("a", "AUTHENTICATE", AuthenticateArgs("PLAIN"))),
    (
        b"a AUTHENTICATE PLAIN AGZvbwBiYXI=",
        Command("a", "AUTHENTICATE", AuthenticateArgs("PLAIN", "AGZvbwBiYXI=")),
    ),
    (b"a AUTHENTICATE PLAIN =", Command("a", "AUTHENTICATE", AuthenticateArgs("PLAIN", "="))),
    (b"a LOGIN fred secret", Command("a", "LOGIN", LoginArgs("fred", "secret"))),
    (
        b'a LOGIN "fred smith" "p\\"a\\\\ss"',
        Command("a", "LOGIN", LoginArgs("fred smith", 'p"a\\ss')),
    ),
    (b"a LOGIN {4+}\r\nfred {3+}\r\nx y", Command("a", "LOGIN", LoginArgs("fred", "x y"))),
    (b'a LOGIN "j\xc3\xbcrgen" pw', Command("a", "LOGIN", LoginArgs("jürgen", "pw"))),
    (b"a LOGIN user] pw", Command("a", "LOGIN", LoginArgs("user]", "pw"))),
    (b"a LOGIN x }", Command("a", "LOGIN", LoginArgs("x", "}"))),
    (b"a SELECT inbox", Command("a", "SELECT", SelectArgs("INBOX"))),
    (b'a SELECT "InBoX"', Command("a", "SELECT", SelectArgs("INBOX"))),
    (b"a EXAMINE Archive/2020", Command("a", "EXAMINE", SelectArgs("Archive/2020"))),
    (b"a SELECT INBOX.sub", Command("a", "SELECT", SelectArgs("INBOX.sub"))),
    (
        b"a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-",
        Command("a", "SELECT", SelectArgs("~peter/mail/台北/日本語")),
    ),
    (b'a SELECT "Entw\xc3\xbcrfe"', Command("a", "SELECT", SelectArgs("Entwürfe"))),
    (b"a SELECT Entw\xc3\xbcrfe", Command("a", "SELECT", SelectArgs("Entwürfe"))),
    (b'a SELECT "Tom &- Jerry"', Command("a", "SELECT", SelectArgs("Tom & Jerry"))),
    (b"a SELECT x (CONDSTORE)", Command("a", "SELECT", SelectArgs("x", condstore=True))),
    (
        b"a SELECT x (QRESYNC (67890007 90060115194045000))",
        Command("a", "SELECT", SelectArgs("x", qresync=QResyncParams(67890007, 90060115194045000))),
    ),
    (
        b"a EXAMINE x (CONDSTORE QRESYNC (1 2 41,43:211 (1,3 41,43)))",
        Command(
            "a",
            "EXAMINE",
            SelectArgs(
                "x",
                True,
                QResyncParams(1, 2, seq("41,43:211"), seq("1,3"), seq("41,43")),
            ),
        ),
    ),
    (
        b"a SELECT x (QRESYNC (1 2 41,43:211))",
        Command("a", "SELECT", SelectArgs("x", qresync=QResyncParams(1, 2, seq("41,43:211")))),
    ),
    (
        b"a SELECT x (QRESYNC (1 2 (1:3 5:7)))",
        Command(
            "a",
            "SELECT",
            SelectArgs("x", qresync=QResyncParams(1, 2, None, seq("1:3"), seq("5:7"))),
        ),
    ),
    (b"a CREATE foo/bar", Command("a", "CREATE", MailboxArgs("foo/bar"))),
    (b"a DELETE {3+}\r\nfoo", Command("a", "DELETE", MailboxArgs("foo"))),
    (b"a SUBSCRIBE inbox", Command("a", "SUBSCRIBE", MailboxArgs("INBOX"))),
    (b'a UNSUBSCRIBE ""', Command("a", "UNSUBSCRIBE", MailboxArgs(""))),
    (b"a RENAME old new", Command("a", "RENAME", RenameArgs("old", "new"))),
    (b'a LIST "" *', Command("a", "LIST", ListArgs("", ("*",)))),
    (b'a LIST "" ""', Command("a", "LIST", ListArgs("", ("",)))),
    (b"a LIST ~/Mail/ %", Command("a", "LIST", ListArgs("~/Mail/", ("%",)))),
    (b'a LIST inbox "inbox*"', Command("a", "LIST", ListArgs("inbox", ("inbox*",)))),
    (b'a LIST "" &U,BTFw-/*', Command("a", "LIST", ListArgs("", ("台北/*",)))),
    (b'a LIST "" {1+}\r\n%', Command("a", "LIST", ListArgs("", ("%",)))),
    (
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" (% "Other/*")',
        Command("a", "LIST", ListArgs("", ("%", "Other/*"), ("SUBSCRIBED", "RECURSIVEMATCH"))),
    ),
    (b'a LIST () "" %', Command("a", "LIST", ListArgs("", ("%",)))),
    (
        b'a LIST "" % RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UIDNEXT))',
        Command(
            "a",
            "LIST",
            ListArgs(
                "", ("%",), (), ("CHILDREN", "SPECIAL-USE", "STATUS"), ("MESSAGES", "UIDNEXT")
            ),
        ),
    ),
    (b'a LIST "" % RETURN ()', Command("a", "LIST", ListArgs("", ("%",)))),
    (b'a LSUB "" *', Command("a", "LSUB", ListArgs("", ("*",)))),
    (
        b"a STATUS blurdybloop (UIDNEXT MESSAGES unseen HIGHESTMODSEQ SIZE)",
        Command(
            "a",
            "STATUS",
            StatusArgs("blurdybloop", ("UIDNEXT", "MESSAGES", "UNSEEN", "HIGHESTMODSEQ", "SIZE")),
        ),
    ),
    (
        b"a APPEND saved-messages (\\Seen) {5+}\r\nhello",
        Command("a", "APPEND", AppendArgs("saved-messages", ("\\Seen",), None, b"hello")),
    ),
    (
        b"a APPEND inbox {0+}\r\n",
        Command("a", "APPEND", AppendArgs("INBOX", (), None, b"")),
    ),
    (
        b'a APPEND x () "17-Jul-1996 02:44:25 -0700" {2+}\r\n\r\n',
        Command(
            "a",
            "APPEND",
            AppendArgs(
                "x",
                (),
                datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(-timedelta(hours=7))),
                b"\r\n",
            ),
        ),
    ),
    (
        b'a APPEND x " 7-Jul-1996 02:44:25 +0130" {1+}\r\n\x00',
        Command(
            "a",
            "APPEND",
            AppendArgs(
                "x",
                (),
                datetime(1996, 7, 7, 2, 44, 25, tzinfo=timezone(timedelta(hours=1, minutes=30))),
                b"\x00",
            ),
        ),
    ),
    (
        b'a APPEND x (\\seen \\FLAGGED $Label1 \\Custom) "7-Jul-1996 02:44:25 +0000" {1+}\r\nz',
        Command(
            "a",
            "APPEND",
            AppendArgs(
                "x",
                ("\\Seen", "\\Flagged", "$Label1", "\\Custom"),
                datetime(1996, 7, 7, 2, 44, 25, tzinfo=UTC),
                b"z",
            ),
        ),
    ),
    (
        b"a SEARCH UNSEEN FROM smith",
        Command(
            "a",
            "SEARCH",
            SearchArgs(
                key=__import__("letterbird.proto.imap.search", fromlist=["And"]).And(
                    (FlagKey("\\Seen", False), HeaderKey("From", "smith"))
                )
            ),
        ),
    ),
    (b"a UID SEARCH SEEN", Command("a", "SEARCH", SearchArgs(FlagKey("\\Seen")), uid=True)),
    (
        b"a FETCH 1:* FAST",
        Command(
            "a",
            "FETCH",
            FetchArgs(
                seq("1:*"),
                (FetchAtt("FLAGS"), FetchAtt("INTERNALDATE"), FetchAtt("RFC822.SIZE")),
                "FAST",
            ),
        ),
    ),
    (
        b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        Command(
            "a",
            "FETCH",
            FetchArgs(seq("1:*"), (FetchAtt("FLAGS"),), None, 12345, True),
            uid=True,
        ),
    ),
    (
        b"a FETCH 2 BODY[]",
        Command("a", "FETCH", FetchArgs(seq("2"), (FetchAtt("BODY", Section()),))),
    ),
    (
        b"a STORE 2:4 +FLAGS (\\Deleted)",
        Command("a", "STORE", StoreArgs(seq("2:4"), "add", False, ("\\Deleted",))),
    ),
    (
        b"a STORE 1 -flags.silent \\Seen $Junk",
        Command("a", "STORE", StoreArgs(seq("1"), "remove", True, ("\\Seen", "$Junk"))),
    ),
    (
        b"a UID STORE 1 FLAGS ()",
        Command("a", "STORE", StoreArgs(seq("1"), "replace", False, ()), uid=True),
    ),
    (
        b"a STORE 1 (UNCHANGEDSINCE 0) FLAGS.SILENT (a b)",
        Command("a", "STORE", StoreArgs(seq("1"), "replace", True, ("a", "b"), 0)),
    ),
    (b"a COPY 2:4 MEETING", Command("a", "COPY", CopyArgs(seq("2:4"), "MEETING"))),
    (b"a UID COPY 5 inbox", Command("a", "COPY", CopyArgs(seq("5"), "INBOX"), uid=True)),
    (b"a MOVE *:4 Trash", Command("a", "MOVE", CopyArgs(seq("*:4"), "Trash"))),
    (b"a UID MOVE 1 Trash", Command("a", "MOVE", CopyArgs(seq("1"), "Trash"), uid=True)),
    (
        b"a ENABLE CONDSTORE utf8=accept",
        Command("a", "ENABLE", EnableArgs(("CONDSTORE", "UTF8=ACCEPT"))),
    ),
    (b"a ID NIL", Command("a", "ID", IdArgs(None))),
    (b"a ID nil", Command("a", "ID", IdArgs(None))),
    (b"a ID ()", Command("a", "ID", IdArgs(()))),
    (
        b'a ID ("name" "sodr" "version" NIL "os" {5+}\r\nLinux)',
        Command("a", "ID", IdArgs((("name", "sodr"), ("version", None), ("os", "Linux")))),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), COMMANDS, ids=lambda v: repr(v)[:60])
def test_command_forms(wire: bytes, expected: Command) -> None:
    assert one(wire + b"\r\n") == expected


@pytest.mark.parametrize(("wire", "expected"), COMMANDS, ids=lambda v: repr(v)[:60])
def test_every_split_point_gives_the_same_events(wire: bytes, expected: Command) -> None:
    data = wire + b"\r\na2 NOOP\r\n"
    whole = feed(data)
    for cut in range(1, len(data)):
        reader = CommandReader()
        events = feed(data[:cut], reader)
        events += feed(data[cut:], reader)
        assert events == whole, cut


def test_byte_by_byte() -> None:
    data = b"".join(w + b"\r\n" for w, _ in COMMANDS)
    reader = CommandReader()
    events: list[Event] = []
    for i in range(len(data)):
        events += feed(data[i : i + 1], reader)
    assert events == [c for _, c in COMMANDS]


def test_synchronising_literal_asks_for_continuation() -> None:
    reader = CommandReader()
    assert feed(b"A001 LOGIN {11}\r\n", reader) == [ContinuationNeeded("A001")]
    assert feed(b"FRED FOOBAR {7}\r\n", reader) == [ContinuationNeeded("A001")]
    assert feed(b"fat man", reader) == []
    assert feed(b"\r\n", reader) == [Command("A001", "LOGIN", LoginArgs("FRED FOOBAR", "fat man"))]
    assert ContinuationNeeded("A001").reply() == b"+ Ready for literal data\r\n"


def test_literal_plus_needs_no_continuation() -> None:
    events = feed(b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n")
    assert events == [Command("A001", "LOGIN", LoginArgs("FRED FOOBAR", "fat man"))]


def test_literal_with_crlf_and_braces_inside() -> None:
    msg = b"Subject: x {3}\r\n\r\nbody {5}\r\n"
    events = feed(b"a APPEND box {%d}\r\n%s\r\n" % (len(msg), msg))
    assert events[0] == ContinuationNeeded("a")
    assert events[1] == Command("a", "APPEND", AppendArgs("box", (), None, msg))


def test_zero_length_synchronising_literal_still_asks() -> None:
    assert feed(b'a LOGIN {0}\r\n "" \r\n')[0] == ContinuationNeeded("a")


def test_unknown_command_with_synchronising_literal_gets_no_continuation() -> None:
    reader = CommandReader()
    assert feed(b"a FROB {5}\r\n", reader) == [CommandError("a", "unknown command FROB")]
    assert feed(b"a2 NOOP\r\n", reader) == [Command("a2", "NOOP")]
    assert feed(b"{5}\r\n", reader) == [CommandError(None, "expected a tag")]
    assert feed(b"a UID FROB {5}\r\n", reader)[0].tag == "a"  # type: ignore[union-attr]


def test_literal_where_an_atom_is_required_is_an_error() -> None:
    # "UID {5}" - the precheck refuses before the continuation
    assert isinstance(feed(b"a UID {3}\r\n")[0], CommandError)


def test_blank_lines_and_bare_lf() -> None:
    assert feed(b"\r\n\r\na NOOP\n\nb NOOP\r\n") == [Command("a", "NOOP"), Command("b", "NOOP")]


def test_pipelined_commands_are_returned_one_at_a_time() -> None:
    reader = CommandReader()
    reader.receive_data(b"a NOOP\r\nb NOOP\r\nc NO")
    assert reader.next_event() == Command("a", "NOOP")
    assert reader.buffered == len(b"b NOOP\r\nc NO")
    assert reader.next_event() == Command("b", "NOOP")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() is NEED_DATA


# -- limits --------------------------------------------------------------------------------------


def test_synchronising_literal_over_the_limit_is_refused_without_continuation() -> None:
    reader = CommandReader(max_literal=10)
    assert feed(b"a APPEND box {11}\r\n", reader) == [LiteralTooBig("a", 11)]
    assert feed(b"b NOOP\r\n", reader) == [Command("b", "NOOP")]
    assert LiteralTooBig("a", 11).reply() == b"a NO [TOOBIG] Literal too big\r\n"
    assert LiteralTooBig(None, 11).reply() == b"* NO [TOOBIG] Literal too big\r\n"


def test_non_synchronising_literal_over_the_limit_is_read_and_discarded() -> None:
    reader = CommandReader(max_literal=10)
    assert feed(b"a APPEND box {20+}\r\n0123456789", reader) == []
    assert reader.buffered == 0
    assert feed(b"012345678", reader) == []
    assert feed(b"9", reader) == [LiteralTooBig("a", 20)]
    # the rest of the command (another non-synchronising literal) is skipped too
    assert feed(b" {3+}\r\nabc more\r\nb NOOP\r\n", reader) == [Command("b", "NOOP")]


def test_non_synchronising_literal_discard_ends_at_a_synchronising_marker() -> None:
    reader = CommandReader(max_literal=2)
    assert feed(b"a LOGIN {3+}\r\nabc {5}\r\n", reader) == [LiteralTooBig("a", 3)]
    assert feed(b"b NOOP\r\n", reader) == [Command("b", "NOOP")]


def test_command_total_limit() -> None:
    reader = CommandReader(max_literal=10, max_command=30)
    assert feed(b"a LOGIN {10}\r\n", reader) == [ContinuationNeeded("a")]
    assert feed(b"0123456789 {10}\r\n", reader) == [LiteralTooBig("a", 10)]
    assert feed(b"b NOOP\r\n", reader) == [Command("b", "NOOP")]
    # lines alone can exceed it too
    reader = CommandReader(max_literal=10, max_command=30)
    assert feed(b"a LOGIN {1+}\r\nx " + b"y" * 30 + b"\r\n", reader) == [
        CommandError("a", "Command too long")
    ]


def test_too_many_literals() -> None:
    reader = CommandReader(max_literals=2)
    events = feed(b"a LOGIN {1+}\r\nx {1+}\r\ny\r\n", reader)
    assert events == [Command("a", "LOGIN", LoginArgs("x", "y"))]
    events = feed(b"a ID ({1+}\r\nx {1+}\r\ny {1+}\r\nz NIL)\r\nb NOOP\r\n", reader)
    assert events == [CommandError("a", "Too many literals"), Command("b", "NOOP")]
    assert feed(b"a ID ({1}\r\nx", reader) == [ContinuationNeeded("a")]
    assert feed(b" {1}\r\n", reader) == [ContinuationNeeded("a")]
    assert feed(b"y {1}\r\n", reader) == [CommandError("a", "Too many literals")]


def test_invalid_literal_size() -> None:
    reader = CommandReader()
    assert feed(b"a LOGIN {4294967296}\r\n", reader) == [CommandError("a", "Invalid literal size")]
    assert feed(b"a LOGIN {99999999999999999999999+}\r\nb NOOP\r\n", reader) == [
        CommandError("a", "Invalid literal size"),
        Command("b", "NOOP"),
    ]


def test_literal8_is_refused() -> None:
    reader = CommandReader()
    assert feed(b"a APPEND box ~{5}\r\n", reader) == [
        CommandError("a", "literal8 (~{n}) is not supported")
    ]
    assert feed(b"a APPEND box ~{5+}\r\nab", reader) == []
    assert feed(b"\x00de\r\nb NOOP\r\n", reader) == [
        CommandError("a", "literal8 (~{n}) is not supported"),
        Command("b", "NOOP"),
    ]


def test_endless_line_is_reported_once_and_not_buffered() -> None:
    reader = CommandReader(max_line=100)
    events = feed(b"a1 LOGIN " + b"x" * 200, reader)
    assert events == [CommandError("a1", "Line too long")]
    assert reader.buffered == 0
    for _ in range(1000):
        assert feed(b"y" * 1000, reader) == []
        assert reader.buffered == 0
    assert feed(b"\r\nb NOOP\r\n", reader) == [Command("b", "NOOP")]


def test_long_line_with_lf_in_the_same_chunk() -> None:
    reader = CommandReader(max_line=10)
    assert feed(b"a SELECT " + b"x" * 20 + b"\r\nb NOOP\r\n", reader) == [
        CommandError("a", "Line too long"),
        Command("b", "NOOP"),
    ]
    # a line of exactly max_line octets is fine, CR arriving separately too
    assert feed(b"c SELECT x", reader) == []
    assert feed(b"\r", reader) == []
    assert feed(b"\n", reader) == [Command("c", "SELECT", SelectArgs("x"))]


def test_long_line_ending_with_non_synchronising_literal_skips_it() -> None:
    reader = CommandReader(max_line=10)
    assert feed(b"a LOGIN " + b"x" * 20 + b" {3+}\r\nabc\r\nb NOOP\r\n", reader) == [
        CommandError("a", "Line too long"),
        Command("b", "NOOP"),
    ]
    assert feed(b"garbage-without-a-tag-" * 20 + b"\r\n", reader) == [
        CommandError(None, "Line too long")
    ]
    # a long discarded line ending with {n+} split across chunks
    assert feed(b"a LOGIN " + b"x" * 20, reader) == [CommandError("a", "Line too long")]
    assert feed(b"y" * 30 + b" {3", reader) == []
    assert feed(b"+}\r\nab", reader) == []
    assert feed(b"c\r\nb NOOP\r\n", reader) == [Command("b", "NOOP")]


def test_long_continuation_line_keeps_the_tag() -> None:
    reader = CommandReader(max_line=10)
    assert feed(b"a LOGIN {1+}\r\nx " + b"y" * 20 + b"\r\n", reader) == [
        CommandError("a", "Line too long")
    ]
    assert feed(b"a LOGIN {1+}\r\nx " + b"y" * 20, reader) == [CommandError("a", "Line too long")]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_line"):
        CommandReader(max_line=0)


# -- IDLE and AUTHENTICATE modes -----------------------------------------------------------------


def test_idle_done() -> None:
    reader = CommandReader()
    reader.receive_data(b"a IDLE\r\ndone\r\nb NOOP\r\n")
    assert reader.next_event() == Command("a", "IDLE")
    reader.start_idle()
    assert reader.idling
    assert reader.next_event() == IdleDone(True)
    assert not reader.idling
    assert reader.next_event() == Command("b", "NOOP")


def test_idle_waits_for_the_line_and_rejects_other_lines() -> None:
    reader = CommandReader()
    assert feed(b"a IDLE\r\n", reader) == [Command("a", "IDLE")]
    reader.start_idle()
    assert feed(b"DO", reader) == []
    assert feed(b"NE\r\n", reader) == [IdleDone(True)]
    reader.start_idle()
    assert feed(b"b NOOP\r\n", reader) == [IdleDone(False)]
    assert feed(b"b NOOP\r\n", reader) == [Command("b", "NOOP")]


def test_idle_flood_is_bounded() -> None:
    reader = CommandReader(max_line=10)
    reader.start_idle()
    assert feed(b"x" * 50, reader) == [IdleDone(False)]
    assert feed(b"x" * 50 + b" {3+}\r\nb NOOP\r\n", reader) == [Command("b", "NOOP")]


def test_mode_switch_in_the_middle_of_a_command_is_a_programming_error() -> None:
    reader = CommandReader()
    assert feed(b"a LOGIN {3}\r\n", reader) == [ContinuationNeeded("a")]
    with pytest.raises(RuntimeError):
        reader.start_idle()
    with pytest.raises(RuntimeError):
        reader.read_authenticate_line()


def test_authenticate_lines() -> None:
    reader = CommandReader(max_line=20)
    assert feed(b"a AUTHENTICATE LOGIN\r\n", reader) == [
        Command("a", "AUTHENTICATE", AuthenticateArgs("LOGIN"))
    ]
    reader.read_authenticate_line()
    assert feed(b"Zm9v\r\n", reader) == [AuthenticateLine(b"Zm9v")]
    reader.read_authenticate_line()
    assert feed(b"*\r\nb NOOP {3}\r\n", reader) == [
        AuthenticateLine(b"*"),
        CommandError("b", "unexpected extra arguments"),
    ]
    reader.read_authenticate_line()
    assert feed(b"x" * 30, reader) == [CommandError(None, "Line too long")]
    assert feed(b"x {3+}\r\nc NOOP\r\n", reader) == [Command("c", "NOOP")]


# -- errors --------------------------------------------------------------------------------------

BAD: list[bytes] = [
    b"a",
    b"a ",
    b"a  NOOP",
    b"a NOOP ",
    b"a NOOP extra",
    b"a FROB",
    b"a UID",
    b"a UID NOOP",
    b"a UID EXPUNGE",
    b"a AUTHENTICATE",
    b"a AUTHENTICATE PLAIN !!",
    b"a AUTHENTICATE PLAIN abc",
    b"a AUTHENTICATE PLAIN AGZv x",
    b"a LOGIN",
    b"a LOGIN fred",
    b'a LOGIN "fred',
    b'a LOGIN "fr\\ed" x',
    b'a LOGIN "a\xff" x',
    b"a LOGIN fr(ed x",
    b"a LOGIN x {1a}",
    b"a LOGIN {1+}\r\n\x00 x",
    b"a SELECT",
    b"a SELECT x ()",
    b"a SELECT x (FOO)",
    b"a SELECT x (CONDSTORE CONDSTORE)",
    b"a SELECT x (CONDSTORE",
    b"a SELECT x (QRESYNC (0 1))",
    b"a SELECT x (QRESYNC (1 9223372036854775808))",
    b"a SELECT x (QRESYNC (1 1 1:*))",
    b"a SELECT x (QRESYNC (1 1 1:3 (1 2)",
    b"a SELECT x (QRESYNC (1 1 1:3 x))",
    b"a SELECT Tom & Jerry",
    b"a SELECT &Jjo",
    b"a SELECT &AGE-",
    b"a SELECT {2+}\r\n&\x00",
    b"a SELECT &AAA-",
    b'a SELECT "\xff"',
    b"a CREATE",
    b"a RENAME x",
    b"a LIST",
    b"a LIST x",
    b'a LIST "" %%) ',
    b'a LIST (FOO) "" %',
    b'a LIST (RECURSIVEMATCH) "" %',
    b'a LIST (SUBSCRIBED "" %',
    b'a LIST "" (% *',
    b'a LIST "" % RETURN',
    b'a LIST "" % RETURN (FOO)',
    b'a LIST "" % RETURN (STATUS (FOO))',
    b'a LIST "" % RETURN (CHILDREN',
    b'a LIST "" % RESULT (CHILDREN)',
    b"a LSUB x",
    b"a STATUS x",
    b"a STATUS x ()",
    b"a STATUS x (MESSAGES FOO)",
    b"a STATUS x (MESSAGES",
    b'a APPEND x "hello"',
    b"a APPEND x (\\Seen) hello",
    b'a APPEND x "32-Jul-1996 02:44:25 -0700" {1+}\r\nx',
    b'a APPEND x "17-Foo-1996 02:44:25 -0700" {1+}\r\nx',
    b'a APPEND x "17-Jul-1996 02:44:25 -0760" {1+}\r\nx',
    b'a APPEND x "17-Jul-1996 25:44:25 -0700" {1+}\r\nx',
    b'a APPEND x "17-Jul-1996 02:44:25 +2400" {1+}\r\nx',
    b"a APPEND x (\\Seen {1+}\r\nx",
    b"a APPEND x (\\*) {1+}\r\nx",
    b"a APPEND x {1+}\r\nx extra",
    b"a FETCH",
    b"a FETCH 1",
    b"a FETCH 0 FLAGS",
    b"a FETCH 1 FOO",
    b"a FETCH 1 (FLAGS) (FOO)",
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE 1 CHANGEDSINCE 2)",
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)",
    b"a UID FETCH 1 (FLAGS) (VANISHED)",
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE 1",
    b"a STORE 1",
    b"a STORE 1 FLAGS",
    b"a STORE 1 XFLAGS (a)",
    b"a STORE 1 (FOO 1) FLAGS (a)",
    b"a STORE 1 (UNCHANGEDSINCE 1 FLAGS (a)",
    b"a STORE 1 FLAGS (a",
    b"a STORE 1 FLAGS \\*",
    b"a COPY 1",
    b"a COPY x y",
    b"a MOVE 1:2",
    b"a ENABLE",
    b"a ID",
    b"a ID (",
    b'a ID ("a")',
    b'a ID ("a" "b"',
    b"a ID (a b)",
    b"a SEARCH",
    b"a SEARCH FOO",
]


@pytest.mark.parametrize("wire", BAD, ids=lambda v: repr(v)[:60])
def test_bad_commands(wire: bytes) -> None:
    err = error(wire + b"\r\n")
    assert err.tag == "a"
    assert err.status == b"BAD"
    assert err.reply().startswith(b"a BAD ")


@pytest.mark.parametrize("wire", [b"+a NOOP", b"(a NOOP", b"a\x01 NOOP", b'"a" NOOP', b"* OK"])
def test_unreadable_tag(wire: bytes) -> None:
    err = error(wire + b"\r\n")
    assert err.tag is None
    assert err.reply().startswith(b"* BAD ")


def test_tag_may_hold_a_bracket() -> None:
    assert one(b"a]1 NOOP\r\n") == Command("a]1", "NOOP")


def test_badcharset_is_a_no_with_code() -> None:
    err = error(b"t SEARCH CHARSET ISO-8859-1 TEXT x\r\n")
    assert err.reply() == (
        b"t NO [BADCHARSET (UTF-8 US-ASCII)] charset ISO-8859-1 is not supported\r\n"
    )


def test_the_reader_recovers_after_every_error() -> None:
    reader = CommandReader()
    data = b"".join(w + b"\r\n" for w in BAD) + b"z NOOP\r\n"
    events = feed(data, reader)
    assert events[-1] == Command("z", "NOOP")
    assert all(isinstance(e, CommandError | ContinuationNeeded) for e in events[:-1])
