"""The session's shortcuts, driven in process against a real server's storage: which storage
calls SEARCH, APPEND and a second SELECT make, and that their answers are the ones the plain
paths give (a fresh session, a cold cache)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import blob_of, make_config, sample_message
from serverutil import ServerThread

from letterbird.config import ListenSettings
from letterbird.imap.session import INFO_CACHE, ImapSession
from letterbird.proto.imap.parser import Command, CommandReader
from letterbird.server.app import ConnectionInfo
from letterbird.storage.interface import AppendTarget, NotFound

pytestmark = pytest.mark.e2e

BOB = "bob@example.test"
PASSWORD = "secret"
SPIED = (
    "fetch_messages",
    "fetch_meta",
    "read_blob",
    "list_messages",
    "changes_since",
    "changes_since_bounded",
)


class Out:
    def __init__(self) -> None:
        self.data = b""

    async def write(self, data: bytes) -> None:
        self.data += data


class Driver:
    """One IMAP session fed parsed commands on the server's loop; returns response lines."""

    def __init__(self, srv: ServerThread) -> None:
        self.srv = srv
        self.out = Out()
        info = ConnectionInfo("imap", "127.0.0.1", 40000, "127.0.0.1", 143, False)
        self.session = ImapSession(srv.app, self.out, info)
        self.n = 0

    def raw(self, text: str, literal: bytes | None = None) -> list[bytes]:
        """Every response line, the tagged one (tag ``t``) last."""
        self.n += 1
        reader = CommandReader()
        line = f"t {text}".encode()
        if literal is not None:
            line += b" {%d+}\r\n" % len(literal) + literal
        reader.receive_data(line + b"\r\n")
        command = reader.next_event()
        assert isinstance(command, Command), command
        self.out.data = b""
        self.srv.call(self.session.handle(command))
        return self.out.data.split(b"\r\n")[:-1]

    def cmd(self, text: str, literal: bytes | None = None) -> list[bytes]:
        """The untagged responses of a command that must succeed."""
        lines = self.raw(text, literal)
        assert lines[-1].startswith(b"t OK"), lines[-1]
        return lines[:-1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    listen = ListenSettings(**{k: [] for k in ListenSettings.__dataclass_fields__})
    with ServerThread(make_config(tmp_path, listen=listen)) as srv:
        srv.add_user(BOB, PASSWORD)
        yield srv


def deliver(srv: ServerThread, data: bytes, flags: frozenset[str] = frozenset()) -> int:
    async def run() -> int:
        account = await srv.app.directory.get_user(BOB)
        [(_, uid)] = await srv.app.storage.append(
            blob_of(data), [AppendTarget(account.id, flags=flags)]
        )
        return uid

    return srv.call(run())


def session(srv: ServerThread) -> Driver:
    d = Driver(srv)
    d.cmd(f'LOGIN "{BOB}" "{PASSWORD}"')
    return d


@pytest.fixture
def calls(server: ServerThread) -> Iterator[list[str]]:
    """Names of the storage reads made (recorded while the list is being watched)."""
    storage = server.app.storage
    made: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        original = getattr(storage, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            made.append(name)
            return await original(*args, **kwargs)

        return wrapped

    for name in SPIED:
        setattr(storage, name, spy(name))
    try:
        yield made
    finally:
        for name in SPIED:
            delattr(storage, name)


def message(n: int, sender: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: bob@example.test\r\nSubject: note {n}\r\n"
        f"X-Tag: tag{n % 2}\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


def test_search_reads_light_records_and_caches_per_blob(
    server: ServerThread, calls: list[str]
) -> None:
    senders = ["Alice <alice@a.test>", "Bob <bob@b.test>", "=?utf-8?q?J=C3=BCrgen?= <j@c.test>"]
    for n in range(6):
        deliver(server, message(n, senders[n % 3], f"body {n} needle{n % 2}"))
    INFO_CACHE.clear()
    d = session(server)
    d.cmd("SELECT INBOX")
    calls.clear()
    assert d.cmd("UID SEARCH FROM alice") == [b"* SEARCH 1 4"]
    assert calls == ["fetch_meta", "fetch_messages"]  # structures of the blobs not cached
    calls.clear()
    assert d.cmd("UID SEARCH FROM jurgen") == [b"* SEARCH"]
    assert d.cmd("UID SEARCH CHARSET UTF-8 FROM", "JÜRGEN".encode()) == [b"* SEARCH 3 6"]
    assert calls == ["fetch_meta", "fetch_meta"]  # nothing else: all cached
    calls.clear()
    assert d.cmd("SEARCH BODY needle1") == [b"* SEARCH 2 4 6"]
    assert calls == ["fetch_meta"] + ["read_blob"] * 6
    calls.clear()
    assert d.cmd("SEARCH BODY needle1") == [b"* SEARCH 2 4 6"]
    assert d.cmd('SEARCH HEADER X-Tag "tag0"') == [b"* SEARCH 1 3 5"]
    assert calls == ["fetch_meta", "fetch_meta"] + ["read_blob"] * 6  # headers once
    calls.clear()
    assert d.cmd('SEARCH HEADER X-Tag "tag0" BODY needle0') == [b"* SEARCH 1 3 5"]
    assert d.cmd("SEARCH NOT BODY needle1 SMALLER 1000") == [b"* SEARCH 1 3 5"]
    assert calls == ["fetch_meta", "fetch_meta"]
    calls.clear()
    assert d.cmd("SEARCH UNSEEN NOT 2:3") == [b"* SEARCH 1 4 5 6"]
    assert calls == []  # flags and numbers only: no storage at all
    # a fresh session over a cold cache answers the same
    INFO_CACHE.clear()
    other = session(server)
    other.cmd("EXAMINE INBOX")
    assert other.cmd('SEARCH HEADER X-Tag "tag0" BODY needle0') == [b"* SEARCH 1 3 5"]
    assert other.cmd("UID SEARCH FROM alice") == [b"* SEARCH 1 4"]


def test_search_skips_messages_expunged_meanwhile(server: ServerThread) -> None:
    for n in range(3):
        deliver(server, message(n, "Alice <alice@a.test>", "x"))
    d = session(server)
    d.cmd("SELECT INBOX")

    async def expunge_behind_its_back() -> None:
        account = await server.app.directory.get_user(BOB)
        mailbox = await server.app.storage.get_mailbox(account.id, "INBOX")
        await server.app.storage.delete_messages(mailbox.id, [2])

    server.call(expunge_behind_its_back())
    # the event marks the message as a ghost: SEARCH (no EXPUNGE allowed) leaves it out
    assert d.cmd("SEARCH FROM alice")[0] == b"* SEARCH 1 3"


def test_append_to_the_selected_mailbox_needs_no_resync(
    server: ServerThread, calls: list[str]
) -> None:
    deliver(server, sample_message(1))
    d = session(server)
    d.cmd("SELECT INBOX")
    calls.clear()
    out = d.cmd("APPEND INBOX (\\Seen)", sample_message(2))
    assert b"* 2 EXISTS" in out
    assert calls == []  # the view takes the new message in from memory
    assert d.cmd("FETCH 2 (UID FLAGS)") == [b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen))"]
    d.cmd("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert d.cmd("UID EXPUNGE 2") == [b"* 2 EXPUNGE"]
    calls.clear()
    assert b"* 2 EXISTS" in d.cmd("APPEND INBOX", sample_message(3))  # after a gap (2 is gone)
    assert calls == [] and d.cmd("NOOP") == []
    # someone else's message arrived first (its event not yet seen): the session resyncs
    deliver(server, sample_message(4))
    calls.clear()
    out = d.cmd("APPEND INBOX", sample_message(5))
    assert b"* 4 EXISTS" in out and "changes_since_bounded" in calls
    assert d.cmd("UID FETCH 1:* (UID)") == [
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 3)",
        b"* 3 FETCH (UID 4)",
        b"* 4 FETCH (UID 5)",
    ]
    assert d.cmd("NOOP") == []  # its own APPEND events were recognised


def _normalise(lines: list[bytes]) -> list[bytes]:
    return [re.sub(rb"\* \d+ RECENT", b"* n RECENT", line) for line in lines]


def test_selecting_the_same_mailbox_again(server: ServerThread, calls: list[str]) -> None:
    for n in range(1, 5):
        deliver(server, sample_message(n), flags=frozenset({"$Label"} if n == 2 else ()))
    d = session(server)
    first = d.cmd("SELECT INBOX")
    calls.clear()
    assert d.cmd("SELECT INBOX") == [
        line.replace(b"* 4 RECENT", b"* 0 RECENT") for line in first
    ]  # the new SELECT claims nothing more as recent
    assert calls == ["changes_since_bounded"]
    # meanwhile: another session expunges, flags, and a message arrives
    other = session(server)
    other.cmd("SELECT INBOX")
    other.cmd("STORE 1 +FLAGS (\\Deleted)")
    other.cmd("EXPUNGE")
    other.cmd("STORE 2 +FLAGS ($Other)")  # UID 3 by now
    deliver(server, sample_message(5))
    d.cmd("NOOP")  # this session learns some of it
    deliver(server, sample_message(6), flags=frozenset({"\\Seen"}))
    calls.clear()
    again = d.cmd("EXAMINE INBOX")
    assert calls == ["changes_since_bounded"]
    fresh = session(server).cmd("EXAMINE INBOX")
    assert _normalise(again) == _normalise(fresh)
    assert b"* 5 EXISTS" in again and any(b"$Other" in line for line in again)
    assert d.cmd("FETCH 1:* (UID FLAGS)") == [
        b"* 1 FETCH (UID 2 FLAGS ($Label))",
        b"* 2 FETCH (UID 3 FLAGS ($Other))",
        b"* 3 FETCH (UID 4 FLAGS ())",
        b"* 4 FETCH (UID 5 FLAGS ())",
        b"* 5 FETCH (UID 6 FLAGS (\\Seen))",
    ]
    calls.clear()
    d.cmd("SELECT Trash")  # another mailbox: read from storage
    assert calls == ["list_messages"]


def wrap(srv: ServerThread, name: str, before: Callable[..., Any]) -> Callable[[], None]:
    """Run ``before(*args)`` (a coroutine function) ahead of storage method ``name``; returns
    the undo."""
    storage = srv.app.storage
    original = getattr(storage, name)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        await before(*args)
        return await original(*args, **kwargs)

    setattr(storage, name, wrapped)
    return lambda: delattr(storage, name)


def test_append_when_another_message_committed_first(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    d = session(server)
    d.cmd("SELECT INBOX")

    async def sneak_in(*args: Any) -> None:  # commits before the APPEND, seen only later
        undo()
        account = await server.app.directory.get_user(BOB)
        await server.app.storage.append(blob_of(sample_message(2)), [AppendTarget(account.id)])

    undo = wrap(server, "append", sneak_in)
    out = d.cmd("APPEND INBOX", sample_message(3))
    assert b"* 3 EXISTS" in out
    assert d.cmd("UID FETCH 1:* (UID)") == [
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 2)",
        b"* 3 FETCH (UID 3)",
    ]


def test_search_with_shared_contents_and_vanishing_messages(server: ServerThread) -> None:
    for data in (message(1, "Ann <ann@a.test>", "x"), message(1, "Ann <ann@a.test>", "x")):
        deliver(server, data)  # the same content twice: one blob
    deliver(server, message(2, "Ann <ann@a.test>", "y"))
    INFO_CACHE.clear()
    d = session(server)
    d.cmd("SELECT INBOX")
    assert d.cmd("SEARCH FROM ann") == [b"* SEARCH 1 2 3"]
    INFO_CACHE.clear()
    assert d.cmd("SEARCH BODY x") == [b"* SEARCH 1 2"]

    async def vanish(*args: Any) -> None:
        raise NotFound("gone")

    undo = wrap(server, "read_blob", vanish)
    try:
        assert d.cmd('SEARCH HEADER X-Other ""') == [b"* SEARCH"]  # bytes gone: no match
        assert d.raw("FETCH 1:2 BODY.PEEK[]") == [
            b"t NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
        ]
    finally:
        undo()

    async def expunge_first(mailbox_id: int, uids: Any) -> None:
        undo_meta()
        await server.app.storage.delete_messages(mailbox_id, [1])

    undo_meta = wrap(server, "fetch_meta", expunge_first)
    assert d.cmd("SEARCH LARGER 1") == [b"* SEARCH 2 3"]  # its record was gone already


def test_fetch_paths_for_items_beyond_the_state(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    d = session(server)
    d.cmd("SELECT INBOX")
    other = session(server)
    other.cmd("SELECT INBOX")
    other.cmd("STORE 1 +FLAGS ($Fresh)")
    out = d.cmd("FETCH 1 (FLAGS ENVELOPE)")
    assert out[0].startswith(b"* FLAGS (") and b"$Fresh" in out[0]  # announced first
    assert b"FLAGS (\\Recent $Fresh)" in out[2]
    assert d.raw("FETCH 9 (UID ENVELOPE)") == [b"t BAD Invalid message sequence number"]
    assert d.raw("FETCH 9 (UID FLAGS)") == [b"t BAD Invalid message sequence number"]


def test_a_long_list_of_changes_takes_the_full_query(
    server: ServerThread, calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("letterbird.imap.session.SYNC_BOUNDED", 2)
    deliver(server, sample_message(1))
    d = session(server)
    d.cmd("SELECT INBOX")
    for n in range(2, 6):
        deliver(server, sample_message(n))
    calls.clear()
    assert d.cmd("NOOP")[:1] == [b"* 5 EXISTS"]
    # the sync before the command finds too many changes; NOOP's own forced sync, none
    assert calls == ["changes_since_bounded", "changes_since", "changes_since_bounded"]
