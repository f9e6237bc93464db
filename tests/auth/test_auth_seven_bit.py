"""Signing in a form that survives a 7-bit path (RFC 6376 §5.3): an 8-bit message we sign is
converted to 7-bit MIME first, so the queue worker never converts it again and the signature
verifies whatever the next hop offers. Messages that already carry a body signature, that
cannot be converted, or that we do not sign are stored as they came."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dkim as dkimpy
import pytest
from authdns import FakeDns
from conftest import make_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from letterbird.auth.dkim import (
    SIGNED_HEADERS,
    DkimResult,
    SigningKey,
    sign,
    signature_fields,
    verify_message,
)
from letterbird.auth.keys import KeyStore, key_dir
from letterbird.auth.service import SERVICE_KEY, MailAuth, SignRequest, finish_message, seven_bit
from letterbird.config import DkimSettings
from letterbird.delivery.mime7bit import downgrade
from letterbird.delivery.queue.worker import MessageBody
from letterbird.mime import parse_message
from letterbird.storage.interface import BlobSource

pytest.importorskip("nacl")

HOST = "mx.alice.test"
NOW = 1_790_000_000.0
TRACE = (
    b"Return-Path: <alice@alice.test>\r\n"
    b"Received: from pc.alice.test ([192.0.2.10])\r\n\tby mx.alice.test (Letterbird) with"
    b" ESMTPSA id Q1;\r\n\tThu, 26 Nov 2026 10:00:00 +0000\r\n"
)
HEAD = (
    b"From: Alice <alice@alice.test>\r\nTo: bob@bob.test\r\nSubject: Gruesse\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <g1@alice.test>\r\n"
)
TEXT = "Grüße aus Köln, 10 € for the café.\r\n".encode()
PLAIN_8BIT = HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + TEXT
MULTIPART_8BIT = (
    HEAD
    + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n"
    + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    + b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    + b"\r\n"
    + TEXT
    + b"--b1\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01\xfe\xff binary\r\n"
    + b"--b1--\r\n"
)


def signing_app(tmp_path: Path, **dkim: Any) -> SimpleNamespace:
    config = dataclasses.replace(make_config(tmp_path), hostname=HOST, dkim=DkimSettings(**dkim))
    app = SimpleNamespace(config=config, services={}, resolver=None, clock=lambda: NOW)
    app.services[SERVICE_KEY] = MailAuth(config, None)
    return app


def records_of(store: KeyStore, domain: str) -> dict[bytes, bytes]:
    return {
        k.dns_name.encode() + b".": store.public_record(k).encode() for k in store.selectors(domain)
    }


def blob_of(data: bytes) -> BlobSource:
    return BlobSource(hashlib.sha256(data).hexdigest(), len(data), b"{}", data=data)


def as_sent(stored: bytes) -> bytes:
    """What the queue worker sends to a server without 8BITMIME: the stored blob without its
    Return-Path, converted if it is 8-bit."""
    body = MessageBody.from_bytes(stored)
    sent = stored[body.skip :]
    assert not sent.startswith(b"Return-Path:")
    return downgrade(sent)


def verify_all(message: bytes, records: dict[bytes, bytes]) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of ``message``, in order."""
    lower = message.lower()
    count = lower.count(b"\ndkim-signature:") + lower.startswith(b"dkim-signature:")
    out = []
    for i in range(count):
        try:
            ok = dkimpy.DKIM(message).verify(i, dnsfunc=lambda n, timeout=5: records.get(n))
        except dkimpy.DKIMException:  # dkimpy raises for a body hash mismatch
            ok = False
        out.append(bool(ok))
    return out


def ed_key(domain: str, selector: str) -> tuple[SigningKey, dict[bytes, bytes]]:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = f"{selector}._domainkey.{domain}.".encode()
    return (
        SigningKey(domain, selector, "ed25519-sha256", base64.b64encode(seed)),
        {name: b"v=DKIM1; k=ed25519; p=" + base64.b64encode(pub)},
    )


