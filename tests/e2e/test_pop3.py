"""POP3 end to end: a real server on 127.0.0.1 (``pop3`` with STLS and ``pop3s``), real clients
(Python poplib, raw sockets, ``curl pop3://``, ``fetchmail``), the messages checked byte for byte
against what storage holds."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import blob_of, sample_message
from serverutil import ServerThread, raw_sql, server_config, wait_for

from letterbird.config import Config
from letterbird.proto.pop3 import LoginRequested, ServerConnection
from letterbird.server.app import ConnectionInfo
from letterbird.server.pop3 import (
    core_config,
    unique_id,
)
from letterbird.storage import open_storage_for
from letterbird.storage.interface import AppendTarget, NotFound, StorageError

pytestmark = pytest.mark.e2e

BOB = "bob@example.test"
PASSWORD = "secret"
DOTTY = (
    b"From: Alice <alice@alice.test>\r\nTo: bob@example.test\r\nSubject: dots\r\n\r\n"
    b".\r\n..\r\n.leading dot\r\nmiddle . dot\r\n...\r\n.\r\nend\r\n"
)


def no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_server(tmp_path: Path, **limits: object) -> ServerThread:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"], pop3=["127.0.0.1:0"], pop3s=["127.0.0.1:0"])
    if limits:
        cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, **limits))
    return ServerThread(cfg)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with make_server(tmp_path) as srv:
        srv.add_user(BOB, PASSWORD)
        srv.add_user("carol@example.test", PASSWORD)
        yield srv


# --- helpers ----------------------------------------------------------------------------------


def deliver(srv: ServerThread, data: bytes, address: str = BOB) -> int:
    """Store a message straight into the INBOX; returns its UID."""

    async def run() -> int:
        account = await srv.app.directory.get_user(address)
        [(_, uid)] = await srv.app.storage.append(blob_of(data), [AppendTarget(account.id)])
        return uid

    return srv.call(run())


def smtp_deliver(srv: ServerThread, data: bytes, rcpt: str = BOB) -> None:
    host, port = srv.address("smtp")
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as s:
        assert s.sendmail("alice@alice.test", [rcpt], data) == {}


def stored(srv: ServerThread, address: str = BOB) -> list[tuple[str, int, bytes, frozenset[str]]]:
    """(unique-id, size, bytes, flags) of every INBOX message, in UID order."""

    async def run() -> list[tuple[str, int, bytes, frozenset[str]]]:
        account = await srv.app.directory.get_user(address)
        mb = await srv.app.storage.get_mailbox(account.id, "INBOX")
        assert mb is not None
        out = []
        for rec in await srv.app.storage.fetch_messages(mb.id):
            data = await srv.app.storage.read_blob(rec.blob_id)
            out.append((unique_id(mb.uidvalidity, rec.uid), rec.size, data, rec.flags))
        return out

    return srv.call(run())


def expunge_uid(srv: ServerThread, uid: int, address: str = BOB, *, lost: bool = False) -> None:
    """Remove a message as another session (IMAP EXPUNGE) would, and wait until the change
    reached the POP3 session's subscription (the bus publishes shortly after the commit
    returns, from the SQLite writer thread)."""

    async def run() -> int:
        account = await srv.app.directory.get_user(address)
        mb = await srv.app.storage.get_mailbox(account.id, "INBOX")
        assert mb is not None
        await srv.app.storage.delete_messages(mb.id, [uid])
        return int(account.id)

    account_id = srv.call(run())

    def delivered() -> bool:
        subs = list(srv.app.storage.bus._subs.get(account_id, ()))
        if lost:  # the subscription must have overflowed (the event was dropped)
            return bool(subs) and all(sub.overflowed for sub in subs)
        return bool(subs) and all(
            any(ev.kind.value == "expunge" for ev in list(sub._queue._queue)) for sub in subs
        )

    wait_for(delivered)


def pop(srv: ServerThread, user: str | None = BOB) -> poplib.POP3:
    host, port = srv.address("pop3")
    client = poplib.POP3(host, port, timeout=10)
    if user is not None:
        client.user(user)
        client.pass_(PASSWORD)
    return client


def retr_bytes(client: poplib.POP3, n: int) -> bytes:
    _, lines, _ = client.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


class Raw:
    """A raw POP3 client socket, reading replies line by line."""

    def __init__(self, srv: ServerThread, key: str = "pop3") -> None:
        self.sock: socket.socket = socket.create_connection(srv.address(key), timeout=10)
        if key == "pop3s":
            self.sock = no_verify().wrap_socket(self.sock)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed: " + repr(self.buf))
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.line()

    def body(self) -> list[bytes]:
        """The lines of a multi-line response after its status line (still dot-stuffed)."""
        lines = []
        while (line := self.line()) != b".":
            lines.append(line)
        return lines

    def login(self, user: str = BOB, password: str = PASSWORD) -> bytes:
        assert self.line().startswith(b"+OK")
        assert self.cmd(b"USER " + user.encode()).startswith(b"+OK")
        return self.cmd(b"PASS " + password.encode())

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def lock_free(srv: ServerThread, address: str = BOB) -> bool:
    account = srv.call(srv.app.directory.get_user(address))

    async def probe() -> bool:
        lock = await srv.app.storage.maildrop_lock(account.id)
        if lock is None:
            return False
        async with lock:
            return True

    return srv.call(probe())


# --- poplib -----------------------------------------------------------------------------------


def test_poplib_session(server: ServerThread) -> None:
    smtp_deliver(server, sample_message(1))
    deliver(server, sample_message(2))
    deliver(server, DOTTY)
    msgs = stored(server)
    assert len(msgs) == 3
    client = pop(server)
    count, octets = client.stat()
    assert (count, octets) == (3, sum(size for _, size, _, _ in msgs))
    _, listing, _ = client.list()
    assert listing == [b"%d %d" % (i + 1, size) for i, (_, size, _, _) in enumerate(msgs)]
    assert client.list(2).split()[1:] == [b"2", str(msgs[1][1]).encode()]
    _, uidl, _ = client.uidl()
    assert uidl == [f"{i + 1} {uid}".encode() for i, (uid, _, _, _) in enumerate(msgs)]
    for i, (_, size, data, _) in enumerate(msgs):
        assert len(data) == size  # sizes are the stored CRLF sizes
        assert retr_bytes(client, i + 1) == data
    _, top, _ = client.top(2, 0)
    header = msgs[1][2].split(b"\r\n\r\n")[0]
    assert b"\r\n".join(top) == header + b"\r\n"
    _, top1, _ = client.top(2, 1)
    assert top1[-1] == b"Hello Bob. #2"
    assert client.dele(1).startswith(b"+OK")
    assert client.stat() == (2, octets - msgs[0][1])
    assert client.rset().startswith(b"+OK")
    assert client.stat() == (3, octets)
    client.dele(2)
    assert client.noop().startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="already deleted"):
        client.retr(2)
    assert len(stored(server)) == 3  # nothing removed before QUIT
    assert client.quit().startswith(b"+OK")
    after = stored(server)
    assert [m[0] for m in after] == [msgs[0][0], msgs[2][0]]
    # RETR marked the retrieved messages \Seen (written when the session ended)
    assert all("\\Seen" in flags for _, _, _, flags in after)


def test_capa(server: ServerThread) -> None:
    client = pop(server, user=None)
    caps = client.capa()
    for cap in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
        assert cap in caps
    assert caps["SASL"] == ["PLAIN", "LOGIN"]
    assert caps["IMPLEMENTATION"] == ["Letterbird"]
    client.quit()
    host, port = server.address("pop3s")
    s = poplib.POP3_SSL(host, port, context=no_verify(), timeout=10)
    caps = s.capa()
    assert "STLS" not in caps and "USER" in caps
    s.quit()


def test_stls_and_pop3s(server: ServerThread) -> None:
    deliver(server, DOTTY)
    [(_, _, data, _)] = stored(server)
    client = pop(server, user=None)
    assert client.stls(context=no_verify()).startswith(b"+OK")
    assert "STLS" not in client.capa()
    client.user(BOB)
    client.pass_(PASSWORD)
    assert retr_bytes(client, 1) == data
    client.quit()
    host, port = server.address("pop3s")
    s = poplib.POP3_SSL(host, port, context=no_verify(), timeout=10)
    s.user(BOB)
    s.pass_(PASSWORD)
    assert retr_bytes(s, 1) == data
    with pytest.raises(poplib.error_proto):
        s._shortcmd("STLS")  # already under TLS (and not in AUTHORIZATION state)
    s.quit()


def test_stls_discards_pipelined_plaintext(server: ServerThread) -> None:
    """CVE-2011-0411: commands sent after STLS in the same packet must not be executed."""
    r = Raw(server)
    r.line()
    r.send(b"STLS\r\nUSER " + BOB.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert r.line().startswith(b"+OK")
    tls = no_verify().wrap_socket(r.sock)
    tls.sendall(b"STAT\r\n")
    assert tls.recv(4096).startswith(b"-ERR")  # not logged in: the USER/PASS were dropped
    tls.close()


def test_auth_plain_and_login_raw(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    r = Raw(server)
    r.line()
    creds = base64.b64encode(b"\x00" + BOB.encode() + b"\x00" + PASSWORD.encode())
    assert r.cmd(b"AUTH PLAIN " + creds).startswith(b"+OK maildrop has 1 messages")
    assert r.cmd(b"STAT").startswith(b"+OK 1 ")
    assert r.cmd(b"QUIT").startswith(b"+OK")
    r = Raw(server)
    r.line()
    assert r.cmd(b"AUTH PLAIN") == b"+ "
    assert r.cmd(creds).startswith(b"+OK")
    r.cmd(b"QUIT")
    # an authorization identity other than the user is refused
    r = Raw(server)
    r.line()
    other = base64.b64encode(b"carol@example.test\x00" + BOB.encode() + b"\x00" + PASSWORD.encode())
    assert r.cmd(b"AUTH PLAIN " + other).startswith(b"-ERR [AUTH]")
    same = base64.b64encode(BOB.upper().encode() + b"\x00" + BOB.encode() + b"\x00" + b"secret")
    assert r.cmd(b"AUTH PLAIN " + same).startswith(b"+OK")
    r.cmd(b"QUIT")
    r = Raw(server)
    r.line()
    assert r.cmd(b"AUTH LOGIN").startswith(b"+ ")
    assert r.cmd(base64.b64encode(BOB.encode())).startswith(b"+ ")
    assert r.cmd(base64.b64encode(PASSWORD.encode())).startswith(b"+OK")
    r.cmd(b"QUIT")


# --- the maildrop -----------------------------------------------------------------------------


def test_uidl_stable_across_sessions(server: ServerThread) -> None:
    for n in range(4):
        deliver(server, sample_message(n))
    client = pop(server)
    first = client.uidl()[1]
    client.dele(2)
    client.quit()
    client = pop(server)
    second = client.uidl()[1]
    client.quit()
    ids = [line.split()[1] for line in first]
    assert [line.split()[1] for line in second] == [ids[0], ids[2], ids[3]]
    account = server.call(server.app.directory.get_user(BOB))
    mb = server.call(server.app.storage.get_mailbox(account.id, "INBOX"))
    assert ids[0] == f"{mb.uidvalidity}.1".encode()


def test_deletions_only_at_quit_not_on_drop(server: ServerThread) -> None:
    for n in range(3):
        deliver(server, sample_message(n))
    r = Raw(server)
    assert r.login().startswith(b"+OK")
    assert r.cmd(b"DELE 1").startswith(b"+OK")
    assert r.cmd(b"DELE 3").startswith(b"+OK")
    r.close()  # dropped: no UPDATE state
    wait_for(lambda: lock_free(server))
    assert len(stored(server)) == 3
    client = pop(server)  # the lock was released
    client.dele(1)
    client.dele(3)
    assert len(stored(server)) == 3
    assert client.quit() == b"+OK POP3 server signing off (1 messages left)"
    assert len(stored(server)) == 1
    assert lock_free(server)
    client = pop(server)
    client.dele(1)
    assert client.quit() == b"+OK POP3 server signing off (maildrop empty)"
    assert stored(server) == []


def test_second_login_in_use(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    first = pop(server)
    r = Raw(server)
    assert r.login().startswith(b"-ERR [IN-USE]")
    other = pop(server, user="carol@example.test")  # another maildrop is not locked
    other.quit()
    first.quit()
    assert r.cmd(b"PASS " + PASSWORD.encode()).startswith(b"-ERR")  # PASS needs USER first
    assert r.cmd(b"USER " + BOB.encode()).startswith(b"+OK")
    assert r.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
    r.cmd(b"QUIT")


def test_expunged_between_list_and_retr(server: ServerThread) -> None:
    uids = [deliver(server, sample_message(n)) for n in range(3)]
    deliver(server, sample_message(1), "carol@example.test")  # the blob outlives bob's copy
    msgs = stored(server)
    client = pop(server)
    assert len(client.list()[1]) == 3
    expunge_uid(server, uids[1])  # as an IMAP session would
    with pytest.raises(poplib.error_proto, match="removed by another session"):
        client.retr(2)
    with pytest.raises(poplib.error_proto, match="removed by another session"):
        client.top(2, 0)
    assert retr_bytes(client, 3) == msgs[2][2]
    client.dele(2)  # deleting a vanished message is harmless
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    assert [m[0] for m in stored(server)] == [msgs[2][0]]


def test_expunge_detected_after_lost_change_events(server: ServerThread) -> None:
    """A subscriber that overflowed asks the database instead of trusting its events."""
    uids = [deliver(server, sample_message(n)) for n in range(2)]
    deliver(server, sample_message(0), "carol@example.test")  # the blob outlives bob's copy
    msgs = stored(server)
    server.app.storage.bus._queue_size = 1
    try:
        client = pop(server)
        deliver(server, sample_message(9))  # fills the session's one-event queue
        expunge_uid(server, uids[0], lost=True)  # the subscription overflows
    finally:
        server.app.storage.bus._queue_size = 10000
    with pytest.raises(poplib.error_proto, match="removed by another session"):
        client.retr(1)
    assert retr_bytes(client, 2) == msgs[1][2]
    assert client.stat()[0] == 2  # the message that arrived meanwhile is not shown
    client.quit()


def test_messages_arriving_during_session_not_shown(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    client = pop(server)
    smtp_deliver(server, sample_message(2))
    assert client.stat()[0] == 1
    assert len(client.uidl()[1]) == 1
    with pytest.raises(poplib.error_proto, match="no such message"):
        client.retr(2)
    client.quit()
    client = pop(server)
    assert client.stat()[0] == 2
    assert retr_bytes(client, 2) == stored(server)[1][2]
    client.quit()


def test_empty_maildrop_and_missing_inbox(server: ServerThread) -> None:
    client = pop(server)
    assert client.stat() == (0, 0)
    assert client.list()[1] == []
    client.quit()

    async def drop_inbox() -> None:
        account = await server.app.directory.get_user(BOB)
        mb = await server.app.storage.get_mailbox(account.id, "INBOX")
        assert mb is not None
        await raw_sql(server.app.storage, "DELETE FROM mailboxes WHERE id=?", mb.id)

    server.call(drop_inbox())
    client = pop(server)
    assert client.stat() == (0, 0)
    client.quit()


def test_dot_stuffing_round_trip(server: ServerThread) -> None:
    deliver(server, DOTTY)
    r = Raw(server)
    assert r.login().startswith(b"+OK")
    assert r.cmd(b"RETR 1") == b"+OK %d octets" % len(DOTTY)
    wire = r.body()
    body = DOTTY.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[:-1]
    assert wire[-len(body) :] == [b"." + line if line.startswith(b".") else line for line in body]
    r.cmd(b"QUIT")
    client = pop(server)
    assert retr_bytes(client, 1) == DOTTY
    client.quit()


def test_retr_marks_seen_top_does_not(tmp_path: Path) -> None:
    with make_server(tmp_path) as srv:
        srv.add_user(BOB, PASSWORD)
        for n in range(3):
            deliver(srv, sample_message(n))
        r = Raw(srv)
        r.login()
        r.cmd(b"TOP 1 0")
        r.body()
        r.cmd(b"RETR 2")
        r.body()
        r.close()  # the bytes of message 2 were sent: it is seen even without QUIT
        wait_for(lambda: "\\Seen" in stored(srv)[1][3])
        assert [("\\Seen" in flags) for _, _, _, flags in stored(srv)] == [False, True, False]
    cfg = dataclasses.replace(srv.config, pop3_marks_seen=False)
    with ServerThread(cfg) as srv2:
        client = pop(srv2)
        retr_bytes(client, 3)
        client.quit()
        assert [("\\Seen" in flags) for _, _, _, flags in stored(srv2)] == [False, True, False]


def test_large_message(server: ServerThread) -> None:
    line = b"x" * 998 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (8 * 1024 * 1024 // len(line)) + b".\r\n"
    deliver(server, big)
    client = pop(server)
    assert client.list(1).split()[2] == str(len(big)).encode()
    assert retr_bytes(client, 1) == big
    client.quit()


def test_pipelined_commands(server: ServerThread) -> None:
    for n in range(3):
        deliver(server, sample_message(n))
    msgs = stored(server)
    r = Raw(server)
    r.line()
    r.send(
        b"USER bob@example.test\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nDELE 2\r\nLIST\r\n"
        b"UIDL 3\r\nQUIT\r\n"
    )
    assert r.line() == b"+OK send PASS"
    assert r.line().startswith(b"+OK maildrop has 3 messages")
    assert r.line().startswith(b"+OK 3 ")
    assert r.line().startswith(b"+OK")
    assert b"".join(x + b"\r\n" for x in r.body()) == msgs[0][2]
    assert r.line() == b"+OK message 2 deleted"
    assert r.line().startswith(b"+OK 2 messages")
    assert r.body() == [b"1 %d" % msgs[0][1], b"3 %d" % msgs[2][1]]
    assert r.line() == b"+OK 3 " + msgs[2][0].encode()
    assert r.line().startswith(b"+OK POP3 server signing off")
    assert r.closed()
    assert len(stored(server)) == 2


# --- errors and limits --------------------------------------------------------------------------


def test_bad_input(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    r = Raw(server)
    r.line()
    assert r.cmd(b"STAT") == b"-ERR command not valid in this state"
    assert r.cmd(b"X" * 2000) == b"-ERR line too long"
    assert r.cmd(b"FOOBAR") == b"-ERR unknown command"
    assert r.cmd(b"USER " + BOB.encode()).startswith(b"+OK")
    assert r.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
    assert r.cmd(b"RETR 99") == b"-ERR no such message"
    assert r.cmd(b"LIST 0") == b"-ERR no such message"
    assert r.cmd(b"DELE abc") == b"-ERR syntax error"
    assert r.cmd(b"TOP 1 -1") == b"-ERR syntax error"
    assert r.cmd(b"RETR") == b"-ERR syntax error"
    assert r.cmd(b"USER x") == b"-ERR command not valid in this state"
    assert r.cmd(b"NOOP").startswith(b"+OK")  # still usable after errors
    for _ in range(2):  # errors 8 and 9 (out-of-range numbers do not count)
        r.cmd(b"BOGUS")
    # the 10th client error (pop3_errors) ends the session; nothing is applied
    assert r.cmd(b"BOGUS") == b"-ERR unknown command"
    assert r.line() == b"-ERR too many errors, closing connection"
    assert r.closed()
    wait_for(lambda: lock_free(server))


def test_wrong_password_and_throttling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="letterbird")
    cfg = server_config(tmp_path, pop3=["127.0.0.1:0"])
    cfg = dataclasses.replace(cfg, auth=dataclasses.replace(cfg.auth, max_failures=3))
    with ServerThread(cfg) as srv:
        srv.add_user(BOB, PASSWORD)
        r = Raw(srv)
        r.line()
        for _ in range(3):
            r.cmd(b"USER " + BOB.encode())
            assert r.cmd(b"PASS wrong-guess") == b"-ERR [AUTH] authentication failed"
        # locked out now: even the right password is answered [AUTH]
        r.cmd(b"USER " + BOB.encode())
        assert r.cmd(b"PASS " + PASSWORD.encode()) == b"-ERR [AUTH] authentication failed"
        r.cmd(b"USER nobody@example.test")
        assert r.cmd(b"PASS x").startswith(b"-ERR [AUTH]")
        r.cmd(b"QUIT")
    assert "pop3.auth_failed" in caplog.text and "reason=throttled" in caplog.text
    assert "wrong-guess" not in caplog.text and PASSWORD not in caplog.text


def test_plaintext_policy_of_the_edge(config: Config) -> None:
    """The plaintext-login decision the edge makes for each connection (DESIGN.md §10)."""

    def info(host: str, implicit_tls: bool = False) -> ConnectionInfo:
        return ConnectionInfo("pop3", host, 40000, "127.0.0.1", 110, implicit_tls)

    remote = core_config(config, info("192.0.2.7"))
    assert not remote.plaintext_allowed and not remote.tls_active and remote.tls_available
    assert core_config(config, info("127.0.0.1")).plaintext_allowed
    assert core_config(config, info("::1")).plaintext_allowed
    assert not core_config(config, info("2001:db8::1")).plaintext_allowed
    assert core_config(config, info("192.0.2.7", implicit_tls=True)).tls_active
    # what a remote client then sees: no USER/SASL before STLS, USER refused
    core = ServerConnection(remote)
    core.data_to_send()
    core.receive_data(b"CAPA\r\nUSER bob\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n")
    assert core.next_event() is not None
    out = core.data_to_send()
    assert b"STLS" in out and b"\r\nUSER\r\n" not in out and b"SASL" not in out
    assert out.count(b"-ERR [AUTH] plaintext authentication disallowed") == 2
    # over TLS the same remote client may log in
    core = ServerConnection(core_config(config, info("192.0.2.7", implicit_tls=True)))
    core.receive_data(b"USER bob\r\nPASS secret\r\n")
    assert isinstance(core.next_event(), LoginRequested)
    # limits come from the configuration; a line limit under RFC 2449's 255 is raised to it
    lim = dataclasses.replace(config.limits, pop3_line_length=100, pop3_errors=3)
    small = core_config(dataclasses.replace(config, limits=lim), info("127.0.0.1"))
    assert small.max_line_length == 255 and small.max_errors == 3


def test_idle_timeout(tmp_path: Path) -> None:
    with make_server(tmp_path, pop3_idle_timeout=0.5) as srv:
        srv.add_user(BOB, PASSWORD)
        deliver(srv, sample_message(1))
        r = Raw(srv)
        assert r.login().startswith(b"+OK")
        assert r.cmd(b"DELE 1").startswith(b"+OK")
        assert r.line() == b"-ERR autologout timer expired, closing connection"
        assert r.closed()
        wait_for(lambda: lock_free(srv))
        assert len(stored(srv)) == 1  # no UPDATE state after an autologout
        r = Raw(srv, "pop3s")
        r.line()
        assert r.line().startswith(b"-ERR autologout")
        r.close()


def test_connection_limit_per_ip(tmp_path: Path) -> None:
    with make_server(tmp_path, pop3_connections_per_ip=2) as srv:
        held = [Raw(srv), Raw(srv, "pop3s")]  # both listeners count together
        for h in held:
            assert h.line().startswith(b"+OK")
        extra = Raw(srv)
        assert extra.line() == b"-ERR [SYS/TEMP] too many connections from your address, try later"
        assert extra.closed()
        assert held[0].cmd(b"QUIT").startswith(b"+OK")
        wait_for(lambda: srv.app.connection_count("pop3") == 1)
        again = Raw(srv)
        assert again.line().startswith(b"+OK")
        for client in (*held, again):
            client.close()


def test_storage_errors_are_sys_temp(server: ServerThread) -> None:
    deliver(server, sample_message(1))
    deliver(server, sample_message(2))
    storage = server.app.storage

    async def failing(*a: object, **k: object) -> object:
        raise StorageError("disk on fire")

    real_list, real_meta, real_read, real_delete = (
        storage.list_messages,
        storage.fetch_meta,
        storage.read_blob,
        storage.delete_messages,
    )
    storage.list_messages = failing
    try:
        r = Raw(server)
        assert r.login() == b"-ERR [SYS/TEMP] temporary system problem, try later"
    finally:
        storage.list_messages = real_list
    assert lock_free(server)
    storage.fetch_meta = failing  # the second read of the snapshot
    try:
        assert r.cmd(b"USER " + BOB.encode()).startswith(b"+OK")
        assert r.cmd(b"PASS " + PASSWORD.encode()) == (
            b"-ERR [SYS/TEMP] temporary system problem, try later"
        )
    finally:
        storage.fetch_meta = real_meta
    assert lock_free(server)
    assert r.cmd(b"USER " + BOB.encode()).startswith(b"+OK")
    assert r.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
    assert r.cmd(b"DELE 1").startswith(b"+OK")
    storage.read_blob = failing
    try:
        r.send(b"STAT\r\nRETR 2\r\n")  # the pipelined STAT is still answered
        assert r.line().startswith(b"+OK 1 ")
        assert r.line() == b"-ERR [SYS/TEMP] temporary storage problem, try later"
        assert r.closed()
    finally:
        storage.read_blob = real_read
    wait_for(lambda: lock_free(server))
    assert len(stored(server)) == 2
    client = pop(server)
    client.dele(1)
    storage.delete_messages = failing
    try:
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            client.quit()
    finally:
        storage.delete_messages = real_delete
    assert len(stored(server)) == 2
    assert lock_free(server)


def test_more_storage_failures(server: ServerThread) -> None:
    """Failed flag writes do not fail QUIT; a vanished blob is a vanished message; a backend
    without delete_messages flags and expunges instead; a directory failure is [SYS/TEMP]."""
    for n in range(3):
        deliver(server, sample_message(n))
    storage = server.app.storage

    async def failing(*a: object, **k: object) -> object:
        raise StorageError("disk on fire")

    async def not_found(*a: object, **k: object) -> object:
        raise NotFound("no such blob")

    client = pop(server)
    retr_bytes(client, 1)
    storage.store_flags = failing
    storage.read_blob = not_found
    try:
        with pytest.raises(poplib.error_proto, match="removed by another session"):
            client.retr(2)
        assert client.quit().startswith(b"+OK")  # the \Seen mark is lost, QUIT is not
    finally:
        del storage.store_flags, storage.read_blob
    assert not any("\\Seen" in flags for _, _, _, flags in stored(server))
    storage.delete_messages = None
    try:
        client = pop(server)
        client.dele(1)
        client.dele(3)
        assert client.quit().startswith(b"+OK")
    finally:
        del storage.delete_messages
    assert len(stored(server)) == 1
    storage.find_account = failing
    try:
        r = Raw(server)
        assert r.login() == b"-ERR [SYS/TEMP] temporary system problem, try later"
        r.close()
    finally:
        del storage.find_account


def test_stls_handshake_failure(server: ServerThread) -> None:
    r = Raw(server)
    r.line()
    assert r.cmd(b"STLS").startswith(b"+OK")
    r.send(b"this is not a TLS ClientHello\r\n" * 20)
    assert r.closed()
    r = Raw(server)  # the server is fine
    assert r.login().startswith(b"+OK")
    r.close()


def test_server_shutdown_closes_sessions(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    with srv:
        srv.add_user(BOB, PASSWORD)
        deliver(srv, sample_message(1))
        r = Raw(srv)
        assert r.login().startswith(b"+OK")
        assert r.cmd(b"DELE 1").startswith(b"+OK")
        waiting = Raw(srv)
        assert waiting.line().startswith(b"+OK")
        # a session busy logging in finishes the login, then is told
        directory = srv.app.directory
        real_authenticate = directory.authenticate

        async def slow_authenticate(*args: object) -> object:
            await asyncio.sleep(0.5)
            return await real_authenticate(*args)

        directory.authenticate = slow_authenticate
        busy = Raw(srv)
        busy.line()
        busy.send(b"USER carol@example.test\r\nPASS secret\r\n")
        assert busy.line().startswith(b"+OK")
        time.sleep(0.1)
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 5  # idle sessions do not hold the shutdown
        assert r.line() == b"-ERR [SYS/TEMP] server shutting down, try later"
        assert r.closed()
        assert waiting.line().startswith(b"-ERR [SYS/TEMP] server shutting down")
        assert busy.line().startswith(b"-ERR [AUTH]")  # carol does not exist
        assert busy.line().startswith(b"-ERR [SYS/TEMP] server shutting down")
        assert busy.closed()

    async def count() -> int:
        storage = open_storage_for(srv.config)  # a fresh connection to what the server left
        await storage.open()
        try:
            account = await storage.find_account("bob", "example.test")
            assert account is not None
            mb = await storage.get_mailbox(account.id, "INBOX")
            assert mb is not None
            return len(await storage.list_messages(mb.id))
        finally:
            await storage.close()

    assert asyncio.run(count()) == 1  # the DELE was not applied


def test_log_lines(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="letterbird")
    deliver(server, sample_message(1))
    client = pop(server)
    retr_bytes(client, 1)
    client.dele(1)
    client.quit()
    wait_for(lambda: "pop3.disconnect" in caplog.text)
    text = caplog.text
    for name in ("pop3.connect", "pop3.login", "pop3.quit", "pop3.disconnect"):
        assert name in text
    assert "user=bob@example.test" in text and "deleted=1" in text and "retrieved=1" in text
    assert PASSWORD not in text and "Hello Bob" not in text


# --- real clients ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_list_and_retrieve(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="letterbird")
    deliver(server, sample_message(1))
    deliver(server, DOTTY)
    msgs = stored(server)
    host, port = server.address("pop3")
    base = ["curl", "-s", "--max-time", "20", "-u", f"{BOB}:{PASSWORD}"]
    listing = subprocess.run(
        [*base, f"pop3://{host}:{port}/"], capture_output=True, timeout=30, check=True
    ).stdout
    assert listing == b"".join(b"%d %d\r\n" % (i + 1, m[1]) for i, m in enumerate(msgs))
    for i, m in enumerate(msgs):
        out = subprocess.run(
            [*base, f"pop3://{host}:{port}/{i + 1}"], capture_output=True, timeout=30, check=True
        ).stdout
        assert out == m[2]
    # over STLS with curl's --ssl-reqd
    out = subprocess.run(
        [*base, "--ssl-reqd", "-k", f"pop3://{host}:{port}/1"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert out == msgs[0][2]
    assert "pop3.tls" in caplog.text
    wait_for(lambda: lock_free(server))


MDA = """\
import os, sys
folder = sys.argv[1]
n = len(os.listdir(folder))
with open(os.path.join(folder, "%06d" % n), "wb") as fh:
    fh.write(sys.stdin.buffer.read())
