"""Sending end to end: two Letterbird servers on one machine, ``alice.test`` on 127.0.0.2 and
``bob.test`` on 127.0.0.3, the same ports on both, connected by ``[delivery.routes]`` or by a
tiny DNS server serving MX records (with ``smtp_port``).

The four scenarios of the issue: (1) submit with smtplib (STARTTLS + AUTH) and find the message
in Bob's INBOX; (2) Bob's server down: ``queue list`` shows the failed attempt, Bob starts, the
retry delivers; (3) unknown user: Alice gets a DSN naming the recipient and ``5.1.1``;
(4) lifetime exceeded: a delay DSN, then a failure DSN with ``4.4.7``. Plus restart safety:
stopping Alice's server mid-queue and starting it again delivers the message exactly once.
"""

from __future__ import annotations

import dataclasses
import email
import email.message
import email.policy
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import imapclient
import pytest
from click.testing import CliRunner
from dnsserver import DnsServer
from serverutil import (
    ServerProcess,
    ServerThread,
    common_ports,
    server_config,
    storage_toml,
    wait_for,
    write_config,
)

from letterbird.cli.main import cli
from letterbird.config import Config, DeliverySettings, DnsSettings
from letterbird.storage.interface import QueueEntry

pytestmark = pytest.mark.e2e

ALICE_IP = "127.0.0.2"
BOB_IP = "127.0.0.3"
PASSWORD = "alice-secret"


class Pair:
    """Configurations of the two servers."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.smtp_port, self.submission_port = common_ports(2)

    def config(
        self,
        name: str,
        ip: str,
        delivery: DeliverySettings,
        dns: DnsSettings | None = None,
    ) -> Config:
        folder = self.tmp_path / name
        folder.mkdir(exist_ok=True)
        cfg = server_config(
            folder,
            smtp=[f"{ip}:{self.smtp_port}"],
            submission=[f"{ip}:{self.submission_port}"],
        )
        return dataclasses.replace(
            cfg, hostname=f"mx.{name}.test", delivery=delivery, dns=dns or cfg.dns
        )

    def routed(self, **delivery: object) -> DeliverySettings:
        settings: dict[str, object] = {
            "retry": [0.5],
            "routes": {"bob.test": f"{BOB_IP}:{self.smtp_port}"},
            "poll_interval": 0.5,
            "connect_timeout": 2.0,
            "command_timeout": 5.0,
            "source_address": ALICE_IP,
        }
        settings.update(delivery)
        return DeliverySettings(**settings)  # type: ignore[arg-type]

    def alice(self, delivery: DeliverySettings, dns: DnsSettings | None = None) -> ServerThread:
        return ServerThread(self.config("alice", ALICE_IP, delivery, dns))

    def bob(self) -> ServerThread:
        return ServerThread(self.config("bob", BOB_IP, DeliverySettings()))

    def cli_config(self, name: str) -> Path:
        path = self.tmp_path / f"{name}.toml"
        path.write_text(
            f'hostname = "mx.{name}.test"\ndata_dir = "{self.tmp_path / name / "data"}"\n'
            "[listen]\nsmtp = []\nsubmission = []\nsubmissions = []\nimap = []\nimaps = []\n"
            "pop3 = []\npop3s = []\nhttp = []\n" + storage_toml(self.tmp_path / name)
        )
        return path


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


def setup_alice(srv: ServerThread) -> None:
    srv.add_user("alice@alice.test", PASSWORD)


def setup_bob(srv: ServerThread) -> None:
    srv.add_user("bob@bob.test")


def message(subject: str, to: str = "bob@bob.test", body: str = "Hello Bob.") -> bytes:
    return (
        f"From: Alice <alice@alice.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@alice.test>\r\n"
        f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


def submit(pair: Pair, rcpts: list[str], data: bytes, **mail_options: str) -> None:
    """Alice sends through her submission port: STARTTLS, then AUTH PLAIN."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(ALICE_IP, pair.submission_port, local_hostname="pc.alice.test") as s:
        s.starttls(context=ctx)
        s.login("alice@alice.test", PASSWORD)
        refused = s.sendmail("alice@alice.test", rcpts, data)
        assert refused == {}


