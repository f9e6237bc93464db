"""Mail authentication end to end: two Letterbird servers, ``alice.test`` on 127.0.0.2 and
``bob.test`` on 127.0.0.3, and a loopback DNS server publishing Alice's SPF, DKIM and DMARC
records (as ``letterbird domain dns`` prints them).

Alice's server signs what Alice submits (RSA and Ed25519) before queueing it; Bob's MX checks
everything that arrives and writes one ``Authentication-Results: mx.bob.test`` field:
a genuine message gets ``dkim=pass spf=pass dmarc=pass``; a forged ``From: …@alice.test``
(``p=reject``) is refused with ``550 5.7.1``; a tampered signature is ``dkim=fail``; an
``-all`` SPF record gives ``spf=fail``; DNS that does not answer gives ``temperror``.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from dnsserver import DnsServer
from serverutil import ServerThread, common_ports, server_config, wait_for

from letterbird.auth.dkim import sign
from letterbird.auth.keys import KeyStore, key_dir
from letterbird.auth.results import read
from letterbird.config import AuthCheckSettings, Config, DeliverySettings, DnsSettings

pytestmark = pytest.mark.e2e
pytest.importorskip("nacl")

ALICE_IP = "127.0.0.2"
BOB_IP = "127.0.0.3"
STRANGER_IP = "127.0.0.5"
PASSWORD = "alice-secret"


class World:
    """Both servers' configurations, Alice's DKIM keys, and the DNS records."""

    def __init__(self, tmp_path: Path) -> None:
        self.smtp_port, self.submission_port = common_ports(2)
        self.alice_config = self._config(
            tmp_path,
            "alice",
            ALICE_IP,
            delivery=DeliverySettings(
                retry=[0.5],
                routes={"bob.test": f"{BOB_IP}:{self.smtp_port}"},
                poll_interval=0.5,
                connect_timeout=2.0,
                command_timeout=5.0,
                source_address=ALICE_IP,
            ),
        )
        self.keys = KeyStore(key_dir(self.alice_config))
        self.keys.generate("alice.test", "lb1")  # RSA-2048 "lb1r" and Ed25519 "lb1e"
        self.records: dict[str, dict[str, Any]] = {
            "alice.test": {"TXT": [f"v=spf1 ip4:{ALICE_IP} -all"], "MX": [(10, "mx.alice.test")]},
            "mx.alice.test": {"A": [ALICE_IP], "TXT": ["v=spf1 a -all"]},
            "_dmarc.alice.test": {"TXT": ["v=DMARC1; p=reject; rua=mailto:d@alice.test"]},
            "strict.test": {"TXT": ["v=spf1 -all"]},
            "slow.test": {"DROP": True},
            "_dmarc.slow.test": {"DROP": True},
            ALICE_IP: {"PTR": ["mx.alice.test"]},
        }
        for key in self.keys.selectors("alice.test"):
            self.records[key.dns_name] = {"TXT": [self.keys.public_record(key)]}
        self.tmp_path = tmp_path

    def _config(self, tmp_path: Path, name: str, ip: str, **changes: Any) -> Config:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        cfg = server_config(
            folder, smtp=[f"{ip}:{self.smtp_port}"], submission=[f"{ip}:{self.submission_port}"]
        )
        return dataclasses.replace(cfg, hostname=f"mx.{name}.test", **changes)

    def bob_config(self, dns: DnsServer) -> Config:
        return self._config(
            self.tmp_path,
            "bob",
            BOB_IP,
            dns=DnsSettings(nameservers=[dns.nameserver], timeout=0.5, rdns_timeout=0.5),
            # loopback is skipped by default (local injection); here it stands for the Internet
            auth_checks=AuthCheckSettings(skip_networks=[], timeout=5.0),
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("mail_auth"))


@pytest.fixture(scope="module")
def servers(world: World) -> Iterator[tuple[ServerThread, ServerThread]]:
    """Both servers for the whole module; each test finds its message by subject."""
    with (
        DnsServer(world.records) as dns,
        ServerThread(world.bob_config(dns)) as bob,
        ServerThread(world.alice_config) as alice,
    ):
        bob.add_user("bob@bob.test")
        alice.add_user("alice@alice.test", PASSWORD)
        yield alice, bob


def message(subject: str, sender: str = "alice@alice.test", body: str = "Hello Bob.") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: <bob@bob.test>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@alice.test>\r\n"
        f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


def submit(world: World, data: bytes) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(ALICE_IP, world.submission_port, local_hostname="pc.alice.test") as s:
        s.starttls(context=ctx)
        s.login("alice@alice.test", PASSWORD)
        assert s.sendmail("alice@alice.test", ["bob@bob.test"], data) == {}


def send_direct(world: World, source: str, sender: str, data: bytes, helo: str) -> None:
    """An SMTP client connecting to Bob's MX from ``source``."""
    with smtplib.SMTP(
        BOB_IP, world.smtp_port, local_hostname=helo, source_address=(source, 0)
    ) as s:
        s.sendmail(sender, ["bob@bob.test"], data)


