"""The server side of mail authentication: the DNS adapter over the real resolver (against the
loopback test DNS server), and what the SMTP edge calls — start at MAIL FROM, feed during
DATA, finish_message at the end of DATA — with a dictionary DNS."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email
import email.policy
import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dkim as dkimpy
import pytest
from authdns import FakeDns
from conftest import make_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from dnsserver import DnsServer

from letterbird.auth import service as svc
from letterbird.auth.dkim import SigningKey, sign
from letterbird.auth.keys import KeyStore, key_dir
from letterbird.auth.lookup import DnsPermError, DnsTempError, ResolverLookup
from letterbird.auth.results import read
from letterbird.auth.service import (
    DMARC_REJECTED,
    SERVICE_KEY,
    AuthVerdict,
    MailAuth,
    SignRequest,
    finish_message,
    replace_mailbox,
)
from letterbird.config import AuthCheckSettings, Config, DkimSettings, DnsSettings
from letterbird.delivery.dns import Resolver
from letterbird.storage.interface import AppendTarget, BlobSource

pytest.importorskip("nacl")

CLIENT = "192.0.2.10"
HOST = "mx.bob.test"
NOW = 1_790_000_000.0
TRACE = (
    b"Return-Path: <alice@alice.test>\r\n"
    b"Received: from mx.alice.test ([192.0.2.10])\r\n\tby mx.bob.test (Letterbird) with ESMTPS"
    b" id Q1;\r\n\tThu, 26 Nov 2026 10:00:00 +0000\r\n"
)
MESSAGE = (
    b"From: Alice <alice@alice.test>\r\nTo: bob@bob.test\r\nSubject: hi\r\n"
    b"Authentication-Results: mx.bob.test; dkim=pass; spf=pass; dmarc=pass\r\n"
    b"Authentication-Results: other.test; spf=fail\r\n"
    b"\r\nHello Bob.\r\n"
)


# -- the DNS adapter over Resolver ------------------------------------------------------------

RECORDS: dict[str, dict[str, Any]] = {
    "alice.test": {
        "TXT": [["v=spf1 ", "ip4:192.0.2.0/24 -all"], "other"],
        "A": ["192.0.2.1"],
        "AAAA": ["2001:db8::1"],
        "MX": [(20, "mx2.alice.test"), (10, "mx1.alice.test")],
    },
    "192.0.2.1": {"PTR": ["mx1.alice.test"]},
    "empty.alice.test": {"A": ["192.0.2.2"]},
    "broken.test": {"SERVFAIL": True},
    "silent.test": {"DROP": True},
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS) as server:
        yield server


def lookup_for(server: DnsServer, timeout: float = 2.0) -> ResolverLookup:
    settings = DnsSettings(nameservers=[server.nameserver], timeout=timeout, rdns_timeout=timeout)
    return ResolverLookup(Resolver(settings, cache_size=0))


async def test_resolver_lookup_answers(dns_server: DnsServer) -> None:
    lookup = lookup_for(dns_server)
    assert sorted(await lookup.txt("alice.test")) == [b"other", b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert await lookup.a("alice.test") == ["192.0.2.1"]
    assert await lookup.aaaa("alice.test") == ["2001:db8::1"]
    assert await lookup.mx("alice.test") == ["mx1.alice.test", "mx2.alice.test"]
    assert await lookup.ptr("192.0.2.1") == ["mx1.alice.test"]
    assert await lookup.ptr("192.0.2.99") == []
    assert await lookup.aaaa("empty.alice.test") == []
    # NXDOMAIN and NODATA are empty answers
    assert await lookup.txt("nothing.alice.test") == []
    assert await lookup.txt("empty.alice.test") == []
    assert await lookup.a("nothing.alice.test") == []
    assert await lookup.mx("empty.alice.test") == []
    assert await lookup.a("192.0.2.1") == []  # an address is not a name


async def test_resolver_lookup_errors(dns_server: DnsServer) -> None:
    lookup = lookup_for(dns_server, timeout=0.3)
    with pytest.raises(DnsTempError):
        await lookup.txt("broken.test")
    with pytest.raises(DnsTempError):
        await lookup.a("silent.test")
    with pytest.raises(DnsPermError):
        await lookup.txt("x" * 64 + ".test")


# -- the service ------------------------------------------------------------------------------


def ed_key(domain: str, selector: str) -> tuple[SigningKey, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signing = SigningKey(domain, selector, "ed25519-sha256", base64.b64encode(seed))
    return signing, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(pub)


ALICE_KEY, ALICE_RECORD = ed_key("alice.test", "s1")


def world(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {
        "alice.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "mx.alice.test": {"TXT": ["v=spf1 a -all"], "A": [CLIENT]},
        "s1._domainkey.alice.test": {"TXT": [ALICE_RECORD]},
        "_dmarc.alice.test": {"TXT": ["v=DMARC1; p=reject"]},
    }
    records.update(overrides)
    return records


def app_for(
    tmp_path: Path, dns: FakeDns | None, sample: float = 0.0, **settings: Any
) -> SimpleNamespace:
    config = dataclasses.replace(
        make_config(tmp_path),
        hostname=HOST,
        auth_checks=AuthCheckSettings(**{"skip_networks": [], **settings}),
    )
    auth = MailAuth(config, dns, sample=lambda: sample)
    return SimpleNamespace(
        config=config, services={SERVICE_KEY: auth}, resolver=None, clock=lambda: NOW
    )


def signed(message: bytes = MESSAGE, key: SigningKey = ALICE_KEY) -> bytes:
    return sign(message, [key], now=NOW) + message


async def run_inbound(
    app: Any,
    message: bytes,
    *,
    sender: str = "alice@alice.test",
    client: str = CLIENT,
    chunk: int = 7,
) -> svc.Finished:
    auth: MailAuth = app.services[SERVICE_KEY]
    check = auth.start(client, "mx.alice.test", sender)
    assert check is not None
    for i in range(0, len(message), chunk):  # as DATA arrives
        check.feed(message[i : i + chunk])
    return await finish_message(app, blob_of(TRACE + message), check, None, queue_id="Q1")


def blob_of(data: bytes) -> BlobSource:
    return BlobSource(hashlib.sha256(data).hexdigest(), len(data), b"{}", data=data)


def auth_results(data: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    [ours] = [v for v in msg.get_all("Authentication-Results", []) if v.startswith(HOST)]
    parsed = read([ours.encode()], HOST)
    assert parsed is not None
    return {r.method + ("/helo" if r.get("smtp.helo") else ""): r.result for r in parsed.results}


async def test_signed_message_passes_everything(tmp_path: Path) -> None:
    dns = FakeDns(world())
    app = app_for(tmp_path, dns)
    done = await run_inbound(app, signed(), chunk=3)
    assert done.refusal is None and done.mailbox == "INBOX"
    data = done.blob.data
    assert data is not None
    assert auth_results(data) == {
        "dkim": "pass",
        "spf": "pass",
        "spf/helo": "pass",
        "dmarc": "pass",
    }
    # ours goes right below our trace fields; the forgery claiming our name is gone
    assert data.startswith(TRACE + b"Authentication-Results: mx.bob.test;\r\n\tdkim=pass")
    assert data.count(b"Authentication-Results: mx.bob.test") == 1
    assert b"Authentication-Results: other.test; spf=fail" in data
    assert done.blob.sha256 == hashlib.sha256(data).hexdigest()
    assert done.blob.size == len(data) and done.blob.structure.startswith(b"{")
    assert done.verdict is not None and done.verdict.verified_sender == "alice.test"
    # each question was asked once (the warm-up during DATA and the evaluation share answers)
    assert dns.queries.count(("TXT", "s1._domainkey.alice.test")) == 1
    assert dns.queries.count(("TXT", "_dmarc.alice.test")) == 1
    assert dkimpy.verify(
        data[len(TRACE) :],
        dnsfunc=lambda name, timeout=5: ALICE_RECORD if name.startswith(b"s1.") else None,
    )


async def test_forged_from_is_refused_or_recorded(tmp_path: Path) -> None:
    forged = MESSAGE.replace(b"alice@alice.test>", b"alice@alice.test>")
    evil_key, evil_record = ed_key("evil.test", "e")
    dns = FakeDns(world(**{"e._domainkey.evil.test": {"TXT": [evil_record]}}))
    done = await run_inbound(app_for(tmp_path, dns), signed(forged, evil_key), sender="x@evil.test")
    assert done.refusal is DMARC_REJECTED
    assert (DMARC_REJECTED.code, DMARC_REJECTED.enhanced) == (550, "5.7.1")
    assert done.verdict is not None and done.verdict.dmarc is not None
    assert done.verdict.dmarc.reject
    recorded = await run_inbound(
        app_for(tmp_path, FakeDns(dns.records), dmarc_enforce=False),
        signed(forged, evil_key),
        sender="x@evil.test",
    )
    assert recorded.refusal is None and recorded.mailbox == "INBOX"
    assert recorded.blob.data is not None
    assert auth_results(recorded.blob.data)["dmarc"] == "fail"


async def test_quarantine_goes_to_junk(tmp_path: Path) -> None:
    dns = FakeDns(world(**{"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=quarantine"]}}))
    done = await run_inbound(app_for(tmp_path, dns), MESSAGE, client="198.51.100.1")
    assert done.refusal is None and done.mailbox == "Junk"
    assert done.blob.data is not None
    results = auth_results(done.blob.data)
    assert results == {"dkim": "none", "spf": "fail", "spf/helo": "fail", "dmarc": "fail"}
    targets = replace_mailbox([AppendTarget(1), AppendTarget(2)], done.mailbox)
    assert [t.mailbox for t in targets] == ["Junk", "Junk"]
    assert replace_mailbox([AppendTarget(1)], "INBOX") == [AppendTarget(1)]


async def test_broken_signature_is_dkim_fail(tmp_path: Path) -> None:
    tampered = signed().replace(b"Hello Bob.", b"Hello Eve.")
    done = await run_inbound(app_for(tmp_path, FakeDns(world())), tampered)
    assert done.blob.data is not None
    results = auth_results(done.blob.data)
    assert results["dkim"] == "fail" and results["spf"] == "pass" and results["dmarc"] == "pass"


async def test_dns_timeouts_are_temperror(tmp_path: Path) -> None:
    slow = {"DELAY": 5, "TXT": ["v=spf1 +all"]}
    dns = FakeDns(
        world(
            **{
                "alice.test": slow,
                "mx.alice.test": slow,
                "s1._domainkey.alice.test": {"DELAY": 5, "TXT": [ALICE_RECORD]},
                "_dmarc.alice.test": {"DELAY": 5, "TXT": ["v=DMARC1; p=reject"]},
            }
        )
    )
    app = app_for(tmp_path, dns, timeout=0.2)
    done = await run_inbound(app, signed())
    assert done.refusal is None
    assert done.blob.data is not None
    assert auth_results(done.blob.data) == {
        "dkim": "temperror",
        "spf": "temperror",
        "spf/helo": "temperror",
        "dmarc": "temperror",
    }
    failing = FakeDns(world(**{"_dmarc.alice.test": {"TEMPFAIL": True}}))
    done = await run_inbound(app_for(tmp_path, failing), MESSAGE, client="198.51.100.1")
    assert done.refusal is None and done.blob.data is not None
    assert auth_results(done.blob.data)["dmarc"] == "temperror"


async def test_who_is_checked(tmp_path: Path) -> None:
    dns = FakeDns(world())
    assert (
        app_for(tmp_path, dns).services[SERVICE_KEY].start("::ffff:192.0.2.10", "h", "") is not None
    )
    default = MailAuth(dataclasses.replace(make_config(tmp_path)), dns)
    assert default.start("127.0.0.1", "h", "a@alice.test") is None  # skip_networks: loopback
    assert default.start("::1", "h", "a@alice.test") is None
    assert default.start("not an ip", "h", "a@alice.test") is None
    off = dataclasses.replace(make_config(tmp_path), auth_checks=AuthCheckSettings(enabled=False))
    assert MailAuth(off, dns).start(CLIENT, "h", "a@alice.test") is None
    assert MailAuth(make_config(tmp_path), None).start(CLIENT, "h", "a@alice.test") is None
    no_dns = MailAuth(make_config(tmp_path), None)
    with pytest.raises(DnsTempError):
        await no_dns.lookup.txt("x")
    for method in (no_dns.lookup.a, no_dns.lookup.aaaa, no_dns.lookup.mx, no_dns.lookup.ptr):
        with pytest.raises(DnsTempError):
            await method("x")


async def test_for_app_builds_one_service(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    app = SimpleNamespace(
        config=config, services={}, resolver=Resolver(DnsSettings()), clock=lambda: NOW
    )
    first = MailAuth.for_app(app)  # type: ignore[arg-type]
    assert MailAuth.for_app(app) is first and first.has_dns  # type: ignore[arg-type]
    app2 = SimpleNamespace(config=config, services={}, resolver=None)
    assert not MailAuth.for_app(app2).has_dns  # type: ignore[arg-type]


async def test_cancel_and_helo_check_off(tmp_path: Path) -> None:
    dns = FakeDns(world(**{"alice.test": {"DELAY": 5}}))
    auth: MailAuth = app_for(tmp_path, dns, check_helo=False).services[SERVICE_KEY]
    check = auth.start(CLIENT, "mx.alice.test", "alice@alice.test")
    assert check is not None and check.helo_task is None
    check.feed(b"From: a@alice.test\r\n\r\nbody")
    check.feed(b"more body")  # after the header: ignored
    await asyncio.sleep(0)
    check.cancel()
    await asyncio.sleep(0)
    assert check.spf_task.cancelled()


async def test_header_watch_limit(tmp_path: Path) -> None:
    dns = FakeDns(world())
    auth: MailAuth = app_for(tmp_path, dns).services[SERVICE_KEY]
    check = auth.start(CLIENT, "mx.alice.test", "alice@alice.test")
    assert check is not None
    check.feed(b"From: alice@alice.test\r\nX: " + b"y" * svc.WATCH_LIMIT)
    assert check._warm is not None
    await check._warm
    assert ("TXT", "_dmarc.alice.test") in dns.queries
    empty = auth.start(CLIENT, "mx.alice.test", "alice@alice.test")
    assert empty is not None
    empty.feed(b"\r\nno header at all\r\n")
    assert empty._warm is not None
    await empty._warm
    check.cancel()
    empty.cancel()


async def test_an_internal_error_stores_the_message_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(self: Any, message: bytes) -> AuthVerdict:
        raise RuntimeError("bug")

    monkeypatch.setattr(svc.InboundCheck, "evaluate", boom)
    done = await run_inbound(app_for(tmp_path, FakeDns(world())), MESSAGE)
    assert done.refusal is None and done.verdict is None
    assert done.blob.data is not None
    assert b"Authentication-Results: mx.bob.test" not in done.blob.data  # forgery still removed


def test_method_results() -> None:
    assert [r.format() for r in AuthVerdict().method_results()] == ["dkim=none (no signature)"]
    assert AuthVerdict().verified_sender is None


# -- signing at submission and forwarding -----------------------------------------------------


def signing_app(tmp_path: Path, **dkim: Any) -> SimpleNamespace:
    config = dataclasses.replace(make_config(tmp_path), hostname=HOST, dkim=DkimSettings(**dkim))
    app = SimpleNamespace(config=config, services={}, resolver=None, clock=lambda: NOW)
    app.services[SERVICE_KEY] = MailAuth(config, None)
    return app


def published(store: KeyStore, domain: str) -> dict[bytes, bytes]:
    return {
        k.dns_name.encode() + b".": store.public_record(k).encode() for k in store.selectors(domain)
    }


async def test_submission_is_signed_once_before_storing(tmp_path: Path) -> None:
    app = signing_app(tmp_path)
    store = KeyStore(key_dir(app.config))
    store.generate("alice.test", "s", algorithms=("rsa", "ed25519"))
    plain = MESSAGE.replace(b"Authentication-Results: other.test; spf=fail\r\n", b"")
    request = SignRequest(submission=True, sender="alice@alice.test")
    done = await finish_message(app, blob_of(TRACE + plain), None, request, queue_id="Q2")
    data = done.blob.data
    assert data is not None and done.signed_by == (
        "sr._domainkey.alice.test",
        "se._domainkey.alice.test",
    )
    assert data.startswith(TRACE + b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert data.count(b"DKIM-Signature:") == 2
    assert b"Authentication-Results: mx.bob.test" not in data  # a user's forgery is removed too
    records = published(store, "alice.test")
    message = data[data.index(b"Received:") :]
    d = dkimpy.DKIM(message)
    assert d.verify(0, dnsfunc=lambda n, timeout=5: records.get(n))
    assert d.verify(1, dnsfunc=lambda n, timeout=5: records.get(n))


async def test_signing_domain_choice(tmp_path: Path) -> None:
    app = signing_app(tmp_path)
    store = KeyStore(key_dir(app.config))
    store.generate("sender.test", "s", algorithms=("ed25519",))
    store.generate("fwd.test", "f", algorithms=("ed25519",))
    plain = b"From: a@alice.test\r\nSubject: x\r\n\r\nbody\r\n"
    # no key for the From: domain: the envelope sender's domain signs
    done = await finish_message(
        app, blob_of(TRACE + plain), None, SignRequest(True, "a@sender.test"), queue_id="Q"
    )
    assert done.signed_by == ("s._domainkey.sender.test",)
    # forwarding: the forwarding domain signs
    done = await finish_message(
        app, blob_of(TRACE + plain), None, SignRequest(forward_domain="fwd.test"), queue_id="Q"
    )
    assert done.signed_by == ("f._domainkey.fwd.test",)
    # nothing to do: the very same blob comes back
    blob = blob_of(TRACE + plain)
    done = await finish_message(app, blob, None, SignRequest(True, "a@nokeys.test"))
    assert done.blob is blob and done.signed_by == ()
    assert (await finish_message(app, blob, None, SignRequest())).blob is blob
    # signing switched off
    off = signing_app(tmp_path, sign=False)
    done = await finish_message(off, blob, None, SignRequest(True, "a@sender.test"))
    assert done.blob is blob
    # a message dkimpy cannot sign is stored unsigned
    bad = b"From: a@sender.test\r\nBad Line\r\n\r\nbody\r\n"
    done = await finish_message(app, blob_of(TRACE + bad), None, SignRequest(True, "a@sender.test"))
    assert done.signed_by == () and done.blob.data == TRACE + bad


async def test_broken_key_file_is_logged_not_fatal(tmp_path: Path) -> None:
    app = signing_app(tmp_path)
    store = KeyStore(key_dir(app.config))
    store.generate("alice.test", "s", algorithms=("ed25519",))
    (key_dir(app.config) / "alice.test" / "s.pem").write_bytes(b"garbage")
    blob = blob_of(TRACE + b"From: a@alice.test\r\n\r\nbody\r\n")
    done = await finish_message(app, blob, None, SignRequest(True, "a@alice.test"))
    assert done.blob is blob


async def test_large_spooled_message(tmp_path: Path) -> None:
    app = signing_app(tmp_path)
    KeyStore(key_dir(app.config)).generate("alice.test", "s", algorithms=("ed25519",))
    body = b"".join(b"line %d\r\n" % i for i in range(60000))
    data = TRACE + b"From: a@alice.test\r\n\r\n" + body
    path = tmp_path / "spooled"
    path.write_bytes(data)
    blob = BlobSource(hashlib.sha256(data).hexdigest(), len(data), b"{}", path=str(path))
    done = await finish_message(app, blob, None, SignRequest(True, "a@alice.test"))
    assert done.blob.data is not None and done.blob.path is None
    assert done.blob.data.endswith(body) and done.signed_by
    # a spooled message with nothing to do stays a file
    same = await finish_message(app, blob, None, None)
    assert same.blob is blob
    # a header section longer than what is looked at first is read whole
    huge = (
        TRACE
        + b"X: "
        + b"y" * (svc.HEAD_READ + 10)
        + b"\r\nAuthentication-Results: mx.bob.test; x=y\r\n\r\nb\r\n"
    )
    path.write_bytes(huge)
    blob = BlobSource(hashlib.sha256(huge).hexdigest(), len(huge), b"{}", path=str(path))
    done = await finish_message(app, blob, None, None)
    assert done.blob.data is not None and b"mx.bob.test; x=y" not in done.blob.data


def test_config_validation(tmp_path: Path) -> None:
    from letterbird.config import ConfigError, load_config

    path = tmp_path / "lb.toml"
    path.write_text('[auth_checks]\nskip_networks = ["nope"]\n')
    with pytest.raises(ConfigError, match=r"auth_checks\.skip_networks"):
        load_config(path)
    path.write_text("[auth_checks]\ntimeout = 0\n")
    with pytest.raises(ConfigError, match=r"auth_checks\.timeout"):
        load_config(path)
    path.write_text('[auth_checks]\ndmarc_enforce = false\ntimeout = "5s"\n[dkim]\nsign = false\n')
    cfg: Config = load_config(path)
    assert not cfg.auth_checks.dmarc_enforce and cfg.auth_checks.timeout == 5.0
    assert not cfg.dkim.sign


async def test_ipv6_client_and_large_message(tmp_path: Path) -> None:
    client = "2001:db8::10"
    dns = FakeDns(
        world(
            **{
                "alice.test": {
                    "TXT": ["v=spf1 ptr:nothing.test a mx -all"],
                    "MX": ["mx.alice.test"],
                },
                "mx.alice.test": {"TXT": ["v=spf1 a -all"], "AAAA": [client]},
            }
        )
    )
    big = MESSAGE + b"".join(b"line %d of a long message\r\n" % i for i in range(20000))
    assert len(big) > svc.THREAD_THRESHOLD
    done = await run_inbound(app_for(tmp_path, dns), signed(big), client=client, chunk=65536)
    assert done.blob.data is not None
    assert auth_results(done.blob.data) == {
        "dkim": "pass",
        "spf": "pass",
        "spf/helo": "pass",
        "dmarc": "pass",
    }
    assert ("PTR", client) in dns.queries and ("AAAA", "mx.alice.test") in dns.queries