@pytest.mark.parametrize("message", [PLAIN_8BIT, MULTIPART_8BIT], ids=["plain", "multipart"])
async def test_eight_bit_submission_is_signed_in_7bit_form(tmp_path: Path, message: bytes) -> None:
    app = signing_app(tmp_path)
    store = KeyStore(key_dir(app.config))
    store.generate("alice.test", "s", algorithms=("rsa", "ed25519"))
    request = SignRequest(submission=True, sender="alice@alice.test")
    done = await finish_message(app, blob_of(TRACE + message), None, request, queue_id="Q1")
    stored = done.blob.data
    assert stored is not None and len(done.signed_by) == 2
    # stored ASCII, our trace fields still first, then the signatures, then MIME-Version
    assert stored.isascii()
    assert stored.startswith(TRACE + b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert stored.count(b"DKIM-Signature:") == 2
    assert b"MIME-Version: 1.0\r\n" in stored
    assert b"Content-Transfer-Encoding: quoted-printable" in stored
    assert b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln" in stored
    # the stored structure is the converted one, and the text reads the same
    assert done.blob.structure == parse_message(stored).to_json()
    # the worker has nothing left to convert: a 7-bit hop gets exactly the signed bytes
    sent = as_sent(stored)
    assert sent == stored[len(b"Return-Path: <alice@alice.test>\r\n") :]
    records = records_of(store, "alice.test")
    assert verify_all(sent, records) == [True, True]
    # what the signature covers is the 7-bit form: the 8-bit one would not verify
    assert b"\r\nDKIM-Signature:" in sent
    assert dkimpy.DKIM(sent).verify(0, dnsfunc=lambda n, timeout=5: records.get(n))


async def test_signature_made_over_8bit_form_would_break(tmp_path: Path) -> None:
    """Why: the old behaviour (sign the 8-bit bytes, let the worker convert) fails."""
    store = KeyStore(tmp_path / "keys")
    store.generate("alice.test", "s", algorithms=("ed25519",))
    signed = sign(PLAIN_8BIT, store.signing_keys("alice.test"), now=NOW) + PLAIN_8BIT
    records = records_of(store, "alice.test")
    assert verify_all(signed, records) == [True]
    assert verify_all(downgrade(signed), records) == [False]


async def test_ascii_submission_is_unchanged_apart_from_the_signature(tmp_path: Path) -> None:
    app = signing_app(tmp_path)
    KeyStore(key_dir(app.config)).generate("alice.test", "s", algorithms=("ed25519",))
    ascii_message = HEAD + b"\r\nHello Bob.\r\n"
    request = SignRequest(submission=True, sender="alice@alice.test")
    done = await finish_message(app, blob_of(TRACE + ascii_message), None, request)
    stored = done.blob.data
    assert stored is not None and done.signed_by
    assert stored.startswith(TRACE + b"DKIM-Signature:")
    assert stored.endswith(ascii_message)  # no MIME-Version added, nothing re-encoded


async def test_not_signed_means_not_converted(tmp_path: Path) -> None:
    app = signing_app(tmp_path)  # no keys for anyone
    blob = blob_of(TRACE + PLAIN_8BIT)
    done = await finish_message(app, blob, None, SignRequest(True, "alice@alice.test"))
    assert done.blob is blob and done.signed_by == ()
    # signing switched off: the same
    KeyStore(key_dir(app.config)).generate("alice.test", "s", algorithms=("ed25519",))
    off = signing_app(tmp_path, sign=False)
    done = await finish_message(off, blob, None, SignRequest(True, "alice@alice.test"))
    assert done.blob is blob
    # relayed mail we do not sign (an alias of a domain without keys) keeps its 8-bit body
    done = await finish_message(app, blob, None, SignRequest(forward_domain="relay.test"))
    assert done.blob is blob


async def test_a_message_already_signed_is_not_converted(tmp_path: Path) -> None:
    """Forwarding (or re-submitting) a message signed elsewhere: converting would break that
    signature on every path, so it is signed in its 8-bit form."""
    app = signing_app(tmp_path)
    store = KeyStore(key_dir(app.config))
    store.generate("alice.test", "s", algorithms=("ed25519",))
    carol_key, carol_records = ed_key("carol.test", "c")
    original = PLAIN_8BIT.replace(b"alice@alice.test", b"carol@carol.test")
    carol_signed = sign(original, [carol_key], now=NOW) + original
    done = await finish_message(
        app, blob_of(TRACE + carol_signed), None, SignRequest(forward_domain="alice.test")
    )
    stored = done.blob.data
    assert stored is not None and done.signed_by == ("s._domainkey.alice.test",)
    assert stored.endswith(carol_signed)  # untouched below our new signature
    assert not stored.isascii()
    records = {**records_of(store, "alice.test"), **carol_records}
    sent = stored[stored.index(b"Received:") :]
    assert verify_all(sent, records) == [True, True]  # ours, then Carol's (8BITMIME path)
    # an ARC-Message-Signature over the body is kept intact the same way
    arc = b"ARC-Message-Signature: i=1; a=rsa-sha256; d=x.test; s=a; bh=AA==; b=AA==\r\n"
    done = await finish_message(
        app, blob_of(TRACE + arc + PLAIN_8BIT), None, SignRequest(True, "alice@alice.test")
    )
    assert done.blob.data is not None and done.blob.data.endswith(arc + PLAIN_8BIT)


async def test_forwarded_unsigned_message_is_converted_and_signed(tmp_path: Path) -> None:
    app = signing_app(tmp_path)
    store = KeyStore(key_dir(app.config))
    store.generate("alice.test", "s", algorithms=("ed25519",))
    done = await finish_message(
        app, blob_of(TRACE + PLAIN_8BIT), None, SignRequest(forward_domain="alice.test")
    )
    stored = done.blob.data
    assert stored is not None and stored.isascii() and done.signed_by
    assert verify_all(as_sent(stored), records_of(store, "alice.test")) == [True]


async def test_unconvertible_messages_are_signed_as_they_are(tmp_path: Path) -> None:
    app = signing_app(tmp_path)
    store = KeyStore(key_dir(app.config))
    store.generate("alice.test", "s", algorithms=("ed25519",))
    records = records_of(store, "alice.test")
    request = SignRequest(submission=True, sender="alice@alice.test")
    # an internationalised header (SMTPUTF8): only a hop offering SMTPUTF8 (so 8BITMIME) takes it
    utf8 = PLAIN_8BIT.replace(b"Subject: Gruesse", "Subject: Grüße".encode())
    # 8-bit octets in a part labelled base64: not convertible, the worker bounces it (5.6.3)
    bad = HEAD + b"Content-Transfer-Encoding: base64\r\n\r\n\xff\xfe\r\n"
    for message in (utf8, bad):
        done = await finish_message(app, blob_of(TRACE + message), None, request)
        stored = done.blob.data
        assert stored is not None and done.signed_by
        assert stored.endswith(message)
        assert verify_all(stored[stored.index(b"Received:") :], records) == [True]


def test_seven_bit_helper() -> None:
    ascii_message = TRACE + HEAD + b"\r\nhi\r\n"
    assert seven_bit(ascii_message, len(TRACE)) is ascii_message
    # the trace fields stay first; MIME-Version goes below them
    converted = seven_bit(TRACE + PLAIN_8BIT, len(TRACE))
    assert converted.startswith(TRACE + b"MIME-Version: 1.0\r\n" + HEAD)
    assert converted.isascii()
    # an 8-bit trace field (an SMTPUTF8 envelope): left alone
    utf8_trace = "Received: from x by y for <jörg@alice.test>;\r\n".encode()
    message = utf8_trace + PLAIN_8BIT
    assert seven_bit(message, len(utf8_trace)) is message
    # not convertible: left alone
    bad = HEAD + b"Content-Transfer-Encoding: base64\r\n\r\n\xff\r\n"
    assert seven_bit(bad) is bad


# -- the h= tag of a signature over many fields (found with the 7-bit form) --------------------


async def test_long_header_list_is_folded_between_names(tmp_path: Path) -> None:
    """A real MUA's message (MIME fields, lists, references…) makes h= longer than a line:
    the fold must fall between names, or a verifier looks for a field named
    "content-tra\\r\\n nsfer-encoding" and the signature fails."""
    store = KeyStore(tmp_path / "keys")
    store.generate("alice.test", "s", algorithms=("rsa", "ed25519"))
    fields = b"".join(
        f"{name.title()}: value of {name}\r\n".encode()
        for name in SIGNED_HEADERS
        if name not in ("from", "to", "subject", "date", "message-id")  # in HEAD
    )
    message = HEAD + fields + b"\r\nbody\r\n"
    header = sign(message, store.signing_keys("alice.test"), now=NOW)
    for field in header.split(b"DKIM-Signature:")[1:]:
        names = [n.strip() for n in signature_fields(field)[b"h"].split(b":")]
        assert set(names) <= {n.encode() for n in SIGNED_HEADERS}, names
        assert len(names) == len(SIGNED_HEADERS) + 3  # From, To, Subject oversigned
    records = records_of(store, "alice.test")
    assert verify_all(header + message, records) == [True, True]
    lookup = FakeDns({n.decode().rstrip("."): {"TXT": [v]} for n, v in records.items()})
    outcomes = await verify_message(header + message, lookup)
    assert [o.result for o in outcomes] == [DkimResult.PASS, DkimResult.PASS]
