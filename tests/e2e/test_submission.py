"""Message submission end to end (RFC 6409, RFC 8314, RFC 4954): a real server with the
``smtp``, ``submission`` (STARTTLS) and ``submissions`` (implicit TLS) listeners on 127.0.0.1,
real clients (smtplib, raw sockets, swaks); what was stored and queued is read back from
storage.

Remote domains are routed (``[delivery.routes] "*"``) to a closed port, so queued rows stay in
the queue (a failed attempt is a temporary error) and can be inspected.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import hashlib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverutil import ServerThread, server_config

from letterbird.config import Config
from letterbird.delivery.srs import Srs
from letterbird.proto.smtp.server import NEED_DATA, Hello, SmtpServerConnection
from letterbird.server.smtp import MX, SUBMISSION, SUBMISSIONS, core_config
from letterbird.storage.interface import QueueEntry, QueueRecipient, StorageError

pytestmark = pytest.mark.e2e

ALICE = "alice@alice.test"
BOB = "bob@alice.test"
PASSWORD = "secret"
SRS_SECRET = "test-srs-secret"
MSG = (
    b"From: Alice <alice@alice.test>\r\nTo: Bob <bob@alice.test>\r\nSubject: Hello\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@alice.test>\r\n\r\nHi Bob.\r\n"
)


def no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(tmp_path: Path, **submission: int) -> Config:
    cfg = server_config(
        tmp_path,
        smtp=["127.0.0.1:0"],
        submission=["127.0.0.1:0"],
        submissions=["127.0.0.1:0"],
    )
    sub = dataclasses.replace(cfg.submission, srs_secret=SRS_SECRET, **submission)
    delivery = dataclasses.replace(cfg.delivery, routes={"*": f"127.0.0.1:{closed_port()}"})
    auth = dataclasses.replace(cfg.auth, max_failures=3)
    return dataclasses.replace(cfg, submission=sub, delivery=delivery, auth=auth)


def start(cfg: Config) -> ServerThread:
    srv = ServerThread(cfg).__enter__()
    srv.add_user(ALICE, PASSWORD)
    srv.add_user(BOB, PASSWORD)
    srv.call(srv.app.directory.add_alias("team@alice.test", [ALICE]))
    return srv


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = start(make_config(tmp_path))
    try:
        yield srv
    finally:
        srv.stop()


def submission(srv: ServerThread, *, tls: bool = True, login: bool = True) -> smtplib.SMTP:
    host, port = srv.address("submission")
    s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=30)
    s.ehlo()
    if tls:
        s.starttls(context=no_verify())
        s.ehlo()
    if login:
        s.login(ALICE, PASSWORD)
    return s


def mx(srv: ServerThread) -> smtplib.SMTP:
    host, port = srv.address("smtp")
    return smtplib.SMTP(host, port, local_hostname="mx.other.test", timeout=30)


def queued(srv: ServerThread, queue_id: str | None = None) -> list[QueueEntry]:
    entries: list[QueueEntry] = srv.call(srv.app.storage.queue_entries(queue_id))
    return entries


def queue_id_of(reply: bytes) -> str:
    m = re.search(rb"queued as (\S+)", reply)
    assert m is not None, reply
    return m.group(1).decode()


def send(s: smtplib.SMTP, sender: str, rcpts: list[str], msg: bytes, **kw: list[str]) -> bytes:
    """MAIL/RCPT/DATA step by step; returns the final reply text (asserting 250s)."""
    s.ehlo_or_helo_if_needed()
    code, text = s.mail(sender, kw.get("mail_options", []))
    assert code == 250, (code, text)
    for r in rcpts:
        code, text = s.rcpt(r, kw.get("rcpt_options", []))
        assert code == 250, (r, code, text)
    code, text = s.data(msg)
    assert code == 250, (code, text)
    return text


# -- TLS and AUTH ------------------------------------------------------------------------------
def test_starttls_auth_plain_and_login(server: ServerThread) -> None:
    host, port = server.address("submission")
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as s:
        _, caps = s.ehlo()
        assert b"STARTTLS" in caps and b"DSN" in caps
        s.starttls(context=no_verify())
        _, caps = s.ehlo()
        assert b"AUTH PLAIN LOGIN" in caps
        code, _ = s.login(ALICE, PASSWORD)  # smtplib prefers PLAIN
        assert code == 235
        text = send(s, ALICE, [BOB], MSG)
    for initial in (True, False):
        with submission(server, login=False) as s:
            s.user, s.password = ALICE, PASSWORD
            code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=initial)
            assert code == 235
            send(s, ALICE, [BOB], MSG)
    stored = server.messages(BOB)
    assert len(stored) == 3
    assert b"with ESMTPSA id " + queue_id_of(text).encode() in stored[0]
    assert stored[0].startswith(b"Return-Path: <alice@alice.test>\r\n")


def test_submissions_implicit_tls(server: ServerThread) -> None:
    host, port = server.address("submissions")
    with smtplib.SMTP_SSL(host, port, context=no_verify(), timeout=30) as s:
        _, caps = s.ehlo()
        assert b"STARTTLS" not in caps and b"AUTH PLAIN LOGIN" in caps
        s.login(ALICE, PASSWORD)
        send(s, ALICE, [BOB], MSG)
    [stored] = server.messages(BOB)
    assert b"with ESMTPSA" in stored and b"(using version=TLSv1." in stored


def test_plaintext_auth_allowed_from_loopback(server: ServerThread) -> None:
    with submission(server, tls=False, login=False) as s:
        assert "auth" in s.esmtp_features  # offered before TLS to a loopback client
        s.login(ALICE, PASSWORD)
        send(s, ALICE, [BOB], MSG)
    [stored] = server.messages(BOB)
    assert b"with ESMTPA id" in stored
    # STARTTLS after AUTH forgets the authentication (RFC 3207 §4.2)
    with submission(server, tls=False, login=True) as s:
        s.starttls(context=no_verify())
        s.ehlo()
        assert s.mail(ALICE)[0] == 530


def test_plaintext_auth_refused_for_other_clients(tmp_path: Path) -> None:
    """The session's policy decision, for a client address we cannot get in a test."""
    cfg = make_config(tmp_path)
    remote = core_config(cfg, SUBMISSION, "192.0.2.7", tls_active=False)
    assert remote.auth_requires_tls and remote.auth_mechanisms == ("PLAIN", "LOGIN")
    assert remote.dsn_enabled and remote.tls_available and not remote.tls_active
    for loopback in ("127.0.0.1", "127.3.2.1", "::1"):
        assert not core_config(cfg, SUBMISSION, loopback, tls_active=False).auth_requires_tls
    assert core_config(cfg, SUBMISSIONS, "192.0.2.7", tls_active=True).tls_active
    mx_cfg = core_config(cfg, MX, "192.0.2.7", tls_active=False)
    assert mx_cfg.auth_mechanisms == () and mx_cfg.dsn_enabled
    # What such a client sees: no AUTH before TLS, and 538 if it tries anyway.
    core = SmtpServerConnection(remote)
    core.receive_data(b"EHLO client.test\r\n")
    ev = core.next_event()
    assert isinstance(ev, Hello)
    core.accept_hello()
    assert core.next_event() is NEED_DATA
    out = core.data_to_send()
    assert b"AUTH" not in out and b"STARTTLS" in out and b"DSN" in out
    core.receive_data(b"AUTH PLAIN " + base64.b64encode(b"\0alice@alice.test\0secret") + b"\r\n")
    assert core.next_event() is NEED_DATA
    assert core.data_to_send().startswith(b"538 5.7.11 ")


