"""IMAP sessions side by side: flag changes and expunges seen by the other session at the next
opportunity (never an EXPUNGE during FETCH, STORE or SEARCH), IDLE woken by an SMTP delivery
and by other sessions, \\Recent claimed by one session only, concurrent appends and deliveries
keeping every session's view consistent with storage."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from conftest import sample_message
from serverutil import ServerThread
from test_imap import (
    BOB,
    PASSWORD,
    Wire,
    deliver,
    imap,
    make_server,
    smtp_deliver,
    stored,
    wait_for,
)

from letterbird.server.imap import CONNECTION_GROUP

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with make_server(tmp_path) as srv:
        srv.add_user(BOB, PASSWORD)
        yield srv


def settle(srv: ServerThread) -> None:
    """Let the server loop run the change-bus callbacks the storage thread just queued."""
    srv.call(asyncio.sleep(0.02))


def session(srv: ServerThread, select: str | None = "INBOX") -> Wire:
    w = Wire.connect(srv)
    w.line()
    w.login()
    if select is not None:
        w.ok(f"SELECT {select}")
    return w


def test_flag_changes_and_expunges_reach_the_other_session(server: ServerThread) -> None:
    for n in range(1, 4):
        deliver(server, sample_message(n))
    a = session(server)  # claims \Recent
    b = session(server)
    a.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert b.ok("NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged))"]
    assert b.ok("NOOP") == []  # reported once
    # A expunges message 2 while B is busy with FETCH/STORE/SEARCH: B keeps its numbers
    a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert a.ok("EXPUNGE") == [b"* 2 EXPUNGE"]
    settle(server)
    assert b.ok("FETCH 1:3 (UID FLAGS)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged))",
        b"* 2 FETCH (UID 2 FLAGS ())",  # a ghost: UID and FLAGS are answered from memory
        b"* 3 FETCH (UID 3 FLAGS ())",
    ]
    assert b.cmd("FETCH 2 BODY.PEEK[]") == [
        b"t NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
    ]
    assert b.ok("SEARCH ALL") == [b"* SEARCH 1 3"]  # the ghost never matches
    assert b.cmd("STORE 2 +FLAGS (\\Seen)") == [
        b"t NO [EXPUNGEISSUED] Some of the messages no longer exist"
    ]
    assert b.ok("STORE 3 +FLAGS (\\Seen)") == [b"* 3 FETCH (UID 3 FLAGS (\\Seen))"]
    # a UID command may report the expunge (RFC 3501 §7.4.1)
    assert b.ok("UID FETCH 3 (FLAGS)") == [
        b"* 3 FETCH (UID 3 FLAGS (\\Seen))",
        b"* 2 EXPUNGE",
    ]
    assert b.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)"]
    # and A learns of B's \Seen
    assert a.ok("NOOP") == [b"* 2 FETCH (UID 3 FLAGS (\\Recent \\Seen))"]


def test_expunge_reported_by_noop_and_before_other_commands(server: ServerThread) -> None:
    for n in range(1, 4):
        deliver(server, sample_message(n))
    a = session(server)
    b = session(server)
    a.ok("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    settle(server)
    # COPY may report expunges (it is not FETCH, STORE or SEARCH): they come first
    assert b.cmd("COPY 1 Trash") == [
        b"* 1 EXPUNGE",
        b"* 2 EXPUNGE",
        b"t NO [EXPUNGEISSUED] The messages no longer exist",
    ]
    assert b.ok("NOOP") == []
    assert b.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 2)"]


def test_new_keyword_from_another_session_is_announced(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    a, b = session(server), session(server)
    a.ok("STORE 1 +FLAGS ($Urgent)")
    lines = b.ok("NOOP")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Urgent)"
    assert lines[-1] == b"* 1 FETCH (UID 1 FLAGS ($Urgent))"


def test_idle_woken_by_smtp_delivery(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    with imapclient.IMAPClient(*server.address("imap"), ssl=False, timeout=30) as c:
        c.login(BOB, PASSWORD)
        c.select_folder("INBOX")
        c.idle()
        threading.Thread(target=smtp_deliver, args=(server, sample_message(2)), daemon=True).start()
        responses = c.idle_check(timeout=20)
        while (2, b"EXISTS") not in responses:
            more = c.idle_check(timeout=20)
            assert more, responses
            responses += more
        c.idle_done()
        assert c.search("ALL") == [1, 2]
        assert c.fetch([2], ["FLAGS"])[2][b"FLAGS"] == (b"\\Recent",)


def test_idle_reports_other_sessions_changes_at_once(server: ServerThread) -> None:
    for n in range(1, 4):
        deliver(server, sample_message(n))
    idler = session(server)
    other = session(server)
    idler.send(b"i IDLE\r\n")
    assert idler.line() == b"+ idling"
    other.ok("STORE 2 +FLAGS.SILENT (\\Answered)")
    assert idler.line() == b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Answered))"
    other.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    assert idler.line() == b"* 3 FETCH (UID 3 FLAGS (\\Recent \\Deleted))"
    assert idler.line() == b"* 3 EXPUNGE"  # expunges are allowed during IDLE
    other.ok("UNSELECT")  # (with INBOX selected, the appending session might claim \Recent)
    other.send(b"a APPEND INBOX {12+}\r\nSubject: x\r\n\r\n")
    assert other.until("a")[-1].startswith(b"a OK [APPENDUID")
    assert idler.line() == b"* 3 EXISTS"
    assert idler.line() == b"* 3 RECENT"
    idler.send(b"DONE\r\n")
    assert idler.line() == b"i OK IDLE terminated"
    assert idler.ok("FETCH 1:* (UID)") == [
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 2)",
        b"* 3 FETCH (UID 4)",
    ]


def test_idle_framing(server: ServerThread) -> None:
    w = session(server, select=None)
    w.send(b"i IDLE\r\nDONE\r\nn NOOP\r\n")  # pipelined: DONE already buffered
    assert w.line() == b"+ idling"
    assert w.line() == b"i OK IDLE terminated"
    assert w.line() == b"n OK NOOP completed"
    w.send(b"j IDLE\r\n")
    assert w.line() == b"+ idling"
    w.send(b"STOP\r\n")
    assert w.line() == b"j BAD Expected DONE"
    w.send(b"k IDLE\r\n")
    assert w.line() == b"+ idling"
    assert server.app.connection_count(CONNECTION_GROUP) == 1
    w.close()  # a client vanishing while idle ends the session
    wait_for(lambda: server.app.connection_count(CONNECTION_GROUP) == 0)


def test_recent_goes_to_the_first_session_only(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    a = session(server, select=None)
    assert b"* 1 RECENT" in a.ok("EXAMINE INBOX")  # EXAMINE does not claim
    b = session(server)
    c = session(server)
    assert b"* 0 RECENT" in c.ok("SELECT INBOX")  # b claimed it
    assert b.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))"]
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())"]
    deliver(server, sample_message(2))
    assert c.ok("NOOP") == [b"* 2 EXISTS", b"* 1 RECENT"]  # c learns of it first
    assert b.ok("NOOP") == [b"* 2 EXISTS", b"* 1 RECENT"]  # b still has message 1
    assert b.ok("SEARCH RECENT") == [b"* SEARCH 1"]
    assert c.ok("SEARCH RECENT") == [b"* SEARCH 2"]


def test_selected_mailbox_deleted_by_another_session(server: ServerThread) -> None:
    a = session(server, select=None)
    a.ok("CREATE Work")
    a.ok("SELECT Work")
    b = session(server, select=None)
    b.ok("DELETE Work")
    a.send(b"n NOOP\r\n")
    assert a.line() == b"* BYE Selected mailbox was deleted"
    assert a.closed()


def test_selected_mailbox_deleted_while_idling(server: ServerThread) -> None:
    a = session(server, select=None)
    a.ok("CREATE Work")
    a.ok("SELECT Work")
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling"
    session(server, select=None).ok("DELETE Work")
    assert a.line() == b"* BYE Selected mailbox was deleted"
    assert a.closed()


def test_keyword_announced_before_a_fetch_shows_it(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    a, b = session(server), session(server)
    a.ok("STORE 1 +FLAGS.SILENT ($Later)")
    settle(server)
    lines = b.ok("FETCH 1 (FLAGS)")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Later)"
    assert lines[-1] == b"* 1 FETCH (FLAGS ($Later))"
    assert b.ok("NOOP") == []  # the FETCH already showed the change


def test_concurrent_appends_and_deliveries(server: ServerThread) -> None:
    idlers = [session(server), session(server)]
    for w in idlers:
        w.send(b"i IDLE\r\n")
        assert w.line() == b"+ idling"
    errors: list[BaseException] = []
    appended: list[int] = []
    lock = threading.Lock()

    def appender(n: int) -> None:
        try:
            m = imap(server)
            for i in range(10):
                typ, data = m.append("INBOX", None, None, sample_message(100 * n + i))
                assert typ == "OK"
                m_uid = re.search(rb"APPENDUID \d+ (\d+)", data[0])
                assert m_uid is not None
                with lock:
                    appended.append(int(m_uid.group(1)))
            m.logout()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def smtp_sender(n: int) -> None:
        try:
            for i in range(10):
                smtp_deliver(server, sample_message(1000 + 100 * n + i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=smtp_sender, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(set(appended)) == 30
    uids = [uid for uid, _, _ in stored(server)]
    assert len(uids) == 50 and uids == sorted(uids)
    for w in idlers:
        # every EXISTS the idler saw grows, and the last one is the whole mailbox
        counts: list[int] = []
        while not counts or counts[-1] < 50:
            line = w.line()
            m = re.fullmatch(rb"\* (\d+) EXISTS", line)
            if m:
                counts.append(int(m.group(1)))
        assert counts == sorted(counts)
        w.send(b"DONE\r\n")
        lines = w.until("i")
        assert lines[-1] == b"i OK IDLE terminated"
        fetched = w.ok("FETCH 1:* (UID)")
        assert [int(re.findall(rb"UID (\d+)", line)[0]) for line in fetched] == uids
    # the recent messages were split between the two sessions, none twice
    recent = [set(map(int, w.ok("SEARCH RECENT")[0].split()[2:])) for w in idlers]
    assert not (recent[0] & recent[1])
    assert len(recent[0] | recent[1]) == 50


def test_concurrent_stores_converge(server: ServerThread) -> None:
    for n in range(1, 6):
        deliver(server, sample_message(n))
    errors: list[BaseException] = []

    def tagger(keyword: str) -> None:
        try:
            m = imap(server)
            m.select("INBOX")
            for _ in range(5):
                assert m.store("1:*", "+FLAGS", f"({keyword})")[0] == "OK"
                assert m.store("1:*", "-FLAGS", f"({keyword})")[0] == "OK"
            assert m.store("1:*", "+FLAGS", f"({keyword})")[0] == "OK"
            m.logout()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    watcher = session(server)
    threads = [threading.Thread(target=tagger, args=(f"$k{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    expected = frozenset(f"$k{n}" for n in range(4))
    assert all(flags == expected for _, flags, _ in stored(server))
    watcher.ok("NOOP")
    for line in watcher.ok("FETCH 1:* (FLAGS)"):
        flags = set(re.findall(rb"\$k\d", line))
        assert flags == {f.encode() for f in expected}


def test_move_by_another_session(server: ServerThread) -> None:
    for n in range(1, 3):
        deliver(server, sample_message(n))
    a, b = session(server), session(server)
    a.ok("MOVE 1 Archive")
    assert b.ok("NOOP") == [b"* 1 EXPUNGE"]
    b.ok("SELECT Archive")
    assert b.ok("FETCH 1 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
        b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {22}\r\nSubject: message 1\r\n\r\n)"
    ]