"""


def fetchmail(
    srv: ServerThread, home: Path, out: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    host, port = srv.address("pop3")
    mda = home / "mda.py"
    mda.write_text(MDA)
    out.mkdir(exist_ok=True)
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host}\nlogin {BOB}\npassword {PASSWORD}\n")
    netrc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    env.pop("FETCHMAILUSER", None)
    return subprocess.run(
        [
            "fetchmail", "--nodetach", "--nosyslog", "-f", "/dev/null",
            "--idfile", str(home / ".fetchids"), "-p", "POP3", "--port", str(port),
            "--user", BOB, "--invisible", "--mda", f"{sys.executable} {mda} {out}",
            *args, host,
        ],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def fetched(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(out.iterdir())]


def as_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail is not installed")
def test_fetchmail_keep_then_nokeep(
    server: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="letterbird")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    smtp_deliver(server, sample_message(1))
    smtp_deliver(server, DOTTY)
    deliver(server, sample_message(3))
    msgs = stored(server)
    # keep mode over STLS (fetchmail's default is to negotiate it when offered)
    p = fetchmail(server, home, tmp_path / "keep", "--keep", "--sslproto", "auto",
                  "--nosslcertck")  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pop3.tls" in caplog.text  # it did negotiate STLS
    # fetchmail hands the MDA LF line endings; otherwise the bytes are the stored ones
    assert fetched(tmp_path / "keep") == [as_lf(m[2]) for m in msgs]
    assert len(stored(server)) == 3
    # UIDL is stable: a second keep-mode poll finds nothing new (exit code 1: no mail)
    p = fetchmail(server, home, tmp_path / "keep", "--keep", "--sslproto", "")
    assert p.returncode == 1, p.stdout + p.stderr
    assert len(fetched(tmp_path / "keep")) == 3
    smtp_deliver(server, sample_message(4))
    msgs = stored(server)
    assert len(msgs) == 4
    # no-keep mode, plaintext on loopback: everything fetched and removed at QUIT
    p = fetchmail(server, home, tmp_path / "nokeep", "--nokeep", "--all", "--sslproto", "")
    assert p.returncode == 0, p.stdout + p.stderr
    assert fetched(tmp_path / "nokeep") == [as_lf(m[2]) for m in msgs]
    assert stored(server) == []
    wait_for(lambda: lock_free(server))