def auth_plain(s: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would go on to try LOGIN as well)."""
    s.user, s.password = user, password
    try:
        return s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPAuthenticationError as exc:
        error = exc.smtp_error
        return exc.smtp_code, error if isinstance(error, bytes) else error.encode()


def test_wrong_password_then_throttled(server: ServerThread) -> None:
    with submission(server, login=False) as s:
        assert auth_plain(s, "nobody@alice.test", "x")[0] == 535  # unknown user: the same
        for _ in range(2):
            assert auth_plain(s, ALICE, "wrong") == (
                535,
                b"5.7.8 Authentication credentials invalid",
            )
    # three failures from this address (auth.max_failures = 3): locked out for now, even with
    # the right password, and told to come back later rather than that the password is wrong
    with submission(server, login=False) as s:
        assert auth_plain(s, ALICE, PASSWORD) == (
            454,
            b"4.7.0 Too many failed authentications, try again later",
        )
        assert s.mail(ALICE)[0] == 530


def test_malformed_auth(server: ServerThread) -> None:
    with submission(server, login=False) as s:
        assert s.docmd("AUTH PLAIN", "!!!not-base64!!!")[0] == 501
        assert s.docmd("AUTH PLAIN")[0] == 334
        assert s.docmd("%%%")[:2] == (501, b"5.5.2 Cannot decode base64 response")
        assert s.docmd("AUTH LOGIN")[0] == 334
        assert s.docmd("*")[0] == 501  # cancelled
        # authzid other than the user: refused
        creds = base64.b64encode(b"bob@alice.test\0alice@alice.test\0secret").decode()
        assert s.docmd("AUTH PLAIN", creds)[0] == 535
        assert s.docmd("AUTH CRAM-MD5")[0] == 504
        # the session goes on
        s.login(ALICE, PASSWORD)
        send(s, ALICE, [BOB], MSG)


def test_directory_failures_are_temporary(server: ServerThread) -> None:
    directory = server.app.directory
    real_auth, real_addresses = directory.authenticate, directory.addresses_of

    async def broken(*args: object) -> object:
        raise StorageError("database is locked")

    directory.authenticate = broken
    try:
        with submission(server, login=False) as s:
            assert auth_plain(s, ALICE, PASSWORD) == (
                454,
                b"4.7.0 Temporary authentication failure",
            )
    finally:
        directory.authenticate = real_auth
    directory.addresses_of = broken
    try:
        with submission(server) as s:
            assert s.mail(ALICE)[0] == 451
    finally:
        directory.addresses_of = real_addresses


# -- sender rules --------------------------------------------------------------------------------
def test_mail_without_auth(server: ServerThread) -> None:
    with submission(server, login=False) as s:
        assert s.mail(ALICE) == (530, b"5.7.0 Authentication required")
        assert s.rcpt("carol@bob.test")[0] == 503
    with mx(server) as s:  # the MX port: no AUTH at all, and no relaying
        _, caps = s.ehlo()
        assert b"AUTH" not in caps and b"DSN" in caps
        assert s.docmd("AUTH PLAIN AGFAYg==")[0] == 502
        assert s.mail("carol@carol.test")[0] == 250
        assert s.rcpt("dave@bob.test") == (550, b"5.7.1 Relay access denied")
    assert queued(server) == []


def test_sender_spoofing(server: ServerThread) -> None:
    with submission(server) as s:
        assert s.mail(ALICE)[0] == 250
        assert s.rcpt("x@xn--zz.test")[0] == 501  # not a valid IDNA domain
        s.rset()
        assert s.mail("bob@alice.test") == (
            553,
            b"5.7.1 Sender address not owned by the authenticated user",
        )
        assert s.mail("alice@evil.test")[0] == 553
        assert s.mail("")[0] == 553  # no bounces from users
        assert s.mail("ALICE@Alice.Test")[0] == 250  # case-insensitive
        s.rset()
        assert s.mail("alice+lists@alice.test")[0] == 250  # a subaddress
        s.rset()
        # an alias of the account is an identity, in the envelope and in From:
        forged_alias = MSG.replace(b"From: Alice <alice@alice.test>", b"From: <team@alice.test>")
        send(s, "team@alice.test", [BOB], forged_alias)
        # a forged From: is refused after DATA, and nothing is stored
        forged = MSG.replace(b"From: Alice <alice@alice.test>", b"From: Boss <ceo@alice.test>")
        assert s.mail(ALICE)[0] == 250
        assert s.rcpt(BOB)[0] == 250
        assert s.data(forged) == (
            550,
            b"5.7.1 From: header address not owned by the authenticated user",
        )
        send(s, ALICE, [BOB], MSG)  # the session goes on
    assert len(server.messages(BOB)) == 2


# -- header fixes ------------------------------------------------------------------------------
def test_header_fixes(server: ServerThread) -> None:
    server.add_user("carol@alice.test", PASSWORD)
    msg = (
        b"From: Alice <alice@alice.test>\r\nTo: Bob <bob@alice.test>\r\n"
        b"Bcc: carol@alice.test\r\nSubject: no date\r\n\r\nHi.\r\n"
    )
    with submission(server) as s:
        send(s, ALICE, [BOB, "carol@alice.test"], msg)
    for user in (BOB, "carol@alice.test"):
        [stored] = server.messages(user)
        head, body = stored.split(b"\r\n\r\n", 1)
        assert body == b"Hi.\r\n"
        assert b"Bcc" not in head and b"carol@" not in head.split(b"\r\nFrom:")[1]
        parsed = email.message_from_bytes(stored, policy=email.policy.default)
        assert parsed["Date"] is not None and parsed["Date"].datetime.timestamp() > 0
        assert re.fullmatch(r"<[0-9a-f]{24}@mx\.test>", str(parsed["Message-ID"]))
        assert parsed["Subject"] == "no date"
    # a message that has them keeps its own
    with submission(server) as s:
        send(s, ALICE, [BOB], MSG)
    stored = server.messages(BOB)[-1]
    assert stored.endswith(MSG)


def test_header_too_large(tmp_path: Path) -> None:
    srv = start(make_config(tmp_path, max_header_size=2000))
    try:
        with submission(srv) as s:
            big = b"X-Filler: " + b"x" * 500 + b"\r\n"
            assert s.mail(ALICE)[0] == 250
            assert s.rcpt(BOB)[0] == 250
            code, text = s.data(big * 5 + MSG)
            assert (code, text[:5]) == (552, b"5.3.4")
            send(s, ALICE, [BOB], MSG)
        assert len(srv.messages(BOB)) == 1
    finally:
        srv.stop()


# -- routing: local at once, remote through the queue ------------------------------------------
def test_local_and_remote_recipients_in_one_message(server: ServerThread) -> None:
    with submission(server) as s:
        text = send(
            s,
            ALICE,
            [BOB, "carol@bob.test", "Dave@Bücher.test"],
            MSG,
            mail_options=["RET=HDRS", "ENVID=env+2B1", "SMTPUTF8"],
            rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;orig+40x.test"],
        )
        # committed before the 250: read back at once, without waiting
        qid = queue_id_of(text)
        entries = queued(server, qid)
        assert len(server.messages(BOB)) == 1
    assert sorted(e.domain for e in entries) == ["bob.test", "xn--bcher-kva.test"]
    for e in entries:
        assert e.queue_id == qid and e.sender == ALICE
        assert e.envid == "env+1" and e.ret == "HDRS"
    recipients = {r.address: r for e in entries for r in e.recipients}
    assert recipients == {
        "carol@bob.test": QueueRecipient(
            "carol@bob.test", ("FAILURE", "DELAY"), "rfc822;orig@x.test"
        ),
        "Dave@xn--bcher-kva.test": QueueRecipient(
            "Dave@xn--bcher-kva.test", ("FAILURE", "DELAY"), "rfc822;orig@x.test"
        ),
    }
    # the queued copy is the same blob as the local one
    [stored] = server.messages(BOB)
    assert entries[0].blob_id == hashlib.sha256(stored).hexdigest()
    # only remote recipients: nothing local, one queue row
    with submission(server) as s:
        text = send(s, ALICE, ["erin@bob.test"], MSG)
    [entry] = queued(server, queue_id_of(text))
    assert entry.recipients == (QueueRecipient("erin@bob.test"),)
    assert len(server.messages(BOB)) == 1


def test_sending_limits(tmp_path: Path) -> None:
    srv = start(make_config(tmp_path, max_messages_per_hour=2, max_recipients_per_hour=3))
    try:
        with submission(srv) as s:
            send(s, ALICE, [BOB], MSG)
            send(s, ALICE, [BOB, "x@bob.test"], MSG)
            assert s.mail(ALICE) == (
                450,
                b"4.7.1 Sending limit reached (messages per hour), try later",
            )
        srv.add_user("carol@alice.test", PASSWORD)
        host, port = srv.address("submissions")
        with smtplib.SMTP_SSL(host, port, context=no_verify(), timeout=30) as s:
            s.login("carol@alice.test", PASSWORD)
            assert s.mail("carol@alice.test")[0] == 250
            for r in (BOB, "a@bob.test", "b@bob.test"):
                assert s.rcpt(r)[0] == 250
            assert s.rcpt("c@bob.test") == (
                450,
                b"4.7.1 Sending limit reached (recipients per hour), try later",
            )
            assert s.data(MSG.replace(b"From: Alice <alice@", b"From: <carol@"))[0] == 250
            assert s.mail("carol@alice.test")[0] == 250
            assert s.rcpt(BOB)[0] == 450  # the three are used up
        # the MX port is not limited
        with mx(srv) as s:
            for _ in range(3):
                send(s, "someone@else.test", [ALICE], MSG)
    finally:
        srv.stop()


# -- forwarding with SRS, and bounces back -------------------------------------------------------
def test_srs_forwarding_and_bounce(server: ServerThread) -> None:
    srs = Srs([SRS_SECRET])
    server.call(server.app.directory.add_alias("fwd@alice.test", ["ext@bob.test"]))
    server.call(server.app.directory.add_alias("both@alice.test", [BOB, "ext2@bob.test"]))
    with mx(server) as s:
        text = send(s, "carol@carol.test", ["fwd@alice.test"], MSG)
    [entry] = queued(server, queue_id_of(text))
    assert entry.sender.startswith("SRS0=") and entry.sender.endswith(
        "=carol.test=carol@alice.test"
    )
    assert srs.reverse(entry.sender, time.time()) == "carol@carol.test"
    assert entry.recipients == (QueueRecipient("ext@bob.test", (), "rfc822;fwd@alice.test"),)

    # a bounce to the SRS address reaches the original sender (through the queue)
    with mx(server) as s:
        text = send(s, "", [entry.sender], b"Subject: bounce\r\n\r\nfailed\r\n")
    [back] = queued(server, queue_id_of(text))
    assert back.sender == "" and back.recipients[0].address == "carol@carol.test"
    # ... or locally, when the original sender is one of ours
    server.call(server.app.directory.add_domain("relay.test"))
    local_srs = srs.forward(BOB, "relay.test", time.time())
    assert local_srs.startswith("SRS0=") and local_srs.endswith("=alice.test=bob@relay.test")
    with mx(server) as s:
        send(s, "", [local_srs.lower()], b"Subject: bounce 2\r\n\r\nfailed\r\n")
    assert b"Subject: bounce 2" in server.messages(BOB)[-1]
    # SRS1 (a second forwarder): back to the first forwarder, or straight through when the
    # first forwarder was us too
    srs1_foreign = srs.forward(
        "SRS0=hash=TT=carol.test=carol@first.test", "relay.test", time.time()
    )
    srs1_ours = srs.forward(entry.sender, "relay.test", time.time())
    assert srs1_foreign.startswith("SRS1=") and srs1_ours.startswith("SRS1=")
    with mx(server) as s:
        text = send(s, "", [srs1_foreign, srs1_ours], b"Subject: bounce 3\r\n\r\nfailed\r\n")
    entries = queued(server, queue_id_of(text))
    assert sorted(r.address for e in entries for r in e.recipients) == [
        "SRS0=hash=TT=carol.test=carol@first.test",
        "carol@carol.test",
    ]
    # a valid SRS address for someone who is no longer here
    gone = srs.forward("gone@alice.test", "relay.test", time.time())
    with mx(server) as s:
        s.ehlo()
        s.mail("")
        assert s.rcpt(gone) == (550, b"5.1.1 No such user")
    # bad or expired SRS addresses are unknown users
    expired = srs.forward("carol@carol.test", "alice.test", time.time() - 30 * 86400)
    forged = "SRS0=AAAA" + entry.sender[9:]
    with mx(server) as s:
        s.ehlo()
        s.mail("")
        for address in (expired, forged, "SRS0=x@alice.test"):
            assert s.rcpt(address) == (550, b"5.1.1 No such user")

    # an alias with a local and an outside target; a bounce (<>) is not rewritten
    with mx(server) as s:
        text = send(s, "", ["both@alice.test"], MSG)
    [entry] = queued(server, queue_id_of(text))
    assert entry.sender == ""
    assert [r.address for r in entry.recipients] == ["ext2@bob.test"]
    assert len([m for m in server.messages(BOB) if m.endswith(MSG)]) == 1
    # a sender at our own domain is not rewritten either
    with submission(server) as s:
        text = send(s, ALICE, ["fwd@alice.test"], MSG)
    [entry] = queued(server, queue_id_of(text))
    assert entry.sender == ALICE


# -- DSN ---------------------------------------------------------------------------------------
def test_notify_success_local_dsn(server: ServerThread) -> None:
    with submission(server) as s:
        send(
            s,
            ALICE,
            [BOB],
            MSG,
            mail_options=["ENVID=track-1"],
            rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;bob@alice.test"],
        )
    [dsn] = server.messages(ALICE)
    assert dsn.startswith(b"Return-Path: <>\r\n")
    parsed = email.message_from_bytes(dsn, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    text = dsn.decode("utf-8", "replace")
    assert "Action: delivered" in text and "Status: 2.0.0" in text
    assert "Final-Recipient: rfc822;bob@alice.test" in text.replace("; ", ";")
    assert "Original-Envelope-Id: track-1" in text
    assert "Subject: Hello" in text  # the original's headers are quoted
    assert "Hi Bob." not in text  # but not its body

    # an alias expanding to two targets reports "expanded"; NOTIFY=NEVER and no NOTIFY: none
    server.call(server.app.directory.add_alias("pair@alice.test", [BOB, "out@bob.test"]))
    with submission(server) as s:
        text_reply = send(s, ALICE, ["pair@alice.test"], MSG, rcpt_options=["NOTIFY=SUCCESS"])
        send(s, ALICE, [BOB], MSG, rcpt_options=["NOTIFY=NEVER"])
        send(s, ALICE, [BOB], MSG)
    dsns = server.messages(ALICE)
    assert len(dsns) == 2 and b"Action: expanded" in dsns[1]
    [entry] = queued(server, queue_id_of(text_reply))
    assert entry.recipients == (
        QueueRecipient("out@bob.test", ("NEVER",), "rfc822;pair@alice.test"),
    )

    # a single forwarded target: NOTIFY=SUCCESS travels with it, no DSN from here
    server.call(server.app.directory.add_alias("fwd@alice.test", ["ext@bob.test"]))
    with submission(server) as s:
        text_reply = send(s, ALICE, ["fwd@alice.test"], MSG, rcpt_options=["NOTIFY=SUCCESS"])
    [entry] = queued(server, queue_id_of(text_reply))
    assert entry.recipients == (
        QueueRecipient("ext@bob.test", ("SUCCESS",), "rfc822;fwd@alice.test"),
    )
    assert len(server.messages(ALICE)) == 2

    # a message spooled to disk (over 1 MiB): the DSN quotes its header section only
    big = MSG + (b"y" * 998 + b"\r\n") * 2000
    with submission(server) as s:
        send(s, ALICE, [BOB], big, rcpt_options=["NOTIFY=SUCCESS"])
    dsn = server.messages(ALICE)[-1]
    assert len(dsn) < 10000 and b"Subject: Hello" in dsn and b"Action: delivered" in dsn

    # a DSN that cannot be stored does not undo the delivery: still 250, and logged
    queue = server.app.queue
    real_notify = queue.notify

    async def failing(to: str, message: bytes) -> None:
        raise StorageError("disk full")

    queue.notify = failing
    try:
        with submission(server) as s:
            send(s, ALICE, [BOB], MSG, rcpt_options=["NOTIFY=SUCCESS"])
    finally:
        queue.notify = real_notify
    assert len(server.messages(ALICE)) == 3

    # from the MX port: the DSN to an outside sender is queued; none for a <> sender
    with mx(server) as s:
        send(s, "carol@carol.test", [BOB], MSG, rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
        send(s, "", [BOB], MSG, rcpt_options=["NOTIFY=SUCCESS"])
    notices = [e for e in queued(server) if e.recipients[0].address == "carol@carol.test"]
    assert len(notices) == 1 and notices[0].sender == ""


# -- a real client ------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_auth_with_starttls(server: ServerThread) -> None:
    host, port = server.address("submission")
    for mech in ("PLAIN", "LOGIN"):
        p = subprocess.run(
            [
                "swaks",
                "--server",
                host,
                "--port",
                str(port),
                "-tls",
                "--auth",
                mech,
                "--auth-user",
                ALICE,
                "--auth-password",
                PASSWORD,
                "--from",
                ALICE,
                "--to",
                f"{BOB},carol@bob.test",
                "--helo",
                "client.test",
                "--header",
                f"Subject: swaks {mech}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stdout + p.stderr
    msgs = server.messages(BOB)
    assert [b"Subject: swaks PLAIN" in msgs[0], b"Subject: swaks LOGIN" in msgs[1]] == [True, True]
    assert all(b"with ESMTPSA" in m for m in msgs)
    assert len(queued(server)) == 2
    # a wrong password: swaks fails with the 535
    wrong = ["--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", "nope"]
    p = subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "-tls", *wrong, "--to", BOB],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "535 5.7.8" in p.stdout
