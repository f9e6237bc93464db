"""SMTP reception end to end: a real server on 127.0.0.1, real clients (smtplib, swaks, raw
sockets)."""

from __future__ import annotations

import dataclasses
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverutil import ServerThread, raw_sql, server_config

from letterbird.storage.interface import StorageError

pytestmark = pytest.mark.e2e

MSG = (
    b"From: Alice <alice@alice.test>\r\nTo: Bob <bob@example.test>\r\n"
    b"Subject: Hello\r\nMessage-ID: <1@alice.test>\r\n\r\nHi Bob.\r\n"
)


def body_of(stored: bytes) -> bytes:
    """The message as the client sent it: the stored bytes minus our two trace headers."""
    assert stored.startswith(b"Return-Path: <")
    rest = stored.split(b"\r\n", 1)[1]
    assert rest.startswith(b"Received: from ")
    # the Received header is folded over several lines starting with a tab
    lines = rest.split(b"\r\n")
    i = 1
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(server_config(tmp_path, smtp=["127.0.0.1:0"])) as srv:
        srv.add_user("bob@example.test")
        srv.add_user("carol@example.test")
        srv.add_user("dave@example.test")
        yield srv


def smtp(srv: ServerThread) -> smtplib.SMTP:
    host, port = srv.address("smtp")
    return smtplib.SMTP(host, port, local_hostname="client.test", timeout=30)


