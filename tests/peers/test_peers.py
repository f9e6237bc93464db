"""End-to-end checks of bench/peers.py: every peer is started for real and spoken to.

Postfix, Dovecot, smtp-sink/smtp-source and the aiosmtpd baseline run privately on loopback
high ports under a throw-away directory; each test also checks that nothing is left running.
Needs root and the Debian postfix/dovecot packages; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench import baseline_aiosmtpd, peers  # noqa: E402

_TOOLS = (peers.POSTFIX, peers.SMTP_SINK, peers.SMTP_SOURCE, peers.DOVECOT, peers.DOVEADM)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in _TOOLS),
        reason="needs root and the postfix, dovecot-imapd, dovecot-pop3d packages",
    ),
]


def procs_under(path: Path) -> list[int]:
    """Live processes whose working directory is inside *path* (every peer chdirs there)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd == str(path) or cwd.startswith(f"{path}/"):
            found.append(int(entry.name))
    return found


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def work() -> Iterator[Path]:
    with peers.peer_workdir() as path:
        yield path
        leftovers = procs_under(path)
        for pid in leftovers:  # never leave them running, but fail the test
            os.kill(pid, 9)
        assert leftovers == [], f"processes left running in {path}: {leftovers}"


def message(i: int) -> bytes:
    return (
        f"From: alice@source.test\r\nTo: bob@example.test\r\nSubject: message {i:03d}\r\n"
        f"Message-ID: <{i}@source.test>\r\n\r\nBody of message {i}.\r\n.dot line\r\n"
    ).encode()


# --------------------------------------------------------------------------- helpers


def test_split_listen_and_free_port() -> None:
    assert peers.split_listen("127.0.0.1:40001") == ("127.0.0.1", 40001)
    assert peers.split_listen("[::1]:40002") == ("::1", 40002)
    host, port = peers.split_listen("127.0.0.1:0")
    assert host == "127.0.0.1" and 1024 < port < 65536
    for bad in ("127.0.0.1", "nohost", ":25", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(peers.PeerError, match="host:port"):
            peers.split_listen(bad)
    for system_port in (25, 110, 143, 587, 993, 995):
        with pytest.raises(peers.PeerError, match="system mail services"):
            peers.split_listen(f"127.0.0.1:{system_port}")
    port = peers.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # really free


def test_peak_rss_kb_reads_vmhwm() -> None:
    rss = peers.peak_rss_kb(os.getpid())
    assert 1000 < rss < 10_000_000
    with pytest.raises(ProcessLookupError):
        peers.peak_rss_kb(2**22 + 12345)  # above pid_max
    with pytest.raises(peers.PeerError, match="VmHWM"):
        peers.peak_rss_kb(2)  # kthreadd: no memory map


def test_listening_ports_sees_own_socket() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port in peers.listening_ports([os.getpid()])
    assert port not in peers.listening_ports([os.getpid()])


def test_private_tmp_path_is_refused(tmp_path: Path) -> None:
    # pytest's tmp_path sits under a 0700 directory: unprivileged daemons could not reach it.
    with pytest.raises(peers.PeerError, match="peer_workdir"):
        peers.postfix_mx(tmp_path / "mx")
    with pytest.raises(peers.PeerError, match="peer_workdir"):
        peers.dovecot(tmp_path / "dovecot")
    assert procs_under(tmp_path) == []


def test_argument_validation(work: Path) -> None:
    with pytest.raises(peers.PeerError, match="bad domain"):
        peers.postfix_mx(work / "mx", domains=["bad_domain!"])
    with pytest.raises(peers.PeerError, match="bad user"):
        peers.postfix_mx(work / "mx", users=["../etc"])
    with pytest.raises(peers.PeerError, match="explicit port"):
        peers.postfix_relay(work / "relay", relayhost="127.0.0.1:0")
    with pytest.raises(peers.PeerError, match="at least one"):
        peers.dovecot(work / "dc", imap=None, pop3=None)
    with pytest.raises(peers.PeerError, match="bad Dovecot user"):
        peers.dovecot(work / "dc", users={"bob": "pass:word"})
    with pytest.raises(peers.PeerError, match=">= 1"):
        peers.smtp_source("127.0.0.1:40000", sessions=0)
    with pytest.raises(peers.PeerError, match="host:port"):
        peers.aiosmtpd_baseline(work / "base", listen="localhost")


# --------------------------------------------------------------------------- smtp-sink/source


def test_smtp_source_into_smtp_sink_is_counted() -> None:
    with peers.smtp_sink() as sink:
        assert sink.port in peers.listening_ports(sink.pids())
        assert sink.count() == 0
        elapsed = peers.smtp_source(
            sink.address, sessions=3, messages=30, size=2000, reuse_connection=True
        )
        assert 0 < elapsed < 20
        assert sink.wait_for_count(30) == 30
        # The final dot is counted before the QUIT that follows it.
        peers._wait_until(lambda: sink.counters()[1] == 3, 5, "3 QUITs")
        assert sink.counters() == (3, 3, 30)
        # A second run adds up; one message per connection this time, 2 recipients each.
        peers.smtp_source(sink.address, messages=5, recipients=2, subject="hello")
        assert sink.wait_for_count(35) == 35
        peers._wait_until(lambda: sink.counters()[1] == 8, 5, "8 QUITs")
        assert sink.counters() == (8, 8, 35)
        with pytest.raises(peers.PeerError, match="without dump"):
            sink.dumped()
        workdir, pids = sink.workdir, sink.pids()
    assert pids and sink.pids() == [] and peers.group_pids(sink.pgid) == []
    assert not workdir.exists()  # its private temp dir is removed
    assert refused(sink.host, sink.port)
    sink.stop()  # idempotent


def test_smtp_sink_dumps_messages(work: Path) -> None:
    with peers.smtp_sink(workdir=work / "sink", dump=True) as sink:
        with smtplib.SMTP(sink.host, sink.port) as client:
            client.sendmail("alice@source.test", ["bob@example.test"], message(7))
        sink.wait_for_count(1)
        peers._wait_until(lambda: bool(sink.dumped()), 5, "dump file")
        (dumped,) = sink.dumped()
        data = dumped.read_bytes()
        assert b"X-Rcpt-Args: <bob@example.test>" in data
        assert b"Subject: message 007" in data
        file = work / "msg.txt"
        file.write_bytes(b"Subject: from a file\n\nfile body\n")
        peers.smtp_source(sink.address, message_file=file)
        sink.wait_for_count(2)
    assert (work / "sink").exists()  # a caller's workdir is kept


def test_smtp_source_failure_and_stop_after_exception() -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        peers.smtp_sink(extra_args=["-f", "RCPT"]) as sink,
    ):
        with pytest.raises(peers.PeerError, match="smtp-source exited"):
            peers.smtp_source(sink.address)
        raise RuntimeError("boom")
    assert peers.group_pids(sink.pgid) == []
    with pytest.raises(peers.PeerError, match="smtp-sink to listen"):
        peers.smtp_sink(extra_args=["-Z"])  # unknown option: exits at once


