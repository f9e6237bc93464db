"""POP3 RETR/TOP streamed from storage: bounded blob ranges, dot-stuffing across range
boundaries, TOP reading only what it needs, back-pressure and the write timeout.

The range sizes are forced down through ``letterbird.server.pop3.CHUNK_SIZE`` and
``MAX_CHUNK_SIZE`` (read when a connection starts) so that ranges of a few octets put dot
lines, CRLFs and the header's blank line on every possible boundary. Every answer is compared
byte for byte with the whole-message reference :func:`stuff_and_terminate` and, un-stuffed,
with the stored message and IMAP's ``BODY[]``.
"""

from __future__ import annotations

import dataclasses
import imaplib
import itertools
import logging
import poplib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import blob_of
from serverutil import ServerThread, server_config, wait_for

import letterbird.server.pop3 as pop3_edge
from letterbird.proto.pop3 import stuff_and_terminate
from letterbird.server.stream import Stream
from letterbird.storage.interface import AppendTarget, NotFound, StorageError

pytestmark = pytest.mark.e2e

BOB = "bob@example.test"
PASSWORD = "secret"
DOT_LINES = (
    b"From: a@alice.test\r\nSubject: dots\r\n\r\n"
    b".\r\n..\r\n.a\r\nb.\r\n...c\r\n\r\n.\r\nd\r\n.e\r\n.\r\n..\r\nend.\r\n"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = server_config(tmp_path, pop3=["127.0.0.1:0"], imap=["127.0.0.1:0"])
    with ServerThread(cfg) as srv:
        srv.add_user(BOB, PASSWORD)
        yield srv


def deliver(srv: ServerThread, data: bytes) -> None:
    async def run() -> None:
        account = await srv.app.directory.get_user(BOB)
        await srv.app.storage.append(blob_of(data), [AppendTarget(account.id)])

    srv.call(run())


def seen_flags(srv: ServerThread) -> list[bool]:
    async def run() -> list[bool]:
        account = await srv.app.directory.get_user(BOB)
        mailbox = await srv.app.storage.get_mailbox(account.id, "INBOX")
        rows = await srv.app.storage.list_messages(mailbox.id)
        return ["\\Seen" in flags for _, _, flags in rows]

    return srv.call(run())


def lock_free(srv: ServerThread) -> bool:
    account = srv.call(srv.app.directory.get_user(BOB))

    async def probe() -> bool:
        lock = await srv.app.storage.maildrop_lock(account.id)
        if lock is None:
            return False
        async with lock:
            return True

    return srv.call(probe())


class BlobReads:
    """Records the ``(start, end)`` ranges the server reads; ``fail`` may raise instead."""

    def __init__(self, srv: ServerThread) -> None:
        self.storage = srv.app.storage
        self.real = self.storage.read_blob
        self.ranges: list[tuple[int, int | None]] = []
        self.fail: Callable[[int], None] | None = None
        self.storage.read_blob = self.read

    async def read(self, blob_id: str, start: int = 0, end: int | None = None) -> bytes:
        self.ranges.append((start, end))
        if self.fail is not None:
            self.fail(start)
        return await self.real(blob_id, start, end)

    @property
    def octets(self) -> int:
        """The most octets the recorded ranges could have returned."""
        return sum(end - start for start, end in self.ranges if end is not None)

    def restore(self) -> None:
        del self.storage.read_blob


@pytest.fixture
def reads(server: ServerThread) -> Iterator[BlobReads]:
    r = BlobReads(server)
    yield r
    r.restore()


class Raw:
    def __init__(self, srv: ServerThread, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(srv.address("pop3"))
        self.buf = b""
        assert self.line().startswith(b"+OK")

    def recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed: " + repr(self.buf[-200:]))
        return chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += self.recv()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, command: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        return self.line()

    def login(self) -> None:
        assert self.cmd(b"USER " + BOB.encode()).startswith(b"+OK")
        assert self.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")

    def multiline(self) -> bytes:
        """The rest of a multi-line response (still stuffed) up to and with its ``.`` line."""
        while True:
            if self.buf.startswith(b".\r\n"):
                end = 3
                break
            found = self.buf.find(b"\r\n.\r\n")
            if found >= 0:
                end = found + 5
                break
            self.buf += self.recv()
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        out = self.buf
        self.buf = b""
        try:
            while chunk := self.sock.recv(1 << 20):
                out += chunk
        except OSError:  # reset: the server aborted the connection
            pass
        return out

    def close(self) -> None:
        self.sock.close()


def retr_via_poplib(srv: ServerThread, n: int) -> bytes:
    client = poplib.POP3(*srv.address("pop3"), timeout=30)
    client.user(BOB)
    client.pass_(PASSWORD)
    _, lines, octets = client.retr(n)
    client.quit()
    data = b"".join(line + b"\r\n" for line in lines)
    assert octets == len(data)
    return data


def body_via_imap(srv: ServerThread, n: int) -> bytes:
    imap = imaplib.IMAP4(*srv.address("imap"))
    imap.login(BOB, PASSWORD)
    imap.select("INBOX", readonly=True)
    _, data = imap.fetch(str(n), "(BODY.PEEK[])")
    imap.logout()
    parts = [part[1] for part in data if isinstance(part, tuple)]
    assert len(parts) == 1
    return bytes(parts[0])


# --- tiny ranges: every boundary -------------------------------------------------------------


def set_ranges(monkeypatch: pytest.MonkeyPatch, first: int, most: int) -> None:
    monkeypatch.setattr(pop3_edge, "CHUNK_SIZE", first)
    monkeypatch.setattr(pop3_edge, "MAX_CHUNK_SIZE", most)


@pytest.mark.parametrize(
    ("chunk", "most"), [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 7), (16, 16), (1, 8), (3, 64)]
)
def test_dot_lines_on_chunk_boundaries(
    server: ServerThread,
    reads: BlobReads,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    most: int,
) -> None:
    set_ranges(monkeypatch, chunk, most)
    deliver(server, DOT_LINES)
    r = Raw(server)
    r.login()
    assert r.cmd(b"RETR 1") == b"+OK %d octets" % len(DOT_LINES)
    assert r.multiline() == stuff_and_terminate(DOT_LINES)
    for top in (0, 1, 2, 5, 100):
        assert r.cmd(b"TOP 1 %d" % top) == b"+OK top of message follows"
        assert r.multiline() == stuff_and_terminate(DOT_LINES, top)
    assert r.cmd(b"QUIT").startswith(b"+OK")
    r.close()
    assert all(end is not None and end - start <= most for start, end in reads.ranges)
    assert retr_via_poplib(server, 1) == DOT_LINES == body_via_imap(server, 1)


def test_pipelined_commands_around_streamed_messages(
    server: ServerThread, reads: BlobReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies to commands pipelined after a RETR come after its last part, in order."""
    set_ranges(monkeypatch, 5, 5)
    deliver(server, DOT_LINES)
    second = DOT_LINES.replace(b"dots", b"more dots") + b"no final CRLF"
    deliver(server, second)
    r = Raw(server)
    r.sock.sendall(
        b"USER bob@example.test\r\nPASS secret\r\nRETR 1\r\nSTAT\r\nTOP 2 3\r\nRETR 2\r\n"
        b"NOOP\r\nQUIT\r\n"
    )
    assert r.line() == b"+OK send PASS"
    assert r.line().startswith(b"+OK maildrop has 2 messages")
    assert r.line() == b"+OK %d octets" % len(DOT_LINES)
    assert r.multiline() == stuff_and_terminate(DOT_LINES)
    assert r.line() == b"+OK 2 %d" % (len(DOT_LINES) + len(second))
    assert r.line() == b"+OK top of message follows"
    assert r.multiline() == stuff_and_terminate(second, 3)
    assert r.line() == b"+OK %d octets" % len(second)
    assert r.multiline() == stuff_and_terminate(second)
    assert r.line() == b"+OK"
    assert r.line().startswith(b"+OK POP3 server signing off")
    r.close()


# --- real sizes --------------------------------------------------------------------------------


def big_message(octets: int, header_octets: int = 0) -> bytes:
    """CRLF mail of about ``octets`` with a "." line every 7th line and a header of at least
    ``header_octets``."""
    head = b"From: a@alice.test\r\nSubject: big\r\n"
    n = 0
    while len(head) < header_octets:
        head += b"X-Filler-%d: %s\r\n" % (n, b"h" * 70)
        n += 1
    lines = []
    size = len(head) + 2
    i = 0
    while size < octets:
        line = b"%s line %d %s\r\n" % (b"." if i % 7 == 3 else b"", i, b"x" * (i % 90))
        lines.append(line)
        size += len(line)
        i += 1
    return head + b"\r\n" + b"".join(lines)


def test_retr_larger_than_the_chunk(server: ServerThread, reads: BlobReads) -> None:
    """With the production sizes: contiguous bounded ranges, doubling from the first size
    to the largest, the bytes unchanged."""
    first, most = pop3_edge.CHUNK_SIZE, pop3_edge.MAX_CHUNK_SIZE
    data = big_message(3 * most + 12345)
    deliver(server, data)
    r = Raw(server)
    r.login()
    assert r.cmd(b"RETR 1") == b"+OK %d octets" % len(data)
    assert r.multiline() == stuff_and_terminate(data)
    assert r.cmd(b"QUIT").startswith(b"+OK")
    r.close()
    sizes = [end - start for start, end in reads.ranges if end is not None]
    assert len(sizes) == len(reads.ranges) > 3
    assert reads.ranges[0] == (0, first)
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(reads.ranges))
    assert sizes == sorted(sizes) and max(sizes) == most
    assert all(b in (a * 2, most) for a, b in itertools.pairwise(sizes))
    assert reads.ranges[-2][1] < len(data) <= reads.ranges[-1][1]  # read up to the end, once
    assert retr_via_poplib(server, 1) == data  # un-stuffed by the client
    assert seen_flags(server) == [True]


def test_range_size_must_be_positive(server: ServerThread) -> None:
    """A zero first range would never make progress; refused when the session is made."""
    with pytest.raises(ValueError, match="chunk_size"):
        pop3_edge.Pop3Session(server.app, None, None, chunk_size=0)  # type: ignore[arg-type]


def test_message_of_exactly_the_chunk_size(
    server: ServerThread, reads: BlobReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = big_message(3000)
    set_ranges(monkeypatch, len(data), len(data))
    deliver(server, data)
    assert retr_via_poplib(server, 1) == data
    assert reads.ranges == [(0, len(data)), (len(data), 2 * len(data))]  # the end: empty


def test_top_reads_only_what_it_needs(server: ServerThread, reads: BlobReads) -> None:
    data = big_message(2_000_000)
    deliver(server, data)
    long_header = big_message(1_000_000, header_octets=3 * pop3_edge.TOP_FIRST_READ)
    deliver(server, long_header)
    r = Raw(server)
    r.login()
    for top in (0, 1, 20):
        assert r.cmd(b"TOP 1 %d" % top) == b"+OK top of message follows"
        assert r.multiline() == stuff_and_terminate(data, top)
    assert reads.ranges == [(0, pop3_edge.TOP_FIRST_READ)] * 3
    reads.ranges.clear()
    assert r.cmd(b"TOP 2 1") == b"+OK top of message follows"
    assert r.multiline() == stuff_and_terminate(long_header, 1)
    first = pop3_edge.TOP_FIRST_READ
    # doubling ranges until the header's end and one body line were found
    assert reads.ranges == [(0, first), (first, 3 * first), (3 * first, 7 * first)]
    assert reads.octets < len(long_header) // 2
    assert r.cmd(b"QUIT").startswith(b"+OK")
    r.close()
    assert seen_flags(server) == [False, False]  # TOP does not mark \Seen


def test_top_beyond_the_body_is_the_whole_message(
    server: ServerThread, reads: BlobReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_ranges(monkeypatch, 1000, 1000)
    data = big_message(10_000)
    lines = data.split(b"\r\n\r\n", 1)[1].count(b"\r\n")
    deliver(server, data)
    deliver(server, DOT_LINES[:-2])  # the last line without CRLF
    r = Raw(server)
    r.login()
    for top in (lines, lines + 1, 10**6):
        assert r.cmd(b"TOP 1 %d" % top) == b"+OK top of message follows"
        assert r.multiline() == stuff_and_terminate(data)
    assert r.cmd(b"TOP 2 999") == b"+OK top of message follows"
    assert r.multiline() == DOT_LINES.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    assert r.cmd(b"QUIT").startswith(b"+OK")
    r.close()


# --- failures while streaming ------------------------------------------------------------------


@pytest.mark.parametrize("error", [StorageError("disk on fire"), NotFound("no such blob")])
def test_storage_error_after_the_first_range_closes(
    server: ServerThread,
    reads: BlobReads,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: StorageError,
) -> None:
    """Once the +OK is out the only honest answer is to close: the client sees a response
    without its terminating line; nothing is deleted or marked seen."""
    caplog.set_level(logging.INFO, logger="letterbird")
    set_ranges(monkeypatch, 64, 64)
    data = big_message(1000)
    deliver(server, data)
    deliver(server, DOT_LINES)

    def fail_later(start: int) -> None:
        if start > 0:
            raise error

    reads.fail = fail_later
    r = Raw(server)
    r.login()
    assert r.cmd(b"DELE 2").startswith(b"+OK")
    assert r.cmd(b"RETR 1") == b"+OK %d octets" % len(data)
    rest = r.rest()
    assert rest == data[:64]  # the first range (no dot line in it), then the end
    r.close()
    wait_for(lambda: lock_free(server))
    assert "pop3.storage_error" in caplog.text
    assert seen_flags(server) == [False, False]


def test_client_that_stops_reading_is_disconnected(
    server: ServerThread,
    reads: BlobReads,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that stops reading mid-RETR: the server reads no further ranges once its
    output buffer is full, never buffers more than about two ranges, and drops the connection
    after the write timeout."""
    caplog.set_level(logging.INFO, logger="letterbird")
    chunk = 64 * 1024
    set_ranges(monkeypatch, chunk, chunk)
    cfg = server.app.config  # read per connection: this session's write timeout is short
    monkeypatch.setattr(
        server.app,
        "config",
        dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, write_timeout=0.5)),
    )
    writes: list[int] = []
    buffered: list[int] = []

    class RecordingStream(Stream):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # a fixed small socket buffer (no autotuning): the kernel absorbs little, so the
            # server's own buffering is what is measured, whatever the machine's tcp_wmem
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)

        async def write(self, data: bytes) -> None:
            writes.append(len(data))
            try:
                await super().write(data)
            finally:
                if not self.writer.is_closing():
                    buffered.append(self.writer.transport.get_write_buffer_size())

    monkeypatch.setattr(pop3_edge, "Stream", RecordingStream)
    data = big_message(4 * 1024 * 1024)
    deliver(server, data)
    r = Raw(server, rcvbuf=64 * 1024)
    r.login()
    r.sock.sendall(b"RETR 1\r\n")  # and read nothing more
    wait_for(lambda: "pop3.write_timeout" in caplog.text, timeout=60)
    wait_for(lambda: lock_free(server))
    assert 'end="write timeout"' in caplog.text
    received = r.rest()
    r.close()
    assert len(received) < len(data)
    # bounded ranges, and the reading stopped while the client did not read
    assert all(end is not None and end - start <= chunk for start, end in reads.ranges)
    assert reads.octets < len(data) // 2
    # one write is one stuffed range (a "." line every 7 lines adds little)
    assert max(writes) < chunk * 1.1
    # the transport buffer stays at asyncio's limit plus one range
    assert max(buffered) <= 65536 + max(writes)
    assert seen_flags(server) == [False]  # not all of it was sent
