"""Webmail Send is DKIM-signed like port 587 submission: the same signing step, for the
``From:`` domain's active keys, before the one blob (local recipients, queue, Sent) is stored.
Signatures are checked with dkimpy against the public records of the key store."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from conftest import make_config
from webutil import WebEnv, make_env

from letterbird.auth.keys import KeyStore, key_dir
from letterbird.config import DkimSettings
from letterbird.delivery.queue.worker import MessageBody
from letterbird.mime import parse_message
from letterbird.storage.interface import QueueEntry

pytest.importorskip("nacl")  # dkimpy verifies Ed25519 signatures with PyNaCl

ALICE = "alice@example.test"
BOB = "bob@example.test"
FAR = "far@remote.test"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    yield from make_env(tmp_path)


def keys_of(env: WebEnv) -> KeyStore:
    return KeyStore(key_dir(env.config))


def records_of(store: KeyStore, domain: str) -> dict[bytes, bytes]:
    return {
        k.dns_name.encode() + b".": store.public_record(k).encode() for k in store.selectors(domain)
    }


def signatures(message: bytes) -> list[dict[str, str]]:
    """The tags of each DKIM-Signature field of the header section, in order."""
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    out = []
    for line in unfolded.split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "dkim-signature":
            tags = (t.strip().partition("=") for t in value.split(";") if t.strip())
            out.append({k.strip(): re.sub(r"\s+", "", v) for k, _, v in tags})
    return out


def verify_all(message: bytes, records: dict[bytes, bytes]) -> list[bool]:
    out = []
    for i in range(len(signatures(message))):
        try:
            ok = dkimpy.DKIM(message).verify(i, dnsfunc=lambda n, timeout=5: records.get(n))
        except dkimpy.DKIMException:
            ok = False
        out.append(bool(ok))
    return out


def send(env: WebEnv, csrf: str, sender: str = ALICE, files: Any = None, **fields: Any) -> Any:
    data = {"csrf_token": csrf, "from": sender, "action": "send", **fields}
    return env.client.post("/compose", data=data, files=files)


def stored(env: WebEnv, account: int, mailbox: str) -> list[tuple[bytes, bytes]]:
    """(raw bytes, stored structure) of each message of the mailbox."""
    mb = env.mailbox(account, mailbox)

    async def run() -> list[tuple[bytes, bytes]]:
        uids = [r[0] for r in await env.storage.list_messages(mb.id)]
        recs = await env.storage.fetch_messages(mb.id, uids)
        return [(await env.storage.read_blob(r.blob_id), r.structure) for r in recs]

    return env.call(run)  # type: ignore[no-any-return]


def queued(env: WebEnv) -> list[tuple[QueueEntry, bytes]]:
    async def run() -> list[tuple[QueueEntry, bytes]]:
        entries = await env.storage.queue_entries()
        return [(e, await env.storage.read_blob(e.blob_id)) for e in entries]

    return env.call(run)  # type: ignore[no-any-return]


def as_sent(stored_bytes: bytes) -> bytes:
    """What the queue worker transmits: the stored blob without a Return-Path field."""
    return stored_bytes[MessageBody.from_bytes(stored_bytes).skip :]


def test_send_to_local_and_remote_is_signed(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    bid = env.add_user(BOB)
    store = keys_of(env)
    store.generate("example.test", "web")  # RSA "webr" + Ed25519 "webe", active (first)
    records = records_of(store, "example.test")
    csrf = env.login(ALICE)
    r = send(
        env,
        csrf,
        files=[("attachments", ("notes.txt", "Grüße\n".encode(), "text/plain"))],
        to=f"Bob <{BOB}>, {FAR}",
        subject="Signed from the web",
        body="Héllo Bob, 10 € for the café.\n" + "x" * 200,
    )
    assert r.status_code == 303 and r.headers["location"].endswith("?notice=sent")
    [(delivered, delivered_structure)] = stored(env, bid, "INBOX")
    [(copy, copy_structure)] = stored(env, aid, "Sent")
    [(entry, queued_blob)] = queued(env)
    assert entry.domain == "remote.test" and entry.sender == ALICE
    # one signed blob for everyone: local recipient, queue and Sent
    assert delivered == copy == queued_blob
    sigs = signatures(delivered)
    assert [(s["d"], s["s"], s["a"]) for s in sigs] == [
        ("example.test", "webr", "rsa-sha256"),
        ("example.test", "webe", "ed25519-sha256"),
    ]
    assert all("from" in s["h"].lower().split(":") for s in sigs)
    assert delivered.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert verify_all(delivered, records) == [True, True]
    # the queue worker sends these bytes as they are, and they verify
    assert as_sent(queued_blob) == queued_blob
    assert verify_all(as_sent(queued_blob), records) == [True, True]
    # the stored structure is that of the signed bytes
    assert delivered_structure == copy_structure == parse_message(delivered).to_json()
    info = parse_message(delivered)
    assert info.subject == "Signed from the web"
    # a tampered copy does not verify: the check above can fail
    tampered = delivered.replace(b"Subject: Signed from the web", b"Subject: Signed from elsewhere")
    assert verify_all(tampered, records) == [False, False]


def test_no_keys_no_signature(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    bid = env.add_user(BOB)
    keys_of(env).generate("other.test", "x")  # keys for another domain only
    csrf = env.login(ALICE)
    r = send(env, csrf, to=f"{BOB}, {FAR}", subject="plain", body="Hello")
    assert r.status_code == 303 and r.headers["location"].endswith("?notice=sent")
    [(delivered, structure)] = stored(env, bid, "INBOX")
    [(copy, _)] = stored(env, aid, "Sent")
    [(_, queued_blob)] = queued(env)
    assert delivered == copy == queued_blob
    assert b"DKIM-Signature" not in delivered
    assert delivered.startswith(b"From: ")
    assert structure == parse_message(delivered).to_json()


def test_signs_for_the_from_domain(env: WebEnv) -> None:
    """An identity in another domain: its domain's keys sign, not the account's domain's."""
    aid = env.add_user(ALICE)
    env.call(env.app.directory.add_domain, "other.test")
    env.call(env.app.directory.add_alias, "alice@other.test", [ALICE])
    store = keys_of(env)
    store.generate("example.test", "ex")
    store.generate("other.test", "ot", algorithms=("ed25519",))
    csrf = env.login(ALICE)
    r = send(env, csrf, sender="alice@other.test", to=FAR, subject="from my alias", body="Hi")
    assert r.status_code == 303, r.text
    [(_, sent)] = queued(env)
    assert [(s["d"], s["s"]) for s in signatures(sent)] == [("other.test", "ot")]
    assert verify_all(sent, records_of(store, "other.test")) == [True]
    [(copy, _)] = stored(env, aid, "Sent")
    assert copy == sent


def test_signs_with_the_activated_generation(env: WebEnv) -> None:
    """After `domain dkim generate --activate` the new generation signs."""
    env.add_user(ALICE)
    store = keys_of(env)
    store.generate("example.test", "old", algorithms=("ed25519",))
    store.generate("example.test", "new", algorithms=("ed25519",))  # pending
    store.activate("example.test", "new")
    csrf = env.login(ALICE)
    assert send(env, csrf, to=FAR, subject="s", body="b").status_code == 303
    [(_, sent)] = queued(env)
    assert [s["s"] for s in signatures(sent)] == ["new"]
    assert verify_all(sent, records_of(store, "example.test")) == [True]


def test_signing_turned_off(tmp_path: Path) -> None:
    config = dataclasses.replace(make_config(tmp_path), dkim=DkimSettings(sign=False))
    for env in make_env(tmp_path, config=config):
        env.add_user(ALICE)
        keys_of(env).generate("example.test", "web")
        csrf = env.login(ALICE)
        assert send(env, csrf, to=FAR, subject="s", body="b").status_code == 303
        [(_, sent)] = queued(env)
        assert b"DKIM-Signature" not in sent
