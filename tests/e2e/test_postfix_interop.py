"""Interop with Postfix (Debian ``postfix``, a private instance on loopback, see
``bench/peers.py``): Letterbird's queue delivering to a Postfix MX, and a Postfix relay
delivering to Letterbird's MX port."""

from __future__ import annotations

import dataclasses
import os
import shutil
import smtplib
from pathlib import Path

import pytest
from serverutil import ServerThread, server_config, wait_for

from letterbird.config import DeliverySettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("postfix", path="/usr/sbin:/usr/bin") is None,
        reason="Postfix is not installed (Debian package postfix)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix must be started as root"),
]

from bench.peers import peer_workdir, postfix_mx, postfix_relay  # noqa: E402

MESSAGE = (
    "From: Alice <alice@alice.test>\r\nTo: <bob@bob.test>\r\nSubject: Grüße via Postfix\r\n"
    "Message-ID: <interop@alice.test>\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Grüße, Bob.\r\n"
).encode()


def test_letterbird_to_postfix(tmp_path: Path) -> None:
    with peer_workdir() as work, postfix_mx(work / "mx", domains=["bob.test"], users=["bob"]) as mx:
        cfg = server_config(tmp_path, submission=["127.0.0.1:0"])
        cfg = dataclasses.replace(
            cfg,
            hostname="mx.alice.test",
            delivery=DeliverySettings(
                routes={"bob.test": mx.address}, retry=[1.0], poll_interval=0.5
            ),
        )
        with ServerThread(cfg) as alice:
            alice.add_user("alice@alice.test", "pw-alice")
            host, port = alice.address("submission")
            with smtplib.SMTP(host, port) as s:
                s.login("alice@alice.test", "pw-alice")
                s.sendmail("alice@alice.test", ["bob@bob.test", "nobody@bob.test"], MESSAGE)
            mx.wait_for_maildir("bob", 1, timeout=20)
            [path] = [p for sub in ("new", "cur") for p in (mx.maildir("bob") / sub).iterdir()]
            stored = path.read_bytes()
            assert b"Return-Path: <alice@alice.test>" in stored
            assert b"by mx.alice.test (Letterbird)" in stored
            assert "Grüße, Bob.".encode() in stored  # 8-bit passed through (8BITMIME)
            assert stored.count(b"Return-Path:") == 1
            # Postfix refused nobody@bob.test: Alice gets the bounce
            wait_for(lambda: alice.messages("alice@alice.test"), what="the bounce")
            [dsn] = alice.messages("alice@alice.test")
            assert b"Final-Recipient: rfc822; nobody@bob.test" in dsn
            assert b"Status: 5.1.1" in dsn
            assert b"Diagnostic-Code: smtp; 550 5.1.1" in dsn
            wait_for(lambda: not alice.call(alice.app.storage.queue_entries()), what="empty queue")


def test_postfix_to_letterbird(tmp_path: Path) -> None:
    cfg = dataclasses.replace(server_config(tmp_path, smtp=["127.0.0.1:0"]), hostname="mx.bob.test")
    with ServerThread(cfg) as bob, peer_workdir() as work:
        bob.add_user("bob@bob.test")
        host, port = bob.address("smtp")
        with postfix_relay(work / "relay", relayhost=f"{host}:{port}") as relay:
            rhost, rport = relay.address.rsplit(":", 1)
            with smtplib.SMTP(rhost, int(rport)) as s:
                s.sendmail("alice@alice.test", ["bob@bob.test"], MESSAGE)
            wait_for(lambda: bob.messages("bob@bob.test"), what="Bob's INBOX")
            relay.wait_for_empty_queue(timeout=20)
        [stored] = bob.messages("bob@bob.test")
        assert stored.startswith(b"Return-Path: <alice@alice.test>\r\nReceived: from postfix-relay")
        assert "Grüße, Bob.".encode() in stored
        assert b"Message-ID: <interop@alice.test>" in stored
