"""IMAP end to end: a real server on 127.0.0.1 (``imap`` with STARTTLS and ``imaps``), real
clients (Python imaplib, imapclient, raw sockets for exact bytes), results checked against what
storage holds. Concurrency (two sessions, IDLE woken by SMTP) is in test_imap_concurrency.py."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import imaplib
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imapclient
import imapclient.imapclient as imapclient_module
import pytest
from conftest import blob_of, sample_message
from hypothesis import given, settings
from hypothesis import strategies as st
from serverutil import ServerThread, raw_sql, server_config, wait_for

from letterbird.config import Config
from letterbird.imap.fetch import render as fetch_render
from letterbird.imap.session import (
    _HANDLERS,
    _VALID_STATES,
    BASE_CAPABILITIES,
    INFO_CACHE,
    InfoCache,
    StateItems,
    list_match,
)
from letterbird.mime import parse_message
from letterbird.proto.imap.capabilities import PARSED
from letterbird.proto.imap.fetchatt import FetchAtt
from letterbird.proto.imap.parser import COMMANDS
from letterbird.server.app import PROTOCOLS, ConnectionInfo
from letterbird.server.imap import handle_imap
from letterbird.storage.interface import AppendTarget, MessageRecord

pytestmark = pytest.mark.e2e

BOB = "bob@example.test"
CAROL = "carol@example.test"
PASSWORD = "secret"
BASE_CAPS = (
    "IMAP4rev1 LITERAL+ SASL-IR IDLE UIDPLUS MOVE NAMESPACE ENABLE SPECIAL-USE UNSELECT CHILDREN ID"
)

# multipart/mixed: 1 text/plain, 2 message/rfc822 whose body is multipart/alternative
# (2.1 text/plain, 2.2 text/html), 3 application/octet-stream (base64).
NESTED = (
    b"From: Alice <alice@alice.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= nested\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <nested@alice.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob, caf\xc3\xa9 needle.\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: Carol <carol@carol.test>\r\n"
    b"Subject: inner\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"inner plain\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>inner html</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream; name=blob.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--outer--\r\n"
    b"epilogue\r\n"
)
INNER_HEADER = (
    b"From: Carol <carol@carol.test>\r\nSubject: inner\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
)


# --- helpers ----------------------------------------------------------------------------------


def no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imap_config(tmp_path: Path, **limits: Any) -> Config:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"], imap=["127.0.0.1:0"], imaps=["127.0.0.1:0"])
    if limits:
        cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, **limits))
    return cfg


def make_server(tmp_path: Path, **limits: Any) -> ServerThread:
    return ServerThread(imap_config(tmp_path, **limits))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with make_server(tmp_path) as srv:
        srv.add_user(BOB, PASSWORD)
        srv.add_user(CAROL, PASSWORD)
        yield srv


def deliver(
    srv: ServerThread,
    data: bytes,
    address: str = BOB,
    mailbox: str = "INBOX",
    flags: frozenset[str] = frozenset(),
) -> int:
    """Store a message straight into a mailbox (as a delivery would); returns its UID."""

    async def run() -> int:
        account = await srv.app.directory.get_user(address)
        target = AppendTarget(account.id, mailbox, flags=flags)
        [(_, uid)] = await srv.app.storage.append(blob_of(data), [target])
        return uid

    return srv.call(run())


def smtp_deliver(srv: ServerThread, data: bytes, rcpt: str = BOB) -> None:
    host, port = srv.address("smtp")
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as s:
        assert s.sendmail("alice@alice.test", [rcpt], data) == {}


def stored(
    srv: ServerThread, address: str = BOB, mailbox: str = "INBOX"
) -> list[tuple[int, frozenset[str], bytes]]:
    """(uid, flags, bytes) of every message of a mailbox, in UID order."""

    async def run() -> list[tuple[int, frozenset[str], bytes]]:
        account = await srv.app.directory.get_user(address)
        mb = await srv.app.storage.get_mailbox(account.id, mailbox)
        assert mb is not None
        out = []
        for rec in await srv.app.storage.fetch_messages(mb.id):
            out.append((rec.uid, rec.flags, await srv.app.storage.read_blob(rec.blob_id)))
        return out

    return srv.call(run())


def mailbox_names(srv: ServerThread, address: str = BOB) -> list[str]:
    async def run() -> list[str]:
        account = await srv.app.directory.get_user(address)
        return [mb.name for mb in await srv.app.storage.list_mailboxes(account.id)]

    return srv.call(run())


class Wire:
    """A raw IMAP client: exact bytes in, response lines (literals inlined) out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    def connect(cls, srv: ServerThread, key: str = "imap") -> Wire:
        sock = socket.create_connection(srv.address(key), timeout=10)
        if key == "imaps":
            sock = no_verify().wrap_socket(sock)
        return cls(sock)

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed; unread: " + repr(self.buf))
        self.buf += chunk

    def line(self) -> bytes:
        """One response line; a literal's octets are inlined after its ``{n}`` marker."""
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        m = re.search(rb"\{(\d+)\}$", line)
        if m:
            size = int(m.group(1))
            while len(self.buf) < size:
                self._fill()
            line += b"\r\n" + self.buf[:size]
            self.buf = self.buf[size:]
            line += self.line()
        return line

    def until(self, tag: str) -> list[bytes]:
        """Lines up to and including the tagged reply for ``tag``."""
        out = []
        prefix = tag.encode() + b" "
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(prefix):
                return out

    def cmd(self, command: str | bytes, tag: str = "t") -> list[bytes]:
        raw = command.encode() if isinstance(command, str) else command
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return self.until(tag)

    def ok(self, command: str | bytes, tag: str = "t") -> list[bytes]:
        lines = self.cmd(command, tag)
        assert lines[-1].startswith(tag.encode() + b" OK"), lines
        return lines[:-1]

    def login(self, user: str = BOB) -> None:
        self.ok(f"LOGIN {user} {PASSWORD}", "login")

    def closed(self, timeout: float = 10.0) -> bool:
        """Whether the server closed the connection (reading everything it still sent)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wire(server: ServerThread) -> Iterator[Wire]:
    w = Wire.connect(server)
    assert w.line().startswith(b"* OK [CAPABILITY ")
    w.login()
    yield w
    w.close()


def imap(srv: ServerThread, user: str | None = BOB) -> imaplib.IMAP4:
    host, port = srv.address("imap")
    m = imaplib.IMAP4(host, port, timeout=30)
    if user is not None:
        m.login(user, PASSWORD)
    return m


# --- greeting, capabilities, login --------------------------------------------------------


def test_greeting_and_capabilities_on_loopback(server: ServerThread) -> None:
    w = Wire.connect(server)
    greeting = w.line()
    assert greeting == (
        b"* OK [CAPABILITY " + BASE_CAPS.encode() + b" STARTTLS AUTH=PLAIN] "
        b"Letterbird IMAP4rev1 server ready"
    )
    assert w.ok("CAPABILITY") == [b"* CAPABILITY " + BASE_CAPS.encode() + b" STARTTLS AUTH=PLAIN"]
    lines = w.cmd(f"LOGIN {BOB} {PASSWORD}")
    assert lines == [b"t OK [CAPABILITY " + BASE_CAPS.encode() + b"] Logged in"]
    assert w.ok("CAPABILITY") == [b"* CAPABILITY " + BASE_CAPS.encode()]
    assert w.cmd("LOGOUT") == [b"* BYE Letterbird logging out", b"t OK LOGOUT completed"]
    assert w.closed()


def test_every_parsed_command_has_a_handler() -> None:
    assert set(_HANDLERS) == set(_VALID_STATES) == set(COMMANDS)
    assert set(BASE_CAPABILITIES) <= set(PARSED)  # nothing advertised the parser cannot read


def test_imaps_has_no_starttls(server: ServerThread) -> None:
    w = Wire.connect(server, "imaps")
    assert w.line() == (
        b"* OK [CAPABILITY " + BASE_CAPS.encode() + b" AUTH=PLAIN] "
        b"Letterbird IMAP4rev1 server ready"
    )
    w.login()
    assert w.cmd("STARTTLS") == [b"t BAD STARTTLS not allowed now"]
    w.close()
    host, port = server.address("imaps")
    with imaplib.IMAP4_SSL(host, port, ssl_context=no_verify(), timeout=30) as m:
        assert m.login(BOB, PASSWORD)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"


def test_login_wrong_password_and_unknown_user(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    assert w.cmd(f"LOGIN {BOB} wrong") == [b"t NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert w.cmd("LOGIN nobody@example.test wrong") == [
        b"t NO [AUTHENTICATIONFAILED] Authentication failed"
    ]
    assert w.cmd("SELECT INBOX") == [b"t BAD SELECT not allowed now"]
    w.login()  # still possible on the same connection
    assert w.cmd(f"LOGIN {BOB} {PASSWORD}") == [b"t BAD LOGIN not allowed now"]


def test_quoted_and_literal_login(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    w.send(b'a LOGIN "bob@example.test" {6}\r\n')
    assert w.line() == b"+ Ready for literal data"
    w.send(b"secret\r\n")
    assert w.until("a")[-1].startswith(b"a OK")


def test_wrong_passwords_are_throttled(tmp_path: Path) -> None:
    cfg = imap_config(tmp_path)
    cfg = dataclasses.replace(cfg, auth=dataclasses.replace(cfg.auth, max_failures=3))
    with ServerThread(cfg) as srv:
        srv.add_user(BOB, PASSWORD)
        w = Wire.connect(srv)
        w.line()
        for _ in range(3):
            assert w.cmd(f"LOGIN {BOB} wrong")[-1].startswith(b"t NO [AUTHENTICATIONFAILED]")
        # locked out now: even the right password is refused, with the same answer
        assert w.cmd(f"LOGIN {BOB} {PASSWORD}") == [
            b"t NO [AUTHENTICATIONFAILED] Authentication failed"
        ]


def test_authenticate_plain_with_sasl_ir(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    token = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
    lines = w.cmd(f"AUTHENTICATE PLAIN {token}")
    assert lines[-1].startswith(b"t OK [CAPABILITY IMAP4rev1")
    assert w.ok("SELECT INBOX")


def test_authenticate_plain_with_continuation(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    w.send(b"a AUTHENTICATE PLAIN\r\n")
    assert w.line() == b"+ "
    w.send(base64.b64encode(f"{BOB}\0{BOB}\0{PASSWORD}".encode()) + b"\r\n")
    assert w.line().startswith(b"a OK [CAPABILITY")
    # imaplib's own AUTHENTICATE (continuation form)
    m = imap(server, None)
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{BOB}\0{PASSWORD}".encode())
    assert typ == "OK"
    assert m.select("INBOX")[0] == "OK"


def test_authenticate_failures(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    w.send(b"a AUTHENTICATE PLAIN\r\n")
    assert w.line() == b"+ "
    w.send(b"*\r\n")
    assert w.line() == b"a BAD Authentication cancelled"
    w.send(b"b AUTHENTICATE PLAIN\r\n")
    w.line()
    w.send(b"!!!not base64\r\n")
    assert w.line().startswith(b"b BAD Invalid SASL PLAIN response")
    bad = base64.b64encode(f"\0{BOB}\0wrong".encode()).decode()
    assert w.cmd(f"AUTHENTICATE PLAIN {bad}") == [
        b"t NO [AUTHENTICATIONFAILED] Authentication failed"
    ]
    other = base64.b64encode(f"{CAROL}\0{BOB}\0{PASSWORD}".encode()).decode()
    assert w.cmd(f"AUTHENTICATE PLAIN {other}") == [
        b"t NO [AUTHORIZATIONFAILED] Not authorized to act as that user"
    ]
    assert w.cmd("AUTHENTICATE CRAM-MD5") == [b"t NO [CANNOT] Unsupported authentication mechanism"]
    assert w.cmd("AUTHENTICATE PLAIN not*base64") == [b"t BAD initial response is not base64"]


def test_starttls_then_login(server: ServerThread) -> None:
    m = imap(server, None)
    assert "STARTTLS" in m.capabilities
    assert m.starttls(no_verify())[0] == "OK"
    assert "STARTTLS" not in m.capabilities
    assert m.login(BOB, PASSWORD)[0] == "OK"
    assert m.select("INBOX")[0] == "OK"
    m.logout()


def test_starttls_discards_pipelined_plaintext(server: ServerThread) -> None:
    """CVE-2011-0411: a command pipelined after STARTTLS must not run inside TLS."""
    w = Wire.connect(server)
    w.line()
    w.send(b"a STARTTLS\r\nb LOGIN bob@example.test secret\r\n")
    assert w.line() == b"a OK Begin TLS negotiation now"
    tls = Wire(no_verify().wrap_socket(w.sock))
    # Had "b LOGIN" survived, its reply would come first; the session is still anonymous.
    assert tls.cmd("CAPABILITY", "c")[0].endswith(b"AUTH=PLAIN")
    assert tls.cmd("SELECT INBOX", "d") == [b"d BAD SELECT not allowed now"]
    assert tls.cmd("STARTTLS", "e") == [b"e BAD TLS is already active"]


def test_failed_tls_handshake_closes(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    assert w.cmd("STARTTLS") == [b"t OK Begin TLS negotiation now"]
    w.send(b"this is not a TLS ClientHello\r\n" * 10)
    assert w.closed()


def run_as_peer(srv: ServerThread, peer: str) -> socket.socket:
    """Serve one IMAP connection whose client address is ``peer`` (over a socket pair)."""
    mine, theirs = socket.socketpair()

    info = ConnectionInfo("imap", peer, 40000, "192.0.2.1", 143, False)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.app.run_connection(dataclasses.replace(spec, handler=handler), reader, writer)

    async def handler(app: Any, reader: Any, writer: Any, _info: ConnectionInfo) -> None:
        await handle_imap(app, reader, writer, info)  # with the pretended client address

    spec = PROTOCOLS["imap"]

    async def start() -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            # a client_connected_cb makes this the server side (for STARTTLS)
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(), serve)

        await loop.connect_accepted_socket(protocol, theirs)

    srv.call(start())
    mine.settimeout(10)
    return mine


def test_logindisabled_for_remote_clients_before_tls(server: ServerThread) -> None:
    w = Wire(run_as_peer(server, "192.0.2.7"))
    greeting = w.line()
    assert b"LOGINDISABLED" in greeting and b"AUTH=PLAIN" not in greeting
    assert w.cmd(f"LOGIN {BOB} {PASSWORD}") == [
        b"t NO [PRIVACYREQUIRED] Plaintext login is disabled: use STARTTLS"
    ]
    token = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
    assert w.cmd(f"AUTHENTICATE PLAIN {token}")[-1].startswith(b"t NO [PRIVACYREQUIRED]")
    assert w.cmd("STARTTLS") == [b"t OK Begin TLS negotiation now"]
    tls = Wire(no_verify().wrap_socket(w.sock))
    caps = tls.ok("CAPABILITY")[0]
    assert b"LOGINDISABLED" not in caps and b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps
    tls.login()
    assert tls.ok("SELECT INBOX")
    tls.close()


# --- mailboxes ---------------------------------------------------------------------------------


def test_list_special_use_children_and_wildcards(wire: Wire, server: ServerThread) -> None:
    assert wire.ok('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""']
    assert wire.ok('LIST "" *') == [
        b'* LIST (\\HasNoChildren) "/" INBOX',
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive',
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
        b'* LIST (\\HasNoChildren \\Junk) "/" Junk',
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
        b'* LIST (\\HasNoChildren \\Trash) "/" Trash',
    ]
    wire.ok("CREATE Projects/2026/Q1")
    wire.ok("CREATE Projects/Old/")  # a trailing delimiter is dropped (RFC 3501 §6.3.3)
    assert "Projects/Old" in mailbox_names(server)
    assert wire.ok('LIST "" %') == [
        b'* LIST (\\HasNoChildren) "/" INBOX',
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive',
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
        b'* LIST (\\HasNoChildren \\Junk) "/" Junk',
        b'* LIST (\\HasChildren) "/" Projects',
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
        b'* LIST (\\HasNoChildren \\Trash) "/" Trash',
    ]
    assert wire.ok("LIST Projects/ %") == [
        b'* LIST (\\HasChildren) "/" Projects/2026',
        b'* LIST (\\HasNoChildren) "/" Projects/Old',
    ]
    assert wire.ok('LIST "" Projects/*') == [
        b'* LIST (\\HasChildren) "/" Projects/2026',
        b'* LIST (\\HasNoChildren) "/" Projects/2026/Q1',
        b'* LIST (\\HasNoChildren) "/" Projects/Old',
    ]
    assert wire.ok('LIST "" inbox') == [b'* LIST (\\HasNoChildren) "/" INBOX']
    assert wire.ok('LIST "" nothing*') == []
    # A parent removed while its children stay is listed as a hierarchy level only.
    wire.ok("DELETE Projects/2026")
    assert wire.ok('LIST "" Projects/%') == [
        b'* LIST (\\Noselect \\HasChildren) "/" Projects/2026',
        b'* LIST (\\HasNoChildren) "/" Projects/Old',
    ]
    assert wire.ok('LIST (SPECIAL-USE) "" *') == [
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive',
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
        b'* LIST (\\HasNoChildren \\Junk) "/" Junk',
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
        b'* LIST (\\HasNoChildren \\Trash) "/" Trash',
    ]


def _reference_match(pattern: str, name: str) -> bool:
    regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


@settings(deadline=None, max_examples=500)
@given(
    st.text(alphabet="ab/*%", max_size=10),
    st.text(alphabet="ab/", max_size=10),
)
def test_list_match_agrees_with_a_regex(pattern: str, name: str) -> None:
    assert list_match(pattern, name) == _reference_match(pattern, name)


def test_hostile_list_pattern_is_cheap(wire: Wire) -> None:
    wire.ok("CREATE " + "a" * 200)
    started = time.monotonic()
    assert wire.ok('LIST "" "' + "*a%" * 300 + 'b"') == []
    assert wire.ok('LIST "" "' + "x" * 600 + '*"') == []  # longer than any name
    assert time.monotonic() - started < 30  # a regex would backtrack for ages
    assert list_match("*a" * 100 + "%", "a" * 200)


def test_modified_utf7_names(wire: Wire, server: ServerThread) -> None:
    wire.ok("CREATE Entw&APw-rfe/&ZeVnLIqe-")
    assert "Entwürfe/日本語" in mailbox_names(server)
    assert wire.ok('LIST "" Entw&APw-rfe/*') == [
        b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe/&ZeVnLIqe-'
    ]
    (reply,) = wire.cmd("CREATE &Jjo-bad&")
    assert reply.startswith(b"t BAD mailbox name is not valid modified UTF-7")
    with imapclient.IMAPClient(*server.address("imap"), ssl=False, timeout=30) as c:
        c.login(BOB, PASSWORD)
        assert c.folder_exists("Entwürfe/日本語")
        c.create_folder("Ünïcødé")
        assert any(name == "Ünïcødé" for _, _, name in c.list_folders())
        c.rename_folder("Ünïcødé", "Plain")
        assert c.folder_exists("Plain") and not c.folder_exists("Ünïcødé")


def test_create_delete_rename_errors(wire: Wire, server: ServerThread) -> None:
    assert wire.cmd("CREATE INBOX") == [b"t NO [ALREADYEXISTS] Mailbox already exists"]
    assert wire.cmd("CREATE Sent") == [b"t NO [ALREADYEXISTS] Mailbox already exists"]
    assert wire.cmd('CREATE "a//b"')[-1].startswith(b"t NO [CANNOT] Invalid mailbox name")
    assert wire.cmd("DELETE INBOX") == [b"t NO [CANNOT] INBOX cannot be deleted"]
    assert wire.cmd("DELETE nosuch") == [b"t NO [NONEXISTENT] Mailbox does not exist"]
    assert wire.cmd("RENAME nosuch other") == [b"t NO [NONEXISTENT] Mailbox does not exist"]
    assert wire.cmd("RENAME Sent Trash") == [b"t NO [ALREADYEXISTS] Mailbox already exists"]
    assert wire.cmd("RENAME Sent Sent/sub") == [
        b"t NO [CANNOT] Cannot rename a mailbox into itself"
    ]
    wire.ok("CREATE a/b")
    wire.ok("RENAME a x/y/z")  # the children move along, missing parents are created
    names = mailbox_names(server)
    assert {"x", "x/y", "x/y/z", "x/y/z/b"} <= set(names) and "a" not in names


def test_rename_onto_a_taken_inferior_name(wire: Wire, server: ServerThread) -> None:
    """A, A/x and B/x (B itself deleted): RENAME A B would make A/x into B/x, which exists.
    Refused as ALREADYEXISTS on every backend, nothing renamed."""
    wire.ok("CREATE A/x")
    wire.ok("CREATE B/x")
    wire.ok("DELETE B")  # its inferior B/x stays
    before = mailbox_names(server)
    assert "B" not in before and {"A", "A/x", "B/x"} <= set(before)
    assert wire.cmd("RENAME A B") == [b"t NO [ALREADYEXISTS] Mailbox already exists"]
    assert mailbox_names(server) == before
    wire.ok("RENAME A C")
    assert {"C", "C/x", "B/x"} <= set(mailbox_names(server))


def test_delete_and_rename_more(wire: Wire, server: ServerThread) -> None:
    assert wire.cmd('RENAME Sent "a//b"')[-1].startswith(b"t NO [CANNOT] Invalid mailbox name")
    assert wire.cmd("RENAME Sent INBOX") == [b"t NO [ALREADYEXISTS] Mailbox already exists"]
    wire.ok("CREATE Work")
    wire.ok("SELECT Work")
    assert wire.ok("DELETE Work") == []  # deleting the selected mailbox deselects it
    assert wire.cmd("FETCH 1 FLAGS") == [b"t BAD FETCH not allowed now"]
    assert "Work" not in mailbox_names(server)
    # LIST-EXTENDED forms the parser accepts: SUBSCRIBED selection and RETURN (STATUS ...)
    wire.ok("UNSUBSCRIBE Junk")
    listed = wire.ok('LIST (SUBSCRIBED) "" *')
    assert b'* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" Sent' in listed
    assert not any(b"Junk" in line for line in listed)
    deliver(server, sample_message(1), mailbox="Sent")
    assert wire.ok('LIST "" Sent RETURN (STATUS (MESSAGES UNSEEN))') == [
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
        b"* STATUS Sent (MESSAGES 1 UNSEEN 1)",
    ]
    assert wire.ok('LIST Sent ""') == [b'* LIST (\\Noselect) "/" ""']


def test_rename_inbox_moves_its_messages(wire: Wire, server: ServerThread) -> None:
    deliver(server, sample_message(1))
    deliver(server, sample_message(2))
    wire.ok("RENAME INBOX Old-Inbox")
    assert len(stored(server, mailbox="Old-Inbox")) == 2
    assert stored(server) == []  # INBOX stays, empty (RFC 3501 §6.3.5)
    assert wire.ok("SELECT INBOX")[2] == b"* 0 EXISTS"


def test_subscribe_and_lsub(wire: Wire) -> None:
    wire.ok("CREATE Lists/ietf")
    wire.ok("UNSUBSCRIBE Lists")
    wire.ok("UNSUBSCRIBE Junk")
    lsub = wire.ok('LSUB "" *')
    assert b'* LSUB () "/" Lists/ietf' in lsub
    assert not any(b'"/" Junk' in line or line.endswith(b'"/" Lists') for line in lsub)
    # "%" stops at Lists, which is not subscribed: listed \Noselect (RFC 3501 §6.3.9)
    assert b'* LSUB (\\Noselect) "/" Lists' in wire.ok('LSUB "" %')
    assert wire.cmd("SUBSCRIBE nosuch") == [b"t NO [NONEXISTENT] Mailbox does not exist"]
    wire.ok("SUBSCRIBE Junk")
    assert b'* LSUB () "/" Junk' in wire.ok('LSUB "" J*')
    assert wire.ok('LSUB "" ""') == [b'* LSUB (\\Noselect) "/" ""']
    assert b'* LIST (\\HasNoChildren \\Junk \\Subscribed) "/" Junk' in wire.ok(
        'LIST "" * RETURN (SUBSCRIBED)'
    )


def test_status(wire: Wire, server: ServerThread) -> None:
    deliver(server, sample_message(1), flags=frozenset({"\\Seen"}))
    deliver(server, sample_message(2), flags=frozenset({"\\Deleted"}))
    deliver(server, sample_message(3))
    size = sum(len(data) for _, _, data in stored(server))
    lines = wire.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE DELETED)")
    m = re.fullmatch(
        rb"\* STATUS INBOX \(MESSAGES 3 RECENT 3 UIDNEXT 4 UIDVALIDITY (\d+) UNSEEN 2 "
        rb"SIZE (\d+) DELETED 1\)",
        lines[0],
    )
    assert m is not None and int(m.group(2)) == size
    wire.ok("EXAMINE INBOX")  # does not claim \Recent
    assert b"RECENT 3" in wire.ok("STATUS INBOX (RECENT)")[0]
    wire.ok("SELECT INBOX")  # claims them
    assert wire.ok("STATUS INBOX (RECENT MESSAGES)") == [b"* STATUS INBOX (RECENT 0 MESSAGES 3)"]
    assert wire.cmd("STATUS nosuch (MESSAGES)") == [b"t NO [NONEXISTENT] Mailbox does not exist"]
    assert wire.cmd("STATUS INBOX (BOGUS)")[-1].startswith(b"t BAD")


# --- SELECT / EXAMINE and read-only -------------------------------------------------------


def test_select_responses(wire: Wire, server: ServerThread) -> None:
    deliver(server, sample_message(1), flags=frozenset({"\\Seen", "$Work"}))
    deliver(server, sample_message(2))
    lines = wire.cmd("SELECT INBOX")
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", b"".join(lines))
    assert uidvalidity is not None
    assert lines == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] "
        b"Flags permitted",
        b"* 2 EXISTS",
        b"* 2 RECENT",
        b"* OK [UNSEEN 2] First unseen: 2",
        b"* OK [UIDVALIDITY " + uidvalidity.group(1) + b"] UIDs valid",
        b"* OK [UIDNEXT 3] Predicted next UID",
        b"t OK [READ-WRITE] SELECT completed",
    ]
    # UIDVALIDITY is stable across sessions
    w2 = Wire.connect(server)
    w2.line()
    w2.login()
    assert uidvalidity.group(0) in b"".join(w2.ok("EXAMINE INBOX"))
    assert wire.cmd("SELECT nosuch") == [b"t NO [NONEXISTENT] Mailbox does not exist"]
    # a failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1)
    assert wire.cmd("FETCH 1 FLAGS") == [b"t BAD FETCH not allowed now"]
    assert wire.cmd("SELECT INBOX (CONDSTORE)") == [
        b"t BAD CONDSTORE and QRESYNC are not supported"
    ]


def test_examine_is_read_only(wire: Wire, server: ServerThread) -> None:
    deliver(server, sample_message(1), flags=frozenset({"\\Deleted"}))
    lines = wire.cmd("EXAMINE INBOX")
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox" in lines
    assert lines[-1] == b"t OK [READ-ONLY] EXAMINE completed"
    assert wire.cmd("STORE 1 +FLAGS (\\Seen)") == [b"t NO Mailbox is read-only"]
    assert wire.cmd("EXPUNGE") == [b"t NO Mailbox is read-only"]
    assert wire.cmd("MOVE 1 Trash") == [b"t NO Mailbox is read-only"]
    fetched = wire.ok("FETCH 1 (BODY[TEXT])")
    assert b"FLAGS" not in fetched[0]  # no implicit \Seen in a read-only mailbox
    assert wire.ok("CLOSE") == []  # CLOSE does not expunge a read-only mailbox
    assert len(stored(server)) == 1


# --- FETCH --------------------------------------------------------------------------------


def test_fetch_items_and_sections(wire: Wire, server: ServerThread) -> None:
    deliver(server, NESTED)
    wire.ok("SELECT INBOX")
    (line,) = wire.ok("FETCH 1 (UID FLAGS RFC822.SIZE INTERNALDATE)")
    assert re.fullmatch(
        rb"\* 1 FETCH \(UID 1 FLAGS \(\\Recent\) RFC822\.SIZE %d INTERNALDATE "
        rb'"[ 0-9]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d \+0000"\)' % len(NESTED),
        line,
    ), line

    def section(spec: str) -> bytes:
        (fetched,) = wire.ok(f"FETCH 1 ({spec})")
        _, _, rest = fetched.partition(b"}\r\n")
        assert rest.endswith(b")")
        return rest[:-1]

    assert section("BODY.PEEK[]") == NESTED
    assert section("BODY.PEEK[1]") == b"Hello Bob, caf\xc3\xa9 needle."
    assert section("BODY.PEEK[1.MIME]") == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert section("BODY.PEEK[2.HEADER]") == INNER_HEADER
    assert section("BODY.PEEK[2.1]") == b"inner plain"
    assert section("BODY.PEEK[2.2]") == b"<p>inner html</p>"
    assert section("BODY.PEEK[2.2.MIME]") == b"Content-Type: text/html\r\n\r\n"
    assert section("BODY.PEEK[3]") == b"AAECAw=="
    assert section("BODY.PEEK[HEADER.FIELDS (Subject)]") == (
        b"Subject: =?utf-8?q?caf=C3=A9?= nested\r\n\r\n"
    )
    assert section("BODY.PEEK[]<0.4>") == b"From"
    assert section("BODY.PEEK[1]<6.3>") == b"Bob"
    header_end = NESTED.index(b"\r\n\r\n") + 4
    assert section("RFC822.HEADER") == NESTED[:header_end]
    assert section("BODY.PEEK[TEXT]") == NESTED[header_end:]
    assert section("BODY.PEEK[9]") == b""  # a missing part is empty (as in Dovecot)
    (structure,) = wire.ok("FETCH 1 BODYSTRUCTURE")
    lowered = structure.lower()
    assert lowered.startswith(b'* 1 fetch (bodystructure (("text" "plain" ("charset" "utf-8")')
    assert b'"message" "rfc822"' in lowered and b'"mixed"' in lowered
    (envelope,) = wire.ok("FETCH 1 ENVELOPE")
    assert b'"=?utf-8?q?caf=C3=A9?= nested"' in envelope
    assert b'(("Alice" NIL "alice" "alice.test"))' in envelope
    # nothing above set \Seen
    assert stored(server)[0][1] == frozenset()


def test_fetch_body_sets_seen_and_reports_flags(wire: Wire, server: ServerThread) -> None:
    deliver(server, sample_message(1))
    deliver(server, sample_message(2), flags=frozenset({"\\Seen"}))
    wire.ok("SELECT INBOX")
    lines = wire.ok("FETCH 1:2 BODY[TEXT]")
    assert lines == [
        b"* 1 FETCH (BODY[TEXT] {15}\r\nHello Bob. #1\r\n FLAGS (\\Recent \\Seen))",
        b"* 2 FETCH (BODY[TEXT] {15}\r\nHello Bob. #2\r\n)",  # was \Seen already
    ]
    assert stored(server)[0][1] == frozenset({"\\Seen"})
    # RFC822 sets \Seen too; the FLAGS item is not repeated when it was asked for
    wire.ok("STORE 1 -FLAGS.SILENT (\\Seen)")
    lines = wire.ok("FETCH 1 (FLAGS RFC822)")
    assert lines[0].startswith(b"* 1 FETCH (FLAGS (\\Recent \\Seen) RFC822 {")
    assert lines[0].count(b"FLAGS") == 1


def test_fetch_macros_and_uid_fetch(wire: Wire, server: ServerThread) -> None:
    for n in range(1, 4):
        deliver(server, sample_message(n))
    wire.ok("SELECT INBOX")
    fast = wire.ok("FETCH 1:* FAST")
    assert len(fast) == 3 and all(
        b"RFC822.SIZE" in line and b"INTERNALDATE" in line for line in fast
    )
    assert b"ENVELOPE" in wire.ok("FETCH 2 ALL")[0]
    full = wire.ok("FETCH 3 FULL")[0]
    assert b"BODY (" in full and b"BODYSTRUCTURE" not in full
    # UID FETCH always includes the UID; unknown UIDs are ignored
    assert wire.ok("UID FETCH 2:9 FLAGS") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Recent))",
        b"* 3 FETCH (UID 3 FLAGS (\\Recent))",
    ]
    assert wire.ok("UID FETCH 100:* (UID)") == [b"* 3 FETCH (UID 3)"]
    assert wire.ok("UID FETCH 50 (FLAGS)") == []
    assert wire.ok("FETCH 3:1 (UID)") == [  # a reversed range is the same range
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 2)",
        b"* 3 FETCH (UID 3)",
    ]


def test_invalid_sequence_sets(wire: Wire, server: ServerThread) -> None:
    wire.ok("SELECT INBOX")
    assert wire.cmd("FETCH * FLAGS") == [b"t BAD Invalid message sequence number"]
    assert wire.cmd("FETCH 1:* FLAGS") == [b"t BAD Invalid message sequence number"]
    assert wire.ok("UID FETCH 1:* FLAGS") == []  # UID forms: nothing matches, no error
    assert wire.ok("SEARCH ALL") == [b"* SEARCH"]
    deliver(server, sample_message(1))
    wire.ok("NOOP")
    assert wire.cmd("FETCH 0 FLAGS") == [b"t BAD 0 is not a valid message number"]
    assert wire.cmd("FETCH 2 FLAGS") == [b"t BAD Invalid message sequence number"]
    assert wire.cmd("FETCH 1:2 FLAGS") == [b"t BAD Invalid message sequence number"]
    assert wire.cmd("STORE 5 +FLAGS (\\Seen)") == [b"t BAD Invalid message sequence number"]
    assert wire.cmd("COPY 5 Trash") == [b"t BAD Invalid message sequence number"]
    assert wire.cmd("FETCH 1:x FLAGS")[-1].startswith(b"t BAD")
    assert wire.cmd("FETCH 4294967296 FLAGS")[-1].startswith(b"t BAD")


def test_storage_queries_per_fetch(wire: Wire, server: ServerThread) -> None:
    """FETCH of flags is served from the session; others are one query, plus ranged reads."""
    for n in range(1, 6):
        deliver(server, sample_message(n))
    wire.ok("SELECT INBOX")
    storage = server.app.storage
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def spy(name: str) -> None:
        original = getattr(storage, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, args))
            return await original(*args, **kwargs)

        setattr(storage, name, wrapped)

    for name in ("fetch_messages", "read_blob", "list_messages", "changes_since", "store_flags"):
        spy(name)
    try:
        assert len(wire.ok("FETCH 1:* (UID FLAGS)")) == 5
        assert calls == []
        assert len(wire.ok("FETCH 1:* (ENVELOPE RFC822.SIZE)")) == 5
        assert [c[0] for c in calls] == ["fetch_messages"]
        calls.clear()
        assert len(wire.ok("FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]")) == 5
        assert [c[0] for c in calls] == ["fetch_messages"] + ["read_blob"] * 5
        header_len = sample_message(1).index(b"\r\n\r\n") + 4
        assert all(c[1][1:] == (0, header_len) for c in calls[1:])  # only the header is read
        calls.clear()
        wire.ok("FETCH 1:* BODY[]")
        assert [c[0] for c in calls] == ["store_flags", "fetch_messages"] + ["read_blob"] * 5
    finally:
        for name in (
            "fetch_messages",
            "read_blob",
            "list_messages",
            "changes_since",
            "store_flags",
        ):
            delattr(storage, name)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(st.sampled_from(["UID", "FLAGS"]), min_size=1, max_size=4),
    st.frozensets(st.sampled_from(["\\Seen", "\\Recent", "\\Draft", "$a", "Zed", "b"])),
    st.integers(1, 2**32 - 1),
)
def test_state_items_render_like_fetch_render(
    names: list[str], flags: frozenset[str], uid: int
) -> None:
    atts = [FetchAtt(n) for n in names]
    expected = fetch_render(
        atts, uid=uid, flags=flags, internaldate=0.0, size=0, modseq=0, info=None, blob=None
    )
    assert StateItems(atts).render(uid, flags) == expected


def test_info_cache_is_bounded() -> None:
    records = [
        MessageRecord(
            1, n, 1, frozenset(), 0.0, 10, f"hash{n}", parse_message(sample_message(n)).to_json()
        )
        for n in range(5)
    ]
    size = len(records[0].structure)
    cache = InfoCache(budget=size * 3)
    infos = [cache.get(r) for r in records]
    assert all(i is not None for i in infos)
    assert len(cache) == 3 and cache.used <= cache.budget
    assert cache.get(records[4]) is infos[4]  # a hit returns the same object
    damaged = MessageRecord(1, 9, 1, frozenset(), 0.0, 10, "bad", b"{")
    assert cache.get(damaged) is None
    assert InfoCache(budget=1).get(records[0]) is not None  # too big to keep: still decoded
    cache.clear()
    assert len(cache) == 0 and cache.used == 0


def test_fetch_of_large_mailbox_streams(wire: Wire, server: ServerThread) -> None:
    async def fill() -> None:
        account = await server.app.directory.get_user(BOB)
        blob = blob_of(sample_message(0))
        for _ in range(10):
            await server.app.storage.append(blob, [AppendTarget(account.id)] * 100)

    server.call(fill())
    wire.ok("SELECT INBOX")
    lines = wire.ok("FETCH 1:* (UID FLAGS)")
    assert len(lines) == 1000
    assert lines[999] == b"* 1000 FETCH (UID 1000 FLAGS (\\Recent))"
    assert len(wire.ok("UID SEARCH 500:*")[0].split()) == 2 + 501


# --- STORE --------------------------------------------------------------------------------


def test_store_forms(wire: Wire, server: ServerThread) -> None:
    for n in range(1, 4):
        deliver(server, sample_message(n))
    wire.ok("SELECT INBOX")
    assert wire.ok("STORE 1:2 +FLAGS (\\Flagged \\Seen)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Flagged \\Seen))",
        b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Flagged \\Seen))",
    ]
    assert wire.ok("STORE 2 -FLAGS \\Flagged") == [b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen))"]
    assert wire.ok("STORE 3 FLAGS (\\Draft)") == [b"* 3 FETCH (UID 3 FLAGS (\\Recent \\Draft))"]
    assert wire.ok("STORE 1:3 +FLAGS.SILENT (\\Answered)") == []
    assert wire.ok("UID STORE 3 FLAGS.SILENT ()") == []
    # a new keyword is announced before it is used
    assert wire.ok("STORE 1 +FLAGS ($Important)") == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important \\*)] "
        b"Flags permitted",
        b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Answered \\Flagged \\Seen $Important))",
    ]
    assert wire.ok("STORE 1 +FLAGS (\\Recent)") == [  # \Recent cannot be set: ignored
        b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Answered \\Flagged \\Seen $Important))"
    ]
    assert wire.cmd("STORE 1 +FLAGS (\\Bogus)") == [b"t BAD Invalid system flag \\Bogus"]
    assert wire.cmd("STORE 1 +FLAGS.LOUD (\\Seen)")[-1].startswith(b"t BAD")
    assert wire.cmd("STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Seen)") == [
        b"t BAD CONDSTORE is not supported"
    ]
    flags = {uid: f for uid, f, _ in stored(server)}
    assert flags == {
        1: frozenset({"\\Answered", "\\Flagged", "\\Seen", "$Important"}),
        2: frozenset({"\\Answered", "\\Seen"}),
        3: frozenset(),
    }


# --- SEARCH -------------------------------------------------------------------------------


def test_search(wire: Wire, server: ServerThread) -> None:
    deliver(server, sample_message(1), flags=frozenset({"\\Seen"}))
    deliver(server, sample_message(2, body="needle in the body"))
    deliver(server, NESTED, flags=frozenset({"\\Flagged", "$Work"}))
    wire.ok("SELECT INBOX")
    assert wire.ok("SEARCH ALL") == [b"* SEARCH 1 2 3"]
    assert wire.ok("SEARCH UNSEEN") == [b"* SEARCH 2 3"]
    assert wire.ok("SEARCH FLAGGED KEYWORD $Work") == [b"* SEARCH 3"]
    assert wire.ok("SEARCH OR SEEN FLAGGED") == [b"* SEARCH 1 3"]
    assert wire.ok("SEARCH NOT SEEN NOT FLAGGED") == [b"* SEARCH 2"]
    assert wire.ok("SEARCH BODY needle") == [b"* SEARCH 2 3"]
    assert wire.ok("SEARCH SUBJECT nested") == [b"* SEARCH 3"]
    assert wire.ok('SEARCH FROM "alice"') == [b"* SEARCH 1 2 3"]
    assert wire.ok("SEARCH HEADER Message-ID <2@alice.test>") == [b"* SEARCH 2"]
    assert wire.ok("SEARCH LARGER 500") == [b"* SEARCH 3"]
    assert wire.ok("SEARCH SENTON 26-Nov-2026") == [b"* SEARCH 1 2 3"]
    assert wire.ok("SEARCH SINCE 1-Jan-2000 2:*") == [b"* SEARCH 2 3"]
    assert wire.ok("SEARCH RECENT") == [b"* SEARCH 1 2 3"]
    assert wire.ok("UID SEARCH UID 2:*") == [b"* SEARCH 2 3"]
    # CHARSET UTF-8 with a literal: the decoded subject is "café nested"
    wire.send(b"c SEARCH CHARSET UTF-8 SUBJECT {5}\r\n")
    assert wire.line() == b"+ Ready for literal data"
    wire.send("café\r\n".encode())
    assert wire.until("c") == [b"* SEARCH 3", b"c OK SEARCH completed"]
    assert wire.cmd("SEARCH CHARSET KOI8-R ALL") == [
        b"t NO [BADCHARSET (UTF-8 US-ASCII)] charset KOI8-R is not supported"
    ]
    assert wire.cmd("SEARCH BOGUS")[-1].startswith(b"t BAD")
    assert wire.cmd("SEARCH RETURN (MIN) ALL") == [b"t BAD ESEARCH is not supported"]


# --- COPY / MOVE / EXPUNGE / CLOSE ----------------------------------------------------------


def test_copy_and_move(wire: Wire, server: ServerThread) -> None:
    for n in range(1, 5):
        deliver(server, sample_message(n))
    lines = wire.ok("SELECT INBOX")
    uv_inbox = re.search(rb"UIDVALIDITY (\d+)", b"".join(lines))
    assert uv_inbox is not None
    trash = wire.ok("STATUS Trash (UIDVALIDITY)")[0]
    uv_trash = re.search(rb"UIDVALIDITY (\d+)", trash)
    assert uv_trash is not None
    assert wire.cmd("COPY 1:2 Trash") == [
        b"t OK [COPYUID " + uv_trash.group(1) + b" 1:2 1:2] COPY completed"
    ]
    assert wire.cmd("COPY 1 Nowhere") == [b"t NO [TRYCREATE] Mailbox does not exist"]
    assert wire.cmd("UID COPY 99 Trash") == [b"t OK COPY completed"]
    assert wire.cmd("MOVE 2:3 Trash") == [
        b"* OK [COPYUID " + uv_trash.group(1) + b" 2:3 3:4] Moved",
        b"* 2 EXPUNGE",
        b"* 2 EXPUNGE",
        b"t OK MOVE completed",
    ]
    assert wire.cmd("UID MOVE 4 Archive")[-1] == b"t OK MOVE completed"
    assert wire.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 1)"]
    assert [uid for uid, _, _ in stored(server, mailbox="Trash")] == [1, 2, 3, 4]
    # COPY into the selected mailbox: the new message is announced before the tagged OK
    assert wire.cmd("COPY 1 INBOX") == [
        b"* 2 EXISTS",
        b"* 2 RECENT",
        b"t OK [COPYUID " + uv_inbox.group(1) + b" 1 5] COPY completed",
    ]


def test_expunge_forms_and_close(wire: Wire, server: ServerThread) -> None:
    for n in range(1, 6):
        deliver(server, sample_message(n))
    wire.ok("SELECT INBOX")
    wire.ok("STORE 1,3,4 +FLAGS.SILENT (\\Deleted)")
    assert wire.ok("UID EXPUNGE 4:5") == [b"* 4 EXPUNGE"]  # only \Deleted ones among them
    assert wire.ok("EXPUNGE") == [b"* 1 EXPUNGE", b"* 2 EXPUNGE"]
    assert [uid for uid, _, _ in stored(server)] == [2, 5]
    wire.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert wire.ok("UNSELECT") == []  # does not expunge
    assert len(stored(server)) == 2
    wire.ok("SELECT INBOX")
    assert wire.ok("CLOSE") == []  # expunges silently
    assert [uid for uid, _, _ in stored(server)] == [5]
    assert wire.cmd("EXPUNGE") == [b"t BAD EXPUNGE not allowed now"]


# --- APPEND -------------------------------------------------------------------------------


def test_append(wire: Wire, server: ServerThread) -> None:
    msg = b"From: a@a.test\r\nSubject: appended\r\n\r\nbody\r\n"
    status = wire.ok("STATUS Drafts (UIDVALIDITY)")[0]
    uv = re.search(rb"UIDVALIDITY (\d+)", status)
    assert uv is not None
    wire.send(
        b'a APPEND Drafts (\\Draft $Foo \\Recent) "07-Feb-1994 21:52:25 -0800" {%d}\r\n' % len(msg)
    )
    assert wire.line() == b"+ Ready for literal data"
    wire.send(msg + b"\r\n")
    assert wire.until("a") == [b"a OK [APPENDUID " + uv.group(1) + b" 1] APPEND completed"]
    [(uid, flags, data)] = stored(server, mailbox="Drafts")
    assert (uid, flags, data) == (1, frozenset({"\\Draft", "$Foo"}), msg)
    wire.ok("SELECT Drafts")
    assert wire.ok("FETCH 1 INTERNALDATE") == [
        b'* 1 FETCH (INTERNALDATE " 8-Feb-1994 05:52:25 +0000")'
    ]
    # LITERAL+ (no continuation), bare LF normalised; appending to the selected mailbox
    # announces the message before the tagged OK
    bare = b"Subject: lf\n\nline one\nline two\n"
    wire.send(b"b APPEND Drafts {%d+}\r\n%s\r\n" % (len(bare), bare))
    assert wire.until("b")[:2] == [b"* 2 EXISTS", b"* 2 RECENT"]
    assert stored(server, mailbox="Drafts")[1][2] == bare.replace(b"\n", b"\r\n")
    assert wire.cmd("APPEND Nowhere {1+}\r\nx") == [b"t NO [TRYCREATE] Mailbox does not exist"]
    assert wire.cmd("APPEND Drafts (\\Bogus) {1+}\r\nx") == [b"t BAD Invalid system flag \\Bogus"]
    # imaplib's APPEND (synchronising literal)
    m = imap(server)
    typ, data = m.append("INBOX", "(\\Seen)", None, sample_message(9))
    assert typ == "OK" and data[0].startswith(b"[APPENDUID ")
    assert stored(server)[-1][1:] == (frozenset({"\\Seen"}), sample_message(9))


def test_append_over_quota_and_large_messages(wire: Wire, server: ServerThread) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 4000  # 320 kB
    wire.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(big), big))  # parsed off the loop
    assert wire.until("a")[-1].startswith(b"a OK [APPENDUID")
    assert stored(server)[0][2] == big

    async def set_quota() -> None:
        account = await server.app.directory.get_user(BOB)
        await server.app.storage.set_quota(account.id, len(big) + 10)

    server.call(set_quota())
    small = b"Subject: small\r\n\r\nover the quota now\r\n"
    wire.send(b"b APPEND INBOX {%d+}\r\n%s\r\n" % (len(small), small))
    assert wire.until("b") == [b"b NO [OVERQUOTA] Over quota"]
    assert len(stored(server)) == 1


def test_damaged_cached_structure_is_reparsed(wire: Wire, server: ServerThread) -> None:
    deliver(server, NESTED)

    server.call(raw_sql(server.app.storage, "UPDATE blobs SET structure=?", b"not json"))
    INFO_CACHE.clear()  # the same content may have been decoded (intact) by another test
    wire.ok("SELECT INBOX")
    (line,) = wire.ok("FETCH 1 (ENVELOPE BODY.PEEK[2.1])")
    assert b'"=?utf-8?q?caf=C3=A9?= nested"' in line and line.endswith(b"{11}\r\ninner plain)")


def test_condstore_forms_are_refused(wire: Wire, server: ServerThread) -> None:
    deliver(server, sample_message(1))
    wire.ok("SELECT INBOX")
    assert wire.cmd("FETCH 1 (FLAGS) (CHANGEDSINCE 1)") == [b"t BAD CONDSTORE is not supported"]
    assert wire.ok("UID EXPUNGE 9") == []  # nothing matches: nothing to do


# --- extensions and misc commands ---------------------------------------------------------


def test_namespace_enable_id_noop_check(wire: Wire) -> None:
    assert wire.ok("NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL']
    assert wire.ok("ENABLE CONDSTORE") == [b"* ENABLED"]
    assert wire.ok('ID ("name" "test" "version" "1")') == [
        b'* ID ("name" "Letterbird" "vendor" "Letterbird")'
    ]
    assert wire.ok("ID NIL") == [b'* ID ("name" "Letterbird" "vendor" "Letterbird")']
    assert wire.ok("NOOP") == []
    assert wire.cmd("CHECK") == [b"t BAD CHECK not allowed now"]
    wire.ok("SELECT INBOX")
    assert wire.ok("CHECK") == []
    assert wire.cmd("UNSELECT") == [b"t OK UNSELECT completed"]


def test_enable_needs_authentication(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    assert w.cmd("ENABLE CONDSTORE") == [b"t BAD ENABLE not allowed now"]
    assert w.ok("ID NIL") == [b'* ID ("name" "Letterbird" "vendor" "Letterbird")']


def test_imaplib_session(server: ServerThread) -> None:
    deliver(server, NESTED)
    m = imap(server)
    typ, data = m.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    typ, data = m.fetch("1", "(BODY.PEEK[2.1])")
    assert data[0] == (b"1 (BODY[2.1] {11}", b"inner plain")
    typ, data = m.uid("SEARCH", None, "BODY", "needle")
    assert data == [b"1"]
    assert m.store("1", "+FLAGS", "(\\Answered)")[0] == "OK"
    assert m.copy("1", "Archive")[0] == "OK"
    assert m.namespace()[0] == "OK"
    assert m.close()[0] == "OK"
    assert m.logout()[0] == "BYE"


def test_imapclient_session(server: ServerThread) -> None:
    for n in range(1, 4):
        deliver(server, sample_message(n))
    with imapclient.IMAPClient(*server.address("imap"), ssl=False, timeout=30) as c:
        c.starttls(no_verify())
        c.login(BOB, PASSWORD)
        assert c.has_capability("IDLE") and c.has_capability("MOVE")
        assert c.find_special_folder(imapclient_module.SENT) == "Sent"
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 3 and info[b"UIDNEXT"] == 4
        fetched = c.fetch([1, 2, 3], ["ENVELOPE", "FLAGS", "RFC822.SIZE"])
        assert fetched[2][b"ENVELOPE"].subject == b"message 2"
        c.add_flags([2], [imapclient.SEEN])
        assert c.search(["UNSEEN"]) == [1, 3]
        c.move([3], "Archive")
        assert c.search("ALL") == [1, 2]
        c.delete_messages([1])
        c.expunge()
        assert c.search("ALL") == [2]
        assert c.folder_status("Archive", ["MESSAGES"]) == {b"MESSAGES": 1}
        (server_id,) = c.id_({"name": "imapclient"})
        assert dict(zip(server_id[::2], server_id[1::2], strict=True))[b"name"] == b"Letterbird"
        c.unselect_folder()


# --- bad input and limits -------------------------------------------------------------------


def test_malformed_and_unknown_commands(wire: Wire) -> None:
    assert wire.cmd("FROBNICATE") == [b"t BAD unknown command FROBNICATE"]
    assert wire.cmd("SELECT") == [b"t BAD expected a space"]
    assert wire.cmd('LOGIN "unterminated')[-1].startswith(b"t BAD")
    wire.send(b"(((\r\n")
    assert wire.line().startswith(b"* BAD")  # no readable tag: an untagged BAD
    assert wire.cmd("UID FROB 1") == [b"t BAD UID FROB is not a command"]
    assert wire.ok("NOOP") == []  # the session carries on


def test_endless_line(tmp_path: Path) -> None:
    with make_server(tmp_path, imap_line_length=2048) as srv:
        srv.add_user(BOB, PASSWORD)
        w = Wire.connect(srv)
        w.line()
        w.login()
        w.send(b"a NOOP " + b"x" * 100_000)
        assert w.line() == b"a BAD Line too long"
        w.send(b"y" * 100_000 + b"\r\n")  # the rest of the line is skipped unbuffered
        assert w.ok("NOOP") == []
        # an endless SASL response ends the AUTHENTICATE it answers
        w2 = Wire.connect(srv)
        w2.line()
        w2.send(b"s AUTHENTICATE PLAIN\r\n")
        assert w2.line() == b"+ "
        w2.send(b"A" * 5000 + b"\r\n")
        assert w2.line() == b"* BAD Line too long"
        assert w2.line() == b"s BAD Invalid SASL response"
        w2.login()


def test_literal_over_the_limit(tmp_path: Path) -> None:
    with make_server(tmp_path, imap_literal_size=1000) as srv:
        srv.add_user(BOB, PASSWORD)
        w = Wire.connect(srv)
        w.line()
        w.login()
        # synchronising: refused instead of the continuation, so the client sends nothing
        assert w.cmd("APPEND INBOX {5000}") == [b"t NO [TOOBIG] Literal too big"]
        # LITERAL+: the octets come anyway; they are read, discarded, and the command fails
        w.send(b"u APPEND INBOX {5000+}\r\n" + b"z" * 5000 + b"\r\n")
        assert w.until("u") == [b"u NO [TOOBIG] Literal too big"]
        assert w.ok("NOOP") == []
        assert stored(srv) == []
        small = b"Subject: ok\r\n\r\nfits\r\n"
        w.send(b"v APPEND INBOX {%d+}\r\n%s\r\n" % (len(small), small))
        assert w.until("v")[-1].startswith(b"v OK [APPENDUID")


def test_commands_in_the_wrong_state(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    for command in ("SELECT INBOX", 'LIST "" *', "FETCH 1 FLAGS", "IDLE", "APPEND INBOX {1+}\r\nx"):
        name = command.split()[0].encode()
        assert w.cmd(command) == [b"t BAD " + name + b" not allowed now"]
    w.login()
    assert w.cmd("FETCH 1 FLAGS") == [b"t BAD FETCH not allowed now"]
    assert w.cmd("CLOSE") == [b"t BAD CLOSE not allowed now"]
    assert w.cmd("AUTHENTICATE PLAIN") == [b"t BAD AUTHENTICATE not allowed now"]


def test_too_many_bad_commands_disconnect(server: ServerThread) -> None:
    w = Wire.connect(server)
    w.line()
    w.send(b"x BOGUS\r\n" * 25)
    lines = [w.line() for _ in range(20)]
    assert lines[-1] == b"x BAD unknown command BOGUS"
    assert w.line() == b"* BYE Too many invalid commands"
    assert w.closed()


def test_login_timeout(tmp_path: Path) -> None:
    with make_server(tmp_path, imap_login_timeout=0.3, imap_idle_timeout=60.0) as srv:
        w = Wire.connect(srv)
        w.line()
        assert w.line() == b"* BYE Autologout; idle for too long"
        assert w.closed()


def test_idle_timeout_after_login(tmp_path: Path) -> None:
    with make_server(tmp_path, imap_login_timeout=60.0, imap_idle_timeout=0.5) as srv:
        srv.add_user(BOB, PASSWORD)
        w = Wire.connect(srv)
        w.line()
        w.login()
        w.ok("SELECT INBOX")
        assert w.line() == b"* BYE Autologout; idle for too long"
        assert w.closed()
        # IDLE is subject to the same autologout (RFC 2177: clients re-IDLE every 29 minutes)
        w = Wire.connect(srv)
        w.line()
        w.login()
        w.send(b"i IDLE\r\n")
        assert w.line() == b"+ idling"
        assert w.line() == b"* BYE Autologout; idle for too long"
        assert w.closed()


def test_connections_per_ip(tmp_path: Path) -> None:
    with make_server(tmp_path, imap_connections_per_ip=2) as srv:
        first, second = Wire.connect(srv), Wire.connect(srv, "imaps")
        assert first.line().startswith(b"* OK") and second.line().startswith(b"* OK")
        third = Wire.connect(srv)
        assert third.line() == b"* BYE [LIMIT] Too many connections from your address"
        assert third.closed()
        first.close()
        wait_for(lambda: srv.app.connection_count("imap") == 1)
        fourth = Wire.connect(srv)
        assert fourth.line().startswith(b"* OK")
        second.close()
        fourth.close()


def test_client_that_never_reads_is_disconnected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="letterbird.imap")
    with make_server(tmp_path, imap_output_buffer=65536, imap_idle_timeout=1.0) as srv:
        srv.add_user(BOB, PASSWORD)
        deliver(srv, b"Subject: big\r\n\r\n" + b"0123456789abcdef\r\n" * 60_000)  # ~1 MB
        sock = socket.create_connection(srv.address("imap"), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"a LOGIN bob@example.test secret\r\nb SELECT INBOX\r\n")
        sock.sendall(b"c FETCH 1 BODY.PEEK[]\r\n" * 50)  # ~50 MB of responses, never read
        wait_for(lambda: srv.app.connection_count("imap") == 1)
        # The session waits for the client to read, then gives up and drops the connection
        # with at most the output buffer (plus the kernel's) sent.
        wait_for(lambda: srv.app.connection_count("imap") == 0, timeout=30)
        ends = re.findall(r'imap\.disconnect .*end="([^"]+)" octets=(\d+)', caplog.text)
        assert len(ends) == 1 and ends[0][0] == "output overflow"
        assert int(ends[0][1]) < 10_000_000
        sock.close()


def test_shutdown_says_bye_to_waiting_sessions(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    with srv:
        srv.add_user(BOB, PASSWORD)
        w = Wire.connect(srv)
        w.line()
        w.login()
        idler = Wire.connect(srv)
        idler.line()
        idler.login()
        idler.send(b"i IDLE\r\n")
        assert idler.line() == b"+ idling"
        secure = Wire.connect(srv, "imaps")
        secure.line()
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        for session in (w, idler, secure):
            assert session.line() == b"* BYE [UNAVAILABLE] Server shutting down"
            assert session.closed()
            session.close()
        stopper.join(30)
        assert not stopper.is_alive()