# --------------------------------------------------------------------------- Postfix


def test_postfix_mx_delivers_to_maildirs(work: Path) -> None:
    with peers.postfix_mx(
        work / "mx", domains=["example.test", "Other.test"], users=["bob", "carol@other.test"]
    ) as mx:
        assert peers.listening_ports(mx.pids()) == {mx.port}
        assert mx.address == f"127.0.0.1:{mx.port}"
        with smtplib.SMTP(mx.host, mx.port) as client:
            code, banner = client.ehlo("client.test")
            assert code == 250 and banner.startswith(f"postfix-mx-{mx.port}".encode())
            refused_rcpts = client.sendmail(
                "alice@source.test",
                ["bob@example.test", "BOB+tag@other.test", "carol@other.test"],
                message(1),
            )
            assert refused_rcpts == {}
            for rcpt, code, text in (
                ("nobody@example.test", 550, b"5.1.1"),
                ("carol@example.test", 550, b"5.1.1"),
                ("someone@elsewhere.test", 554, b"Relay access denied"),
            ):
                with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                    client.sendmail("alice@source.test", [rcpt], message(2))
                got_code, got_text = info.value.recipients[rcpt]
                assert got_code == code and text in got_text
        assert mx.wait_for_maildir("bob", 2) == 2  # bob@ and bob+tag@ share bob's maildir
        assert mx.wait_for_maildir("carol@other.test", 1) == 1
        (delivered,) = (mx.maildir("carol@other.test") / "new").iterdir()
        assert b"Subject: message 001" in delivered.read_bytes()
        elapsed = peers.smtp_source(
            mx.address, sessions=2, messages=20, size=500, recipient="bob@example.test"
        )
        assert elapsed > 0
        assert mx.wait_for_maildir("bob", 22) == 22
        mx.wait_for_empty_queue()
        assert peers.peak_rss_kb(mx.master_pid) > 0
        status, _ = mx.postfix("status")
        assert status == 0
        pgid = mx.pgid
    assert peers.group_pids(pgid) == []
    assert refused(mx.host, mx.port)
    status, _ = mx.postfix("status")
    assert status != 0
    with pytest.raises(peers.PeerError, match="relay"):
        peers.PostfixInstance(work, "127.0.0.1", 1, "relay", None).maildir_count("bob")