def parsed(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(msg: email.message.Message) -> list[email.message.Message]:
    """The sub-parts of a multipart (or message/*) part."""
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, email.message.Message)]


def delivery_status(dsn: bytes) -> list[dict[str, str]]:
    """The field groups of a DSN's message/delivery-status part (per-message first)."""
    msg = parsed(dsn)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    status = parts(msg)[1]
    assert status.get_content_type() == "message/delivery-status"
    groups = parts(status)
    return [{k: " ".join(str(v).split()) for k, v in g.items()} for g in groups]


def queue_rows(srv: ServerThread) -> list[QueueEntry]:
    rows: list[QueueEntry] = srv.call(srv.app.storage.queue_entries())
    return rows


# ------------------------------------------------------------------------ scenario 1


def test_submission_is_queued_and_delivered_to_bob(pair: Pair) -> None:
    with pair.bob() as bob, pair.alice(pair.routed()) as alice:
        setup_bob(bob)
        setup_alice(alice)
        data = message("scenario one")
        submit(pair, ["bob@bob.test"], data)
        wait_for(lambda: bob.messages("bob@bob.test"), what="Bob's INBOX")
        wait_for(lambda: not queue_rows(alice), what="Alice's queue to empty")
        [stored] = bob.messages("bob@bob.test")
        # Bob's trace headers first, then Alice's Received: one Return-Path only (ours was
        # stripped when relaying, RFC 5321 §4.4).
        assert stored.startswith(b"Return-Path: <alice@alice.test>\r\nReceived: from mx.alice.test")
        assert stored.count(b"Return-Path:") == 1
        assert b"by mx.alice.test (Letterbird)" in stored
        assert stored.rstrip().endswith(b"Hello Bob.")
        assert b"Subject: scenario one" in stored
        assert alice.messages("alice@alice.test") == []  # no DSN


def test_delivery_over_dns_mx(pair: Pair) -> None:
    records: dict[str, dict[str, Any]] = {
        "bob.test": {"MX": [(10, "mx.bob.test")]},
        "mx.bob.test": {"A": [BOB_IP]},
        "alice.test": {"MX": [(10, "mx.alice.test")]},
        "mx.alice.test": {"A": [ALICE_IP]},
        # an MX that points back at Alice: a loop, bounced at once (RFC 5321 §5.1)
        "loop.test": {"MX": [(10, "mx.loop.test")]},
        "mx.loop.test": {"A": [ALICE_IP]},
        "null.test": {"MX": [(0, ".")]},  # RFC 7505
    }
    with DnsServer(records) as dns:
        settings = DnsSettings(nameservers=[dns.nameserver], timeout=2.0)
        delivery = pair.routed(routes={}, smtp_port=pair.smtp_port)
        with pair.bob() as bob, pair.alice(delivery, settings) as alice:
            setup_bob(bob)
            setup_alice(alice)
            submit(pair, ["bob@bob.test"], message("over dns"))
            wait_for(lambda: bob.messages("bob@bob.test"), what="Bob's INBOX")
            assert ("bob.test", "MX") in dns.queries
            submit(pair, ["x@loop.test", "y@null.test"], message("nowhere"))
            wait_for(lambda: len(alice.messages("alice@alice.test")) == 2, what="two DSNs")
            statuses = {}
            for dsn in alice.messages("alice@alice.test"):
                groups = delivery_status(dsn)
                for g in groups[1:]:
                    statuses[g["Final-Recipient"]] = (g["Action"], g["Status"])
            assert statuses == {
                "rfc822; x@loop.test": ("failed", "5.4.6"),
                "rfc822; y@null.test": ("failed", "5.1.10"),
            }
            assert not queue_rows(alice)


# ------------------------------------------------------------------------ scenario 2