def received(bob: ServerThread, subject: str) -> bytes:
    """The message with this subject in Bob's INBOX (waiting for it)."""
    needle = f"\r\nSubject: {subject}\r\n".encode()
    found: list[bytes] = []

    def arrived() -> bool:
        found[:] = [m for m in bob.messages("bob@bob.test") if needle in m]
        return bool(found)

    wait_for(arrived, what=f"{subject!r} in Bob's INBOX")
    assert len(found) == 1
    return found[0]


def results_of(stored: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(stored, policy=email.policy.compat32)
    ours = [v for v in msg.get_all("Authentication-Results", []) if v.startswith("mx.bob.test")]
    assert len(ours) == 1, ours
    parsed = read([ours[0].encode()], "mx.bob.test")
    assert parsed is not None
    out: dict[str, str] = {}
    for r in parsed.results:
        key = r.method + ("/helo" if r.get("smtp.helo") else "")
        out[key] = ",".join(filter(None, [out.get(key), r.result]))
    return out


def test_alice_to_bob_passes_dkim_spf_dmarc(world: World, servers: tuple[Any, Any]) -> None:
    _, bob = servers
    submit(world, message("signed and sealed"))
    stored = received(bob, "signed and sealed")
    assert results_of(stored) == {
        "dkim": "pass,pass",
        "spf": "pass",
        "spf/helo": "pass",
        "dmarc": "pass",
    }
    # Bob's trace fields, then his Authentication-Results, then what Alice's server sent
    assert stored.startswith(b"Return-Path: <alice@alice.test>\r\nReceived: from mx.alice.test")
    ar = stored.index(b"Authentication-Results: mx.bob.test")
    assert ar < stored.index(b"by mx.alice.test (Letterbird)") < stored.index(b"DKIM-Signature")
    # dkimpy agrees, on its own, with the DNS records
    records = {
        k.dns_name.encode() + b".": world.keys.public_record(k).encode()
        for k in world.keys.selectors("alice.test")
    }
    sent = stored[stored.index(b"Received: from mx.alice.test") :]
    d = dkimpy.DKIM(sent)
    assert d.verify(0, dnsfunc=lambda name, timeout=5: records.get(name))
    assert d.verify(1, dnsfunc=lambda name, timeout=5: records.get(name))
    # the copy Alice's queue sent was the signed one, stored once at submission
    assert stored.count(b"DKIM-Signature:") == 2


def test_forged_from_with_reject_policy_is_refused(world: World, servers: tuple[Any, Any]) -> None:
    _, bob = servers
    forged = message("urgent wire transfer", sender="ceo@alice.test")
    with pytest.raises(smtplib.SMTPDataError) as err:
        send_direct(world, STRANGER_IP, "ceo@evil.test", forged, "mail.evil.test")
    assert err.value.smtp_code == 550
    assert err.value.smtp_error.startswith(b"5.7.1")
    assert not any(b"urgent wire transfer" in m for m in bob.messages("bob@bob.test"))


def test_broken_signature_is_dkim_fail(world: World, servers: tuple[Any, Any]) -> None:
    _, bob = servers
    original = message("tampered")
    signed = sign(original, world.keys.signing_keys("alice.test"), now=time.time()) + original
    tampered = signed.replace(b"Hello Bob.", b"Hello Eve.")
    send_direct(world, ALICE_IP, "alice@alice.test", tampered, "mx.alice.test")
    results = results_of(received(bob, "tampered"))
    assert results["dkim"] == "fail,fail"
    assert results["spf"] == "pass" and results["dmarc"] == "pass"  # aligned SPF still passes


def test_spf_fail_and_dns_timeouts(world: World, servers: tuple[Any, Any]) -> None:
    _, bob = servers
    send_direct(
        world, STRANGER_IP, "x@strict.test", message("spf", sender="x@strict.test"), "h.test"
    )
    results = results_of(received(bob, "spf"))
    assert results["spf"] == "fail" and results["dkim"] == "none"
    assert results["dmarc"] == "none"
    # nothing answers for slow.test: temperror, neither a crash nor a silent pass
    send_direct(world, STRANGER_IP, "x@slow.test", message("dns", sender="x@slow.test"), "h.test")
    results = results_of(received(bob, "dns"))
    assert results["spf"] == "temperror" and results["dmarc"] == "temperror"