class Raw:
    """A raw SMTP client socket that reads replies line by line."""

    def __init__(self, srv: ServerThread) -> None:
        self.sock = socket.create_connection(srv.address("smtp"), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed: " + repr(self.buf))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\r\n".join(lines)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True


def test_deliver_to_local_user(server: ServerThread) -> None:
    with smtp(server) as s:
        code, caps = s.ehlo()
        assert code == 250
        for ext in (
            b"PIPELINING",
            b"SIZE 52428800",
            b"8BITMIME",
            b"SMTPUTF8",
            b"ENHANCEDSTATUSCODES",
            b"CHUNKING",
            b"STARTTLS",
        ):
            assert ext in caps
        assert b"AUTH" not in caps  # never on the MX port
        refused = s.sendmail("alice@alice.test", ["Bob@EXAMPLE.test"], MSG)
        assert refused == {}
    [stored] = server.messages("bob@example.test")
    assert body_of(stored) == MSG
    assert stored.startswith(b"Return-Path: <alice@alice.test>\r\n")
    assert b"by mx.test (Letterbird) with ESMTP id " in stored
    assert b"for <Bob@EXAMPLE.test>" in stored  # as the client wrote it


def test_three_recipients_stored_once(server: ServerThread) -> None:
    with smtp(server) as s:
        s.sendmail(
            "a@alice.test", ["bob@example.test", "carol@example.test", "dave@example.test"], MSG
        )
    for user in ("bob", "carol", "dave"):
        assert len(server.messages(f"{user}@example.test")) == 1
    [count] = server.call(raw_sql(server.app.storage, "SELECT count(*), sum(refcount) FROM blobs"))
    assert tuple(map(int, count)) == (1, 3)


def test_recipient_policy(server: ServerThread) -> None:
    server.call(
        server.app.directory.add_alias(
            "team@example.test", ["bob@example.test", "carol@example.test"]
        )
    )
    with smtp(server) as s:
        s.ehlo()
        assert s.mail("")[0] == 250  # the null reverse path (bounces)
        assert s.rcpt("nobody@example.test") == (550, b"5.1.1 No such user")
        assert s.rcpt("bob@elsewhere.test") == (550, b"5.7.1 Relay access denied")
        assert s.rcpt("bob+news@example.test")[0] == 250
        assert s.rcpt("postmaster@example.test")[0] == 250
        assert s.rcpt("Postmaster")[0] == 250
        assert s.rcpt("team@example.test")[0] == 250
        assert s.rcpt("<bad address>")[0] == 501
        code, _ = s.data(MSG)
        assert code == 250
    assert len(server.messages("bob@example.test")) == 1  # one copy however addressed
    assert len(server.messages("carol@example.test")) == 1
    with smtp(server) as s:
        s.ehlo()
        code, text = s.docmd("MAIL FROM:<not an address>")
        assert (code, text[:5]) == (501, b"5.1.7")


def test_pipelining_raw(server: ServerThread) -> None:
    r = Raw(server)
    assert r.reply().startswith(b"220 ")
    r.send(
        b"EHLO client.test\r\nMAIL FROM:<a@alice.test>\r\nRCPT TO:<bob@example.test>\r\n"
        b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n"
    )
    assert r.reply().startswith(b"250-mx.test")
    assert r.reply().startswith(b"250 2.1.0")
    assert r.reply().startswith(b"250 2.1.5")
    assert r.reply().startswith(b"550 5.1.1")
    assert r.reply().startswith(b"250 2.1.5")
    assert r.reply().startswith(b"354")
    r.send(MSG + b".\r\nMAIL FROM:<a@alice.test>\r\nRCPT TO:<dave@example.test>\r\nDATA\r\n")
    assert r.reply().startswith(b"250 2.0.0")
    assert r.reply().startswith(b"250 2.1.0")
    assert r.reply().startswith(b"250 2.1.5")
    assert r.reply().startswith(b"354")
    r.send(b"..dot-stuffed line\r\n.\r\nQUIT\r\n")
    assert r.reply().startswith(b"250 2.0.0")
    assert r.reply().startswith(b"221 2.0.0")
    assert body_of(server.messages("dave@example.test")[0]) == b".dot-stuffed line\r\n"


def test_bdat_chunking(server: ServerThread) -> None:
    r = Raw(server)
    r.reply()
    r.send(b"EHLO c.test\r\n")
    r.reply()
    part1, part2 = MSG[:40], MSG[40:]
    r.send(b"MAIL FROM:<a@alice.test>\r\nRCPT TO:<bob@example.test>\r\n")
    r.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert r.reply().startswith(b"250 2.1.0")
    assert r.reply().startswith(b"250 2.1.5")
    assert r.reply().startswith(b"250 2.0.0")
    assert server.messages("bob@example.test") == []  # only LAST acknowledges the message
    r.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert r.reply().startswith(b"250 2.0.0 OK: queued as")
    assert body_of(server.messages("bob@example.test")[0]) == MSG
    # BDAT 0 LAST: an empty chunk ends a message
    r.send(
        b"MAIL FROM:<a@alice.test>\r\nRCPT TO:<carol@example.test>\r\nBDAT 6\r\nHi\r\n\r\n"
        b"BDAT 0 LAST\r\n"
    )
    for _ in range(3):
        assert r.reply().startswith(b"250")
    assert r.reply().startswith(b"250 2.0.0 OK: queued")
    assert body_of(server.messages("carol@example.test")[0]) == b"Hi\r\n\r\n"


def test_8bitmime_and_smtputf8(server: ServerThread) -> None:
    server.add_user("jürgen@bücher.test")
    msg = "From: Jürgen <jürgen@bücher.test>\r\nSubject: Grüße\r\n\r\nÄpfel\r\n".encode()
    with smtp(server) as s:
        s.ehlo()
        s.command_encoding = "utf-8"
        s.sendmail(
            "zoë@alice.test",
            ["jürgen@xn--bcher-kva.test"],
            msg,
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
    [stored] = server.messages("jürgen@bücher.test")
    assert body_of(stored) == msg
    assert b"with UTF8SMTP id" in stored
    assert "Return-Path: <zoë@alice.test>".encode() in stored
    with smtp(server) as s:  # UTF-8 address without SMTPUTF8 is refused
        s.ehlo()
        s.command_encoding = "utf-8"
        s.mail("a@alice.test")
        code, _ = s.rcpt("jürgen@bücher.test")
        assert code == 553


def test_bare_lf_normalised_and_smuggling(server: ServerThread) -> None:
    r = Raw(server)
    r.reply()
    r.send(b"HELO c.test\r\nMAIL FROM:<a@alice.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for _ in range(3):
        r.reply()
    assert r.reply().startswith(b"354")
    # "\n.\n" and "\r\n.\n" must not end the message (SMTP smuggling); such a line is
    # normalised to CRLF and dot-unstuffed like any other line.
    r.send(b"Subject: x\n\nline1\n.\nMAIL FROM:<evil@x.test>\r\n.\nline3\r\n.\r\n")
    assert r.reply().startswith(b"250 2.0.0")
    [stored] = server.messages("bob@example.test")
    assert body_of(stored) == (
        b"Subject: x\r\n\r\nline1\r\n\r\nMAIL FROM:<evil@x.test>\r\n\r\nline3\r\n"
    )
    assert b"with SMTP id" in stored  # HELO, not EHLO


def test_thousand_messages_on_one_connection(server: ServerThread) -> None:
    with smtp(server) as s:
        for i in range(1000):
            s.sendmail("a@alice.test", ["bob@example.test"], MSG.replace(b"Hi", b"#%d" % i))
    msgs = server.messages("bob@example.test")
    assert len(msgs) == 1000
    assert b"#999" in msgs[-1]


def test_thirty_megabyte_message(server: ServerThread) -> None:
    line = b"x" * 998 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (30 * 1024 * 1024 // len(line))
    with smtp(server) as s:
        assert s.sendmail("a@alice.test", ["bob@example.test"], big) == {}
    [stored] = server.messages("bob@example.test")
    assert body_of(stored) == big


def test_size_limit(tmp_path: Path) -> None:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"])
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, smtp_message_size=10000))
    with ServerThread(cfg) as srv:
        srv.add_user("bob@example.test")
        with smtp(srv) as s:
            _, caps = s.ehlo()
            assert b"SIZE 10000" in caps
            assert s.docmd("MAIL FROM:<a@alice.test> SIZE=20000")[0] == 552
            s.mail("a@alice.test")
            s.rcpt("bob@example.test")
            code, text = s.data(b"Subject: x\r\n\r\n" + (b"y" * 70 + b"\r\n") * 300)
            assert (code, text[:5]) == (552, b"5.3.4")
            # the connection stays usable
            assert s.sendmail("a@alice.test", ["bob@example.test"], MSG) == {}
        assert len(srv.messages("bob@example.test")) == 1


def test_bad_input(server: ServerThread) -> None:
    r = Raw(server)
    r.reply()
    r.send(b"EHLO c.test\r\n")
    r.reply()
    r.send(b"X" * 5000 + b"\r\n")
    assert r.reply().startswith(b"500 5.5.2")
    r.send(b"FOO bar\r\n")
    assert r.reply().startswith(b"500 5.5.1")
    r.send(b"RCPT TO:<bob@example.test>\r\n")
    assert r.reply().startswith(b"503 5.5.1")
    r.send(b"DATA\r\n")
    assert r.reply().startswith(b"503")
    r.send(b"NO\x00OP\r\n")
    assert r.reply().startswith(b"500 5.5.2")
    r.send(b"VRFY bob\r\n")
    assert r.reply().startswith(b"252")
    r.send(b"HELP\r\n")
    assert r.reply().startswith(b"214")
    r.send(b"NOOP\r\nRSET\r\n")
    assert r.reply().startswith(b"250")
    assert r.reply().startswith(b"250")
    # too many errors: disconnect
    # Sent as one burst: the server closes after the 10th error, so writing
    # commands one by one could race its close (EPIPE on a later send).
    r.send(b"BOGUS\r\n" * 5)
    replies = [r.reply() for _ in range(6)]  # 5 more errors reach the limit of 10
    assert replies[-2].startswith(b"500 5.5.1")
    assert replies[-1].startswith(b"421 4.7.0")
    assert r.closed()
    # the server keeps serving
    with smtp(server) as s:
        assert s.sendmail("a@alice.test", ["bob@example.test"], MSG) == {}


def test_long_data_line(server: ServerThread) -> None:
    with smtp(server) as s:
        s.ehlo()
        s.mail("a@alice.test")
        s.rcpt("bob@example.test")
        code, text = s.data(b"Subject: x\r\n\r\n" + b"z" * 20000 + b"\r\n")
        assert (code, text[:5]) == (554, b"5.6.0")
        assert s.sendmail("a@alice.test", ["bob@example.test"], MSG) == {}
    assert len(server.messages("bob@example.test")) == 1


def test_mail_loop(server: ServerThread) -> None:
    looped = (
        b"".join(
            b"Received: from h%d by h%d; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i)
            for i in range(51)
        )
        + MSG
    )
    with smtp(server) as s:
        s.ehlo()
        s.mail("a@alice.test")
        s.rcpt("bob@example.test")
        code, text = s.data(looped)
        assert (code, text[:5]) == (554, b"5.4.6")
        ok = b"".join(looped.split(b"\r\n", 1)[1:])  # 50 Received headers are fine
        assert s.sendmail("a@alice.test", ["bob@example.test"], ok) == {}
    assert len(server.messages("bob@example.test")) == 1


def test_client_vanishes_mid_data(server: ServerThread) -> None:
    r = Raw(server)
    r.reply()
    r.send(b"EHLO c\r\nMAIL FROM:<a@alice.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for _ in range(4):
        r.reply()
    r.send(b"Subject: half\r\n\r\n" + b"data\r\n" * 100000)
    r.sock.close()
    time.sleep(0.5)
    assert server.messages("bob@example.test") == []
    spool = server.config.data_path / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []  # no spool file left behind
    with smtp(server) as s:
        assert s.sendmail("a@alice.test", ["bob@example.test"], MSG) == {}


def test_storage_failure_and_quota(server: ServerThread) -> None:
    storage = server.app.storage
    real = storage.append

    async def failing(*a: object, **k: object) -> object:
        raise StorageError("disk on fire")

    storage.append = failing
    try:
        with smtp(server) as s:
            s.ehlo()
            s.mail("a@alice.test")
            s.rcpt("bob@example.test")
            code, text = s.data(MSG)
            assert (code, text[:5]) == (451, b"4.3.0")
    finally:
        storage.append = real
    bob = server.call(server.app.directory.get_user("bob@example.test"))
    server.call(storage.set_quota(bob.id, 100))
    with smtp(server) as s:
        s.ehlo()
        s.mail("a@alice.test")
        s.rcpt("bob@example.test")
        code, text = s.data(MSG * 3)
        assert (code, text[:5]) == (452, b"4.2.2")
        # now bob is over quota: refused at RCPT already
        s.mail("a@alice.test")
        code, _ = s.rcpt("bob@example.test")
        assert code in (250, 452)
    assert server.messages("bob@example.test") == []


def test_starttls_with_smtplib(server: ServerThread) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtp(server) as s:
        s.ehlo()
        s.starttls(context=ctx)
        _, caps = s.ehlo()
        assert b"STARTTLS" not in caps
        s.sendmail("a@alice.test", ["bob@example.test"], MSG)
    [stored] = server.messages("bob@example.test")
    assert b"with ESMTPS id" in stored and b"(using version=TLSv1." in stored


def test_starttls_discards_pipelined_plaintext(server: ServerThread) -> None:
    """CVE-2011-0411: commands sent with STARTTLS must not be run after the handshake."""
    r = Raw(server)
    r.reply()
    r.send(b"EHLO c\r\n")
    r.reply()
    r.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert r.reply().startswith(b"220 2.0.0")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(r.sock)
    tls.sendall(b"RCPT TO:<bob@example.test>\r\n")
    data = tls.recv(4096)
    assert data.startswith(b"503")  # no MAIL transaction exists after the handshake
    tls.close()


def test_timeouts(tmp_path: Path) -> None:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"])
    cfg = dataclasses.replace(
        cfg, limits=dataclasses.replace(cfg.limits, smtp_command_timeout=0.5, smtp_data_timeout=0.5)
    )
    with ServerThread(cfg) as srv:
        srv.add_user("bob@example.test")
        r = Raw(srv)
        r.reply()
        assert r.reply().startswith(b"421 4.4.2")
        assert r.closed()
        r = Raw(srv)
        r.reply()
        r.send(b"HELO c\r\nMAIL FROM:<a@alice.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(4):
            r.reply()
        r.send(b"Subject: stalled\r\n")
        assert r.reply().startswith(b"421 4.4.2")
        assert srv.messages("bob@example.test") == []


def test_connection_limits(tmp_path: Path) -> None:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"])
    cfg = dataclasses.replace(
        cfg, limits=dataclasses.replace(cfg.limits, smtp_connections_per_ip=3)
    )
    with ServerThread(cfg) as srv:
        held = [Raw(srv) for _ in range(3)]
        for h in held:
            assert h.reply().startswith(b"220")
        extra = Raw(srv)
        assert extra.reply().startswith(b"421 4.7.0")
        assert extra.closed()
        held[0].send(b"QUIT\r\n")
        held[0].reply()
        time.sleep(0.2)
        again = Raw(srv)
        assert again.reply().startswith(b"220")


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_pipelining_and_starttls(server: ServerThread) -> None:
    host, port = server.address("smtp")
    for extra in (["--pipeline"], ["-tls"], ["--protocol", "ESMTP"]):
        p = subprocess.run(
            [
                "swaks",
                "--server",
                host,
                "--port",
                str(port),
                "--from",
                "alice@alice.test",
                "--to",
                "bob@example.test",
                "--helo",
                "client.test",
                "--header",
                "Subject: from swaks",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stdout + p.stderr
    msgs = server.messages("bob@example.test")
    assert len(msgs) == 3
    assert all(b"Subject: from swaks" in m for m in msgs)
    assert b"with ESMTPS" in msgs[1]


def test_concurrent_sessions_share_commits(server: ServerThread) -> None:
    storage = server.app.storage
    before_batches, before_jobs = storage.batches, storage.batched_jobs
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with smtp(server) as s:
                for i in range(20):
                    s.sendmail("a@alice.test", ["bob@example.test"], MSG + b"%d-%d\r\n" % (n, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(server.messages("bob@example.test")) == 200
    assert storage.batched_jobs - before_jobs >= 200
    assert storage.batches - before_batches <= storage.batched_jobs - before_jobs


def test_reverse_dns_in_received_never_blocks(tmp_path: Path) -> None:
    from dnsserver import DnsServer

    records = {"127.0.0.1": {"PTR": ["client.example.net"]}}
    with DnsServer(records) as dns:
        cfg = server_config(tmp_path, smtp=["127.0.0.1:0"])
        cfg = dataclasses.replace(
            cfg, dns=dataclasses.replace(cfg.dns, nameservers=[dns.nameserver])
        )
        with ServerThread(cfg) as srv:
            srv.add_user("bob@example.test")
            with smtp(srv) as s:
                s.ehlo()
                time.sleep(0.3)  # the lookup runs while the client talks
                s.sendmail("a@alice.test", ["bob@example.test"], MSG)
            [stored] = srv.messages("bob@example.test")
            assert b"(client.example.net [127.0.0.1])" in stored
    # a DNS server that never answers: delivery goes on at once, the name is "unknown"
    with DnsServer({"127.0.0.1": {"PTR": ["late.example.net"], "DROP": True}}) as dns:
        cfg = server_config(tmp_path / "2", smtp=["127.0.0.1:0"])
        cfg = dataclasses.replace(
            cfg, dns=dataclasses.replace(cfg.dns, nameservers=[dns.nameserver], rdns_timeout=30)
        )
        with ServerThread(cfg) as srv:
            srv.add_user("bob@example.test")
            start = time.monotonic()
            with smtp(srv) as s:
                s.sendmail("a@alice.test", ["bob@example.test"], MSG)
            assert time.monotonic() - start < 5
            [stored] = srv.messages("bob@example.test")
            assert b"(unknown [127.0.0.1])" in stored