def test_outage_then_retry_delivers(pair: Pair) -> None:
    runner = CliRunner()
    with pair.alice(pair.routed(retry=[1.0])) as alice:
        setup_alice(alice)
        submit(pair, ["bob@bob.test"], message("during the outage"))
        wait_for(
            lambda: any(e.attempts >= 1 for e in queue_rows(alice)),
            what="a failed attempt",
        )
        [entry] = queue_rows(alice)
        out = runner.invoke(cli, ["--config", str(pair.cli_config("alice")), "queue", "list"])
        assert out.exit_code == 0, out.output
        line = next(ln for ln in out.output.splitlines() if entry.queue_id in ln)
        assert "<alice@alice.test>" in line and "bob@bob.test" in line
        assert "Connection failed" in line  # the last error
        assert f"{BOB_IP}]:{pair.smtp_port}" in line  # where it was tried
        assert time.strftime("%Y-%m-%d") in line or "now" in line or "being delivered" in line
        show = runner.invoke(
            cli,
            ["--config", str(pair.cli_config("alice")), "queue", "show", entry.queue_id],
        )
        assert show.exit_code == 0, show.output
        assert "header      Subject: during the outage" in show.output
        assert "rcpt      <bob@bob.test>" in show.output

        with pair.bob() as bob:
            setup_bob(bob)
            wait_for(lambda: bob.messages("bob@bob.test"), what="delivery after the outage")
            wait_for(lambda: not queue_rows(alice), what="the queue to empty")
            time.sleep(1.5)  # one more retry interval: nothing is delivered twice
            assert len(bob.messages("bob@bob.test")) == 1
        assert alice.messages("alice@alice.test") == []  # no delay DSN yet (warn_after 4h)


# ------------------------------------------------------------------------ scenario 3


def test_unknown_user_bounces_with_5_1_1(pair: Pair) -> None:
    with pair.bob() as bob, pair.alice(pair.routed()) as alice:
        setup_bob(bob)
        setup_alice(alice)
        submit(pair, ["nobody@bob.test", "bob@bob.test"], message("half wrong"))
        wait_for(lambda: alice.messages("alice@alice.test"), what="the bounce")
        wait_for(lambda: bob.messages("bob@bob.test"), what="the good copy")
        [dsn] = alice.messages("alice@alice.test")
        assert dsn.startswith(b"Return-Path: <>\r\n")
        msg = parsed(dsn)
        assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.alice.test>"
        assert msg["To"] == "<alice@alice.test>"
        assert msg["Auto-Submitted"] == "auto-replied"
        groups = delivery_status(dsn)
        assert groups[0]["Reporting-MTA"] == "dns; mx.alice.test"
        [rcpt] = groups[1:]
        assert rcpt["Final-Recipient"] == "rfc822; nobody@bob.test"
        assert rcpt["Action"] == "failed"
        assert rcpt["Status"] == "5.1.1"
        assert rcpt["Remote-MTA"] == f"dns; {BOB_IP}"
        assert rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
        human = str(parts(msg)[0].get_payload())
        assert "nobody@bob.test" in human
        headers = parts(msg)[2]
        assert headers.get_content_type() == "text/rfc822-headers"
        assert "Subject: half wrong" in str(headers.get_payload())
        assert not queue_rows(alice)


def test_bounce_wakes_the_senders_imap_idle(pair: Pair) -> None:
    """The bounce is stored with the failed attempt's result, and its change event reaches
    Alice's IMAP IDLE session."""
    cfg = pair.config("alice", ALICE_IP, pair.routed())
    cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, imap=[f"{ALICE_IP}:0"]))
    with pair.bob() as bob, ServerThread(cfg) as alice:
        setup_bob(bob)
        setup_alice(alice)
        with imapclient.IMAPClient(*alice.address("imap"), ssl=False, timeout=30) as c:
            c.login("alice@alice.test", PASSWORD)
            c.select_folder("INBOX")
            c.idle()
            submit(pair, ["nobody@bob.test"], message("to nobody"))
            responses = c.idle_check(timeout=20)
            while (1, b"EXISTS") not in responses:
                more = c.idle_check(timeout=20)
                assert more, responses
                responses += more
            c.idle_done()
            [data] = c.fetch("1", ["BODY.PEEK[]"]).values()
        assert delivery_status(data[b"BODY[]"])[1]["Status"] == "5.1.1"
        assert not queue_rows(alice)


# ------------------------------------------------------------------------ scenario 4