def test_postfix_relay_forwards_to_relayhost(work: Path) -> None:
    with (
        peers.smtp_sink(workdir=work / "sink") as sink,
        peers.postfix_relay(work / "relay", relayhost=sink.address) as relay,
    ):
        assert peers.listening_ports(relay.pids()) == {relay.port}
        peers.smtp_source(relay.address, sessions=2, messages=6, recipient="x@anywhere.test")
        assert sink.wait_for_count(6) == 6
        relay.wait_for_empty_queue()


def test_postfix_relay_retries_quickly(work: Path) -> None:
    sink_port = peers.free_port()
    sink_address = f"127.0.0.1:{sink_port}"
    with peers.postfix_relay(work / "relay", relayhost=sink_address) as relay:
        with smtplib.SMTP(relay.host, relay.port) as client:
            client.sendmail("alice@source.test", ["x@anywhere.test"], message(3))
        peers._wait_until(
            lambda: "deferred" in relay.log_path.read_text(), 10, "the first attempt to fail"
        )
        assert relay.queue_count() == 1
        start = time.monotonic()
        with peers.smtp_sink(sink_address) as sink:
            sink.wait_for_count(1, timeout=10)
        assert time.monotonic() - start < 8
        relay.wait_for_empty_queue()


def test_postfix_start_failures_are_reported(work: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(peers.PeerError, match=r"cannot listen on 127\.0\.0\.1:"):
            peers.postfix_mx(work / "clash", listen=f"127.0.0.1:{port}")
    # An error found before maillog_file works still reaches the message (via the pty).
    with pytest.raises(peers.PeerError, match="unknown user name value: no-such-user"):
        peers.postfix_mx(work / "bad", extra={"mail_owner": "no-such-user"})
    assert procs_under(work) == []


# --------------------------------------------------------------------------- Dovecot


def test_dovecot_serves_populated_maildir_over_imap_and_pop3(work: Path) -> None:
    messages = [message(i) for i in range(200)]
    with peers.dovecot(work / "dc", users={"bob": "pw", "alice": "secret"}) as dc:
        assert dc.imap_port is not None and dc.pop3_port is not None
        assert peers.listening_ports(dc.pids()) == {dc.imap_port, dc.pop3_port}
        assert dc.populate("bob", messages) == 200
        assert dc.populate("alice", messages[:3], seen=True, sync=False) == 3
        assert dc.message_count("alice") == 3

        imap = imaplib.IMAP4(dc.imap_host, dc.imap_port)
        try:
            assert imap.login("bob", "pw")[0] == "OK"
            assert imap.select("INBOX") == ("OK", [b"200"])
            typ, data = imap.fetch("1:*", "(RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            fetched = [item for item in data if isinstance(item, tuple)]
            subjects = [part[1].strip().decode() for part in fetched]
            assert subjects == [f"Subject: message {i:03d}" for i in range(200)]
            assert f"RFC822.SIZE {len(messages[0])}".encode() in fetched[0][0]
            typ, data = imap.fetch("200", "(BODY.PEEK[])")
            assert data[0] is not None and data[0][1] == messages[199]
            typ, unseen = imap.search(None, "UNSEEN")
            assert len(unseen[0].split()) == 200
        finally:
            imap.logout()
        imap = imaplib.IMAP4(dc.imap_address.split(":")[0], dc.imap_port)
        try:
            imap.login("alice", "secret")
            imap.select("INBOX")
            assert imap.search(None, "SEEN")[1] == [b"1 2 3"]
        finally:
            imap.logout()

        pop = poplib.POP3(dc.pop3_host, dc.pop3_port)
        try:
            pop.user("bob")
            assert pop.pass_("pw").startswith(b"+OK")
            assert pop.stat() == (200, sum(len(m) for m in messages))
            _resp, lines, _octets = pop.retr(1)
            assert b"\r\n".join(lines) + b"\r\n" == messages[0]
            assert len(pop.uidl()[1]) == 200
        finally:
            pop.quit()

        # Last: a failed login makes Dovecot's anvil delay later logins from this IP.
        pop = poplib.POP3(dc.pop3_host, dc.pop3_port)
        try:
            pop.user("bob")
            with pytest.raises(poplib.error_proto):
                pop.pass_("wrong")
        finally:
            pop.close()
        with pytest.raises(peers.PeerError, match="unknown Dovecot user"):
            dc.maildir("mallory")
        with pytest.raises(peers.PeerError, match="doveadm"):
            dc.doveadm("no-such-command")
        pgid = dc.pgid
    assert peers.group_pids(pgid) == []
    assert refused(dc.imap_host, dc.imap_port)


def test_dovecot_single_protocol_and_start_failure(work: Path) -> None:
    with peers.dovecot(work / "pop-only", imap=None) as dc:
        assert dc.pop3_port is not None
        assert peers.listening_ports(dc.pids()) == {dc.pop3_port}
        with pytest.raises(peers.PeerError, match="IMAP is not enabled"):
            _ = dc.imap_address
        assert dc.pop3_address == f"127.0.0.1:{dc.pop3_port}"
    with (
        peers.dovecot(work / "imap-only", pop3=None) as dc,
        pytest.raises(peers.PeerError, match="POP3 is not enabled"),
    ):
        _ = dc.pop3_address
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(peers.PeerError, match="cannot listen"):
            peers.dovecot(work / "clash", imap=None, pop3=f"127.0.0.1:{port}")
    with pytest.raises(peers.PeerError, match=r"(?s)died.*Unknown setting: no_such_setting"):
        peers.dovecot(work / "bad", extra_conf="no_such_setting = 1")
    assert procs_under(work) == []


# --------------------------------------------------------------------------- aiosmtpd baseline


def test_aiosmtpd_baseline_stores_durably(work: Path) -> None:
    with peers.aiosmtpd_baseline(work / "base") as base:
        assert base.port > 0 and base.address == f"127.0.0.1:{base.port}"
        with smtplib.SMTP(base.host, base.port) as client:
            code, banner = client.ehlo("client.test")
            assert code == 250 and banner.startswith(b"baseline.peer.test")
            client.sendmail("alice@source.test", ["bob@example.test"], message(5))
        assert base.count() == 1  # stored before the 250
        (stored,) = (base.maildir / "new").iterdir()
        assert stored.read_bytes() == b"Return-Path: <alice@source.test>\r\n" + message(5)
        peers.smtp_source(base.address, sessions=4, messages=20, reuse_connection=True)
        assert base.wait_for_count(21) == 21
        assert list((base.maildir / "tmp").iterdir()) == []
        assert peers.peak_rss_kb(base.pid) > 0
    assert peers.group_pids(base.pgid) == []
    assert "READY" in base.log_path.read_text()


def test_aiosmtpd_baseline_start_failure(work: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(peers.PeerError, match="died"):
            peers.aiosmtpd_baseline(work / "base", listen=f"127.0.0.1:{port}")


def test_baseline_handler_reports_storage_errors(tmp_path: Path) -> None:
    handler = baseline_aiosmtpd.MaildirHandler(tmp_path / "md")
    envelope = Envelope()
    envelope.mail_from = "a@b.test"
    envelope.original_content = b"Subject: x\r\n\r\nbody\r\n"
    server = None  # the handler never looks at the server or session
    ok = asyncio.run(handler.handle_DATA(server, None, envelope))  # type: ignore[arg-type]
    assert ok == baseline_aiosmtpd.REPLY_OK and handler.stored == 1
    shutil.rmtree(tmp_path / "md" / "tmp")  # next write fails
    bad = asyncio.run(handler.handle_DATA(server, None, envelope))  # type: ignore[arg-type]
    assert bad == baseline_aiosmtpd.REPLY_STORAGE_ERROR and handler.stored == 1
    handler.close()
    with pytest.raises(SystemExit):
        baseline_aiosmtpd.main(["--listen", "no-port", "--maildir", str(tmp_path)])
    with pytest.raises(ValueError):
        baseline_aiosmtpd.parse_listen("host:")


def test_stop_all_at_exit() -> None:
    sink = peers.smtp_sink()
    assert sink in peers._RUNNING
    peers._stop_all()
    assert sink not in peers._RUNNING and peers.group_pids(sink.pgid) == []