def test_lifetime_exceeded_delay_then_failure(pair: Pair) -> None:
    delivery = pair.routed(retry=[0.5], warn_after=1.0, lifetime=3.0)
    with pair.alice(delivery) as alice:
        setup_alice(alice)
        submit(pair, ["bob@bob.test"], message("never arrives"))
        wait_for(lambda: alice.messages("alice@alice.test"), what="the delay DSN")
        [delay] = alice.messages("alice@alice.test")
        groups = delivery_status(delay)
        assert groups[1]["Action"] == "delayed"
        assert groups[1]["Status"].startswith("4.")
        assert "Will-Retry-Until" in groups[1]
        assert parsed(delay)["Subject"] == "Delayed Mail (still being retried)"
        wait_for(lambda: len(alice.messages("alice@alice.test")) == 2, what="the failure DSN")
        failure = alice.messages("alice@alice.test")[1]
        [_, rcpt] = delivery_status(failure)
        assert rcpt["Action"] == "failed"
        assert rcpt["Status"] == "4.4.7"
        assert rcpt["Final-Recipient"] == "rfc822; bob@bob.test"
        assert "Connection failed" in rcpt["Diagnostic-Code"]
        assert parsed(failure)["Subject"] == "Undelivered Mail Returned to Sender"
        assert not queue_rows(alice)
        time.sleep(1.0)
        assert len(alice.messages("alice@alice.test")) == 2  # each notice once


# ------------------------------------------------------------------------ restart safety


def test_restart_mid_queue_delivers_exactly_once(pair: Pair) -> None:
    delivery = pair.routed(retry=[0.5], lease=30.0)
    alice = pair.alice(delivery)
    with alice:
        setup_alice(alice)
        submit(pair, ["bob@bob.test"], message("across a restart"))
        wait_for(
            lambda: any(e.attempts >= 1 for e in queue_rows(alice)),
            what="a failed attempt",
        )
    # Alice is down with the message queued; Bob comes up; Alice starts again.
    with pair.bob() as bob:
        setup_bob(bob)
        with pair.alice(delivery) as alice2:
            wait_for(lambda: bob.messages("bob@bob.test"), what="delivery after the restart")
            wait_for(lambda: not queue_rows(alice2), what="the queue to empty")
            time.sleep(1.0)
        assert len(bob.messages("bob@bob.test")) == 1


# ------------------------------------------------------------------------ queue flush wakes


def test_queue_flush_wakes_the_running_server(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = write_config(
        tmp_path / "lb.toml",
        f'hostname = "mx.alice.test"\ndata_dir = "{tmp_path / "data"}"\n'
        '[listen]\nsmtp = []\nsubmission = ["127.0.0.1:0"]\nsubmissions = []\nimap = []\n'
        "imaps = []\npop3 = []\npop3s = []\nhttp = []\n"
        '[delivery]\nretry = ["1h"]\npoll_interval = "1h"\nconnect_timeout = "1s"\n'
        f'[delivery.routes]\n"bob.test" = "127.0.0.1:{closed}"\n',
    )
    runner = CliRunner()

    def lb(*args: str, stdin: str | None = None) -> str:
        result = runner.invoke(cli, ["--config", str(config), *args], input=stdin)
        assert result.exit_code == 0, result.output
        return result.output

    lb("domain", "add", "alice.test")
    lb("user", "add", "alice@alice.test", "--password-stdin", stdin=PASSWORD + "\n")

    def attempts() -> int:
        rows = [r for r in lb("queue", "list").splitlines() if "bob@bob.test" in r]
        return int(rows[0].split()[3]) if rows else -1

    with ServerProcess(config, "--no-demo") as srv:
        host, port = srv.bound["submission"]
        with smtplib.SMTP(host, port) as client:
            client.login("alice@alice.test", PASSWORD)
            client.sendmail("alice@alice.test", ["bob@bob.test"], message("flush me"))
        wait_for(lambda: attempts() == 1, what="the first attempt")
        out = lb("queue", "flush")
        assert srv.proc is not None
        assert f"woke the server (pid {srv.proc.pid})" in out
        wait_for(lambda: attempts() == 2, timeout=10, what="the attempt after flush")
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
    log = "\n".join(srv.log)
    assert "queue.attempt" in log and "result=deferred" in log and "domain=bob.test" in log
    assert not (tmp_path / "data" / "letterbird.pid").exists()
